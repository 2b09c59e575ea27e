"""Pure pieces of the agent package: duration distributions of simulated agents, counts from the pacing
view, status conversion."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from outdial.agent.service import agent_counts, status_pb
from outdial.agent.settings import MAX_OFFER_DEADLINE_MS, AgentSettings
from outdial.agent.simulated import Distribution
from outdial.v1 import common_pb2


@pytest.mark.parametrize("kind", ["exp", "lognormal", "fixed"])
def test_distributions_have_the_mean_they_are_given(kind: str) -> None:
    rng = random.Random(11)
    values = [Distribution(30.0, kind).sample(rng) for _ in range(20_000)]
    assert statistics.fmean(values) == pytest.approx(30.0, rel=0.05)
    assert min(values) >= 0


def test_distribution_rejects_unknown_kind_and_zero_mean_is_zero() -> None:
    assert Distribution(0.0).sample(random.Random(1)) == 0.0
    with pytest.raises(ValueError):
        Distribution(1.0, "uniform").sample(random.Random(1))


def test_counts_from_the_pacing_view_ignore_garbage() -> None:
    view = [
        json.dumps({"state": s, "since_ms": 1, "call_id": ""})
        for s in ("ready", "ready", "on_call", "paused")
    ]
    counts = agent_counts([*view, "not json", json.dumps({"state": "dancing"})])
    assert counts == {"ready": 2, "reserved": 0, "on_call": 1, "wrap_up": 0, "paused": 1}


def test_status_from_the_agent_hash() -> None:
    st = status_pb(
        "ann",
        {
            "state": "paused",
            "since_ms": "1767600000000",
            "reason": "lunch",
            "campaigns": json.dumps([{"id": "c1", "priority": 7}]),
            "skills": json.dumps(["fr"]),
            "session_id": "s1",
        },
    )
    assert st.state == common_pb2.AGENT_STATE_PAUSED and st.pause_reason == "lunch"
    assert [(c.campaign_id, c.priority) for c in st.campaigns] == [("c1", 7)]
    assert st.since.ToMilliseconds() == 1767600000000 and list(st.skills) == ["fr"]
    assert status_pb("x", {}).state == common_pb2.AGENT_STATE_LOGGED_OUT


def test_offer_deadline_setting_can_never_exceed_two_seconds() -> None:
    assert AgentSettings().offer_deadline_ms == MAX_OFFER_DEADLINE_MS == 2000
    assert AgentSettings(offer_deadline_ms=500).offer_deadline_ms == 500
    with pytest.raises(ValueError):
        AgentSettings(offer_deadline_ms=2500)
