"""Sessions outlive consoles: a console that crashes and logs in again, or comes back after the heartbeat
grace, gets the session and the call it was on back, never a second call; a newer console of the same agent
takes over from the older one."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from outdial.agent.client import AgentSession, Backoff, SessionEnded
from outdial.agent.simulated import Distribution, run_simulated_agents
from outdial.agent.store import AgentRedis
from outdial.core import keys
from outdial.core.clients import open_channel
from outdial.migrations.grants import role_name
from outdial.pacing.store import PacingStore
from outdial.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from tests.conftest import RunningService, Services, as_user, make_token
from tests.integration.test_agent_service import Console, dialer, offer_req, timeline, wait_for

CID = "c-sess"
ON_CALL = common_pb2.AGENT_STATE_ON_CALL
READY = common_pb2.AGENT_STATE_READY


@pytest.fixture(autouse=True)
def _short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTDIAL_AGENT_HEARTBEAT_TIMEOUT_S", "0.9")
    monkeypatch.setenv("OUTDIAL_AGENT_SWEEP_INTERVAL_S", "0.1")


async def on_a_call(services: Services, rs: RunningService, agent_id: str, call_id: str) -> Console:
    con = Console(services, rs, agent_id)
    await con.login((CID, 1))
    await con.connect()
    resp = await dialer(services, rs).OfferCall(offer_req(CID, call_id))
    assert (resp.assigned, resp.agent_id) == (True, agent_id)
    return con


async def test_a_crashed_console_logs_in_again_and_takes_its_session_and_call_back(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    rs = await services.start("agent")
    first = await on_a_call(services, rs, "kai", "k1")
    session = await redis.hget(keys.agent("kai"), "session_id")
    await first.kill()  # the console crashed: no logout

    again = Console(services, rs, "kai")
    resp = await again.login((CID, 1))
    # The same session, still on the call (not "cannot log in again", not reset to ready).
    assert resp.session_id == session
    assert (resp.status.state, resp.status.call_id) == (ON_CALL, "k1")
    await again.connect()
    assert again.statuses[0].state == ON_CALL
    shown = await asyncio.wait_for(again.offers.get(), 5)
    assert shown.call_id == "k1" and shown.lead_name == "Ada"  # the call in hand, shown again
    # Never offered a second call while on this one.
    second = await dialer(services, rs).OfferCall(offer_req(CID, "k2"))
    assert (second.assigned, second.reason) == (False, "no_agent_ready")
    await again.stub.EndCall(agent_pb2.EndCallRequest(call_id="k1"))
    await again.stub.SetDisposition(agent_pb2.SetDispositionRequest(call_id="k1", disposition="sale"))

    async def rows() -> list[tuple[str, str, str]]:
        r = await timeline(pg, "kai")
        return r if len(r) >= 5 else []

    # One login: taking the session back is not a new one.
    states = [s for s, _, _ in await wait_for(rows, what="timeline")]
    assert states == ["ready", "reserved", "on_call", "wrap_up", "ready"]
    await again.kill()


async def test_an_agent_gone_beyond_the_grace_is_logged_out_and_gets_their_call_back(
    services: Services, redis: aioredis.Redis
) -> None:
    rs = await services.start("agent")
    lou = await on_a_call(services, rs, "lou", "l1")
    other = Console(services, rs, "max")
    await other.login((CID, 1))
    await other.connect()
    await lou.kill()

    async def gone() -> bool:
        return await redis.hget(keys.agent("lou"), "state") == "logged_out"

    await wait_for(gone, what="logout after the heartbeat grace")
    # The dialer no longer counts them: out of the pacing view and the ready set.
    assert await redis.hget(keys.campaign_agents(CID), "lou") is None
    assert await redis.zscore(keys.campaign_ready(CID), "lou") is None
    assert set(await redis.hkeys(keys.campaign_agents(CID))) == {"max"}
    # A retried OfferCall for their call does not hand it to anyone else.
    retry = await dialer(services, rs).OfferCall(offer_req(CID, "l1"))
    assert retry.agent_id == "lou"

    back = Console(services, rs, "lou")
    resp = await back.login((CID, 1))
    # A new session (they were logged out), but back on the call that is still up, not ready.
    assert (resp.status.state, resp.status.call_id) == (ON_CALL, "l1")
    await back.connect()
    assert (await asyncio.wait_for(back.offers.get(), 5)).call_id == "l1"
    nxt = await dialer(services, rs).OfferCall(offer_req(CID, "l2"))
    assert nxt.agent_id == "max"
    await back.kill()

    # Gone again; this time the far end hangs up while they are away: a later login finds them ready,
    # and the disposition of that call can still be set.
    await wait_for(gone, what="second logout")
    await dialer(services, rs).EndCall(agent_pb2.EndCallRequest(agent_id="lou", call_id="l1"))
    third = Console(services, rs, "lou")
    resp = await third.login((CID, 1))
    assert resp.status.state == READY and not resp.status.call_id
    await third.stub.SetDisposition(agent_pb2.SetDispositionRequest(call_id="l1", disposition="sale"))
    for c in (other,):
        await c.kill()


async def test_a_newer_console_takes_over_and_the_older_one_stops(services: Services) -> None:
    rs = await services.start("agent")
    await services.assign(CID, "ned")
    token = make_token("agent", "ned")
    md = (("authorization", f"Bearer {token}"),)

    def session() -> AgentSession:
        return AgentSession(
            lambda: open_channel(services.settings, rs.addr, lambda: token),
            agent_pb2.LoginRequest(agent_id="ned", campaigns=[agent_pb2.CampaignMembership(campaign_id=CID)]),
            md,
            backoff=Backoff(0.01, 0.05),
            rng=random.Random(1),
        )

    async def follow(s: AgentSession, seen: list[agent_pb2.ConnectResponse]) -> str:
        try:
            async for msg in s.events():
                seen.append(msg)
        except SessionEnded as ended:
            return ended.reason
        return "?"

    old, new = session(), session()
    try:
        await old.login()
        old_seen: list[agent_pb2.ConnectResponse] = []
        old_task = asyncio.create_task(follow(old, old_seen))
        await asyncio.wait_for(old.connected.wait(), 10)
        # The same agent starts a second console: it takes the session (same id) over.
        resp = await new.login()
        assert resp.session_id == old.session_id
        new_seen: list[agent_pb2.ConnectResponse] = []
        new_task = asyncio.create_task(follow(new, new_seen))
        assert await asyncio.wait_for(old_task, 10) == "superseded"
        await asyncio.wait_for(new.connected.wait(), 10)
        offered = await dialer(services, rs).OfferCall(offer_req(CID, "n1"))
        assert offered.assigned

        async def shown() -> bool:
            return any(m.HasField("offer") for m in new_seen)

        await wait_for(shown, what="offer on the newer console")
        assert not any(m.HasField("offer") for m in old_seen)
        new_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await new_task
    finally:
        await new.logout()
        for s in (old, new):
            await s.close()


async def test_the_client_rides_out_a_service_restart(services: Services, redis: aioredis.Redis) -> None:
    """In-process restart (graceful, like a rolling update): the session's stream comes back by itself."""
    rs = await services.start("agent")
    port = rs.port
    await services.assign(CID, "ola")
    token = make_token("agent", "ola")
    s = AgentSession(
        lambda: open_channel(services.settings, f"127.0.0.1:{port}", lambda: token),
        agent_pb2.LoginRequest(agent_id="ola", campaigns=[agent_pb2.CampaignMembership(campaign_id=CID)]),
        (("authorization", f"Bearer {token}"),),
        backoff=Backoff(0.02, 0.2),
    )
    statuses: list[int] = []

    async def follow() -> None:
        async for msg in s.events():
            if msg.HasField("status"):
                statuses.append(msg.status.state)

    task = asyncio.create_task(follow())
    try:
        await s.login()
        await asyncio.wait_for(s.connected.wait(), 10)
        session = s.session_id
        await rs.stop()
        await services.start("agent", listen_port=port)

        async def reconnected() -> bool:
            return s.reconnects >= 1 and s.connected.is_set()

        await wait_for(reconnected, what="reconnected")
        assert s.session_id == session == await redis.hget(keys.agent("ola"), "session_id")
        assert s.logins == 1
        assert statuses[-1] == READY
    finally:
        task.cancel()
        with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
            await task
        await s.logout()
        await s.close()


