"""Shared pieces of the ``outdial`` CLI: settings, channels with the user's token, output as table or JSON,
and the one contract every command keeps (docs/cli.md): the exit-code table, errors as
``{error_id, message, field}`` under ``--json``, quiet broken pipes, and no Python traceback for a user."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from outdial.core.clients import service_channel
from outdial.core.config import ServiceName, Settings
from outdial.core.signing import KeyConfigError

# Handlers: async def handler(args, settings) -> int (exit code).

# The exit codes of every command (docs/cli.md).
EXIT_OK = 0
EXIT_FOUND = 1  # a check found something (blocked, broken, a failed verification), or an unexpected failure
EXIT_BAD_INPUT = 2  # bad arguments or input (argparse's usage errors are 2 as well)
EXIT_NOT_FOUND = 3  # not found, or a conflict with the current state
EXIT_AUTH = 4  # no token, an expired or invalid one, or a role that may not do this
EXIT_UNAVAILABLE = 5  # a service, PostgreSQL or Redis cannot be reached

EXIT_BY_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_BAD_INPUT,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_BAD_INPUT,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_NOT_FOUND,
    grpc.StatusCode.ABORTED: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_UNAVAILABLE,
}

#: Set by :func:`run` for the command being run: errors are printed as JSON objects when it asked for --json.
_json_errors = False

log = logging.getLogger("outdial.cli")


class CliError(Exception):
    """A failure to report to the user (no traceback): message, exit code, and the stable error id and
    field under ``--json``."""

    def __init__(
        self, message: str, code: int = EXIT_FOUND, error_id: str = "failed", field: str = ""
    ) -> None:
        super().__init__(message)
        self.message, self.code, self.error_id, self.field = message, code, error_id, field


class BadInput(CliError):
    def __init__(self, message: str, field: str = "", error_id: str = "bad_input") -> None:
        super().__init__(message, EXIT_BAD_INPUT, error_id, field)


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
    """A message as typed JSON: protobuf's JSON mapping writes 64-bit integers as strings (``"rows": "51"``);
    the CLI's --json gives numbers as numbers (docs/cli.md), so they are turned back into ints here."""
    d = MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _ints(msg.DESCRIPTOR, d)
    return d


