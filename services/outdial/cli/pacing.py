"""``outdial pacing state|watch|set --campaign ID``: a campaign's pacing state, live, and its settings."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask

from outdial.cli.base import channel, command, console, fail, print_json, print_table, to_dict
from outdial.core.config import Settings
from outdial.rules.law import MIN_RING_S, SHORT_WINDOW_CAP
from outdial.v1 import pacing_pb2, pacing_pb2_grpc

_ALGOS = {
    "progressive": pacing_pb2.PACING_ALGORITHM_PROGRESSIVE,
    "power": pacing_pb2.PACING_ALGORITHM_POWER,
    "predictive": pacing_pb2.PACING_ALGORITHM_PREDICTIVE,
}


def _algo(value: int) -> str:
    return pacing_pb2.PacingAlgorithm.Name(value).removeprefix("PACING_ALGORITHM_").lower()  # type: ignore[arg-type]


def _rows(st: pacing_pb2.PacingState) -> list[tuple[str, Any]]:
    a, b, e = st.agents, st.budget, st.estimates
    return [
        ("campaign", st.campaign_id),
        ("leader", st.leader or "(none)"),
        ("mode (in force)", f"{st.mode or '-'} ({st.effective_mode or '-'})"),
        ("reason", st.fallback_reason),
        ("dial level", f"{st.dial_level:.2f}"),
        ("lines in flight", st.lines_in_flight),
        ("answered waiting", st.answered_waiting),
        (
            "agents",
            f"{a.logged_in} logged in: {a.ready} ready, {a.reserved} reserved, {a.on_call} on call, "
            f"{a.wrap_up} wrap-up, {a.paused} paused",
        ),
        (
            "estimates",
            f"live answer {e.live_answer_rate:.3f} ± {e.live_answer_rate_stddev:.3f}, answer delay "
            f"{e.mean_answer_delay_s:.1f} s, talk {e.mean_talk_s:.0f} s, {e.samples} samples"
            f"{'' if e.confident else ' (not confident)'}",
        ),
        (
            "abandonment",
            f"{b.abandoned}/{b.live_answers} = {b.rate:.2%} (cap {b.cap:.0%} over {b.window.seconds / 86400:g} d), "
            f"{b.remaining:.1f} left; last 60 min {b.rate_60min:.2%}",
        ),
        ("calls placed / blocked", f"{st.calls_placed} / {st.calls_blocked}"),
        ("ringing calls released (no agent)", str(st.calls_released)),
        ("agent service", "reachable" if st.agent_service_reachable else "UNREACHABLE: not dialling"),
        ("paused by settings", st.settings.paused),
    ]


def _show(args: argparse.Namespace, st: pacing_pb2.PacingState) -> None:
    if args.json:
        print_json(to_dict(st))
    else:
        print_table(f"pacing {st.campaign_id}", ["", ""], _rows(st))


async def state(args: argparse.Namespace, settings: Settings) -> int:
    stub = pacing_pb2_grpc.PacingServiceStub(channel(args, settings, "pacing"))
    resp = await stub.GetPacingState(pacing_pb2.GetPacingStateRequest(campaign_id=args.campaign), timeout=10)
    _show(args, resp.state)
    return 0


async def watch(args: argparse.Namespace, settings: Settings) -> int:
    stub = pacing_pb2_grpc.PacingServiceStub(channel(args, settings, "pacing"))
    req = pacing_pb2.WatchPacingRequest(campaign_id=args.campaign)
    req.interval.FromMilliseconds(int(args.interval * 1000))
    n = 0
    # A server stream carries the token as call metadata (the channel interceptor does not reach streams).
    token = getattr(args, "token", None) or settings.token
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async for resp in stub.WatchPacing(req, metadata=metadata):
        if not args.json:
            console.clear()
        _show(args, resp.state)
        n += 1
        if args.count and n >= args.count:
            break
    return 0


async def set_(args: argparse.Namespace, settings: Settings) -> int:
    s = pacing_pb2.PacingSettings()
    paths: list[str] = []
    if args.algorithm:
        s.algorithm = _ALGOS[args.algorithm]
        paths.append("algorithm")
    if args.power_ratio is not None:
        s.power_ratio = args.power_ratio
        paths.append("power_ratio")
    if args.max_lines is not None:
        s.max_lines_per_agent = args.max_lines
        paths.append("max_lines_per_agent")
    if args.ring_timeout is not None:
        s.ring_timeout.FromMilliseconds(int(args.ring_timeout * 1000))
        paths.append("ring_timeout")
    if args.target_abandon is not None:
        s.target_abandon_rate = args.target_abandon
        paths.append("target_abandon_rate")
    if args.short_window_cap is not None:
        s.short_window_cap = args.short_window_cap
        paths.append("short_window_cap")
    if args.pause or args.resume:
        s.paused = bool(args.pause)
        paths.append("paused")
    if not paths:
        return fail(
            "nothing to change: give at least one setting (see --help)", 2, error_id="nothing_to_change"
        )
    stub = pacing_pb2_grpc.PacingServiceStub(channel(args, settings, "pacing"))
    resp = await stub.UpdatePacingSettings(
        pacing_pb2.UpdatePacingSettingsRequest(
            campaign_id=args.campaign, settings=s, update_mask=FieldMask(paths=paths)
        ),
        timeout=10,
    )
    if args.json:
        print_json(to_dict(resp.settings))
    else:
        r = resp.settings
        print_table(
            f"pacing settings {args.campaign}",
            [
                "algorithm",
                "power ratio",
                "max lines/agent",
                "ring timeout",
                "target abandon",
                "60-min cap",
                "paused",
            ],
            [
                (
                    _algo(r.algorithm),
                    r.power_ratio or "",
                    r.max_lines_per_agent or "",
                    f"{r.ring_timeout.seconds} s" if r.ring_timeout.seconds else "",
                    r.target_abandon_rate or "",
                    r.short_window_cap or "",
                    r.paused,
                )
            ],
        )
    return 0


def register(sub: Any) -> None:
    grp = sub.add_parser("pacing", help="pacing state and settings").add_subparsers(
        dest="pacing_cmd", required=True
    )
    p = command(grp, "state", state, "show a campaign's pacing state")
    p.add_argument("--campaign", required=True)
    p = command(grp, "watch", watch, "stream a campaign's pacing state live")
    p.add_argument("--campaign", required=True)
    p.add_argument("--interval", type=float, default=2.0, help="push at least this often (seconds)")
    p.add_argument("--count", type=int, default=0, help="stop after this many updates (0 = never)")
    p = command(grp, "set", set_, "change a campaign's pacing settings")
    p.add_argument("--campaign", required=True)
    p.add_argument("--algorithm", choices=sorted(_ALGOS))
    p.add_argument("--power-ratio", type=float)
    p.add_argument("--max-lines", type=int, help="lines in flight per agent")
    p.add_argument("--ring-timeout", type=float, help=f"seconds (at least {MIN_RING_S:g})")
    p.add_argument("--target-abandon", type=float, help="fraction, at most the cap")
    p.add_argument("--short-window-cap", type=float, help=f"fraction, at most {SHORT_WINDOW_CAP:g}")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pause", action="store_true", help="stop dialing this campaign")
    g.add_argument("--resume", action="store_true")
