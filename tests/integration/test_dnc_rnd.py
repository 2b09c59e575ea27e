"""Reassigned Numbers Database (issue 13, point 5) through a real DNC service over PostgreSQL and Redis:
the import and its rejects, the dial-time gate's use of the answers and their record in the audit, and a
``wrong_number`` disposition revoking consent in every campaign."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from outdial.core import keys
from outdial.v1 import dnc_pb2
from tests.conftest import make_token
from tests.integration.test_dnc_audit import run_cli_flat
from tests.integration.test_dnc_gate import AUTH, NO_REGISTRY, check, codes, pacing, stamp, start

WIRELESS = ["+14155550201", "+14155550202", "+14155550203", "+14155550204"]
NOT_LISTED = "+14155550205"


async def import_rnd(stub: Any, text: str, *, chunk: int = 11, token: str | None = None) -> Any:
    async def gen() -> AsyncIterator[dnc_pb2.ImportRndResultsRequest]:
        yield dnc_pb2.ImportRndResultsRequest(header=dnc_pb2.ImportRndResultsHeader(source="rnd-2024.csv"))
        data = text.encode()
        for i in range(0, len(data), chunk):  # rows cut across chunks
            yield dnc_pb2.ImportRndResultsRequest(chunk=data[i : i + chunk])

    md = [("authorization", f"Bearer {token}")] if token else AUTH
    return await stub.ImportRndResults(gen(), timeout=30, metadata=md)


async def grant(stub: Any, number: str, obtained: datetime, campaign_id: str = "") -> None:
    await stub.SetConsent(
        dnc_pb2.SetConsentRequest(
            number=number,
            kind=dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN,
            evidence=f"form {number}",
            obtained_at=stamp(obtained),
            obtained_via="web_form",
            text_agreed="I agree to receive autodialled marketing calls from Acme at this number.",
            ip_address="203.0.113.7",
            campaign_id=campaign_id,
        )
    )


async def wireless_with_consent(stub: Any) -> None:
    await stub.AddNumbers(
        dnc_pb2.AddNumbersRequest(numbers=WIRELESS, list_kind=dnc_pb2.LIST_KIND_WIRELESS, reason="ported")
    )
    await grant(stub, WIRELESS[0], datetime(2024, 1, 10, 15, tzinfo=UTC))  # before the disconnect
    await grant(stub, WIRELESS[1], datetime(2024, 9, 1, 15, tzinfo=UTC))  # after the disconnect
    await grant(stub, WIRELESS[2], datetime(2024, 3, 1, 15, tzinfo=UTC))  # covered by a "no"
    await grant(stub, WIRELESS[3], datetime(2024, 5, 1, 15, tzinfo=UTC))  # no RND answer at all


RESULTS = (
    "number,queried_date,answer,disconnect_date\n"
    "4155550201,2024-01-10,yes,2024-06-01\n"
    "4155550202,2024-01-01,yes,2024-06-01\n"
    "4155550203,2024-03-01,no,\n"
    "4155550205,2023-01-01,yes,2024-06-01\n"
)


async def test_import_names_rejected_rows_and_is_idempotent(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = await start(services, monkeypatch)
    text = RESULTS + "415555020,2024-01-10,no,\n4155550206,2024-02-30,no,\n4155550207,2024-01-10,perhaps,\n"
    resp = await import_rnd(stub, text)
    assert (resp.rows, resp.imported, resp.already_present, resp.rejected) == (7, 4, 0, 3)
    assert [(r.row, r.field) for r in resp.rejects] == [(6, "number"), (7, "queried_date"), (8, "answer")]
    again = await import_rnd(stub, RESULTS, chunk=4096)
    assert (again.imported, again.already_present, again.rejected) == (0, 4, 0)
    shown = await stub.GetRndResults(dnc_pb2.GetRndResultsRequest(number="(415) 555-0201"))
    assert [(r.queried_date, r.answer, r.disconnect_date, r.import_id) for r in shown.results] == [
        ("2024-01-10", dnc_pb2.RND_ANSWER_YES, "2024-06-01", resp.import_id)
    ]
    # a malformed file: refused whole, nothing stored
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await import_rnd(stub, "4155550208,2024-01-10,no,\n4155550209,2024-01-10\n")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "row 2" in (bad.value.details() or "")
    none = await stub.GetRndResults(dnc_pb2.GetRndResultsRequest(number="+14155550208"))
    assert not none.results
    # compliance only
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await import_rnd(stub, RESULTS, token=make_token("manager", "mgr-1"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    page = await anext(
        aiter(stub.QueryAudit(dnc_pb2.QueryAuditRequest(action="rnd_import", page_size=10), metadata=AUTH))
    )
    assert [(r.result, json.loads(r.details_json)["rejected"]) for r in page.records] == [
        ("with_rejects", 3),
        ("ok", 0),
    ]


async def test_gate_refuses_consent_that_predates_a_disconnect_and_audits_the_check(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = await start(services, monkeypatch)
    await wireless_with_consent(stub)
    await import_rnd(stub, RESULTS)
    dialer = pacing(services)
    ds = await check(
        dialer, *WIRELESS, NOT_LISTED, dial_time=True, campaign_id="c-rnd", call_ids=list("abcde")
    )
    assert sorted(codes(ds[0])) == ["rnd.reassigned", "wireless.no_consent"]
    assert [d.allowed for d in ds] == [False, True, True, True, True]
    recs = {}
    for d in ds:
        page = await anext(
            aiter(stub.QueryAudit(dnc_pb2.QueryAuditRequest(number=d.number, action="check"), metadata=AUTH))
        )
        (rec,) = page.records
        assert rec.seq == d.audit_seq
        recs[d.number] = json.loads(rec.details_json)
    reassigned = recs[WIRELESS[0]]["rnd"]
    assert reassigned["outcome"] == "reassigned" and reassigned["relied_on_consent_id"] is None
    (c,) = reassigned["consents"]
    assert (c["obtained_at"][:10], c["status"], c["obtained_at_recorded"]) == (
        "2024-01-10",
        "reassigned",
        True,
    )
    assert [(r["queried_date"], r["answer"], r["disconnect_date"]) for r in reassigned["results"]] == [
        ("2024-01-10", "yes", "2024-06-01")
    ]
    assert recs[WIRELESS[1]]["rnd"]["outcome"] == "no_safe_harbor"  # consent after the disconnect
    harbor = recs[WIRELESS[2]]["rnd"]
    assert (
        harbor["outcome"] == "safe_harbor" and harbor["relied_on_consent_id"] == harbor["consents"][0]["id"]
    )
    assert harbor["results"][0]["answer"] == "no"
    unchecked = recs[WIRELESS[3]]["rnd"]  # no RND answer: relied on, and the record says no safe harbor
    assert (unchecked["outcome"], unchecked["results"], unchecked["relied_on_consent_id"] is not None) == (
        "no_safe_harbor",
        [],
        True,
    )
    assert "rnd" not in recs[NOT_LISTED]  # relies on no consent: the RND is not consulted
    why = await stub.ExplainDecision(dnc_pb2.ExplainDecisionRequest(number=WIRELESS[0], campaign_id="c-rnd"))
    assert "rnd.reassigned" in why.explanation
    assert (
        "Consent and the Reassigned Numbers Database: reassigned (1 consent(s) in force, 1 RND"
        in why.explanation
    )


async def test_rnd_required_blocks_consent_no_answer_covers(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = await start(services, monkeypatch, {**NO_REGISTRY, "OUTDIAL_DNC_RND_REQUIRED": "true"})
    await wireless_with_consent(stub)
    await import_rnd(stub, RESULTS)
    ds = await check(stub, *WIRELESS, NOT_LISTED)
    assert [sorted(codes(d)) for d in ds] == [
        ["rnd.reassigned", "wireless.no_consent"],
        ["rnd.unchecked", "wireless.no_consent"],
        [],
        ["rnd.unchecked", "wireless.no_consent"],
        [],
    ]


async def test_wrong_number_revokes_consent_in_every_campaign(
    services: Any, monkeypatch: pytest.MonkeyPatch, redis: Any
) -> None:
    stub = await start(services, monkeypatch)
    number, other = WIRELESS[0], WIRELESS[1]
    await stub.AddNumbers(
        dnc_pb2.AddNumbersRequest(numbers=[number, other], list_kind=dnc_pb2.LIST_KIND_WIRELESS, reason="x")
    )
    when = datetime(2025, 5, 1, tzinfo=UTC)
    for campaign in ("", "c1", "c2"):
        await grant(stub, number, when, campaign)
    await grant(stub, other, when)
    for campaign in ("c1", "c2"):
        (d,) = await check(stub, number, campaign_id=campaign)
        assert d.allowed
    await redis.xadd(
        keys.call_events(),
        {
            "event_id": "wn-1",
            "type": "agent.disposition",
            "at": "0",
            "campaign_id": "c1",
            "lead_id": "l1",
            "call_id": "call-wn",
            "number": number,
            "agent_id": "a7",
            "disposition": "wrong_number",
            "callback_at": "",
            "notes": "",
        },
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        (d,) = await check(stub, number, campaign_id="c2")
        if not d.allowed:
            break
        assert loop.time() < deadline, "the wrong_number event was not applied"
        await asyncio.sleep(0.1)
    assert codes(d) == ["wireless.no_consent"]
    (o,) = await check(stub, other, campaign_id="c2")
    assert o.allowed  # another number's consent is untouched
    page = await anext(
        aiter(stub.QueryAudit(dnc_pb2.QueryAuditRequest(number=number, action="consent"), metadata=AUTH))
    )
    rec = page.records[-1]
    details = json.loads(rec.details_json)
    assert (rec.actor, rec.result, rec.reason, rec.call_id, rec.campaign_id) == (
        "event:wrong_number",
        "revoked",
        "wrong_number",
        "call-wn",
        "c1",
    )
    assert (details["revoked"], details["scope"], details["reported_agent_id"]) == (3, "every_campaign", "a7")


async def test_cli_imports_names_rejects_and_shows(
    services: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await start(services, monkeypatch)
    f = tmp_path / "rnd.csv"
    f.write_text(RESULTS + "4155550206,2024-01-10,maybe,\n")
    code, out = await run_cli_flat(services, "dnc", "rnd", "import", str(f))
    assert code == 1, out  # a row was rejected
    assert "4 imported" in out and "1 rejected" in out and "row 6 answer: must be yes, no or no_data" in out
    code, out = await run_cli_flat(services, "dnc", "rnd", "show", "415-555-0201", "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert shown["number"] == "+14155550201"
    assert [(r["queried_date"], r["answer"], r["disconnect_date"]) for r in shown["results"]] == [
        ("2024-01-10", "RND_ANSWER_YES", "2024-06-01")
    ]
