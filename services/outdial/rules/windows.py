"""Calling windows: when a person may be called, in *their* local time. Pure; no I/O.

Sources (checked Nov 2026; a rule that changes wins over this file):
- US federal: 47 CFR 64.1200(c)(1) and 16 CFR 310.4(c): no telephone solicitation before 8:00 or after
  21:00 at the called party's location, every day.
- US states (mini-TCPA laws, stricter, all days unless said):
  FL Fla. Stat. 501.059(8)(b) 8:00-20:00; OK Okla. Stat. tit. 15 s.775C.4 8:00-20:00;
  MD Md. Code Com. Law s.14-4503 (Stop the Spam Calls Act 2023) 8:00-20:00;
  WA RCW 80.36.390 8:00-20:00; CT Conn. Gen. Stat. s.42-288a 9:00-20:00;
  TX Tex. Bus. & Com. Code s.301.051 9:00-21:00 Mon-Sat, 12:00-21:00 Sunday;
  MS Miss. Code s.77-3-725 8:00-20:00 Mon-Sat, no Sunday calls;
  AL (Alabama Telephone Solicitation Act) 8:00-20:00, no Sunday calls;
  LA (Louisiana Telephone Solicitation Relief Act, La. R.S. 45:844.11 ff.) 8:00-20:00, no Sunday calls.
  The MS/AL/LA section numbers are to be verified against the current codes before relying on them.
- Canada: CRTC Unsolicited Telecommunications Rules, Part III (Telemarketing Rules): weekdays 9:00-21:30,
  weekends 10:00-18:00 in the called person's local time.
- UK: Ofcom's persistent-misuse policy sets no hours; outdial's judgement follows the DMA Code / common
  practice of no calls before 8:00 or after 21:00 (every day).

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

from outdial.rules.law import JURISDICTION_REGION

__all__ = [
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


@dataclass(frozen=True)
class WindowSpec:
    start: time = time(8)
    end: time = time(21)
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


def _law(weekday: Hours, saturday: Hours | None, sunday: Hours | None) -> dict[int, Hours | None]:
    out: dict[int, Hours | None] = dict.fromkeys(range(1, 6), weekday)
    out[6] = saturday
    out[7] = sunday
    return out


_8_21 = (time(8), time(21))
_8_20 = (time(8), time(20))

#: The law's hours per ISO weekday (None = no calls that day), keyed by (jurisdiction, state or "").
LAW_HOURS: dict[tuple[str, str], dict[int, Hours | None]] = {
    ("US", ""): _law(_8_21, _8_21, _8_21),
    ("US", "FL"): _law(_8_20, _8_20, _8_20),
    ("US", "OK"): _law(_8_20, _8_20, _8_20),
    ("US", "MD"): _law(_8_20, _8_20, _8_20),
    ("US", "WA"): _law(_8_20, _8_20, _8_20),
    ("US", "CT"): _law((time(9), time(20)), (time(9), time(20)), (time(9), time(20))),
    ("US", "TX"): _law((time(9), time(21)), (time(9), time(21)), (time(12), time(21))),
    ("US", "MS"): _law(_8_20, _8_20, None),
    ("US", "AL"): _law(_8_20, _8_20, None),
    ("US", "LA"): _law(_8_20, _8_20, None),
    ("CA", ""): _law((time(9), time(21, 30)), (time(10), time(18)), (time(10), time(18))),
    ("UK", ""): _law(_8_21, _8_21, _8_21),
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
    Missing keys take the US defaults. Raises ValueError naming the field on bad input."""
    start = _parse_hhmm(d["start_local"], "start_local") if d.get("start_local") else time(8)
    end = _parse_hhmm(d["end_local"], "end_local") if d.get("end_local") else time(21)
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


def _law_hours(jurisdiction: str, state: str | None) -> list[dict[int, Hours | None]]:
    j = jurisdiction.upper()
    base = LAW_HOURS.get((j, ""))
    if base is None:
        raise ValueError(f"unknown jurisdiction {jurisdiction!r}")
    out = [base]
    st = (state or "").strip().upper()
    if st and (j, st) in LAW_HOURS:
        out.append(LAW_HOURS[(j, st)])
    return out


@functools.lru_cache(maxsize=4096)
def legal_window(jurisdiction: str, state: str | None, spec: WindowSpec) -> WindowSpec:
    """``spec`` narrowed to what the law allows in ``jurisdiction`` (and the lead's ``state``)."""
    laws = _law_hours(jurisdiction, state)
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
    eff = legal_window(jurisdiction, state, spec)
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
