"""``outdial agent console|assign|unassign|assignments|list|counts`` and ``outdial sim agents``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import termios
import tty
from collections import Counter, deque
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from outdial.agent.client import AgentSession, SessionEnded
from outdial.agent.simulated import Distribution, agent_token, run_simulated_agents
from outdial.cli.base import channel, command, console, fail, group, print_json, print_table, to_dict
from outdial.core.config import Settings
from outdial.v1 import agent_pb2, agent_pb2_grpc, campaign_pb2, campaign_pb2_grpc, common_pb2

STATE_NAMES = {v: k.removeprefix("AGENT_STATE_").lower() for k, v in common_pb2.AgentState.items()}


def _since(ts: Any) -> str:
    if not ts.seconds:
        return ""
    return str(ts.ToDatetime(tzinfo=UTC).astimezone().strftime("%H:%M:%S"))


# ------------------------------------------------------------------------------------------- list / counts


async def agent_list(args: argparse.Namespace, settings: Settings) -> int:
    stub = agent_pb2_grpc.AgentServiceStub(channel(args, settings, "agent"))
    resp = await stub.ListAgents(agent_pb2.ListAgentsRequest(campaign_id=args.campaign or ""))
    if args.json:
        print_json([to_dict(a) for a in resp.agents])
        return 0
    print_table(
        f"agents{' of ' + args.campaign if args.campaign else ''}",
        ["agent", "state", "since", "campaigns (priority)", "skills", "call", "pause reason"],
        [
            (
                a.agent_id,
                STATE_NAMES.get(a.state, "?"),
                _since(a.since),
                ", ".join(f"{c.campaign_id} ({c.priority})" for c in a.campaigns),
                ", ".join(a.skills),
                a.call_id,
                a.pause_reason,
            )
            for a in resp.agents
        ],
    )
    return 0


async def agent_counts(args: argparse.Namespace, settings: Settings) -> int:
    stub = agent_pb2_grpc.AgentServiceStub(channel(args, settings, "agent"))
    resp = await stub.GetAgentCounts(agent_pb2.GetAgentCountsRequest(campaign_id=args.campaign))
    if args.json:
        print_json(to_dict(resp.counts))
        return 0
    c = resp.counts
    print_table(
        f"agents of {args.campaign}",
        ["logged in", "ready", "reserved", "on call", "wrap-up", "paused"],
        [(c.logged_in, c.ready, c.reserved, c.on_call, c.wrap_up, c.paused)],
    )
    return 0


# ------------------------------------------------------------------------------------------- assignments


async def _campaign_exists(args: argparse.Namespace, settings: Settings, campaign_id: str) -> str | None:
    """None when the campaign exists, else why not (the agent service stores assignments by id only)."""
    stub = campaign_pb2_grpc.CampaignServiceStub(channel(args, settings, "campaign"))
    try:
        await stub.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id=campaign_id))
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            return f"no campaign {campaign_id!r} (outdial campaign list shows them)"
        raise
    return None


async def agent_assign(args: argparse.Namespace, settings: Settings) -> int:
    if not args.no_check and (why := await _campaign_exists(args, settings, args.campaign)):
        return fail(why, 2)
    stub = agent_pb2_grpc.AgentServiceStub(channel(args, settings, "agent"))
    resp = await stub.AssignAgents(
        agent_pb2.AssignAgentsRequest(campaign_id=args.campaign, agent_ids=args.agents)
    )
    if args.json:
        print_json(to_dict(resp))
    else:
        console.print(
            f"campaign {args.campaign}: {resp.assigned} agent(s) assigned, {resp.already_assigned} already were"
        )
    return 0


async def agent_unassign(args: argparse.Namespace, settings: Settings) -> int:
    stub = agent_pb2_grpc.AgentServiceStub(channel(args, settings, "agent"))
    resp = await stub.UnassignAgents(
        agent_pb2.UnassignAgentsRequest(campaign_id=args.campaign, agent_ids=args.agents)
    )
    if args.json:
        print_json(to_dict(resp))
    else:
        console.print(
            f"campaign {args.campaign}: {resp.unassigned} agent(s) unassigned, {resp.not_assigned} were not"
        )
        if resp.sessions_changed:
            console.print(f"taken out of their running session: {', '.join(resp.sessions_changed)}")
    return 0


async def agent_assignments(args: argparse.Namespace, settings: Settings) -> int:
    stub = agent_pb2_grpc.AgentServiceStub(channel(args, settings, "agent"))
    resp = await stub.ListAssignments(
        agent_pb2.ListAssignmentsRequest(
            campaign_id=args.campaign or "", agent_id=args.agent or "", history=args.history
        )
    )
    if args.json:
        print_json(to_dict(resp))
        return 0
    print_table(
        "assignments",
        ["campaign", "agent", "assigned by", "at"],
        [
            (a.campaign_id, a.agent_id, a.assigned_by, a.assigned_at.ToDatetime(tzinfo=UTC).isoformat())
            for a in resp.assignments
        ],
    )
    if args.history:
        print_table(
            "changes (newest first)",
            ["at", "action", "campaign", "agent", "by"],
            [
                (h.at.ToDatetime(tzinfo=UTC).isoformat(), h.action, h.campaign_id, h.agent_id, h.actor)
                for h in resp.history
            ],
        )
    return 0


# ------------------------------------------------------------------------------------------- console


class ConsoleState:
    def __init__(self, dispositions: list[str]) -> None:
        self.session: AgentSession | None = None
        self.status: agent_pb2.AgentStatus | None = None
        self.offer: agent_pb2.CallOffer | None = None
        self.preview: agent_pb2.PreviewOffer | None = None
        self.log: deque[str] = deque(maxlen=8)
        self.dispositions = dispositions
        self.prompt = ""

    def note(self, text: str) -> None:
        self.log.appendleft(f"{datetime.now().strftime('%H:%M:%S')} {text}")

    def render(self) -> Panel:
        st = self.status
        state = STATE_NAMES.get(st.state, "?") if st else "connecting"
        linked = self.session is None or self.session.connected.is_set()
        head = Table.grid(padding=(0, 2))
        head.add_row("agent", Text(st.agent_id if st else "", style="bold"))
        head.add_row("state", Text(state.upper(), style="bold green" if state == "ready" else "bold yellow"))
        head.add_row("since", _since(st.since) if st else "")
        if not linked:
            head.add_row("link", Text("reconnecting… (your session and call are kept)", style="bold red"))
        if st and st.pause_reason:
            head.add_row("pause reason", st.pause_reason)
        if st:
            head.add_row("campaigns", ", ".join(f"{c.campaign_id} ({c.priority})" for c in st.campaigns))
        parts: list[Any] = [head]
        if self.offer is not None:
            o = self.offer
            call = Table(title=f"call {o.call_id}", show_header=False)
            call.add_row("lead", f"{o.lead_name} ({o.lead_id})")
            call.add_row("number", o.number)
            call.add_row("campaign", o.campaign_id)
            for k, v in sorted(o.lead_fields.items()):
                call.add_row(k, v)
            parts.append(call)
        if self.preview is not None:
            parts.append(preview_table(self.preview))
        if state == "wrap_up":
            parts.append(
                Text("disposition: " + "  ".join(f"[{i + 1}] {d}" for i, d in enumerate(self.dispositions)))
            )
        parts.append(Text("\n".join(self.log), style="dim"))
        keys = "keys: r ready · p pause · e end call · 1-9 disposition · q quit"
        if self.preview is not None:
            keys = "keys: d DIAL this lead · s SKIP it · " + keys.removeprefix("keys: ")
        parts.append(Text(keys, style="cyan"))
        return Panel(Group(*parts), title="outdial agent console")


def preview_table(p: agent_pb2.PreviewOffer) -> Table:
    """A lead shown before any dial: who, which number, and what happens if the agent does nothing."""
    t = Table(title=f"PREVIEW {p.call_id} (not dialled yet)", show_header=False, style="magenta")
    t.add_row("lead", f"{p.lead_name} ({p.lead_id})")
    t.add_row("number", p.number)
    t.add_row("campaign", p.campaign_id)
    for k, v in sorted(p.lead_fields.items()):
        t.add_row(k, v)
    if p.HasField("decide_by"):
        left = (p.decide_by.ToDatetime(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        action = "dials" if p.timeout_action == agent_pb2.PREVIEW_DECISION_DIAL else "skips"
        t.add_row("timeout", f"{action} by itself in {max(0, round(left))} s")
    else:
        t.add_row("timeout", "none: waits for you")
    return t


class _RawStdin:
    """Single key presses from a terminal (cbreak mode; works under tmux); line input otherwise."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.tty = os.isatty(self.fd)
        self.old: Any = None

    def __enter__(self) -> _RawStdin:
        if self.tty:
            self.old = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.old)


