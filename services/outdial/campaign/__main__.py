"""``python -m outdial.campaign``: run the campaign service."""

from outdial.campaign.app import SPEC
from outdial.core.server import main

if __name__ == "__main__":
    main(SPEC)
