"""The call-event consumer in the running campaign service: call detail records, retries, dispositions,
callbacks, idempotency by event_id, and the stats computed from them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from outdial.core import keys
from outdial.core.clock import ManualClock
from outdial.v1 import campaign_pb2, campaign_pb2_grpc
from tests.conftest import Services, make_token

AUTH = [("authorization", f"Bearer {make_token('manager')}")]
T0 = datetime(2026, 1, 13, 17, 0, tzinfo=UTC)


def ms(d: datetime) -> str:
    return str(int(d.timestamp() * 1000))


async def setup(services: Services) -> tuple[campaign_pb2_grpc.CampaignServiceStub, str, dict[str, str]]:
    rs = await services.start("campaign", clock=ManualClock(T0 + timedelta(minutes=30)))
    stub = campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role="manager"))
    c = campaign_pb2.Campaign(name="ev", caller_id="+12125550100")
    cid = (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign.id

    def reqs():  # type: ignore[no-untyped-def]
        yield campaign_pb2.UploadLeadsRequest(header=campaign_pb2.UploadLeadsHeader(campaign_id=cid))
        yield campaign_pb2.UploadLeadsRequest(chunk=b"phone\n2125550101\n2125550102\n2125550103\n")

    await stub.UploadLeads(reqs(), metadata=AUTH)
    return stub, cid, {}


class Events:
    def __init__(self, redis, cid: str) -> None:  # type: ignore[no-untyped-def]
        self.redis = redis
        self.cid = cid

    async def add(
        self, typ: str, call_id: str, lead_id: str, number: str, at: datetime, **f: str
    ) -> dict[str, str]:
        ev = {
            "event_id": uuid.uuid4().hex,
            "type": typ,
            "at": ms(at),
            "campaign_id": self.cid,
            "call_id": call_id,
            "lead_id": lead_id,
            "number": number,
            **f,
        }
        await self.redis.xadd(keys.call_events(), ev, maxlen=1_000_000, approximate=True)
        return ev


async def wait_for(pred, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await pred():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_events_build_records_and_move_leads(services: Services, redis, pg: asyncpg.Pool) -> None:  # type: ignore[no-untyped-def]
    stub, cid, _ = await setup(services)
    leads = {
        r["e164"]: str(r["lead_id"])
        for r in await pg.fetch("SELECT e164, lead_id FROM lead_numbers WHERE campaign_id = $1", cid)
    }
    n1, n2, n3 = "+12125550101", "+12125550102", "+12125550103"
    ev = Events(redis, cid)
    # Lead 1: no answer, then a retry an hour later (default rule).
    await ev.add("call.dialing", "c1", leads[n1], n1, T0, caller_id="+12125550100", attempt="1")
    dup = await ev.add(
        "call.ended",
        "c1",
        leads[n1],
        n1,
        T0 + timedelta(seconds=30),
        outcome="no_answer",
        dial_at=ms(T0),
        answer_at="",
        connect_at="",
        end_at=ms(T0 + timedelta(seconds=30)),
        agent_id="",
        duration_s="0",
    )

    async def lead(e: str) -> asyncpg.Record:
        r = await pg.fetchrow(
            "SELECT status, final_reason, attempts, next_attempt_at FROM leads WHERE id = $1", int(leads[e])
        )
        assert r is not None
        return r

    async def retried() -> bool:
        return (await lead(n1))["status"] == "retry"

    await wait_for(retried, "the no-answer retry")
    r = await lead(n1)
    assert r["attempts"] == 1 and r["next_attempt_at"] == T0 + timedelta(seconds=30) + timedelta(hours=1)
    # Redelivery of the same event (same event_id) changes nothing; a repeated dialing event neither.
    await redis.xadd(keys.call_events(), dup)
    await ev.add("call.dialing", "c1b", leads[n1], n1, T0, caller_id="+12125550100", attempt="1")
    again = await ev.add("call.dialing", "c1c", leads[n1], n1, T0, caller_id="+12125550100", attempt="1")
    await redis.xadd(keys.call_events(), again)

    async def three_dials() -> bool:
        return (
            await pg.fetchval(
                "SELECT count(*) FROM call_records WHERE call_id IN ('c1b', 'c1c') AND dial_at IS NOT NULL"
            )
        ) == 2

    await wait_for(three_dials, "dialing records")
    await asyncio.sleep(0.3)
    assert (await lead(n1))["attempts"] == 3  # c1, c1b, c1c once each

    # Lead 2: answered by a person, connected, agent asks for a callback.
    cb_at = T0 + timedelta(days=1)
    await ev.add("call.dialing", "c2", leads[n2], n2, T0, caller_id="+12125550100", attempt="1")
    await ev.add("call.answered", "c2", leads[n2], n2, T0 + timedelta(seconds=5), answer="human")
    await ev.add("call.connected", "c2", leads[n2], n2, T0 + timedelta(seconds=6), agent_id="a1")
    await ev.add(
        "call.ended",
        "c2",
        leads[n2],
        n2,
        T0 + timedelta(seconds=90),
        outcome="connected",
        dial_at=ms(T0),
        answer_at=ms(T0 + timedelta(seconds=5)),
        connect_at=ms(T0 + timedelta(seconds=6)),
        end_at=ms(T0 + timedelta(seconds=90)),
        agent_id="a1",
        duration_s="84",
    )
    await ev.add(
        "agent.disposition",
        "c2",
        leads[n2],
        n2,
        T0 + timedelta(seconds=100),
        agent_id="a1",
        disposition="callback",
        callback_at=ms(cb_at),
        notes="after lunch",
    )

    async def called_back() -> bool:
        return (await lead(n2))["status"] == "callback"

    await wait_for(called_back, "the callback")
    assert (await lead(n2))["next_attempt_at"] == cb_at
    cdr = await pg.fetchrow("SELECT * FROM call_records WHERE call_id = 'c2'")
    assert cdr is not None
    assert (
        cdr["calling_number"],
        cdr["called_number"],
        cdr["outcome"],
        cdr["agent_id"],
        cdr["disposition"],
    ) == ("+12125550100", n2, "connected", "a1", "callback")
    assert cdr["answer_at"] == T0 + timedelta(seconds=5) and cdr["connect_at"] == T0 + timedelta(seconds=6)
    assert cdr["end_at"] == T0 + timedelta(seconds=90) and cdr["duration_s"] == 84
    assert await pg.fetchval("SELECT count(*) FROM callbacks WHERE lead_id = $1", int(leads[n2])) == 1

    # Lead 3: abandoned, then a do-not-call disposition closes it; a blocked dial is recorded too.
    await ev.add("call.dialing", "c3", leads[n3], n3, T0, caller_id="+12125550100", attempt="1")
    await ev.add(
        "call.ended",
        "c3",
        leads[n3],
        n3,
        T0 + timedelta(seconds=20),
        outcome="abandoned",
        dial_at=ms(T0),
        answer_at=ms(T0 + timedelta(seconds=4)),
        connect_at="",
        end_at=ms(T0 + timedelta(seconds=20)),
        agent_id="",
        duration_s="16",
    )
    await ev.add(
        "agent.disposition",
        "c3",
        leads[n3],
        n3,
        T0 + timedelta(seconds=30),
        agent_id="a2",
        disposition="do_not_call",
        callback_at="",
        notes="",
    )
    await ev.add(
        "dial.blocked",
        "c4",
        leads[n3],
        n3,
        T0 + timedelta(seconds=40),
        reasons='["dnc.internal"]',
        detail="opted out",
    )

    async def closed() -> bool:
        return (await lead(n3))["final_reason"] == "dnc" and bool(
            await pg.fetchval("SELECT 1 FROM call_records WHERE call_id = 'c4' AND outcome = 'blocked'")
        )

    await wait_for(closed, "the do-not-call close")
    st = await stub.GetCampaignStats(campaign_pb2.GetCampaignStatsRequest(campaign_id=cid))
    assert st.leads_total == 3 and st.connected == 1 and st.abandoned == 1 and st.live_answers == 2
    assert st.abandon_rate_24h == pytest.approx(0.5) and st.abandon_rate_30d == pytest.approx(0.5)
    assert st.attempts == 5 and st.blocked == 1 and st.list_penetration == pytest.approx(1.0)
    assert dict(st.leads_by_state) == {"retry": 1, "callback": 1, "dnc": 1}
    assert st.contacts_per_hour == 1 and st.abandon_cap == pytest.approx(0.03)


async def test_schedule_callback_rpc(services: Services, pg: asyncpg.Pool) -> None:
    stub, cid, _ = await setup(services)
    lid = await pg.fetchval("SELECT min(id) FROM leads WHERE campaign_id = $1", cid)
    at = Timestamp()
    at.FromDatetime(T0 + timedelta(hours=3))
    resp = await stub.ScheduleCallback(
        campaign_pb2.ScheduleCallbackRequest(
            campaign_id=cid, lead_id=str(lid), at=at, agent_id="a1", note="n"
        )
    )
    assert resp.callback_id and resp.at == at
    row = await pg.fetchrow("SELECT status, next_attempt_at FROM leads WHERE id = $1", lid)
    assert (
        row is not None and row["status"] == "callback" and row["next_attempt_at"] == T0 + timedelta(hours=3)
    )
    for lead_id, code in (("abc", grpc.StatusCode.INVALID_ARGUMENT), ("999999", grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ScheduleCallback(
                campaign_pb2.ScheduleCallbackRequest(campaign_id=cid, lead_id=lead_id, at=at)
            )
        assert err.value.code() is code


async def test_an_event_that_fails_stays_pending_and_others_go_on(
    services: Services, redis, pg: asyncpg.Pool
) -> None:  # type: ignore[no-untyped-def]
    _stub, cid, _ = await setup(services)
    lead = str(await pg.fetchval("SELECT min(id) FROM leads WHERE campaign_id = $1", cid))
    ev = Events(redis, cid)
    await ev.add("call.ended", "bad", lead, "+12125550101", T0, outcome="busy", duration_s="not-a-number")
    await ev.add("call.dialing", "good", lead, "+12125550101", T0, caller_id="+12125550100", attempt="1")

    async def good_applied() -> bool:
        return bool(
            await pg.fetchval("SELECT 1 FROM call_records WHERE call_id = 'good' AND dial_at IS NOT NULL")
        )

    await wait_for(good_applied, "the good event")
    pending = await redis.xpending(keys.call_events(), "campaign")
    assert pending["pending"] == 1
    # Nothing of the failed event was kept (its transaction rolled back, its event id is not marked).
    assert await pg.fetchval("SELECT count(*) FROM call_records WHERE call_id = 'bad'") == 0


async def test_a_skipped_preview_holds_the_lead_back_and_is_no_call(
    services: Services, redis, pg: asyncpg.Pool
) -> None:  # type: ignore[no-untyped-def]
    """preview.skipped (an agent skipped a lead in preview mode): the lead waits the campaign's skip delay
    (default 30 min) before the feeder offers it again; a lead that was only shown is no call record."""
    _stub, cid, _ = await setup(services)
    lead = str(await pg.fetchval("SELECT lead_id FROM lead_numbers WHERE e164 = '+12125550101'"))
    ev = Events(redis, cid)
    await ev.add("preview.offered", "p1", lead, "+12125550101", T0, agent_id="a1")
    await ev.add(
        "preview.skipped", "p1", lead, "+12125550101", T0 + timedelta(seconds=5), agent_id="a1", by="agent"
    )

    async def held_back() -> bool:
        at = await pg.fetchval("SELECT recheck_at FROM leads WHERE id = $1", int(lead))
        return bool(at is not None)

    await wait_for(held_back, "the skipped lead's recheck time")
    row = await pg.fetchrow("SELECT recheck_at, attempts, status FROM leads WHERE id = $1", int(lead))
    assert row["recheck_at"] == T0 + timedelta(seconds=5) + timedelta(seconds=1800)
    assert (row["attempts"], row["status"]) == (0, "new")
    assert await pg.fetchval("SELECT count(*) FROM call_records WHERE call_id = 'p1'") == 0


async def test_records_of_calls_whose_events_redis_lost_are_rebuilt_once(
    services: Services, redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OUTDIAL_RECONCILE_INTERVAL_S", "0.5")
    _stub, cid, _ = await setup(services)
    lead = str(await pg.fetchval("SELECT lead_id FROM lead_numbers WHERE e164 = '+12125550101'"))
    dial_at = T0 + timedelta(minutes=20)
    # The pacing service recorded the call; its events were lost with Redis's data.
    await pg.execute(
        """INSERT INTO dial_attempts (call_id, campaign_id, lead_id, number, attempt, replica, fence_token,
               allowed, gate_at, dial_at, answer, answer_at, connect_at, end_at, agent_id, outcome)
           VALUES ('lost-1', $1, $2, '+12125550101', 1, 'r', 1, true, $3, $3, 'human', $4, $5, $6, 'a-1',
                   'connected')""",
        cid, lead, dial_at, dial_at + timedelta(seconds=9), dial_at + timedelta(seconds=10),
        dial_at + timedelta(seconds=70),
    )  # fmt: skip

    async def rebuilt() -> bool:
        return bool(await pg.fetchval("SELECT end_at IS NOT NULL FROM call_records WHERE call_id = 'lost-1'"))

    await wait_for(rebuilt, "the call detail record rebuilt from PostgreSQL")
    rec = await pg.fetchrow("SELECT * FROM call_records WHERE call_id = 'lost-1'")
    assert (rec["outcome"], rec["answer"], rec["agent_id"]) == ("connected", "human", "a-1")
    assert rec["duration_s"] == pytest.approx(60.0)
    assert await pg.fetchval("SELECT attempts FROM leads WHERE id = $1", int(lead)) == 1
    # The original events arrive after all (same derived ids): nothing is applied twice.
    for typ in ("call.dialing", "call.ended"):
        e = {"event_id": f"lost-1:{typ}", "type": typ, "at": ms(dial_at), "campaign_id": cid}
        e |= {"call_id": "lost-1", "lead_id": lead, "number": "+12125550101", "outcome": "connected"}
        last = await redis.xadd(keys.call_events(), e)

    async def consumed() -> bool:
        groups = await redis.xinfo_groups(keys.call_events())
        g = next(g for g in groups if g["name"] in ("campaign", b"campaign"))
        return bool(g["last-delivered-id"] in (last, last.encode() if isinstance(last, str) else last))

    await wait_for(consumed, "the late events read by the consumer")
    await asyncio.sleep(0.3)  # (applied in the same pass that read them)
    assert await pg.fetchval("SELECT attempts FROM leads WHERE id = $1", int(lead)) == 1
