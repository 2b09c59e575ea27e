"""asyncpg pool and SQL migrations.

Migrations are numbered files in ``outdial/migrations`` (``0001_core.sql``, ``0101_campaigns.sql`` …;
ranges: 0001-0099 core, 0100 campaign, 0200 dnc, 0300 agent, 0400 pacing). They are applied in order, each
in its own transaction, by ``outdial db migrate`` and at every service start; a PostgreSQL advisory lock
serialises replicas that start together, and applied versions are recorded so that a second run is a no-op.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

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


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied. Safe to run from many processes at once."""
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
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def migrate_url(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def _reset_keeping_role(conn: asyncpg.Connection) -> None:
    # RESET ALL leaves the role alone (PostgreSQL marks it GUC_NO_RESET_ALL), so a session-level SET ROLE
    # would outlive the release; RESET ROLE goes back to the role given at connect time.
    await conn.execute(conn.get_reset_query() + "RESET ROLE;")


def role_settings(role: str) -> dict[str, str]:
    """Connect-time settings that make every statement of a session run as ``role``."""
    return {"role": role}


async def create_pool(
    url: str, *, min_size: int = 0, max_size: int = 10, role: str | None = None
) -> asyncpg.Pool:
    """A pool that connects lazily (min_size 0 by default), so a service starts while PostgreSQL is down
    and reports NOT_SERVING until it answers.

    With ``role``, every session runs as that role: it is sent as the ``role`` setting at connect time, so
    it is the session's default (PostgreSQL checks there and then that the login user is a superuser or
    a member of it, else the connection is refused), and each release runs ``RESET ROLE`` after the usual
    reset so that no ``SET ROLE`` outlives its borrower."""
    extra: dict[str, Any] = {}
    if role:
        extra = {"server_settings": role_settings(role), "reset": _reset_keeping_role}
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        command_timeout=30,
        max_inactive_connection_lifetime=60,
        **extra,
    )
    assert pool is not None
    return pool
