from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from outdial.campaign.feeder import lead_states, window_decision
from outdial.rules.windows import WindowSpec

ET = "America/New_York"


def test_area_code_state_law_applies_to_lead_without_that_address() -> None:
    # A Miami (305) number of a lead whose address says New York: Florida's 20:00 limit applies too.
    assert lead_states("NY", "+13055550100") == ("FL", "NY")
    assert lead_states("", "+12125550100") == ("NY",)
    assert lead_states("", "+442079460958") == (None,)
    at = datetime(2026, 1, 13, 20, 30, tzinfo=ZoneInfo(ET)).astimezone(UTC)
    d = window_decision(at, (ET,), WindowSpec(), "US", lead_states("NY", "+13055550100"), timedelta(0))
    assert not d.allowed and d.next_open == datetime(2026, 1, 14, 8, tzinfo=ZoneInfo(ET)).astimezone(UTC)
    assert window_decision(
        at, (ET,), WindowSpec(), "US", lead_states("NY", "+12125550100"), timedelta(0)
    ).allowed
