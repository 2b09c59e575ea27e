"""Agent-reserved (progressive) dialing and agent hang-ups through the real dnc, agent and pacing services
(simulated carrier): every call is dialled with an agent held for it, so none is abandoned even when agents
try to pause in between; agents held for calls nobody answered are released; when the agent ends a call
the dialer hangs up the carrier leg at once and ``call.ended`` carries that moment."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from datetime import datetime
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from outdial.core import keys
from outdial.core.clock import OffsetClock
from outdial.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from tests.conftest import RunningService, Services, make_token
from tests.integration.test_pacing_dialer import (
    CID,
    FakeAgents,
    FakeDnc,
    campaign_config,
    fast_sim_env,
    seed_campaign,
    seed_hopper,
    start_peers,
    wait_for,
    workday_clock,
)

N_LEADS = 24
N_AGENTS = 2
RESERVED = common_pb2.AGENT_STATE_RESERVED
WRAP_UP = common_pb2.AGENT_STATE_WRAP_UP


class HangingUpAgent:
    """A console that, while held for a call, tries to pause (refused), and on each offer talks briefly
    and ends the call itself, then sets a disposition."""

    def __init__(self, services: Services, rs: RunningService, agent_id: str, clock: OffsetClock) -> None:
        self.services = services
        self.rs = rs
        self.agent_id = agent_id
        self.clock = clock
        self.stub = agent_pb2_grpc.AgentServiceStub(services.channel(rs, role="agent", sub=agent_id))
        self.offers: list[str] = []
        self.hangups: dict[str, tuple[datetime, datetime]] = {}
        self.pauses_refused = 0
        self.call: Any = None
        self.task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.services.assign(CID, self.agent_id, target=self.rs)
        await self.stub.Login(
            agent_pb2.LoginRequest(campaigns=[agent_pb2.CampaignMembership(campaign_id=CID, priority=1)])
        )
        auth = (("authorization", f"Bearer {make_token('agent', self.agent_id)}"),)
        self.call = self.stub.Connect(agent_pb2.ConnectRequest(), metadata=auth)
        self.task = asyncio.create_task(self._run())

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def _run(self) -> None:
        async for msg in self.call:
            if msg.HasField("offer"):
                self.offers.append(msg.offer.call_id)
                self._spawn(self._talk(msg.offer.call_id))
            elif (
                msg.HasField("status")
                and msg.status.state == RESERVED
                and not self.offers[-1:] == [msg.status.call_id]
            ):
                self._spawn(self._try_pause())
            elif msg.HasField("status") and msg.status.state == WRAP_UP:
                self._spawn(self._dispose(msg.status.call_id))

    async def _try_pause(self) -> None:
        try:
            await self.stub.SetState(
                agent_pb2.SetStateRequest(state=common_pb2.AGENT_STATE_PAUSED, pause_reason="coffee")
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            self.pauses_refused += 1
            return
        # The hold was already released (nobody answered): back to work.
        await self.stub.SetState(agent_pb2.SetStateRequest(state=common_pb2.AGENT_STATE_READY))

    async def _talk(self, call_id: str) -> None:
        await asyncio.sleep(0.3)
        before = self.clock.now()
        await self.stub.EndCall(agent_pb2.EndCallRequest(call_id=call_id))
        self.hangups[call_id] = (before, self.clock.now())

    async def _dispose(self, call_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.stub.SetDisposition(
                agent_pb2.SetDispositionRequest(call_id=call_id, disposition="not_interested")
            )

    async def stop(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self.task
        for t in list(self._bg):
            with contextlib.suppress(Exception):
                await t


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nobody on the far side hangs up first: only the agent ends connected calls.
    fast_sim_env(monkeypatch, OUTDIAL_SIM_TALK_MEAN_S="1000000")


async def seed(redis: aioredis.Redis) -> None:
    cfg = campaign_config(dial_mode="progressive", dispositions=["sale", "not_interested"])
    await redis.hset(keys.campaign_config(CID), "json", json.dumps(cfg))
    await seed_hopper(redis, [f"+1212345{i:04d}" for i in range(N_LEADS)], state="NY")


async def test_progressive_reserves_before_dialing_and_agent_hangup_ends_the_leg(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, env: None
) -> None:
    clock = workday_clock()
    await seed(redis)
    await services.start("dnc", clock=clock)
    agent = await services.start("agent", clock=clock)
    agents = [HangingUpAgent(services, agent, f"ag-{k}", clock) for k in range(N_AGENTS)]
    for a in agents:
        await a.start()
    await services.start("pacing", clock=clock, instance_id="p1")
    await redis.sadd(keys.active_campaigns(), CID)
    try:

        async def finished() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM dial_attempts WHERE campaign_id = $1 AND end_at IS NOT NULL", CID
            )
            return bool(n == N_LEADS and await redis.zcard(keys.calls_in_flight(CID)) == 0)

        await wait_for(finished, timeout=100, every=0.2)
    finally:
        for a in agents:
            await a.stop()

    rows = await pg.fetch("SELECT * FROM dial_attempts WHERE campaign_id = $1 AND dial_at IS NOT NULL", CID)
    assert len(rows) == N_LEADS
    outcomes = Counter(r["outcome"] for r in rows)
    # Agent-reserved: no live answer ever waited for an agent, although agents tried to pause meanwhile.
    assert outcomes["abandoned"] == 0 and outcomes["connected"] > 0
    assert sum(a.pauses_refused for a in agents) > 0

    # Every dialled call had an agent held for it (the agent's timeline), and a connected call went to
    # exactly that agent; a call that did not connect released its agent.
    tl = await pg.fetch(
        "SELECT agent_id, state, reason, call_id FROM agent_state_events WHERE call_id <> '' ORDER BY seq"
    )
    held = {r["call_id"]: r["agent_id"] for r in tl if r["state"] == "reserved" and r["reason"] == "hold"}
    released = {r["call_id"] for r in tl if r["state"] == "ready" and r["reason"].startswith("released_")}
    for r in rows:
        assert r["call_id"] in held, r["call_id"]
        if r["outcome"] == "connected":
            assert r["agent_id"] == held[r["call_id"]]
        else:
            assert r["call_id"] in released, (r["call_id"], r["outcome"])

    # The agent hung up: the dialer hung up the carrier leg at once, and call.ended says when.
    hangups = {cid: t for a in agents for cid, t in a.hangups.items()}
    evs = [f for _id, f in await redis.xrange(keys.call_events())]
    ended = {e["call_id"]: e for e in evs if e["type"] == "call.ended"}
    connected = [r for r in rows if r["outcome"] == "connected"]
    for r in connected:
        before, after = hangups[r["call_id"]]
        end_ms = int(ended[r["call_id"]]["end_at"])
        assert int(before.timestamp() * 1000) <= end_ms <= int(after.timestamp() * 1000) + 5000
        assert r["end_at"] is not None and r["end_at"].timestamp() * 1000 == pytest.approx(end_ms, abs=1)
    counts = Counter(
        json.loads(v)["state"] for v in (await redis.hgetall(keys.campaign_agents(CID))).values()
    )
    assert counts["reserved"] == 0 and counts["on_call"] == 0


class LateAgents(FakeAgents):
    """Holds and assigns, but answers OfferCall only after the legal 2 s: every live call is abandoned."""

    def __init__(self) -> None:
        super().__init__(refuse_every=10**9)
        self.released: list[tuple[str, str, str]] = []

    async def OfferCall(self, request: Any, context: Any) -> agent_pb2.OfferCallResponse:
        await asyncio.sleep(2.1)
        return agent_pb2.OfferCallResponse(assigned=True, agent_id="late-agent")

    async def ReleaseAgent(self, request: Any, context: Any) -> agent_pb2.ReleaseAgentResponse:
        self.released.append((request.agent_id, request.call_id, request.reason))
        return agent_pb2.ReleaseAgentResponse(released=True)


async def test_assignment_after_the_deadline_releases_the_agent(
    services: Services, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTDIAL_PACING_TICK_MS", "100")
    # The whole 2 s for the offer (the default keeps 0.5 s to start the message): the late answer below comes
    # after the legal limit but before the dialer stops waiting for it.
    monkeypatch.setenv("OUTDIAL_PACING_OFFER_DEADLINE_MS", "2000")
    monkeypatch.setenv("OUTDIAL_SIM_TIME_SCALE", "40")
    monkeypatch.setenv("OUTDIAL_SIM_P_LIVE", "1.0")
    monkeypatch.setenv("OUTDIAL_SIM_P_MACHINE", "0")
    monkeypatch.setenv("OUTDIAL_SIM_P_BUSY", "0")
    monkeypatch.setenv("OUTDIAL_SIM_P_FAILED", "0")
    await seed_campaign(redis, n_leads=2, n_agents=2, dial_mode="power")
    agents = LateAgents()
    peers = await start_peers(services, FakeDnc(set()), agents)
    try:
        await services.start("pacing", clock=workday_clock(), instance_id="r1")

        async def abandoned_twice() -> bool:
            evs = [f for _id, f in await redis.xrange(keys.call_events())]
            return sum(1 for e in evs if e["type"] == "call.ended") == 2

        await wait_for(abandoned_twice, timeout=60)
    finally:
        await peers.stop(None)
    evs = [f for _id, f in await redis.xrange(keys.call_events())]
    ended = [e for e in evs if e["type"] == "call.ended"]
    assert {e["outcome"] for e in ended} == {"abandoned"}
    # The agent the service connected too late was given back for each of those calls.
    late = sorted(r for r in agents.released if r[0] == "late-agent")
    assert late == sorted(("late-agent", e["call_id"], "abandoned") for e in ended)
    # (At the start the pacer falls back to agent-reserved dialing: the agent held for each call is given
    # back as well.)
    assert {r[1] for r in agents.released if r[0] == "agent-held"} <= {e["call_id"] for e in ended}
