"""The DNC audit log: appended only through dnc_audit_append (seq, time and prev_hash assigned by the
database), unchangeable by the service's own role, and a database owner's rewrite is caught by the signed
checkpoints kept outside PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from outdial.dnc.anchor import public_pem
from outdial.dnc.audit import AuditEntry, record_hash
from outdial.dnc.sinks import FileSink
from outdial.dnc.verify import Checkpointer
from outdial.migrations.grants import role_name
from outdial.v1 import dnc_pb2
from tests.conftest import as_user, make_token
from tests.integration.test_dnc_gate import NO_REGISTRY, pacing, start


async def _some_records(stub: Any, services: Any) -> None:
    await stub.AddNumbers(
        dnc_pb2.AddNumbersRequest(numbers=[f"+1312555{i:04d}" for i in range(6)], reason="asked")
    )
    await pacing(services).CheckNumbers(
        dnc_pb2.CheckNumbersRequest(
            numbers=["+13125550001", "+13125559999"], dial_time=True, campaign_id="c1"
        )
    )


async def _connect_as(settings: Any, who: str) -> asyncpg.Connection:
    return await asyncpg.connect(as_user(settings.database_url, role_name(who)))


async def test_the_service_role_may_only_read_and_append_through_the_function(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool, settings: Any
) -> None:
    stub = await start(services, monkeypatch)
    await _some_records(stub, services)  # the service itself appends as outdial_dnc
    conn = await _connect_as(settings, "dnc")
    try:
        assert await conn.fetchval("SELECT current_user") == "outdial_dnc"
        n = await conn.fetchval("SELECT count(*) FROM dnc_audit")
        assert n >= 8
        refused = [
            "INSERT INTO dnc_audit (seq, at, actor, action, prev_hash, hash) "
            "VALUES (1000, now(), 'x', 'add', repeat('0', 64), repeat('0', 64))",
            "UPDATE dnc_audit SET result = 'allowed' WHERE seq = 2",
            "DELETE FROM dnc_audit WHERE seq = 2",
            "TRUNCATE dnc_audit",
            "UPDATE dnc_audit_head SET seq = 1, hash = repeat('0', 64)",
            "INSERT INTO dnc_audit_head (id, seq, hash) VALUES (2, 0, '')",
            "DELETE FROM dnc_audit_head",
            "TRUNCATE dnc_audit_head",
            "ALTER TABLE dnc_audit DISABLE TRIGGER USER",
            "DROP TRIGGER dnc_audit_no_change ON dnc_audit",
            "CREATE OR REPLACE FUNCTION dnc_audit_immutable() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN NEW; END $$",
            "ALTER FUNCTION dnc_audit_append(text[], text[], text[], text[], text[], text[], text[], text[]) "
            "SECURITY INVOKER",
            "SET ROLE postgres",
            "CREATE TABLE dnc_audit_shadow (x int)",
        ]
        for sql in refused:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        # the function is the way in, and it chooses seq, time and prev_hash itself
        head = await pg.fetchrow("SELECT seq, hash, at FROM dnc_audit_head")
        rows = await conn.fetch(
            "SELECT * FROM dnc_audit_append($1, $2, $3, $4, $5, $6, $7, $8)",
            ["me", "me"],
            ["add", "add"],
            ["+13125550100", "+13125550101"],
            ["", ""],
            ["", ""],
            ["ok", "ok"],
            ["", ""],
            ["{}", "{}"],
        )
        assert [r["seq"] for r in rows] == [head["seq"] + 1, head["seq"] + 2]
        assert rows[0]["prev_hash"] == head["hash"] and rows[1]["prev_hash"] == rows[0]["hash"]
        assert rows[0]["at"] >= head["at"]
        with pytest.raises(asyncpg.InvalidParameterValueError, match="every array"):
            await conn.fetch(
                "SELECT * FROM dnc_audit_append($1, $2, $3, $4, $5, $6, $7, $8)",
                ["a"],
                ["add", "add"],
                [""],
                [""],
                [""],
                [""],
                [""],
                ["{}"],
            )
    finally:
        await conn.close()
    # no other runtime role may append at all
    for who in ("campaign", "pacing", "agent", "auditor"):
        other = await _connect_as(settings, who)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await other.fetch(
                    "SELECT * FROM dnc_audit_append('{a}', '{add}', '{}', '{}', '{}', '{}', '{}', '{}')"
                )
        finally:
            await other.close()
    ok = await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())
    assert ok.ok and ok.records_checked == n + 2


async def test_database_hashes_are_the_python_chain(pg: asyncpg.Pool) -> None:
    """dnc_audit_append's canonical JSON is byte for byte Python's (escapes, non-ASCII, control characters)."""
    tricky = [
        'quote " backslash \\ slash /',
        "tab\tnew\nline\rcr \b \f \x01 \x1f \x7f",
        "é ü 中文 😀 \u2028 \u00a0",
        "{}",
        "",
    ]
    rows = await pg.fetch(
        "SELECT * FROM dnc_audit_append($1, $2, $3, $4, $5, $6, $7, $8)",
        tricky,
        ["add"] * 5,
        tricky[::-1],
        ["c"] * 5,
        tricky,
        ["ok"] * 5,
        tricky[1:] + tricky[:1],
        tricky,
    )
    for r, i in zip(rows, range(5), strict=True):
        e = AuditEntry(
            tricky[i], "add", tricky[::-1][i], "c", tricky[i], "ok", (tricky[1:] + tricky[:1])[i], tricky[i]
        )
        assert record_hash(r["seq"], r["at"], e, r["prev_hash"]) == r["hash"]


async def test_database_hashes_match_python_on_random_text(pg: asyncpg.Pool) -> None:
    """Every control character and a spread of Unicode (seeded, no NUL: PostgreSQL text cannot hold it)."""
    import random

    rng = random.Random(12)
    alphabet = [chr(c) for c in range(1, 0x80)] + [chr(rng.randrange(0x80, 0x110000)) for _ in range(500)]
    alphabet = [c for c in alphabet if not 0xD800 <= ord(c) <= 0xDFFF]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(300)]
    a, b, c = (texts[0:100], texts[100:200], texts[200:300])
    rows = await pg.fetch(
        "SELECT * FROM dnc_audit_append($1, $2, $3, $4, $5, $6, $7, $8)", a, b, c, a, b, c, a, b
    )
    assert len(rows) == 100
    for i, r in enumerate(rows):
        e = AuditEntry(a[i], b[i], c[i], a[i], b[i], c[i], a[i], b[i])
        assert record_hash(r["seq"], r["at"], e, r["prev_hash"]) == r["hash"], (a[i], b[i], c[i])


async def test_a_dial_time_batch_is_one_append(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool
) -> None:
    await start(services, monkeypatch)
    numbers = [f"+1415555{i:04d}" for i in range(200)]
    resp = await pacing(services).CheckNumbers(
        dnc_pb2.CheckNumbersRequest(numbers=numbers, dial_time=True, campaign_id="c1"), timeout=10
    )
    seqs = [d.audit_seq for d in resp.decisions]
    assert seqs == list(range(seqs[0], seqs[0] + 200))
    # one call of the function: one time for the whole batch
    assert (
        await pg.fetchval("SELECT count(DISTINCT at) FROM dnc_audit WHERE seq = ANY($1::bigint[])", seqs) == 1
    )


async def _tamper(pg: asyncpg.Pool, *sql: str) -> None:
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE dnc_audit DISABLE TRIGGER USER")
        for s in sql:
            await conn.execute(s)
        await conn.execute("ALTER TABLE dnc_audit ENABLE TRIGGER USER")


async def _recompute_from(pg: asyncpg.Pool, first: int) -> None:
    """What a database owner who knows the (unkeyed) format does: recompute every hash from ``first`` and
    move the head, so the chain is consistent again."""
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE dnc_audit DISABLE TRIGGER USER")
        prev = await conn.fetchval("SELECT hash FROM dnc_audit WHERE seq = $1", first - 1) or "0" * 64
        rows = await conn.fetch("SELECT * FROM dnc_audit WHERE seq >= $1 ORDER BY seq", first)
        for r in rows:
            e = AuditEntry(
                r["actor"],
                r["action"],
                r["number"],
                r["campaign_id"],
                r["call_id"],
                r["result"],
                r["reason"],
                r["details"],
            )
            h = record_hash(r["seq"], r["at"], e, prev)
            await conn.execute(
                "UPDATE dnc_audit SET prev_hash = $2, hash = $3 WHERE seq = $1", r["seq"], prev, h
            )
            prev = h
        await conn.execute("UPDATE dnc_audit_head SET hash = $1", prev)
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


async def _anchored(stub: Any, seq: int) -> Any:
    """Wait until the service has signed a checkpoint of record ``seq``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        res = await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())
        if res.anchored_seq >= seq:
            return res
        assert loop.time() < deadline, f"record {seq} never checkpointed: {res}"
        await asyncio.sleep(0.05)


