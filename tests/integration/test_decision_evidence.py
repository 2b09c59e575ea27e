"""Every dial-time decision reaches the hash-chained audit with its inputs: the dialer's gate (window, caps)
against the real DNC service, PostgreSQL and Redis; one record per dial holds both decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from outdial.cli.main import build_parser
from outdial.core import keys
from outdial.pacing.gate import DialGate, GateLead
from outdial.pacing.store import PacingStore
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, common_pb2, dnc_pb2
from tests.conftest import make_token
from tests.integration.test_dnc_gate import pacing, start
from tests.integration.test_pacing_dialer import campaign_config

# Wednesday 14:30 UTC: 09:30 in New York (open), 08:30 in Chicago (before the campaign's 09:00).
AT = datetime(2026, 11, 18, 14, 30, tzinfo=UTC)
CID = "camp-ev"


async def audit_of(stub: Any, campaign_id: str) -> list[Any]:
    from tests.integration.test_dnc_gate import AUTH

    out: list[Any] = []
    async for page in stub.QueryAudit(
        dnc_pb2.QueryAuditRequest(campaign_id=campaign_id, action="check"), timeout=10, metadata=AUTH
    ):
        out.extend(page.records)
    return out


async def test_window_cap_and_list_decisions_are_recorded_with_their_inputs(
    services: Any, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = await start(services, monkeypatch)
    await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12122340002"], reason="asked"))
    now_ms = int(AT.timestamp() * 1000)
    await redis.zadd(keys.number_attempts("+13052340001"), {"a": now_ms - 3_600_000, "b": now_ms - 7_200_000})
    gate = DialGate(redis, pacing(services), PacingStore(pg, redis))
    cfg = campaign_config(
        id=CID,
        max_calls_per_number_24h=5,
        calling_window={"start_local": "09:00", "end_local": "20:00", "days_of_week": [1, 2, 3, 4, 5]},
    )
    await redis.zadd(
        keys.number_attempts("+13052340004"),
        {"x": now_ms - 60_000, "y": now_ms - 120_000, "z": now_ms - 180_000},
    )
    leads = [
        GateLead("c0", "l0", "+12122340000", ("America/New_York",), "NY", 1),
        # a Miami address (ZIP 33101: Eastern time; without a ZIP every Florida zone, Central too, would count)
        GateLead("c1", "l1", "+13052340001", ("America/New_York",), "FL", 1, "33101"),  # 2 calls: FL allows 3
        GateLead("c2", "l2", "+12122340002", ("America/New_York",), "NY", 1),  # on the company list
        GateLead("c3", "l3", "+13122340003", ("America/Chicago",), "IL", 1),  # 08:30 local: too early
        GateLead("c4", "l4", "+13052340004", ("America/New_York",), "FL", 1, "33101"),  # 3 calls: FL's cap
    ]
    res = await gate.check(CID, cfg, leads, AT)
    assert [r.allowed for r in res] == [True, True, False, False, False]
    assert res[2].reasons == ["dnc.internal"]
    assert res[3].reasons == ["window.outside_hours"]
    assert res[4].reasons == ["cap.person_24h"]  # the law's cap, per person (the campaign's 5 is per number)
    assert all(r.audit_seq > 0 for r in res)

    recs = {r.call_id: r for r in await audit_of(stub, CID)}
    assert set(recs) == {"c0", "c1", "c2", "c3", "c4"}
    for r, g in zip([recs[f"c{i}"] for i in range(5)], res, strict=True):
        assert r.seq == g.audit_seq and r.result == ("allowed" if g.allowed else "blocked")
        assert r.reason == ",".join(g.reasons)

    win = json.loads(recs["c3"].details_json)["inputs"]["dialer"]["window"]
    assert win["allowed"] is False and win["reason"] == "outside_hours"
    assert win["zones"] == [
        {
            "zone": "America/Chicago",
            "local_time": "2026-11-18T08:30:00-06:00",
            "weekday": "wed",
            "hours_in_force": "09:00-20:00",
        }
    ]
    d4 = json.loads(recs["c4"].details_json)["inputs"]
    cap4 = d4["dialer"]["cap"]
    assert (cap4["attempts_in_period"], cap4["max_calls"], cap4["person_numbers"]) == (3, 3, ["+13052340004"])
    assert cap4["law_max"] == 3 and cap4["law_max_by_state"] == {"FL": 3} and cap4["campaign_max"] == 5
    assert d4["dialer"]["place"]["states"] == ["FL"] and d4["dialer"]["place"]["area_code_state"] == "FL"
    ids = {(r["id"], r["effective_from"]) for r in d4["dialer"]["rules"]}
    assert {i for i, _ in ids} >= {"us.calling_window", "us-fl.calling_window", "us-fl.call_cap"}
    assert all(ef for _, ef in ids)
    # the lists' decision and its inputs beside the dialer's
    d2 = json.loads(recs["c2"].details_json)["inputs"]["lists"]
    assert d2["hits"] == ["internal"] and "internal" in d2["lists_checked"]
    assert d2["registry"]["max_age_days"] > 0

    # a campaign-wide block is recorded for each number too, with the campaign's facts
    (paused,) = await gate.check(CID, {**cfg, "state": "paused"}, [leads[0]], AT)
    assert paused.reasons == ["campaign.not_active"] and paused.audit_seq > recs["c4"].seq
    (prec,) = [r for r in await audit_of(stub, CID) if r.seq == paused.audit_seq]
    assert prec.result == "blocked" and prec.reason == "campaign.not_active"
    assert json.loads(prec.details_json)["inputs"]["dialer"]["campaign"]["state"] == "paused"

    # the chain still verifies with the new records in it
    v = await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest(), timeout=30)
    assert v.ok and v.records_checked >= 6


async def test_dialer_decisions_are_checked(services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = await start(services, monkeypatch)
    dial = pacing(services)
    bad = [
        (["+12122340000"], [dnc_pb2.DialerDecision(inputs_json="{nope")], "not JSON"),
        (["+12122340000"], [dnc_pb2.DialerDecision(inputs_json="[1]")], "JSON object"),
        (["+12122340000", "+12122340001"], [dnc_pb2.DialerDecision(inputs_json="{}")], "parallel"),
    ]
    for numbers, dialer, says in bad:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await dial.CheckNumbers(
                dnc_pb2.CheckNumbersRequest(numbers=numbers, dial_time=True, dialer=dialer), timeout=10
            )
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and says in (e.value.details() or "")
    # the dialer's evidence goes only with a dial-time check (which only the pacing service makes)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.CheckNumbers(
            dnc_pb2.CheckNumbersRequest(numbers=["+12122340000"], dialer=[dnc_pb2.DialerDecision()]),
            timeout=10,
        )
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def why(services: Any, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``outdial why …`` in this process (the same handler the command runs), as a compliance officer."""
    args = build_parser().parse_args(["why", *argv, "--token", make_token("compliance")])
    capsys.readouterr()
    code = await args.handler(args, services.settings)
    return code, capsys.readouterr().out


