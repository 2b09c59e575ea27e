"""Where the called person may be, and which state laws bind the call: one answer for the campaign feeder
and the pacing service's dial-time gate. Pure; no I/O (libphonenumber, ``zipcodes`` and ``us`` data only).

**States.** A US state's telemarketing law applies when the person lives there *or* has that state's area
code: Florida's Telephone Solicitation Act (Fla. Stat. 501.059, as amended in 2023) presumes that a call to
a Florida area code is a call to a Florida resident, and we read Oklahoma's and Maryland's acts the same way
(the rules table marks what is uncertain). We do not try to tell which presumption wins: the call must
satisfy the law of **every** applicable state - the address's (the lead's state, and its ZIP's state when
that differs) and the area code's. Windows are intersected, caps take the smallest.

**Zones.** The US federal and state hours are in the called person's local time (47 CFR 64.1200(c)(1),
16 CFR 310.4(c)(1)); the number's area code and the address are both presumptions. The candidate zones are
the union of every zone the area code spans, the address's zone (its ZIP's zone; without a ZIP every zone of
its state) and any zones stored with the lead, and a call must be inside the window in **all** of them (the
intersection of their windows). So a split area code (e.g. 208 in Idaho: Boise and Los Angeles) or an
address that disagrees with its number is called only when every reading allows it: fail closed.

**Arizona and the Navajo Nation.** Arizona keeps standard time all year (America/Phoenix) but the Navajo
Nation, inside north-eastern Arizona, observes daylight saving time (America/Denver). The ``zipcodes``
package gives America/Denver to most Navajo ZIPs (e.g. 86515 Window Rock, 86503 Chinle) but not to all
(86045 Tuba City is on the Navajo Nation and given America/Phoenix; Hopi villages inside it, on Arizona
time, are America/Phoenix too). The reservation lies in Apache, Navajo and Coconino counties (US Census
Bureau, "Navajo Nation Reservation and Off-Reservation Trust Land, AZ--NM--UT"), so an Arizona address in
one of those counties, or an Arizona address without a usable ZIP, gets both zones. In summer that closes
such a person's window an hour early on Arizona time, which is the price of not knowing.

**Indiana** and the other split states need nothing special: ZIPs carry their own zone (Evansville
America/Chicago, Indianapolis America/Indiana/Indianapolis), a state without a ZIP carries every zone of the
state, and an Indiana area code (812: America/New_York in libphonenumber) adds its own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import zipcodes

from outdial.rules import caps, windows
from outdial.rules.numbers import _state_zones, area_code_state, normalise_state, number_zones

__all__ = [
    "NAVAJO_ZONES",
    "Place",
    "check_place_window",
    "combine_windows",
    "legal_cap",
    "place_of",
    "state_caps",
    "state_windows",
]

#: Arizona counties that hold part of the Navajo Nation (US Census Bureau, Navajo Nation Reservation and
#: Off-Reservation Trust Land, AZ--NM--UT): an address there may be on Navajo (daylight saving) time.
NAVAJO_AZ_COUNTIES: frozenset[str] = frozenset({"Apache County", "Navajo County", "Coconino County"})
#: Arizona time and Navajo Nation time.
NAVAJO_ZONES: tuple[str, str] = ("America/Denver", "America/Phoenix")


@dataclass(frozen=True)
class Place:
    """The states whose law binds a call to one number of one lead, and the zones its person may be in.
    ``states`` is empty when no state is known (the jurisdiction's rules alone apply); ``zones`` empty means
    unknown, and every check on it fails closed."""

    states: tuple[str, ...]
    zones: tuple[str, ...]
    address_state: str | None
    area_code_state: str | None

    def state_args(self) -> tuple[str | None, ...]:
        """``states`` for the per-state rule look-ups (``(None,)`` = the jurisdiction's rules only)."""
        return self.states or (None,)


@functools.lru_cache(maxsize=65536)
def _zip_record(zip_code: str) -> tuple[str, str, str] | None:
    """(state, county, zone) of a 5-digit ZIP, or None."""
    z = zip_code.strip()[:5]
    if len(z) != 5 or not z.isdigit():
        return None
    try:
        found = zipcodes.matching(z)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        return None
    for rec in found:
        tz = rec.get("timezone")
        if isinstance(tz, str) and tz:
            return str(rec.get("state") or ""), str(rec.get("county") or ""), tz
    return None


def _address(state: str | None, zip_code: str | None) -> tuple[set[str], set[str]]:
    """(states, zones) of an address."""
    states: set[str] = set()
    zones: set[str] = set()
    named = normalise_state(state)
    if named:
        states.add(named)
    rec = _zip_record(zip_code) if zip_code else None
    if rec is not None:
        zst, county, tz = rec
        zones.add(tz)
        if zst:
            states.add(zst)
        if zst == "AZ" and county in NAVAJO_AZ_COUNTIES:
            zones.update(NAVAJO_ZONES)
        if named and zst and named != zst:
            zones.update(_state_zones(named))  # the address contradicts itself: both readings
    elif named:
        zones.update(_state_zones(named))
        if named == "AZ":
            zones.update(NAVAJO_ZONES)
    return states, zones


def place_of(
    number_e164: str, *, state: str | None = None, zip_code: str | None = None, zones: Sequence[str] = ()
) -> Place:
    """The :class:`Place` of a call to ``number_e164`` for a lead with this address ``state`` and
    ``zip_code`` (either may be blank) and the ``zones`` stored with its number at upload (kept: more
    candidates only narrow the window)."""
    addr_states, addr_zones = _address(state, zip_code)
    code_state = area_code_state(number_e164) if number_e164 else None
    all_states = set(addr_states)
    if code_state:
        all_states.add(code_state)
    all_zones = set(addr_zones) | set(number_zones(number_e164) if number_e164 else ()) | set(zones)
    named = normalise_state(state)
    return Place(
        states=tuple(sorted(all_states)),
        zones=tuple(sorted(all_zones)),
        address_state=named or next(iter(sorted(addr_states)), None),
        area_code_state=code_state,
    )


def check_place_window(
    place: Place,
    at: datetime,
    spec: windows.WindowSpec,
    *,
    jurisdiction: str,
    margin: timedelta = timedelta(0),
) -> windows.WindowDecision:
    """The calling window at ``at`` for every applicable state in every candidate zone: allowed only when all
    allow (the intersection); when closed, it opens at the latest of the states' next openings (None when
    any of them cannot say)."""
    return combine_windows(state_windows(place, at, spec, jurisdiction=jurisdiction, margin=margin))


def state_windows(
    place: Place,
    at: datetime,
    spec: windows.WindowSpec,
    *,
    jurisdiction: str,
    margin: timedelta = timedelta(0),
) -> list[tuple[str | None, windows.WindowDecision]]:
    """Each applicable state's window decision at ``at`` in every candidate zone (``None``: the
    jurisdiction's rules only), in the order of :meth:`Place.state_args`."""
    return [
        (st, windows.check_window(at, place.zones, spec, jurisdiction=jurisdiction, state=st, margin=margin))
        for st in place.state_args()
    ]


def combine_windows(per_state: Sequence[tuple[str | None, windows.WindowDecision]]) -> windows.WindowDecision:
    """The states' window decisions as one (:func:`state_windows`): allowed only when every one allows."""
    decisions = [d for _, d in per_state]
    closed = [d for d in decisions if not d.allowed]
    if not closed:
        return decisions[0]
    opens = [d.next_open for d in closed]
    return windows.WindowDecision(
        False, closed[0].reason, None if any(o is None for o in opens) else max(o for o in opens if o)
    )


def legal_cap(place: Place, jurisdiction: str, day: date) -> int | None:
    """The smallest legal cap of calls to one person per rolling 24 h among the applicable states on
    ``day`` (None: no law caps them)."""
    known = [c for c in state_caps(place, jurisdiction, day).values() if c is not None]
    return min(known) if known else None


def state_caps(place: Place, jurisdiction: str, day: date) -> dict[str, int | None]:
    """Each applicable state's legal cap of calls to one person per rolling 24 h on ``day`` (key ``""``: the
    jurisdiction's rules only; None: no cap)."""
    return {st or "": caps.default_max_calls_24h(jurisdiction, st, day) for st in place.state_args()}
