from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outdial.rules.windows import (
    WindowSpec,
    check_window,
    hours_on,
    legal_window,
    window_from_json,
    window_to_json,
)

NY, LA, HI = "America/New_York", "America/Los_Angeles", "Pacific/Honolulu"


def at_local(zone: str, y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(zone)).astimezone(UTC)


def test_us_default_window() -> None:
    spec = WindowSpec()
    assert check_window(at_local(NY, 2026, 3, 10, 8), [NY], spec).allowed
    assert check_window(at_local(NY, 2026, 3, 10, 20, 59), [NY], spec).allowed
    d = check_window(at_local(NY, 2026, 3, 10, 21), [NY], spec)
    assert not d.allowed and d.reason == "outside_hours"
    assert d.next_open == at_local(NY, 2026, 3, 11, 8)
    assert not check_window(at_local(NY, 2026, 3, 10, 7, 59), [NY], spec).allowed


def test_spec_wider_than_law_is_narrowed() -> None:
    spec = WindowSpec(start=time(6), end=time(23))
    assert not check_window(at_local(NY, 2026, 3, 10, 7), [NY], spec).allowed
    assert not check_window(at_local(NY, 2026, 3, 10, 22), [NY], spec).allowed


def test_state_law_florida() -> None:
    spec = WindowSpec()
    t = at_local(NY, 2026, 3, 10, 20, 30)
    assert check_window(t, [NY], spec, state="NY").allowed
    assert not check_window(t, [NY], spec, state="FL").allowed
    assert legal_window("US", "FL", spec).end == time(20)


def test_canada_weekday_weekend() -> None:
    spec = WindowSpec(start=time(8), end=time(22))
    eff = legal_window("CA", None, spec)
    assert hours_on(eff, 2) == (time(9), time(21, 30))
    assert hours_on(eff, 6) == (time(10), time(18))
    tor = "America/Toronto"
    assert check_window(at_local(tor, 2026, 3, 10, 21, 15), [tor], spec, jurisdiction="CA").allowed
    sat = at_local(tor, 2026, 3, 14, 18, 30)
    assert not check_window(sat, [tor], spec, jurisdiction="CA").allowed


def test_texas_sunday_and_mississippi_no_sunday() -> None:
    chi = "America/Chicago"
    sun_10 = at_local(chi, 2026, 3, 15, 10)
    assert not check_window(sun_10, [chi], WindowSpec(), state="TX").allowed
    assert check_window(at_local(chi, 2026, 3, 15, 12), [chi], WindowSpec(), state="TX").allowed
    d = check_window(sun_10, [chi], WindowSpec(), state="MS")
    assert d.reason == "day_not_allowed"
    assert d.next_open == at_local(chi, 2026, 3, 16, 8)


def test_most_restrictive_across_zones_and_margin() -> None:
    spec = WindowSpec()
    # 08:30 New York = 05:30 Los Angeles: a number spanning both is not callable.
    t = at_local(NY, 2026, 3, 10, 8, 30)
    d = check_window(t, [NY, LA], spec)
    assert not d.allowed
    assert d.next_open == at_local(LA, 2026, 3, 10, 8)
    # Margin: 20:50 with a 15-minute margin would end after 21:00.
    t2 = at_local(NY, 2026, 3, 10, 20, 50)
    assert check_window(t2, [NY], spec).allowed
    assert not check_window(t2, [NY], spec, margin=timedelta(minutes=15)).allowed


def test_fail_closed_without_zone() -> None:
    d = check_window(datetime(2026, 3, 10, 15, tzinfo=UTC), [], WindowSpec())
    assert (d.allowed, d.reason, d.next_open) == (False, "no_timezone", None)
    assert not check_window(datetime(2026, 3, 10, 15, tzinfo=UTC), ["Mars/Olympus"], WindowSpec()).allowed


def test_holidays() -> None:
    spec = WindowSpec(holiday_dates=frozenset({date(2026, 3, 10)}))
    d = check_window(at_local(NY, 2026, 3, 10, 12), [NY], spec)
    assert d.reason == "holiday" and d.next_open == at_local(NY, 2026, 3, 11, 8)
    pub = WindowSpec(skip_public_holidays=True)
    assert check_window(at_local(NY, 2026, 7, 4, 12), [NY], pub).reason == "public_holiday"
    assert check_window(at_local(NY, 2026, 7, 4, 12), [NY], WindowSpec()).allowed


def test_json_round_trip_and_errors() -> None:
    spec = window_from_json(
        {
            "start_local": "09:00",
            "end_local": "20:30",
            "days_of_week": [1, 2, 3, 4, 5],
            "holiday_dates": ["2026-12-25"],
            "skip_public_holidays": True,
        }
    )
    assert spec.start == time(9) and spec.end == time(20, 30) and 6 not in spec.days_of_week
    assert window_from_json(window_to_json(spec)) == spec
    assert window_from_json({}) == WindowSpec()
    for bad in (
        {"start_local": "25:00"},
        {"start_local": "10:00", "end_local": "09:00"},
        {"days_of_week": [0]},
        {"holiday_dates": ["soon"]},
    ):
        with pytest.raises(ValueError):
            window_from_json(bad)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)),
    st.lists(st.sampled_from([NY, LA, HI, "America/Chicago", "America/Denver"]), min_size=1, max_size=3),
    st.sampled_from([None, "FL", "TX", "MS", "NY"]),
    st.integers(min_value=0, max_value=60),
)
def test_allowed_means_inside_everywhere(at: datetime, zones: list[str], state: str | None, m: int) -> None:
    margin = timedelta(minutes=m)
    d = check_window(at, zones, WindowSpec(), state=state, margin=margin)
    eff = legal_window("US", state, WindowSpec())
    inside = True
    for z in zones:
        for instant in (at, at + margin):
            loc = instant.astimezone(ZoneInfo(z))
            h = hours_on(eff, loc.isoweekday())
            inside &= h is not None and h[0] <= loc.time() < h[1] and time(8) <= loc.time() < time(21)
    assert d.allowed == inside
    if not d.allowed:
        assert d.next_open is not None and d.next_open > at
        assert check_window(d.next_open, zones, WindowSpec(), state=state, margin=margin).allowed
        # Nothing opens earlier: one minute before next_open is closed (windows start on whole minutes).
        before = d.next_open - timedelta(minutes=1)
        if before > at:
            assert not check_window(before, zones, WindowSpec(), state=state, margin=margin).allowed
