"""The dialer inside the real pacing service, on real PostgreSQL and Redis, with the simulated carrier.

The DNC and agent peers here are small in-test gRPC servers (the real services are exercised in
test_pacing_campaign.py): that keeps these tests about the dialer itself: leases across two replicas, the
gate, lead claims, one ``call.ended`` per dial, the abandonment path with the message and its opt-out key.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from outdial.core import keys
from outdial.core.clock import OffsetClock
from outdial.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    dnc_pb2,
    dnc_pb2_grpc,
    pacing_pb2,
    pacing_pb2_grpc,
)
from tests.conftest import Services

CID = "camp-1"
# A Wednesday, 11:00 in New York: inside the US calling window.
WORKDAY = datetime(2026, 11, 18, 16, 0, tzinfo=UTC)


def workday_clock() -> OffsetClock:
    return OffsetClock(WORKDAY - datetime.now(UTC))


class FakeDnc(dnc_pb2_grpc.DncServiceServicer):
    def __init__(self, blocked: set[str]) -> None:
        self.blocked = blocked
        self.checked: list[tuple[str, str, bool]] = []
        self.dialer: list[Any] = []  # the dialer's own decisions sent with dial-time checks
        self.opt_outs: list[str] = []

    async def CheckNumbers(self, request: Any, context: Any) -> dnc_pb2.CheckNumbersResponse:
        out = []
        self.dialer.extend(request.dialer)
        for n, c in zip(request.numbers, request.call_ids, strict=True):
            self.checked.append((n, c, request.dial_time))
            if n in self.blocked:
                out.append(
                    dnc_pb2.NumberDecision(
                        number=n, allowed=False, reasons=[dnc_pb2.BlockReason(code="dnc.internal")]
                    )
                )
            else:
                out.append(dnc_pb2.NumberDecision(number=n, allowed=True))
        return dnc_pb2.CheckNumbersResponse(decisions=out)

    async def RecordOptOut(self, request: Any, context: Any) -> dnc_pb2.RecordOptOutResponse:
        self.opt_outs.append(request.number)
        self.blocked.add(request.number)
        return dnc_pb2.RecordOptOutResponse(list_id="internal")


class FakeAgents(agent_pb2_grpc.AgentServiceServicer):
    """Takes every call but every ``refuse_every``-th (which the dialer must then abandon)."""

    def __init__(self, refuse_every: int) -> None:
        self.refuse_every = refuse_every
        self.offers = 0

    async def OfferCall(self, request: Any, context: Any) -> agent_pb2.OfferCallResponse:
        self.offers += 1
        if self.offers % self.refuse_every == 0:
            return agent_pb2.OfferCallResponse(assigned=False, reason="no_agent_ready")
        return agent_pb2.OfferCallResponse(assigned=True, agent_id=f"agent-{self.offers % 4}")

    async def EndCall(self, request: Any, context: Any) -> agent_pb2.EndCallResponse:
        return agent_pb2.EndCallResponse()

    async def ReserveAgent(self, request: Any, context: Any) -> agent_pb2.ReserveAgentResponse:
        return agent_pb2.ReserveAgentResponse(reserved=True, agent_id="agent-held")

    async def ReleaseAgent(self, request: Any, context: Any) -> agent_pb2.ReleaseAgentResponse:
        return agent_pb2.ReleaseAgentResponse(released=True)


async def start_peers(services: Services, dnc: FakeDnc, agents: FakeAgents) -> grpc.aio.Server:
    server = grpc.aio.server()
    dnc_pb2_grpc.add_DncServiceServicer_to_server(dnc, server)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agents, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    addr = f"127.0.0.1:{port}"
    services.settings = services.settings.model_copy(update={"dnc_addr": addr, "agent_addr": addr})
    return server


def campaign_config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "id": CID,
        "name": "Test",
        "state": "active",
        "dial_mode": "progressive",
        "power_ratio": 2.0,
        "caller_id": "+12125550100",
        "jurisdiction": "US",
        "calling_window": {"start_local": "09:00", "end_local": "20:00", "days_of_week": [1, 2, 3, 4, 5]},
        "abandon_cap": 0.03,
        "abandon_window_s": 30 * 86400,
        "max_calls_per_number_24h": 3,
        "ring_timeout_s": 20,
        "max_lines_per_agent": 3,
        "seller_name": "Acme",
        "opt_out_number": "+12125550199",
    }
    cfg.update(over)
    return cfg


FAST_SIM_ENV = {
    # Not about the national registry (the DNC service's own tests are): lists only.
    "OUTDIAL_DNC_REQUIRE_REGISTRY": "false",
    "OUTDIAL_PACING_TICK_MS": "100",
    "OUTDIAL_PACING_DRAIN_S": "3",
    "OUTDIAL_SIM_TIME_SCALE": "40",
    "OUTDIAL_SIM_TALK_MEAN_S": "30",
    "OUTDIAL_SIM_P_LIVE": "0.5",
    "OUTDIAL_AGENT_HEARTBEAT_TIMEOUT_S": "30",
}


def fast_sim_env(monkeypatch: pytest.MonkeyPatch, **over: str) -> None:
    """Environment of the services started by a pacing test: a fast simulated carrier (overridable)."""
    for name, value in {**FAST_SIM_ENV, **over}.items():
        monkeypatch.setenv(name, value)


async def seed_hopper(redis: aioredis.Redis, numbers: list[str], state: str = "") -> None:
    """Put one New York lead per number in the hopper, as the campaign feeder would (contract in keys.py)."""
    for i, number in enumerate(numbers):
        lead_id = f"lead-{i}"
        await redis.hset(
            keys.hopper_lead(CID, lead_id),
            mapping={
                "lead_id": lead_id,
                "number": number,
                "timezones": json.dumps(["America/New_York"]),
                "state": state,
                "first_name": "Pat",
                "last_name": f"N{i}",
                "fields": "{}",
                "attempt": "0",
            },
        )
        await redis.zadd(keys.hopper(CID), {lead_id: i})


async def seed_campaign(redis: aioredis.Redis, n_leads: int, n_agents: int, **over: Any) -> list[str]:
    await redis.hset(keys.campaign_config(CID), "json", json.dumps(campaign_config(**over)))
    numbers = [f"+1212555{i:04d}" for i in range(n_leads)]
    await seed_hopper(redis, numbers)
    now_ms = int(WORKDAY.timestamp() * 1000)
    for a in range(n_agents):
        await redis.hset(
            keys.campaign_agents(CID),
            f"agent-{a}",
            json.dumps({"state": "ready", "since_ms": now_ms, "call_id": ""}),
        )
    await redis.sadd(keys.active_campaigns(), CID)
    return numbers


async def wait_for(pred: Any, timeout: float = 60.0, every: float = 0.1) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await pred():
            return
        await asyncio.sleep(every)
    raise AssertionError("condition not met in time")


async def events(redis: aioredis.Redis) -> list[dict[str, str]]:
    return [fields for _id, fields in await redis.xrange(keys.call_events())]


@pytest.fixture
def fast_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTDIAL_PACING_LEASE_MS", "1500")
    monkeypatch.setenv("OUTDIAL_PACING_TICK_MS", "100")
    monkeypatch.setenv("OUTDIAL_PACING_DRAIN_S", "3")
    monkeypatch.setenv("OUTDIAL_SIM_TIME_SCALE", "40")
    monkeypatch.setenv("OUTDIAL_SIM_TALK_MEAN_S", "40")
    monkeypatch.setenv("OUTDIAL_SIM_P_LIVE", "0.5")
    monkeypatch.setenv("OUTDIAL_SIM_P_OPT_OUT", "0.5")


async def test_gate_claims_events_and_abandonment(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, fast_env: None
) -> None:
    numbers = await seed_campaign(redis, n_leads=40, n_agents=3)
    blocked = {numbers[3], numbers[7]}
    dnc, agents = FakeDnc(set(blocked)), FakeAgents(refuse_every=3)
    peers = await start_peers(services, dnc, agents)
    try:
        rs = await services.start("pacing", clock=workday_clock(), instance_id="r1")

        async def all_done() -> bool:
            left = await redis.zcard(keys.hopper(CID))
            inflight = await redis.zcard(keys.calls_in_flight(CID))
            ended = await pg.fetchval(
                "SELECT count(*) FROM dial_attempts WHERE campaign_id = $1 AND (end_at IS NOT NULL OR NOT allowed)",
                CID,
            )
            return left == 0 and inflight == 0 and ended == 40

        await wait_for(all_done, timeout=90)
        stub = pacing_pb2_grpc.PacingServiceStub(services.channel(rs, role="manager"))
        state = (await stub.GetPacingState(pacing_pb2.GetPacingStateRequest(campaign_id=CID))).state
        assert state.leader.startswith("r1|") and state.agents.ready == 3
        assert state.calls_placed == 38 and state.calls_blocked == 2
    finally:
        await peers.stop(None)

    rows = await pg.fetch("SELECT * FROM dial_attempts WHERE campaign_id = $1", CID)
    assert len(rows) == 40
    assert {r["number"] for r in rows if not r["allowed"]} == blocked
    assert all(r["dial_at"] is None for r in rows if not r["allowed"])
    dialed = [r for r in rows if r["allowed"]]
    # Every dialed call went through the DNC gate at dial time, with its own call id.
    checked = {(n, c) for n, c, dial_time in dnc.checked if dial_time}
    assert all((r["number"], r["call_id"]) in checked for r in dialed)
    assert {r["fence_token"] for r in rows} == {1}

    evs = await events(redis)
    by_type = Counter(e["type"] for e in evs)
    ended = [e for e in evs if e["type"] == "call.ended"]
    assert Counter(e["call_id"] for e in ended) == Counter({r["call_id"]: 1 for r in dialed})
    assert by_type["dial.blocked"] == 2 and by_type["call.dialing"] == 38
    assert {json.loads(e["reasons"])[0] for e in evs if e["type"] == "dial.blocked"} == {"dnc.internal"}
    outcomes = Counter(e["outcome"] for e in ended)
    assert outcomes["connected"] > 0 and outcomes["abandoned"] > 0
    # Every abandoned call heard the message; opt-outs reached the DNC service.
    abandoned = [e for e in evs if e["type"] == "call.abandoned"]
    assert len(abandoned) == outcomes["abandoned"] and all(e["message_played"] == "1" for e in abandoned)
    assert sorted(dnc.opt_outs) == sorted(e["number"] for e in abandoned if e["opt_out"] == "1")
    window = await redis.zrange(keys.abandon_window(CID), 0, -1)
    assert sum(1 for m in window if m.endswith(":a")) == outcomes["abandoned"]
    assert sum(1 for m in window if m.endswith(":h")) == outcomes["connected"]
    # Progressive never had more unanswered calls out than ready agents (3) at once.
    assert max_concurrent(dialed) <= 3
    assert await redis.keys(f"od:{{c:{CID}}}:claim:*") == []


def max_concurrent(rows: list[Any]) -> int:
    points = []
    for r in rows:
        points += [(r["dial_at"], 1), (r["answer_at"] or r["end_at"], -1)]
    cur = best = 0
    for _t, d in sorted(points, key=lambda p: (p[0], p[1])):
        cur += d
        best = max(best, cur)
    return best


async def test_two_replicas_never_both_dial_and_stop_hands_over(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, fast_env: None
) -> None:
    await seed_campaign(redis, n_leads=400, n_agents=4, dial_mode="power")
    peers = await start_peers(services, FakeDnc(set()), FakeAgents(refuse_every=1000))
    try:
        r1 = await services.start("pacing", clock=workday_clock(), instance_id="r1")
        r2 = await services.start("pacing", clock=workday_clock(), instance_id="r2")

        async def some_dialed() -> bool:
            return bool(
                await pg.fetchval("SELECT count(*) FROM dial_attempts WHERE dial_at IS NOT NULL") >= 10
            )

        await wait_for(some_dialed)
        holder = await redis.get(keys.pacing_lease(CID))
        first = holder.split("|")[0]
        assert first in ("r1", "r2")
        rows = await pg.fetch("SELECT DISTINCT replica, fence_token FROM dial_attempts")
        assert [(r["replica"], r["fence_token"]) for r in rows] == [(first, int(holder.split("|")[1]))]
        stopped_at = datetime.now(UTC)
        await (r1 if first == "r1" else r2).stop()
        other = "r2" if first == "r1" else "r1"

        async def handed_over() -> bool:
            h = await redis.get(keys.pacing_lease(CID))
            return bool(h and h.startswith(other + "|"))

        await wait_for(handed_over, timeout=30)
        took_over = datetime.now(UTC)
        # The new holder starts from what the old one learned (the campaign's recent call.ended events).
        learned = sum(
            1
            for e in await events(redis)
            if e["type"] == "call.ended" and e["outcome"] != "failed" and int(e["at"]) > 0
        )

        async def bootstrapped() -> bool:
            st = await redis.get(keys.pacing_state(CID))
            if not st or not json.loads(st)["leader"].startswith(other + "|"):
                return False
            return bool(json.loads(st)["estimates"]["samples"] >= learned > 0)

        await wait_for(bootstrapped, timeout=30)

        async def other_dialed() -> bool:
            return bool(
                await pg.fetchval("SELECT count(*) FROM dial_attempts WHERE replica = $1", other) >= 5
            )

        await wait_for(other_dialed)
    finally:
        await peers.stop(None)
    # A graceful stop releases the lease: the other replica takes it at its next pass (well within the lease).
    assert (took_over - stopped_at).total_seconds() < 1.5 + 10
    rows = await pg.fetch("SELECT * FROM dial_attempts WHERE dial_at IS NOT NULL ORDER BY dial_at")
    tokens = {r["replica"]: r["fence_token"] for r in rows}
    assert tokens[other] > tokens[first]
    last_first = max(r["dial_at"] for r in rows if r["replica"] == first)
    first_other = min(r["dial_at"] for r in rows if r["replica"] == other)
    assert last_first < first_other
    # The stopped replica finished or handed back every call it had: each has an end.
    assert all(r["end_at"] is not None for r in rows if r["replica"] == first)
    # No lead was ever dialled twice at once.
    by_lead: dict[str, list[Any]] = {}
    for r in rows:
        by_lead.setdefault(r["lead_id"], []).append(r)
    for calls in by_lead.values():
        calls.sort(key=lambda r: r["dial_at"])
        for a, b in itertools.pairwise(calls):
            assert a["end_at"] is not None and a["end_at"] <= b["dial_at"]


async def test_a_replica_that_lost_its_lease_stops_dialing(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, fast_env: None
) -> None:
    """As when the holder froze past its lease and another replica took over: its renewal fails, and the
    fence refuses any origination it still tries."""
    await seed_campaign(redis, n_leads=400, n_agents=4, dial_mode="power")
    peers = await start_peers(services, FakeDnc(set()), FakeAgents(refuse_every=1000))
    try:
        await services.start("pacing", clock=workday_clock(), instance_id="r1")

        async def dialing() -> bool:
            return bool(
                await pg.fetchval("SELECT count(*) FROM dial_attempts WHERE dial_at IS NOT NULL") >= 5
            )

        await wait_for(dialing)
        # Another holder appears with a newer token (the fence counter moves on as a real acquisition does).
        token = await redis.incr(keys.pacing_fence(CID))
        await redis.set(keys.pacing_lease(CID), f"intruder|{token}", px=60_000)

        async def r1_gave_up() -> bool:
            st = await redis.get(keys.pacing_state(CID))
            return st is not None and await redis.ttl(keys.pacing_state(CID)) < 29

        await wait_for(r1_gave_up, timeout=30)
        before = await pg.fetchval("SELECT count(*) FROM dial_attempts WHERE dial_at IS NOT NULL")
        hopper = await redis.zcard(keys.hopper(CID))
        await asyncio.sleep(1.5)
        after = await pg.fetchval("SELECT count(*) FROM dial_attempts WHERE dial_at IS NOT NULL")
        assert after == before and await redis.zcard(keys.hopper(CID)) == hopper > 0
        assert await redis.get(keys.pacing_lease(CID)) == f"intruder|{token}"
        assert await pg.fetchval("SELECT max(fence_token) FROM dial_attempts") < token
    finally:
        await peers.stop(None)
