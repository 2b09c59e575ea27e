from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from outdial.rules.caps import (
    check_attempts,
    check_uk_abandon_rule,
    default_max_calls_24h,
    next_attempt_allowed_at,
)

T0 = datetime(2026, 3, 10, 23, 0, tzinfo=UTC)


def test_state_defaults() -> None:
    assert default_max_calls_24h("US", "FL") == 3
    assert default_max_calls_24h("US", "ok") == 3
    assert default_max_calls_24h("US", "MD") == 3
    assert default_max_calls_24h("US", "NY") is None
    assert default_max_calls_24h("US", None) is None
    assert default_max_calls_24h("UK", "FL") is None


def test_rolling_not_midnight() -> None:
    times = [T0 - timedelta(minutes=50), T0 - timedelta(minutes=30), T0 - timedelta(minutes=10)]
    # Just after midnight a calendar-day counter would reset; the rolling window does not.
    after_midnight = T0 + timedelta(hours=1, minutes=5)
    d = check_attempts(times, after_midnight, 3)
    assert not d.allowed and d.reason == "max_calls_24h"
    assert check_attempts(times, times[0] + timedelta(hours=24), 3).allowed
    assert not check_attempts(times, times[0] + timedelta(hours=24) - timedelta(seconds=1), 3).allowed
    assert check_attempts(times, after_midnight, None).allowed


def test_uk_abandon_72h() -> None:
    assert check_uk_abandon_rule(None, T0).allowed
    d = check_uk_abandon_rule(T0, T0 + timedelta(hours=71, minutes=59))
    assert not d.allowed and d.reason == "uk_abandon_72h"
    assert check_uk_abandon_rule(T0, T0 + timedelta(hours=72)).allowed


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=72 * 3600), max_size=12),
    st.integers(min_value=0, max_value=72 * 3600),
    st.integers(min_value=1, max_value=5),
)
def test_cap_matches_definition(offsets: list[int], now_off: int, cap: int) -> None:
    times = [T0 + timedelta(seconds=s) for s in offsets]
    now = T0 + timedelta(seconds=now_off)
    recent = [t for t in times if now - timedelta(hours=24) < t <= now]
    assert check_attempts(times, now, cap).allowed == (len(recent) < cap)
    nxt = next_attempt_allowed_at(times, now, cap)
    assert nxt is not None and nxt >= now
    assert check_attempts(times, nxt, cap).allowed or any(now < t <= nxt for t in times)
    if nxt > now:
        assert not check_attempts(times, nxt - timedelta(seconds=1), cap).allowed