async def agent_console(args: argparse.Namespace, settings: Settings) -> int:  # noqa: C901 - one screen
    token = getattr(args, "token", None) or settings.token
    if not token:
        if not args.agent_id:
            return fail(
                "give --token (an agent token) or --agent-id (a token is signed with OUTDIAL_ISSUER_KEY, or the dev key with OUTDIAL_DEV=1)"
            )
        token = agent_token(settings, args.agent_id)
    if args.agent_id:
        agent_id = args.agent_id
    else:
        agent_id = str(jwt.decode(token, options={"verify_signature": False}).get("sub", ""))
    md = (("authorization", f"Bearer {token}"),)
    campaigns = [agent_pb2.CampaignMembership(campaign_id=c, priority=args.priority) for c in args.campaign]
    session = AgentSession(
        lambda: channel(argparse.Namespace(token=token), settings, "agent"),
        agent_pb2.LoginRequest(
            agent_id=agent_id, campaigns=campaigns, skills=args.skill or [], phone=args.phone or ""
        ),
        md,
    )
    ui = ConsoleState(args.dispositions.split(","))
    ui.session = session
    try:
        login = await session.login(give_up_s=args.connect_timeout)
    except grpc.aio.AioRpcError as exc:
        await session.close()
        return fail(f"cannot log in: {exc.code().name}: {exc.details()}")
    ui.status = login.status
    ui.note(f"logged in (session {login.session_id[:8]})")
    keys: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def on_key() -> None:
        data = os.read(sys.stdin.fileno(), 64).decode(errors="ignore")
        if not data:
            keys.put_nowait("q")
        for ch_ in data:
            if not ch_.isspace():
                keys.put_nowait(ch_)

    async def read_stream() -> str:
        """The session's events, through reconnections; returns why the session ended."""
        seen = 0
        try:
            async for msg in session.events():
                if session.reconnects > seen:
                    seen = session.reconnects
                    ui.note("reconnected: session resumed")
                if msg.HasField("status"):
                    ui.status = msg.status
                    if msg.status.state in (common_pb2.AGENT_STATE_READY, common_pb2.AGENT_STATE_PAUSED):
                        ui.offer = None  # no call in hand for the service (ended, or taken away)
                    if msg.status.state != common_pb2.AGENT_STATE_RESERVED:
                        ui.preview = None  # withdrawn (campaign paused, hold lapsed) or decided
                    ui.note(f"state {STATE_NAMES.get(msg.status.state, '?')}")
                elif msg.HasField("offer"):
                    if ui.offer is not None and ui.offer.call_id == msg.offer.call_id:
                        continue  # the call in hand, shown again after a reconnection
                    ui.offer = msg.offer
                    ui.note(f"call {msg.offer.call_id} from {msg.offer.lead_name or msg.offer.number}")
                    console.bell()
                elif msg.HasField("preview"):
                    if ui.preview is not None and ui.preview.call_id == msg.preview.call_id:
                        continue  # the lead in view, shown again after a reconnection
                    ui.preview = msg.preview
                    ui.note(f"preview {msg.preview.call_id}: {msg.preview.lead_name or msg.preview.number}")
                    console.bell()
                elif msg.HasField("preview_decided"):
                    d = msg.preview_decided
                    word = "dialling" if d.decision == agent_pb2.PREVIEW_DECISION_DIAL else "skipped"
                    ui.note(f"preview {d.call_id}: {word} ({d.by})")
                    if ui.preview is not None and ui.preview.call_id == d.call_id:
                        ui.preview = None
                elif msg.call_ended:
                    ui.note(f"far end hung up {msg.call_ended}")
        except SessionEnded as ended:
            return (
                "logged out"
                if ended.reason == "logged_out"
                else "this agent's session was taken over by another console"
            )
        return "stream closed"

    async def act(key: str) -> bool:
        give_up = args.action_timeout
        try:
            if key == "q":
                return False
            if key == "r":
                resp = await session.call(
                    lambda s: s.SetState(
                        agent_pb2.SetStateRequest(agent_id=agent_id, state=common_pb2.AGENT_STATE_READY),
                        metadata=md,
                    ),
                    give_up_s=give_up,
                )
                ui.status = resp.status
            elif key == "p":
                resp2 = await session.call(
                    lambda s: s.SetState(
                        agent_pb2.SetStateRequest(
                            agent_id=agent_id,
                            state=common_pb2.AGENT_STATE_PAUSED,
                            pause_reason=args.pause_reason,
                        ),
                        metadata=md,
                    ),
                    give_up_s=give_up,
                )
                ui.status = resp2.status
            elif key in ("d", "s") and ui.preview is not None:
                want = agent_pb2.PREVIEW_DECISION_DIAL if key == "d" else agent_pb2.PREVIEW_DECISION_SKIP
                decide = agent_pb2.DecidePreviewRequest(
                    agent_id=agent_id, call_id=ui.preview.call_id, decision=want
                )
                dec = await session.call(lambda s: s.DecidePreview(decide, metadata=md), give_up_s=give_up)
                ui.status = dec.status
                if dec.decision == agent_pb2.PREVIEW_DECISION_UNSPECIFIED:
                    ui.note("that preview is no longer yours")
                ui.preview = None
            elif key == "e":
                resp3 = await session.call(
                    lambda s: s.EndCall(agent_pb2.EndCallRequest(agent_id=agent_id), metadata=md),
                    give_up_s=give_up,
                )
                ui.status = resp3.status
                ui.note("call ended")
            elif key.isdigit() and 0 < int(key) <= len(ui.dispositions):
                dispo = ui.dispositions[int(key) - 1]
                req = agent_pb2.SetDispositionRequest(agent_id=agent_id, disposition=dispo)
                if dispo == "callback":
                    req.callback_at.FromDatetime(datetime.now(UTC) + timedelta(minutes=args.callback_minutes))
                resp4 = await session.call(lambda s: s.SetDisposition(req, metadata=md), give_up_s=give_up)
                ui.status = resp4.status
                ui.offer = None
                ui.note(f"disposition {dispo}")
        except grpc.aio.AioRpcError as exc:
            ui.note(f"{exc.code().name}: {exc.details()}")
        return True

    stream = asyncio.create_task(read_stream())
    logout = True
    with _RawStdin() as raw, Live(ui.render(), console=console, refresh_per_second=8, screen=raw.tty) as live:
        loop.add_reader(sys.stdin.fileno(), on_key)
        try:
            while True:
                get = asyncio.create_task(keys.get())
                done, _ = await asyncio.wait({get, stream}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                if stream in done:
                    get.cancel()
                    err = stream.exception()
                    why = stream.result() if err is None else _why(err)
                    ui.note(f"session ended: {why}")
                    logout = False
                    live.update(ui.render())
                    break
                if get in done:
                    if not await act(get.result()):
                        break
                else:
                    get.cancel()
                live.update(ui.render())
        finally:
            loop.remove_reader(sys.stdin.fileno())
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, SessionEnded):
                await stream
            if logout:
                await session.logout()
            await session.close()
    console.print(f"logged out {agent_id}" if logout else f"{agent_id}: session ended")
    return 0


