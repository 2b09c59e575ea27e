"""``python -m outdial.gateway``: run the SIP/RTP gateway."""

from outdial.gateway.app import main

if __name__ == "__main__":
    main()
