"""Shared pieces of the ``outdial`` CLI: settings, channels with the user's token, output as table or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from outdial.core.clients import service_channel
from outdial.core.config import ServiceName, Settings
from outdial.core.signing import KeyConfigError

# Handlers: async def handler(args, settings) -> int (exit code).
Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]

console = Console()
err_console = Console(stderr=True)


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--token", help="bearer token (default: $OUTDIAL_TOKEN)")
    return parser


def command(sub: Any, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    add_common(p)
    p.set_defaults(handler=handler)
    return p


_groups: dict[tuple[int, str], Any] = {}


def group(sub: Any, name: str, help: str) -> Any:
    """The sub-command group ``outdial NAME …`` (created once, shared by modules: ``sim`` has several)."""
    key = (id(sub), name)  # per parser: building the parser twice in one process must work
    if key not in _groups:
        _groups[key] = sub.add_parser(name, help=help).add_subparsers(dest=f"{name}_cmd", required=True)
    return _groups[key]


def channel(args: argparse.Namespace, settings: Settings, service: ServiceName) -> grpc.aio.Channel:
    token = getattr(args, "token", None) or settings.token
    return service_channel(settings, service, lambda: token)


def to_dict(msg: Message) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")
    sys.stdout.flush()


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    console.print(table)


def fail(message: str, code: int = 1) -> int:
    err_console.print(f"[red]error:[/red] {escape(message)}")
    return code


def rpc_error(exc: grpc.aio.AioRpcError) -> int:
    """Print a failed RPC as `CODE: details` on stderr; exit code 2 for bad input, 1 otherwise."""
    err_console.print(f"[red]{exc.code().name}[/red]: {escape(exc.details() or '')}")
    if exc.code() is grpc.StatusCode.INTERNAL and exc.details() == "Internal error from Core":
        # grpc.aio loses the server's status when it refuses a stream this client is still writing
        # (grpc/grpc#36066): say what that usually is.
        err_console.print(
            "the server ended the call while the file was still being sent: usually a refused upload (a "
            "line or the file over its limit, or a malformed file; see docs/security.md). Nothing "
            "of it was kept."
        )
    return 2 if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else 1


def run(handler: Handler, args: argparse.Namespace, settings: Settings) -> int:
    async def _go() -> int:
        try:
            return await handler(args, settings)
        except grpc.aio.AioRpcError as exc:
            return rpc_error(exc)
        except KeyConfigError as exc:
            return fail(str(exc), 2)

    return asyncio.run(_go())
