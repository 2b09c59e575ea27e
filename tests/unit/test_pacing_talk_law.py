"""The free-up predictor: the talk-time law learned from recent talks, and the chance that a busy agent is
done within a horizon given how long they have talked already (the hazard)."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from outdial.pacing.algorithms import Predictive, _model, busy_free
from outdial.pacing.estimates import TALK_GRID_S, OnlineEstimator, TalkSurvival, free_within
from outdial.pacing.snapshot import AgentSnap, BudgetView, Estimates, PacingParams, Snapshot


def lognormal_talks(n: int, seed: int = 3, mean: float = 120.0, sigma: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    mu = math.log(mean) - 0.5 * sigma * sigma
    return [rng.lognormvariate(mu, sigma) for _ in range(n)]


def test_no_law_until_enough_talks() -> None:
    law = TalkSurvival(min_samples=200)
    for t in lognormal_talks(199):
        law.add(t)
    assert law.survival() == ()
    law.add(60.0)
    s = law.survival()
    assert s[0] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(s))  # a survival function never rises


def test_survival_matches_the_empirical_distribution() -> None:
    talks = lognormal_talks(20_000)
    law = TalkSurvival(memory=1e9)  # no discount: the plain empirical law
    for t in talks:
        law.add(t)
    s = law.survival()
    arr = np.array(talks)
    for x in (5.0, 30.0, 60.0, 120.0, 300.0, 600.0):
        assert s[int(x / TALK_GRID_S)] == pytest.approx(float((arr > x).mean()), abs=1e-4)


def test_free_within_matches_the_empirical_conditional_frequency() -> None:
    # P(done within h | talked e already), predicted from one sample of talks, checked on another
    law = TalkSurvival(memory=1e9)
    for t in lognormal_talks(50_000, seed=1):
        law.add(t)
    check = np.array(lognormal_talks(50_000, seed=2))
    elapsed = np.array([0.0, 10.0, 45.0, 120.0, 300.0])
    horizons = np.array([-3.0, 2.0, 10.0, 20.0])
    pred = free_within(law.survival(), 120.0, elapsed, horizons)
    for i, e in enumerate(elapsed):
        alive = check[check > e]
        for j, h in enumerate(horizons):
            truth = float((alive <= e + max(h, 0.0)).mean()) if h > 0 else 0.0
            assert pred[i, j] == pytest.approx(truth, abs=0.02), (e, h)
    # lognormal talks: how soon a call ends depends on how long it has lasted (the hazard rises, then
    # falls), which the exponential law (the same for every agent) cannot tell
    assert pred[3, 3] > pred[0, 3] + 0.05
    assert pred[3, 3] > pred[4, 3] + 0.03


def test_exponential_without_a_law_and_beyond_its_reach() -> None:
    horizons = np.array([0.0, 10.0, 30.0])
    expo = 1.0 - np.exp(-np.maximum(horizons, 0.0) / 100.0)
    none = free_within((), 100.0, np.array([0.0, 500.0]), horizons)
    assert none == pytest.approx(np.vstack([expo, expo]))
    # every talk under 60 s: an agent still talking at 100 s is beyond what the law knows
    short = tuple(1.0 if i * TALK_GRID_S < 60.0 else 0.0 for i in range(361))
    far = free_within(short, 100.0, np.array([100.0]), horizons)
    assert far[0] == pytest.approx(expo)


def test_the_estimator_publishes_the_law_in_its_snapshot() -> None:
    est = OnlineEstimator()
    assert est.snapshot().talk_survival == ()
    for t in lognormal_talks(400):
        est.observe_talk(t)
    s = est.snapshot().talk_survival
    assert len(s) == 361
    assert s[0] == 1.0 and s[-1] < 0.01


def _snap(agents: tuple[AgentSnap, ...], survival: tuple[float, ...]) -> Snapshot:
    est = Estimates(0.25, 0.01, 15.0, 20.0, 120.0, 15.0, 5000, True, talk_survival=survival)
    budget = BudgetView(
        cap=0.03, window_s=86400.0, live_answers=5000, abandoned=50, remaining=100.0, rate_60min=0.0
    )
    return Snapshot(0.0, agents, (), 0, est, budget, PacingParams())


def test_the_pacer_predicts_each_busy_agent_from_their_time_on_the_call() -> None:
    # half the calls are quick questions (25-35 s), half last about 5 minutes
    rng = random.Random(5)
    law = TalkSurvival(memory=1e9)
    for _ in range(20_000):
        law.add(rng.uniform(25.0, 35.0) if rng.random() < 0.5 else rng.uniform(270.0, 330.0))
    agents = (AgentSnap("on_call", 20.0), AgentSnap("on_call", 60.0), AgentSnap("reserved", 2.0))
    m = _model(0.25, 0.15, 15.0, 4, 25.0, 20.0, 120.0, 15.0)
    with_law = busy_free(_snap(agents, law.survival()), m)
    without = busy_free(_snap(agents, ()), m)
    assert with_law.shape == without.shape == (3, len(m.taus))
    assert (without[0] == without[1]).all()  # exponential: time on the call tells nothing
    assert with_law[0, -1] > with_law[1, -1]  # a short call so far ends sooner than a long one
    assert with_law[0, -1] > 0.35 and with_law[1, -1] < 0.01
    # and the decision uses it: agents 20 s into their calls may be quick questions about to end; agents
    # 60 s in are on long calls (3 ready agents take the answers that come before any wrap-up ends)
    ready = tuple(AgentSnap("ready", 1.0) for _ in range(3))
    early = ready + tuple(AgentSnap("on_call", 20.0) for _ in range(30))
    late = ready + tuple(AgentSnap("on_call", 60.0) for _ in range(30))
    assert (
        Predictive().decide(_snap(early, law.survival())).calls
        > Predictive().decide(_snap(late, law.survival())).calls
    )
