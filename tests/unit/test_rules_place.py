"""rules/place.py: the one function the feeder and the dial-time gate use to decide which states' laws bind a
call and in which zones its person may be (stricter of address and area code), and caps per person."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers.tzdata import TIMEZONE_DATA

from outdial.rules.caps import check_attempts, person_attempt_times
from outdial.rules.numbers import _number_zones, number_zones
from outdial.rules.place import NAVAJO_ZONES, check_place_window, legal_cap, place_of
from outdial.rules.windows import WindowSpec

ET, CT = "America/New_York", "America/Chicago"
DAY = date(2026, 1, 13)


def at_local(zone: str, *a: int) -> datetime:
    return datetime(*a, tzinfo=ZoneInfo(zone)).astimezone(UTC)  # type: ignore[misc]


def test_area_code_state_and_address_state_both_apply() -> None:
    # A Miami (305) number of a lead whose address says New York: Florida's law binds the call too.
    p = place_of("+13055550100", state="NY")
    assert p.states == ("FL", "NY") and p.address_state == "NY" and p.area_code_state == "FL"
    assert place_of("+12125550100").states == ("NY",)
    assert place_of("+442079460958").states == ()
    assert place_of("+442079460958").state_args() == (None,)
    # A ZIP names its state even when the lead's state column is blank (33101: Miami).
    assert place_of("+12125550100", zip_code="33101").states == ("FL", "NY")
    # Spelled out state names are normalised.
    assert place_of("+12125550100", state="Florida").states == ("FL", "NY")


def test_window_is_the_stricter_states_window() -> None:
    at = at_local(ET, 2026, 1, 13, 20, 30)  # a Tuesday, 20:30 in New York and Miami
    ny_lead_fl_number = place_of("+13055550100", state="NY")
    d = check_place_window(ny_lead_fl_number, at, WindowSpec(), jurisdiction="US")
    # Florida: 8:00-20:00; it opens again the next morning at 8:00.
    assert not d.allowed and d.next_open == at_local(ET, 2026, 1, 14, 8)
    # A Florida address with a New York number: the same (the address's law applies as well).
    assert not check_place_window(
        place_of("+12125550100", state="FL", zip_code="33101"), at, WindowSpec(), jurisdiction="US"
    ).allowed
    assert check_place_window(
        place_of("+12125550100", state="NY"), at, WindowSpec(), jurisdiction="US"
    ).allowed


def test_cap_is_the_smallest_of_the_applicable_states() -> None:
    assert legal_cap(place_of("+13055550100", state="NY"), "US", DAY) == 3
    assert legal_cap(place_of("+12125550100", state="OK"), "US", DAY) == 3
    assert legal_cap(place_of("+12125550100", state="NY"), "US", DAY) is None
    assert legal_cap(place_of("+442079460958"), "UK", DAY) is None


def test_zones_are_the_union_of_every_reading() -> None:
    # Evansville, Indiana (Central) with an 812 number (Eastern in libphonenumber): both, so the window is
    # their intersection.
    p = place_of("+18125550100", state="IN", zip_code="47708")
    assert {ET, CT} <= set(p.zones)
    # 20:30 Central = 21:30 Eastern: closed, although it is inside the window in Evansville.
    assert not check_place_window(
        p, at_local(CT, 2026, 1, 13, 20, 30), WindowSpec(), jurisdiction="US"
    ).allowed
    assert check_place_window(p, at_local(CT, 2026, 1, 13, 19, 30), WindowSpec(), jurisdiction="US").allowed
    # Indiana without a ZIP: every Indiana zone.
    assert {ET, CT, "America/Indiana/Indianapolis"} <= set(place_of("+18125550100", state="IN").zones)
    # A split area code (208 Idaho: Boise and Los Angeles) keeps both zones whatever the address says.
    assert {"America/Boise", "America/Los_Angeles"} <= set(place_of("+12085550100", zip_code="83702").zones)
    # Stored zones are kept.
    assert "Pacific/Honolulu" in place_of("+12125550100", zones=("Pacific/Honolulu",)).zones


def test_navajo_nation_and_arizona() -> None:
    # Window Rock (86515) and Tuba City (86045, on the Navajo Nation though zipcodes says Phoenix) get both
    # Arizona time and Navajo (daylight saving) time; Phoenix (85004) gets Arizona time alone.
    assert set(NAVAJO_ZONES) <= set(place_of("+19285550100", zip_code="86515").zones)
    assert set(NAVAJO_ZONES) <= set(place_of("+19285550100", zip_code="86045").zones)
    assert place_of("+16025550100", zip_code="85004").zones == ("America/Phoenix",)
    assert set(NAVAJO_ZONES) <= set(place_of("+16025550100", state="AZ").zones)
    # In July, 20:30 in Phoenix is 21:30 on the Navajo Nation: closed there, open in Phoenix.
    at = at_local("America/Phoenix", 2026, 7, 14, 20, 30)
    assert not check_place_window(
        place_of("+19285550100", zip_code="86515"), at, WindowSpec(), jurisdiction="US"
    ).allowed
    assert check_place_window(
        place_of("+16025550100", zip_code="85004"), at, WindowSpec(), jurisdiction="US"
    ).allowed


def test_no_zone_fails_closed() -> None:
    p = place_of("", zones=())
    assert p.zones == ()
    d = check_place_window(p, at_local(ET, 2026, 1, 13, 12), WindowSpec(), jurisdiction="US")
    assert not d.allowed and d.reason == "no_timezone"


def test_person_counts_every_number_once_per_call() -> None:
    now = datetime(2026, 1, 13, 19, tzinfo=UTC)
    by_number = {
        "+13055550001": {"a": now - timedelta(hours=1)},
        "+13055550002": {"b": now - timedelta(hours=2)},
        "+13055550003": {"c": now - timedelta(hours=3), "a": now - timedelta(hours=1)},  # "a" seen twice
        "+13055550009": {"z": now - timedelta(hours=1)},  # another person
    }
    person = {"+13055550001", "+13055550002", "+13055550003"}
    times = person_attempt_times(by_number, person)
    assert sorted(times) == sorted([now - timedelta(hours=h) for h in (1, 2, 3)])
    # Three numbers, one call each: the person has had their three calls.
    assert not check_attempts(times, now, 3).allowed
    # Each number alone would still be under the cap: the old per-number count let the 4th call out.
    assert all(check_attempts(list(by_number[n].values()), now, 3).allowed for n in person)
    assert person_attempt_times(by_number, {"+13055550404"}) == []


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(sorted(k for k in TIMEZONE_DATA if k.startswith("1") and len(k) >= 4)),
    tail=st.text("0123456789", min_size=10, max_size=10),
)
def test_number_zones_by_prefix_match_a_full_parse(prefix: str, tail: str) -> None:
    e164 = "+" + (prefix + tail)[:11]
    assert number_zones(e164) == _number_zones(e164)
