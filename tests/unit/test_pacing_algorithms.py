"""Pacing algorithms on constructed snapshots."""

from __future__ import annotations

import itertools

import pytest

from outdial.pacing.algorithms import (
    ALGORITHMS,
    Predictive,
    _exact_tail,
    _model,
    count,
    target_rate,
)
from outdial.pacing.planner import make_algorithm
from outdial.pacing.snapshot import (
    MIN_RING_S,
    AgentSnap,
    BudgetView,
    Estimates,
    PacingParams,
    Snapshot,
)

EST = Estimates(
    live_answer_rate=0.25,
    live_answer_rate_sd=0.01,
    mean_answer_delay_s=15.0,
    mean_no_answer_release_s=25.0,
    mean_talk_s=120.0,
    mean_wrap_s=15.0,
    samples=5000,
    confident=True,
)
BUDGET = BudgetView(
    cap=0.03, window_s=30 * 86400.0, live_answers=5000, abandoned=50, remaining=100.0, rate_60min=0.01
)


def snap(
    agents: tuple[AgentSnap, ...],
    *,
    in_flight: tuple[float, ...] = (),
    waiting: int = 0,
    est: Estimates = EST,
    budget: BudgetView = BUDGET,
    params: PacingParams | None = None,
    algorithm: str = "predictive",
) -> Snapshot:
    return Snapshot(
        now_s=1000.0,
        agents=agents,
        in_flight_ages_s=in_flight,
        answered_waiting=waiting,
        estimates=est,
        budget=budget,
        params=params or PacingParams(algorithm=algorithm),
    )


def ready(n: int) -> tuple[AgentSnap, ...]:
    return tuple(AgentSnap("ready", 3.0) for _ in range(n))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_no_agent_logged_in_means_no_call(name: str) -> None:
    d = make_algorithm(name).decide(snap((), algorithm=name))
    assert d.calls == 0
    assert d.mode == "none"


@pytest.mark.parametrize("name", ALGORITHMS)
def test_all_agents_paused_means_no_call(name: str) -> None:
    agents = tuple(AgentSnap("paused", 10.0) for _ in range(5))
    assert make_algorithm(name).decide(snap(agents, algorithm=name)).calls == 0


@pytest.mark.parametrize("name", ["power", "predictive"])
def test_budget_spent_falls_back_to_agent_reserved_progressive(name: str) -> None:
    spent = BudgetView(
        cap=0.03, window_s=86400.0, live_answers=1000, abandoned=31, remaining=-1.0, rate_60min=0.02
    )
    d = make_algorithm(name).decide(snap(ready(4), budget=spent, algorithm=name))
    assert d.mode == "progressive"
    assert d.reserve_agent is True
    assert d.calls == 4
    assert "budget" in d.reason


def test_last_hour_over_its_cap_falls_back_to_progressive() -> None:
    hot = BudgetView(
        cap=0.03, window_s=86400.0, live_answers=1000, abandoned=5, remaining=25.0, rate_60min=0.06
    )
    d = make_algorithm("predictive").decide(snap(ready(4), budget=hot))
    assert (d.mode, d.reserve_agent, d.calls) == ("progressive", True, 4)


def test_uncertain_estimates_fall_back_to_progressive() -> None:
    unsure = Estimates(0.2, 0.1, 15.0, 25.0, 120.0, 15.0, samples=3, confident=False)
    d = make_algorithm("predictive").decide(snap(ready(3), est=unsure))
    assert (d.mode, d.reserve_agent, d.calls) == ("progressive", True, 3)


def test_progressive_counts_only_uncovered_ready_agents() -> None:
    agents = (*ready(5), AgentSnap("reserved", 1.0), AgentSnap("on_call", 30.0))
    # one ringing call belongs to the reserved agent, two others are unreserved leftovers; one call waits
    d = make_algorithm("progressive").decide(snap(agents, in_flight=(1.0, 2.0, 3.0), waiting=1))
    assert d.calls == 5 - 1 - 2
    assert d.reserve_agent


