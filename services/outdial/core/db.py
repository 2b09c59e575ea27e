"""asyncpg pool, SQL migrations and the database roles' grants.

Migrations are numbered files in ``outdial/migrations`` (``0001_core.sql``, ``0101_campaigns.sql`` …;
ranges: 0001-0099 core, 0100 campaign, 0200 dnc, 0300 agent, 0400 pacing). They are applied in order, each
in its own transaction, by ``outdial db migrate`` (the migration role: it owns the schema), and at service
start only in development (``OUTDIAL_DEV=1``); a PostgreSQL advisory lock serialises runs that start
together, and applied versions are recorded so that a second run is a no-op. After the migrations the
grants of ``outdial/migrations/grants.py`` are applied: one login role per service, with exactly its
privileges. In production a service only checks that no migration is pending (:func:`pending`) and
refuses to start otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

import asyncpg

from outdial.core.config import StartupRefused
from outdial.migrations.grants import GRANTS, RUNTIME, TEMPORARY, role_name
from outdial.rules.table import RetentionRow, load_tables

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x6F7574_6469616C  # "outdial"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    out: list[Migration] = []
    for entry in resources.files("outdial.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return out


async def migrate(conn: asyncpg.Connection, *, grants: bool = True) -> list[str]:
    """Apply pending migrations, then the grants; returns the names applied. Safe to run from many processes
    at once. ``grants`` (``outdial db migrate``): always re-applied, and a failure is an error. Without
    (development starts): only when a migration was applied or the grant table changed, and a login that
    may not create roles only leaves a warning (development runs every service as that login)."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        done = {r["version"]: r for r in rows}
        for mig in load_migrations():
            if mig.version in done:
                if done[mig.version]["checksum"] != mig.checksum:
                    log.warning("migration %s changed after it was applied", mig.name)
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            applied_now.append(mig.name)
            log.info("applied migration %s", mig.name)
        await write_retention_policy(conn)
        if grants or applied_now or not await _grants_current(conn):
            try:
                await apply_grants(conn)
            except asyncpg.InsufficientPrivilegeError as exc:
                if grants:
                    raise
                log.warning("database roles and grants not applied (%s): run `outdial db migrate`", exc)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def write_retention_policy(conn: asyncpg.Connection) -> None:
    """Each jurisdiction's call-record retention minimum, from the rules table (kind ``retention``), into
    ``retention_policy`` (0118): the floor ``retention_prune`` keeps whatever its caller asks. Written by the
    migration role only; a jurisdiction whose rules set none keeps its row out (its records get the largest)."""
    if not await conn.fetchval("SELECT to_regclass('retention_policy') IS NOT NULL"):
        return
    tables = load_tables()
    today = datetime.now(UTC).date()
    rows = []
    for j in tables.jurisdictions():
        found = tables.in_force(j, "", today).of(RetentionRow)
        if found:
            best = max(found, key=lambda r: r.years)
            rows.append((j, best.years, best.source, best.id))
    async with conn.transaction():
        await conn.execute("DELETE FROM retention_policy")
        await conn.executemany(
            "INSERT INTO retention_policy (jurisdiction, min_years, source, rule_id) VALUES ($1, $2, $3, $4)",
            rows,
        )


async def migrate_url(url: str, *, grants: bool = True) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn, grants=grants)
    finally:
        await conn.close()


async def pending(conn: asyncpg.Connection) -> list[str]:
    """Names of the migrations of this release not applied to the database (all when it has none)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done: set[int] = set()
    if exists:
        done = {int(r["version"]) for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m.name for m in load_migrations() if m.version not in done]


class SchemaBehind(StartupRefused):
    """The database lacks migrations this release needs: production services refuse to start."""

    def __init__(self, service: str, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            f"{service}: the database schema is behind this release ({len(missing)} migration(s) not applied: "
            f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}). Run `outdial db migrate` with the "
            "migration role (in Kubernetes: the outdial-migrate Job) and start the service again. "
            "Services migrate at start only in development (OUTDIAL_DEV=1)."
        )


# ------------------------------------------------------------------------------------------- grants


def grants_checksum() -> str:
    text = repr((GRANTS, sorted(TEMPORARY)))
    return hashlib.sha256(text.encode()).hexdigest()


async def _grants_current(conn: asyncpg.Connection) -> bool:
    if not await conn.fetchval("SELECT to_regclass('schema_grants') IS NOT NULL"):
        return False
    return bool(
        await conn.fetchval("SELECT checksum = $1 FROM schema_grants WHERE id = 1", grants_checksum())
    )


# Creating a role is cluster-wide: databases migrated at the same time (tests, several deployments on one
# server) may race to create it; the loser's duplicate_object / unique_violation is success.
_ENSURE_ROLE = """
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
        CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'role {role} does not exist and % may not create it: create it (CREATE ROLE {role} LOGIN '
            'PASSWORD ...) or give the migration role CREATEROLE, then run outdial db migrate again', current_user
            USING ERRCODE = 'insufficient_privilege';
