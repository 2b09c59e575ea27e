"""The hopper feeder in the running campaign service with an injected clock, against the real DNC service:
New York, Los Angeles and Honolulu leads enter the hopper only inside their own local window; DNC'd
numbers never enter; when DNC cannot answer nothing enters (fail closed)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from outdial.core import keys
from outdial.core.clock import ManualClock
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, dnc_pb2, dnc_pb2_grpc
from tests.conftest import Services, make_token

AUTH = [("authorization", f"Bearer {make_token('manager')}")]
FAST = {"OUTDIAL_CAMPAIGN_FEEDER_INTERVAL_S": "0.1", "OUTDIAL_CAMPAIGN_WINDOW_MARGIN_S": "300"}
NY, LA, HI, FL = "+12125550134", "+13105550134", "+18085550134", "+13055550134"
DNC_NUMBER = "+12125550177"


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)  # type: ignore[misc]


def local(zone: str, *a: int) -> datetime:
    return datetime(*a, tzinfo=ZoneInfo(zone)).astimezone(UTC)  # type: ignore[misc]


async def make_campaign(
    services: Services, clock: ManualClock, rows: str
) -> tuple[campaign_pb2_grpc.CampaignServiceStub, str]:
    rs = await services.start("campaign", clock=clock, instance_id="feeder-test")
    stub = campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role="manager"))
    c = campaign_pb2.Campaign(
        name="tz", caller_id="+12125550100", seller_name="Acme Solar LLC", opt_out_number="+12125550199"
    )
    cid = (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign.id

    def reqs():  # type: ignore[no-untyped-def]
        yield campaign_pb2.UploadLeadsRequest(header=campaign_pb2.UploadLeadsHeader(campaign_id=cid))
        yield campaign_pb2.UploadLeadsRequest(chunk=rows.encode())

    resp = await stub.UploadLeads(reqs(), metadata=AUTH)
    assert resp.rejected == 0
    return stub, cid


async def hopper_numbers(redis, cid: str) -> set[str]:  # type: ignore[no-untyped-def]
    out = set()
    for lid in await redis.zrange(keys.hopper(cid), 0, -1):
        out.add(await redis.hget(keys.hopper_lead(cid, lid), "number"))
    return out


async def wait_for(pred, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await pred():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_leads_enter_only_inside_their_local_window(
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    redis,
    pg: asyncpg.Pool,  # type: ignore[no-untyped-def]
) -> None:
    for k, v in {
        **FAST,
        "OUTDIAL_DNC_REQUIRE_REGISTRY": "false",
        "OUTDIAL_DNC_KEEPER_INTERVAL_SECONDS": "0.2",
    }.items():
        monkeypatch.setenv(k, v)
    dnc = await services.start("dnc")
    dstub = dnc_pb2_grpc.DncServiceStub(services.channel(dnc, role="compliance"))
    await dstub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=[DNC_NUMBER], reason="asked"))
    # Tuesday 13 January 2026, 12:00 UTC: 07:00 in New York, 04:00 in Los Angeles, 02:00 in Honolulu.
    clock = ManualClock(utc(2026, 1, 13, 12, 0))
    rows = f"phone,first name\n{NY},Nina\n{LA},Lou\n{HI},Hana\n{FL},Flo\n{DNC_NUMBER},Dee\n"
    stub, cid = await make_campaign(services, clock, rows)
    await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=cid))

    # A pass at 12:00 UTC adds nobody and notes when each lead's window opens (08:00 local).
    async def rechecks() -> dict[str, datetime | None]:
        rs = await pg.fetch(
            "SELECT n.e164, l.recheck_at FROM leads l JOIN lead_numbers n ON n.lead_id = l.id WHERE l.campaign_id = $1",
            cid,
        )
        return {r["e164"]: r["recheck_at"] for r in rs}

    async def all_noted() -> bool:
        return all(v is not None for k, v in (await rechecks()).items() if k != DNC_NUMBER)

    await wait_for(all_noted, "the first feeder pass")
    got = await rechecks()
    assert got[NY] == local("America/New_York", 2026, 1, 13, 8)
    assert got[LA] == local("America/Los_Angeles", 2026, 1, 13, 8)
    assert got[HI] == local("Pacific/Honolulu", 2026, 1, 13, 8)
    assert got[FL] == local("America/New_York", 2026, 1, 13, 8)
    assert await hopper_numbers(redis, cid) == set()

    instants = [
        (utc(2026, 1, 13, 14, 0), {NY, FL}),  # 09:00 New York and Miami, 06:00 LA, 04:00 HI
        (utc(2026, 1, 13, 17, 0), {NY, FL, LA}),  # 12:00 NY, 09:00 LA, 07:00 HI
        (utc(2026, 1, 13, 19, 0), {NY, FL, LA, HI}),  # 14:00, 11:00, 09:00
        (utc(2026, 1, 14, 1, 30), {NY, LA, HI}),  # 20:30 Eastern: Florida law stops at 20:00
        (utc(2026, 1, 14, 1, 57), {LA, HI}),  # 20:57 NY: the 5-minute margin runs past 21:00
        (utc(2026, 1, 14, 6, 0), {HI}),  # 01:00 NY, 22:00 LA, 20:00 HI
        (utc(2026, 1, 14, 7, 30), set()),  # 21:30 in Honolulu
    ]
    for at, want in instants:
        clock.set(at)

        async def matches(want: set[str] = want) -> bool:
            return await hopper_numbers(redis, cid) == want

        await wait_for(matches, f"hopper {sorted(want)} at {at.isoformat()}")
        # Stable: a few more passes change nothing, and the DNC'd number never enters.
        await asyncio.sleep(0.4)
        assert await hopper_numbers(redis, cid) == want
    # The hopper entry follows the contract.
    clock.set(utc(2026, 1, 13, 19, 0))
    await pg.execute("UPDATE leads SET recheck_at = NULL WHERE campaign_id = $1", cid)

    async def four() -> bool:
        return len(await hopper_numbers(redis, cid)) == 4

    await wait_for(four, "refill")
    lid = next(iter(await redis.zrange(keys.hopper(cid), 0, 0)))
    h = await redis.hgetall(keys.hopper_lead(cid, lid))
    assert set(h) == {
        "lead_id",
        "number",
        "timezones",
        "state",
        "zip",
        "first_name",
        "last_name",
        "fields",
        "attempt",
    }
    assert h["lead_id"] == lid and h["attempt"] == "0" and json.loads(h["timezones"])
    # A claimed lead is not re-added once it leaves the hopper.
    await redis.zrem(keys.hopper(cid), lid)
    await redis.set(keys.lead_claim(cid, lid), "call-1")
    await asyncio.sleep(0.5)
    assert lid not in await redis.zrange(keys.hopper(cid), 0, -1)
    # Pausing empties the hopper.
    await stub.PauseCampaign(campaign_pb2.PauseCampaignRequest(campaign_id=cid))
    assert await redis.zcard(keys.hopper(cid)) == 0


async def test_dnc_unavailable_adds_nothing(
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    redis,
    pg: asyncpg.Pool,  # type: ignore[no-untyped-def]
) -> None:
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    # No DNC service: settings.dnc_addr points at a closed port.
    clock = ManualClock(utc(2026, 1, 13, 19, 0))  # inside every US window
    stub, cid = await make_campaign(services, clock, f"phone\n{NY}\n{LA}\n{HI}\n+12125550135\n")
    # A lead whose window is closed shows that passes run (its recheck_at gets set).
    await pg.execute("UPDATE leads SET state = 'XX' WHERE campaign_id = $1", cid)
    await pg.execute(
        """UPDATE lead_numbers SET timezones = '{Asia/Tokyo}' WHERE campaign_id = $1 AND e164 = '+12125550135'""",
        cid,
    )
    await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=cid))

    async def pass_ran() -> bool:
        v = await pg.fetchval(
            """SELECT l.recheck_at FROM leads l JOIN lead_numbers n ON n.lead_id = l.id
                WHERE n.e164 = '+12125550135'""",
        )
        return v is not None

    await wait_for(pass_ran, "a feeder pass")
    await asyncio.sleep(0.5)
    assert await redis.zcard(keys.hopper(cid)) == 0
    # In-window leads are not marked: they are looked at again on the next pass.
    assert (
        await pg.fetchval("SELECT count(*) FROM leads WHERE campaign_id = $1 AND recheck_at IS NOT NULL", cid)
        == 1
    )


async def test_rolling_24h_cap_keeps_a_florida_number_out(
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    redis,
    pg: asyncpg.Pool,  # type: ignore[no-untyped-def]
) -> None:
    for k, v in {
        **FAST,
        "OUTDIAL_DNC_REQUIRE_REGISTRY": "false",
        "OUTDIAL_DNC_KEEPER_INTERVAL_SECONDS": "0.2",
    }.items():
        monkeypatch.setenv(k, v)
    await services.start("dnc")
    now = utc(2026, 1, 13, 19, 0)  # 14:00 in Miami and New York
    clock = ManualClock(now)
    stub, cid = await make_campaign(services, clock, f"phone\n{FL}\n{NY}\n")
    # Three calls to the Miami number in the last 24 h (one of them only in Redis, written by the dialer).
    for i, hours in enumerate((23, 5)):
        await pg.execute(
            """INSERT INTO call_records (call_id, campaign_id, called_number, dial_at, end_at, outcome)
               VALUES ($1, $2, $3, $4, $4, 'no_answer')""",
            f"old{i}",
            cid,
            FL,
            now - timedelta(hours=hours),
        )
    await redis.zadd(keys.number_attempts(FL), {"live1": int((now - timedelta(hours=1)).timestamp() * 1000)})
    await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=cid))

    async def only_ny() -> bool:
        return await hopper_numbers(redis, cid) == {NY}

    await wait_for(only_ny, "the New York lead alone")
    recheck = await pg.fetchval(
        "SELECT l.recheck_at FROM leads l JOIN lead_numbers n ON n.lead_id = l.id WHERE n.e164 = $1", FL
    )
    assert recheck == now - timedelta(hours=23) + timedelta(hours=24)  # the oldest call ages out
    clock.set(now + timedelta(hours=1, minutes=1))

    async def both() -> bool:
        return await hopper_numbers(redis, cid) == {NY, FL}

    await wait_for(both, "the Miami lead once a call aged out")
