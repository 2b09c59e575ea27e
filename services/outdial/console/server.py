"""Run the console: ``outdial console`` (and ``python -m outdial.console``)."""

from __future__ import annotations

import logging

import uvicorn

from outdial.console.app import build_app
from outdial.console.settings import ConsoleSettings
from outdial.core import db
from outdial.core.config import Settings, StartupRefused
from outdial.core.signing import issuer_key

log = logging.getLogger("outdial.console")


def database_url(settings: Settings, csettings: ConsoleSettings) -> str:
    url = csettings.database_url or settings.database_url
    if url is None:
        raise StartupRefused(
            "OUTDIAL_CONSOLE_DATABASE_URL (or OUTDIAL_DATABASE_URL) is not set: the console keeps its users and "
            "sessions in PostgreSQL"
        )
    return url


async def serve(settings: Settings, csettings: ConsoleSettings) -> None:
    """Serve until cancelled or signalled. In development the schema is migrated first (as the services do);
    otherwise a schema behind refuses the start (`outdial db migrate`)."""
    url = database_url(settings, csettings)
    if settings.dev:
        await db.migrate_url(settings.migrate_url() or url)
    key = issuer_key(settings)  # refuses the development keyset outside development mode
    pool = await db.create_pool(url, min_size=0, max_size=settings.db_pool_max)
    try:
        async with pool.acquire() as conn:
            missing = await db.pending(conn)
        if missing:
            raise StartupRefused(
                f"the database schema is behind ({', '.join(missing)}): run `outdial db migrate`"
            )
        app = build_app(settings, csettings, pool, key)
        config = uvicorn.Config(
            app,
            host=csettings.host,
            port=csettings.port,
            log_config=None,
            access_log=False,
            proxy_headers=True,
            timeout_graceful_shutdown=int(settings.grace_seconds),
        )
        server = uvicorn.Server(config)
        log.info("console listening on http://%s:%d", csettings.host, csettings.port)
        await server.serve()
    finally:
        await pool.close()
