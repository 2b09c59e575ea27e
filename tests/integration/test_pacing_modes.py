"""Preview and agentless campaigns through the real services (dnc, agent, pacing with the simulated carrier,
accelerated), checked from PostgreSQL (dial_attempts, the DNC audit log, the agent timeline) and the
call-event stream.

Preview: a lead reaches an agent before anything is dialled; the agent dials it (gated, manual, connected to
that agent, never abandoned), skips it (never dialled, the lead is handed on), or lets it time out (the
campaign's timeout action); a number put on the DNC list while the agent looks at it is never dialled, even
when the agent presses dial. Agentless: no agent at all; every answer hears the message; the opt-out key
lands the number on the internal DNC list."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.agent.simulated import Distribution, SimulatedAgent
from outdial.core import keys
from outdial.pacing.gate import DialGate, GateLead
from outdial.pacing.store import PacingStore
from outdial.v1 import agent_pb2, agent_pb2_grpc, common_pb2, dnc_pb2, dnc_pb2_grpc
from tests.conftest import RunningService, Services, make_token
from tests.integration.test_pacing_dialer import (
    CID,
    WORKDAY,
    campaign_config,
    events,
    fast_sim_env,
    seed_hopper,
    wait_for,
    workday_clock,
)

# One clock for every service of a test (each OffsetClock is fixed when made).
CLOCK = workday_clock()
ALL_LIVE = {
    "OUTDIAL_SIM_P_LIVE": "1.0",
    "OUTDIAL_SIM_P_MACHINE": "0",
    "OUTDIAL_SIM_P_BUSY": "0",
    "OUTDIAL_SIM_P_FAILED": "0",
}


def sim_agent(services: Services, agent: RunningService, agent_id: str, **kw: Any) -> SimulatedAgent:
    return SimulatedAgent(
        lambda: services.channel(agent, role="agent", sub=agent_id),
        make_token("agent", agent_id),
        agent_id,
        [(CID, 1)],
        talk=Distribution(0.5, "fixed"),
        wrap=Distribution(0.1, "fixed"),
        rng=random.Random(7),
        dispositions={"not_interested": 1.0},
        **kw,
    )


class Running:
    """Simulated agents run until the test ends."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self, a: SimulatedAgent) -> None:
        self.tasks.append(asyncio.create_task(a.run(self.stop)))
        await asyncio.wait_for(a.connected.wait(), 10)

    async def close(self) -> None:
        self.stop.set()
        for t in self.tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 10)


async def start_preview(
    services: Services, redis: aioredis.Redis, numbers: list[str], **cfg: Any
) -> tuple[RunningService, RunningService]:
    await redis.hset(
        keys.campaign_config(CID),
        "json",
        json.dumps(campaign_config(dial_mode="preview", dispositions=["not_interested"], **cfg)),
    )
    await seed_hopper(redis, numbers, state="NY")
    dnc = await services.start("dnc", clock=CLOCK)
    agent = await services.start("agent", clock=CLOCK)
    await services.assign(CID, *(f"pv-{i}" for i in range(1, 7)), target=agent)
    return dnc, agent


async def start_pacing(services: Services, redis: aioredis.Redis) -> None:
    await services.start("pacing", clock=CLOCK, instance_id="p1")
    await redis.sadd(keys.active_campaigns(), CID)


async def all_ended(pg: asyncpg.Pool, n: int) -> bool:
    done = await pg.fetchval(
        "SELECT count(*) FROM dial_attempts WHERE campaign_id = $1 AND (end_at IS NOT NULL OR NOT allowed)",
        CID,
    )
    return bool(done == n)


def of_type(evs: list[dict[str, str]], typ: str) -> list[dict[str, str]]:
    return [e for e in evs if e["type"] == typ and e["campaign_id"] == CID]


# ------------------------------------------------------------------------------------------------ preview


