"""Calls PostgreSQL shows as dialled and not ended, whose replica is gone (and whose Redis traces are gone
too, as after Redis lost its data), are closed by the campaign's lease holder within a lease time, each
from what was recorded of it: the answer, its time, the connection and the agent are kept; the lead and the
agent are released. A replica that is alive keeps its calls."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.core import keys
from outdial.v1 import agent_pb2
from tests.conftest import Services
from tests.integration.test_pacing_dialer import (
    CID,
    FakeAgents,
    FakeDnc,
    events,
    seed_campaign,
    start_peers,
    wait_for,
    workday_clock,
)

pytestmark = pytest.mark.timeout(90)


class RecordingAgents(FakeAgents):
    def __init__(self) -> None:
        super().__init__(refuse_every=10**9)
        self.ended: list[tuple[str, str]] = []
        self.released: list[tuple[str, str]] = []

    async def EndCall(self, request: Any, context: Any) -> agent_pb2.EndCallResponse:
        self.ended.append((request.agent_id, request.call_id))
        return agent_pb2.EndCallResponse()

    async def ReleaseAgent(self, request: Any, context: Any) -> agent_pb2.ReleaseAgentResponse:
        self.released.append((request.agent_id, request.call_id))
        return agent_pb2.ReleaseAgentResponse(released=True)


async def test_open_calls_of_a_dead_replica_are_closed_from_their_record(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTDIAL_PACING_LEASE_MS", "1500")
    monkeypatch.setenv("OUTDIAL_DNC_REQUIRE_REGISTRY", "false")
    clock = workday_clock()
    now = clock.now()
    # No hopper leads: this test is about calls already placed.
    await seed_campaign(redis, n_leads=0, n_agents=2, dial_mode="progressive")
    t0 = now - timedelta(seconds=20)
    rows = [
        # (call id, lead, replica, answer, answer_at, connect_at, agent, outcome)
        ("c-ringing", "l1", "dead", None, None, None, None, None),
        ("c-answered", "l2", "dead", "human", t0 + timedelta(seconds=8), None, None, None),
        (
            "c-connected",
            "l3",
            "dead",
            "human",
            t0 + timedelta(seconds=5),
            t0 + timedelta(seconds=6),
            "agent-7",
            "connected",
        ),
        ("c-machine", "l4", "dead", "machine", t0 + timedelta(seconds=4), None, None, "machine"),
        ("c-alive", "l5", "alive-r", None, None, None, None, None),
    ]
    for call_id, lead, replica, answer, answer_at, connect_at, agent, outcome in rows:
        await pg.execute(
            """INSERT INTO dial_attempts (call_id, campaign_id, lead_id, number, attempt, replica, fence_token,
                   allowed, gate_at, dial_at, answer, answer_at, connect_at, agent_id, outcome)
               VALUES ($1, $2, $3, $4, 1, $5, 1, true, $6, $6, $7, $8, $9, $10, $11)""",
            call_id,
            CID,
            lead,
            f"+1212555{int(lead[1:]):04d}",
            replica,
            t0,
            answer,
            answer_at,
            connect_at,
            agent,
            outcome,
        )
    # The live replica announces itself (its presence key); the dead one has none.
    await redis.set(keys.pacing_replica("alive-r"), 1, px=60_000)
    # A lead claim of the dead replica's ringing call, and the agent it held for it.
    await redis.set(keys.lead_claim(CID, "l1"), "c-ringing")
    await redis.set(keys.call_agent("c-ringing"), "agent-held")

    agents = RecordingAgents()
    peers = await start_peers(services, FakeDnc(set()), agents)
    try:
        await services.start("pacing", clock=clock, instance_id="r1")

        async def closed() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM dial_attempts WHERE replica = 'dead' AND end_at IS NULL"
            )
            return n == 0

        await wait_for(closed, timeout=15)
        got = {
            r["call_id"]: r for r in await pg.fetch("SELECT * FROM dial_attempts WHERE campaign_id = $1", CID)
        }
        assert got["c-ringing"]["outcome"] == "failed"
        a = got["c-answered"]
        assert (a["outcome"], a["answer"], a["answer_at"]) == ("abandoned", "human", rows[1][4])
        c = got["c-connected"]
        assert (c["outcome"], c["answer"], c["answer_at"], c["connect_at"], c["agent_id"]) == (
            "connected",
            "human",
            rows[2][4],
            rows[2][5],
            "agent-7",
        )
        assert (got["c-machine"]["outcome"], got["c-machine"]["answer"]) == ("machine", "machine")
        # The live replica's call is left to it.
        assert got["c-alive"]["end_at"] is None
        # The connected agent moved on; the held agent was given back; the lead claim was freed.
        assert ("agent-7", "c-connected") in agents.ended
        assert ("agent-held", "c-ringing") in agents.released
        assert await redis.get(keys.lead_claim(CID, "l1")) is None
        # One call.ended per closed call, and the abandoned one counts against the budget.
        ended = [e["call_id"] for e in await events(redis) if e["type"] == "call.ended"]
        assert sorted(ended) == ["c-answered", "c-connected", "c-machine", "c-ringing"]
        window = await redis.zrange(keys.abandon_window(CID), 0, -1)
        assert "c-answered:a" in window
    finally:
        await peers.stop(None)


async def test_the_abandonment_window_is_rebuilt_from_postgresql(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis lost its data: the new lease holder's budget still counts the answers PostgreSQL recorded."""
    monkeypatch.setenv("OUTDIAL_DNC_REQUIRE_REGISTRY", "false")
    clock = workday_clock()
    now = clock.now()
    await seed_campaign(redis, n_leads=0, n_agents=1)
    for i in range(30):
        outcome = "abandoned" if i < 2 else "connected"
        at = now - timedelta(hours=i)
        await pg.execute(
            """INSERT INTO dial_attempts (call_id, campaign_id, lead_id, number, replica, fence_token, allowed,
                   gate_at, dial_at, answer, answer_at, connect_at, agent_id, outcome, end_at)
               VALUES ($1, $2, $3, $4, 'old', 1, true, $5, $5, 'human', $5, $5, 'a1', $6, $5)""",
            f"h{i}",
            CID,
            f"l{i}",
            f"+1212555{i:04d}",
            at,
            outcome,
        )
    peers = await start_peers(services, FakeDnc(set()), RecordingAgents())
    try:
        await services.start("pacing", clock=clock, instance_id="r1")

        async def counted() -> bool:
            return await redis.zcard(keys.abandon_window(CID)) == 30

        await wait_for(counted, timeout=10)
        window = await redis.zrange(keys.abandon_window(CID), 0, -1)
        assert sum(1 for m in window if m.endswith(":a")) == 2
    finally:
        await peers.stop(None)


