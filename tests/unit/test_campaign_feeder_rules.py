"""The campaign report's name for what a refused lead needs (the window and state rules of the feeder are
tested in test_rules_place.py)."""

from __future__ import annotations

from outdial.campaign.feeder import compliance_block


def test_the_campaign_report_names_what_a_refused_lead_needs() -> None:
    assert compliance_block(["wireless.no_consent"]) == "consent"
    assert compliance_block(["dnc.national", "consent.required"]) == "consent"
    assert compliance_block(["line_type.unknown"]) == "fresh_list"
    assert compliance_block(["dnc.national", "line_type.unknown"]) == "fresh_list"
    # consent would not open it: an opt-out, a stale registry, an unavailable check
    assert compliance_block(["dnc.internal", "wireless.no_consent"]) == ""
    assert compliance_block(["registry.stale", "line_type.unknown"]) == ""
    assert compliance_block(["compliance.unavailable"]) == ""
    assert compliance_block([]) == ""
