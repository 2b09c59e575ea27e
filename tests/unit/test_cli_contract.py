"""The CLI contract (docs/cli.md): every command, given bad arguments and nothing to talk to, ends with a
message and an exit code from the table, never a Python traceback; ``--json`` errors are JSON objects;
dates take ISO 8601 and relative forms; a closed pipe ends quietly."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from outdial.cli import base
from outdial.cli.main import build_parser, main
from outdial.cli.when import parse_day, parse_when
from outdial.core.infra import free_port

ROOT = Path(__file__).resolve().parents[2]
EXIT_CODES = {0, 1, 2, 3, 4, 5}

#: Commands that serve or follow a stream until stopped: with nothing to reach they wait and reconnect with
#: backoff by design (the brief: every client reconnects), so they are not run here; each is a server or
#: a follower, and each of their arguments is checked by argparse or at start (tests/integration).
LONG_RUNNING = {
    "serve": "runs a service until stopped",
    "run": "runs the four services until stopped",
    "demo": "runs the demo until its time is up",
    "console": "serves the web console until stopped",
    "agent console": "an agent's console: follows the session, reconnecting with backoff",
    "sim agents": "simulated agents: work until stopped, reconnecting with backoff",
    "pacing watch": "follows WatchPacing, reconnecting with backoff",
}


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from leaves(sub, (*path, name))


COMMANDS = {" ".join(p): p for p, _ in leaves(build_parser())}


def bad_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Every positional and every required option, each with a value of the right type that no service would
    accept (garbage text, a negative number, a missing file), and --json."""
    argv: list[str] = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction | argparse._VersionAction) or a.dest in ("json", "token"):
            continue
        if a.option_strings and not a.required:
            continue
        if a.choices:
            value = str(next(iter(a.choices)))
        elif a.type in (int, float):
            value = "-1"
        elif "file" in a.dest or "path" in a.dest or a.dest in ("csv", "out", "directory", "dir"):
            value = "/nonexistent/dir/x.csv"
        else:
            value = "not a valid ☃ value"
        nargs = a.nargs if a.nargs not in (None, "?", "*", "+") else 1
        values = [value] * (nargs if isinstance(nargs, int) else 1)
        argv += [a.option_strings[0], *values] if a.option_strings else values
    return [*argv, "--json"]


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every service, PostgreSQL and Redis at a port where nothing listens; a token that is not one."""
    for name in ("campaign", "pacing", "dnc", "agent", "gateway"):
        monkeypatch.setenv(f"OUTDIAL_{name.upper()}_ADDR", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("OUTDIAL_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    monkeypatch.setenv("OUTDIAL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("OUTDIAL_TOKEN", "not-a-token")
    monkeypatch.setenv("OUTDIAL_DEV", "1")
    monkeypatch.delenv("OUTDIAL_DEBUG", raising=False)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(set(COMMANDS) - set(LONG_RUNNING)))
def test_no_command_shows_a_traceback_for_bad_arguments(
    name: str,
    nowhere: None,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a command that writes files writes them here
    parser = dict(leaves(build_parser()))[COMMANDS[name]]
    argv = [*COMMANDS[name], *bad_arguments(parser)]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusing a value: its usage message, exit 2
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, f"outdial {' '.join(argv)}"
    assert code in EXIT_CODES, f"outdial {' '.join(argv)} exited {code!r}"
    if code not in (0, 2) or (code == 2 and "usage:" not in err):
        # A failure under --json is one JSON object per line on stderr, with the contract's keys.
        lines = [line for line in err.splitlines() if line.startswith("{")]
        assert lines, f"outdial {' '.join(argv)} exited {code} with no JSON error: {err[-400:]!r}"
        for line in lines:
            assert {"error_id", "message", "field"} <= set(json.loads(line)), line


def test_every_long_running_command_exists() -> None:
    assert set(LONG_RUNNING) <= set(COMMANDS)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 2),
        (grpc.StatusCode.NOT_FOUND, 3),
        (grpc.StatusCode.FAILED_PRECONDITION, 3),
        (grpc.StatusCode.ALREADY_EXISTS, 3),
        (grpc.StatusCode.UNAUTHENTICATED, 4),
        (grpc.StatusCode.PERMISSION_DENIED, 4),
        (grpc.StatusCode.UNAVAILABLE, 5),
        (grpc.StatusCode.INTERNAL, 1),
    ],
)
def test_the_exit_code_table(status: grpc.StatusCode, code: int) -> None:
    assert base.EXIT_BY_STATUS.get(status, base.EXIT_FOUND) == code


def rpc_failure(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """A failed RPC as a service sends it (details "error_id [field]: message")."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_a_service_error_under_json_is_an_object_with_its_id_and_field(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "_json_errors", True)
    err = rpc_failure(
        grpc.StatusCode.INVALID_ARGUMENT, "bad_window [calling_window]: the window ends before it starts"
    )
    assert base.rpc_error(err) == 2
    err = json.loads(capsys.readouterr().err)
    assert err == {
        "error_id": "bad_window",
        "message": "the window ends before it starts",
        "field": "calling_window",
        "status": "INVALID_ARGUMENT",
    }


def test_an_expired_token_says_how_to_get_a_new_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert base.rpc_error(rpc_failure(grpc.StatusCode.UNAUTHENTICATED, "token_expired: token expired")) == 4
    assert "outdial token issue" in capsys.readouterr().err


NOW = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05+01:00", datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)),
        ("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),
        ("now", NOW),
        ("1 hour ago", datetime(2026, 12, 1, 11, 30, tzinfo=UTC)),
        ("yesterday 9am", datetime(2026, 11, 30, 9, 0, tzinfo=UTC)),
        ("in 2 days", datetime(2026, 12, 3, 12, 30, tzinfo=UTC)),
    ],
)
def test_dates_are_iso_8601_or_relative(text: str, expected: datetime) -> None:
    assert parse_when(text, "--at", now=NOW) == expected


@pytest.mark.parametrize("text", ["", "blah", "2026-13-45", "the day after never"])
def test_a_date_that_names_no_moment_is_refused_naming_the_option(text: str) -> None:
    with pytest.raises(base.BadInput) as exc:
        parse_when(text, "--since", now=NOW)
    assert "--since" in exc.value.message and exc.value.code == 2 and exc.value.field == "--since"


def test_days() -> None:
    assert str(parse_day("2026-12-24", "--at")) == "2026-12-24"
    assert str(parse_day("tomorrow", "--at", now=NOW)) == "2026-12-02"


def test_a_relative_date_reaches_the_command(nowhere: None, capsys: pytest.CaptureFixture[str]) -> None:
    """`dnc why --at yesterday` (a traceback before): parsed, then the unreachable service is reported."""
    assert main(["dnc", "why", "+12125550100", "--at", "yesterday", "--json"]) == 5
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["status"] == "UNAVAILABLE"
    assert main(["dnc", "audit", "--since", "not a time", "--json"]) == 2
    assert json.loads(capsys.readouterr().err)["field"] == "--since"


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "outdial.cli.main", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["outdial", __import__("outdial").__version__]


def test_a_closed_pipe_ends_quietly() -> None:
    """`outdial rules doc | head -1`: the reader goes away; no BrokenPipeError traceback, exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "outdial.cli.main", "rules", "doc"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "services")},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as head does after its line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
