"""Agent service over real PostgreSQL, Redis and gRPC: sessions, states, offers, timeline, dispositions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from outdial.agent.kpi import compute_kpis
from outdial.agent.store import load_timeline
from outdial.core import keys
from outdial.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from tests.conftest import RunningService, Services, make_token

READY = common_pb2.AGENT_STATE_READY
PAUSED = common_pb2.AGENT_STATE_PAUSED


@pytest.fixture(autouse=True)
def _agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTDIAL_AGENT_HEARTBEAT_TIMEOUT_S", "1.5")
    monkeypatch.setenv("OUTDIAL_AGENT_SWEEP_INTERVAL_S", "0.2")
    monkeypatch.setenv("OUTDIAL_AGENT_FOLLOWUP_RETRY_S", "0.3")


async def wait_for(pred: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await pred()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Console:
    """A test agent console: logs in and holds the Connect stream, collecting what it receives."""

    def __init__(self, services: Services, rs: RunningService, agent_id: str) -> None:
        self.services = services
        self.rs = rs
        self.agent_id = agent_id
        self.stub = agent_pb2_grpc.AgentServiceStub(services.channel(rs, role="agent", sub=agent_id))
        self.offers: asyncio.Queue[agent_pb2.CallOffer] = asyncio.Queue()
        self.statuses: list[agent_pb2.AgentStatus] = []
        self.ended: list[str] = []
        self.call: Any = None
        self.task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def login(
        self, *campaigns: tuple[str, int], skills: tuple[str, ...] = (), assign: bool = True
    ) -> agent_pb2.LoginResponse:
        if assign:  # an agent logs in only to campaigns they are assigned to
            for c, _ in campaigns:
                await self.services.assign(c, self.agent_id, target=self.rs)
        resp: agent_pb2.LoginResponse = await self.stub.Login(
            agent_pb2.LoginRequest(
                campaigns=[agent_pb2.CampaignMembership(campaign_id=c, priority=p) for c, p in campaigns],
                skills=list(skills),
            )
        )
        return resp

    async def connect(self) -> None:
        # Streaming calls carry the token explicitly: grpc.aio files a multi-kind client interceptor under
        # unary-unary only, so core.clients' interceptor does not reach server-streaming calls.
        auth = (("authorization", f"Bearer {make_token('agent', self.agent_id)}"),)
        self.call = self.stub.Connect(agent_pb2.ConnectRequest(), metadata=auth)

        async def read() -> None:
            async for msg in self.call:
                if msg.HasField("offer"):
                    await self.offers.put(msg.offer)
                elif msg.HasField("status"):
                    self.statuses.append(msg.status)
                    self.connected.set()
                elif msg.call_ended:
                    self.ended.append(msg.call_ended)

        self.task = asyncio.create_task(read())
        await asyncio.wait_for(self.connected.wait(), 10)

    async def kill(self) -> None:
        assert self.call is not None and self.task is not None
        self.call.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass


async def start_agent(services: Services) -> RunningService:
    return await services.start("agent")


def dialer(services: Services, rs: RunningService) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(services.channel(rs, role="service", sub="svc:pacing"))


def offer_req(cid: str, call_id: str, **kw: Any) -> agent_pb2.OfferCallRequest:
    return agent_pb2.OfferCallRequest(
        campaign_id=cid, call_id=call_id, lead_id=f"L{call_id}", number="+12025550123", lead_name="Ada", **kw
    )


async def timeline(pg: asyncpg.Pool, agent_id: str) -> list[tuple[str, str, str]]:
    rows = await pg.fetch(
        "SELECT state, reason, call_id FROM agent_state_events WHERE agent_id = $1 ORDER BY seq", agent_id
    )
    return [(r["state"], r["reason"], r["call_id"]) for r in rows]


async def test_a_call_offered_connected_wrapped_and_dispositioned(
    services: Services, pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    rs = await start_agent(services)
    con = Console(services, rs, "ann")
    login = await con.login(("c1", 5), skills=("spanish",))
    assert login.status.state == READY and login.session_id
    await con.connect()
    view = json.loads(await redis.hget(keys.campaign_agents("c1"), "ann"))
    assert view["state"] == "ready" and view["since_ms"] > 0

    resp = await dialer(services, rs).OfferCall(offer_req("c1", "k1", lead_fields={"plan": "gold"}))
    assert resp.assigned and resp.agent_id == "ann", resp
    offer = await asyncio.wait_for(con.offers.get(), 10)
    assert offer.call_id == "k1" and offer.lead_name == "Ada" and offer.lead_fields["plan"] == "gold"
    view = json.loads(await redis.hget(keys.campaign_agents("c1"), "ann"))
    assert view == {"state": "on_call", "since_ms": view["since_ms"], "call_id": "k1"}
    counts = await dialer(services, rs).GetAgentCounts(agent_pb2.GetAgentCountsRequest(campaign_id="c1"))
    assert (counts.counts.logged_in, counts.counts.on_call, counts.counts.ready) == (1, 1, 0)

    st = await con.stub.EndCall(agent_pb2.EndCallRequest(call_id="k1"))
    assert st.status.state == common_pb2.AGENT_STATE_WRAP_UP
    st2 = await con.stub.SetDisposition(agent_pb2.SetDispositionRequest(call_id="k1", disposition="sale"))
    assert st2.status.state == READY
    paused = await con.stub.SetState(agent_pb2.SetStateRequest(state=PAUSED, pause_reason="lunch"))
    assert paused.status.pause_reason == "lunch"
    await con.stub.Logout(agent_pb2.LogoutRequest())
    assert await redis.hget(keys.campaign_agents("c1"), "ann") is None

    async def tl() -> list[tuple[str, str, str]]:
        rows = await timeline(pg, "ann")
        return rows if len(rows) >= 7 else []

    assert await wait_for(tl, what="timeline") == [
        ("ready", "login", ""),
        ("reserved", "offer", "k1"),
        ("on_call", "connected", "k1"),
        ("wrap_up", "end_call", "k1"),
        ("ready", "disposition", "k1"),
        ("paused", "lunch", ""),
        ("logged_out", "logout", ""),
    ]
    events = await load_timeline(pg, "ann")
    kpis = compute_kpis(events, until=events[-1].at)
    assert kpis.calls == 1
    assert kpis.logged_in_s == pytest.approx((events[-1].at - events[0].at).total_seconds())
    assert kpis.talk_s == pytest.approx((events[3].at - events[2].at).total_seconds())
    assert 0 < kpis.occupancy < 1
    dispo = await pg.fetchrow("SELECT * FROM agent_dispositions WHERE call_id = 'k1'")
    assert (
        dispo["disposition"] == "sale" and dispo["campaign_id"] == "c1" and dispo["number"] == "+12025550123"
    )

    async def events() -> list[dict[str, str]]:
        got = [f for _, f in await redis.xrange(keys.call_events())]
        return got if len(got) >= 3 else []

    evs = await wait_for(events, what="call events")
    assert [e["type"] for e in evs] == ["call.offered", "call.connected", "agent.disposition"]
    assert all(e["agent_id"] == "ann" and e["call_id"] == "k1" and e["campaign_id"] == "c1" for e in evs)
    assert evs[2]["disposition"] == "sale" and evs[2]["event_id"] == dispo["event_id"]
    await con.kill()


async def test_agents_act_only_for_themselves(services: Services, pg: asyncpg.Pool) -> None:
    rs = await start_agent(services)
    con = Console(services, rs, "bob")
    await con.login(("c1", 1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await con.stub.SetState(agent_pb2.SetStateRequest(agent_id="eve", state=READY))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err2:
        await con.stub.SetState(agent_pb2.SetStateRequest(state=PAUSED))
    assert err2.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err3:
        await con.stub.EndCall(agent_pb2.EndCallRequest(call_id="nope"))
    assert err3.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    manager = agent_pb2_grpc.AgentServiceStub(services.channel(rs, role="manager", sub="mia"))
    # A supervisor may pause another agent (with a reason, recorded with who did it), never make them ready.
    with pytest.raises(grpc.aio.AioRpcError) as err5:
        await manager.SetState(agent_pb2.SetStateRequest(agent_id="bob", state=READY))
    assert err5.value.code() == grpc.StatusCode.PERMISSION_DENIED
    paused = await manager.SetState(
        agent_pb2.SetStateRequest(agent_id="bob", state=PAUSED, pause_reason="coaching")
    )
    assert paused.status.pause_reason == "coaching (by manager mia)"
    # Logging another agent out needs a reason.
    with pytest.raises(grpc.aio.AioRpcError) as err6:
        await manager.Logout(agent_pb2.LogoutRequest(agent_id="bob"))
    assert err6.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    out = await manager.Logout(agent_pb2.LogoutRequest(agent_id="bob", reason="shift over"))
    assert out.status.state == common_pb2.AGENT_STATE_LOGGED_OUT
    with pytest.raises(grpc.aio.AioRpcError) as err4:
        await manager.Login(agent_pb2.LoginRequest(agent_id="bob"))
    assert err4.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def tl() -> list[tuple[str, str, str]]:
        rows = await timeline(pg, "bob")
        return rows if rows and rows[-1][0] == "logged_out" else []

    rows = await wait_for(tl, what="timeline")
    assert rows[-1] == ("logged_out", "logout_by_manager mia: shift over", "")
    assert ("paused", "coaching (by manager mia)", "") in rows


async def test_assignment_respects_priority_skills_and_longest_ready(services: Services) -> None:
    rs = await start_agent(services)
    d = dialer(services, rs)
    a = Console(services, rs, "a")  # c1 is a low-priority campaign for a
    b = Console(services, rs, "b")  # c1 is b's top campaign
    c = Console(services, rs, "c")  # the only one who speaks french
    await a.login(("c1", 1), ("c2", 9))
    await a.connect()
    await b.login(("c1", 9))
    await b.connect()
    await c.login(("c1", 1), skills=("french",))
    await c.connect()
    r1 = await d.OfferCall(offer_req("c1", "x1", required_skills=["french"]))
    assert (r1.assigned, r1.agent_id) == (True, "c")
    r2 = await d.OfferCall(offer_req("c1", "x2"))
    assert (r2.assigned, r2.agent_id) == (True, "b")
    r3 = await d.OfferCall(offer_req("c1", "x3"))
    assert (r3.assigned, r3.agent_id) == (True, "a")
    r4 = await d.OfferCall(offer_req("c1", "x4"))
    assert (r4.assigned, r4.reason) == (False, "no_agent_ready")
    # An agent already on a call of c1 is out of c2's ready set too.
    r5 = await d.OfferCall(offer_req("c2", "x5"))
    assert (r5.assigned, r5.reason) == (False, "no_agent_ready")
    for con in (a, b, c):
        await con.kill()


async def test_deadline_is_capped_at_two_seconds(services: Services) -> None:
    rs = await start_agent(services)
    req = offer_req("c9", "z1")
    req.deadline.FromMilliseconds(60_000)
    resp = await dialer(services, rs).OfferCall(req)
    assert not resp.assigned and resp.latency.ToMilliseconds() <= 2000


async def test_do_not_call_disposition_survives_an_unreachable_dnc_service(
    services: Services, pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    rs = await start_agent(services)  # dnc_addr points at nothing
    con = Console(services, rs, "dee")
    await con.login(("c1", 1))
    await con.connect()
    assert (await dialer(services, rs).OfferCall(offer_req("c1", "n1"))).assigned
    await con.stub.EndCall(agent_pb2.EndCallRequest(call_id="n1"))
    await con.stub.SetDisposition(agent_pb2.SetDispositionRequest(call_id="n1", disposition="do_not_call"))
    row = await pg.fetchrow("SELECT dnc_status, number FROM agent_dispositions WHERE call_id = 'n1'")
    assert row["dnc_status"] == "pending" and row["number"] == "+12025550123"
    evs = [f for _, f in await redis.xrange(keys.call_events()) if f["type"] == "agent.disposition"]
    assert evs and evs[0]["disposition"] == "do_not_call" and evs[0]["number"] == "+12025550123"

    async def retried() -> bool:
        n = await pg.fetchval("SELECT attempts FROM agent_dispositions WHERE call_id = 'n1'")
        return bool(n and n >= 2)

    await wait_for(retried, what="background retries")
    assert await pg.fetchval("SELECT dnc_status FROM agent_dispositions WHERE call_id = 'n1'") == "pending"
    await con.kill()


async def test_far_end_hangup_moves_the_agent_to_wrap_up_and_tells_the_console(
    services: Services, pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    rs = await start_agent(services)
    con = Console(services, rs, "hal")
    await con.login(("c1", 1))
    await con.connect()
    assert (await dialer(services, rs).OfferCall(offer_req("c1", "h1"))).assigned
    ended = {"event_id": "e1", "type": "call.ended", "at": "1", "campaign_id": "c1", "call_id": "h1"}
    for _ in range(2):  # delivered twice: applied once
        await redis.xadd(keys.call_events(), {**ended, "agent_id": "hal", "outcome": "connected"})

    async def wrapped() -> bool:
        return await redis.hget(keys.agent("hal"), "state") == "wrap_up"

    await wait_for(wrapped, what="far-end hang-up")
    await wait_for(lambda: _has(con.ended, "h1"), what="call_ended on the stream")
    await con.stub.SetDisposition(agent_pb2.SetDispositionRequest(call_id="h1", disposition="sale"))

    async def tl() -> list[tuple[str, str, str]]:
        rows = await timeline(pg, "hal")
        return rows if len(rows) >= 5 else []

    assert [r[:2] for r in await wait_for(tl, what="timeline")] == [
        ("ready", "login"),
        ("reserved", "offer"),
        ("on_call", "connected"),
        ("wrap_up", "far_end_hangup"),
        ("ready", "disposition"),
    ]
    await con.kill()


async def _has(items: list[str], item: str) -> bool:
    return item in items


async def test_a_disposition_is_recorded_once_even_when_retried_or_after_logout(
    services: Services, pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    rs = await start_agent(services)
    con = Console(services, rs, "ray")
    await con.login(("c1", 1))
    await con.connect()
    assert (await dialer(services, rs).OfferCall(offer_req("c1", "t1"))).assigned
    await con.stub.EndCall(agent_pb2.EndCallRequest(call_id="t1"))
    await con.stub.Logout(agent_pb2.LogoutRequest())  # gone before choosing a disposition
    for _ in range(2):
        await con.stub.SetDisposition(
            agent_pb2.SetDispositionRequest(call_id="t1", disposition="not_interested")
        )
    rows = await pg.fetch("SELECT disposition, event_id FROM agent_dispositions WHERE agent_id = 'ray'")
    assert [r["disposition"] for r in rows] == ["not_interested"]
    events = [f for _, f in await redis.xrange(keys.call_events()) if f["type"] == "agent.disposition"]
    assert {e["event_id"] for e in events} == {rows[0]["event_id"]}
    assert await redis.hget(keys.agent("ray"), "state") == "logged_out"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await con.stub.SetDisposition(agent_pb2.SetDispositionRequest(call_id="other", disposition="sale"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await con.kill()


async def test_the_dialer_ending_a_call_reaches_the_console(services: Services, pg: asyncpg.Pool) -> None:
    rs = await start_agent(services)
    con = Console(services, rs, "ida")
    await con.login(("c1", 1))
    await con.connect()
    d = dialer(services, rs)
    assert (await d.OfferCall(offer_req("c1", "q1"))).assigned
    ended = await d.EndCall(agent_pb2.EndCallRequest(agent_id="ida", call_id="q1"))
    assert ended.status.state == common_pb2.AGENT_STATE_WRAP_UP
    await wait_for(lambda: _has(con.ended, "q1"), what="call_ended on the stream")

    async def tl() -> list[tuple[str, str, str]]:
        rows = await timeline(pg, "ida")
        return rows if len(rows) >= 4 else []

    assert (await wait_for(tl, what="timeline"))[3] == ("wrap_up", "far_end_hangup", "q1")
    await con.kill()


async def test_timeline_keeps_recording_after_redis_loses_its_data(
    services: Services, pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """Redis is coordination, PostgreSQL the record: when Redis loses everything (restart without
    persistence) the per-agent sequence starts again, and the state changes after that must still be
    stored, not dropped as replays of old rows."""
    rs = await start_agent(services)
    console = Console(services, rs, "agent-flush")
    await console.login(("camp-flush", 1))
    await console.stub.SetState(agent_pb2.SetStateRequest(state=READY))
    await console.stub.SetState(agent_pb2.SetStateRequest(state=PAUSED, pause_reason="lunch"))

    async def rows() -> int:
        return int(
            await pg.fetchval("SELECT count(*) FROM agent_state_events WHERE agent_id = 'agent-flush'")
        )

    before = await wait_for(lambda: rows(), what="timeline rows before the flush")
    await redis.flushdb()
    await console.login(("camp-flush", 1))
    await console.stub.SetState(agent_pb2.SetStateRequest(state=READY))

    async def grew() -> bool:
        return await rows() >= before + 2

    await wait_for(grew, what="timeline rows after Redis lost its data")
    states = [e.state for e in await load_timeline(pg, "agent-flush")]
    assert states[-1] == "ready" and "paused" in states


async def test_a_live_answer_waits_for_the_first_agent_to_become_ready_within_its_deadline(
    services: Services,
) -> None:
    """Nobody ready when the person answers: the first agent to become ready within the 2 s takes the
    call (a person waits that long on the line), as the simulator models it, instead of an abandonment."""
    rs = await start_agent(services)
    con = Console(services, rs, "wren")
    await con.login(("c1", 1))
    await con.connect()
    d = dialer(services, rs)
    assert (await d.OfferCall(offer_req("c1", "w1"))).assigned
    await con.stub.EndCall(agent_pb2.EndCallRequest(call_id="w1"))  # wrap-up: not ready
    req = offer_req("c1", "w2")
    req.deadline.FromMilliseconds(2000)
    waiting = asyncio.ensure_future(d.OfferCall(req))
    await asyncio.sleep(0.4)
    assert not waiting.done()
    # The disposition ends the wrap-up: ready, and at once on that waiting call.
    await con.stub.SetDisposition(agent_pb2.SetDispositionRequest(call_id="w1", disposition="sale"))
    resp = await asyncio.wait_for(waiting, 5)
    assert (resp.assigned, resp.agent_id) == (True, "wren")
    assert 400 <= resp.latency.ToMilliseconds() <= 2000
    # Nobody becomes ready: no agent after the whole deadline, answered in time.
    req = offer_req("c1", "w3")
    req.deadline.FromMilliseconds(600)
    resp = await d.OfferCall(req)
    assert (resp.assigned, resp.reason) == (False, "no_agent_ready") and resp.latency.ToMilliseconds() <= 600
