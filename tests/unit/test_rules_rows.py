"""One test per rules-table row: the row's own figures, set up as a call would meet them, and the code that
docs/compliance.md names as enforcing the row applying them (issue 13, point 8: "a table test per rules-table
row"). A row of a kind the code does not apply row by row is not parametrized here; docs/compliance.md then
names only its kind's test (``outdial.cli.rules.row_test``).

A row not in force on the day the process started is checked on its own first day through the functions that
take a day, and is checked not to be applied today by the module-level figures.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from outdial.cli.rules import row_test
from outdial.dnc import gate
from outdial.rules import caps, law, numbers, windows
from outdial.rules.table import MESSAGE_ELEMENTS, load_tables, rules_in_force

ROWS = [
    (t.jurisdiction, t.state, row)
    for (_, t) in load_tables().files.values()
    for row in t.rules
    if row_test(row, t.state) is not None
]
SELLER, NUMBER = "Acme Solar LLC", "+12125550199"
_JURISDICTION_ZONE = {"US": "America/Chicago", "CA": "America/Toronto", "UK": "Europe/London"}


def _day(row: Any) -> date:
    """The day to check the row on: the day the process started when the row is in force then, else its first."""
    return law.LOADED_ON if row.in_force(law.LOADED_ON) else row.effective_from


def _zone(j: str, state: str) -> str:
    return numbers._state_zones(state)[0] if state else _JURISDICTION_ZONE[j]


def _calling_window(j: str, state: str, row: Any) -> None:
    zone = ZoneInfo(_zone(j, state))
    wide = windows.WindowSpec(start=time(0), end=time(23, 59))
    hol = set(windows._public_holidays(j, state or None, _day(row).year)) | set(
        windows._public_holidays(j, state or None, _day(row).year + 1)
    )
    for weekday, hours in row.by_weekday().items():
        d = _day(row) + timedelta(days=(weekday - _day(row).isoweekday()) % 7)
        while d in hol:
            d += timedelta(days=7)
        assert row.in_force(d), f"{row.id}: pick a day in force"
        if hours is None:
            noon = datetime.combine(d, time(12), tzinfo=zone)
            assert not windows.check_window(noon, (zone.key,), wide, jurisdiction=j, state=state).allowed
            continue
        before = datetime.combine(d, hours[0], tzinfo=zone) - timedelta(minutes=1)
        decision = windows.check_window(before, (zone.key,), wide, jurisdiction=j, state=state)
        assert not decision.allowed, f"{row.id}: a call at {before} is let through"
        if hours[1] != time.max:
            end = datetime.combine(d, hours[1], tzinfo=zone)
            assert not windows.check_window(end, (zone.key,), wide, jurisdiction=j, state=state).allowed


def _holiday_ban(j: str, state: str, row: Any) -> None:
    assert windows.legal_window(j, state, windows.WindowSpec(), _day(row)).skip_public_holidays


def _call_cap(j: str, state: str, row: Any) -> None:
    cap = caps.default_max_calls_24h(j, state, _day(row))
    assert cap is not None and cap <= row.max_calls
    now = datetime(2026, 6, 1, 15, tzinfo=UTC)
    earlier = [now - timedelta(minutes=10 * (i + 1)) for i in range(row.max_calls)]
    assert not caps.check_attempts(earlier, now, cap).allowed
    assert caps.check_attempts(earlier[: cap - 1], now, cap).allowed or cap == 0


def _abandonment(j: str, state: str, row: Any) -> None:
    assert not state, "only a jurisdiction's abandonment row is applied"
    if row.in_force(law.LOADED_ON):
        policy = law.abandon_policy(j)
        assert policy.cap <= row.cap and policy.window_s == row.window_days * 86_400
        assert policy.source == row.source and policy.verified is not row.uncertain
    else:
        assert law.abandon_policy(j).source != row.source or law.abandon_policy(j).cap != row.cap


def _connect_limit(j: str, state: str, row: Any) -> None:
    assert law.CONNECT_LIMIT_S <= row.seconds
    # The dialer stops seeking an agent in time for the message to start within the limit.
    assert law.OFFER_DEADLINE_S < row.seconds


def _min_ring(j: str, state: str, row: Any) -> None:
    assert law.ring_time(0) >= row.seconds
    assert law.ring_time(row.seconds - 1) >= row.seconds


def _abandon_quiet(j: str, state: str, row: Any) -> None:
    assert j == "UK"
    t = datetime(2026, 6, 1, 12, tzinfo=UTC)
    quiet = timedelta(hours=row.hours)
    assert not caps.check_uk_abandon_rule(t, t + quiet - timedelta(seconds=1)).allowed
    assert caps.check_uk_abandon_rule(t, t + quiet).allowed


def _registry_freshness(j: str, state: str, row: Any) -> None:
    at = datetime.combine(_day(row), time(12), tzinfo=UTC)
    if row.list_kind == "wireless":
        # The wireless list tells a landline only while it is no older than the row allows.
        rules = rules_in_force(j, state, at)
        assert gate.max_age_days(rules, "wireless") == row.max_age_days

        def line(age: timedelta) -> str | None:
            li = gate.ListInfo(f"wireless:{j}", "wireless", jurisdiction=j, registry_date=at - age)
            return gate.line_type([li], [], j, at, gate.max_age_days(rules, "wireless")).line

        assert line(timedelta(days=row.max_age_days)) == "landline"
        assert line(timedelta(days=row.max_age_days, hours=1)) is None
        return
    assert law.registry_max_age_days(j, at) == row.max_age_days

    def reason(age: timedelta, setting: int | None = None) -> gate.Reason | None:
        li = gate.ListInfo(f"national:{j}", "national", jurisdiction=j, registry_date=at - age)
        return gate.registry_reason([li], j, at, require=True, max_age_days=setting)

    assert reason(timedelta(days=row.max_age_days)) is None
    stale = reason(timedelta(days=row.max_age_days, hours=1))
    assert stale is not None and stale.code == "registry.stale"
    # A setting tightens the law's figure and never loosens it.
    assert reason(timedelta(days=row.max_age_days, hours=1), row.max_age_days + 30) is not None
    assert reason(timedelta(days=2), 1) is not None


def _message_content(j: str, state: str, row: Any) -> None:
    assert law.message_row(j, row.message, _day(row)) == row
    spoken = " ".join(NUMBER.lstrip("+"))
    if row.message == "abandoned":
        text = law.abandon_message(SELLER, NUMBER, jurisdiction=j, at=_day(row)).text
    elif row.message == "prerecorded":
        text = law.agentless_message("Your order is ready.", SELLER, NUMBER, jurisdiction=j)
        assert "Your order is ready." in text
    else:
        text = law.opt_out_confirmation(j)
    filled = {"{seller}": SELLER, "{callback_number}": spoken, "{opt_out_key}": f"press {law.OPT_OUT_KEY}"}
    for element in row.elements:
        for needed in MESSAGE_ELEMENTS[element]:
            assert filled.get(needed, needed).casefold() in text.casefold(), f"{row.id}: {element} missing"
    assert "{" not in text and "sorry" not in text.lower()


def _consent(j: str, state: str, row: Any) -> None:
    refusal = law.agentless_refusal(j, informational=False)
    assert refusal and row.source in refusal
    for kind in row.requires_any:
        assert kind.replace("_", " ") in refusal


def _recording_consent(j: str, state: str, row: Any) -> None:
    if row.parties == "all":
        assert not law.may_record(state, "")
        assert law.may_record(state, "This call is recorded.")
    else:
        assert not state or state not in law.ALL_PARTY_CONSENT_STATES
        assert law.may_record(state, "")


def _amd_false_positives(j: str, state: str, row: Any) -> None:
    assert not state, "only a jurisdiction's AMD row is applied"
    refusal = law.amd_estimate_refusal(j, amd=True, false_positive_rate=None, basis="", at=_day(row))
    assert bool(refusal) is row.estimate_required
    if row.estimate_required:
        assert refusal.startswith("amd_false_positive_rate:") and row.source in refusal
        assert law.amd_estimate_refusal(j, amd=False, false_positive_rate=None, basis="", at=_day(row)) == ""
    counted = law.with_amd_false_positives(j, 100, 1, 20, 0.1, at=_day(row))
    assert counted == ((102, 3, 2) if row.counted_as_abandoned else (100, 1, 0))


CHECKS: dict[str, Callable[[str, str, Any], None]] = {
    "calling_window": _calling_window,
    "holiday_ban": _holiday_ban,
    "call_cap": _call_cap,
    "abandonment": _abandonment,
    "connect_limit": _connect_limit,
    "min_ring": _min_ring,
    "abandon_quiet": _abandon_quiet,
    "registry_freshness": _registry_freshness,
    "message_content": _message_content,
    "consent": _consent,
    "recording_consent": _recording_consent,
    "amd_false_positives": _amd_false_positives,
}


@pytest.mark.parametrize(("jurisdiction", "state", "row"), ROWS, ids=[r.id for _, _, r in ROWS])
def test_the_row_is_enforced(jurisdiction: str, state: str, row: Any) -> None:
    assert row.kind in CHECKS, (
        f"{row.id}: docs/compliance.md names a row test, but there is no check for {row.kind}"
    )
    CHECKS[row.kind](jurisdiction, state, row)
    if not row.in_force(law.LOADED_ON):
        assert row not in rules_in_force(jurisdiction, state, law.LOADED_ON).rows


def test_most_rows_have_their_own_test() -> None:
    total = sum(len(t.rules) for _, t in load_tables().files.values())
    assert len(ROWS) >= 0.8 * total, f"only {len(ROWS)} of {total} rows have a row test"


def test_the_registry_age_is_the_tables_and_a_setting_only_tightens_it() -> None:
    at = datetime(2026, 6, 1, 12, tzinfo=UTC)
    for j in law.JURISDICTIONS:
        days = law.registry_max_age_days(j, at)
        assert days is not None, f"{j} has no registry_freshness row"
        li = gate.ListInfo(
            f"national:{j}", "national", jurisdiction=j, registry_date=at - timedelta(days=days + 1)
        )
        for setting in (None, days + 100):
            stale = gate.registry_reason([li], j, at, require=True, max_age_days=setting)
            assert stale is not None and f"at most {days} days old" in stale.detail
    assert law.registry_max_age_days("UK", at) != law.registry_max_age_days("US", at)
