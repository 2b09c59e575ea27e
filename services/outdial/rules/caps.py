"""Attempt caps. Pure; no I/O.

Sources:
- US state mini-TCPA laws: at most 3 telephonic sales calls on the same subject to a person per rolling
  24 hours: Florida (Fla. Stat. 501.059(8)(a)), Oklahoma (Okla. Stat. tit. 15 s.775C.4), Maryland
  (Md. Code Com. Law s.14-4503). The 24 hours roll: they never reset at midnight.
- UK: Ofcom's persistent-misuse policy (statement of 2016, s.A1.47 ff.): a number whose call was abandoned
  must not be called again within 72 hours unless a live agent is guaranteed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from outdial.rules.law import UK_ABANDON_QUIET

__all__ = [
    "DAY",
    "STATE_MAX_CALLS_24H",
    "UK_ABANDON_QUIET",
    "CapDecision",
    "check_attempts",
    "check_uk_abandon_rule",
    "default_max_calls_24h",
    "next_attempt_allowed_at",
]

DAY = timedelta(hours=24)

#: States whose law caps calls to one number per rolling 24 hours.
STATE_MAX_CALLS_24H: dict[str, int] = {"FL": 3, "OK": 3, "MD": 3}


@dataclass(frozen=True)
class CapDecision:
    allowed: bool
    reason: str


def default_max_calls_24h(jurisdiction: str, state: str | None) -> int | None:
    """The legal cap of calls to one number per rolling 24 h, or None when the law sets none."""
    if jurisdiction.upper() != "US" or not state:
        return None
    return STATE_MAX_CALLS_24H.get(state.strip().upper())


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
