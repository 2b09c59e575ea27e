"""Calling windows: when a person may be called, in *their* local time. Pure; no I/O.

The law's hours and holiday bans are rows of the rules table (``rules/data/*.yaml``, each with its source and
effective dates; see docs/compliance.md): the jurisdiction's window (US federal 47 CFR 64.1200(c)(1) and
16 CFR 310.4(c), 8:00-21:00; CRTC Telemarketing Rules; UK common practice) and, for a US lead, its state's
where the state's law is stricter (FL, OK, MD, WA, CT, TX, MS, AL, LA, RI). A call must be inside every
window in force, and outside the holidays of a state that bans them.

A window is half-open: ``start <= local time < end``. With a margin, both ``at`` and ``at + margin`` must be
inside the window in every candidate zone (the most restrictive reading).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from outdial.rules.law import DEFAULT_JURISDICTION, JURISDICTION_REGION, LOADED_ON
from outdial.rules.table import CallingWindowRow, load_tables, rules_in_force

__all__ = [
    "DEFAULT_END",
    "DEFAULT_START",
    "LAW_HOURS",
    "WindowDecision",
    "WindowSpec",
    "check_window",
    "hours_on",
    "legal_window",
    "window_from_json",
    "window_to_json",
]

Hours = tuple[time, time]
_ALL_DAYS = frozenset(range(1, 8))


def _default_hours() -> Hours:
    """A campaign's own window when it sets none: the hours the default jurisdiction's calling window (row
    ``us.calling_window``) allows on most days, as in force the day the process started. ``legal_window``
    narrows any campaign window to the law of the lead's jurisdiction and state on the day of the call."""
    counts: dict[Hours, int] = {}
    for law in rules_in_force(DEFAULT_JURISDICTION, None, LOADED_ON).windows():
        for h in law.values():
            if h is not None:
                counts[h] = counts.get(h, 0) + 1
    if not counts:
        raise RuntimeError(
            f"rules data: {DEFAULT_JURISDICTION} has no calling window in force on {LOADED_ON}"
        )
    return max(counts, key=lambda k: (counts[k], k))


#: The campaign window's default start and end (local time), from the rules table.
DEFAULT_START, DEFAULT_END = _default_hours()


@dataclass(frozen=True)
class WindowSpec:
    start: time = DEFAULT_START
    end: time = DEFAULT_END
    days_of_week: frozenset[int] = frozenset(range(1, 8))  # ISO: 1 = Monday .. 7 = Sunday
    holiday_dates: frozenset[date] = frozenset()
    skip_public_holidays: bool = False
    #: Per-weekday hours that replace ``start``/``end`` on that day: ((isoweekday, start, end), ...).
    per_day: tuple[tuple[int, time, time], ...] = ()


@dataclass(frozen=True)
class WindowDecision:
    allowed: bool
    reason: str
    next_open: datetime | None


#: The law's hours per ISO weekday (None = no calls that day), keyed by (jurisdiction, state or ""), as in
#: force the day the process started (:data:`outdial.rules.law.LOADED_ON`); ``legal_window`` asks the table
#: for the day it is given.
LAW_HOURS: dict[tuple[str, str], dict[int, Hours | None]] = {
    (j, st): r.by_weekday()
    for j in load_tables().jurisdictions()
    for st in ("", *load_tables().states(j))
    for r in load_tables().table(j, st).rules
    if isinstance(r, CallingWindowRow) and r.in_force(LOADED_ON)
}


def _parse_hhmm(value: Any, name: str) -> time:
    if not isinstance(value, str):
        raise ValueError(f"calling_window.{name} must be a string HH:MM")
    try:
        hh, mm = value.strip().split(":")
        return time(int(hh), int(mm))
    except ValueError:
        raise ValueError(f"calling_window.{name} must be HH:MM, got {value!r}") from None


