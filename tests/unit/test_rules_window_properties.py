"""Property tests of the calling windows (issue 13, point 8): across daylight saving changes and every US zone,
Arizona (no DST) and the Navajo Nation (DST inside Arizona), Indiana's split counties and area codes that span
two zones. The oracle reads the rules table's hours and converts the instant with zoneinfo itself; it shares
no code with ``windows.legal_window``/``check_window``/``place.place_of``.

Properties:
- soundness: no instant the code allows is outside the legal window in any candidate zone, for any
  applicable state (address, ZIP, area code);
- completeness around DST: on the days the clocks change, the decision is exactly the oracle's (the window
  neither opens early or late nor closes early or late), and a ``next_open`` is the first allowed instant.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays
import phonenumbers
import us
import zipcodes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import timezone as pn_timezone
from phonenumbers.tzdata import TIMEZONE_DATA

from outdial.rules.numbers import area_code_state
from outdial.rules.place import check_place_window, place_of
from outdial.rules.table import load_tables, rules_in_force
from outdial.rules.windows import WindowSpec, check_window

SPEC = WindowSpec()
START, END = datetime(2025, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC)

_ZIPS = zipcodes.list_all()  # type: ignore[no-untyped-call]
#: Every zone of a US state or territory (the ``us`` package) and of a US ZIP (the ``zipcodes`` package).
US_ZONES: tuple[str, ...] = tuple(
    sorted(
        {z for s in us.states.STATES_AND_TERRITORIES for z in (s.time_zones or ())}
        | {r["timezone"] for r in _ZIPS if "/" in (r["timezone"] or "")}
    )
)
STATES_WITH_RULES: tuple[str, ...] = tuple(load_tables().states("US"))
ALL_STATES: tuple[str, ...] = tuple(s.abbr for s in us.states.STATES)
NAVAJO_ZIPS = ("86515", "86503", "86033", "86045", "86044", "86538", "86514", "84536", "87420", "87328")
INDIANA_ZIPS: tuple[str, ...] = tuple(sorted(r["zip_code"] for r in _ZIPS if r["state"] == "IN"))
INDIANA_NUMBERS = (
    "+12195550100",
    "+12605550100",
    "+13175550100",
    "+15745550100",
    "+17655550100",
    "+18125550100",
)
ALL_ZIPS: tuple[str, ...] = tuple(sorted(r["zip_code"] for r in _ZIPS if "/" in (r["timezone"] or "")))


def _split_numbers() -> tuple[str, ...]:
    """A number for every NANP prefix whose libphonenumber zones are more than one (split area codes)."""
    out: list[str] = []
    for k, zones in TIMEZONE_DATA.items():
        if not k.startswith("1") or len([z for z in zones if z != "Etc/Unknown"]) < 2:
            continue
        for tail in ("0100000", "5550100", "2345678", "9876543"):
            n = "+" + (k + tail)[:11]
            if len(oracle_number_zones(n)) > 1:
                out.append(n)
                break
    return tuple(sorted(out))


def oracle_number_zones(e164: str) -> tuple[str, ...]:
    num = phonenumbers.parse(e164, None)
    return tuple(z for z in pn_timezone.time_zones_for_number(num) if z != "Etc/Unknown")


SPLIT_NUMBERS = _split_numbers()
GEO_NUMBERS: tuple[str, ...] = tuple(
    sorted(
        n
        for k in TIMEZONE_DATA
        if k.startswith("1") and len(k) == 4
        for n in ("+" + k + "5550100",)
        if phonenumbers.is_valid_number(phonenumbers.parse(n, None)) and oracle_number_zones(n)
    )
)


@functools.cache
def _transitions() -> tuple[datetime, ...]:
    """Every UTC instant in [START, END) at which some US zone's offset changes (found day by day, then to
    the quarter hour: every US change falls on one)."""
    found: set[datetime] = set()
    for name in US_ZONES:
        z = ZoneInfo(name)
        t = START
        prev = t.astimezone(z).utcoffset()
        while t < END:
            nxt = t + timedelta(days=1)
            off = nxt.astimezone(z).utcoffset()
            if off != prev:
                lo = t
                while lo.astimezone(z).utcoffset() == prev:
                    lo += timedelta(minutes=15)
                found.add(lo)
                prev = off
            t = nxt
    return tuple(sorted(found))


def instants() -> st.SearchStrategy[datetime]:
    """Any minute in 2025-2027, or one within 36 h of a daylight saving change."""
    anywhere = st.integers(0, int((END - START).total_seconds() // 60) - 1).map(
        lambda m: START + timedelta(minutes=m)
    )
    near_dst = st.tuples(st.sampled_from(_transitions()), st.integers(-36 * 60, 36 * 60)).map(
        lambda p: p[0] + timedelta(minutes=p[1])
    )
    return st.one_of(anywhere, near_dst)


def _public_holiday(state: str | None, d: date) -> bool:
    return d in holidays.country_holidays("US", subdiv=state, years=d.year)


def oracle_inside(at: datetime, zone: str, state: str | None) -> bool:
    """Inside every window in force for ``state`` on ``at``'s UTC day, at ``at``'s local time in ``zone``."""
    rules = rules_in_force("US", state, at.astimezone(UTC).date())
    local = at.astimezone(ZoneInfo(zone))
    if rules.holiday_ban() and _public_holiday(state, local.date()):
        return False
    t = local.time().replace(tzinfo=None)
    for hours in rules.windows():
        h = hours[local.isoweekday()]
        if h is None or not (h[0] <= t < h[1]):
            return False
    return True


def oracle(at: datetime, zones: Iterable[str], states: Iterable[str | None]) -> bool:
    return all(oracle_inside(at, z, s) for z in zones for s in states)


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    at=instants(),
    zones=st.lists(st.sampled_from(US_ZONES), min_size=1, max_size=3, unique=True),
    state=st.sampled_from((None, *STATES_WITH_RULES)),
)
def test_an_allowed_instant_is_inside_the_window_in_every_zone(
    at: datetime, zones: list[str], state: str | None
) -> None:
    d = check_window(at, zones, SPEC, jurisdiction="US", state=state)
    # Exactly the oracle: sound (nothing allowed outside) and complete (nothing inside refused), also on the
    # days the clocks change.
    assert d.allowed == oracle(at, zones, [state]), (at, zones, state, d)


@FAST
@given(
    at=instants(),
    zones=st.lists(st.sampled_from(US_ZONES), min_size=1, max_size=2, unique=True),
    state=st.sampled_from((None, "FL", "WA", "TX")),
)
def test_next_open_is_the_first_allowed_instant(at: datetime, zones: list[str], state: str | None) -> None:
    d = check_window(at, zones, SPEC, jurisdiction="US", state=state)
    if d.allowed or d.next_open is None:
        return
    nxt = d.next_open
    assert nxt > at
    assert oracle(nxt, zones, [state]), (at, zones, state, nxt)
    # Nothing between ``at`` and ``next_open`` is open: sampled every 15 minutes and the minute before.
    probe = at
    while probe < nxt:
        assert not oracle(probe, zones, [state]), (at, zones, state, probe, nxt)
        probe += timedelta(minutes=15)
    assert not oracle(nxt - timedelta(minutes=1), zones, [state]) or nxt - timedelta(minutes=1) <= at


@FAST
@given(at=instants(), zone=st.sampled_from(US_ZONES), margin=st.integers(0, 30))
def test_a_margin_keeps_the_whole_call_inside(at: datetime, zone: str, margin: int) -> None:
    m = timedelta(minutes=margin)
    d = check_window(at, [zone], SPEC, jurisdiction="US", margin=m)
    if d.allowed:
        assert oracle(at, [zone], [None]) and oracle(at + m, [zone], [None])


def place_sound(at: datetime, number: str, state: str | None, zip_code: str | None) -> None:
    """The shared place function: allowed => inside the window in the number's zones, the ZIP's zone and
    (Arizona) both Arizona and Navajo time, for the address's, the ZIP's and the area code's states."""
    p = place_of(number, state=state, zip_code=zip_code)
    d = check_place_window(p, at, SPEC, jurisdiction="US")
    if not d.allowed:
        return
    zones = set(oracle_number_zones(number))
    states: set[str | None] = {area_code_state(number), state}
    if zip_code:
        for rec in zipcodes.matching(zip_code):
            zones.add(rec["timezone"])
            states.add(rec["state"])
            if rec["state"] == "AZ" and rec["county"] in (
                "Apache County",
                "Navajo County",
                "Coconino County",
            ):
                zones.update(("America/Denver", "America/Phoenix"))
    assert oracle(at, zones, states), (at, number, state, zip_code, p)


