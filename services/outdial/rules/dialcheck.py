"""The dial-time gate's local rules for one number, decided together with the inputs they used. Pure; no I/O.

The pacing gate (``pacing/gate.py``) runs :func:`evaluate` right before every dial and sends the result to the
DNC service, which keeps it in the hash-chained audit record of that dial (one record with the lists, consent
and RND decision beside it). ``outdial why`` runs the same function to answer for a time with no recorded
decision. The inputs are what a reviewer needs to re-derive the answer:

- where the person may be and which states' laws bind the call, as :func:`outdial.rules.place.place_of`
  (the function the campaign feeder uses too) found them: every applicable state (address, ZIP, area code)
  and every candidate zone;
- the calling window: each candidate zone with its local time and weekday at the instant, the hours in
  force that day there (the campaign's window narrowed by every applicable state's law: their
  intersection), each state's own answer, the campaign's own window;
- the caps per rolling 24 h: the person's numbers (every lead linked by shared numbers) and the calls to
  them in the period (counted from PostgreSQL by the gate), the law's cap (the smallest of the states',
  :func:`outdial.rules.place.legal_cap`, and each state's); the campaign's own cap and the calls to this
  number;
- UK: the last abandoned call and the quiet period (Ofcom's 72 h);
- the rule rows in force that decided them (id, kind, effective_from/until) from ``rules/data/*.yaml``: the
  rule versions (the rows themselves, with their sources, are in the table and in an evidence pack).

The figures themselves come from the rules table (``windows.py``, ``caps.py``, ``law.py``); nothing here
holds a legal figure.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from outdial.rules.caps import DAY, check_attempts, check_uk_abandon_rule
from outdial.rules.law import UK_ABANDON_QUIET
from outdial.rules.place import Place, combine_windows, legal_cap, state_caps, state_windows
from outdial.rules.table import (
    AbandonQuietRow,
    CallCapRow,
    CallingWindowRow,
    HolidayBanRow,
    load_tables,
    rules_in_force,
)
from outdial.rules.windows import WindowSpec, hours_on, legal_window, window_to_json

__all__ = [
    "INPUTS_VERSION",
    "LocalCheck",
    "campaign_blocked",
    "campaign_cap",
    "describe",
    "evaluate",
    "facts_unavailable",
    "rule_refs",
]

#: The shape of :attr:`LocalCheck.inputs` (``v`` in the JSON): bump when a key changes meaning.
INPUTS_VERSION = 2
#: The rule kinds the local checks apply (their rows are the rule versions recorded).
_LOCAL_KINDS = (CallingWindowRow, HolidayBanRow, CallCapRow, AbandonQuietRow)


@dataclass(frozen=True)
class LocalCheck:
    """The local rules' answer for one number: the codes that block it (empty: allowed) and the inputs."""

    blocked: tuple[str, ...]
    inputs: dict[str, Any]
    #: Why, in words, when a cap blocked it (counts and cap).
    detail: str = ""
    #: The law's cap of calls to the person per rolling 24 h that was applied (None: no state caps them).
    person_cap: int | None = None

    @property
    def allowed(self) -> bool:
        return not self.blocked

    def inputs_json(self) -> str:
        """Canonical JSON of the inputs (sorted keys, no spaces): what the audit record keeps."""
        return json.dumps(self.inputs, sort_keys=True, separators=(",", ":"), default=str)


def rule_refs(rows: Iterable[Any], *, full: bool = False) -> list[dict[str, Any]]:
    """The version of each rule row: its id, kind and effective dates (what a decision record keeps: the
    row itself is in ``rules/data/*.yaml`` and in an evidence pack's ``rules.json``); ``full`` adds its
    source, whether it is uncertain and its value in words."""
    out: list[dict[str, Any]] = []
    for r in rows:
        ref: dict[str, Any] = {"id": r.id, "kind": r.kind, "effective_from": r.effective_from.isoformat()}
        if r.effective_until is not None:
            ref["effective_until"] = r.effective_until.isoformat()
        if full:
            ref.update(
                effective_until=r.effective_until.isoformat() if r.effective_until else None,
                source=r.source,
                uncertain=r.uncertain,
                value=r.value(),
            )
        out.append(ref)
    return out


