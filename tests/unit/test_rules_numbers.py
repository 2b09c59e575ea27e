from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outdial.rules.numbers import NumberError, parse_number, timezones_for


@pytest.mark.parametrize(
    ("raw", "e164", "ntype"),
    [
        ("(212) 555-0100", "+12125550100", "fixed_line_or_mobile"),
        ("212.555.0100", "+12125550100", "fixed_line_or_mobile"),
        ("+1 808 555 0100", "+18085550100", "fixed_line_or_mobile"),
        ("1-305-555-0100", "+13055550100", "fixed_line_or_mobile"),
    ],
)
def test_parse_us_formats(raw: str, e164: str, ntype: str) -> None:
    p = parse_number(raw)
    assert (p.e164, p.region, p.number_type) == (e164, "US", ntype)
    assert p.timezones


@pytest.mark.parametrize(
    ("raw", "jurisdiction", "reason"),
    [
        ("", "US", "empty"),
        ("   ", "US", "empty"),
        ("hello", "US", "not_a_number"),
        ("555-0100", "US", "invalid_number"),
        ("(416) 555-0100", "US", "wrong_country"),
        ("(212) 555-0100", "CA", "wrong_country"),
        ("1-800-555-0100", "US", "toll_free"),
        ("1-900-555-0100", "US", "premium_rate"),
        ("+44 20 7946 0958", "US", "wrong_country"),
        ("0909 879 0000", "UK", "premium_rate"),
    ],
)
def test_parse_rejects_with_reason(raw: str, jurisdiction: str, reason: str) -> None:
    with pytest.raises(NumberError) as info:
        parse_number(raw, "GB" if jurisdiction == "UK" else "US", jurisdiction)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_parse_uk_and_ca() -> None:
    uk = parse_number("020 7946 0958", "GB", "UK")
    assert uk.e164 == "+442079460958" and uk.region == "GB" and "Europe/London" in uk.timezones
    ca = parse_number("416 555 0100", "CA", "CA")
    assert ca.e164 == "+14165550100" and ca.timezones == ("America/Toronto",)


def test_timezones_refined_by_zip_and_state() -> None:
    assert timezones_for("+12125550100") == ("America/New_York",)
    assert timezones_for("+18085550100", zip_code="96813") == ("Pacific/Honolulu",)
    # A New York number with a Los Angeles ZIP: they disagree, keep both (intersection of windows).
    assert timezones_for("+12125550100", zip_code="90012") == ("America/Los_Angeles", "America/New_York")
    # An invalid ZIP falls back to the state.
    assert timezones_for("+12125550100", zip_code="xx", state="California") == (
        "America/Los_Angeles",
        "America/New_York",
    )
    # A multi-zone state that contains the number's zone narrows to it.
    assert timezones_for("+13055550100", state="FL") == ("America/New_York",)


_digits = st.text(alphabet="0123456789", min_size=10, max_size=10)


@settings(max_examples=300, deadline=None)
@given(_digits, st.sampled_from(["{}", "({}) {}-{}", "{}.{}.{}", "+1 {} {} {}", "1-{}-{}-{}"]))
def test_parse_agrees_with_phonenumbers(digits: str, fmt: str) -> None:
    raw = fmt.format(digits[:3], digits[3:6], digits[6:]) if fmt != "{}" else digits
    try:
        num = phonenumbers.parse(raw, "US")
    except phonenumbers.NumberParseException:  # e.g. "011 801…": an international prefix, no such country
        with pytest.raises(NumberError):
            parse_number(raw)
        return
    try:
        p = parse_number(raw)
    except NumberError as exc:
        assert exc.reason in {
            "invalid_number",
            "wrong_country",
            "toll_free",
            "premium_rate",
            "shared_cost",
            "personal_number",
            "pager",
            "voicemail",
        }
        if exc.reason == "invalid_number":
            assert not phonenumbers.is_valid_number_for_region(num, "US")
        return
    assert phonenumbers.is_valid_number_for_region(num, "US")
    assert p.e164 == phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_parse_never_crashes(raw: str) -> None:
    try:
        p = parse_number(raw)
    except NumberError as exc:
        assert exc.reason
    else:
        assert p.e164.startswith("+1")