@FAST
@given(
    at=instants(),
    number=st.sampled_from(GEO_NUMBERS),
    zip_code=st.sampled_from(ALL_ZIPS),
    state=st.sampled_from((None, *ALL_STATES)),
)
def test_the_place_window_is_sound_for_any_number_and_address(
    at: datetime, number: str, zip_code: str, state: str | None
) -> None:
    place_sound(at, number, state, zip_code)


@FAST
@given(
    at=instants(),
    zip_code=st.sampled_from(NAVAJO_ZIPS),
    number=st.sampled_from(("+19285550100", "+15055550100", "+14355550100", "+16025550100")),
)
def test_navajo_nation(at: datetime, zip_code: str, number: str) -> None:
    place_sound(at, number, None, zip_code)
    rec = zipcodes.matching(zip_code)[0]
    if rec["state"] == "AZ":
        # Both Arizona and Navajo time must allow it.
        if check_place_window(place_of(number, zip_code=zip_code), at, SPEC, jurisdiction="US").allowed:
            assert oracle(at, ("America/Denver", "America/Phoenix"), (None,))


@FAST
@given(
    at=instants(),
    zip_code=st.sampled_from(INDIANA_ZIPS),
    number=st.sampled_from(INDIANA_NUMBERS),
    named=st.booleans(),
)
def test_indiana_counties(at: datetime, zip_code: str, number: str, named: bool) -> None:
    place_sound(at, number, "IN" if named else None, zip_code)


