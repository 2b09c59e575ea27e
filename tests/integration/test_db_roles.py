"""Database roles: one login role per service holding exactly its lines of migrations/grants.py, none able to
escape them with SET ROLE; the migration role alone changes the schema; production services refuse a schema
that is behind."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from outdial.core import db
from outdial.core.config import StartupRefused
from outdial.migrations.grants import GRANTS, RUNTIME, TEMPORARY, role_name
from tests.conftest import as_user, production_keys

_PRIVS = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _privileges(text: str) -> list[str]:
    """``"SELECT, UPDATE (b, a)"`` -> ``["SELECT", "UPDATE (a, b)"]`` (column lists sorted)."""
    out: list[str] = []
    for m in re.finditer(r"\s*([A-Z]+)(?:\s*\(([^)]*)\))?\s*(?:,|$)", text):
        if m[2] is None:
            out.append(m[1])
        else:
            out.append(f"{m[1]} ({', '.join(sorted(c.strip() for c in m[2].split(',')))})")
    return out


async def test_each_role_holds_exactly_its_grants(pg: asyncpg.Pool) -> None:
    # database-level privileges are not copied by CREATE DATABASE … TEMPLATE: grant this clone its own
    async with pg.acquire() as conn:
        await db.apply_grants(conn)
    tables = [
        r["relname"]
        for r in await pg.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v')"
        )
    ]
    seqs = [
        r["relname"]
        for r in await pg.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'S'"
        )
    ]
    funcs = [
        r["proname"]
        for r in await pg.fetch(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
        )
    ]
    for who in RUNTIME:
        role = role_name(who)
        want = {(g.name, p) for g in GRANTS if g.who == who for p in _privileges(g.privileges)}
        have: set[tuple[str, str]] = set()
        for t in tables:
            for p in _PRIVS:
                if await pg.fetchval("SELECT has_table_privilege($1, $2, $3)", role, f"public.{t}", p):
                    have.add((t, p))
                elif p in ("SELECT", "INSERT", "UPDATE", "REFERENCES"):
                    # a privilege on some columns only: "UPDATE (a, b)"
                    cols = await pg.fetchval(
                        """SELECT string_agg(a.attname, ', ' ORDER BY a.attname) FROM pg_attribute a
                            WHERE a.attrelid = $2::regclass AND a.attnum > 0 AND NOT a.attisdropped
                              AND has_column_privilege($1, $2::regclass, a.attnum, $3)""",
                        role,
                        f"public.{t}",
                        p,
                    )
                    if cols:
                        have.add((t, f"{p} ({cols})"))
        for s in seqs:
            for p in ("USAGE", "SELECT", "UPDATE"):
                if await pg.fetchval("SELECT has_sequence_privilege($1, $2, $3)", role, f"public.{s}", p):
                    have.add((s, p))
        for f in funcs:
            oid = await pg.fetchval("SELECT oid FROM pg_proc WHERE proname = $1 LIMIT 1", f)
            if f in {g.name for g in GRANTS if g.kind == "function"} and await pg.fetchval(
                "SELECT has_function_privilege($1, $2::oid, 'EXECUTE')", role, oid
            ):
                have.add((f, "EXECUTE"))
        assert have == want, f"{role}: extra {sorted(have - want)}, missing {sorted(want - have)}"
        temp = await pg.fetchval("SELECT has_database_privilege($1, current_database(), 'TEMPORARY')", role)
        assert temp == (who in TEMPORARY), f"{role}: TEMPORARY {temp}"


async def test_no_runtime_role_can_escape_or_change_the_schema(pg: asyncpg.Pool, settings: Any) -> None:
    owner = await pg.fetchval("SELECT current_user")
    for who in RUNTIME:
        role = role_name(who)
        attrs = await pg.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication, rolcanlogin "
            "FROM pg_roles WHERE rolname = $1",
            role,
        )
        assert attrs["rolcanlogin"] and not any(attrs[k] for k in attrs.keys() if k != "rolcanlogin")
        assert (
            await pg.fetchval(
                "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                "WHERE r.rolname = $1",
                role,
            )
            == 0
        )
        conn = await asyncpg.connect(as_user(settings.database_url, role))
        try:
            assert await conn.fetchval("SELECT current_user") == role
            for sql in (
                f'SET ROLE "{owner}"',
                "SET ROLE outdial_app" if who != "auditor" else "SET ROLE outdial_dnc",
                "SET SESSION AUTHORIZATION postgres",
                "CREATE TABLE sneaky (x int)",
                "ALTER TABLE dnc_audit DISABLE TRIGGER USER",
                "DROP TABLE schema_migrations",
                "UPDATE schema_migrations SET checksum = ''",
                "SELECT * FROM idempotency_keys",
            ):
                with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedObjectError)):
                    await conn.execute(sql)
        finally:
            await conn.close()


async def test_the_old_set_role_role_keeps_nothing(pg: asyncpg.Pool) -> None:
    """outdial_app (migrations 0200/0201, applied with SET ROLE) could UPDATE the head and INSERT records with
    any seq and time: it holds nothing in the database any more."""
    for table in ("dnc_audit", "dnc_audit_head", "dnc_entries", "dnc_lists"):
        for priv in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"):
            assert not await pg.fetchval(
                "SELECT has_table_privilege('outdial_app', $1, $2)", f"public.{table}", priv
            ), (table, priv)


async def test_role_creation_is_idempotent_and_race_safe(pg: asyncpg.Pool, database_url: str) -> None:
    """Roles are cluster-wide and many databases migrate at once: concurrent creators all succeed."""
    name = f"odt_role_{uuid.uuid4().hex[:10]}"
    sql = db._ENSURE_ROLE.format(role=name)
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        await asyncio.gather(*(c.execute(sql) for c in conns))
        await conns[0].execute(sql)
        assert await pg.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name) == 1
    finally:
        for c in conns:
            await c.close()
        await pg.execute(f"DROP ROLE IF EXISTS {name}")
    # and the whole grant step twice more in one database: the same result
    async with pg.acquire() as conn:
        await db.apply_grants(conn)
        await db.apply_grants(conn)
    await test_each_role_holds_exactly_its_grants(pg)


async def test_a_role_that_could_escape_is_refused(pg: asyncpg.Pool) -> None:
    # throwaway roles (cluster-wide: never touch the real ones other databases use)
    a, b = f"odt_a_{uuid.uuid4().hex[:8]}", f"odt_b_{uuid.uuid4().hex[:8]}"
    await pg.execute(f"CREATE ROLE {a} LOGIN")
    await pg.execute(f"CREATE ROLE {b} LOGIN CREATEDB")
    try:
        async with pg.acquire() as conn:
            assert await db.unsafe_roles(conn, [a]) == []
            await conn.execute(f"GRANT {b} TO {a}")
            problems = await db.unsafe_roles(conn, [a, b])
        assert len(problems) == 2
        assert f"{a} is member of {b}" in problems[0] and f"{b} is CREATEDB" in problems[1]
        async with pg.acquire() as conn:  # the real roles are clean
            assert await db.unsafe_roles(conn, [role_name(w) for w in RUNTIME]) == []
    finally:
        await pg.execute(f"DROP ROLE IF EXISTS {a}")
        await pg.execute(f"DROP ROLE IF EXISTS {b}")


def _production(services: Any, tmp_path: Path, name: str) -> Any:
    keys = production_keys(tmp_path / "keys")
    return services.settings.model_copy(
        update={"dev": False, "jwks": keys["jwks"], "service_key": keys["keys"][name]}
    )


async def test_production_refuses_a_schema_behind_and_development_migrates(
    services: Any, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    await pg.execute("DELETE FROM schema_migrations WHERE version = 202")
    svc_settings = _production(services, tmp_path, "agent")
    from outdial.agent.app import SPEC
    from outdial.core.server import serve

    with pytest.raises(db.SchemaBehind) as err:
        await asyncio.wait_for(serve(SPEC, svc_settings, stop=asyncio.Event()), 20)
    assert "0202_dnc_audit_append.sql" in str(err.value) and "outdial db migrate" in str(err.value)
    assert isinstance(err.value, StartupRefused)
    # nothing was migrated by the refused service
    assert await pg.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 202") == 0
    # in development the service applies it at start (as the migration role, not its own)
    await services.start("agent")
    assert await pg.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 202") == 1


async def test_production_dnc_needs_its_signing_key_and_checkpoint_sink(
    services: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from outdial.core.server import serve
    from outdial.dnc.app import SPEC

    monkeypatch.delenv("OUTDIAL_DNC_CHECKPOINT_URL", raising=False)
    monkeypatch.delenv("OUTDIAL_DNC_AUDIT_KEY_FILE", raising=False)
    svc_settings = _production(services, tmp_path, "dnc")
    with pytest.raises(StartupRefused, match="OUTDIAL_DNC_CHECKPOINT_URL and OUTDIAL_DNC_AUDIT_KEY_FILE"):
        await asyncio.wait_for(serve(SPEC, svc_settings, stop=asyncio.Event()), 20)
    monkeypatch.setenv("OUTDIAL_DNC_CHECKPOINT_URL", "s3://bucket/x")
    monkeypatch.setenv("OUTDIAL_DNC_AUDIT_KEY_FILE", "/nonexistent.pem")
    with pytest.raises(StartupRefused, match="unsupported scheme 's3'"):
        await asyncio.wait_for(serve(SPEC, svc_settings, stop=asyncio.Event()), 20)


async def test_outdial_db_migrate_sets_up_an_empty_database(infra: Any, pg: asyncpg.Pool) -> None:
    """The command the migration Job runs: all migrations and the grants as the migration role; again:
    nothing to do, same grants."""
    import os
    import sys

    name = f"odt_{infra.run_id}_migrate_{uuid.uuid4().hex[:6]}"
    await pg.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {**os.environ, "OUTDIAL_MIGRATE_DATABASE_URL": infra.db_url(name)}
        env.pop("OUTDIAL_DATABASE_URL", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "outdial.cli.main",
            "db",
            "migrate",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
        assert proc.returncode == 0, out
        assert (
            "0202_dnc_audit_append.sql" in out
            and "grants: outdial_campaign, outdial_pacing, outdial_dnc" in out
        )
        assert await db.migrate_url(infra.db_url(name)) == []  # a second run: nothing to apply
        conn = await asyncpg.connect(as_user(infra.db_url(name), role_name("dnc")))
        try:
            assert await conn.fetchval("SELECT count(*) FROM dnc_audit") == 0
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("SELECT * FROM leads")
        finally:
            await conn.close()
    finally:
        await pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
