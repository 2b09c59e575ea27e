"""Core helpers: number masking in logs, error mapping, settings, migrations on disk, generated code."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import grpc
import redis.exceptions

from outdial.core import db
from outdial.core.config import Settings
from outdial.core.errors import InvalidArgument, NotFound, status_for
from outdial.core.logging import mask_number, mask_text

ROOT = Path(__file__).resolve().parents[2]


def test_mask_number_keeps_last_four_digits() -> None:
    assert mask_number("+12125550100") == "+*******0100"
    assert mask_number("0100") == "0100"
    assert "5550100" not in mask_text("calling +1 212 555 0100 now")
    assert (
        mask_text("listening on 127.0.0.1:50051 since 2026-11-23")
        == "listening on 127.0.0.1:50051 since 2026-11-23"
    )


def test_error_table_maps_domain_and_infrastructure_errors() -> None:
    code, msg = status_for(InvalidArgument("must be E.164", field="caller_id")) or (None, "")
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "caller_id" in msg
    assert (status_for(NotFound("no campaign")) or (None,))[0] is grpc.StatusCode.NOT_FOUND
    assert (status_for(redis.exceptions.ConnectionError()) or (None,))[0] is grpc.StatusCode.UNAVAILABLE
    assert (status_for(asyncpg.exceptions.SerializationError()) or (None,))[0] is grpc.StatusCode.ABORTED
    assert status_for(ZeroDivisionError()) is None


def test_settings_from_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OUTDIAL_DNC_ADDR", "dnc:50053")
    monkeypatch.setenv("OUTDIAL_LISTEN_HOST", "0.0.0.0")
    s = Settings()
    assert s.addr("dnc") == "dnc:50053"
    assert s.listen_addr("dnc") == "0.0.0.0:50053"
    assert s.listen_addr("campaign") == "0.0.0.0:50051"
    assert [s.metrics_port_for(n) for n in ("campaign", "pacing", "dnc", "agent")] == [9101, 9102, 9103, 9104]


def test_migrations_are_numbered_uniquely() -> None:
    migs = db.load_migrations()
    assert migs and migs[0].version == 1
    assert len({m.version for m in migs}) == len(migs)


def test_generated_code_is_fresh() -> None:
    """`make protos` output must match what is committed under services/outdial/v1."""
    protos = sorted(str(p) for p in (ROOT / "protos" / "outdial" / "v1").glob("*.proto"))
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                "-I",
                str(ROOT / "protos"),
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                f"--mypy_out={out}",
                f"--mypy_grpc_out={out}",
                *protos,
            ],
            check=True,
            env={"PATH": f"{bindir}:/usr/bin:/bin"},
        )
        gen = Path(out) / "outdial" / "v1"
        names = sorted(p.name for p in gen.iterdir() if p.is_file())
        committed = ROOT / "services" / "outdial" / "v1"
        stale = [
            n
            for n in names
            if not (committed / n).exists() or not filecmp.cmp(gen / n, committed / n, shallow=False)
        ]
        extra = sorted(
            p.name
            for p in committed.iterdir()
            if p.name.endswith((".py", ".pyi")) and "_pb2" in p.name and p.name not in names
        )
    assert not stale and not extra, f"generated code is stale, run `make protos`: {stale + extra}"
