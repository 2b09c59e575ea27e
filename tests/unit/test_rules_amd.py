"""Answering-machine detection (row ``uk.amd_false_positives``): the campaign settings that carry it, the start
refusal naming the field, the false positives counted as abandoned (rounded up), and AMD off meaning that the
telephony's machine classification is not used."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from outdial.campaign import model
from outdial.core.errors import FailedPrecondition, InvalidArgument
from outdial.pacing.actions import amd_estimate, amd_on, carrier_event
from outdial.pacing.calls import Event
from outdial.rules import law
from outdial.telephony.base import Answer, CallEvent, EventKind

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _uk(**over: object) -> dict[str, object]:
    s = model.defaults("UK")
    s.update(seller_name="Acme Ltd", opt_out_number="+442079460000", caller_id="+442079460958", **over)
    model.validate("UK spring", s, None, None)
    return s


def test_a_uk_campaign_with_amd_needs_its_estimate_and_its_basis() -> None:
    s = _uk()
    assert s["amd"] == "on" and s["amd_false_positive_rate"] is None
    with pytest.raises(FailedPrecondition) as err:
        model.check_amd(s)
    assert err.value.error_id == "amd_estimate_required" and "amd_false_positive_rate" in str(err.value)
    model.check_amd(_uk(amd="off"))
    model.check_amd(_uk(amd_false_positive_rate=0.0, amd_false_positive_basis="vendor test report 2026-03"))
    # Outside the UK no rule asks for it.
    us = model.defaults("US")
    model.check_amd(us)
    refusal = law.amd_estimate_refusal("UK", amd=True, false_positive_rate=0.1, basis=" ")
    assert refusal.startswith("amd_false_positive_basis:")


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"amd": "maybe"}, "amd"),
        ({"amd_false_positive_rate": -0.1, "amd_false_positive_basis": "x"}, "amd_false_positive_rate"),
        ({"amd_false_positive_rate": 0.1}, "amd_false_positive_basis"),
        (
            {"amd_false_positive_rate": 0.1, "amd_false_positive_basis": "x" * 2001},
            "amd_false_positive_basis",
        ),
    ],
)
def test_bad_amd_settings_name_the_field(over: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        _uk(**over)
    assert err.value.field == field


def test_false_positives_count_as_abandoned_rounded_up() -> None:
    assert law.with_amd_false_positives("UK", 100, 2, 30, 0.05) == (102, 4, 2)
    assert law.with_amd_false_positives("UK", 100, 2, 30, 0.1) == (103, 5, 3)
    assert law.with_amd_false_positives("UK", 100, 2, 30, None) == (100, 2, 0)
    assert law.with_amd_false_positives("UK", 100, 2, 30, 0.1, amd=False) == (100, 2, 0)
    assert law.with_amd_false_positives("UK", 100, 2, 0, 0.1) == (100, 2, 0)
    # An estimate a campaign states is never ignored, whatever its jurisdiction.
    assert law.with_amd_false_positives("US", 100, 2, 30, 0.1) == (103, 5, 3)


def test_amd_off_takes_every_answer_for_a_person() -> None:
    machine = CallEvent(call_id="c1", kind=EventKind.ANSWERED, at_ms=1, answer=Answer.MACHINE)
    assert carrier_event(machine) is Event.ANSWERED_MACHINE
    assert carrier_event(machine, amd=False) is Event.ANSWERED_HUMAN
    assert amd_on({}) and not amd_on({"amd": "off"})
    assert amd_estimate({"amd_false_positive_rate": 0.2}) == 0.2
    assert amd_estimate({"amd": "off", "amd_false_positive_rate": 0.2}) is None
    assert amd_estimate({}) is None


def test_the_campaign_proto_round_trips_the_amd_settings() -> None:
    s = _uk(amd_false_positive_rate=0.12, amd_false_positive_basis="measured")
    rec = model.CampaignRecord("c1", "UK spring", "", "draft", s, None, None, *(2 * [NOW]))
    msg = rec.to_proto()
    assert msg.amd == 1 and msg.amd_false_positive_rate == pytest.approx(0.12)
    _, _, back, _, _ = model.apply_proto(None, msg, None)
    assert back["amd"] == "on" and back["amd_false_positive_rate"] == pytest.approx(0.12)
    assert back["amd_false_positive_basis"] == "measured"
    assert (
        not model.CampaignRecord("c2", "x", "", "draft", _uk(), None, None, *(2 * [NOW]))
        .to_proto()
        .HasField("amd_false_positive_rate")
    )