def describe(ref: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded rule version with its source and value from the rules table, when the table still holds
    that version (same id and effective_from); otherwise said so."""
    for _, (_, t) in load_tables().files.items():
        for r in t.rules:
            if r.id == ref.get("id") and r.effective_from.isoformat() == ref.get("effective_from"):
                return rule_refs([r], full=True)[0]
    return {**ref, "source": "(this version is not in the installed rules table)", "value": ""}


def campaign_cap(config: Mapping[str, Any]) -> int | None:
    """The campaign's own cap per number per 24 h (``max_calls_per_number_24h``), or None."""
    own = config.get("max_calls_per_number_24h")
    return int(own) if isinstance(own, int | float) and not isinstance(own, bool) and own > 0 else None


def _hhmm(h: tuple[Any, Any] | None) -> str:
    if h is None:
        return "closed"
    end = "24:00" if h[1].hour == 23 and h[1].minute == 59 and h[1].second == 59 else h[1].strftime("%H:%M")
    return f"{h[0].strftime('%H:%M')}-{end}"


def _hours_all(effs: Sequence[WindowSpec], isoweekday: int) -> tuple[Any, Any] | None:
    """The hours every one of ``effs`` allows on that weekday (their intersection), or None."""
    h: tuple[Any, Any] | None = None
    for i, eff in enumerate(effs):
        e = hours_on(eff, isoweekday)
        if e is None:
            return None
        h = e if i == 0 or h is None else (max(h[0], e[0]), min(h[1], e[1]))
        if h[0] >= h[1]:
            return None
    return h


def evaluate(
    at: datetime,
    *,
    jurisdiction: str,
    place: Place,
    spec: WindowSpec,
    person: Collection[str],
    person_attempts: Sequence[datetime],
    number_attempts: Sequence[datetime],
    own_cap: int | None,
    last_abandoned_at: datetime | None,
    number_present: bool = True,
) -> LocalCheck:
    """May one more call go to this number at ``at`` (aware)? The calling window of every state whose law
    binds the call in every zone the person may be in (``place``, from :func:`outdial.rules.place.place_of`,
    the function the campaign feeder uses too), the smallest legal cap of those states on the calls to the
    person (``person``: every number of every lead linked by shared numbers, :mod:`outdial.core.persons`;
    ``person_attempts``: their dials, each call once), the campaign's own cap on the calls to this number
    (``number_attempts``) and (UK) the 72-hour rule. Fails closed like each rule does (no zone, an unknown
    zone: blocked). What it decided on is in the result's inputs, exactly: the decision is taken from them."""
    if at.tzinfo is None:
        raise ValueError("evaluate needs an aware datetime")
    at = at.astimezone(UTC)
    j = (jurisdiction or "US").upper()
    day = at.date()
    blocked: list[str] = []
    detail: list[str] = []
    if not number_present:
        blocked.append("number.missing")

    # the rule versions: every row in force of every applicable state, once
    seen: dict[tuple[str, str], Any] = {}
    for st in place.state_args():
        try:
            rows = rules_in_force(j, st, day).rows
        except ValueError:
            rows = ()
        for r in rows:
            if isinstance(r, _LOCAL_KINDS):
                seen.setdefault((r.id, r.effective_from.isoformat()), r)
    refs = rule_refs(seen.values())

    per_state = state_windows(place, at, spec, jurisdiction=j)
    win = combine_windows(per_state)
    if not win.allowed:
        blocked.append(f"window.{win.reason}")
    try:
        effs: list[WindowSpec] | None = [legal_window(j, st, spec, day) for st in place.state_args()]
    except ValueError:
        effs = None
    zone_inputs: list[dict[str, Any]] = []
    for name in place.zones:
        try:
            local = at.astimezone(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            zone_inputs.append({"zone": name, "known": False})
            continue
        zone_inputs.append(
            {
                "zone": name,
                "local_time": local.replace(microsecond=0).isoformat(),
                "weekday": local.strftime("%a").lower(),
                "hours_in_force": _hhmm(_hours_all(effs, local.isoweekday()))
                if effs is not None
                else "unknown",
            }
        )

    since = at - DAY
    law_by_state = state_caps(place, j, day)
    law_cap = legal_cap(place, j, day)
    counted = sum(1 for t in person_attempts if since < t <= at)
    person_d = check_attempts(person_attempts, at, law_cap)
    if not person_d.allowed:
        blocked.append("cap.person_24h")
        detail.append(
            f"{counted} calls in 24 h to the person's {len(person)} number(s); cap {law_cap} "
            f"({'/'.join(place.states) or j})"
        )
    number_counted = sum(1 for t in number_attempts if since < t <= at)
    own_d = check_attempts(number_attempts, at, own_cap)
    if not own_d.allowed:
        blocked.append(f"cap.{own_d.reason}")

    inputs: dict[str, Any] = {
        "v": INPUTS_VERSION,
        "decided_at": at.isoformat(),
        "jurisdiction": j,
        "state": "/".join(place.states),
        "place": {
            "states": list(place.states),
            "address_state": place.address_state,
            "area_code_state": place.area_code_state,
            "zones": list(place.zones),
        },
        "window": {
            "allowed": win.allowed,
            "reason": win.reason,
            "zones": zone_inputs,
            "states": [{"state": st or "", "allowed": d.allowed, "reason": d.reason} for st, d in per_state],
            "campaign_window": window_to_json(spec),
            "next_open": win.next_open.isoformat() if win.next_open else None,
        },
        "cap": {
            "allowed": person_d.allowed and own_d.allowed,
            "counts": "person",
            "person_numbers": sorted(person),
            "attempts_in_period": counted,
            "period_hours": int(DAY / timedelta(hours=1)),
            "period_start": since.isoformat(),
            "law_max": law_cap,
            "law_max_by_state": law_by_state,
            "max_calls": law_cap,
            "campaign_max": own_cap,
            "number_attempts_in_period": number_counted,
        },
        "rules": refs,
    }
    if j == "UK":
        uk = check_uk_abandon_rule(last_abandoned_at, at)
        if not uk.allowed:
            blocked.append(f"cap.{uk.reason}")
        inputs["uk_abandon"] = {
            "allowed": uk.allowed,
            "last_abandoned_at": last_abandoned_at.isoformat() if last_abandoned_at else None,
            "quiet_hours": UK_ABANDON_QUIET / timedelta(hours=1),
        }
    return LocalCheck(tuple(blocked), inputs, detail="; ".join(detail), person_cap=law_cap)


def facts_unavailable(at: datetime, *, jurisdiction: str, detail: str) -> LocalCheck:
    """A block of a call because the facts a rule needs could not be read (who the person is and what they
    were called: PostgreSQL did not answer), with what failed: fail closed, and recorded."""
    return LocalCheck(
        ("compliance.unavailable",),
        {
            "v": INPUTS_VERSION,
            "decided_at": at.astimezone(UTC).isoformat(),
            "jurisdiction": (jurisdiction or "US").upper(),
            "unavailable": {"facts": "attempts", "detail": detail},
        },
        detail=detail,
    )


def campaign_blocked(
    at: datetime, *, jurisdiction: str, code: str, detail: str, campaign: Mapping[str, Any]
) -> LocalCheck:
    """A block of every call of a campaign (not active, no caller id, agentless telemarketing, a calling
    window that cannot be read), with the campaign's facts it was decided on."""
    return LocalCheck(
        (code,),
        {
            "v": INPUTS_VERSION,
            "decided_at": at.astimezone(UTC).isoformat(),
            "jurisdiction": (jurisdiction or "US").upper(),
            "campaign": {**campaign, "blocked": code, "detail": detail},
        },
    )
