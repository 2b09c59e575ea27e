"""The pacing simulator: deterministic, common random numbers, and the algorithms' behaviour over a day."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from outdial.cli import base
from outdial.cli.main import main
from outdial.pacing.snapshot import PacingParams
from outdial.sim.pacing import CLAIRVOYANT, PacingSim, SimConfig, simulate, worst_window_rate


def cfg(**kw: object) -> SimConfig:
    base: dict[str, object] = {"agents": 20, "hours": 2.0, "answer_rate": 0.25, "seed": 4}
    base.update(kw)
    return SimConfig(**base)  # type: ignore[arg-type]


def test_same_seed_same_day() -> None:
    a = simulate(cfg(hours=1.0)).to_dict(timeline=True)
    b = simulate(cfg(hours=1.0)).to_dict(timeline=True)
    assert a == b
    c = simulate(cfg(hours=1.0, seed=5)).to_dict()
    assert c["calls"] != a["calls"] or c["talk_occupancy"] != a["talk_occupancy"]


def test_lead_k_behaves_the_same_under_every_policy() -> None:
    sims = [PacingSim(cfg(hours=0.5, algorithm=name)) for name in ("progressive", "power", "predictive")]
    for s in sims:
        s.run()
    n = min(s.leads.next_index for s in sims)
    assert n > 100
    first = [(ld.u, ld.delay, ld.talk) for ld in sims[0].leads.drawn[:n]]
    for s in sims[1:]:
        assert [(ld.u, ld.delay, ld.talk) for ld in s.leads.drawn[:n]] == first


def test_progressive_never_abandons() -> None:
    r = simulate(cfg(algorithm="progressive"))
    assert r.live_answers > 100
    assert r.abandoned == 0
    assert r.progressive_share > 0.99  # the rest: ticks before the first agent logged in


def test_no_agents_no_calls() -> None:
    r = simulate(cfg(agents=0, hours=0.5))
    assert r.calls == 0


def test_predictive_day_stays_within_the_caps_and_beats_progressive() -> None:
    pred = simulate(cfg(agents=30, hours=3.0))
    prog = simulate(cfg(agents=30, hours=3.0, algorithm="progressive"))
    assert pred.live_answers > 1000
    assert pred.abandon_rate <= 0.03
    assert pred.worst_60min_abandon_rate <= 0.05
    assert pred.talk_occupancy > prog.talk_occupancy + 0.1
    assert pred.progressive_share < 0.2


def test_clairvoyant_reaches_the_ceiling_without_abandoning() -> None:
    # It lands each answer in the 2 s before an agent frees: agents idle only before their first call.
    r = simulate(cfg(algorithm=CLAIRVOYANT))
    ceiling = 120.0 / 135.0
    assert r.talk_occupancy > 0.97 * ceiling
    assert r.idle_wait_s < 2.0
    assert r.abandoned == 0


def test_answer_rate_drop_is_noticed_and_the_caps_hold() -> None:
    r = simulate(cfg(agents=30, hours=3.0, answer_rate_drop_at_hour=1.0, answer_rate_after=0.12))
    assert r.estimator_changes >= 1
    assert r.abandon_rate <= 0.03
    assert r.worst_60min_abandon_rate <= 0.05


def test_shift_change_replaces_agents() -> None:
    sim = PacingSim(cfg(hours=1.0, shift_change_at_hour=0.5, shift_change_fraction=0.3))
    r = sim.run()
    assert len(sim.agents) == 20 + 6
    assert sum(1 for a in sim.agents if a.logged_in) <= 20
    assert r.abandon_rate <= 0.05


def test_breaks_take_agents_away() -> None:
    with_breaks = simulate(cfg(algorithm="progressive", breaks=True))
    without = simulate(cfg(algorithm="progressive"))
    assert with_breaks.agent_hours < without.agent_hours - 20 * 0.2


def test_ring_time_below_the_minimum_is_raised() -> None:
    sim = PacingSim(cfg(params=PacingParams(ring_timeout_s=5.0)))
    assert sim.ring == 15.0


def test_worst_window_rate() -> None:
    events = [(float(t), False) for t in range(0, 7200, 10)] + [(4000.0 + i, True) for i in range(30)]
    worst = worst_window_rate(events, 3600.0, 7200.0)
    assert worst == pytest.approx(30 / (360 + 30), rel=0.02)
    assert worst_window_rate([], 3600.0, 7200.0) == 0.0
    assert worst_window_rate([(10.0, True), (20.0, False)], 3600.0, 1800.0) == 0.5


def run_cli(argv: list[str]) -> int:
    """``cli.base.group`` caches shared groups per process: start each ``main()`` here from a clean cache."""
    base._groups.clear()
    return main(argv)


def test_cli_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    png = tmp_path / "day.png"
    code = main(
        ["sim", "pacing", "--agents", "8", "--hours", "0.5", "--seed", "2", "--json", "--plot", str(png)]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "talk_occupancy",
        "abandon_rate",
        "worst_60min_abandon_rate",
        "idle_wait_s",
        "calls_per_agent_hour",
        "connects_per_agent_hour",
    ):
        assert key in out
    assert 0.0 < out["talk_occupancy"] < 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["sim", "pacing", "--answer-rate", "1.5", "--json"]) == 2
    assert run_cli(["sim", "pacing", "--answer-rate-after", "0.1", "--json"]) == 2


@pytest.mark.parametrize("seed", [1, 4])
def test_low_answer_rate_small_team_keeps_every_hour_under_five_percent(seed: int) -> None:
    # Answer rate 0.10 with 10 agents: ~200 live answers an hour, so a few abandoned calls move the hour.
    # Before the fix the pacer fell back to agent-reserved progressive when the hour (or a young
    # campaign's whole window) neared its cap; progressive makes few live answers, the hour's denominator
    # shrank and its rate stayed up (6.3 % over 60 minutes with seed 4 by hour 2).
    r = simulate(cfg(agents=10, answer_rate=0.10, hours=2.5, seed=seed))
    assert r.live_answers > 400
    assert r.worst_60min_abandon_rate <= 0.05
    assert r.abandon_rate <= 0.03
    assert r.progressive_share < 0.3  # 0.49 before (seed 4): it spent most of hour 1 in progressive


def test_low_answer_rate_large_team_raises_no_false_alarm() -> None:
    # Answer rate 0.10 with many agents: outcomes of each second's burst of calls arrive sorted by how
    # fast they resolve; the change detector used to mistake that for a change of answer rate (dozens of
    # restarts a day, each one relearning from a biased sample).
    r = simulate(cfg(agents=100, answer_rate=0.10, hours=0.75, seed=2))
    assert r.live_answers > 1000
    assert r.estimator_changes == 0
    assert r.worst_60min_abandon_rate <= 0.05


@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize(
    "scenario",
    [
        {"answer_rate": 0.10},
        {"answer_rate_drop_at_hour": 1.0, "answer_rate_after": 0.12},
        {"shift_change_at_hour": 1.0, "shift_change_fraction": 0.3},
    ],
    ids=["answer-rate-0.10", "drop-to-0.12", "shift-change"],
)
def test_small_team_keeps_the_caps_in_adverse_days(scenario: dict[str, float], seed: int) -> None:
    # A small team is where predictive counts its risk exactly (no normal law): the day stays within 3 %
    # and no hour above 5 % when the answer rate is low, falls, or a third of the agents change.
    r = simulate(cfg(agents=10, hours=3.0, seed=seed, **scenario))
    assert r.live_answers > 300
    assert r.abandon_rate <= 0.03
    assert r.worst_60min_abandon_rate <= 0.05
    assert r.talk_occupancy > 0.6