END
$do$"""


class UnsafeRole(RuntimeError):
    """A runtime role could escape its grants (superuser, BYPASSRLS, CREATEROLE, member of another role)."""


async def unsafe_roles(conn: asyncpg.Connection, roles: list[str]) -> list[str]:
    """What would let any of ``roles`` escape its grants: superuser and the like, or membership of another
    role (SET ROLE)."""
    rows = await conn.fetch(
        """SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb, r.rolreplication,
                  ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                         WHERE m.member = r.oid ORDER BY g.rolname) AS member_of
             FROM pg_roles r WHERE r.rolname = ANY($1::text[]) ORDER BY r.rolname""",
        roles,
    )
    out: list[str] = []
    for r in rows:
        bad = [
            attr
            for attr, on in (
                ("SUPERUSER", r["rolsuper"]),
                ("BYPASSRLS", r["rolbypassrls"]),
                ("CREATEROLE", r["rolcreaterole"]),
                ("CREATEDB", r["rolcreatedb"]),
                ("REPLICATION", r["rolreplication"]),
            )
            if on
        ]
        if r["member_of"]:
            bad.append(f"member of {', '.join(r['member_of'])} (SET ROLE would escape its grants)")
        if bad:
            out.append(
                f"database role {r['rolname']} is {'; '.join(bad)}: a service's login role must have none of "
                f"these (ALTER ROLE {r['rolname']} NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB "
                f"NOREPLICATION; REVOKE <role> FROM {r['rolname']})"
            )
    return out


async def ensure_roles(conn: asyncpg.Connection) -> None:
    """Create the runtime roles when missing; refuse (:class:`UnsafeRole`) one that could escape."""
    for who in RUNTIME:
        await conn.execute(_ENSURE_ROLE.format(role=role_name(who)))
    problems = await unsafe_roles(conn, [role_name(w) for w in RUNTIME])
    if problems:
        raise UnsafeRole("; ".join(problems))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def grant_statements(database: str) -> list[str]:
    """The SQL that gives every runtime role exactly its lines of ``grants.py`` in ``database``."""
    # PUBLIC may create temporary tables by default: only the roles of TEMPORARY may
    out: list[str] = [f"REVOKE TEMPORARY ON DATABASE {_ident(database)} FROM PUBLIC"]
    for who in RUNTIME:
        role = role_name(who)
        out += [
            f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
            f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}",
            f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM {role}",
            f"REVOKE ALL ON DATABASE {_ident(database)} FROM {role}",
            f"GRANT CONNECT ON DATABASE {_ident(database)} TO {role}",
            f"GRANT USAGE ON SCHEMA public TO {role}",
        ]
        if who in TEMPORARY:
            out.append(f"GRANT TEMPORARY ON DATABASE {_ident(database)} TO {role}")
    for g in GRANTS:
        kind = {"table": "TABLE", "sequence": "SEQUENCE", "function": "FUNCTION"}[g.kind]
        if g.kind == "function":
            out.append(f"REVOKE ALL ON FUNCTION {g.name} FROM PUBLIC")
        out.append(f"GRANT {g.privileges} ON {kind} {g.name} TO {role_name(g.who)}")
    return out


async def apply_grants(conn: asyncpg.Connection) -> None:
    """Create the runtime roles when missing and give each exactly its grants (one transaction)."""
    await ensure_roles(conn)
    database = await conn.fetchval("SELECT current_database()")
    async with conn.transaction():
        for sql in grant_statements(database):
            await conn.execute(sql)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_grants (
                   id integer PRIMARY KEY CHECK (id = 1), checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        await conn.execute(
            """INSERT INTO schema_grants (id, checksum) VALUES (1, $1)
               ON CONFLICT (id) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()""",
            grants_checksum(),
        )
    log.info("grants applied to %s", ", ".join(role_name(w) for w in RUNTIME))


async def create_pool(url: str, *, min_size: int = 0, max_size: int = 10) -> asyncpg.Pool:
    """A pool that connects lazily (min_size 0 by default), so a service starts while PostgreSQL is down
    and reports NOT_SERVING until it answers. Each service's pool logs in as the service's own role
    (``OUTDIAL_<SERVICE>_DATABASE_URL``), never as the migration role."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        command_timeout=30,
        max_inactive_connection_lifetime=60,
    )
    assert pool is not None
    return pool