@pytest.mark.parametrize("name", ALGORITHMS)
def test_lines_cap_is_respected(name: str) -> None:
    agents = (*ready(2), AgentSnap("on_call", 5.0), AgentSnap("paused", 1.0))
    params = PacingParams(algorithm=name, power_ratio=50.0, max_lines_per_agent=3)
    in_flight = tuple(float(i) for i in range(7))
    d = make_algorithm(name).decide(snap(agents, in_flight=in_flight, params=params))
    # 3 non-paused agents x 3 lines = 9 lines; 7 ringing -> at most 2 more
    assert 0 <= d.calls <= 2
    d2 = make_algorithm(name).decide(snap(agents, in_flight=(*in_flight, 8.0, 9.0), params=params))
    assert d2.calls == 0


@pytest.mark.parametrize("name", ALGORITHMS)
def test_ring_time_never_below_legal_minimum(name: str) -> None:
    d = make_algorithm(name).decide(snap(ready(2), params=PacingParams(algorithm=name, ring_timeout_s=5.0)))
    assert d.ring_timeout_s == MIN_RING_S
    d = make_algorithm(name).decide(snap(ready(2), params=PacingParams(algorithm=name, ring_timeout_s=30.0)))
    assert d.ring_timeout_s == 30.0


def test_power_dials_its_ratio_per_ready_agent() -> None:
    params = PacingParams(algorithm="power", power_ratio=2.0)
    d = make_algorithm("power").decide(snap(ready(3), in_flight=(4.0,), params=params))
    assert d.calls == 2 * 3 - 1
    assert not d.reserve_agent


def test_predictive_dials_ahead_of_ready_agents_at_low_answer_rate() -> None:
    d = make_algorithm("predictive").decide(snap(ready(10)))
    assert d.mode == "predictive"
    assert not d.reserve_agent
    # at p = 0.25, ten idle agents need far more than ten calls
    assert d.calls > 10


def test_predictive_holds_back_when_ringing_calls_already_cover_the_agents() -> None:
    agents = (*ready(2), *(AgentSnap("on_call", 10.0) for _ in range(8)))
    # 30 calls ringing for 12-20 s: many answers are about to arrive for 2 ready agents
    in_flight = tuple(12.0 + (i % 9) for i in range(30))
    d = make_algorithm("predictive").decide(snap(agents, in_flight=in_flight))
    assert d.calls == 0


def test_predictive_dials_more_when_agents_are_about_to_finish_wrap_up() -> None:
    talking = tuple(AgentSnap("on_call", 10.0) for _ in range(10))
    finishing = tuple(AgentSnap("wrap_up", 14.0) for _ in range(10))
    a = make_algorithm("predictive").decide(snap(talking))
    b = make_algorithm("predictive").decide(snap(finishing))
    assert b.calls > a.calls


def test_predictive_dials_less_with_a_smaller_budget() -> None:
    agents = (*ready(5), *(AgentSnap("on_call", 60.0) for _ in range(45)))
    loose = make_algorithm("predictive").decide(snap(agents))
    tight_budget = BudgetView(
        cap=0.03, window_s=86400.0, live_answers=5000, abandoned=50, remaining=100.0, rate_60min=0.04
    )
    tight = make_algorithm("predictive").decide(snap(agents, budget=tight_budget))
    assert tight.calls < loose.calls


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown pacing algorithm"):
        make_algorithm("buzz")


def test_target_spends_unspent_budget_and_saves_when_overspent() -> None:
    params = PacingParams()
    thrifty = BudgetView(
        cap=0.03, window_s=30 * 86400.0, live_answers=10_000, abandoned=50, remaining=250.0, rate_60min=0.0
    )
    lavish = BudgetView(
        cap=0.03, window_s=30 * 86400.0, live_answers=10_000, abandoned=280, remaining=20.0, rate_60min=0.0
    )
    assert target_rate(thrifty, params) > target_rate(lavish, params)
    assert target_rate(thrifty, params) <= 0.03
    assert target_rate(lavish, params) < 0.0225


