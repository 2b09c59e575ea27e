"""Retry schedule per outcome and what a disposition does to a lead. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class LeadUpdate:
    status: str  # new | retry | callback | final
    final_reason: str
    next_attempt_at: datetime | None


#: The outcome of a call the network refused because the number does not exist: the number is closed.
INVALID_NUMBER = "invalid_number"

FINAL_DISPOSITIONS = {"do_not_call": "dnc", "dnc": "dnc", "wrong_number": "wrong_number"}

#: The only closed lead a callback (ScheduleCallback, or an agent's "callback" disposition) may reopen: a
#: call that connected, whose disposition decides what follows. Any other final lead (DNC, wrong number,
#: invalid, exhausted, a final disposition) stays closed.
CALLBACK_REOPENS = frozenset({"connected"})


def after_outcome(
    outcome: str,
    *,
    outcome_count: int,
    attempts_total: int,
    rules: Sequence[Mapping[str, Any]],
    max_attempts_per_lead: int,
    now: datetime,
) -> LeadUpdate:
    """The lead's next state once a call to it ended with ``outcome`` (``outcome_count`` attempts with this
    outcome so far, this one included; ``attempts_total`` attempts of any outcome)."""
    if outcome == "connected":
        return LeadUpdate("final", "connected", None)
    if outcome == INVALID_NUMBER:
        return LeadUpdate("final", INVALID_NUMBER, None)
    rule = next((r for r in rules if r.get("outcome") == outcome), None)
    if rule is None:
        return LeadUpdate("final", outcome or "unknown", None)
    if int(rule["max_attempts"]) <= 0:
        return LeadUpdate("final", outcome, None)
    if outcome_count >= int(rule["max_attempts"]):
        return LeadUpdate("final", "exhausted", None)
    if max_attempts_per_lead > 0 and attempts_total >= max_attempts_per_lead:
        return LeadUpdate("final", "exhausted", None)
    return LeadUpdate("retry", "", now + timedelta(seconds=int(rule["delay_s"])))


def after_disposition(disposition: str, callback_at: datetime | None, now: datetime) -> LeadUpdate:
    d = disposition.strip().lower()
    if d == "callback" or callback_at is not None:
        return LeadUpdate("callback", "", callback_at or now + timedelta(hours=1))
    if d in FINAL_DISPOSITIONS:
        return LeadUpdate("final", FINAL_DISPOSITIONS[d], None)
    return LeadUpdate("final", d or "completed", None)