async def test_the_owners_rewrite_with_recomputed_hashes_is_caught_by_the_checkpoints(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool, settings: Any, tmp_path: Path
) -> None:
    """THE rewrite: as the database owner, disable the trigger, rewrite a record, recompute every hash, move
    the head. The chain is consistent again; the checkpoints signed outside the database are not."""
    checkpoints = tmp_path / "checkpoints"
    stub = await start(
        services,
        monkeypatch,
        env={
            **NO_REGISTRY,
            "OUTDIAL_DNC_CHECKPOINT_URL": checkpoints.as_uri(),
            "OUTDIAL_DNC_CHECKPOINT_EVERY_RECORDS": "1",
        },
    )
    for i in range(4):  # one record per call, each checkpointed
        (d,) = (
            await pacing(services).CheckNumbers(
                dnc_pb2.CheckNumbersRequest(
                    numbers=[f"+1312555{i:04d}"], dial_time=True, campaign_id="c1", call_ids=[f"call-{i}"]
                ),
                timeout=10,
            )
        ).decisions
        assert d.audit_seq > 0
        await _anchored(stub, d.audit_seq)  # a checkpoint of each (appends close together share one)
    head = await pg.fetchval("SELECT seq FROM dnc_audit_head")
    res = await _anchored(stub, head)
    assert res.ok and res.checkpoints_checked >= 4 and res.unanchored_records == 0
    target = await pg.fetchval("SELECT seq FROM dnc_audit WHERE call_id = 'call-1'")

    # the rewrite: the decision for call-1 now says "blocked"; every later hash recomputed; head moved
    await _tamper(pg, f"UPDATE dnc_audit SET result = 'blocked' WHERE seq = {target}")
    await _recompute_from(pg, target)

    res = await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())
    assert not res.ok
    assert res.first_bad_seq == target
    assert "checkpoint" in res.problem and "hash differs" in res.problem

    # and the rewritten chain is never signed: a new record, and the checkpointer refuses to anchor it
    await pg.fetch(
        "SELECT * FROM dnc_audit_append('{x}', '{add}', '{\"\"}', '{\"\"}', '{\"\"}', '{ok}', '{\"\"}', '{\"{}\"}')"
    )
    signer = Checkpointer(pg, FileSink(checkpoints, checkpoints.as_uri()), services_key(), 1, 60)
    assert await signer.checkpoint() is None
    assert f"record {head}" in signer.problem and "checkpoint" in signer.problem
    assert not (checkpoints / f"{head + 1:020d}.json").exists()

    # anyone with the public key, the checkpoints and a read-only login does the same without the service
    pub = tmp_path / "audit.pub"
    key = services_key()
    pub.write_bytes(public_pem(key.public_key()))
    auditor_url = as_user(settings.database_url, role_name("auditor"))
    argv = (
        "dnc",
        "verify",
        "--database-url",
        auditor_url,
        "--checkpoints",
        checkpoints.as_uri(),
        "--public-key",
        str(pub),
    )
    code, out = await run_cli_flat(services, *argv)
    assert code == 3, out
    assert f"record {target}" in out and "checkpoint" in out

    # a checkpoint nobody trusted signed is refused too
    stranger = tmp_path / "stranger.pub"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stranger.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    code, out = await run_cli_flat(services, *argv[:-1], str(stranger))
    assert code == 3 and "not a trusted public key" in out

    # removing the tail back to before the last checkpoints is caught as well
    await _tamper(pg, f"DELETE FROM dnc_audit WHERE seq > {target - 1}")
    await pg.execute(
        "UPDATE dnc_audit_head SET seq = $1, hash = (SELECT hash FROM dnc_audit WHERE seq = $1)", target - 1
    )
    res = await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())
    assert not res.ok and res.first_bad_seq == target and "removed" in res.problem