async def test_preview_the_agent_sees_the_lead_first_then_dials_it(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_sim_env(monkeypatch, **ALL_LIVE)
    numbers = ["+12122340001", "+12122340002", "+12122340003"]
    _dnc, agent = await start_preview(services, redis, numbers)
    agents = Running()
    a = sim_agent(services, agent, "pv-1", think=Distribution(0.3, "fixed"), p_skip=0.0)
    await agents.start(a)
    try:
        await start_pacing(services, redis)
        await wait_for(lambda: all_ended(pg, len(numbers)), timeout=60)
    finally:
        await agents.close()

    rows = {
        r["call_id"]: r for r in await pg.fetch("SELECT * FROM dial_attempts WHERE campaign_id = $1", CID)
    }
    evs = await events(redis)
    shown = {e["call_id"]: e for e in of_type(evs, "preview.offered")}
    assert len(rows) == len(numbers) and set(rows) == set(shown)
    assert a.stats.previews == len(numbers) and a.stats.preview_dials == len(numbers)
    audit = {
        r["call_id"]: r
        for r in await pg.fetch(
            # decided on the services' clock (the record's `at` is the database's time of writing)
            "SELECT call_id, result, (details::jsonb ->> 'decided_at')::timestamptz AS at FROM dnc_audit "
            "WHERE action = 'check' AND campaign_id = $1",
            CID,
        )
    }
    dialing = {e["call_id"]: e for e in of_type(evs, "call.dialing")}
    for call_id, r in rows.items():
        # Shown to the agent before the gate and the dial; gated (audited) before the dial.
        assert int(shown[call_id]["at"]) <= int(r["gate_at"].timestamp() * 1000)
        assert audit[call_id]["result"] == "allowed" and audit[call_id]["at"] <= r["dial_at"]
        # An agent-initiated (manual) call, recorded as such, connected to that very agent.
        assert (r["mode"], r["manual"], r["dialled_by"]) == ("preview", True, "pv-1")
        assert (dialing[call_id]["manual"], dialing[call_id]["dialled_by"]) == ("1", "pv-1")
        assert (r["outcome"], r["answer"], r["agent_id"]) == ("connected", "human", "pv-1")
    # The agent was on every call: nothing was abandoned, no abandonment message, nothing in the budget.
    assert of_type(evs, "call.abandoned") == []
    window: Any = await redis.zrange(keys.abandon_window(CID), 0, -1)
    assert not any(str(m).endswith(":a") for m in window)
    assert await redis.keys(f"od:{{c:{CID}}}:claim:*") == []


async def test_preview_skipped_leads_are_never_dialled_and_handed_on(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_sim_env(monkeypatch, **ALL_LIVE)
    numbers = ["+12122340011", "+12122340012"]
    _dnc, agent = await start_preview(services, redis, numbers)
    agents = Running()
    a = sim_agent(services, agent, "pv-2", think=Distribution(0.2, "fixed"), p_skip=1.0)
    await agents.start(a)
    try:
        await start_pacing(services, redis)

        async def both_skipped() -> bool:
            return len(of_type(await events(redis), "preview.skipped")) == len(numbers)

        await wait_for(both_skipped, timeout=30)
        await asyncio.sleep(0.5)  # anything that would wrongly follow a skip has its chance
    finally:
        await agents.close()
    evs = await events(redis)
    skipped = of_type(evs, "preview.skipped")
    assert sorted(e["number"] for e in skipped) == numbers
    assert all((e["agent_id"], e["by"]) == ("pv-2", "agent") for e in skipped)
    # Never gated, never dialled; the leads left the hopper with their claims freed (the campaign service
    # holds a skipped lead back for the campaign's skip delay, tested with the event consumer).
    assert await pg.fetchval("SELECT count(*) FROM dial_attempts WHERE campaign_id = $1", CID) == 0
    assert of_type(evs, "call.dialing") == []
    assert await redis.zcard(keys.hopper(CID)) == 0
    assert await redis.keys(f"od:{{c:{CID}}}:claim:*") == []
    assert a.stats.preview_skips == len(numbers)


@pytest.mark.parametrize("action", ["dial", "skip"])
async def test_preview_timeout_takes_the_campaigns_action(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    fast_sim_env(monkeypatch, **ALL_LIVE)
    _dnc, agent = await start_preview(
        services, redis, ["+12122340021"], preview_seconds=1, preview_timeout_action=action
    )
    agents = Running()
    # An agent who looks at the lead and never decides.
    a = sim_agent(services, agent, "pv-3", think=Distribution(600.0, "fixed"))
    await agents.start(a)
    try:
        await start_pacing(services, redis)
        if action == "dial":
            await wait_for(lambda: all_ended(pg, 1), timeout=30)
        else:

            async def skipped() -> bool:
                return bool(of_type(await events(redis), "preview.skipped"))

            await wait_for(skipped, timeout=30)
    finally:
        await agents.close()
    evs = await events(redis)
    shown = of_type(evs, "preview.offered")
    assert len(shown) == 1
    reasons = [
        r["reason"] for r in await pg.fetch("SELECT reason FROM agent_state_events WHERE agent_id = 'pv-3'")
    ]
    if action == "dial":
        r = await pg.fetchrow("SELECT * FROM dial_attempts WHERE campaign_id = $1", CID)
        # Dialled by the timeout, no earlier than the preview time, on behalf of the agent it was shown to
        # (their preview: a manual call), and connected to them.
        assert int(r["gate_at"].timestamp() * 1000) - int(shown[0]["at"]) >= 1000
        assert (r["manual"], r["dialled_by"], r["outcome"], r["agent_id"]) == (
            True,
            "pv-3",
            "connected",
            "pv-3",
        )
        assert "preview_dial_timeout" in reasons
    else:
        assert await pg.fetchval("SELECT count(*) FROM dial_attempts") == 0
        assert of_type(evs, "preview.skipped")[0]["by"] == "timeout"
        assert "preview_skip_timeout" in reasons


async def test_preview_a_dnc_listed_lead_is_not_dialled_even_when_the_agent_presses_dial(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_sim_env(monkeypatch, **ALL_LIVE)
    number = "+12122340031"
    dnc, agent = await start_preview(services, redis, [number])
    dnc_stub = dnc_pb2_grpc.DncServiceStub(services.channel(dnc, role="compliance"))
    stub = agent_pb2_grpc.AgentServiceStub(services.channel(agent, role="agent", sub="pv-4"))
    await stub.Login(agent_pb2.LoginRequest(campaigns=[agent_pb2.CampaignMembership(campaign_id=CID)]))
    stream = stub.Connect(
        agent_pb2.ConnectRequest(), metadata=(("authorization", f"Bearer {make_token('agent', 'pv-4')}"),)
    )
    await start_pacing(services, redis)
    try:
        async for msg in stream:
            if msg.HasField("preview"):
                break
        # While the agent looks at the lead, the person asks not to be called; the agent presses dial.
        await dnc_stub.AddNumbers(
            dnc_pb2.AddNumbersRequest(numbers=[number], reason="asked not to be called")
        )
        resp = await stub.DecidePreview(
            agent_pb2.DecidePreviewRequest(
                call_id=msg.preview.call_id, decision=agent_pb2.PREVIEW_DECISION_DIAL
            )
        )
        assert resp.decision == agent_pb2.PREVIEW_DECISION_DIAL

        async def gated() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM dial_attempts WHERE campaign_id = $1", CID))

        await wait_for(gated, timeout=20)

        async def agent_ready() -> bool:
            st = await stub.Heartbeat(agent_pb2.HeartbeatRequest())
            return bool(st.status.state == common_pb2.AGENT_STATE_READY)

        await wait_for(agent_ready, timeout=10)
    finally:
        stream.cancel()
    r = await pg.fetchrow("SELECT * FROM dial_attempts WHERE campaign_id = $1", CID)
    assert (r["allowed"], r["dial_at"], r["manual"], r["dialled_by"]) == (False, None, True, "pv-4")
    assert "dnc.internal" in json.loads(r["reasons"])
    audit = await pg.fetch(
        "SELECT result FROM dnc_audit WHERE action = 'check' AND call_id = $1", r["call_id"]
    )
    assert [a["result"] for a in audit] == ["blocked"]
    evs = await events(redis)
    assert of_type(evs, "call.dialing") == []
    assert [e["call_id"] for e in of_type(evs, "dial.blocked")] == [r["call_id"]]
    assert await redis.keys(f"od:{{c:{CID}}}:claim:*") == []


async def test_preview_an_agent_who_leaves_gives_the_lead_back_to_the_next_agent(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_sim_env(monkeypatch, **ALL_LIVE)
    number = "+12122340051"
    _dnc, agent = await start_preview(services, redis, [number], preview_seconds=0)  # wait for the agent
    stub = agent_pb2_grpc.AgentServiceStub(services.channel(agent, role="agent", sub="pv-5"))
    await stub.Login(agent_pb2.LoginRequest(campaigns=[agent_pb2.CampaignMembership(campaign_id=CID)]))
    stream = stub.Connect(
        agent_pb2.ConnectRequest(), metadata=(("authorization", f"Bearer {make_token('agent', 'pv-5')}"),)
    )
    agents = Running()
    try:
        await start_pacing(services, redis)
        async for msg in stream:
            if msg.HasField("preview"):
                break
        assert msg.preview.number == number and not msg.preview.HasField("decide_by")
        await stub.Logout(agent_pb2.LogoutRequest())  # looked at it, and left without a word
        await agents.start(sim_agent(services, agent, "pv-6", think=Distribution(0.2, "fixed"), p_skip=0.0))
        await wait_for(lambda: all_ended(pg, 1), timeout=40)
    finally:
        stream.cancel()
        await agents.close()
    shown = [e["agent_id"] for e in of_type(await events(redis), "preview.offered")]
    assert shown == ["pv-5", "pv-6"]
    r = await pg.fetchrow("SELECT * FROM dial_attempts WHERE campaign_id = $1", CID)
    assert (r["number"], r["manual"], r["dialled_by"], r["outcome"]) == (number, True, "pv-6", "connected")


# ------------------------------------------------------------------------------------------------ agentless


async def test_agentless_plays_the_message_with_no_agent_and_the_opt_out_key_lists_the_number(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_sim_env(
        monkeypatch,
        OUTDIAL_SIM_P_LIVE="0.7",
        OUTDIAL_SIM_P_MACHINE="0.3",
        OUTDIAL_SIM_P_BUSY="0",
        OUTDIAL_SIM_P_FAILED="0",
        OUTDIAL_SIM_P_OPT_OUT="0.5",
        OUTDIAL_SIM_SEED="3",
    )
    cfg = campaign_config(
        dial_mode="agentless",
        agentless_message="Your prescription is ready for pickup.",
        message_informational=True,
        machine_action="leave_message",
        agentless_lines=4,
    )
    await redis.hset(keys.campaign_config(CID), "json", json.dumps(cfg))
    numbers = [f"+1212234{i:04d}" for i in range(100, 112)]
    await seed_hopper(redis, numbers, state="NY")
    dnc = await services.start("dnc", clock=CLOCK)
    await services.start("agent", clock=CLOCK)  # up, but nobody logs in
    await start_pacing(services, redis)
    await wait_for(lambda: all_ended(pg, len(numbers)), timeout=90)

    rows = await pg.fetch("SELECT * FROM dial_attempts WHERE campaign_id = $1", CID)
    assert len(rows) == len(numbers) and all(r["allowed"] and r["dial_at"] is not None for r in rows)
    assert all((r["mode"], r["manual"], r["agent_id"]) == ("agentless", False, None) for r in rows)
    outcomes = {r["outcome"] for r in rows}
    assert outcomes <= {"delivered", "machine", "no_answer"} and "delivered" in outcomes
    # No agent was waited for: nothing offered, nothing abandoned.
    evs = await events(redis)
    assert of_type(evs, "call.abandoned") == [] and of_type(evs, "call.offered") == []
    # Every person who pressed the opt-out key is on the internal list now, and only they are.
    opted = {r["number"] for r in rows if r["opt_out"]}
    assert opted and all(r["outcome"] == "delivered" for r in rows if r["opt_out"])
    check = await dnc_pb2_grpc.DncServiceStub(
        services.channel(dnc, role="service", sub="svc:pacing")
    ).CheckNumbers(dnc_pb2.CheckNumbersRequest(numbers=numbers, campaign_id=CID))
    listed = {d.number for d in check.decisions if any(b.code == "dnc.internal" for b in d.reasons)}
    assert listed == opted


async def test_agentless_telemarketing_is_blocked_at_the_gate_without_asking_anyone(
    redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    """Fail closed: a prerecorded message not declared informational would need per-call written consent,
    which outdial cannot check yet, so the gate blocks every such call (the campaign service also refuses to
    start one). The block goes to the audit like any dial-time decision, with the campaign's facts."""

    class RecordingDnc:
        def __init__(self) -> None:
            self.requests: list[Any] = []

        async def CheckNumbers(self, req: Any, **kw: Any) -> Any:
            self.requests.append(req)
            return dnc_pb2.CheckNumbersResponse(
                decisions=[
                    dnc_pb2.NumberDecision(
                        number=n, allowed=False, audit_seq=7, reasons=[dnc_pb2.BlockReason(code=c)]
                    )
                    for n, d in zip(req.numbers, req.dialer, strict=True)
                    for c in d.blocked
                ]
            )

    dnc = RecordingDnc()
    gate = DialGate(redis, dnc, PacingStore(pg, redis))  # type: ignore[arg-type]
    cfg = campaign_config(dial_mode="agentless", agentless_message="Buy now!", message_informational=False)
    [r] = await gate.check(
        CID, cfg, [GateLead("c1", "l1", "+12122340041", ("America/New_York",), "NY", 1)], WORKDAY
    )
    assert not r.allowed and r.reasons == ["consent.agentless"] and r.audit_seq == 7
    (req,) = dnc.requests
    assert req.dial_time and list(req.dialer[0].blocked) == ["consent.agentless"]
    facts = json.loads(req.dialer[0].inputs_json)["campaign"]
    assert facts["dial_mode"] == "agentless" and facts["message_informational"] is False
