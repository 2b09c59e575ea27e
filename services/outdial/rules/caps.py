"""Attempt caps. Pure; no I/O.

The figures are rows of the rules table (``rules/data/*.yaml``, each with its source and effective dates):
- US state mini-TCPA laws (rows ``us-<state>.call_cap``): at most 3 telephonic sales calls on the same
  subject to a person per rolling 24 hours: Florida (Fla. Stat. 501.059(8)(a)), Oklahoma (Okla. Stat.
  tit. 15 s.775C.4), Maryland (Md. Code Com. Law s.14-4503). The 24 hours roll: they never reset at midnight.
- UK (row ``uk.abandon_quiet``): Ofcom's persistent-misuse policy (statement of 2016, s.A1.58): a number
  whose call was abandoned must not be called again within 72 hours unless a live agent is guaranteed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from outdial.rules.law import LOADED_ON, UK_ABANDON_QUIET
from outdial.rules.table import load_tables, rules_in_force

__all__ = [
    "DAY",
    "STATE_MAX_CALLS_24H",
    "UK_ABANDON_QUIET",
    "CapDecision",
    "check_attempts",
    "check_uk_abandon_rule",
    "default_max_calls_24h",
    "next_attempt_allowed_at",
    "person_attempt_times",
]

DAY = timedelta(hours=24)

#: US states whose law caps calls to one person per rolling 24 hours, as in force the day the process
#: started (:func:`default_max_calls_24h` asks the table for the day it is given).
STATE_MAX_CALLS_24H: dict[str, int] = {
    st: cap
    for st in load_tables().states("US")
    if (cap := rules_in_force("US", st, LOADED_ON).max_calls_24h()) is not None
}


@dataclass(frozen=True)
class CapDecision:
    allowed: bool
    reason: str


def default_max_calls_24h(jurisdiction: str, state: str | None, at: date | None = None) -> int | None:
    """The legal cap of calls to one person per rolling 24 h on day ``at`` (default: the day the process
    started), or None when the law sets none. An unknown jurisdiction sets none here (the campaign's
    jurisdiction is validated where it is set)."""
    try:
        rules = rules_in_force(jurisdiction, state, at or LOADED_ON)
    except ValueError:
        return None
    return rules.max_calls_24h()


def check_attempts(attempt_times: Sequence[datetime], now: datetime, max_per_24h: int | None) -> CapDecision:
    """May one more call go out at ``now``, given the earlier attempts' times? Counts the attempts in the
    rolling 24 h before ``now`` (``now - 24h < t <= now``)."""
    if max_per_24h is None:
        return CapDecision(True, "ok")
    if max_per_24h <= 0:
        return CapDecision(False, "max_calls_24h")
    since = now - DAY
    recent = sum(1 for t in attempt_times if since < t <= now)
    if recent >= max_per_24h:
        return CapDecision(False, "max_calls_24h")
    return CapDecision(True, "ok")


def person_attempt_times(
    by_number: Mapping[str, Mapping[str, datetime]], person: Iterable[str]
) -> list[datetime]:
    """The times of the calls to a person: every call to any of the person's numbers (``person``; see
    :mod:`outdial.core.persons` for who is one person), each call once (``by_number`` maps number -> call id ->
    dial time, from every source the caller has; a call id seen under two numbers or two sources counts once).
    The state caps count calls to the person, not per number: a lead with three numbers gets 3 calls in 24 h,
    not 9."""
    seen: dict[str, datetime] = {}
    for n in sorted(set(person)):
        for call_id, at in by_number.get(n, {}).items():
            seen.setdefault(call_id, at)
    return list(seen.values())


def next_attempt_allowed_at(
    attempt_times: Sequence[datetime], now: datetime, max_per_24h: int | None
) -> datetime | None:
    """When the rolling cap next lets a call out (``now`` if it already does; None = no cap)."""
    if max_per_24h is None or check_attempts(attempt_times, now, max_per_24h).allowed:
        return None if max_per_24h is None else now
    if max_per_24h <= 0:
        return None
    recent = sorted(t for t in attempt_times if now - DAY < t <= now)
    # After the oldest attempts beyond the allowance age out, one slot frees.
    return recent[len(recent) - max_per_24h] + DAY


def check_uk_abandon_rule(last_abandoned_at: datetime | None, now: datetime) -> CapDecision:
    """Ofcom: no call within 72 h of an abandoned call to that number."""
    if last_abandoned_at is not None and now - last_abandoned_at < UK_ABANDON_QUIET:
        return CapDecision(False, "uk_abandon_72h")
    return CapDecision(True, "ok")
