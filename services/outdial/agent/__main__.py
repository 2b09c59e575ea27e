"""``python -m outdial.agent``: run the agent service."""

from outdial.agent.app import SPEC
from outdial.core.server import main

if __name__ == "__main__":
    main(SPEC)
