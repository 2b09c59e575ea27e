"""ReserveAgent / ReleaseAgent (agent reserved before dialing), OfferCall idempotency per call id, and the
agent-hangup notice, through the real agent service on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.duration_pb2 import Duration

from outdial.core import keys
from outdial.v1 import agent_pb2, common_pb2
from tests.conftest import Services
from tests.integration.test_agent_service import Console, dialer, offer_req, timeline, wait_for

CID = "c-res"
READY = common_pb2.AGENT_STATE_READY
PAUSED = common_pb2.AGENT_STATE_PAUSED


@pytest.fixture(autouse=True)
def _agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTDIAL_AGENT_HEARTBEAT_TIMEOUT_S", "5")
    monkeypatch.setenv("OUTDIAL_AGENT_SWEEP_INTERVAL_S", "0.2")
    monkeypatch.setenv("OUTDIAL_AGENT_STUCK_OFFER_SLACK_MS", "200")


async def consoles(services: Services, rs: object, *ids: str) -> list[Console]:
    out = []
    for aid in ids:
        c = Console(services, rs, aid)  # type: ignore[arg-type]
        await c.login((CID, 1))
        await c.connect()
        out.append(c)
        await asyncio.sleep(0.01)  # distinct ready-since times: a0 is the longest ready
    return out


async def view_state(redis: aioredis.Redis, agent_id: str) -> str:
    raw = await redis.hget(keys.campaign_agents(CID), agent_id)
    return str(json.loads(raw)["state"]) if raw else ""


async def test_reserved_agent_is_held_for_its_call_only(
    services: Services, pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    rs = await services.start("agent")
    a0, a1 = await consoles(services, rs, "a0", "a1")
    d = dialer(services, rs)
    held = await d.ReserveAgent(
        agent_pb2.ReserveAgentRequest(campaign_id=CID, call_id="call-1", ttl=Duration(seconds=30))
    )
    assert held.reserved and held.agent_id == "a0"
    # Pacing sees the agent as reserved; a retry holds the same agent, not a second one.
    assert await view_state(redis, "a0") == "reserved"
    counts = await d.GetAgentCounts(agent_pb2.GetAgentCountsRequest(campaign_id=CID))
    assert (counts.counts.ready, counts.counts.reserved) == (1, 1)
    again = await d.ReserveAgent(agent_pb2.ReserveAgentRequest(campaign_id=CID, call_id="call-1"))
    assert again.reserved and again.agent_id == "a0"
    assert await view_state(redis, "a1") == "ready"
    # A held agent cannot pause between dial and answer.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await a0.stub.SetState(agent_pb2.SetStateRequest(state=PAUSED, pause_reason="break"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Another call's offer never reaches the held agent.
    other = await d.OfferCall(offer_req(CID, "call-2"))
    assert other.assigned and other.agent_id == "a1"
    # The answer of call-1 goes to the agent held for it.
    resp = await d.OfferCall(offer_req(CID, "call-1", reserved_agent_id="a0"))
    assert resp.assigned and resp.agent_id == "a0"
    offer = await asyncio.wait_for(a0.offers.get(), 10)
    assert offer.call_id == "call-1"
    assert a1.offers.qsize() == 1 and (await a1.offers.get()).call_id == "call-2"
    assert await view_state(redis, "a0") == "on_call"
    await wait_for(
        lambda: _has(pg, "a0", ("reserved", "hold", "call-1")), what="hold recorded in the timeline"
    )
    for c in (a0, a1):
        await c.kill()


async def _has(pg: asyncpg.Pool, agent_id: str, row: tuple[str, str, str]) -> bool:
    return row in await timeline(pg, agent_id)


async def test_release_and_lapse_give_the_agent_back(services: Services, redis: aioredis.Redis) -> None:
    rs = await services.start("agent")
    (a0,) = await consoles(services, rs, "a0")
    d = dialer(services, rs)
    held = await d.ReserveAgent(agent_pb2.ReserveAgentRequest(campaign_id=CID, call_id="n1"))
    assert held.reserved
    none_left = await d.ReserveAgent(agent_pb2.ReserveAgentRequest(campaign_id=CID, call_id="n2"))
    assert not none_left.reserved and none_left.reason == "no_agent_ready"
    rel = await d.ReleaseAgent(agent_pb2.ReleaseAgentRequest(agent_id="a0", call_id="n1", reason="no_answer"))
    assert rel.released and rel.status.state == READY
    twice = await d.ReleaseAgent(agent_pb2.ReleaseAgentRequest(agent_id="a0", call_id="n1"))
    assert not twice.released
    # A hold nobody follows up lapses after its ttl (the sweeper), so a dead dialer strands nobody.
    short = await d.ReserveAgent(
        agent_pb2.ReserveAgentRequest(campaign_id=CID, call_id="n3", ttl=Duration(nanos=300_000_000))
    )
    assert short.reserved
    await wait_for(lambda: _is(redis, "a0", "ready"), what="hold lapsed")
    await a0.kill()


async def _is(redis: aioredis.Redis, agent_id: str, state: str) -> bool:
    return await view_state(redis, agent_id) == state


async def test_held_agent_gone_offer_goes_to_another(services: Services) -> None:
    rs = await services.start("agent")
    a0, a1 = await consoles(services, rs, "a0", "a1")
    d = dialer(services, rs)
    held = await d.ReserveAgent(agent_pb2.ReserveAgentRequest(campaign_id=CID, call_id="g1"))
    assert held.agent_id == "a0"
    await a0.kill()
    # (The stream's close unsubscribes in the background: wait until the console is really gone.)
    await asyncio.sleep(0.5)
    resp = await d.OfferCall(offer_req(CID, "g1", reserved_agent_id="a0"))
    assert resp.assigned and resp.agent_id == "a1"
    assert (await asyncio.wait_for(a1.offers.get(), 10)).call_id == "g1"
    await a1.kill()


async def test_offer_call_is_idempotent_per_call(services: Services, redis: aioredis.Redis) -> None:
    rs = await services.start("agent")
    cs = await consoles(services, rs, "a0", "a1", "a2")
    d = dialer(services, rs)
    # Two OfferCalls for one call at once (a retry racing the original): one agent, both told the same.
    r1, r2 = await asyncio.gather(d.OfferCall(offer_req(CID, "dup")), d.OfferCall(offer_req(CID, "dup")))
    assert r1.assigned and r2.assigned and r1.agent_id == r2.agent_id
    # A later retry: the same agent again, and no second one reserved.
    r3 = await d.OfferCall(offer_req(CID, "dup"))
    assert r3.assigned and r3.agent_id == r1.agent_id
    states = [await view_state(redis, a) for a in ("a0", "a1", "a2")]
    assert sorted(states) == ["on_call", "ready", "ready"]
    offered = [c for c in cs if not c.offers.empty()]
    assert len(offered) == 1 and offered[0].offers.qsize() == 1
    # Even after the agent ended the call, a retry does not pick a second agent.
    owner = offered[0]
    await owner.stub.EndCall(agent_pb2.EndCallRequest(call_id="dup"))
    r4 = await d.OfferCall(offer_req(CID, "dup"))
    assert r4.assigned and r4.agent_id == owner.agent_id
    assert sorted([await view_state(redis, a) for a in ("a0", "a1", "a2")]) == ["ready", "ready", "wrap_up"]
    for c in cs:
        await c.kill()


async def test_agent_hangup_is_one_stream_entry_and_late_call_withdrawn(
    services: Services, redis: aioredis.Redis
) -> None:
    rs = await services.start("agent")
    a0, a1 = await consoles(services, rs, "a0", "a1")
    d = dialer(services, rs)
    assert (await d.OfferCall(offer_req(CID, "h1"))).agent_id == "a0"
    before_ms = int(time.time() * 1000)
    await a0.stub.EndCall(agent_pb2.EndCallRequest(call_id="h1"))
    after_ms = int(time.time() * 1000)
    # The agent's hang-up is one entry on the campaign's stream (read by the dialer's consumer group, so a
    # notice sent while the lease changes hands waits for the next holder).
    entries = await redis.xrange(keys.agent_hangups(CID))
    assert len(entries) == 1
    fields = entries[0][1]
    assert (fields["call_id"], fields["agent_id"]) == ("h1", "a0")
    assert before_ms - 1000 <= int(fields["at_ms"]) <= after_ms + 1000
    # A retried EndCall is refused and adds nothing; a call the far end ended adds nothing either.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await a0.stub.EndCall(agent_pb2.EndCallRequest(call_id="h1"))
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await d.OfferCall(offer_req(CID, "h2"))).agent_id == "a1"
    await d.EndCall(agent_pb2.EndCallRequest(agent_id="a1", call_id="h2"))
    assert len(await redis.xrange(keys.agent_hangups(CID))) == 1
    await a1.stub.SetDisposition(agent_pb2.SetDispositionRequest(call_id="h2", disposition="sale"))
    # A call connected after the dialer gave up on it: withdrawn, the agent is ready again at once.
    late = await d.OfferCall(offer_req(CID, "late"))
    assert late.agent_id == "a1"
    rel = await d.ReleaseAgent(
        agent_pb2.ReleaseAgentRequest(agent_id="a1", call_id="late", reason="abandoned")
    )
    assert rel.released and rel.status.state == READY
    await wait_for(lambda: _ended(a1, "late"), what="console told the call ended")
    for c in (a0, a1):
        await c.kill()


async def _ended(c: Console, call_id: str) -> bool:
    return call_id in c.ended
