"""The ``outdial`` command: the human face of the services."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from outdial import __version__
from outdial.cli.base import broken_pipe, run
from outdial.cli.ids import unify_campaign_args
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
    "outdial.cli.console",  # outdial console, outdial user …
    "outdial.cli.why",  # outdial why … (every rule of a dial-time decision)
    "outdial.cli.evidence",  # outdial evidence export|verify
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outdial",
        description="outdial: outbound campaign dialer",
        epilog="Exit codes: 0 ok, 1 a check found something, 2 bad input, 3 not found or conflict, "
        "4 authentication or role, 5 unavailable (docs/cli.md).",
    )
    parser.add_argument("--version", action="version", version=f"outdial {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    unify_campaign_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except BrokenPipeError:  # `outdial --help | head`
        return broken_pipe()
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError: an OUTDIAL_* variable that cannot be read
        print(f"error: the environment's settings are not valid: {exc}", file=sys.stderr)
        return 2
    return run(args.handler, args, settings)


if __name__ == "__main__":
    sys.exit(main())