_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _ints(desc: Any, d: dict[str, Any]) -> None:  # a Descriptor (pure Python or upb)
    for field in desc.fields:
        if field.name not in d:
            continue
        value = d[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            vfield = field.message_type.fields_by_name["value"]
            if vfield.type in _INT64:
                d[field.name] = {k: int(v) for k, v in value.items()}
            elif vfield.message_type is not None and isinstance(value, dict):
                for v in value.values():
                    if isinstance(v, dict):
                        _ints(vfield.message_type, v)
        elif field.type in _INT64:
            d[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None and not field.message_type.full_name.startswith(
            "google.protobuf"
        ):
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, dict):
                    _ints(field.message_type, v)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")
    sys.stdout.flush()


#: A column holds IDs when its header says so or a value looks like one: such a column is never cut or
#: wrapped, so an ID can be copied from any table whatever the terminal's width (docs/cli.md, "IDs").
_ID_HEADER = re.compile(r"^(id|ids|kid|campaign|list|lead list|agent|call|trunk)$|\bid$", re.I)
_ID_VALUE = re.compile(r"^[0-9a-f]{32}$|^[A-Za-z0-9_-]{43}$")


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [["" if v is None else str(v) for v in r] for r in rows]
    ids = [
        bool(_ID_HEADER.search(c)) or any(_ID_VALUE.match(r[i]) for r in cells if i < len(r))
        for i, c in enumerate(columns)
    ]
    table = Table(title=title)
    for c, is_id in zip(columns, ids, strict=True):
        table.add_column(c, no_wrap=is_id, overflow="ignore" if is_id else "fold")
    for r in cells:
        table.add_row(*r)
    # What the table needs so that no ID column is shortened: the ID columns whole, the others at least their
    # header (they wrap), plus the borders and padding. Wider than the terminal, it is printed wider.
    widths = [
        max([len(c), *(len(r[i]) for r in cells if i < len(r))])
        if is_id
        else min(max([len(c), *(len(r[i]) for r in cells if i < len(r))]), max(len(c), 12))
        for i, (c, is_id) in enumerate(zip(columns, ids, strict=True))
    ]
    needed = sum(widths) + 3 * len(columns) + 1
    if needed > console.width:
        Console(width=needed).print(table, crop=False)  # Console.print never goes past the console's width
    else:
        console.print(table)


def _error_json(error_id: str, message: str, field: str = "", **extra: Any) -> None:
    sys.stderr.write(json.dumps({"error_id": error_id, "message": message, "field": field, **extra}) + "\n")
    sys.stderr.flush()


def fail(message: str, code: int = EXIT_FOUND, *, error_id: str = "", field: str = "") -> int:
    """Report a failure on stderr (a JSON object under --json) and return its exit code."""
    if _json_errors:
        default = {EXIT_BAD_INPUT: "bad_input", EXIT_NOT_FOUND: "not_found", EXIT_AUTH: "auth"}
        _error_json(error_id or default.get(code, "failed"), message, field)
    else:
        err_console.print(f"[red]error:[/red] {escape(message)}")
    return code


#: A service's status message: "error_id [field]: message" (core/errors.py ``status_message``).
_STATUS_MESSAGE = re.compile(r"^([a-z][a-z0-9_.]*)(?: \[([^\]]*)\])?: (.*)$", re.S)

_HINTS = {
    "token_expired": "get a new token: `outdial token issue` (or sign in to the console again)",
    "token_missing": "set OUTDIAL_TOKEN or pass --token (`outdial token issue` makes one)",
    "token_revoked": "this token was revoked: get a new one with `outdial token issue`",
}


def rpc_error(exc: grpc.aio.AioRpcError) -> int:
    """Print a failed RPC as `CODE: details` on stderr (a JSON object under --json); the exit code from the
    table (:data:`EXIT_BY_STATUS`)."""
    details = exc.details() or ""
    code = EXIT_BY_STATUS.get(exc.code(), EXIT_FOUND)
    m = _STATUS_MESSAGE.match(details)
    error_id, field, message = (
        (m.group(1), m.group(2) or "", m.group(3)) if m else (exc.code().name.lower(), "", details)
    )
    hint = _HINTS.get(error_id, "")
    if exc.code() is grpc.StatusCode.UNAVAILABLE and not m:
        hint = "is the service running, and OUTDIAL_*_ADDR pointing at it? (`outdial status`)"
    if exc.code() is grpc.StatusCode.INTERNAL and details == "Internal error from Core":
        # grpc.aio loses the server's status when it refuses a stream this client is still writing
        # (grpc/grpc#36066): say what that usually is.
        hint = (
            "the server ended the call while the file was still being sent: usually a refused upload (a "
            "line or the file over its limit, or a malformed file; see docs/security.md). Nothing "
            "of it was kept."
        )
    if _json_errors:
        extra = {"status": exc.code().name, **({"hint": hint} if hint else {})}
        _error_json(error_id, message, field, **extra)
        return code
    err_console.print(f"[red]{exc.code().name}[/red]: {escape(details)}")
    if hint:
        err_console.print(escape(hint))
    return code


def run(handler: Handler, args: argparse.Namespace, settings: Settings) -> int:
    """Run one command's handler under the CLI contract: every failure a user can meet ends in a message
    and an exit code from the table, never a traceback (OUTDIAL_DEBUG=1 shows it for an unexpected one)."""
    global _json_errors
    _json_errors = bool(getattr(args, "json", False))

    async def _go() -> int:
        from outdial.cli import ids  # ids builds on this module

        try:
            ids.merge_campaign_args(args)
            await ids.resolve_ids(args, settings)
            return await handler(args, settings)
        except grpc.aio.AioRpcError as exc:
            return rpc_error(exc)
        except KeyConfigError as exc:
            return fail(str(exc), EXIT_BAD_INPUT, error_id="key_config")
        except CliError as exc:
            return fail(exc.message, exc.code, error_id=exc.error_id, field=exc.field)

    try:
        return asyncio.run(_go())
    except BrokenPipeError:
        return broken_pipe()
    except KeyboardInterrupt:
        return 130
    except (ConnectionError, TimeoutError) as exc:
        return fail(f"cannot reach it: {exc or type(exc).__name__}", EXIT_UNAVAILABLE, error_id="unavailable")
    except OSError as exc:
        # A file that cannot be read or written (the path is the user's input).
        where = f" {exc.filename}" if exc.filename else ""
        return fail(f"{exc.strerror or exc}{where}", EXIT_BAD_INPUT, error_id="file")
    except ValueError as exc:
        return fail(str(exc), EXIT_BAD_INPUT)
    except Exception as exc:  # the last line of the contract: no traceback reaches a user
        if os.environ.get("OUTDIAL_DEBUG"):
            raise
        log.debug("unexpected error", exc_info=True)
        return fail(
            f"unexpected {type(exc).__name__}: {exc} (OUTDIAL_DEBUG=1 shows the traceback; please report it)",
            EXIT_FOUND,
            error_id="unexpected",
        )


def broken_pipe() -> int:
    """The reader went away (``outdial … | head``): stop quietly. stdout is pointed at /dev/null so that
    Python's own flush at exit does not complain again."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK
