"""The pacing core's tick decision: stop reasons, fallbacks, line caps and capacity loss."""

from __future__ import annotations

from dataclasses import replace

from outdial.pacing.budget import budget_view
from outdial.pacing.planner import Planner, RingingCall, TickInput, effective_params
from outdial.pacing.snapshot import AgentSnap, Estimates, PacingParams
from outdial.rules.law import MIN_RING_S

EST = Estimates(0.25, 0.01, 15.0, 25.0, 120.0, 15.0, 5000, True)
ROOMY = budget_view(0.03, 30 * 86400, 1000, 10, 100, 1)


def tick(
    agents: list[str],
    ringing: list[RingingCall] | None = None,
    *,
    algorithm: str = "predictive",
    reachable: bool = True,
    stop: str = "",
    waiting: int = 0,
    est: Estimates = EST,
    lines_per_agent: int = 3,
) -> TickInput:
    return TickInput(
        now_s=1000.0,
        params=PacingParams(algorithm=algorithm, max_lines_per_agent=lines_per_agent),
        agents=tuple(AgentSnap(s, 30.0) for s in agents),
        ringing=tuple(ringing or ()),
        answered_waiting=waiting,
        estimates=est,
        budget=ROOMY,
        agents_reachable=reachable,
        stop_reason=stop,
    )


def test_stop_reasons_launch_nothing() -> None:
    p = Planner()
    assert p.plan(tick(["ready"] * 5, stop="campaign not active")).launch == 0
    assert p.plan(tick([])).reason == "no agent logged in"
    assert p.plan(tick(["paused", "paused"])).reason == "every agent paused"
    assert p.plan(tick(["ready"] * 3, reachable=False)).reason == "agent service unreachable"


def test_progressive_holds_one_agent_per_call_and_counts_lines_already_claiming_them() -> None:
    p = Planner()
    plan = p.plan(tick(["ready"] * 4, algorithm="progressive"))
    assert (plan.launch, plan.reserve_agent) == (4, True)
    # Two ready agents already covered: one by a held ringing call, one by an unreserved one.
    held = [RingingCall(3.0, reserved=True), RingingCall(4.0)]
    plan = p.plan(tick(["ready", "ready", "reserved", "ready"], held, algorithm="progressive"))
    assert plan.launch == 2


def test_unconfident_estimates_fall_back_to_reserved_progressive() -> None:
    unsure = Estimates(0.25, 0.2, 15.0, 25.0, 120.0, 15.0, 10, False)
    plan = Planner().plan(tick(["ready"] * 3, est=unsure))
    assert plan.reserve_agent and plan.decision.mode == "progressive"
    assert plan.reason.startswith("estimates not confident yet")


def test_an_unknown_algorithm_is_progressive() -> None:
    plan = Planner().plan(tick(["ready", "ready"], algorithm="buzz"))
    assert plan.decision.mode == "progressive" and plan.launch == 2


def test_agents_vanishing_release_ripe_ringing_calls_only() -> None:
    ages = [float(a) for a in range(0, 20)]  # 20 lines ringing, 0..19 s
    ringing = [RingingCall(a) for a in ages]
    plan = Planner().plan(tick([], ringing))
    assert plan.launch == 0
    released = [ages[i] for i in plan.cancel]
    assert released and all(a >= MIN_RING_S for a in released)
    assert len(released) == sum(1 for a in ages if a >= MIN_RING_S)
    # The same when the agent service cannot be reached, although Redis still lists the agents.
    plan = Planner().plan(tick(["ready"] * 10, ringing, reachable=False))
    assert plan.launch == 0 and [ages[i] for i in plan.cancel] == released


def test_partial_capacity_loss_releases_only_the_surplus_oldest_first() -> None:
    ringing = [RingingCall(float(a)) for a in (16, 17, 18, 19, 20, 2, 3)]
    # Two agents, two lines each: room for 4 of the 7 lines, so 3 go, the oldest ripe ones.
    plan = Planner().plan(tick(["on_call", "wrap_up"], ringing, lines_per_agent=2))
    assert plan.launch == 0
    assert sorted(ringing[i].age_s for i in plan.cancel) == [18.0, 19.0, 20.0]


def test_calls_with_a_held_agent_are_never_released() -> None:
    ringing = [RingingCall(30.0, reserved=True), RingingCall(31.0, reserved=True), RingingCall(32.0)]
    plan = Planner().plan(tick([], ringing))
    assert [ringing[i].reserved for i in plan.cancel] == [False]


def test_staffed_lines_are_left_alone() -> None:
    ringing = [RingingCall(float(a)) for a in range(10, 30)]
    plan = Planner().plan(tick(["on_call"] * 10, ringing))
    assert plan.cancel == ()


def test_preview_shows_one_lead_to_each_ready_agent_and_dials_nothing_itself() -> None:
    p = Planner()
    plan = p.plan(tick(["ready", "ready", "reserved", "on_call", "paused"], algorithm="preview"))
    assert (plan.flow, plan.launch, plan.reserve_agent) == ("preview", 2, False)
    assert p.plan(tick([], algorithm="preview")).launch == 0
    assert p.plan(tick(["paused"], algorithm="preview")).reason == "every agent paused"
    assert p.plan(tick(["ready"] * 3, algorithm="preview", reachable=False)).launch == 0
    assert p.plan(tick(["ready"] * 3, algorithm="preview", stop="campaign not active")).launch == 0
    # Preview calls ringing hold their agent: never surplus, whatever happens to the others.
    held = [RingingCall(30.0, reserved=True)] * 3
    assert p.plan(tick(["reserved"] * 3, held, algorithm="preview")).cancel == ()


def test_agentless_needs_no_agent_and_keeps_its_lines() -> None:
    p = Planner()
    base = replace(tick([], algorithm="agentless"), params=PacingParams(algorithm="agentless", max_lines=4))
    assert (p.plan(base).flow, p.plan(base).launch) == ("agentless", 4)
    busy = replace(base, ringing=(RingingCall(20.0), RingingCall(1.0)), other_lines=1)
    plan = p.plan(busy)
    assert plan.launch == 1 and plan.cancel == ()  # no agent: nothing is "surplus", nothing released
    assert p.plan(replace(base, stop_reason="campaign not active")).launch == 0
    assert p.plan(replace(base, agents_reachable=False)).launch == 4


def test_pacing_settings_never_turn_preview_or_agentless_into_a_paced_campaign() -> None:
    for mode in ("preview", "agentless"):
        params = effective_params({"dial_mode": mode, "agentless_lines": 7}, {"algorithm": "predictive"})
        assert params.algorithm == mode and params.max_lines == 7
    assert (
        effective_params({"dial_mode": "progressive"}, {"algorithm": "predictive"}).algorithm == "predictive"
    )
