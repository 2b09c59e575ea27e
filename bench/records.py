"""Dial-attempt records benchmark: the dialer's per-call PostgreSQL writes on the append-only schema (migration
0409: a gate row, one event row per step, the dial_open lock rows) against the old one-row-UPDATEd-per-step
schema, measured in the same run, on the same database, with the same calls.

    python bench/records.py [--calls 5000] [--workers 16] [--preload 50000]

Each call is what the dialer writes: the gate's decision, the dial, the answer, the connection, the end (five
statements, one round trip each, on both schemas), by ``--workers`` concurrent callers. Then the reads a lease
holder makes (its open calls, the number history it rebuilds, a batch of calls by id) over ``--preload`` ended
calls. A throwaway database on the machine's PostgreSQL (:5432) or a private one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

sys.path.insert(0, os.path.dirname(__file__))
from _common import console, summary, table

from outdial.core import db
from outdial.core.infra import PrivateServer, port_open, start_private_postgres
from outdial.pacing.store import PacingStore
from outdial.rules.caps import DAY
from outdial.rules.law import UK_ABANDON_QUIET

# The schema and statements before 0409 (0400-0403), as the baseline.
OLD_SCHEMA = """
CREATE TABLE old_attempts (
    call_id text PRIMARY KEY, campaign_id text NOT NULL, lead_id text NOT NULL, number text NOT NULL,
    attempt integer NOT NULL DEFAULT 0, replica text NOT NULL, fence_token bigint NOT NULL, allowed boolean NOT NULL,
    reasons jsonb NOT NULL DEFAULT '[]', gate_at timestamptz NOT NULL, dial_at timestamptz, answer_at timestamptz,
    connect_at timestamptz, end_at timestamptz, outcome text, answer text, agent_id text,
    opt_out boolean NOT NULL DEFAULT false, mode text NOT NULL DEFAULT '', manual boolean NOT NULL DEFAULT false,
    dialled_by text, recording_path text, recording_ms bigint, recording_sha256 text,
    CONSTRAINT old_connected_is_answered CHECK (outcome IS DISTINCT FROM 'connected'
        OR (answer = 'human' AND answer_at IS NOT NULL AND connect_at IS NOT NULL AND agent_id IS NOT NULL
            AND agent_id <> ''))
);
CREATE INDEX old_campaign_gate ON old_attempts (campaign_id, gate_at);
CREATE INDEX old_lead ON old_attempts (campaign_id, lead_id, dial_at);
CREATE UNIQUE INDEX old_open_lead ON old_attempts (campaign_id, lead_id) WHERE dial_at IS NOT NULL AND end_at IS NULL;
CREATE UNIQUE INDEX old_open_number ON old_attempts (number) WHERE dial_at IS NOT NULL AND end_at IS NULL;
CREATE UNIQUE INDEX old_open_agent ON old_attempts (agent_id) WHERE connect_at IS NOT NULL AND end_at IS NULL;
CREATE INDEX old_end ON old_attempts (end_at) WHERE end_at IS NOT NULL;
"""


class OldStore:
    """The statements PacingStore ran before 0409."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record_gate(self, **kw: Any) -> None:
        await self.pool.execute(
            """INSERT INTO old_attempts (call_id, campaign_id, lead_id, number, attempt, replica, fence_token,
                   allowed, reasons, gate_at, mode, manual, dialled_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12 <> '', nullif($12, ''))
               ON CONFLICT (call_id) DO NOTHING""",
            kw["call_id"], kw["campaign_id"], kw["lead_id"], kw["number"], kw["attempt"], kw["replica"],
            kw["fence_token"], kw["allowed"], "[]", kw["gate_at"], "", "",
        )  # fmt: skip

    async def mark_dialed(self, call_id: str, dial_at: datetime) -> bool:
        await self.pool.execute("UPDATE old_attempts SET dial_at = $2 WHERE call_id = $1", call_id, dial_at)
        return True

    async def mark_answered(
        self, call_id: str, answer: str, answer_at: datetime, outcome: str | None
    ) -> None:
        await self.pool.execute(
            """UPDATE old_attempts SET answer = $2, answer_at = $3, outcome = COALESCE($4, outcome)
               WHERE call_id = $1 AND end_at IS NULL""",
            call_id, answer, answer_at, outcome,
        )  # fmt: skip

    async def mark_connected(self, call_id: str, connect_at: datetime, agent_id: str) -> bool:
        await self.pool.execute(
            """UPDATE old_attempts SET connect_at = $2, agent_id = $3, outcome = 'connected'
               WHERE call_id = $1 AND end_at IS NULL""",
            call_id, connect_at, agent_id,
        )  # fmt: skip
        return True

    async def finish_attempt(self, call_id: str, **kw: Any) -> bool:
        row = await self.pool.fetchval(
            """UPDATE old_attempts SET outcome = $2, answer = COALESCE($3, answer),
                   answer_at = COALESCE($4, answer_at), connect_at = COALESCE($5, connect_at), end_at = $6,
                   agent_id = COALESCE($7, agent_id), opt_out = opt_out OR $8,
                   recording_path = $9, recording_ms = $10, recording_sha256 = $11
               WHERE call_id = $1 AND end_at IS NULL RETURNING 1""",
            call_id, kw["outcome"], kw["answer"], kw["answer_at"], kw["connect_at"], kw["end_at"], kw["agent_id"],
            kw["opt_out"], None, None, None,
        )  # fmt: skip
        return row is not None

    async def open_attempts(self, campaign_id: str) -> list[Any]:
        return list(
            await self.pool.fetch(
                "SELECT * FROM old_attempts WHERE campaign_id = $1 AND dial_at IS NOT NULL AND end_at IS NULL",
                campaign_id,
            )
        )

    async def recent_dials(self, campaign_id: str, since: datetime, abandoned_since: datetime) -> list[Any]:
        return list(
            await self.pool.fetch(
                """SELECT number, call_id, dial_at,
                          CASE WHEN outcome = 'abandoned' AND answer_at >= $3 THEN answer_at END AS abandoned_at
                   FROM old_attempts WHERE campaign_id = $1 AND dial_at >= $2""",
                campaign_id, since, abandoned_since,
            )
        )  # fmt: skip

    async def attempts(self, call_ids: list[str]) -> dict[str, Any]:
        rows = await self.pool.fetch("SELECT * FROM old_attempts WHERE call_id = ANY($1::text[])", call_ids)
        return {r["call_id"]: r for r in rows}