def _why(exc: BaseException) -> str:
    return f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)


# ------------------------------------------------------------------------------------------- sim agents


async def sim_agents(args: argparse.Namespace, settings: Settings) -> int:
    assign_token = None if args.no_assign else (args.token or settings.token)
    if not args.no_assign and not assign_token:
        return fail(
            "the simulated agents are assigned to the campaigns first: set OUTDIAL_TOKEN (or --token) to a "
            "manager's or an admin's token, or pass --no-assign when they are assigned already",
            2,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if args.duration:
        loop.call_later(args.duration, stop.set)
    offers = 0

    def on_offer(agent_id: str, offer: agent_pb2.CallOffer) -> None:
        nonlocal offers
        offers += 1
        if not args.json and not args.quiet:
            console.print(f"{agent_id} <- call {offer.call_id} ({offer.lead_name or offer.number})")

    started = asyncio.Event()

    async def announce() -> None:
        await started.wait()
        if not args.json:
            console.print(f"{args.count} simulated agents connected to {', '.join(args.campaign)}")

    ann = asyncio.create_task(announce())
    try:
        agents = await run_simulated_agents(
            settings,
            [(c, args.priority) for c in args.campaign],
            args.count,
            stop=stop,
            talk=Distribution(args.talk_mean, args.talk_dist),
            wrap=Distribution(args.wrap_mean, args.wrap_dist),
            seed=args.seed,
            prefix=args.prefix,
            dispositions=json.loads(args.dispositions) if args.dispositions else None,
            on_offer=on_offer,
            started=started,
            think=Distribution(args.preview_think, "lognormal"),
            p_skip=args.preview_skip,
            assign_token=assign_token,
        )
    except KeyboardInterrupt:
        return 130
    finally:
        ann.cancel()
    total = {
        "agents": len(agents),
        "offers": sum(a.stats.offers for a in agents),
        "ended": sum(a.stats.ended for a in agents),
        "previews": sum(a.stats.previews for a in agents),
        "preview_dials": sum(a.stats.preview_dials for a in agents),
        "preview_skips": sum(a.stats.preview_skips for a in agents),
        "dispositions": dict(sum((a.stats.dispositions for a in agents), Counter[str]())),
        "errors": sum(a.stats.errors for a in agents),
        # Ridden out: streams reopened after a fault, logins after the heartbeat grace, calls taken back.
        "reconnects": sum(a.stats.reconnects for a in agents),
        "relogins": sum(a.stats.relogins for a in agents),
        "calls_taken_back": sum(a.stats.taken_back for a in agents),
    }
    if args.json:
        print_json(total)
    else:
        print_table("simulated agents", list(total), [[str(v) for v in total.values()]])
    return 0


def register(sub: Any) -> None:
    agent = sub.add_parser("agent", help="agents: console, assignments, list, counts").add_subparsers(
        dest="agent_cmd", required=True
    )
    p = command(agent, "console", agent_console, "terminal agent console: log in, take calls, disposition")
    p.add_argument("--campaign", action="append", required=True, help="campaign id (repeat for several)")
    p.add_argument("--priority", type=int, default=5, help="priority of these campaigns (0-99, higher first)")
    p.add_argument("--skill", action="append", help="a skill (repeat)")
    p.add_argument("--agent-id", help="agent id (default: the token's subject)")
    p.add_argument("--pause-reason", default="break")
    p.add_argument("--callback-minutes", type=int, default=60)
    p.add_argument(
        "--phone",
        help="SIP telephony: 'registered' (your softphone registered to the gateway) or a sip: URI to call; "
        "the gateway keeps one call up to it for the session",
    )
    p.add_argument(
        "--connect-timeout", type=float, default=30.0, help="seconds to keep trying to log in at start"
    )
    p.add_argument(
        "--action-timeout", type=float, default=10.0, help="seconds to keep retrying a key's action"
    )
    p.add_argument(
        "--dispositions",
        default="sale,not_interested,callback,wrong_number,do_not_call,other",
        help="comma-separated dispositions offered on keys 1-9",
    )
    p = command(agent, "assign", agent_assign, "let agents log in to a campaign (manager, admin; audited)")
    p.add_argument("campaign", help="campaign id")
    p.add_argument("agents", nargs="+", metavar="AGENT", help="agent ids (their tokens' subjects)")
    p.add_argument("--no-check", action="store_true", help="do not check that the campaign exists first")
    p = command(
        agent,
        "unassign",
        agent_unassign,
        "take agents off a campaign (a logged-in agent loses it at once; see docs/security.md)",
    )
    p.add_argument("campaign", help="campaign id")
    p.add_argument("agents", nargs="+", metavar="AGENT", help="agent ids")
    p = command(agent, "assignments", agent_assignments, "who may log in to which campaign")
    p.add_argument("--campaign", help="only this campaign")
    p.add_argument("--agent", help="only this agent")
    p.add_argument("--history", action="store_true", help="also the audited changes (who, whom, when)")
    p = command(agent, "list", agent_list, "list logged-in agents (of a campaign)")
    p.add_argument("--campaign", help="campaign id")
    p = command(agent, "counts", agent_counts, "agents of a campaign by state (what pacing sees)")
    p.add_argument("--campaign", required=True)

    sim = group(sub, "sim", "simulators")
    p = command(sim, "agents", sim_agents, "simulated agents taking calls through the real agent RPCs")
    p.add_argument("--campaign", action="append", required=True, help="campaign id (repeat for several)")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--duration", type=float, default=0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--talk-mean", type=float, default=30.0, help="mean talk time, seconds")
    p.add_argument("--wrap-mean", type=float, default=5.0, help="mean wrap-up time, seconds")
    p.add_argument("--talk-dist", choices=["exp", "lognormal", "fixed"], default="exp")
    p.add_argument("--wrap-dist", choices=["exp", "lognormal", "fixed"], default="exp")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--priority", type=int, default=5)
    p.add_argument("--prefix", default="sim", help="agent ids are PREFIX-0001 …")
    p.add_argument("--dispositions", help='JSON weights, e.g. {"sale": 0.2, "not_interested": 0.8}')
    p.add_argument("--quiet", action="store_true", help="do not print every offer")
    p.add_argument(
        "--no-assign",
        action="store_true",
        help="do not assign the agents to the campaigns first (your token must then be a manager's or an "
        "admin's; with --no-assign they must be assigned already)",
    )
    p.add_argument(
        "--preview-think", type=float, default=2.0, help="preview mode: mean seconds before deciding"
    )
    p.add_argument("--preview-skip", type=float, default=0.1, help="preview mode: chance of skipping a lead")
