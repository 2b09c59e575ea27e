"""The DNC service runs its queries as its least-privileged role (outdial_app), not as the login user."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from outdial.core import db
from outdial.dnc import app
from outdial.v1 import dnc_pb2
from tests.integration.test_dnc_gate import NO_REGISTRY, check, codes, import_file, pacing, stamp, start

MIGRATION = Path(db.__file__).parent.parent / "migrations" / "0201_dnc_role.sql"


def _as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture
async def login_role(pg: asyncpg.Pool) -> AsyncIterator[str]:
    """A throwaway non-superuser login role (roles are cluster-wide: unique name, dropped afterwards)."""
    name = f"odt_login_{uuid.uuid4().hex[:10]}"
    await pg.execute(f"CREATE ROLE {name} LOGIN")
    try:
        yield name
    finally:
        await pg.execute(f"DROP ROLE IF EXISTS {name}")


async def test_spec_role_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert app.SPEC.db_role == "outdial_app"
    monkeypatch.setenv("OUTDIAL_DNC_DB_ROLE", "")
    assert app.SPEC.db_role is None
    monkeypatch.setenv("OUTDIAL_DNC_DB_ROLE", "dnc_reader")
    assert app.SPEC.db_role == "dnc_reader"


async def test_every_operation_works_as_the_role_and_only_as_it(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool
) -> None:
    stub = await start(services, monkeypatch, env={"OUTDIAL_DNC_KEEPER_INTERVAL_SECONDS": "0.2"})
    # registry import (COPY into a temporary table, merge, index rebuild), add, remove, consent, dial-time
    # checks (audit appends), queries, verify, explain: all through the service running as outdial_app
    res = await import_file(
        stub,
        "2025550101\n2025550102\n",
        mode=dnc_pb2.IMPORT_MODE_FULL,
        downloaded=datetime.now(UTC) - timedelta(days=1),
    )
    assert res.added == 2
    await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12025550150"], reason="asked"))
    removed = await stub.RemoveNumbers(dnc_pb2.RemoveNumbersRequest(numbers=["+12025550150"], reason="error"))
    assert removed.removed == 1
    await stub.SetConsent(
        dnc_pb2.SetConsentRequest(
            number="+12025550160",
            kind=dnc_pb2.CONSENT_KIND_EXPRESS,
            evidence="form 7",
            obtained_at=stamp(datetime.now(UTC) - timedelta(days=1)),
            obtained_via="signed_paper",
        )
    )
    await stub.SetConsent(
        dnc_pb2.SetConsentRequest(number="+12025550160", kind=dnc_pb2.CONSENT_KIND_EXPRESS, revoke=True)
    )
    d1, d2 = await check(pacing(services), "+12025550101", "+12025550199", dial_time=True, campaign_id="c1")
    assert codes(d1) == ["dnc.national"] and d2.allowed
    await stub.RebuildIndex(dnc_pb2.RebuildIndexRequest())
    ok = await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())
    assert ok.ok and ok.records_checked >= 8

    # proof that the service's sessions are outdial_app: take one privilege from the role (in this test's
    # own database) and the service loses it, although its login user is a superuser
    await pg.execute("REVOKE INSERT ON dnc_entries FROM outdial_app")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12025550170"], reason="asked"))
    assert err.value.code() is grpc.StatusCode.INTERNAL
    (d,) = await check(stub, "+12025550170")
    assert d.allowed  # nothing was added
    await pg.execute("GRANT INSERT ON dnc_entries TO outdial_app")
    await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12025550170"], reason="asked"))
    (d,) = await check(stub, "+12025550170")
    assert codes(d) == ["dnc.internal"]


async def test_without_a_role_the_service_runs_as_the_login_user(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool
) -> None:
    await pg.execute("REVOKE INSERT ON dnc_entries FROM outdial_app")
    stub = await start(services, monkeypatch, env={**NO_REGISTRY, "OUTDIAL_DNC_DB_ROLE": ""})
    await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12025550171"], reason="asked"))
    (d,) = await check(stub, "+12025550171")
    assert codes(d) == ["dnc.internal"]


async def test_the_services_pool_cannot_change_the_audit_log_but_a_superuser_tamper_is_found(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool, settings: Any
) -> None:
    stub = await start(services, monkeypatch)
    await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+13125550001", "+13125550002"], reason="x"))
    await check(pacing(services), "+13125550001", "+13125559999", dial_time=True, campaign_id="c1")
    role = app.SPEC.db_role
    assert role == "outdial_app"
    # a pool made exactly as the service makes its own (same URL, same role)
    pool = await db.create_pool(settings.database_url, max_size=1, role=role)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_user") == "outdial_app"
            for sql in (
                "UPDATE dnc_audit SET result = 'allowed' WHERE seq = 3",
                "DELETE FROM dnc_audit WHERE seq = 3",
                "TRUNCATE dnc_audit",
                "ALTER TABLE dnc_audit DISABLE TRIGGER USER",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match=r"permission denied|owner"):
                    await conn.execute(sql)
            # it may read and append, which is all the service does with the log
            n = await conn.fetchval("SELECT count(*) FROM dnc_audit")
            assert n >= 4
            # a borrower that changes role does not pass it on: the release runs RESET ROLE
            await conn.execute("SET ROLE NONE")
            assert await conn.fetchval("SELECT current_user") != "outdial_app"
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_user") == "outdial_app"
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE dnc_audit SET result = 'allowed' WHERE seq = 3")
    finally:
        await pool.close()
    assert (await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())).ok

    # the login user (a superuser here) can disable the trigger and change a record: verify names it
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE dnc_audit DISABLE TRIGGER USER")
        await conn.execute("UPDATE dnc_audit SET result = 'allowed' WHERE seq = 3")
        await conn.execute("ALTER TABLE dnc_audit ENABLE TRIGGER USER")
    res = await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())
    assert not res.ok and res.first_bad_seq == 3 and "changed" in res.problem


async def test_a_member_login_user_runs_as_the_role_and_a_stranger_is_refused(
    pg: asyncpg.Pool, settings: Any, login_role: str
) -> None:
    url = _as_user(settings.database_url, login_role)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="outdial_app"):
        await asyncpg.connect(url, server_settings=db.role_settings("outdial_app"))
    await pg.execute(f"GRANT outdial_app TO {login_role}")
    pool = await db.create_pool(url, max_size=1, role="outdial_app")
    try:
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT current_user AS cu, session_user AS su")
            assert (row["cu"], row["su"]) == ("outdial_app", login_role)
            assert await conn.fetchval("SELECT count(*) FROM dnc_lists") >= 1
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM dnc_audit")
            # nothing beyond the DNC tables (0200 once granted every sequence of the schema)
            seqs = await conn.fetch(
                """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind = 'S' AND n.nspname = 'public'
                     AND CASE WHEN c.relkind = 'S'
                              THEN has_sequence_privilege('outdial_app', c.oid, 'USAGE') END"""
            )
            assert {r["relname"] for r in seqs} == {
                "dnc_entries_id_seq",
                "dnc_consent_id_seq",
                "dnc_registry_imports_id_seq",
            }
    finally:
        await pool.close()
        await pg.execute(f"REVOKE outdial_app FROM {login_role}")


async def test_the_migration_grants_membership_when_the_login_user_may(
    pg: asyncpg.Pool, settings: Any, login_role: str
) -> None:
    text = MIGRATION.read_text()
    grant_block = text[text.index("-- The login user must be able") :]
    url = _as_user(settings.database_url, login_role)
    # without CREATEROLE: a notice, no error, no membership
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(grant_block)
    finally:
        await conn.close()
    member = "SELECT pg_has_role($1, 'outdial_app', 'MEMBER')"
    assert await pg.fetchval(member, login_role) is False
    # with CREATEROLE (PostgreSQL 15: may grant non-superuser roles): granted
    await pg.execute(f"ALTER ROLE {login_role} CREATEROLE")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(grant_block)
        await conn.execute(grant_block)  # idempotent
    finally:
        await conn.close()
    try:
        assert await pg.fetchval(member, login_role) is True
    finally:
        await pg.execute(f"REVOKE outdial_app FROM {login_role}")
