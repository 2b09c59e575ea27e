"""The online estimator: converges, knows when it is unsure, notices an abrupt change."""

from __future__ import annotations

import random

import pytest

from outdial.pacing.estimates import OnlineEstimator


def feed(est: OnlineEstimator, rng: random.Random, n: int, p: float, machine: float = 0.15) -> None:
    for _ in range(n):
        u = rng.random()
        if u < p:
            est.observe_outcome(True, False, rng.gammavariate(4.0, 15.0 / 4.0))
        elif u < p + machine:
            est.observe_outcome(False, True, rng.gammavariate(4.0, 15.0 / 4.0))
        else:
            est.observe_outcome(False, False, 25.0 if rng.random() < 0.8 else 3.0)


def test_not_confident_at_start() -> None:
    est = OnlineEstimator()
    s = est.snapshot()
    assert not s.confident
    assert s.samples == 0


def test_converges_to_the_true_rates_and_times() -> None:
    rng = random.Random(7)
    est = OnlineEstimator()
    feed(est, rng, 5000, 0.25)
    for _ in range(300):
        est.observe_talk(rng.expovariate(1 / 120.0))
        est.observe_wrap(15.0)
    s = est.snapshot()
    assert s.confident
    assert s.live_answer_rate == pytest.approx(0.25, abs=0.03)
    assert s.live_answer_rate_sd < 0.02
    assert s.machine_rate == pytest.approx(0.15, abs=0.03)
    assert s.mean_answer_delay_s == pytest.approx(15.0, abs=1.5)
    assert 2.5 <= s.answer_delay_shape <= 6.0
    assert s.mean_talk_s == pytest.approx(120.0, rel=0.2)
    assert s.mean_wrap_s == pytest.approx(15.0)
    assert s.mean_no_answer_release_s == pytest.approx(0.8 * 25 + 0.2 * 3, abs=1.5)


def test_detects_a_drop_in_answer_rate_and_is_unsure_until_it_has_relearned() -> None:
    rng = random.Random(11)
    est = OnlineEstimator()
    feed(est, rng, 3000, 0.25)
    for _ in range(50):
        est.observe_talk(120.0)
    assert est.snapshot().confident
    assert est.changes == 0
    unsure_seen = False
    for _ in range(600):
        feed(est, rng, 1, 0.10)
        unsure_seen = unsure_seen or not est.snapshot().confident
    assert est.changes >= 1
    assert unsure_seen
    feed(est, rng, 1500, 0.10)
    s = est.snapshot()
    assert s.confident
    assert s.live_answer_rate == pytest.approx(0.10, abs=0.03)


def test_no_false_alarm_on_a_steady_rate() -> None:
    rng = random.Random(5)
    est = OnlineEstimator()
    feed(est, rng, 20_000, 0.25)
    assert est.changes == 0
