"""The planner's pure helpers: effective pacing parameters (never ringing below 15 s), legal windows, and an
unknown algorithm name falling back to guarded progressive."""

from __future__ import annotations

from outdial.pacing.planner import Planner, abandon_limits, effective_params
from outdial.pacing.snapshot import AgentSnap, BudgetView, Estimates, PacingParams, Snapshot


def test_overrides_win_and_ring_time_never_below_15_s() -> None:
    cfg = {"dial_mode": "power", "power_ratio": 2.5, "ring_timeout_s": 10, "max_lines_per_agent": 2}
    p = effective_params(cfg, {})
    assert (p.algorithm, p.power_ratio, p.max_lines_per_agent, p.ring_timeout_s) == ("power", 2.5, 2, 15.0)
    p = effective_params(cfg, {"algorithm": "predictive", "ring_timeout_s": 30, "target_abandon_rate": 0.02})
    assert (p.algorithm, p.ring_timeout_s, p.target_abandon_rate) == ("predictive", 30.0, 0.02)
    assert effective_params({}, {}).algorithm == "progressive"


def test_abandonment_windows_by_jurisdiction() -> None:
    assert abandon_limits({"jurisdiction": "US"}, {})[:2] == (0.03, 30 * 86400)
    assert abandon_limits({"jurisdiction": "CA"}, {})[:2] == (0.05, 30 * 86400)
    assert abandon_limits({"jurisdiction": "UK"}, {})[:2] == (0.03, 86400)
    # A campaign may be stricter than the law, never looser.
    assert abandon_limits({"jurisdiction": "US", "abandon_cap": 0.02}, {})[0] == 0.02
    assert abandon_limits({"jurisdiction": "US", "abandon_cap": 0.10}, {})[0] == 0.03
    assert abandon_limits({}, {"short_window_cap": 0.04})[2] == 0.04
    assert abandon_limits({}, {"short_window_cap": 0.2})[2] == 0.05


def _snap(states: list[str], params: PacingParams) -> Snapshot:
    est = Estimates(0.25, 0.01, 15.0, 25.0, 120.0, 15.0, 5000, True)
    budget = BudgetView(0.03, 30 * 86400, 1000, 10, 20.0, 0.01)
    return Snapshot(0.0, tuple(AgentSnap(s, 10.0) for s in states), (), 0, est, budget, params)


def test_unknown_algorithm_is_guarded_progressive() -> None:
    algo = Planner("no-such-thing")
    d = algo.decide(_snap(["ready", "ready", "on_call"], PacingParams(algorithm="no-such-thing")))
    assert d.mode == "progressive" and d.calls == 2 and d.reserve_agent
    assert algo.decide(_snap([], PacingParams())).calls == 0