def services_key() -> Any:
    from outdial.dnc.app import _dev_key

    return _dev_key()


async def test_time_going_backwards_fails_verify(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool, settings: Any, tmp_path: Path
) -> None:
    stub = await start(services, monkeypatch)
    await _some_records(stub, services)
    # dated a day earlier than the record before it, hashes recomputed: the chain links, time does not
    await _tamper(pg, "UPDATE dnc_audit SET at = at - interval '1 day' WHERE seq = 5")
    await _recompute_from(pg, 5)
    res = await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())
    assert not res.ok and res.first_bad_seq == 5 and "time went backwards" in res.problem


async def test_checkpoints_are_never_overwritten(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from outdial.dnc.anchor import sign
    from outdial.dnc.app import _dev_key

    sink = FileSink(tmp_path / "c", (tmp_path / "c").as_uri())
    now = datetime.now(UTC)
    first = sign(_dev_key(), 7, "a" * 64, now, now)
    assert await sink.put(first)
    assert not await sink.put(sign(_dev_key(), 7, "b" * 64, now, now))
    assert (await sink.latest()) == first
    assert os.stat(tmp_path / "c" / "00000000000000000007.json").st_mode & 0o222 == 0


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


async def run_cli_flat(services: Any, *argv: str) -> tuple[int, str]:
    """``run_cli`` with the output on one line (rich wraps long messages)."""
    code, out = await run_cli(services, *argv)
    return code, " ".join(out.split())
