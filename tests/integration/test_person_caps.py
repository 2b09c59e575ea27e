"""Caps per person (issue 13, point 2) on real PostgreSQL and Redis: a Florida lead with three numbers that
each had one call in the last 24 h has had its three calls (Fla. Stat. 501.059(8)(a)); neither the feeder
nor the dial-time gate lets a 4th call out, to any of its numbers or to a number of another campaign's lead
that shares one of them, also when Redis has lost its per-number facts (they are counted from PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.core import keys
from outdial.core.clock import ManualClock
from outdial.pacing.gate import DialGate, GateLead
from outdial.pacing.store import PacingStore
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, dnc_pb2_grpc
from tests.conftest import Services, make_token
from tests.integration.test_campaign_feeder import FAST, hopper_numbers, wait_for
from tests.integration.test_pacing_dialer import FakeDnc, campaign_config
from tests.integration.test_pacing_gate import serve

AUTH = [("authorization", f"Bearer {make_token('manager')}")]
# Three Miami numbers of one lead, a fourth Miami number of a lead in another campaign that shares FL3, a New
# York control lead.
FL1, FL2, FL3, FL4 = "+13055550141", "+13055550142", "+13055550143", "+13055550144"
NY = "+12125550140"
NOW = datetime(2026, 1, 13, 19, 0, tzinfo=UTC)  # Tuesday 14:00 in Miami and New York


async def dialled(
    pg: asyncpg.Pool, campaign_id: str, lead_id: str, number: str, call_id: str, at: datetime
) -> None:
    """A call the pacing service dialled (its row in dial_attempts: the system of record)."""
    await pg.execute(
        """INSERT INTO dial_attempts (call_id, campaign_id, lead_id, number, replica, fence_token, allowed,
               gate_at, dial_at, end_at, outcome)
           VALUES ($1, $2, $3, $4, 'r1', 1, true, $5, $5, $5, 'no_answer')""",
        call_id,
        campaign_id,
        lead_id,
        number,
        at,
    )


async def three_calls(pg: asyncpg.Pool, campaign_id: str, lead_id: str) -> None:
    for i, (number, hours) in enumerate(((FL1, 23), (FL2, 5), (FL3, 1))):
        await dialled(pg, campaign_id, lead_id, number, f"old-{i}", NOW - timedelta(hours=hours))


async def test_feeder_refuses_a_fourth_call_to_a_person_with_three_numbers(
    services: Services, monkeypatch: pytest.MonkeyPatch, redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    for k, v in {
        **FAST,
        "OUTDIAL_DNC_REQUIRE_REGISTRY": "false",
        "OUTDIAL_DNC_KEEPER_INTERVAL_SECONDS": "0.2",
    }.items():
        monkeypatch.setenv(k, v)
    await services.start("dnc")
    clock = ManualClock(NOW)
    rs = await services.start("campaign", clock=clock, instance_id="feeder-test")
    stub = campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role="manager"))

    async def campaign(name: str, rows: str) -> str:
        c = campaign_pb2.Campaign(
            name=name, caller_id="+12125550100", seller_name="Acme Solar LLC", opt_out_number="+12125550199"
        )
        cid = (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign.id

        def reqs():  # type: ignore[no-untyped-def]
            yield campaign_pb2.UploadLeadsRequest(header=campaign_pb2.UploadLeadsHeader(campaign_id=cid))
            yield campaign_pb2.UploadLeadsRequest(chunk=rows.encode())

        assert (await stub.UploadLeads(reqs(), metadata=AUTH)).rejected == 0
        return str(cid)

    a = await campaign("three numbers", f"phone,phone2,phone3,state\n{FL1},{FL2},{FL3},FL\n{NY},,,NY\n")
    # Another campaign's lead shares FL3: the same person, reached at a fourth number.
    b = await campaign("shared", f"phone,phone2,state\n{FL4},{FL3},FL\n")
    lead_a = await pg.fetchval(
        "SELECT lead_id FROM lead_numbers WHERE campaign_id = $1 AND e164 = $2", a, FL1
    )
    # One call to each of the three numbers in the last 24 h, in PostgreSQL only: Redis knows nothing of them.
    await three_calls(pg, a, str(lead_a))
    assert await redis.exists(keys.number_attempts(FL1)) == 0
    await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=a))
    await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=b))

    async def noted() -> bool:
        got = await pg.fetchval(
            "SELECT count(*) FROM leads WHERE campaign_id IN ($1, $2) AND state = 'FL' AND recheck_at IS NOT NULL",
            a,
            b,
        )
        return bool(got == 2) and await hopper_numbers(redis, a) == {NY}

    await wait_for(noted, "both Florida leads held back, the New York lead in the hopper")
    await asyncio.sleep(0.4)  # a few more passes change nothing
    assert await hopper_numbers(redis, a) == {NY}
    assert await hopper_numbers(redis, b) == set()
    # Both are due again when the oldest of the person's calls (23 h ago) leaves the rolling 24 h.
    rechecks = await pg.fetch(
        "SELECT recheck_at FROM leads WHERE campaign_id IN ($1, $2) AND state = 'FL'", a, b
    )
    assert {r["recheck_at"] for r in rechecks} == {NOW + timedelta(hours=1)}
    clock.set(NOW + timedelta(hours=1, minutes=1))

    async def back() -> bool:
        return await hopper_numbers(redis, a) == {NY, FL1} and await hopper_numbers(redis, b) == {FL4}

    await wait_for(back, "the Florida leads once a call aged out")


async def person_rows(pg: asyncpg.Pool) -> dict[str, Any]:
    """Campaign c1 with lead 1 (FL1, FL2, FL3, Florida address); campaign c2 with lead 2 (FL4, FL3)."""
    ids: dict[str, Any] = {}
    for cid, numbers in (("c1", (FL1, FL2, FL3)), ("c2", (FL4, FL3))):
        await pg.execute("INSERT INTO campaigns (id, name, settings) VALUES ($1, $1, '{}')", cid)
        await pg.execute("INSERT INTO lead_lists (id, campaign_id) VALUES ($1, $1)", cid)
        lead_id = await pg.fetchval(
            "INSERT INTO leads (campaign_id, list_id, row_number, state) VALUES ($1, $1, 1, 'FL') RETURNING id",
            cid,
        )
        for pos, n in enumerate(numbers):
            await pg.execute(
                "INSERT INTO lead_numbers (campaign_id, e164, lead_id, position, timezones) VALUES ($1, $2, $3, $4, $5)",
                cid,
                n,
                lead_id,
                pos,
                ["America/New_York"],
            )
        ids[cid] = str(lead_id)
    return ids


async def test_gate_refuses_a_fourth_call_to_a_person_with_three_numbers(
    redis: aioredis.Redis, pg: asyncpg.Pool, database_url: str
) -> None:
    ids = await person_rows(pg)
    await three_calls(pg, "c1", ids["c1"])
    dnc = FakeDnc(set())
    server, ch = await serve(dnc)
    try:
        gate = DialGate(redis, dnc_pb2_grpc.DncServiceStub(ch), PacingStore(pg, redis))
        cfg = campaign_config()

        def lead(
            call: str, cid: str, number: str, state: str = "FL", zones: tuple[str, ...] = ()
        ) -> GateLead:
            return GateLead(call, ids.get(cid, "x"), number, zones or ("America/New_York",), state, 1)

        # Redis is empty (it lost its data): the three calls are known from PostgreSQL alone.
        assert await redis.dbsize() == 0
        res = await gate.check(
            "c1",
            cfg,
            [lead("n1", "c1", FL1), lead("n2", "c1", FL2), lead("n4", "c2", FL4), lead("ny", "c1", NY, "NY")],
            NOW,
        )
        assert [r.allowed for r in res] == [False, False, False, True]
        assert all(r.reasons == ["cap.person_24h"] for r in res[:3])
        assert "3 calls in 24 h" in res[0].detail and "cap 3" in res[0].detail
        # The audit gets exactly what was enforced: the person (linked through FL3 across campaigns), the
        # count from PostgreSQL, the law's cap.
        sent = [json.loads(d.inputs_json) for d in dnc.dialer]
        assert [tuple(d.blocked) for d in dnc.dialer] == [("cap.person_24h",)] * 3 + [()]
        assert sent[0]["cap"]["person_numbers"] == sorted((FL1, FL2, FL3, FL4))
        assert (sent[0]["cap"]["attempts_in_period"], sent[0]["cap"]["law_max"]) == (3, 3)
        assert sent[3]["cap"]["person_numbers"] == [NY] and sent[3]["cap"]["law_max"] is None
        # A New York address does not escape Florida's cap: the area code is Florida's (stricter state).
        dnc.dialer.clear()
        [ny_address] = await gate.check("c1", cfg, [lead("n1b", "c1", FL1, "NY")], NOW)
        assert ny_address.reasons == ["cap.person_24h"]
        (inputs,) = [json.loads(d.inputs_json) for d in dnc.dialer]
        assert inputs["place"]["states"] == ["FL", "NY"] and inputs["cap"]["law_max_by_state"] == {
            "FL": 3,
            "NY": None,
        }
        # An hour later the call of 23 h ago has aged out: one call again, and only one per person per batch.
        later = NOW + timedelta(hours=1, minutes=1)
        res = await gate.check("c1", cfg, [lead("m1", "c1", FL1), lead("m4", "c2", FL4)], later)
        assert [r.allowed for r in res] == [True, False]
        assert res[1].reasons == ["cap.person_24h"]
        # A number no lead holds is a person of its own: two calls today leave one, three leave none.
        lone = "+13055550199"
        for i in range(2):
            await dialled(pg, "c1", "x", lone, f"lone-{i}", NOW - timedelta(hours=2 + i))
        assert (await gate.check("c1", cfg, [lead("l1", "c3", lone)], NOW))[0].allowed
        await dialled(pg, "c1", "x", lone, "lone-2", NOW - timedelta(hours=1))
        [third] = await gate.check("c1", cfg, [lead("l2", "c3", lone)], NOW)
        assert not third.allowed and "cap.person_24h" in third.reasons
    finally:
        await ch.close()
        await server.stop(None)


async def test_gate_blocks_when_postgresql_cannot_say(redis: aioredis.Redis, database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
    await pool.close()  # PostgreSQL unreachable from the gate's point of view
    dnc = FakeDnc(set())
    server, ch = await serve(dnc)
    try:
        gate = DialGate(redis, dnc_pb2_grpc.DncServiceStub(ch), PacingStore(pool, redis))
        lead = GateLead("c", "l", NY, ("America/New_York",), "NY", 1)
        [r] = await gate.check("c1", campaign_config(), [lead], NOW)
        assert not r.allowed and r.reasons == ["compliance.unavailable"] and r.detail.startswith("attempts:")
        # the block is sent for the audit too, with what could not be read
        (d,) = dnc.dialer
        assert tuple(d.blocked) == ("compliance.unavailable",)
        assert json.loads(d.inputs_json)["unavailable"]["facts"] == "attempts"
    finally:
        await ch.close()
        await server.stop(None)


async def test_two_dials_to_one_person_at_once_cannot_both_pass_the_cap(
    redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    """Two replicas gate two leads of one person (campaigns c1 and c2) at the same count: the gate's count
    says yes to both, the locked count when the calls are marked dialled lets exactly one out."""
    ids = await person_rows(pg)
    for i, (number, hours) in enumerate(((FL1, 5), (FL2, 1))):
        await dialled(pg, "c1", ids["c1"], number, f"old-{i}", NOW - timedelta(hours=hours))
    store = PacingStore(pg, redis)
    server, ch = await serve(FakeDnc(set()))
    try:
        gate = DialGate(redis, dnc_pb2_grpc.DncServiceStub(ch), store)
        cfg = campaign_config()
        one = GateLead("x1", ids["c1"], FL3, ("America/New_York",), "FL", 1)
        two = GateLead("x2", ids["c2"], FL4, ("America/New_York",), "FL", 1)
        [r1] = await gate.check("c1", cfg, [one], NOW)
        [r2] = await gate.check("c2", cfg, [two], NOW)
        assert r1.allowed and r2.allowed and r1.person == r2.person == {FL1, FL2, FL3, FL4}
        assert r1.person_cap == r2.person_cap == 3
        for g, cid in ((one, "c1"), (two, "c2")):
            await store.record_gate(
                call_id=g.call_id,
                campaign_id=cid,
                lead_id=g.lead_id,
                number=g.number,
                attempt=1,
                replica="r",
                fence_token=1,
                allowed=True,
                reasons=[],
                gate_at=NOW,
            )
        got = await asyncio.gather(
            store.mark_dialed("x1", NOW, person=r1.person, cap=r1.person_cap, period=timedelta(hours=24)),
            store.mark_dialed("x2", NOW, person=r2.person, cap=r2.person_cap, period=timedelta(hours=24)),
        )
        assert sorted(got) == [False, True]
        refused = "x1" if got[0] is False else "x2"
        row = await pg.fetchrow(
            "SELECT allowed, reasons::text, dial_at FROM dial_attempts WHERE call_id = $1", refused
        )
        assert row["allowed"] is False and "cap.person_24h" in row["reasons"] and row["dial_at"] is None
        # Without a cap (a number no state caps), marking works as before.
        await store.record_gate(
            call_id="x3",
            campaign_id="c1",
            lead_id="z",
            number=NY,
            attempt=1,
            replica="r",
            fence_token=1,
            allowed=True,
            reasons=[],
            gate_at=NOW,
        )
        assert await store.mark_dialed("x3", NOW)
    finally:
        await ch.close()
        await server.stop(None)
