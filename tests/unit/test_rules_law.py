"""rules/law.py: the figures every call obeys, their consistency with the wire enum, and the readers that used to
hold copies (campaign defaults and validation, the DNC number reader, holidays) giving the same answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outdial.campaign import model
from outdial.core.errors import InvalidArgument
from outdial.core.jurisdictions import JURISDICTION_PB, jurisdiction_from_pb, jurisdiction_to_pb
from outdial.dnc.numbers import jurisdiction_of, registry_line
from outdial.rules import caps, law, numbers, windows
from outdial.v1 import common_pb2


def test_the_figures_keep_their_values() -> None:
    assert law.CONNECT_LIMIT_S == 2.0
    assert law.CONNECT_LIMIT_MS == 2000
    assert law.MIN_RING_S == 15.0
    assert law.UK_ABANDON_QUIET == timedelta(hours=72)
    assert caps.UK_ABANDON_QUIET is law.UK_ABANDON_QUIET
    assert (law.SHORT_WINDOW_S, law.SHORT_WINDOW_CAP) == (3600.0, 0.05)
    assert {j: (p.cap, p.window_s) for j, p in law.ABANDON_POLICIES.items()} == {
        "US": (0.03, 2_592_000.0),
        "UK": (0.03, 86_400.0),
        "CA": (0.05, 2_592_000.0),
    }
    assert law.HIGHEST_ABANDON_CAP == 0.05
    assert law.OPT_OUT_KEY == "9"


def test_every_table_covers_exactly_the_jurisdiction_list() -> None:
    assert law.JURISDICTIONS == ("US", "CA", "UK")
    assert law.DEFAULT_JURISDICTION in law.JURISDICTIONS
    assert tuple(law.JURISDICTION_REGION) == law.JURISDICTIONS
    assert set(law.ABANDON_POLICIES) == set(law.JURISDICTIONS)
    assert all(p.jurisdiction == j for j, p in law.ABANDON_POLICIES.items())
    assert set(numbers.JURISDICTION_REGIONS) == set(law.JURISDICTIONS)
    assert {law.REGION_JURISDICTION[r]: r for r in law.REGION_JURISDICTION} == law.JURISDICTION_REGION


def test_the_list_is_the_proto_enum_in_its_order() -> None:
    names = [
        n.removeprefix("JURISDICTION_")
        for n in common_pb2.Jurisdiction.keys()
        if n != "JURISDICTION_UNSPECIFIED"
    ]
    assert tuple(names) == law.JURISDICTIONS
    assert list(JURISDICTION_PB.values()) == [1, 2, 3]


def test_wire_mapping_round_trips_and_fails_to_unspecified() -> None:
    for j in law.JURISDICTIONS:
        assert jurisdiction_from_pb(jurisdiction_to_pb(j)) == j
    assert jurisdiction_to_pb("UK") == common_pb2.JURISDICTION_UK
    assert jurisdiction_to_pb("") == common_pb2.JURISDICTION_UNSPECIFIED
    assert jurisdiction_to_pb(None) == common_pb2.JURISDICTION_UNSPECIFIED
    assert jurisdiction_to_pb("FR") == common_pb2.JURISDICTION_UNSPECIFIED
    assert jurisdiction_from_pb(common_pb2.JURISDICTION_UNSPECIFIED) == ""
    assert jurisdiction_from_pb(99, "US") == "US"


def test_abandon_policy_defaults_to_us_and_refuses_unknown() -> None:
    assert law.abandon_policy(None) is law.ABANDON_POLICIES["US"]
    assert law.abandon_policy("uk").window_s == 86_400.0
    assert not law.abandon_policy("CA").verified
    with pytest.raises(ValueError, match="unknown jurisdiction 'FR'; known: US, CA, UK"):
        law.abandon_policy("FR")


@given(st.one_of(st.none(), st.floats(min_value=0, max_value=600, allow_nan=False)))
def test_ring_time_is_never_below_the_minimum(requested: float | None) -> None:
    got = law.ring_time(requested)
    assert got >= law.MIN_RING_S
    assert got == max(law.MIN_RING_S, requested or 0.0)


def test_abandon_message_names_what_the_law_requires() -> None:
    us = law.abandon_message(" Acme Solar ", "+12125550100")
    assert us.seller == "Acme Solar" and us.callback_number == "+12125550100" and us.opt_out_key == "9"
    assert "Acme Solar" in us.text and "telemarketing" in us.text
    assert "press 9" in us.text and "1 2 1 2 5 5 5 0 1 0 0" in us.text
    uk = law.abandon_message("Acme", "+442079460000", jurisdiction="uk")
    assert "Acme" in uk.text and "4 4 2 0 7 9 4 6 0 0 0 0" in uk.text and "telemarketing" not in uk.text
    with pytest.raises(ValueError, match="seller"):
        law.abandon_message("  ", "+12125550100")
    with pytest.raises(ValueError, match="callback number"):
        law.abandon_message("Acme", "")


def test_campaign_defaults_read_the_law() -> None:
    for j in law.JURISDICTIONS:
        d = model.defaults(j)
        policy = law.abandon_policy(j)
        assert d["abandon_cap"] == policy.cap
        # Stored as whole seconds, as before the law moved.
        assert d["abandon_window_s"] == int(policy.window_s) and isinstance(d["abandon_window_s"], int)
        assert d["default_region"] == law.JURISDICTION_REGION[j]
    uk_abandoned = next(r for r in model.default_retry_rules("UK") if r["outcome"] == "abandoned")
    assert uk_abandoned["delay_s"] == 72 * 3600
    us_abandoned = next(r for r in model.default_retry_rules("US") if r["outcome"] == "abandoned")
    assert us_abandoned["delay_s"] == 3600


def _valid(jur: str, **over: object) -> None:
    s = model.defaults(jur)
    s.update(over)
    model.validate("name", s, None, None)


def test_campaign_validation_holds_the_legal_limits() -> None:
    _valid("US", ring_timeout_s=15)
    with pytest.raises(InvalidArgument, match=r"between 15 s \(the legal minimum\) and 120 s"):
        _valid("US", ring_timeout_s=14)
    with pytest.raises(InvalidArgument, match=r"at most the CA cap 0.05 \(a fraction: 0.05 = 5 %\)"):
        _valid("CA", abandon_cap=0.06)
    with pytest.raises(InvalidArgument, match="measurement period of 86400 s"):
        _valid("UK", abandon_window_s=2_592_000)
    rules = model.default_retry_rules("UK")
    for r in rules:
        if r["outcome"] == "abandoned":
            r["delay_s"] = 72 * 3600 - 1
    with pytest.raises(InvalidArgument, match="UK: no call within 72 h of an abandoned call"):
        _valid("UK", retry_rules=rules)


def test_readers_of_the_region_map_give_the_same_answers() -> None:
    assert registry_line("020 7946 0000", "UK") == "+442079460000"
    assert registry_line("2125550100", "CA") == "+12125550100"
    assert jurisdiction_of("+14165550100") == "CA"
    assert jurisdiction_of("+442079460000") == "UK"
    assert numbers.jurisdiction_regions("uk") == ("GB",)
    with pytest.raises(ValueError, match="expected one of US, CA, UK"):
        numbers.jurisdiction_regions("FR")
    # Holidays are looked up in the jurisdiction's country: Boxing Day is a UK holiday, not a US one.
    spec = windows.WindowSpec(skip_public_holidays=True)
    boxing_day = datetime(2025, 12, 26, 15, 0, tzinfo=UTC)  # a Friday: 15:00 in London, 10:00 in New York
    assert not windows.check_window(boxing_day, ("Europe/London",), spec, jurisdiction="UK").allowed
    assert windows.check_window(boxing_day, ("America/New_York",), spec, jurisdiction="US").allowed


def test_agentless_runs_only_informational_until_consent_can_be_checked() -> None:
    for j in law.JURISDICTIONS:
        assert law.agentless_refusal(j, informational=True) == ""
        assert "consent" in law.agentless_refusal(j, informational=False)
    # The hook a consent check (the compliance issue) will use.
    assert law.agentless_refusal("US", informational=False, consent_checked=True) == ""


def test_the_agentless_message_says_who_calls_first_and_ends_with_the_opt_out() -> None:
    text = law.agentless_message("Your order is ready.", "Acme", "+12125550199")
    assert text.startswith("This is Acme.") and "Your order is ready." in text
    assert f"press {law.OPT_OUT_KEY}" in text and text.endswith("2 1 2 5 5 5 0 1 9 9.")
    for missing in (("", "Acme", "+1"), ("x", "", "+1"), ("x", "Acme", "")):
        with pytest.raises(ValueError):
            law.agentless_message(*missing)


def test_mode_settings_are_validated_and_agentless_starts_only_when_the_law_allows() -> None:
    s = model.defaults("US")
    model.validate("c", s, None, None)
    assert (s["preview_seconds"], s["preview_timeout_action"], s["machine_action"]) == (30, "dial", "hang_up")
    for key, bad in (
        ("preview_seconds", -1),
        ("preview_seconds", 601),
        ("agentless_lines", 0),
        ("machine_action", "x"),
    ):
        with pytest.raises(InvalidArgument):
            model.validate("c", {**model.defaults("US"), key: bad}, None, None)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    identity = {"caller_id": "+12125550100", "seller_name": "Acme LLC", "opt_out_number": "+12125550199"}
    rec = model.CampaignRecord("c1", "c", "", "draft", {**s, **identity}, None, None, now, now)
    assert model.transition(rec, "start") == "active"  # progressive
    rec.settings["dial_mode"] = "preview"
    assert model.transition(rec, "start") == "active"
    rec.settings.update(dial_mode="agentless", agentless_message="Your order is ready.")
    with pytest.raises(model.FailedPrecondition) as err:
        model.transition(rec, "start")
    assert err.value.error_id == "consent_required"
    rec.settings["message_informational"] = True
    assert model.transition(rec, "start") == "active"


def test_the_dialer_stops_seeking_an_agent_in_time_to_start_the_message_within_two_seconds() -> None:
    from outdial.pacing.settings import PacingServiceSettings

    assert law.OFFER_DEADLINE_S + law.MESSAGE_START_MARGIN_S == law.CONNECT_LIMIT_S
    assert law.MESSAGE_START_MARGIN_S > 0
    assert PacingServiceSettings().pacing_offer_deadline_ms == law.OFFER_DEADLINE_MS < law.CONNECT_LIMIT_MS
