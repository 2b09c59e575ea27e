"""``outdial sim pacing``: a simulated day of one campaign under one pacing algorithm (no services needed)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from outdial.cli.base import command, fail, group, print_json, print_table
from outdial.core.config import Settings
from outdial.pacing.algorithms import ALGORITHMS
from outdial.pacing.snapshot import PacingParams
from outdial.rules.law import MIN_RING_S, abandon_policy
from outdial.sim.pacing import CLAIRVOYANT, SimConfig, plot, simulate


def register(sub: Any) -> None:
    sim = group(sub, "sim", "simulators")
    p = command(sim, "pacing", _pacing, "simulate a campaign's day under a pacing algorithm (virtual clock)")
    p.add_argument("--agents", type=int, default=50, help="agents logged in (default 50)")
    p.add_argument("--answer-rate", type=float, default=0.25, help="live-answer probability per call")
    p.add_argument("--hours", type=float, default=8.0, help="length of the day in hours")
    p.add_argument(
        "--algorithm", default="predictive", choices=[*ALGORITHMS, CLAIRVOYANT], help="pacing algorithm"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--power-ratio", type=float, default=2.0)
    p.add_argument("--max-lines-per-agent", type=int, default=3)
    p.add_argument("--ring-timeout", type=float, default=25.0, help=f"seconds (never below {MIN_RING_S:g})")
    p.add_argument(
        "--abandon-cap", type=float, default=abandon_policy("US").cap, help="fraction of live answers"
    )
    p.add_argument("--target-abandon-rate", type=float, default=None, help="override the budget's target")
    p.add_argument("--talk-mean", type=float, default=120.0, help="mean talk time, seconds (exponential)")
    p.add_argument("--wrap", type=float, default=15.0, help="wrap-up time, seconds")
    p.add_argument("--answer-rate-drop-at-hour", type=float, default=None)
    p.add_argument("--answer-rate-after", type=float, default=None)
    p.add_argument("--shift-change-at-hour", type=float, default=None)
    p.add_argument("--shift-change-fraction", type=float, default=0.3)
    p.add_argument("--breaks", action="store_true", help="every agent takes one 15-minute break")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of dial level and abandonment over time")
    p.add_argument("--timeline", action="store_true", help="with --json: include the per-minute timeline")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        agents=args.agents,
        hours=args.hours,
        answer_rate=args.answer_rate,
        answer_rate_drop_at_hour=args.answer_rate_drop_at_hour,
        answer_rate_after=args.answer_rate_after,
        talk_mean_s=args.talk_mean,
        wrap_s=args.wrap,
        algorithm=args.algorithm,
        params=PacingParams(
            algorithm=args.algorithm,
            power_ratio=args.power_ratio,
            max_lines_per_agent=args.max_lines_per_agent,
            ring_timeout_s=args.ring_timeout,
            target_abandon_rate=args.target_abandon_rate,
        ),
        abandon_cap=args.abandon_cap,
        breaks=args.breaks,
        shift_change_at_hour=args.shift_change_at_hour,
        shift_change_fraction=args.shift_change_fraction,
        seed=args.seed,
    )


def _check(args: argparse.Namespace) -> str | None:
    if args.agents < 0:
        return "--agents must be >= 0"
    if not 0.0 <= args.answer_rate <= 1.0:
        return "--answer-rate must be a probability"
    if args.hours <= 0:
        return "--hours must be positive"
    if (args.answer_rate_drop_at_hour is None) != (args.answer_rate_after is None):
        return "--answer-rate-drop-at-hour and --answer-rate-after go together"
    if args.answer_rate_after is not None and not 0.0 <= args.answer_rate_after <= 1.0:
        return "--answer-rate-after must be a probability"
    if not 0.0 <= args.shift_change_fraction <= 1.0:
        return "--shift-change-fraction must be a fraction"
    return None


async def _pacing(args: argparse.Namespace, settings: Settings) -> int:
    problem = _check(args)
    if problem:
        return fail(problem, 2)
    cfg = config_from_args(args)
    result = await asyncio.to_thread(simulate, cfg)
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print_json(result.to_dict(timeline=args.timeline))
        return 0
    rows = [
        ("talk occupancy", f"{result.talk_occupancy:.3f}"),
        ("mean idle wait (s)", f"{result.idle_wait_s:.1f}"),
        ("abandoned (day)", f"{100 * result.abandon_rate:.2f} %"),
        ("worst 60-min window", f"{100 * result.worst_60min_abandon_rate:.2f} %"),
        ("calls per agent-hour", f"{result.calls_per_agent_hour:.1f}"),
        ("connects per agent-hour", f"{result.connects_per_agent_hour:.1f}"),
        ("calls / live answers / abandoned", f"{result.calls} / {result.live_answers} / {result.abandoned}"),
        ("time in progressive fallback", f"{100 * result.progressive_share:.1f} %"),
    ]
    title = f"{cfg.algorithm}: {cfg.agents} agents, answer rate {cfg.answer_rate:g}, {cfg.hours:g} h, seed {cfg.seed}"
    print_table(title, ["metric", "value"], rows)
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0
