"""Consent and wireless numbers through the real DNC service and the dialer's gate (issue 13, points 3 and 4):
the consent each call type needs, the line type a current wireless list tells (fail closed without one),
preview dials, and revocation by an inbound SMS or email reply (gRPC and CLI), effective at the next check."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from outdial.pacing.gate import DialGate, GateLead
from outdial.pacing.store import PacingStore
from outdial.v1 import common_pb2, dnc_pb2
from tests.conftest import make_token
from tests.integration.test_dnc_gate import AUTH, check, codes, pacing, stamp, start
from tests.integration.test_pacing_dialer import campaign_config

NOON_NY = datetime(2026, 11, 18, 17, 0, tzinfo=UTC)  # a Wednesday, 12:00 in New York
WIRELESS = "+12125550171"
LANDLINE = "+12125550172"
REGISTERED = "+12125550173"
NO_REGISTRY = {"OUTDIAL_DNC_REQUIRE_REGISTRY": "false", "OUTDIAL_DNC_KEEPER_INTERVAL_SECONDS": "0.2"}
AUTODIALLED = {"call_method": common_pb2.CALL_METHOD_AUTODIALLED}
MANUAL = {"call_method": common_pb2.CALL_METHOD_MANUAL}


async def import_list(stub: Any, kind: int, numbers: list[str], downloaded: datetime) -> Any:
    async def gen() -> AsyncIterator[dnc_pb2.ImportRegistryRequest]:
        yield dnc_pb2.ImportRegistryRequest(
            header=dnc_pb2.ImportRegistryHeader(
                list_kind=kind,
                jurisdiction=common_pb2.JURISDICTION_US,
                mode=dnc_pb2.IMPORT_MODE_FULL,
                downloaded_at=stamp(downloaded),
                source="test",
            )
        )
        yield dnc_pb2.ImportRegistryRequest(chunk="".join(f"{n[2:]}\n" for n in numbers).encode())

    return await stub.ImportRegistry(gen(), timeout=60, metadata=AUTH)


def grant(number: str, kind: int, obtained: datetime, **kw: Any) -> dnc_pb2.SetConsentRequest:
    return dnc_pb2.SetConsentRequest(
        number=number,
        kind=kind,
        obtained_at=stamp(obtained),
        obtained_via="web_form",
        text_agreed="I agree that Acme may call me, also with an autodialer, about its offers.",
        ip_address="203.0.113.9",
        **kw,
    )


async def test_a_stale_or_missing_wireless_list_blocks_autodialled_calls(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: Any
) -> None:
    """No number is a landline by default: only a wireless list no older than its rule (15 days) says so.
    Without one an autodialled call is refused with the reason, a preview (manual) call goes ahead, and the
    consent a wireless number needs opens it too."""
    stub = await start(services, monkeypatch, NO_REGISTRY)
    now = datetime.now(UTC)
    await import_list(stub, dnc_pb2.LIST_KIND_WIRELESS, [WIRELESS], now - timedelta(days=14))
    wireless, landline = await check(stub, WIRELESS, LANDLINE, **AUTODIALLED)
    assert (
        codes(wireless) == ["wireless.no_consent"]
        and "prior_express_written_consent" in wireless.reasons[0].detail
    )
    assert landline.allowed
    # Sixteen days old: a number not on it is no longer a known landline (the listed one stays wireless).
    await pg.execute(
        "UPDATE dnc_lists SET registry_date = $1 WHERE id = 'wireless:US'", now - timedelta(days=16)
    )
    wireless, landline = await check(stub, WIRELESS, LANDLINE, **AUTODIALLED)
    assert codes(wireless) == ["wireless.no_consent"]
    assert codes(landline) == ["line_type.unknown"]
    assert "16 days ago" in landline.reasons[0].detail and "at most 15 days" in landline.reasons[0].detail
    # Preview: agent-initiated, not autodialled; the rules ask no consent of it for a wireless number.
    assert all(d.allowed for d in await check(stub, WIRELESS, LANDLINE, **MANUAL))
    # No list at all: the same, saying so.
    await pg.execute("UPDATE dnc_lists SET registry_date = NULL WHERE id = 'wireless:US'")
    (d,) = await check(stub, LANDLINE)
    assert codes(d) == ["line_type.unknown"] and "has been imported" in d.reasons[0].detail
    # The CLI asks for a call type too (exit 1: blocked).
    from outdial.cli.main import main

    monkeypatch.setenv("OUTDIAL_DNC_ADDR", services.settings.dnc_addr)
    monkeypatch.setenv("OUTDIAL_TOKEN", make_token("compliance", "cco"))
    assert await asyncio.to_thread(main, ["dnc", "check", LANDLINE]) == 1
    assert await asyncio.to_thread(main, ["dnc", "check", LANDLINE, "--method", "manual"]) == 0
    why = await stub.ExplainDecision(
        dnc_pb2.ExplainDecisionRequest(number=LANDLINE, call_method=common_pb2.CALL_METHOD_MANUAL),
        metadata=AUTH,
    )
    # (ExplainDecision rebuilds the list's date from the import history, which the UPDATE above left alone)
    assert why.decision.allowed and "Call type: manual telemarketing" in why.explanation
    # Prior express written consent is what an autodialled telemarketing call to a wireless number needs.
    await stub.SetConsent(grant(LANDLINE, dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN, now - timedelta(days=2)))
    (d,) = await check(stub, LANDLINE)
    assert d.allowed
    # An informational call needs prior express consent, or an opt-in to that campaign.
    info = {"call_purpose": common_pb2.CALL_PURPOSE_INFORMATIONAL, **AUTODIALLED}
    await stub.SetConsent(
        grant(WIRELESS, dnc_pb2.CONSENT_KIND_CAMPAIGN_OPT_IN, now - timedelta(days=1), campaign_id="c-info")
    )
    (d,) = await check(stub, WIRELESS, campaign_id="c-other", **info)
    assert codes(d) == ["wireless.no_consent"]
    (d,) = await check(stub, WIRELESS, campaign_id="c-info", **info)
    assert d.allowed
    (d,) = await check(stub, WIRELESS, campaign_id="c-info", **AUTODIALLED)  # telemarketing: written consent
    assert codes(d) == ["wireless.no_consent"]


async def test_an_ebr_opens_the_registry_for_its_months_but_never_a_wireless_number(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = await start(services, monkeypatch, {"OUTDIAL_DNC_KEEPER_INTERVAL_SECONDS": "0.2"})
    now = datetime.now(UTC)
    await import_list(stub, dnc_pb2.LIST_KIND_NATIONAL, [REGISTERED, WIRELESS], now - timedelta(days=2))
    await import_list(stub, dnc_pb2.LIST_KIND_WIRELESS, [WIRELESS], now - timedelta(days=2))
    registered, wireless = await check(stub, REGISTERED, WIRELESS)
    assert codes(registered) == ["dnc.national"]
    assert codes(wireless) == ["dnc.national", "wireless.no_consent"]
    ebr = dnc_pb2.CONSENT_KIND_EXISTING_BUSINESS_RELATIONSHIP
    # An inquiry four months ago: the relationship lasted three (rules table), so it opens nothing now.
    await stub.SetConsent(
        grant(REGISTERED, ebr, now - timedelta(days=122), ebr_basis=dnc_pb2.EBR_BASIS_INQUIRY)
    )
    (d,) = await check(stub, REGISTERED)
    assert codes(d) == ["dnc.national"] and "lapsed on" in d.reasons[0].detail
    # A purchase seventeen months ago: it opens the registry ...
    for n in (REGISTERED, WIRELESS):
        await stub.SetConsent(grant(n, ebr, now - timedelta(days=515), ebr_basis=dnc_pb2.EBR_BASIS_PURCHASE))
    registered, wireless = await check(stub, REGISTERED, WIRELESS, campaign_id="c-ebr", dial_time=False)
    assert registered.allowed
    # ... but not an autodialled call to a wireless number (prior express written consent only) ...
    assert codes(wireless) == ["wireless.no_consent"]
    # ... which a preview (manual) call may still make.
    (d,) = await check(stub, WIRELESS, **MANUAL)
    assert d.allowed
    # The audited dial-time decision keeps the call type, the line type and the consent relied on.
    dial = pacing(services)
    (d,) = await check(dial, REGISTERED, campaign_id="c-ebr", dial_time=True, call_ids=["call-e"])
    assert d.allowed
    pages = [
        p
        async for p in stub.QueryAudit(
            dnc_pb2.QueryAuditRequest(action="check", campaign_id="c-ebr"), metadata=AUTH
        )
    ]
    (rec,) = [r for p in pages for r in p.records]
    consent = json.loads(rec.details_json)["consent"]
    assert consent["call"] == {
        "methods": ["autodialled"],
        "purpose": "telemarketing",
        "line": "landline",
        "registered": True,
    }
    (req,) = consent["requirements"]
    assert (req["rule"], req["met_by_kind"]) == (
        "us.consent.telemarketing_registered_number",
        "established_business_relationship",
    )
    why = await stub.ExplainDecision(dnc_pb2.ExplainDecisionRequest(number=WIRELESS), metadata=AUTH)
    assert (
        "line type: wireless" in why.explanation
        and "us.consent.autodialled_telemarketing_wireless" in why.explanation
    )


async def test_the_dialers_gate_lets_a_preview_dial_reach_a_wireless_number(
    services: Any, monkeypatch: pytest.MonkeyPatch, redis: Any, pg: Any
) -> None:
    """Through the pacing gate: the campaign's dial mode is the call type the DNC service judges."""
    stub = await start(services, monkeypatch, NO_REGISTRY)
    await import_list(stub, dnc_pb2.LIST_KIND_WIRELESS, [WIRELESS], datetime.now(UTC) - timedelta(days=1))
    gate = DialGate(redis, pacing(services), PacingStore(pg, redis))
    leads = [
        GateLead(f"call-{i}", f"lead-{i}", n, ("America/New_York",), "NY", 1)
        for i, n in enumerate((WIRELESS, LANDLINE))
    ]
    predictive = await gate.check("c-gate", campaign_config(dial_mode="predictive"), leads, NOON_NY)
    assert [(r.allowed, r.reasons) for r in predictive] == [(False, ["wireless.no_consent"]), (True, [])]
    assert all(r.audit_seq > 0 for r in predictive)
    preview = await gate.check("c-gate", campaign_config(dial_mode="preview"), leads, NOON_NY)
    assert [r.allowed for r in preview] == [True, True]
    informational = campaign_config(dial_mode="power", call_purpose="informational")
    (r, _) = await gate.check("c-gate", informational, leads, NOON_NY)
    assert r.reasons == ["wireless.no_consent"] and "prior_express_consent" in r.detail