def window_from_json(d: Mapping[str, Any]) -> WindowSpec:
    """The ``calling_window`` object of the campaign-config contract -> :class:`WindowSpec`.
    Missing keys take the defaults (:data:`DEFAULT_START`, :data:`DEFAULT_END`). Raises ValueError naming the field on bad input."""
    start = _parse_hhmm(d["start_local"], "start_local") if d.get("start_local") else DEFAULT_START
    end = _parse_hhmm(d["end_local"], "end_local") if d.get("end_local") else DEFAULT_END
    if start >= end:
        raise ValueError("calling_window.end_local must be after start_local")
    raw_days = d.get("days_of_week")
    if raw_days is None or raw_days == []:
        days = _ALL_DAYS if raw_days is None else frozenset[int]()
    else:
        days = frozenset(int(x) for x in raw_days)
        if not days <= _ALL_DAYS:
            raise ValueError("calling_window.days_of_week must be ISO weekdays 1..7")
    hol: set[date] = set()
    for s in d.get("holiday_dates") or ():
        try:
            hol.add(date.fromisoformat(str(s)))
        except ValueError:
            raise ValueError(f"calling_window.holiday_dates: {s!r} is not YYYY-MM-DD") from None
    return WindowSpec(
        start=start,
        end=end,
        days_of_week=days,
        holiday_dates=frozenset(hol),
        skip_public_holidays=bool(d.get("skip_public_holidays", False)),
    )


def window_to_json(spec: WindowSpec) -> dict[str, Any]:
    return {
        "start_local": spec.start.strftime("%H:%M"),
        "end_local": spec.end.strftime("%H:%M"),
        "days_of_week": sorted(spec.days_of_week),
        "holiday_dates": sorted(d.isoformat() for d in spec.holiday_dates),
        "skip_public_holidays": spec.skip_public_holidays,
    }


def hours_on(spec: WindowSpec, isoweekday: int) -> Hours | None:
    """The spec's hours on that weekday, or None when it does not call that day."""
    if isoweekday not in spec.days_of_week:
        return None
    for d, s, e in spec.per_day:
        if d == isoweekday:
            return (s, e) if s < e else None
    return (spec.start, spec.end)


def _law_hours(jurisdiction: str, state: str | None, day: date) -> tuple[list[dict[int, Hours | None]], bool]:
    """The windows in force on ``day`` (the jurisdiction's and the state's) and whether holidays are banned."""
    try:
        rules = rules_in_force(jurisdiction, state, day)
    except ValueError:
        raise ValueError(f"unknown jurisdiction {jurisdiction!r}") from None
    return rules.windows(), rules.holiday_ban()


@functools.lru_cache(maxsize=4096)
def legal_window(
    jurisdiction: str, state: str | None, spec: WindowSpec, at: date | None = None
) -> WindowSpec:
    """``spec`` narrowed to what the law allows in ``jurisdiction`` (and the lead's ``state``) on day ``at``
    (default: :data:`outdial.rules.law.LOADED_ON`): every window in force intersected, the public holidays
    skipped where a rule bans them."""
    laws, holiday_ban = _law_hours(jurisdiction, state, at or LOADED_ON)
    spec = replace(spec, skip_public_holidays=spec.skip_public_holidays or holiday_ban)
    per: dict[int, Hours | None] = {}
    for day in range(1, 8):
        h = hours_on(spec, day)
        for law in laws:
            lh = law[day]
            if h is None or lh is None:
                h = None
                break
            s, e = max(h[0], lh[0]), min(h[1], lh[1])
            h = (s, e) if s < e else None
        per[day] = h
    days = frozenset(d for d, h in per.items() if h is not None)
    distinct = {h for h in per.values() if h is not None}
    if len(distinct) <= 1:
        start, end = next(iter(distinct)) if distinct else (spec.start, spec.end)
        return replace(spec, start=start, end=end, days_of_week=days, per_day=())
    # Most common hours become start/end; the other days are listed.
    counts: dict[Hours, int] = {}
    for h in per.values():
        if h is not None:
            counts[h] = counts.get(h, 0) + 1
    common = max(counts, key=lambda k: (counts[k], k))
    extra = tuple((d, h[0], h[1]) for d, h in sorted(per.items()) if h is not None and h != common)
    return replace(spec, start=common[0], end=common[1], days_of_week=days, per_day=extra)


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@functools.lru_cache(maxsize=512)
def _public_holidays(jurisdiction: str, state: str | None, year: int) -> frozenset[date]:
    # The ``holidays`` package names countries by ISO 3166 code, like the number regions.
    country = JURISDICTION_REGION.get(jurisdiction.upper(), "US")
    try:
        hol = holidays.country_holidays(country, subdiv=state or None, years=year)
    except NotImplementedError:
        hol = holidays.country_holidays(country, years=year)
    return frozenset(hol.keys())