async def test_why_answers_every_rule_from_the_record_or_the_state_at_that_time(
    services: Any,
    redis: aioredis.Redis,
    pg: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stub = await start(services, monkeypatch)
    gate = DialGate(redis, pacing(services), PacingStore(pg, redis))
    cfg = campaign_config(id=CID)
    chicago = GateLead("c3", "l3", "+13122340003", ("America/Chicago",), "IL", 1)
    (r,) = await gate.check(CID, cfg, [chicago], AT)
    assert r.reasons == ["window.outside_hours"]
    (rec,) = await audit_of(stub, CID)
    when = rec.at.ToDatetime(tzinfo=UTC).isoformat()

    code, out = await why(services, capsys, chicago.number, "--at", when, "--json")
    assert code == 0, out
    ans = json.loads(out.splitlines()[-1])
    assert ans["record"]["seq"] == rec.seq and ans["verdict"] == "BLOCKED"
    assert set(ans["rules"]) == {"campaign", "lists", "consent", "rnd", "window", "caps", "uk_72h"}
    win = ans["rules"]["window"]
    assert win["allowed"] is False and win["codes"] == ["window.outside_hours"]
    assert win["zones"][0]["local_time"] == "2026-11-18T08:30:00-06:00"
    assert {row["id"] for row in win["rules"]} >= {"us.calling_window"}
    assert ans["rules"]["lists"]["allowed"] and ans["rules"]["caps"]["attempts_in_period"] == 0

    # no decision recorded then: each rule evaluated against the state at that time (22:00 in New York)
    night = "2026-11-19T03:00:00+00:00"
    code, out = await why(services, capsys, "+13052340009", "--at", night, "--within", "0", "--json")
    assert code == 0, out
    ans = json.loads(out.splitlines()[-1])
    assert ans["record"] is None and ans["verdict"] == "BLOCKED"
    w = ans["rules"]["window"]
    assert w["allowed"] is False and w["state"] == "FL"
    assert w["zones"] == [
        {
            "zone": "America/New_York",
            "local_time": "2026-11-18T22:00:00-05:00",
            "weekday": "wed",
            "hours_in_force": "08:00-20:00",
        }
    ]
    caps = ans["rules"]["caps"]
    assert caps["allowed"] and (caps["attempts_in_period"], caps["law_max"]) == (0, 3)
    # On no list; but the test's wireless list was imported days after that night, so the line type was not
    # known then: an autodialled call would have been refused for that (fail closed), and why files it under
    # the consent rule (the consent a wireless number needs, or a current list).
    assert ans["rules"]["lists"]["allowed"] and ans["rules"]["lists"]["codes"] == []
    assert ans["rules"]["consent"]["codes"] == ["line_type.unknown"]
    assert ans["rules"]["uk_72h"]["applies"] is False


async def test_why_at_a_time_without_a_record_uses_the_campaigns_window_and_cap(
    services: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await start(services, monkeypatch)
    rs = await services.start("campaign")
    stub = campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role="manager"))
    c = campaign_pb2.Campaign(
        name="why",
        caller_id="+12125550100",
        max_calls_per_number_24h=2,
        calling_window=common_pb2.CallingWindow(
            start_local="10:00", end_local="18:00", days_of_week=[1, 2, 3]
        ),
    )
    cid = (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign.id
    # 09:30 in New York: the law's window is open, the campaign's (10:00) is not
    code, out = await why(
        services, capsys, "+12122340077", "--at", AT.isoformat(), "--campaign", cid, "--json"
    )
    assert code == 0, out
    ans = json.loads(out.splitlines()[-1])
    w = ans["rules"]["window"]
    assert ans["record"] is None and w["allowed"] is False
    assert w["campaign_window"]["start_local"] == "10:00"
    assert w["zones"][0]["hours_in_force"] == "10:00-18:00"
    assert ans["rules"]["caps"]["campaign_max"] == 2 and ans["rules"]["caps"]["law_max"] is None
    code, _ = await why(services, capsys, "+12122340077", "--at", AT.isoformat(), "--campaign", "nope")
    assert code == 1
