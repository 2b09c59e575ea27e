"""The ``outdial`` command: the human face of the services."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from outdial.cli.base import run
from outdial.core.config import Settings

# Modules that add commands; each has ``register(subparsers)``. A module not yet written is skipped.
COMMAND_MODULES = (
    "outdial.cli.core_commands",
    "outdial.cli.keys",  # outdial token …, outdial keys …
    "outdial.cli.campaign",  # outdial campaign …, outdial leads …
    "outdial.cli.dnc",  # outdial dnc …
    "outdial.cli.agent",  # outdial agent …, outdial sim agents
    "outdial.cli.pacing",  # outdial pacing …
    "outdial.cli.sim_pacing",  # outdial sim pacing
    "outdial.cli.demo",  # outdial demo
    "outdial.cli.rules",  # outdial rules …
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outdial", description="outdial: outbound campaign dialer")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings()
    return run(args.handler, args, settings)


if __name__ == "__main__":
    sys.exit(main())