async def test_the_gates_number_history_is_rebuilt_from_postgresql(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis lost its data: the new lease holder puts back each number's recent attempts and the latest
    UK 72-hour abandonment mark from PostgreSQL, so the dial-time caps are as strict as before."""
    monkeypatch.setenv("OUTDIAL_DNC_REQUIRE_REGISTRY", "false")
    clock = workday_clock()
    now = clock.now()
    await seed_campaign(redis, n_leads=0, n_agents=1)
    number = "+12125550777"
    rows = [  # (call id, dialled hours ago, outcome)
        ("n1", 70.0, "abandoned"),  # abandoned, the older one
        ("n2", 20.0, "abandoned"),  # abandoned, the latest: its 72 hours rule
        ("n3", 2.0, "no_answer"),
        ("old", 24.0 * 10, "no_answer"),  # older than the history kept
    ]
    for call_id, hours, outcome in rows:
        at = now - timedelta(hours=hours)
        await pg.execute(
            """INSERT INTO dial_attempts (call_id, campaign_id, lead_id, number, replica, fence_token, allowed,
                   gate_at, dial_at, answer, answer_at, outcome, end_at)
               VALUES ($1, $2, 'l1', $3, 'old', 1, true, $4, $4, $5, $6, $7, $8)""",
            call_id, CID, number, at, "human" if outcome == "abandoned" else None,
            at + timedelta(seconds=10) if outcome == "abandoned" else None, outcome, at + timedelta(minutes=1),
        )  # fmt: skip
    peers = await start_peers(services, FakeDnc(set()), RecordingAgents())
    try:
        await services.start("pacing", clock=clock, instance_id="r1")

        async def rebuilt() -> bool:
            return await redis.zcard(keys.number_attempts(number)) == 3

        await wait_for(rebuilt, timeout=10)
        assert set(await redis.zrange(keys.number_attempts(number), 0, -1)) == {"n1", "n2", "n3"}
        mark = int(await redis.get(keys.number_abandoned(number)))
        assert mark == int((now - timedelta(hours=20) + timedelta(seconds=10)).timestamp() * 1000)
        assert await redis.ttl(keys.number_abandoned(number)) > 51 * 3600
    finally:
        await peers.stop(None)
