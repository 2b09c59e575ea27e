"""A campaign through the real services: dnc, agent and pacing (with the simulated carrier, accelerated),
simulated agents over the agent service's RPCs. Checked from PostgreSQL (the dialer's dial_attempts and the
DNC audit log) and the call-event stream: no call skipped the gate, no lead was dialled twice at once,
numbers on the internal DNC list were never dialled, abandonment stayed within the cap."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import Counter
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from outdial.core import keys
from outdial.v1 import agent_pb2, agent_pb2_grpc, common_pb2, dnc_pb2, dnc_pb2_grpc
from tests.conftest import RunningService, Services, make_token
from tests.integration.test_pacing_dialer import (
    CID,
    campaign_config,
    fast_sim_env,
    seed_hopper,
    wait_for,
    workday_clock,
)

N_LEADS = 40
N_AGENTS = 4


class SimAgent:
    """A simulated agent console: logs in, goes ready, takes offers, and after each call sets a disposition."""

    def __init__(self, services: Services, rs: RunningService, agent_id: str) -> None:
        self.services = services
        self.rs = rs
        self.agent_id = agent_id
        self.stub = agent_pb2_grpc.AgentServiceStub(services.channel(rs, role="agent", sub=agent_id))
        self.offers: list[str] = []
        self.task: asyncio.Task[None] | None = None
        self.call: Any = None

    async def start(self) -> None:
        await self.services.assign(CID, self.agent_id, target=self.rs)
        await self.stub.Login(
            agent_pb2.LoginRequest(campaigns=[agent_pb2.CampaignMembership(campaign_id=CID, priority=1)])
        )
        auth = (("authorization", f"Bearer {make_token('agent', self.agent_id)}"),)
        self.call = self.stub.Connect(agent_pb2.ConnectRequest(), metadata=auth)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.call:
            if msg.HasField("offer"):
                self.offers.append(msg.offer.call_id)
            elif msg.HasField("status") and msg.status.state == common_pb2.AGENT_STATE_WRAP_UP:
                await self.stub.SetDisposition(
                    agent_pb2.SetDispositionRequest(call_id=msg.status.call_id, disposition="not_interested")
                )
            elif msg.HasField("status") and msg.status.state == common_pb2.AGENT_STATE_PAUSED:
                await self.stub.SetState(agent_pb2.SetStateRequest(state=common_pb2.AGENT_STATE_READY))

    async def stop(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self.task


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_sim_env(monkeypatch)


async def seed(redis: aioredis.Redis) -> list[str]:
    cfg = campaign_config(
        dial_mode="predictive", dispositions=["sale", "not_interested", "do_not_call", "callback"]
    )
    await redis.hset(keys.campaign_config(CID), "json", json.dumps(cfg))
    numbers = [f"+1212234{i:04d}" for i in range(N_LEADS)]
    await seed_hopper(redis, numbers, state="NY")
    return numbers


async def test_campaign_through_real_services(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, env: None
) -> None:
    clock = workday_clock()
    numbers = await seed(redis)
    dnc = await services.start("dnc", clock=clock)
    agent = await services.start("agent", clock=clock)
    on_list = {numbers[5], numbers[17]}
    await dnc_pb2_grpc.DncServiceStub(services.channel(dnc, role="compliance")).AddNumbers(
        dnc_pb2.AddNumbersRequest(numbers=sorted(on_list), reason="asked not to be called")
    )
    agents = [SimAgent(services, agent, f"sim-{k}") for k in range(N_AGENTS)]
    for a in agents:
        await a.start()
    await services.start("pacing", clock=clock, instance_id="p1")
    await redis.sadd(keys.active_campaigns(), CID)
    try:

        async def finished() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM dial_attempts WHERE campaign_id = $1 AND (end_at IS NOT NULL OR NOT allowed)",
                CID,
            )
            return bool(n == N_LEADS and await redis.zcard(keys.calls_in_flight(CID)) == 0)

        await wait_for(finished, timeout=100, every=0.2)
    finally:
        for a in agents:
            await a.stop()

    rows = await pg.fetch("SELECT * FROM dial_attempts WHERE campaign_id = $1", CID)
    dialed = [r for r in rows if r["dial_at"] is not None]
    assert len(rows) == N_LEADS
    # Numbers on the internal list were stopped by the gate, with the list as reason; nothing else was.
    blocked = {r["number"]: json.loads(r["reasons"]) for r in rows if not r["allowed"]}
    assert set(blocked) == on_list and all("dnc.internal" in v for v in blocked.values())
    assert not any(r["number"] in on_list for r in dialed)

    # No call skipped the gate: every dialed call has an "allowed" dial-time decision in the DNC audit log,
    # decided before it was dialled (on the services' clock; the record's `at` is the database's).
    audit = await pg.fetch(
        """SELECT call_id, number, result, (details::jsonb ->> 'decided_at')::timestamptz AS at FROM dnc_audit
           WHERE action = 'check' AND campaign_id = $1""",
        CID,
    )
    by_call = {a["call_id"]: a for a in audit}
    for r in dialed:
        a = by_call[r["call_id"]]
        assert a["result"] == "allowed" and a["number"] == r["number"] and a["at"] <= r["dial_at"]
    assert {a["call_id"] for a in audit if a["result"] == "blocked"} == {
        r["call_id"] for r in rows if not r["allowed"]
    }

    # No lead dialled twice at once (each lead here once at most, claims all released).
    for _lead, calls in itertools.groupby(
        sorted(dialed, key=lambda r: (r["lead_id"], r["dial_at"])), key=lambda r: r["lead_id"]
    ):
        for a, b in itertools.pairwise(list(calls)):
            assert a["end_at"] <= b["dial_at"]
    assert await redis.keys(f"od:{{c:{CID}}}:claim:*") == []

    # Exactly one call.ended per dialed call; outcomes agree with PostgreSQL.
    evs = [f for _id, f in await redis.xrange(keys.call_events())]
    ended = [e for e in evs if e["type"] == "call.ended" and e["campaign_id"] == CID]
    assert Counter(e["call_id"] for e in ended) == Counter(r["call_id"] for r in dialed)
    assert {e["call_id"]: e["outcome"] for e in ended} == {r["call_id"]: r["outcome"] for r in dialed}

    # Abandonment within the cap, over live answers; connected calls reached the simulated agents.
    outcomes = Counter(r["outcome"] for r in dialed)
    live = outcomes["connected"] + outcomes["abandoned"]
    assert live > 0 and outcomes["abandoned"] <= 0.03 * live
    offered = set(itertools.chain.from_iterable(a.offers for a in agents))
    assert {r["call_id"] for r in dialed if r["outcome"] == "connected"} <= offered
    assert any(e["type"] == "call.connected" for e in evs)
