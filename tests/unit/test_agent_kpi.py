"""Occupancy and idle time from a scripted agent day (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from outdial.agent.kpi import StateEvent, compute_kpis

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_scripted_day() -> None:
    # 09:00 login ready; 09:10 call (10 min talk, 5 min wrap); ready 09:25; 09:30 call (20 talk, 0 wrap
    # timeout skipped via immediate disposition); 09:50 ready; 10:00 lunch pause until 10:30; ready; 10:40 a
    # 1 s hand-over then 14 min talk, 5 min wrap; 11:00 logout. Logged out after: counts nothing.
    day = [
        StateEvent("ready", at(0)),
        StateEvent("reserved", at(10), "a"),
        StateEvent("on_call", at(10), "a"),
        StateEvent("wrap_up", at(20), "a"),
        StateEvent("ready", at(25)),
        StateEvent("on_call", at(30), "b"),
        StateEvent("ready", at(50)),
        StateEvent("paused", at(60), reason="lunch"),
        StateEvent("ready", at(90)),
        StateEvent("reserved", at(100), "c"),
        StateEvent("on_call", at(100 + 1 / 60), "c"),
        StateEvent("wrap_up", at(115), "c"),
        StateEvent("ready", at(120)),
        StateEvent("logged_out", at(120)),
    ]
    day = [StateEvent(e.state, e.at, e.call_id, e.reason, seq=i) for i, e in enumerate(day)]
    k = compute_kpis(reversed(day), until=at(600))
    talk = (10 + 20 + 15 - 1 / 60) * 60
    wrap = (5 + 5) * 60
    assert k.logged_in_s == pytest.approx(120 * 60)
    assert k.talk_s == pytest.approx(talk)
    assert k.wrap_s == pytest.approx(wrap)
    assert k.paused_s == pytest.approx(30 * 60)
    assert k.seconds["reserved"] == pytest.approx(1)
    assert k.occupancy == pytest.approx((talk + wrap) / (120 * 60))
    assert k.idle_s == pytest.approx((10 + 5 + 10 + 10) * 60)
    assert k.idle_gaps == pytest.approx([600, 300, 600, 600])
    assert k.mean_idle_between_calls_s == pytest.approx(525)
    assert k.calls == 3


def test_open_state_counts_until_now_and_no_login_is_zero() -> None:
    k = compute_kpis([StateEvent("ready", at(0)), StateEvent("on_call", at(30))], until=at(60))
    assert k.occupancy == pytest.approx(0.5)
    assert compute_kpis([], until=at(60)).occupancy == 0.0
    with pytest.raises(ValueError):
        compute_kpis([StateEvent("dancing", at(0))], until=at(1))
