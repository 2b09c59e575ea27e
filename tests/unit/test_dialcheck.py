"""The gate's local decision and the inputs it records (rules/dialcheck.py), and ``outdial why``'s reading of
them (cli/why.py): pure. The place of a call comes from rules/place.py's ``place_of`` as in the gate."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from outdial.cli.why import from_record, from_state, render, rule_of, verdict
from outdial.rules.dialcheck import LocalCheck, describe, evaluate
from outdial.rules.place import check_place_window, legal_cap, place_of
from outdial.rules.windows import WindowSpec

# Wednesday 2026-11-18 13:30 UTC: 08:30 in New York, 07:30 in Chicago; FL and federal law open at 08:00.
AT = datetime(2026, 11, 18, 13, 30, tzinfo=UTC)
ANY_HOURS = WindowSpec()  # the campaign's own window: 08:00-21:00 every day (the law narrows it)


def local_check(
    at: datetime,
    *,
    number: str = "",
    jurisdiction: str = "US",
    state: str = "",
    zones: Sequence[str] = (),
    spec: WindowSpec = ANY_HOURS,
    attempts: Sequence[datetime] = (),
    own_cap: int | None = None,
    last_abandoned_at: datetime | None = None,
    number_present: bool = True,
) -> LocalCheck:
    """``evaluate`` for a person with one number (its calls are the person's), placed like the gate does."""
    return evaluate(
        at,
        jurisdiction=jurisdiction,
        place=place_of(number, state=state or None, zones=zones),
        spec=spec,
        person=(number,) if number else (),
        person_attempts=attempts,
        number_attempts=attempts,
        own_cap=own_cap,
        last_abandoned_at=last_abandoned_at,
        number_present=number_present,
    )


def test_inputs_name_zones_local_times_hours_rules_and_counts() -> None:
    attempts = [AT - timedelta(hours=h) for h in (1, 5, 23.9, 24, 30)]  # 3 inside the rolling 24 h
    lc = local_check(
        AT,
        number="+13052340001",
        state="FL",
        zones=("America/New_York", "America/Chicago"),
        attempts=attempts,
        own_cap=5,
    )
    # Florida's cap counts per person (3); the campaign's 5 per number is not reached
    assert lc.blocked == ("window.outside_hours", "cap.person_24h")
    assert lc.person_cap == 3 and "3 calls in 24 h" in lc.detail and "cap 3 (FL)" in lc.detail
    w = lc.inputs["window"]
    assert [(z["zone"], z["local_time"], z["hours_in_force"]) for z in w["zones"]] == [
        ("America/Chicago", "2026-11-18T07:30:00-06:00", "08:00-20:00"),
        ("America/New_York", "2026-11-18T08:30:00-05:00", "08:00-20:00"),
    ]
    assert w["next_open"] == "2026-11-18T14:00:00+00:00"
    assert w["states"] == [{"state": "FL", "allowed": False, "reason": "outside_hours"}]
    assert lc.inputs["place"] == {
        "states": ["FL"],
        "address_state": "FL",
        "area_code_state": "FL",
        "zones": ["America/Chicago", "America/New_York"],
    }
    c = lc.inputs["cap"]
    assert (c["attempts_in_period"], c["law_max"], c["campaign_max"], c["max_calls"]) == (3, 3, 5, 3)
    assert (c["number_attempts_in_period"], c["person_numbers"], c["law_max_by_state"]) == (
        3,
        ["+13052340001"],
        {"FL": 3},
    )
    rules = {r["id"]: r for r in lc.inputs["rules"]}
    assert {"us.calling_window", "us-fl.calling_window", "us-fl.call_cap"} <= set(rules)
    assert set(rules["us-fl.call_cap"]) == {"id", "kind", "effective_from"}  # the version, not the row again
    full = describe(rules["us-fl.call_cap"])
    assert "501.059" in full["source"] and full["value"].startswith("at most 3 calls")
    gone = describe({"id": "us-fl.call_cap", "kind": "call_cap", "effective_from": "1999-01-01"})
    assert "not in the installed rules table" in gone["source"]
    assert "uk_abandon" not in lc.inputs
    # what the audit record keeps is canonical JSON of exactly these inputs
    assert json.loads(lc.inputs_json()) == json.loads(json.dumps(lc.inputs, default=str))


def test_an_allowed_call_keeps_its_inputs_too_and_uk_records_the_quiet_period() -> None:
    noon = AT + timedelta(hours=3)
    ok = local_check(
        noon,
        jurisdiction="US",
        state="NY",
        zones=("America/New_York",),
        spec=WindowSpec(),
        attempts=[],
        own_cap=None,
        last_abandoned_at=None,
    )
    assert ok.allowed and ok.inputs["window"]["allowed"] and ok.inputs["cap"]["max_calls"] is None
    uk = local_check(
        noon,
        jurisdiction="UK",
        state="",
        zones=("Europe/London",),
        spec=WindowSpec(),
        attempts=[],
        own_cap=None,
        last_abandoned_at=noon - timedelta(hours=10),
    )
    assert uk.blocked == ("cap.uk_abandon_72h",)
    assert uk.inputs["uk_abandon"]["quiet_hours"] == 72
    assert any(r["kind"] == "abandon_quiet" for r in uk.inputs["rules"])


def test_fails_closed_without_zone_or_number() -> None:
    lc = local_check(
        AT + timedelta(hours=3),
        jurisdiction="US",
        state="",
        zones=("Mars/Olympus",),
        spec=WindowSpec(),
        attempts=[],
        own_cap=None,
        last_abandoned_at=None,
        number_present=False,
    )
    assert lc.blocked == ("number.missing", "window.unknown_timezone")
    assert lc.inputs["window"]["zones"] == [{"zone": "Mars/Olympus", "known": False}]
    with pytest.raises(ValueError, match="aware"):
        local_check(
            datetime(2026, 1, 1),
            jurisdiction="US",
            state="",
            zones=(),
            spec=WindowSpec(),
            attempts=[],
            own_cap=None,
            last_abandoned_at=None,
        )


def test_why_reads_every_rule_from_a_record() -> None:
    lc = local_check(
        AT,
        jurisdiction="US",
        state="FL",
        zones=("America/Chicago",),
        spec=WindowSpec(),
        attempts=[],
        own_cap=None,
        last_abandoned_at=None,
    )
    details = {
        "inputs": {"lists": {"hits": ["national:US"]}, "dialer": lc.inputs},
        "rnd": {"outcome": "safe_harbor", "relied_on_consent_id": 7, "consents": [{"id": 7}]},
    }
    rec = {
        "seq": 12,
        "at": AT.isoformat(),
        "reason": "window.outside_hours",
        "details": json.dumps(details),
    }
    rules = from_record(rec)
    assert verdict(rules) == "BLOCKED"
    assert rules["window"]["allowed"] is False and rules["window"]["codes"] == ["window.outside_hours"]
    assert rules["lists"]["allowed"] and rules["consent"]["relied_on_consent_id"] == 7
    assert rules["rnd"]["outcome"] == "safe_harbor"
    assert rules["caps"]["attempts_in_period"] == 0 and rules["uk_72h"]["applies"] is False
    text = render(
        {
            "number": "+13122340001",
            "at": AT.isoformat(),
            "campaign_id": "c",
            "source": "x",
            "rules": rules,
            "verdict": "BLOCKED",
        }
    )
    assert "[window] BLOCKED (window.outside_hours)" in text
    assert "zone America/Chicago: local 2026-11-18T07:30:00-06:00 (wed), hours in force 08:00-20:00" in text
    assert "rule us.calling_window (from " in text and "relied on consent #7" in text


def test_why_on_a_record_older_than_the_inputs_says_what_it_cannot_tell() -> None:
    rec = {"seq": 3, "at": AT.isoformat(), "reason": "dnc.internal", "details": '{"jurisdiction":"US"}'}
    rules = from_record(rec)
    assert rules["lists"]["allowed"] is False and rules["lists"]["codes"] == ["dnc.internal"]
    assert rules["window"]["allowed"] is None and "predates" in rules["window"]["note"]
    assert verdict(rules) == "BLOCKED"
    rec2 = {"seq": 4, "at": AT.isoformat(), "reason": "", "details": "{}"}
    assert verdict(from_record(rec2)) == "UNKNOWN"


def test_why_from_the_state_at_a_time() -> None:
    lc = local_check(
        AT + timedelta(hours=3),
        jurisdiction="UK",
        state="",
        zones=("Europe/London",),
        spec=WindowSpec(),
        attempts=[],
        own_cap=None,
        last_abandoned_at=None,
    )
    rules = from_state(["rnd.reassigned", "dnc.national"], "explained", lc.inputs, lc.blocked, AT)
    assert rules["rnd"]["codes"] == ["rnd.reassigned"] and rules["consent"]["codes"] == ["dnc.national"]
    assert rules["uk_72h"]["allowed"] is None  # not knowable without the record
    assert verdict(rules) == "BLOCKED"


@pytest.mark.parametrize(
    ("code", "rule"),
    [
        ("window.public_holiday", "window"),
        ("cap.max_calls_24h", "caps"),
        ("cap.uk_abandon_72h", "uk_72h"),
        ("rnd.unchecked", "rnd"),
        ("wireless.no_consent", "consent"),
        ("dnc.national", "consent"),
        ("dnc.internal", "lists"),
        ("registry.stale", "lists"),
        ("campaign.not_active", "campaign"),
        ("caller_id.missing", "campaign"),
        ("window.invalid_config", "campaign"),
        ("consent.agentless", "consent"),
        ("line_type.unknown", "consent"),  # the line type decides which consent the call needs
    ],
)
def test_each_code_belongs_to_its_rule(code: str, rule: str) -> None:
    assert rule_of(code) == rule


def test_why_on_a_campaign_wide_block() -> None:
    from outdial.rules.dialcheck import campaign_blocked

    lc = campaign_blocked(
        AT, jurisdiction="US", code="campaign.not_active", detail="paused", campaign={"state": "paused"}
    )
    rec = {
        "seq": 9,
        "at": AT.isoformat(),
        "reason": "campaign.not_active",
        "details": json.dumps({"inputs": {"lists": {}, "dialer": lc.inputs}}),
    }
    rules = from_record(rec)
    assert rules["campaign"]["allowed"] is False and rules["campaign"]["facts"]["state"] == "paused"
    assert rules["window"]["allowed"] is None and rules["lists"]["allowed"] is True
    assert verdict(rules) == "BLOCKED"
    text = render(
        {"number": "+1", "at": "t", "campaign_id": "", "source": "s", "rules": rules, "verdict": "BLOCKED"}
    )
    assert "[campaign] BLOCKED (campaign.not_active)" in text and "state paused" in text


def test_the_stricter_state_and_the_person_decide_and_are_recorded_as_enforced() -> None:
    """A New York address with a Florida number: both states bind the call (rules/place.py), Florida's cap
    counts the calls to all the person's numbers, and the record holds exactly what decided."""
    noon = AT + timedelta(hours=3)  # 11:30 in New York
    place = place_of("+13052340001", state="NY", zones=("America/New_York",))
    person = ("+13052340001", "+12122340001", "+13122340001")
    # one call to each of the person's three numbers in the last 24 h, none to the dialled one twice
    calls = [noon - timedelta(hours=h) for h in (1, 2, 3)]
    lc = evaluate(
        noon,
        jurisdiction="US",
        place=place,
        spec=WindowSpec(),
        person=person,
        person_attempts=calls,
        number_attempts=calls[:1],
        own_cap=2,
        last_abandoned_at=None,
    )
    assert lc.blocked == ("cap.person_24h",)
    assert lc.person_cap == legal_cap(place, "US", noon.date()) == 3
    c = lc.inputs["cap"]
    assert c["person_numbers"] == sorted(person) and c["attempts_in_period"] == 3
    assert c["law_max_by_state"] == {"FL": 3, "NY": None} and c["number_attempts_in_period"] == 1
    assert lc.inputs["place"]["states"] == ["FL", "NY"]
    assert lc.inputs["place"]["address_state"] == "NY" and lc.inputs["place"]["area_code_state"] == "FL"
    rule_ids = {r["id"] for r in lc.inputs["rules"]}
    assert {"us-fl.call_cap", "us-fl.calling_window"} <= rule_ids
    # the recorded window decision is the one the feeder's shared function takes
    for at in (AT - timedelta(hours=1), AT, noon, AT + timedelta(hours=12)):
        shared = check_place_window(place, at, WindowSpec(), jurisdiction="US")
        lw = evaluate(
            at,
            jurisdiction="US",
            place=place,
            spec=WindowSpec(),
            person=person,
            person_attempts=[],
            number_attempts=[],
            own_cap=None,
            last_abandoned_at=None,
        )
        w = lw.inputs["window"]
        assert (w["allowed"], w["reason"]) == (shared.allowed, shared.reason)
        assert w["next_open"] == (shared.next_open.isoformat() if shared.next_open else None)
        assert [z["zone"] for z in w["zones"]] == list(place.zones)
    # two fewer calls: allowed, and the campaign's own cap per number counts this number only
    ok = evaluate(
        noon,
        jurisdiction="US",
        place=place,
        spec=WindowSpec(),
        person=person,
        person_attempts=calls[:2],
        number_attempts=calls[:2],
        own_cap=2,
        last_abandoned_at=None,
    )
    assert ok.blocked == ("cap.max_calls_24h",) and ok.inputs["cap"]["campaign_max"] == 2


def test_unavailable_facts_are_recorded_and_why_reads_them() -> None:
    from outdial.rules.dialcheck import facts_unavailable

    lc = facts_unavailable(AT, jurisdiction="us", detail="attempts: connection refused")
    assert lc.blocked == ("compliance.unavailable",) and lc.detail.startswith("attempts:")
    rec = {
        "seq": 5,
        "at": AT.isoformat(),
        "reason": "compliance.unavailable",
        "details": json.dumps({"inputs": {"lists": {}, "dialer": lc.inputs}}),
    }
    rules = from_record(rec)
    assert rules["caps"]["allowed"] is False and "connection refused" in rules["caps"]["note"]
    assert rules["lists"]["allowed"] is True and verdict(rules) == "BLOCKED"
