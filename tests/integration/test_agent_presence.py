"""Presence: a dropped console stream releases the agent after the heartbeat timeout, and a call reserved
for them is re-offered to another agent or reported not assigned, never lost."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.agent.store import AgentRedis
from outdial.core import keys
from outdial.v1 import agent_pb2, common_pb2
from tests.conftest import Services
from tests.integration.test_agent_service import Console, dialer, offer_req, timeline, wait_for


@pytest.fixture(autouse=True)
def _short_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTDIAL_AGENT_HEARTBEAT_TIMEOUT_S", "0.6")
    monkeypatch.setenv("OUTDIAL_AGENT_SWEEP_INTERVAL_S", "0.1")


async def test_killed_stream_logs_the_agent_out_after_the_heartbeat_timeout(
    services: Services, pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    rs = await services.start("agent")
    kim = Console(services, rs, "kim")
    await kim.login(("c1", 1), ("c2", 1))
    await kim.connect()
    await kim.kill()
    # Not offered anything while their stream is down (no console to take it): reported not assigned.
    resp = await dialer(services, rs).OfferCall(offer_req("c1", "p1"))
    assert (resp.assigned, resp.reason) == (False, "no_agent_ready")

    async def gone() -> bool:
        return await redis.hget(keys.agent("kim"), "state") == "logged_out"

    await wait_for(gone, what="sweeper logout")
    for cid in ("c1", "c2"):
        assert await redis.zscore(keys.campaign_ready(cid), "kim") is None
        assert await redis.hget(keys.campaign_agents(cid), "kim") is None
    assert not await redis.sismember(keys.agents_index(), "kim")

    async def tl() -> list[tuple[str, str, str]]:
        rows = await timeline(pg, "kim")
        return rows if len(rows) >= 2 else []

    assert await wait_for(tl, what="timeline") == [
        ("ready", "login", ""),
        ("logged_out", "heartbeat_timeout", ""),
    ]


async def test_call_reserved_for_a_vanished_agent_is_re_offered(
    services: Services, pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    rs = await services.start("agent")
    # "zed" logs in and looks connected (something holds its offer channel) but nothing delivers or
    # acknowledges offers, and no heartbeat comes: like a replica that hung with the stream open.
    zed = Console(services, rs, "zed")
    await zed.login(("c1", 9))
    zombie = redis.pubsub()
    await zombie.subscribe(keys.agent_offers("zed"))
    amy = Console(services, rs, "amy")
    await amy.login(("c1", 1))
    await amy.connect()

    req = offer_req("c1", "r1")
    resp = await dialer(services, rs).OfferCall(req)
    # zed (higher priority) was reserved first; the sweeper logged zed out and the call went to amy.
    assert (resp.assigned, resp.agent_id) == (True, "amy"), resp
    offer = await asyncio.wait_for(amy.offers.get(), 10)
    assert offer.call_id == "r1"

    async def tl() -> list[tuple[str, str, str]]:
        rows = await timeline(pg, "zed")
        return rows if len(rows) >= 3 else []

    assert await wait_for(tl, what="zed timeline") == [
        ("ready", "login", ""),
        ("reserved", "offer", "r1"),
        ("logged_out", "heartbeat_timeout", "r1"),
    ]
    await zombie.aclose()  # type: ignore[no-untyped-call]
    await amy.stub.EndCall(agent_pb2.EndCallRequest(call_id="r1"))
    await amy.kill()


async def test_call_is_reported_not_assigned_when_no_one_takes_it_in_time(
    services: Services, redis: aioredis.Redis
) -> None:
    rs = await services.start("agent")
    zed = Console(services, rs, "zed")
    await zed.login(("c1", 9))
    zombie = redis.pubsub()
    await zombie.subscribe(keys.agent_offers("zed"))
    req = offer_req("c1", "r2")
    req.deadline.FromMilliseconds(300)
    resp = await dialer(services, rs).OfferCall(req)
    assert (resp.assigned, resp.reason) == (False, "deadline")
    # The reservation was undone: zed is ready again, not holding the call.
    assert await redis.hget(keys.agent("zed"), "state") in ("ready", "logged_out")
    assert await redis.hget(keys.agent("zed"), "call_id") in ("", "r2")
    await zombie.aclose()  # type: ignore[no-untyped-call]


async def test_wrap_up_times_out_to_ready_and_a_late_disposition_is_still_recorded(
    services: Services, pg: asyncpg.Pool, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTDIAL_AGENT_WRAP_TIMEOUT_S", "0.5")
    rs = await services.start("agent")
    wes = Console(services, rs, "wes")
    await wes.login(("c1", 1))
    await wes.connect()
    assert (await dialer(services, rs).OfferCall(offer_req("c1", "w1"))).assigned
    await wes.stub.EndCall(agent_pb2.EndCallRequest(call_id="w1"))

    async def ready_again() -> bool:
        return await redis.hget(keys.agent("wes"), "state") == "ready"

    await wait_for(ready_again, what="wrap-up timeout")
    hb = await wes.stub.Heartbeat(agent_pb2.HeartbeatRequest())
    assert hb.status.state == common_pb2.AGENT_STATE_READY
    done = await wes.stub.SetDisposition(agent_pb2.SetDispositionRequest(call_id="w1", disposition="other"))
    assert done.status.call_id == ""
    assert await pg.fetchval("SELECT disposition FROM agent_dispositions WHERE call_id = 'w1'") == "other"

    async def tl() -> list[tuple[str, str, str]]:
        rows = await timeline(pg, "wes")
        return rows if len(rows) >= 5 else []

    assert (await wait_for(tl, what="timeline"))[3:] == [
        ("wrap_up", "end_call", "w1"),
        ("ready", "wrap_timeout", "w1"),
    ]
    await wes.kill()


async def test_reservation_whose_offering_replica_died_is_released_by_the_sweeper(
    services: Services, pg: asyncpg.Pool, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTDIAL_AGENT_STUCK_OFFER_SLACK_MS", "200")
    rs = await services.start("agent")
    uma = Console(services, rs, "uma")
    await uma.login(("c1", 1))
    await uma.connect()
    # A replica reserves uma for a call and dies before it hears back: only its reservation remains.
    store = AgentRedis(redis)
    offer = {"call_id": "dead1", "campaign_id": "c1", "lead_id": "L1", "number": "+12025550123"}
    tr = await store.run("reserve", "c1", "dead1", "[]", json.dumps(offer), 100, "gone-replica", 10, 200)
    assert (tr.status, tr.agent_id) == ("ok", "uma")
    assert (await asyncio.wait_for(uma.offers.get(), 10)).call_id == "dead1"

    async def released() -> bool:
        return await redis.hget(keys.agent("uma"), "state") == "ready"

    await wait_for(released, what="stuck reservation released")
    assert await redis.zscore(keys.campaign_ready("c1"), "uma") is not None
    resp = await dialer(services, rs).OfferCall(offer_req("c1", "next"))
    assert (resp.assigned, resp.agent_id) == (True, "uma")
    await uma.kill()
