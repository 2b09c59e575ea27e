"""``python -m outdial.pacing``: run the pacing service."""

from outdial.core.server import main
from outdial.pacing.app import SPEC

if __name__ == "__main__":
    main(SPEC)
