"""The consent each call type needs (rules/consent.py over the rules table's ``consent`` rows), the line type
the wireless list tells (dnc/gate.py), the registries' freshness from the rules table, and the revocation
words of an SMS or email reply."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from outdial.dnc import gate
from outdial.rules.consent import (
    AUTODIALLED,
    MANUAL,
    PRERECORDED,
    Call,
    add_months,
    call_type_of,
    evaluate,
    revocation_match,
)
from outdial.rules.table import (
    ConsentRow,
    RevocationWordsRow,
    RulesDataError,
    call_type_tokens,
    parse_tables,
    rules_in_force,
)

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
US = rules_in_force("US", None, NOW)
ROWS = US.of(ConsentRow)


@dataclass(frozen=True)
class C:
    id: int
    kind: str
    campaign_id: str = ""
    obtained_at: datetime = NOW - timedelta(days=30)
    ebr_basis: str = ""


#: One consent of each kind (and the EBR and opt-in variants that must not count), by name.
CONSENTS: dict[str, C | None] = {
    "none": None,
    "pewc": C(1, "prior_express_written_consent"),
    "pec": C(2, "prior_express_consent"),
    "ebr_purchase": C(
        3, "established_business_relationship", obtained_at=NOW - timedelta(days=400), ebr_basis="purchase"
    ),
    "ebr_purchase_lapsed": C(
        4, "established_business_relationship", obtained_at=NOW - timedelta(days=560), ebr_basis="purchase"
    ),
    "ebr_inquiry": C(
        5, "established_business_relationship", obtained_at=NOW - timedelta(days=80), ebr_basis="inquiry"
    ),
    "ebr_inquiry_lapsed": C(
        6, "established_business_relationship", obtained_at=NOW - timedelta(days=95), ebr_basis="inquiry"
    ),
    "opt_in": C(7, "campaign_opt_in", campaign_id="c1"),
    "opt_in_other_campaign": C(8, "campaign_opt_in", campaign_id="c2"),
}
METHODS = {"autodialled": AUTODIALLED, "prerecorded": PRERECORDED, "manual": MANUAL}


def expected(method: str, purpose: str, line: str | None, registered: bool, consent: str) -> bool:
    """The law, written out independently of the rows: 47 U.S.C. 227(b)(1)(A)(iii) and 47 CFR 64.1200(a)(1)-(3)
    for autodialled and prerecorded calls, (c)(2) and (f)(5) for the registry (EBR 18 months after a purchase,
    3 after an inquiry). A line type that is not known counts as wireless."""
    machine = method in ("autodialled", "prerecorded")
    wireless = line in ("wireless", None)
    pewc = consent == "pewc"
    pec_like = consent in ("pewc", "pec", "opt_in")
    ebr = consent in ("ebr_purchase", "ebr_inquiry")
    ok = True
    if machine and wireless and purpose == "telemarketing":
        ok &= pewc
    if method == "prerecorded" and purpose == "telemarketing":
        ok &= pewc
    if machine and wireless and purpose == "informational":
        ok &= pec_like
    if registered and purpose == "telemarketing":
        ok &= pewc or ebr
    return ok


CASES = list(
    itertools.product(
        METHODS, ("telemarketing", "informational"), ("wireless", "landline", None), (False, True), CONSENTS
    )
)


@pytest.mark.parametrize(("method", "purpose", "line", "registered", "consent"), CASES)
def test_the_decision_table(
    method: str, purpose: str, line: str | None, registered: bool, consent: str
) -> None:
    """Every call type x line type x registry x consent kind: the call goes ahead exactly when the law says."""
    c = CONSENTS[consent]
    call = Call(METHODS[method], purpose, line, registered, "c1")
    reqs = evaluate(ROWS, call, [c] if c is not None else [], NOW)
    assert all(q.met_by is not None for q in reqs) is expected(method, purpose, line, registered, consent)


def test_an_ebr_never_opens_an_autodialled_wireless_call_and_lapses_after_its_months() -> None:
    ebr = CONSENTS["ebr_purchase"]
    assert ebr is not None
    reqs = evaluate(ROWS, Call(AUTODIALLED, "telemarketing", "wireless", True, "c1"), [ebr], NOW)
    met = {q.row.id: q.met_by is not None for q in reqs}
    assert met == {
        "us.consent.autodialled_telemarketing_wireless": False,
        "us.consent.telemarketing_registered_number": True,
    }
    # The months are the row's: 18 after a purchase, 3 after an inquiry (counted from obtained_at).
    row = next(r for r in ROWS if r.id == "us.consent.telemarketing_registered_number")
    assert row.ebr_months == {"purchase": 18, "inquiry": 3}
    bought = datetime(2025, 1, 31, 10, 0, tzinfo=UTC)
    assert add_months(bought, 18) == datetime(2026, 7, 31, 10, 0, tzinfo=UTC)
    assert add_months(datetime(2026, 11, 30, tzinfo=UTC), 3) == datetime(2027, 2, 28, tzinfo=UTC)
    landline = Call(AUTODIALLED, "telemarketing", "landline", True, "c1")
    for at, ok in (
        (datetime(2026, 7, 31, 9, 59, tzinfo=UTC), True),
        (datetime(2026, 7, 31, 10, 0, tzinfo=UTC), False),
    ):
        (q,) = evaluate(
            ROWS, landline, [C(9, "established_business_relationship", "", bought, "purchase")], at
        )
        assert (q.met_by is not None) is ok
        if not ok:
            assert "lapsed on 2026-07-31 (18 months)" in q.lapsed[0]
    # An EBR recorded without its basis is never relied on.
    (q,) = evaluate(ROWS, landline, [C(10, "established_business_relationship", "", NOW, "")], NOW)
    assert q.met_by is None and "without its basis" in q.lapsed[0]


def test_a_preview_call_needs_no_autodialler_consent_but_the_registry_still_binds_it() -> None:
    assert evaluate(ROWS, Call(MANUAL, "telemarketing", "wireless", False, "c1"), [], NOW) == []
    assert evaluate(ROWS, Call(MANUAL, "telemarketing", None, False, "c1"), [], NOW) == []
    (q,) = evaluate(ROWS, Call(MANUAL, "telemarketing", "wireless", True, "c1"), [], NOW)
    assert q.row.id == "us.consent.telemarketing_registered_number" and q.met_by is None


def test_unknown_line_type_binds_by_the_wireless_rows_and_says_so() -> None:
    reqs = evaluate(ROWS, Call(AUTODIALLED, "telemarketing", None, False, "c1"), [], NOW)
    assert [(q.row.id, q.by_unknown_line) for q in reqs] == [
        ("us.consent.autodialled_telemarketing_wireless", True)
    ]


def test_the_campaign_type_of_each_dial_mode() -> None:
    assert call_type_of({"dial_mode": "predictive"}) == ("autodialled", "telemarketing")
    assert call_type_of({"dial_mode": "power", "call_purpose": "informational"}) == (
        "autodialled",
        "informational",
    )
    assert call_type_of({"dial_mode": "preview"}) == ("manual", "telemarketing")
    assert call_type_of({"dial_mode": "agentless", "message_informational": True}) == (
        "prerecorded",
        "informational",
    )
    # an unknown mode is the strictest: autodialled and prerecorded
    assert call_type_of({"dial_mode": "warp"}) == ("prerecorded", "telemarketing")


LISTS = [
    gate.ListInfo("national:US", "national", jurisdiction="US", registry_date=NOW - timedelta(days=3)),
    gate.ListInfo("wireless:US", "wireless", jurisdiction="US", registry_date=NOW - timedelta(days=10)),
]


def test_the_line_type_comes_from_a_current_wireless_list() -> None:
    assert gate.line_type(LISTS, ["wireless:US"], "US", NOW, 15).line == "wireless"
    assert gate.line_type(LISTS, [], "US", NOW, 15).line == "landline"
    stale = gate.line_type(LISTS, [], "US", NOW + timedelta(days=6), 15)
    assert stale.line is None and "16 days ago" in stale.detail and "at most 15 days" in stale.detail
    # on a stale list a listed number is still wireless (the stricter)
    assert gate.line_type(LISTS, ["wireless:US"], "US", NOW + timedelta(days=60), 15).line == "wireless"
    undated = [LISTS[0], gate.ListInfo("wireless:US", "wireless", jurisdiction="US")]
    missing = gate.line_type(undated, [], "US", NOW, 15)
    assert missing.line is None and "has been imported" in missing.detail
    assert gate.line_type(LISTS[:1], [], "US", NOW, 15).line is None


def test_registry_freshness_comes_from_the_rules_table() -> None:
    assert gate.max_age_days(US, "national") == 31
    assert gate.max_age_days(US, "wireless") == 15
    # the operator's own limit may only be stricter
    assert gate.max_age_days(US, "national", 20) == 20
    assert gate.max_age_days(US, "national", 90) == 31
    assert gate.max_age_days(rules_in_force("UK", None, NOW), "national") == 28
    assert gate.max_age_days(rules_in_force("UK", None, NOW), "wireless") is None
    stale = gate.registry_reason(LISTS, "US", NOW + timedelta(days=29), require=True, max_age_days=31)
    assert stale is not None and stale.code == "registry.stale"


def test_unmet_requirements_become_reasons_naming_the_rule_and_the_fix() -> None:
    lt = gate.line_type(LISTS, [], "US", NOW + timedelta(days=20), 15)
    call = Call(AUTODIALLED, "telemarketing", lt.line, True, "c1")
    reasons, details = gate.consent_reasons(ROWS, call, [], NOW, lt, LISTS[0])
    assert [r.code for r in reasons] == ["dnc.national", "line_type.unknown"]
    unknown = reasons[1]
    assert "prior_express_written_consent" in unknown.detail and "preview mode" in unknown.detail
    assert details["call"] == {
        "methods": ["autodialled"],
        "purpose": "telemarketing",
        "line": "unknown",
        "registered": True,
    }
    pewc = CONSENTS["pewc"]
    assert pewc is not None
    reasons, details = gate.consent_reasons(ROWS, call, [pewc], NOW, lt, LISTS[0])
    assert reasons == [] and {q["met_by_consent_id"] for q in details["requirements"]} == {1}
    prerec = Call(PRERECORDED, "telemarketing", "landline", False, "c1")
    reasons, _ = gate.consent_reasons(ROWS, prerec, [CONSENTS["pec"]], NOW, lt, LISTS[0])  # type: ignore[list-item]
    assert [r.code for r in reasons] == ["consent.required"]


@pytest.mark.parametrize(
    ("body", "matched"),
    [
        ("STOP", "stop"),
        ("Stop!", "stop"),
        ("please stop calling me", "stop"),
        ("UNSUBSCRIBE", "unsubscribe"),
        ("Opt-out", "opt out"),
        ("revoke", "revoke"),
        ("Do not call this number again.", "do not call"),
        ("Don\u2019t call me", "don't call"),
        ("remove me from your list", "remove me"),
        ("Yes, see you Tuesday", ""),
        ("stopper", ""),
        ("Thanks!", ""),
    ],
)
def test_revocation_words(body: str, matched: str) -> None:
    rows = US.of(RevocationWordsRow)
    assert rows and rows[0].source.startswith("47 CFR 64.1200(a)(10)")
    assert revocation_match(rows, body) == matched


def test_the_schema_refuses_a_consent_row_it_cannot_enforce() -> None:
    assert call_type_tokens("telemarketing_registered_number") == {"telemarketing", "registered_number"}
    base = "jurisdiction: US\ntitle: t\nregion: US\nwire_value: 1\nrules:\n"
    row = "  - id: us.c\n    kind: consent\n    source: s\n    effective_from: 2020-01-01\n"
    bad = {
        "call_type: autodialled_cellphone\n    requires_any: [prior_express_consent]\n": "unknown word 'cellphone'",
        "call_type: autodialled_manual\n    requires_any: [prior_express_consent]\n": "both a call's method",
        "call_type: telemarketing_registered_number\n    requires_any: [established_business_relationship]\n": (
            "needs ebr_months"
        ),
        "call_type: telemarketing\n    requires_any: [prior_express_consent]\n    ebr_months: {purchase: 18, "
        "inquiry: 3}\n": "ebr_months belongs",
    }
    for text, problem in bad.items():
        with pytest.raises(RulesDataError) as err:
            parse_tables({"rules/data/us.yaml": base + row + "    " + text})
        assert problem in str(err.value) and "row 1 (us.c)" in str(err.value)