async def one_call(store: Any, cid: str, worker: int, i: int, at: datetime) -> float:
    call_id = f"w{worker}-{i}-{uuid.uuid4().hex[:8]}"
    lead = f"{worker}-{i}"
    t0 = time.perf_counter()
    await store.record_gate(
        call_id=call_id, campaign_id=cid, lead_id=lead, number=f"+1212{worker:03d}{i:04d}", attempt=1,
        replica="bench", fence_token=1, allowed=True, reasons=[], gate_at=at,
    )  # fmt: skip
    assert await store.mark_dialed(call_id, at)
    await store.mark_answered(call_id, "human", at + timedelta(seconds=8), None)
    assert await store.mark_connected(call_id, at + timedelta(seconds=9), f"agent-{worker}")
    won = await store.finish_attempt(
        call_id, outcome="connected", answer="human", answer_at=at + timedelta(seconds=8),
        connect_at=at + timedelta(seconds=9), end_at=at + timedelta(seconds=70), agent_id=f"agent-{worker}",
        opt_out=False,
    )  # fmt: skip
    assert won
    return time.perf_counter() - t0


async def run_calls(
    store: Any, cid: str, calls: int, workers: int, at: datetime
) -> tuple[list[float], float]:
    per = max(1, calls // workers)
    lat: list[float] = []

    async def worker(w: int) -> None:
        for i in range(per):
            lat.append(await one_call(store, cid, w, i, at + timedelta(seconds=i)))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return lat, time.perf_counter() - t0


async def timed(fn: Callable[[], Awaitable[object]], n: int = 20) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - t0) / n * 1000


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=5000, help="calls written per schema")
    ap.add_argument("--workers", type=int, default=16, help="concurrent writers (dialer tasks)")
    ap.add_argument("--preload", type=int, default=50000, help="ended calls already in each schema")
    args = ap.parse_args()
    private: list[PrivateServer] = []
    if port_open("127.0.0.1", 5432):
        server_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        pg = start_private_postgres()
        private.append(pg)
        server_url = pg.url
    dbname = f"outdial_bench_records_{os.getpid()}"
    conn = await asyncpg.connect(server_url)
    await conn.execute(f'CREATE DATABASE "{dbname}"')
    await conn.close()
    db_url = server_url.rpartition("/")[0] + "/" + dbname
    results: dict[str, dict[str, Any]] = {}
    try:
        await db.migrate_url(db_url, grants=False)
        pool = await asyncpg.create_pool(db_url, min_size=args.workers, max_size=args.workers)
        assert pool is not None
        await pool.execute(OLD_SCHEMA)
        new = PacingStore(pool, None)  # type: ignore[arg-type]  # the write and read paths use PostgreSQL only
        old = OldStore(pool)
        base = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
        for name, store in (("before (one row, UPDATEd)", old), ("append-only (0409)", new)):
            console.print(f"{name}: preloading {args.preload:,} ended calls ...")
            # The history the reads look through: other campaigns' calls and this campaign's older ones.
            await run_calls(store, "other", args.preload // 2, args.workers, base - timedelta(days=3))
            await run_calls(store, "c1", args.preload // 2, args.workers, base - timedelta(days=1))
            await pool.execute("ANALYZE")
            lat, wall = await run_calls(store, "c1", args.calls, args.workers, base)
            s = summary([x * 1000 for x in lat])
            ids = [r["call_id"] for r in await pool.fetch(
                "SELECT call_id FROM dial_attempt_gates WHERE campaign_id = 'c1' LIMIT 50"
                if store is new else "SELECT call_id FROM old_attempts WHERE campaign_id = 'c1' LIMIT 50"
            )]  # fmt: skip
            results[name] = {
                "calls/s": len(lat) / wall,
                "p50 ms": s["p50"],
                "p99 ms": s["p99"],
                "open calls ms": await timed(lambda s=store: s.open_attempts("c1")),  # type: ignore[misc]
                "number history ms": await timed(
                    lambda s=store: s.recent_dials("c1", base - DAY, base - UK_ABANDON_QUIET),  # type: ignore[misc]
                    5,
                ),
                "50 calls by id ms": await timed(lambda s=store, i=ids: s.attempts(i)),  # type: ignore[misc]
            }
        sizes = await pool.fetchrow(
            """SELECT pg_total_relation_size('old_attempts') AS old,
                      pg_total_relation_size('dial_attempt_gates') + pg_total_relation_size('dial_attempt_events')
                      + pg_total_relation_size('dial_open') AS new"""
        )
        await pool.close()
    finally:
        conn = await asyncpg.connect(server_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await conn.close()
        for p in reversed(private):
            p.stop()
    names = list(results)
    keys_ = list(results[names[0]])
    table(
        f"dial-attempt records: {args.calls:,} calls by {args.workers} writers, 5 statements each, over "
        f"{args.preload:,} calls",
        ["figure", *names, "ratio"],
        [(k, *(results[n][k] for n in names), results[names[1]][k] / results[names[0]][k]) for k in keys_],
    )
    assert sizes is not None
    console.print(
        f"on disk: before {sizes['old'] / 1e6:.1f} MB, append-only {sizes['new'] / 1e6:.1f} MB "
        f"({sizes['new'] / sizes['old']:.2f}x); round trips per call: 5 on both"
    )


if __name__ == "__main__":
    asyncio.run(main())