@FAST
@given(at=instants(), number=st.sampled_from(INDIANA_NUMBERS))
def test_indiana_without_a_zip_is_every_indiana_zone(at: datetime, number: str) -> None:
    p = place_of(number, state="IN")
    if check_place_window(p, at, SPEC, jurisdiction="US").allowed:
        assert oracle(at, us.states.IN.time_zones, (None, "IN"))


@FAST
@given(
    at=instants(),
    number=st.sampled_from(SPLIT_NUMBERS),
    zip_code=st.one_of(st.none(), st.sampled_from(ALL_ZIPS)),
)
def test_split_area_codes_are_the_intersection_of_their_zones(
    at: datetime, number: str, zip_code: str | None
) -> None:
    # Whatever the address says, every zone the number's prefix spans must allow the call (fail closed).
    place_sound(at, number, None, zip_code)
    if check_place_window(place_of(number, zip_code=zip_code), at, SPEC, jurisdiction="US").allowed:
        assert oracle(at, oracle_number_zones(number), (None,))


def test_the_strategies_cover_what_they_claim() -> None:
    assert {"America/Phoenix", "America/Denver", "America/Indiana/Indianapolis", "Pacific/Honolulu"} <= set(
        US_ZONES
    )
    assert "America/Adak" in US_ZONES and "America/Anchorage" in US_ZONES
    assert len(SPLIT_NUMBERS) > 50 and len(INDIANA_ZIPS) > 900 and len(GEO_NUMBERS) > 300
    ny = ZoneInfo("America/New_York")
    assert datetime(2026, 3, 8, 2, tzinfo=ny).astimezone(UTC) in _transitions()  # spring forward
    assert datetime(2026, 11, 1, 6, tzinfo=UTC) in _transitions()  # fall back (2:00 EDT)


def at_local(zone: str, *a: int) -> datetime:
    return datetime(*a, tzinfo=ZoneInfo(zone)).astimezone(UTC)  # type: ignore[misc]


def test_dst_days_open_and_close_at_local_hours() -> None:
    """Spring forward (8 March 2026) and fall back (1 November 2026) in New York and Denver; Phoenix
    keeps its hours in UTC all year."""
    for zone in ("America/New_York", "America/Denver", "America/Phoenix"):
        for day in (date(2026, 3, 8), date(2026, 11, 1)):
            open_at = datetime.combine(day, time(8), tzinfo=ZoneInfo(zone)).astimezone(UTC)
            close_at = datetime.combine(day, time(21), tzinfo=ZoneInfo(zone)).astimezone(UTC)
            before = check_window(open_at - timedelta(minutes=1), [zone], SPEC)
            assert not before.allowed and before.next_open == open_at
            assert check_window(open_at, [zone], SPEC).allowed
            assert check_window(close_at - timedelta(minutes=1), [zone], SPEC).allowed
            assert not check_window(close_at, [zone], SPEC).allowed
    # In UTC, New York opens an hour earlier after spring forward; Phoenix does not move.
    assert at_local("America/New_York", 2026, 3, 8, 8) == datetime(2026, 3, 8, 12, tzinfo=UTC)
    assert at_local("America/New_York", 2026, 3, 7, 8) == datetime(2026, 3, 7, 13, tzinfo=UTC)
    assert at_local("America/Phoenix", 2026, 3, 8, 8) == at_local(
        "America/Phoenix", 2026, 3, 7, 8
    ) + timedelta(days=1)
    # Window Rock (Navajo, DST) and Phoenix: in July, Navajo time is an hour ahead, so the intersection
    # opens at 8:00 Phoenix time and closes at 20:00 Phoenix time.
    p = place_of("+19285550100", zip_code="86515")
    assert not check_place_window(
        p, at_local("America/Phoenix", 2026, 7, 14, 20, 0), SPEC, jurisdiction="US"
    ).allowed
    assert check_place_window(
        p, at_local("America/Phoenix", 2026, 7, 14, 19, 59), SPEC, jurisdiction="US"
    ).allowed
    # In January both are on UTC-7: the full 8:00-21:00.
    assert check_place_window(
        p, at_local("America/Phoenix", 2026, 1, 14, 20, 30), SPEC, jurisdiction="US"
    ).allowed
