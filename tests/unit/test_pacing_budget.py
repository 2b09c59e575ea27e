"""The abandonment budget: exact rolling counts over the window, and what is left of the cap."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outdial.pacing.budget import AbandonBudget


def test_remaining_is_cap_times_live_minus_abandoned() -> None:
    b = AbandonBudget(cap=0.03, window_s=86400.0)
    for i in range(200):
        b.record_live(float(i), abandoned=i % 50 == 0)  # 4 abandoned out of 200
    v = b.view(300.0)
    assert (v.live_answers, v.abandoned) == (200, 4)
    assert v.remaining == pytest.approx(0.03 * 200 - 4)
    assert v.rate == pytest.approx(0.02)
    assert not v.spent


def test_events_leave_the_window_exactly_at_its_edge() -> None:
    b = AbandonBudget(cap=0.03, window_s=100.0)
    b.record_live(10.0, True)
    b.record_live(50.0, False)
    assert b.view(109.999).abandoned == 1
    v = b.view(110.0)  # the event at 10 s is now exactly window_s old: out
    assert (v.live_answers, v.abandoned) == (1, 0)
    assert b.view(150.0).live_answers == 0


def test_spent_when_over_the_cap_or_the_last_hour_over_five_percent() -> None:
    b = AbandonBudget(cap=0.03, window_s=30 * 86400.0)
    for i in range(100):
        b.record_live(float(i), abandoned=i < 3)
    assert b.view(200.0).spent  # 3 of 100 = the cap: nothing left
    fresh = AbandonBudget(cap=0.03, window_s=30 * 86400.0)
    for i in range(1000):
        fresh.record_live(float(i * 10), abandoned=False)
    for i in range(20):
        fresh.record_live(10_000.0 + i, abandoned=i < 6)  # 6 of the last hour's ~380 live: fine
    assert not fresh.view(10_100.0).spent
    for i in range(20):
        fresh.record_live(10_100.0 + i, abandoned=True)
    v = fresh.view(10_200.0)
    assert v.remaining > 0
    assert v.rate_60min > 0.05
    assert v.spent


def test_late_events_are_still_counted_exactly() -> None:
    b = AbandonBudget(cap=0.03, window_s=100.0)
    b.record_live(50.0, False)
    b.record_live(20.0, True)  # arrives late
    assert b.view(100.0).abandoned == 1
    assert b.view(120.0).abandoned == 0
    assert b.view(120.0).live_answers == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 5000), st.booleans()), max_size=200),
    st.floats(1, 2000),
    st.lists(st.floats(0, 8000), min_size=1, max_size=10),
)
def test_matches_brute_force(events: list[tuple[float, bool]], window: float, nows: list[float]) -> None:
    events = sorted(events)
    b = AbandonBudget(cap=0.03, window_s=window)
    fed = 0
    for now in sorted(nows):
        while fed < len(events) and events[fed][0] <= now:
            b.record_live(*events[fed])
            fed += 1
        inside = [ab for t, ab in events[:fed] if now - window < t <= now]
        hour = [ab for t, ab in events[:fed] if now - min(3600.0, window) < t <= now]
        v = b.view(now)
        assert v.live_answers == len(inside)
        assert v.abandoned == sum(inside)
        assert v.live_60min == len(hour)
        assert v.abandoned_60min == sum(hour)


def test_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        AbandonBudget(cap=1.5)
    with pytest.raises(ValueError):
        AbandonBudget(window_s=0)


def test_many_events_stay_cheap_and_exact() -> None:
    rng = random.Random(3)
    b = AbandonBudget(cap=0.03, window_s=3600.0)
    t = 0.0
    kept: list[tuple[float, bool]] = []
    for _ in range(50_000):
        t += rng.expovariate(5.0)
        ab = rng.random() < 0.03
        b.record_live(t, ab)
        kept.append((t, ab))
    v = b.view(t)
    inside = [ab for s, ab in kept if s > t - 3600.0]
    assert (v.live_answers, v.abandoned) == (len(inside), sum(inside))