async def test_an_offer_whose_offercall_died_is_taken_back_from_the_console(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    rs = await services.start("agent")
    uma = Console(services, rs, "uma")
    await uma.login((CID, 1))
    await uma.connect()
    # A replica reserves uma for a call and dies: nobody waits for the console's acknowledgement.
    store = AgentRedis(redis)
    offer = {"call_id": "dead1", "campaign_id": CID, "lead_id": "L1", "number": "+12025550123"}
    tr = await store.run("reserve", CID, "dead1", "[]", json.dumps(offer), 1500, "gone-replica", 10, 200)
    assert (tr.status, tr.agent_id) == ("ok", "uma")
    assert (await asyncio.wait_for(uma.offers.get(), 10)).call_id == "dead1"

    async def told() -> bool:
        return "dead1" in uma.ended

    # At once, not after the sweeper's slack: the console is told the call is gone, uma is ready.
    await wait_for(told, what="console told the orphaned offer is gone")
    assert await redis.hget(keys.agent("uma"), "state") == "ready"
    assert ("ready", "offer_orphaned", "dead1") in await timeline(pg, "uma")
    await uma.kill()


async def _next_with(stream: Any, field: str) -> agent_pb2.ConnectResponse:
    """The next message of a Connect stream that carries ``field`` (status notices in between skipped)."""
    while True:
        msg = await asyncio.wait_for(stream.read(), 10)
        assert msg is not grpc.aio.EOF, f"the stream ended before a {field}"
        if msg.WhichOneof("event") == field:
            return msg  # type: ignore[no-any-return]


async def test_a_console_back_while_previewing_is_shown_the_lead_again_and_still_decides_it(
    services: Services, redis: aioredis.Redis
) -> None:
    """Preview mode across a restart of the agent service: the lead on screen (not dialled yet) is shown again
    as a preview on the resumed stream, stays the agent's (the replica whose PreviewLead showed it is gone,
    but the dialer follows a preview, not that replica: it is no orphaned offer), and the agent's decision
    reaches the dialer on the campaign's notice stream."""
    rs = await services.start("agent")
    pia = agent_pb2_grpc.AgentServiceStub(services.channel(rs, role="agent", sub="pia"))
    md = (("authorization", f"Bearer {make_token('agent', 'pia')}"),)
    await services.assign(CID, "pia")
    login = await pia.Login(agent_pb2.LoginRequest(campaigns=[agent_pb2.CampaignMembership(campaign_id=CID)]))
    first = pia.Connect(agent_pb2.ConnectRequest(session_id=login.session_id), metadata=md)
    await _next_with(first, "status")
    req = agent_pb2.PreviewLeadRequest(
        campaign_id=CID, call_id="p1", lead_id="Lp1", number="+12025550123", lead_name="Ada"
    )
    req.timeout_action = agent_pb2.PREVIEW_DECISION_DIAL
    req.dial_hold.FromSeconds(30)
    shown = await dialer(services, rs).PreviewLead(req)
    assert (shown.previewed, shown.agent_id) == (True, "pia")
    assert (await _next_with(first, "preview")).preview.call_id == "p1"
    # The agent service restarts (a rolling update) while the agent looks at the lead.
    await rs.stop()
    first.cancel()
    rs = await services.start("agent", listen_port=rs.port)
    pia = agent_pb2_grpc.AgentServiceStub(services.channel(rs, role="agent", sub="pia"))
    second = pia.Connect(agent_pb2.ConnectRequest(session_id=login.session_id), metadata=md)
    status = (await _next_with(second, "status")).status
    assert (status.state, status.call_id) == (common_pb2.AGENT_STATE_RESERVED, "p1")
    again = await _next_with(second, "preview")  # a preview again, not a call offer
    assert (again.preview.call_id, again.preview.lead_name) == ("p1", "Ada")
    decided = await pia.DecidePreview(
        agent_pb2.DecidePreviewRequest(agent_id="pia", call_id="p1", decision=agent_pb2.PREVIEW_DECISION_DIAL)
    )
    assert decided.decision == agent_pb2.PREVIEW_DECISION_DIAL
    note = (await _next_with(second, "preview_decided")).preview_decided
    assert (note.call_id, note.decision, note.by) == ("p1", agent_pb2.PREVIEW_DECISION_DIAL, "agent")
    entries = await redis.xrange(keys.agent_hangups(CID))
    assert [f for _id, f in entries] == [
        {"kind": "preview", "call_id": "p1", "agent_id": "pia", "decision": "dial", "by": "agent"}
    ]
    # Held for the call they chose to dial: the live answer goes to them.
    answered = await dialer(services, rs).OfferCall(offer_req(CID, "p1", reserved_agent_id="pia"))
    assert (answered.assigned, answered.agent_id) == (True, "pia")
    assert (await _next_with(second, "offer")).offer.call_id == "p1"
    second.cancel()


async def test_a_retried_offercall_re_offers_when_the_first_ones_replica_died(
    services: Services, redis: aioredis.Redis
) -> None:
    rs = await services.start("agent")
    cid = CID
    vic = Console(services, rs, "vic")
    await vic.login((cid, 1))
    # Vic's console is held by another replica (a plain subscriber here, which acknowledges by hand).
    console_side = redis.pubsub()
    await console_side.subscribe(keys.agent_offers("vic"))
    try:
        store = AgentRedis(redis)
        offer = {"call_id": "r1", "campaign_id": cid, "lead_id": "L1", "number": "+12025550123"}
        args = ("[]", json.dumps(offer), 1500, "gone-replica", 10, 200, keys.call_agent("r1"))
        tr = await store.run("reserve", cid, "r1", *args)
        assert (tr.status, tr.agent_id) == ("ok", "vic")
        first = await _next_offer(console_side)
        assert first["reply_to"] == "gone-replica"  # its OfferCall died: nobody will connect the call

        # The dialer retries the same call on a live replica: offered again to vic, answered to it.
        stub = dialer(services, rs)

        async def offer_again() -> agent_pb2.OfferCallResponse:
            resp: agent_pb2.OfferCallResponse = await stub.OfferCall(offer_req(cid, "r1"))
            return resp

        retry = asyncio.create_task(offer_again())
        again = await _next_offer(console_side)
        assert again["call_id"] == "r1" and again["reply_to"] != "gone-replica"
        await store.publish_ack(again["reply_to"], "ack", "r1", "vic")
        resp = await asyncio.wait_for(retry, 10)
        assert (resp.assigned, resp.agent_id) == (True, "vic")
        h = await redis.hgetall(keys.agent("vic"))
        assert (h["state"], h["call_id"]) == ("on_call", "r1")
    finally:
        await console_side.aclose()  # type: ignore[no-untyped-call]


async def _next_offer(pubsub: Any) -> dict[str, Any]:
    for _ in range(200):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None:
            payload: dict[str, Any] = json.loads(msg["data"])
            if payload.get("type") == "offer":
                return payload
    raise AssertionError("no offer published")


async def test_a_sim_agents_process_killed_on_a_call_and_started_again_takes_the_call_back(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTDIAL_AGENT_HEARTBEAT_TIMEOUT_S", "15")
    rs = await services.start("agent")
    env = {
        **os.environ,
        "OUTDIAL_AGENT_ADDR": rs.addr,
        "OUTDIAL_DEV": "1",
        "OUTDIAL_TOKEN": make_token("manager", "sim-operator"),  # it assigns its agents first
    }
    argv = ["sim", "agents", "--campaign", CID, "--count", "1", "--prefix", "crash", "--quiet"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from outdial.cli.main import main; sys.exit(main(sys.argv[1:]))",
        *argv, "--talk-mean", "600", "--talk-dist", "fixed", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    agent = "crash-0001"
    try:

        async def connected() -> bool:
            subs = dict(await redis.pubsub_numsub(keys.agent_offers(agent)))
            return bool(subs.get(keys.agent_offers(agent), 0) >= 1)

        await wait_for(connected, what="the sim agents process connected")
        d = dialer(services, rs)
        assert (await d.OfferCall(offer_req(CID, "x1"))).agent_id == agent
    finally:
        proc.send_signal(signal.SIGKILL)  # crashes on the call: no logout, no hang-up
        await proc.wait()
    session = await redis.hget(keys.agent(agent), "session_id")

    # Started again: the same client code takes the session and the call back, and finishes the call.
    stop, started = asyncio.Event(), asyncio.Event()
    sim = asyncio.create_task(
        run_simulated_agents(
            services.settings,
            [(CID, 5)],
            1,
            stop=stop,
            talk=Distribution(1.0, "fixed"),
            wrap=Distribution(0.05, "fixed"),
            prefix="crash",
            dispositions={"sale": 1.0},
            started=started,
        )
    )
    try:
        await asyncio.wait_for(started.wait(), 20)
        h = await redis.hgetall(keys.agent(agent))
        assert (h["state"], h["call_id"], h["session_id"]) == ("on_call", "x1", session)
        # Still on that call: no second one (asked for while the call lasts: 0.2 s of its 1 s).
        req = offer_req(CID, "x2")
        req.deadline.FromMilliseconds(200)
        second = await d.OfferCall(req)
        assert (second.assigned, second.reason) == (False, "no_agent_ready")

        async def dispositioned() -> bool:
            n = await pg.fetchval("SELECT count(*) FROM agent_dispositions WHERE call_id = 'x1'")
            return bool(n == 1 and await redis.hget(keys.agent(agent), "state") == "ready")

        await wait_for(dispositioned, what="the call taken back, ended and dispositioned")
        # The hang-up reached the dialer's stream once.
        hangups = [f for _id, f in await redis.xrange(keys.agent_hangups(CID))]
        assert [(f["call_id"], f["agent_id"]) for f in hangups] == [("x1", agent)]
    finally:
        stop.set()
        agents = await asyncio.wait_for(sim, 20)
    assert agents[0].stats.taken_back == 1 and agents[0].stats.offers == 1
    assert agents[0].session.logins + agents[0].session.resumes == 1


@pytest.mark.parametrize("how", ["reconnect", "presence"])
async def test_consoles_log_in_again_at_once_when_redis_lost_the_sessions(
    services: Services, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Redis came back empty (its data, and every session, gone). "reconnect": the service's connections to
    Redis broke, as in a restart, and its marker is gone: the consoles are told at once. "presence": no
    reconnection (a flush): the next presence refresh finds the session gone. Either way the console logs in
    again by itself and is back in the campaign's pacing view, ready."""
    monkeypatch.setenv("OUTDIAL_AGENT_HEARTBEAT_TIMEOUT_S", "60" if how == "reconnect" else "3")
    rs = await services.start("agent")
    await services.assign(CID, "pia")
    token = make_token("agent", "pia")
    s = AgentSession(
        lambda: open_channel(services.settings, rs.addr, lambda: token),
        agent_pb2.LoginRequest(agent_id="pia", campaigns=[agent_pb2.CampaignMembership(campaign_id=CID)]),
        (("authorization", f"Bearer {token}"),),
        backoff=Backoff(0.02, 0.2),
    )

    async def follow() -> None:
        async for _msg in s.events():
            pass

    task = asyncio.create_task(follow())
    try:
        await s.login()
        await asyncio.wait_for(s.connected.wait(), 10)
        first = s.session_id
        await redis.flushall()
        if how == "reconnect":
            await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

        async def back() -> bool:
            view = await redis.hget(keys.campaign_agents(CID), "pia")
            return bool(view and json.loads(view)["state"] == "ready" and s.session_id != first)

        # "reconnect" within a second or so; "presence" within a refresh (a third of the 3 s grace).
        await wait_for(back, timeout=4 if how == "reconnect" else 8, what="the console logged in again")
        assert s.logins == 2
    finally:
        task.cancel()
        with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
            await task
        await s.logout()


async def test_redis_losing_an_agent_on_a_call_does_not_make_them_ready_for_a_second_one(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    """Redis came back empty while an agent was on a call the dialer still has up: PostgreSQL says so
    (``dial_open``), so logging in again puts them back on that call, never to ready for a second one; the
    dialer's end of the call then takes them to wrap-up as usual."""
    rs = await services.start("agent")
    first = await on_a_call(services, rs, "rio", "r1")
    pacing = await asyncpg.connect(as_user(services.settings.database_url, role_name("pacing")))
    try:
        await pacing.execute(
            """INSERT INTO dial_attempt_gates (call_id, campaign_id, lead_id, number, replica, fence_token,
                   allowed, gate_at) VALUES ('r1', $1, 'l1', '+12125550101', 'r', 1, true, now())""",
            CID,
        )
        await pacing.execute(
            "INSERT INTO dial_open (call_id, campaign_id, lead_id, number) VALUES ('r1', $1, 'l1', '+12125550101')",
            CID,
        )
        await pacing.execute(
            "INSERT INTO dial_attempt_events (call_id, kind, dial_at) VALUES ('r1', 'dial', now())"
        )
        # Connected as the dialer records it (PacingStore.mark_connected).
        assert await PacingStore(pacing, redis).mark_connected("r1", datetime.now(UTC), "rio")  # type: ignore[arg-type]
    finally:
        await pacing.close()
    await first.kill()
    await redis.flushall()

    again = Console(services, rs, "rio")
    resp = await again.login((CID, 1))
    assert (resp.status.state, resp.status.call_id) == (ON_CALL, "r1")
    await again.connect()
    assert again.statuses[0].state == ON_CALL
    second = await dialer(services, rs).OfferCall(offer_req(CID, "r2"))
    assert (second.assigned, second.reason) == (False, "no_agent_ready")
    # The dialer ends the call (its line ended): wrap-up, then ready again after the disposition.
    await dialer(services, rs).EndCall(agent_pb2.EndCallRequest(agent_id="rio", call_id="r1"))
    await again.stub.SetDisposition(agent_pb2.SetDispositionRequest(call_id="r1", disposition="sale"))
    third = await dialer(services, rs).OfferCall(offer_req(CID, "r3"))
    assert (third.assigned, third.agent_id) == (True, "rio")
    await again.kill()
