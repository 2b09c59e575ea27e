"""``python -m outdial.dnc``: run the dnc service."""

from outdial.core.server import main
from outdial.dnc.app import SPEC

if __name__ == "__main__":
    main(SPEC)