def test_small_team_keeps_abandoned_calls_in_hand_for_the_hour() -> None:
    # 100 live answers in the last hour, 4 abandoned: one more and the hour is at its 5 % cap
    tight = BudgetView(
        cap=0.03,
        window_s=30 * 86400.0,
        live_answers=5000,
        abandoned=50,
        remaining=100.0,
        rate_60min=0.04,
        live_60min=100,
        abandoned_60min=4,
    )
    assert target_rate(tight, PacingParams()) == 0.0
    # It still dials, but only calls that will almost surely find an agent: handing over to progressive
    # would make few live answers and keep the hour's rate up for longer (the safety bug at answer rate
    # 0.10); near-safe predictive calls dilute it.
    d = make_algorithm("predictive").decide(snap(ready(4), budget=tight))
    roomy = make_algorithm("predictive").decide(snap(ready(4)))
    assert (d.mode, d.reserve_agent) == ("predictive", False)
    assert 4 <= d.calls < roomy.calls


def test_young_campaign_keeps_abandoned_calls_in_hand_for_the_long_window() -> None:
    # The first hour of a campaign is its whole 30-day window: 100 live answers, 2 abandoned, 1 left.
    young = BudgetView(
        cap=0.03,
        window_s=30 * 86400.0,
        live_answers=100,
        abandoned=2,
        remaining=1.0,
        rate_60min=0.02,
        live_60min=100,
        abandoned_60min=2,
    )
    assert target_rate(young, PacingParams()) == 0.0
    assert target_rate(BUDGET, PacingParams()) > 0.01


def _small_team() -> Snapshot:
    agents = (
        AgentSnap("ready", 4.0),
        AgentSnap("wrap_up", 9.0),
        *(AgentSnap("on_call", 30.0) for _ in range(3)),
    )
    return snap(agents, in_flight=(0.4, 6.2, 13.0, 19.5))


def test_small_team_risk_is_the_exact_count_of_the_bernoulli_terms() -> None:
    # The small-team path convolves the ringing calls' answers and the busy agents' frees exactly; check it
    # against plain enumeration of every outcome (2 ** 7 of them) for each instant of the horizon.
    s = _small_team()
    c = count(s)
    e = s.estimates
    m = _model(0.25, 0.0, 15.0, 4, 25.0, 25.0, 120.0, 15.0)
    assert e.live_answer_rate == 0.25
    tail = _exact_tail(s, c, m, room=3)
    for j, tau in enumerate(m.taus):
        q_calls = [m.by_age[int(a)][j] for a in s.in_flight_ages_s]
        q_busy = [m.on_call_free[j]] * c.on_call
        free = 1 + (1 if tau + 2.0 >= 15.0 - 9.0 else 0)
        for others in range(4):
            p_no_agent = 0.0
            for bits in itertools.product((0, 1), repeat=len(q_calls) + len(q_busy)):
                pr = 1.0
                for b, q in zip(bits, q_calls + q_busy, strict=True):
                    pr *= q if b else 1.0 - q
                answers = sum(bits[: len(q_calls)]) + others
                frees = free + sum(bits[len(q_calls) :])
                if answers >= frees:
                    p_no_agent += pr
            assert tail[j, others] == pytest.approx(p_no_agent, abs=1e-9)


def test_small_team_dials_where_the_normal_law_would_not() -> None:
    # Two ready agents, one call ringing: the next call can only miss an agent if the ringing one and
    # another free-up go wrong together. The normal law (tuned for big teams) puts its risk near 3 %.
    agents = (*ready(2), *(AgentSnap("on_call", 30.0) for _ in range(8)))
    s = snap(agents, in_flight=(2.0,))
    exact = Predictive().decide(s)
    normal = Predictive(exact_max_terms=0).decide(s)
    assert exact.calls > normal.calls
