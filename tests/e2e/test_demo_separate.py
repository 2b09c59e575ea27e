"""``outdial demo`` runs apart from the user's data (issue 16, point 5): its own fresh ``outdial_demo``
database and a private Redis; the user's database (the one ``outdial run`` uses) and Redis are untouched."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from outdial.cli.demo import DemoConfig, run_demo
from outdial.core.config import Settings
from outdial.core.infra import DEMO_DATABASE, start_private_redis


async def _fingerprint(url: str) -> dict[str, int]:
    """Every table's row count and the database's transaction counters of writes."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) AS t FROM pg_stat_user_tables"
        )
        return {r["t"]: await conn.fetchval(f"SELECT count(*) FROM {r['t']}") for r in tables}
    finally:
        await conn.close()


async def test_the_demo_leaves_the_users_database_and_redis_untouched(
    database_url: str, tmp_path: Path
) -> None:
    user_redis = start_private_redis()
    try:
        conn = await asyncpg.connect(database_url)
        try:  # the user's own data, as `outdial run` would have left it
            await conn.execute(
                """INSERT INTO campaigns (id, name, state, settings) VALUES ('userscampaign', 'Mine', 'draft', '{}')
                   ON CONFLICT DO NOTHING"""
            )
        finally:
            await conn.close()
        before = await _fingerprint(database_url)
        settings = Settings(
            database_url=database_url,
            redis_url=user_redis.url,
            dev=True,
            grace_seconds=3,
            health_interval_seconds=0.5,
        )
        cfg = DemoConfig(
            seconds=6,
            agents=3,
            leads=150,
            seed=11,
            live=False,
            log_path=str(tmp_path / "services.log"),
            separate=True,
        )
        result = await run_demo(settings, cfg)
        assert result.as_dict()["database"] == DEMO_DATABASE
        assert result.calls_placed > 0, "the demo ran no calls"

        assert await _fingerprint(database_url) == before
        client = aioredis.from_url(user_redis.url)
        try:
            assert await client.dbsize() == 0
        finally:
            await client.aclose()
        demo = await asyncpg.connect(result.database_url)
        try:
            assert (
                await demo.fetchval("SELECT count(*) FROM campaigns WHERE id = $1", result.campaign_id) == 1
            )
            assert await demo.fetchval("SELECT count(*) FROM campaigns WHERE id = 'userscampaign'") == 0
        finally:
            await demo.close()
    finally:
        user_redis.stop()