async def test_an_inbound_stop_revokes_at_once(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    stub = await start(services, monkeypatch, NO_REGISTRY)
    now = datetime.now(UTC)
    await import_list(stub, dnc_pb2.LIST_KIND_WIRELESS, [WIRELESS, LANDLINE], now - timedelta(days=1))
    for n in (WIRELESS, LANDLINE):
        await stub.SetConsent(grant(n, dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN, now - timedelta(days=3)))
    assert all(d.allowed for d in await check(stub, WIRELESS, LANDLINE))

    def inbound(**kw: Any) -> dnc_pb2.RecordInboundMessageRequest:
        return dnc_pb2.RecordInboundMessageRequest(received_at=stamp(now), **kw)

    sms = dnc_pb2.INBOUND_CHANNEL_SMS
    nothing = await stub.RecordInboundMessage(
        inbound(channel=sms, sender=WIRELESS, body="Yes, Tuesday is fine")
    )
    assert not nothing.revocation and nothing.audit_seq > 0
    assert (await check(stub, WIRELESS))[0].allowed
    resp = await stub.RecordInboundMessage(inbound(channel=sms, sender=WIRELESS, body="Stop. Please."))
    assert (resp.revocation, resp.matched, resp.consents_revoked, resp.number) == (True, "stop", 1, WIRELESS)
    # The very next check refuses: on the internal list, and its consent is gone.
    (d,) = await check(stub, WIRELESS)
    assert codes(d) == ["dnc.internal", "wireless.no_consent"]
    rec = await pg.fetchrow(
        "SELECT action, result, reason, details FROM dnc_audit WHERE seq = $1", resp.audit_seq
    )
    assert (rec["action"], rec["result"], rec["reason"]) == ("inbound", "revoked", "sms:stop")
    assert json.loads(rec["details"])["body"] == "Stop. Please."
    # Email: the reply is about a number the sender's address does not give.
    email = dnc_pb2.INBOUND_CHANNEL_EMAIL
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordInboundMessage(inbound(channel=email, sender="pat@example.com", body="unsubscribe"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "[number]" in (err.value.details() or "")
    for missing in ("channel", "sender", "body"):
        fields = {"channel": email, "sender": "pat@example.com", "body": "x", "number": LANDLINE}
        del fields[missing]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RecordInboundMessage(inbound(**fields))
        assert f"[{missing}]" in (err.value.details() or "")

    # The CLI verb, as a manager's inbox integration would run it.
    from outdial.cli.main import main

    monkeypatch.setenv("OUTDIAL_DNC_ADDR", services.settings.dnc_addr)
    monkeypatch.setenv("OUTDIAL_TOKEN", make_token("manager", "mgr-inbox"))
    args = ["dnc", "inbound", "--from", "pat@example.com", "--channel", "email", "--number", LANDLINE]
    assert await asyncio.to_thread(main, [*args, "--body", "Please do NOT call me again"]) == 0
    assert "revocation ('do not call')" in capsys.readouterr().out
    (d,) = await check(stub, LANDLINE)
    assert codes(d) == ["dnc.internal", "wireless.no_consent"]
    assert await pg.fetchval("SELECT count(*) FROM dnc_consent WHERE revoked_at IS NULL") == 0
    monkeypatch.setenv("OUTDIAL_TOKEN", make_token("agent", "ann"))
    assert await asyncio.to_thread(main, ["dnc", "inbound", "--from", LANDLINE, "--body", "STOP"]) == 4
    assert "PERMISSION_DENIED" in capsys.readouterr().err


async def test_the_campaign_report_counts_leads_that_need_consent_or_a_fresh_list(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: Any, redis: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The feeder's DNC check sends the campaign's call type; the leads it refuses for want of consent or of a
    current wireless list are counted in GetCampaignStats and `outdial campaign stats`."""
    from outdial.cli.main import main
    from outdial.core.clock import ManualClock
    from outdial.v1 import campaign_pb2
    from tests.integration.test_campaign_feeder import FAST, hopper_numbers, make_campaign, utc, wait_for

    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    stub = await start(services, monkeypatch, NO_REGISTRY)
    await stub.AddNumbers(
        dnc_pb2.AddNumbersRequest(
            numbers=[WIRELESS], list_kind=dnc_pb2.LIST_KIND_WIRELESS, reason="carrier data"
        )
    )
    # No date on the wireless list: no number it does not hold is a known landline.
    await pg.execute("UPDATE dnc_lists SET registry_date = NULL WHERE id = 'wireless:US'")
    clock = ManualClock(utc(2026, 1, 13, 17, 0))  # a Tuesday, 12:00 in New York
    rows = f"phone,first name\n{WIRELESS},Wes\n{LANDLINE},Lana\n{REGISTERED},Reg\n"
    camp, cid = await make_campaign(services, clock, rows)
    await stub.SetConsent(grant(REGISTERED, dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN, datetime.now(UTC)))
    await camp.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=cid))

    async def counted() -> bool:
        st = await camp.GetCampaignStats(campaign_pb2.GetCampaignStatsRequest(campaign_id=cid))
        return (st.leads_need_consent, st.leads_need_fresh_list) == (1, 1)

    await wait_for(counted, "the feeder's DNC check")
    assert await hopper_numbers(redis, cid) == {REGISTERED}  # written consent: any line type
    blocks = dict(
        await pg.fetch(
            "SELECT n.e164, l.compliance_block FROM leads l JOIN lead_numbers n ON n.lead_id = l.id "
            "WHERE l.campaign_id = $1",
            cid,
        )
    )
    assert blocks == {WIRELESS: "consent", LANDLINE: "fresh_list", REGISTERED: ""}
    monkeypatch.setenv("OUTDIAL_CAMPAIGN_ADDR", services.settings.campaign_addr)
    monkeypatch.setenv("OUTDIAL_TOKEN", make_token("manager", "mgr-1"))
    assert await asyncio.to_thread(main, ["campaign", "stats", cid]) == 0
    out = capsys.readouterr().out
    assert "leads needing consent" in out and "fresh wireless list" in out


async def test_a_key_press_or_a_do_not_call_disposition_revokes_every_consent(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: Any
) -> None:
    stub = await start(services, monkeypatch, NO_REGISTRY)
    now = datetime.now(UTC)
    await import_list(stub, dnc_pb2.LIST_KIND_WIRELESS, [WIRELESS, LANDLINE], now - timedelta(days=1))
    for n in (WIRELESS, LANDLINE):
        await stub.SetConsent(grant(n, dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN, now - timedelta(days=3)))
        await stub.SetConsent(
            grant(n, dnc_pb2.CONSENT_KIND_CAMPAIGN_OPT_IN, now - timedelta(days=3), campaign_id="c-1")
        )
    assert all(d.allowed for d in await check(stub, WIRELESS, LANDLINE, campaign_id="c-1"))
    for n, source in ((WIRELESS, "keypress"), (LANDLINE, "agent_disposition")):
        await stub.RecordOptOut(dnc_pb2.RecordOptOutRequest(number=n, source=source, campaign_id="c-1"))
        (d,) = await check(stub, n, campaign_id="c-1")
        assert codes(d) == ["dnc.internal", "wireless.no_consent"], source
    assert await pg.fetchval("SELECT count(*) FROM dnc_consent WHERE revoked_at IS NULL") == 0
