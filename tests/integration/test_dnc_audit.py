"""The audit log cannot be changed by the service's role, and a superuser's change is found by verify."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import asyncpg
import pytest

from outdial.v1 import dnc_pb2
from tests.conftest import make_token
from tests.integration.test_dnc_gate import pacing, start


async def _some_records(stub: Any, services: Any) -> None:
    await stub.AddNumbers(
        dnc_pb2.AddNumbersRequest(numbers=[f"+1312555{i:04d}" for i in range(6)], reason="asked")
    )
    await pacing(services).CheckNumbers(
        dnc_pb2.CheckNumbersRequest(
            numbers=["+13125550001", "+13125559999"], dial_time=True, campaign_id="c1"
        )
    )


async def test_service_role_cannot_update_or_delete(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool
) -> None:
    stub = await start(services, monkeypatch)
    await _some_records(stub, services)
    async with pg.acquire() as conn:
        for sql in (
            "UPDATE dnc_audit SET result = 'allowed' WHERE seq = 2",
            "DELETE FROM dnc_audit WHERE seq = 2",
            "TRUNCATE dnc_audit",
        ):
            async with conn.transaction():
                await conn.execute("SET LOCAL ROLE outdial_app")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
        # the role can still append through the service's path (read + insert are granted)
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE outdial_app")
            n = await conn.fetchval("SELECT count(*) FROM dnc_audit")
            assert n >= 8
        # even a superuser is stopped by the trigger unless it is disabled on purpose
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("UPDATE dnc_audit SET result = 'allowed' WHERE seq = 2")
    ok = await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())
    assert ok.ok and ok.records_checked == n


async def _tamper(pg: asyncpg.Pool, *sql: str) -> None:
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE dnc_audit DISABLE TRIGGER USER")
        for s in sql:
            await conn.execute(s)
        await conn.execute("ALTER TABLE dnc_audit ENABLE TRIGGER USER")


@pytest.mark.parametrize(
    ("sql", "bad_seq", "words"),
    [
        (["UPDATE dnc_audit SET result = 'allowed' WHERE seq = 7"], 7, "changed"),
        (["DELETE FROM dnc_audit WHERE seq = 4"], 4, "missing"),
        (["DELETE FROM dnc_audit WHERE seq = (SELECT max(seq) FROM dnc_audit)"], 0, "removed"),
        (
            # swap the contents of records 3 and 5 (same seqs, reordered rows)
            [
                "UPDATE dnc_audit SET seq = -3 WHERE seq = 3",
                "UPDATE dnc_audit SET seq = 3 WHERE seq = 5",
                "UPDATE dnc_audit SET seq = 5 WHERE seq = -3",
            ],
            3,
            "does not follow",
        ),
    ],
)
async def test_superuser_tamper_is_found(
    services: Any,
    monkeypatch: pytest.MonkeyPatch,
    pg: asyncpg.Pool,
    sql: list[str],
    bad_seq: int,
    words: str,
) -> None:
    stub = await start(services, monkeypatch)
    await _some_records(stub, services)
    if bad_seq == 0:  # the last record
        bad_seq = await pg.fetchval("SELECT max(seq) FROM dnc_audit")
    await _tamper(pg, *sql)
    res = await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())
    assert not res.ok
    assert res.first_bad_seq == bad_seq
    assert words in res.problem

    # the CLI exits non-zero naming the record
    code, out = await run_cli(services, "dnc", "verify")
    assert code != 0
    assert f"record {bad_seq}" in out


async def run_cli(services: Any, *argv: str) -> tuple[int, str]:
    """Run ``outdial`` in a subprocess against the test's services; (exit code, stdout + stderr)."""
    env = {
        **os.environ,
        "OUTDIAL_DNC_ADDR": services.settings.dnc_addr,
        "OUTDIAL_TOKEN": make_token("compliance"),
        "COLUMNS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "outdial.cli.main",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()
