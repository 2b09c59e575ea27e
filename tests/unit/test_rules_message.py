"""The message's two inputs (the seller's legal name, the callback number), what the message says, and the
opt-out confirmation (issue 13, point 6). Pure."""

from __future__ import annotations

import pytest

from outdial.pacing.actions import CallActions
from outdial.rules import law
from outdial.rules.message import callback_number_problem, opt_out_confirmation, seller_name_problem


@pytest.mark.parametrize(
    ("number", "jurisdiction", "why"),
    [
        ("", "US", "required"),
        ("2125550199", "US", "not an E.164"),
        ("+1212555019", "US", "not a valid"),
        ("+19002345678", "US", "premium-rate"),
        ("+442079460958", "US", "not a number of US"),
        ("+12125550199", "UK", "not a number of GB"),
        ("+449098790000", "UK", "premium-rate"),
        ("+447012345678", "UK", "personal number"),
        ("+12125550199", "XX", "unknown jurisdiction"),
    ],
)
def test_a_callback_number_that_cannot_serve_is_refused_with_its_reason(
    number: str, jurisdiction: str, why: str
) -> None:
    assert why in callback_number_problem(number, jurisdiction)


@pytest.mark.parametrize(
    ("number", "jurisdiction"),
    [
        ("+12125550199", "US"),
        ("+18002345678", "US"),  # toll-free
        ("+18002345678", "CA"),
        ("+16132345678", "CA"),
        ("+442079460958", "UK"),
    ],
)
def test_a_basic_rate_or_free_number_of_the_campaigns_country_serves(number: str, jurisdiction: str) -> None:
    assert callback_number_problem(number, jurisdiction) == ""


def test_the_seller_is_a_legal_name_not_the_campaigns_internal_name() -> None:
    assert "required" in seller_name_problem("  ", "Spring push")
    assert "no letters" in seller_name_problem("1234", "Spring push")
    assert "internal name" in seller_name_problem("spring push", "Spring push ")
    assert seller_name_problem("Spring push", "Spring push", same_on_purpose=True) == ""
    assert seller_name_problem("Acme Solar LLC", "Spring push") == ""
    assert "longer than" in seller_name_problem("A" * 201, "Spring push")


@pytest.mark.parametrize("jurisdiction", law.JURISDICTIONS)
def test_the_abandonment_message_says_who_calls_the_number_and_the_key_and_nothing_else(
    jurisdiction: str,
) -> None:
    cfg = {
        "id": "c1",
        "name": "Spring push",
        "caller_id": "+12125550100",
        "seller_name": "Acme Solar LLC",
        "opt_out_number": "+12125550199",
        "jurisdiction": jurisdiction,
    }
    text = CallActions._message(cfg)
    assert text == law.abandon_message("Acme Solar LLC", "+12125550199", jurisdiction=jurisdiction).text
    assert "Acme Solar LLC" in text and "2 1 2 5 5 5 0 1 9 9" in text and f"press {law.OPT_OUT_KEY}" in text
    # Never the internal name or the caller ID in their place, and no filler: no rule asks for an apology.
    assert "Spring push" not in text and "2 1 2 5 5 5 0 1 0 0" not in text
    assert "sorry" not in text.lower() and "available" not in text.lower()


def test_the_opt_out_confirmation_is_short_and_only_confirms() -> None:
    for j in law.JURISDICTIONS:
        text = opt_out_confirmation(j)
        assert "not be called again" in text and len(text.split()) <= 10