def _blocked(
    at: datetime, zone: ZoneInfo, spec: WindowSpec, jurisdiction: str, state: str | None
) -> str | None:
    """Why ``at`` is outside ``spec`` (already legal) in ``zone``, or None when inside."""
    local = at.astimezone(zone)
    d = local.date()
    hours = hours_on(spec, local.isoweekday())
    if hours is None:
        return "day_not_allowed"
    if d in spec.holiday_dates:
        return "holiday"
    if spec.skip_public_holidays and d in _public_holidays(jurisdiction, state, d.year):
        return "public_holiday"
    t = local.time().replace(tzinfo=None)
    if not (hours[0] <= t < hours[1]):
        return "outside_hours"
    return None


def _check_all(
    at: datetime,
    zones: Sequence[ZoneInfo],
    spec: WindowSpec,
    jurisdiction: str,
    state: str | None,
    margin: timedelta,
) -> str | None:
    for z in zones:
        for instant in (at, at + margin) if margin else (at,):
            why = _blocked(instant, z, spec, jurisdiction, state)
            if why is not None:
                return why
    return None


def check_window(
    at: datetime,
    timezones: Sequence[str],
    spec: WindowSpec,
    *,
    jurisdiction: str = "US",
    state: str | None = None,
    margin: timedelta = timedelta(0),
    horizon_days: int = 14,
) -> WindowDecision:
    """May a person whose zone is any of ``timezones`` be called at ``at`` (aware) and still be inside the
    window at ``at + margin``? Fails closed: no zone, or an unknown zone name, means no."""
    if at.tzinfo is None:
        raise ValueError("check_window needs an aware datetime")
    if not timezones:
        return WindowDecision(False, "no_timezone", None)
    zones: list[ZoneInfo] = []
    for name in timezones:
        z = _zone(name)
        if z is None:
            return WindowDecision(False, "unknown_timezone", None)
        zones.append(z)
    eff = legal_window(jurisdiction, state, spec, at.astimezone(UTC).date())
    why = _check_all(at, zones, eff, jurisdiction, state, margin)
    if why is None:
        return WindowDecision(True, "ok", None)
    return WindowDecision(False, why, _next_open(at, zones, eff, jurisdiction, state, margin, horizon_days))


def _next_open(
    at: datetime,
    zones: Sequence[ZoneInfo],
    spec: WindowSpec,
    jurisdiction: str,
    state: str | None,
    margin: timedelta,
    horizon_days: int,
) -> datetime | None:
    """Earliest instant after ``at`` at which every zone is open: the intersection opens at one of the
    zones' local window starts, so only those instants need checking."""
    candidates: set[datetime] = set()
    for z in zones:
        first = at.astimezone(z).date()
        for i in range(horizon_days + 1):
            d = first + timedelta(days=i)
            hours = hours_on(spec, d.isoweekday())
            if hours is None:
                continue
            c = datetime.combine(d, hours[0], tzinfo=z).astimezone(UTC)
            if c > at:
                candidates.add(c)
    for c in sorted(candidates):
        if _check_all(c, zones, spec, jurisdiction, state, margin) is None:
            return c
    return None