# ------------------------------------------------------------------ the fast path gives phonenumbers' answers

_sep = st.sampled_from(["", " ", "-", ".", "  ", "/", "\t"])
_npa = st.one_of(
    st.sampled_from(
        ["212", "310", "808", "646", "415", "305", "907", "800", "888", "900", "555", "416", "011", "123"]
    ),
    st.text(alphabet="0123456789", min_size=3, max_size=3),
)


@st.composite
def us_shaped(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["", "1", "+1", "+1 ", "1-", "1 ", "+", "01", "+44 "]))
    npa = draw(_npa)
    paren = draw(st.booleans())
    a = f"({npa})" if paren else npa
    if draw(st.integers(0, 9)) == 0:
        a = "(" + npa  # unbalanced
    nxx = draw(st.text(alphabet="0123456789", min_size=3, max_size=3))
    line = draw(st.text(alphabet="0123456789", min_size=3, max_size=5))
    tail = draw(st.sampled_from(["", "", "", " ", " x12", " ext. 3", "#", "a"]))
    lead = draw(st.sampled_from(["", "", " ", "\t"]))
    return lead + prefix + a + draw(_sep) + nxx + draw(_sep) + line + tail


def _answer(fn, raw: str, region: str, jur: str) -> object:  # type: ignore[no-untyped-def]
    try:
        return fn(raw, region, jur)
    except NumberError as exc:
        return ("error", exc.reason, exc.detail)


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(us_shaped(), st.text(max_size=20)),
    st.sampled_from([("US", "US"), ("US", "CA"), ("CA", "CA"), ("GB", "UK")]),
)
def test_fast_path_is_exact(raw: str, rj: tuple[str, str]) -> None:
    from outdial.rules.numbers import parse_number_fast

    assert _answer(parse_number_fast, raw, *rj) == _answer(parse_number, raw, *rj)


def test_fast_path_takes_common_shapes() -> None:
    from outdial.rules import numbers

    before = numbers._nanp_geo_zones.cache_info().hits + numbers._nanp_geo_zones.cache_info().misses
    for raw in ("(212) 555-0100", "212.555.0101", "+1 212 555 0102", "1-212-555-0103", "2125550104"):
        assert numbers.parse_number_fast(raw) == numbers.parse_number(raw)
    after = numbers._nanp_geo_zones.cache_info().hits + numbers._nanp_geo_zones.cache_info().misses
    assert after - before == 5  # every one of them answered by the fast path


def test_area_code_state() -> None:
    from outdial.rules.numbers import area_code_state

    assert area_code_state("+13055550100") == "FL"
    assert area_code_state("+12125550100") == "NY"
    assert area_code_state("+14055550100") == "OK"
    assert area_code_state("+442079460958") is None
    # libphonenumber's names for Washington State and D.C. (WA's law: 08:00-20:00).
    assert [area_code_state(f"+1{npa}2345678") for npa in (206, 253, 360, 425, 564)] == ["WA"] * 5
    assert area_code_state("+12022345678") == "DC"


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="0123456789", min_size=10, max_size=10),
        st.builds(
            lambda npa, rest: npa + rest,
            st.sampled_from(["212", "800", "900", "523", "524", "500", "983", "808", "555", "416", "345"]),
            st.text(alphabet="0123456789", min_size=7, max_size=7),
        ),
    )
)
def test_us_type_matcher_is_phonenumbers_type_helper(nsn: str) -> None:
    """The fast path's single combined regex answers exactly as phonenumbers' _number_type_helper for the
    types it takes (fixed line, fixed line or mobile) and declines every other answer."""
    from phonenumbers import PhoneNumberType, phonenumberutil

    from outdial.rules import numbers

    assert numbers._US_GEO_TYPE is not None
    want = phonenumberutil._number_type_helper(nsn, numbers._US_META)
    got = numbers._US_GEO_TYPE(nsn)
    if want in (PhoneNumberType.FIXED_LINE, PhoneNumberType.FIXED_LINE_OR_MOBILE):
        assert got == want
    else:
        assert got is None
