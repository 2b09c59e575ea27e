"""The per-person caps and the AMD-aware abandonment window on append-only dial attempts (migrations 0404,
0409, 0412): the locked recount's refusal is an event the view reads, and the takeover's window rebuild still
tells connected, abandoned and machine answers apart from the events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.pacing.store import PacingStore

NOW = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


async def gate(store: PacingStore, call_id: str, lead: str, number: str, at: datetime) -> None:
    await store.record_gate(
        call_id=call_id,
        campaign_id="c1",
        lead_id=lead,
        number=number,
        attempt=1,
        replica="r",
        fence_token=1,
        allowed=True,
        reasons=[],
        gate_at=at,
    )


async def test_a_refused_dial_is_an_event_and_the_gate_row_never_changes(
    pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    store = PacingStore(pg, redis)
    person = frozenset({"+13052340001", "+13052340002"})
    await gate(store, "a", "l1", "+13052340001", NOW - timedelta(hours=2))
    assert await store.mark_dialed("a", NOW - timedelta(hours=2), person=person, cap=1, period=DAY)
    await gate(store, "b", "l2", "+13052340002", NOW)
    # the person (two numbers) had one dial in the last 24 h: cap 1 refuses the second number's call
    assert not await store.mark_dialed("b", NOW, person=person, cap=1, period=DAY)
    row = await pg.fetchrow(
        "SELECT allowed, reasons, dial_at, revisions FROM dial_attempts WHERE call_id = 'b'"
    )
    assert row["allowed"] is False and row["dial_at"] is None and row["revisions"] == 1
    assert '"cap.person_24h"' in row["reasons"]
    gate_row = await pg.fetchrow("SELECT allowed, reasons::text FROM dial_attempt_gates WHERE call_id = 'b'")
    assert gate_row["allowed"] is True and gate_row["reasons"] == "[]"  # what the gate decided stays
    ev = await pg.fetchrow("SELECT kind, actor, reason FROM dial_attempt_events WHERE call_id = 'b'")
    assert dict(ev) == {"kind": "refusal", "actor": "pacing", "reason": "cap.person_24h"}
    # refused: no lock row, so another call to that lead can still be dialled
    assert await pg.fetchval("SELECT count(*) FROM dial_open WHERE call_id = 'b'") == 0
    # a refusal must say why
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute("INSERT INTO dial_attempt_events (call_id, kind) VALUES ('b', 'refusal')")


async def test_the_person_query_reads_the_gate_tables_index(pg: asyncpg.Pool) -> None:
    """0404's index went with dial_at (0409); 0412's on (number, gate_at) serves the person query."""
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                """EXPLAIN SELECT number, call_id, dial_at FROM dial_attempts
                    WHERE number = ANY($1::text[]) AND gate_at > $2::timestamptz - interval '1 day'
                      AND dial_at IS NOT NULL AND dial_at > $2""",
                ["+13052340001"],
                NOW,
            )
        )
    assert "dial_attempt_gates_number_gate" in plan, plan


async def test_the_window_rebuild_tells_connected_abandoned_and_machine_apart(
    pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    store = PacingStore(pg, redis)
    calls = {"h": ("connected", "human"), "a": ("abandoned", "human"), "m": ("machine", "machine")}
    for i, (call_id, (outcome, answer)) in enumerate(calls.items()):
        at = NOW + timedelta(minutes=i)
        await gate(store, call_id, f"l{i}", f"+1305234010{i}", at)
        assert await store.mark_dialed(call_id, at)
        await store.mark_answered(call_id, answer, at + timedelta(seconds=5), None)
        if outcome == "connected":
            assert await store.mark_connected(call_id, at + timedelta(seconds=6), "agent-1")
        assert await store.finish_attempt(
            call_id,
            outcome=outcome,
            answer=answer,
            answer_at=at + timedelta(seconds=5),
            connect_at=at + timedelta(seconds=6) if outcome == "connected" else None,
            end_at=at + timedelta(seconds=30),
            agent_id="agent-1" if outcome == "connected" else None,
            opt_out=False,
        )
    got = await store.live_answers_since("c1", NOW - timedelta(minutes=1), machines=True)
    assert sorted((c, k) for c, _, k in got) == [("a", "a"), ("h", "h"), ("m", "m")]
    assert {c: at for c, at, _ in got}["m"] == NOW + timedelta(minutes=2, seconds=5)
    without = await store.live_answers_since("c1", NOW - timedelta(minutes=1))
    assert sorted((c, k) for c, _, k in without) == [("a", "a"), ("h", "h")]
