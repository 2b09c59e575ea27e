"""``outdial demo``: a whole simulated campaign end to end on this machine.

PostgreSQL and Redis are found or started (as for ``outdial run``), the four services start as child
processes with the simulated carrier, 20 simulated agents log in over the agent service's RPCs, a campaign
is created, a generated lead list across US time zones (with invalid rows, duplicates and numbers on DNC
lists) is uploaded, the campaign runs predictively for about a minute with a live view, and a final report
is printed from PostgreSQL and the DNC audit log. Everything it started is stopped before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
from google.protobuf.duration_pb2 import Duration
from rich.live import Live
from rich.table import Table

from outdial.agent.kpi import compute_kpis
from outdial.agent.simulated import Distribution, run_simulated_agents
from outdial.agent.store import load_timeline
from outdial.cli.base import command, console, err_console, print_json
from outdial.cli.core_commands import Supervisor
from outdial.cli.demo_data import generate_leads, registry_extract
from outdial.console.settings import ConsoleSettings
from outdial.core.auth import Role, issue_token
from outdial.core.clients import open_channel
from outdial.core.config import SERVICES, Settings
from outdial.core.errors import AlreadyExists
from outdial.core.healthcheck import wait_until_serving
from outdial.core.signing import issuer_key
from outdial.rules.law import abandon_policy
from outdial.v1 import (
    campaign_pb2,
    campaign_pb2_grpc,
    common_pb2,
    dnc_pb2,
    dnc_pb2_grpc,
    pacing_pb2,
    pacing_pb2_grpc,
)

CHUNK = 64 * 1024
#: The demo campaign is a US one, at the US legal abandonment cap.
_US_CAP = abandon_policy("US").cap


def virtual_offset(now: datetime, utc_hour: int = 19) -> float:
    """Seconds to add to ``now`` so that the services' clock reads ``utc_hour``:00 UTC today: at 19:00
    UTC every US zone from Hawaii (09:00) to the East Coast (14:00) is inside the federal 08:00–21:00
    window, whatever hour the demo is run at."""
    target = now.replace(hour=utc_hour, minute=0, second=0, microsecond=0)
    return (target - now).total_seconds()


@dataclass
class DemoConfig:
    seconds: float = 60.0
    agents: int = 20
    leads: int = 3000
    seed: int = 7
    talk_mean_s: float = 6.0
    wrap_s: float = 1.5
    time_scale: float = 8.0
    p_live: float = 0.30
    clock_offset_s: float | None = None
    log_path: str | None = None
    live: bool = True
    # Progress and the live view go to stderr (stdout then carries only the --json document).
    to_stderr: bool = False
    # Feeder margin before a lead's window closes (None: the service default).
    window_margin_s: float | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # Called about twice a second while the campaign runs, with the seconds elapsed and the supervisor
    # (the end-to-end test kills and restarts the pacing service from here).
    on_tick: Callable[[float, Supervisor], Awaitable[None]] | None = None
    # "sim" (the simulated carrier) or "sip" (real SIP on loopback: the gateway, rtpengine, SIPp as the
    # carrier and as the agents' phones).
    telephony: str = "sim"
    # Serve the web console beside the services and print the campaign's dashboard URL (`outdial demo`).
    console: bool = False
    # Run apart from the user's data (`outdial demo`): a fresh `outdial_demo` database and a private Redis,
    # whatever OUTDIAL_DATABASE_URL / OUTDIAL_REDIS_URL say (core/infra.py, ensure_demo_infra). The tests
    # that drive the demo give their own throwaway database instead.
    separate: bool = False


@dataclass
class DemoResult:
    campaign_id: str = ""
    upload: dict[str, Any] = field(default_factory=dict)
    calls_placed: int = 0
    live_answers: int = 0
    connected: int = 0
    abandoned: int = 0
    abandon_rate: float = 0.0
    abandon_cap: float = _US_CAP
    messages_played: int = 0
    opt_outs: int = 0
    machine: int = 0
    no_answer: int = 0
    busy: int = 0
    failed: int = 0
    blocked_by_reason: dict[str, int] = field(default_factory=dict)
    occupancy: float = 0.0
    audit_ok: bool = False
    audit_records: int = 0
    audit_problem: str = ""
    dnc_numbers_in_leads: int = 0
    wireless_numbers_in_leads: int = 0
    leads_by_state: dict[str, int] = field(default_factory=dict)
    database_url: str = ""
    telephony: str = "sim"
    # SIP only: rtpengine sessions left when the campaign was over (every dialog ended: 0).
    sip_leftover_sessions: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.audit_ok
            and self.abandon_rate <= self.abandon_cap + 1e-12
            and self.calls_placed > 0
            and self.sip_leftover_sessions == 0
        )

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "database_url"}
        d["database"] = database_name(self.database_url)  # the name only: the URL may hold a password
        d["ok"] = self.ok
        return d


def database_name(url: str) -> str:
    """The database part of a PostgreSQL URL (no host, user or password)."""
    return url.partition("?")[0].rpartition("/")[2]


async def _wait_serving(settings: Settings, timeout: float = 30.0) -> None:
    for name in SERVICES:
        await wait_until_serving(settings.addr(name), timeout)


async def _upload(stub: campaign_pb2_grpc.CampaignServiceStub, campaign_id: str, data: bytes) -> Any:
    async def chunks() -> Any:
        yield campaign_pb2.UploadLeadsRequest(
            header=campaign_pb2.UploadLeadsHeader(campaign_id=campaign_id, file_name="demo-leads.csv")
        )
        for i in range(0, len(data), CHUNK):
            yield campaign_pb2.UploadLeadsRequest(chunk=data[i : i + CHUNK])

    return await stub.UploadLeads(chunks())


async def _import_registry(
    stub: dnc_pb2_grpc.DncServiceStub,
    text: str,
    downloaded_at: datetime,
    kind: dnc_pb2.ListKind.ValueType = dnc_pb2.LIST_KIND_NATIONAL,
) -> Any:
    header = dnc_pb2.ImportRegistryHeader(
        list_kind=kind,
        jurisdiction=common_pb2.JURISDICTION_US,
        mode=dnc_pb2.IMPORT_MODE_FULL,
        source="demo national registry extract"
        if kind == dnc_pb2.LIST_KIND_NATIONAL
        else "demo wireless and ported-number extract",
    )
    header.downloaded_at.FromDatetime(downloaded_at)
    data = text.encode()

    async def chunks() -> Any:
        yield dnc_pb2.ImportRegistryRequest(header=header)
        for i in range(0, len(data), CHUNK):
            yield dnc_pb2.ImportRegistryRequest(chunk=data[i : i + CHUNK])

    return await stub.ImportRegistry(chunks())


def _live_table(
    state: pacing_pb2.PacingState | None,
    stats: campaign_pb2.GetCampaignStatsResponse | None,
    elapsed: float,
    total: float,
) -> Table:
    t = Table(title=f"outdial demo — {elapsed:3.0f}s / {total:.0f}s", show_header=False, min_width=60)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    if state is None or stats is None:
        t.add_row("starting", "…")
        return t
    a = state.agents
    busy = (a.on_call + a.wrap_up + a.reserved) / a.logged_in if a.logged_in else 0.0
    rate = stats.abandoned / stats.live_answers if stats.live_answers else 0.0
    mode = (
        pacing_pb2.PacingAlgorithm.Name(state.effective_algorithm).removeprefix("PACING_ALGORITHM_").lower()
    )
    fallback = f" ({state.fallback_reason})" if state.fallback_reason else ""
    t.add_row("pacing mode", mode + fallback)
    t.add_row("dial level (lines per agent)", f"{state.dial_level:.2f}")
    t.add_row("lines in flight", str(state.lines_in_flight))
    t.add_row(
        "agents ready / reserved / on call / wrap-up / paused",
        f"{a.ready} / {a.reserved} / {a.on_call} / {a.wrap_up} / {a.paused}",
    )
    t.add_row("calls placed / blocked at dial time", f"{state.calls_placed} / {state.calls_blocked}")
    t.add_row(
        "live answers / connected / abandoned",
        f"{stats.live_answers} / {stats.connected} / {stats.abandoned}",
    )
    t.add_row("abandonment (cap)", f"{rate:.2%} ({stats.abandon_cap or _US_CAP:.0%})")
    t.add_row("agents busy now (occupancy)", f"{busy:.0%}")
    return t


async def run_demo(settings: Settings, cfg: DemoConfig) -> DemoResult:
    out = err_console if cfg.to_stderr else console
    # A demo is development: the services and this process accept the development keyset (OUTDIAL_DEV=1).
    settings = settings.model_copy(update={"dev": True})
    now = datetime.now(UTC)
    offset = cfg.clock_offset_s if cfg.clock_offset_s is not None else virtual_offset(now)
    virtual_now = now + timedelta(seconds=offset)
    env = {
        "OUTDIAL_CLOCK_OFFSET_SECONDS": str(offset),
        "OUTDIAL_SIM_TIME_SCALE": str(cfg.time_scale),
        "OUTDIAL_SIM_SEED": str(cfg.seed),
        "OUTDIAL_SIM_P_LIVE": str(cfg.p_live),
        "OUTDIAL_SIM_TALK_MEAN_S": str(cfg.talk_mean_s * cfg.time_scale),
        "OUTDIAL_CAMPAIGN_FEEDER_INTERVAL_S": "1",
        "OUTDIAL_LOG_LEVEL": "WARNING",
        "OUTDIAL_METRICS_PORT": "0",
        "OUTDIAL_DEV": "1",
        **cfg.extra_env,
    }
    if cfg.window_margin_s is not None:
        env["OUTDIAL_CAMPAIGN_WINDOW_MARGIN_S"] = str(cfg.window_margin_s)
    if cfg.log_path:
        log_path = cfg.log_path
    else:
        with tempfile.NamedTemporaryFile(prefix="outdial-demo-", suffix=".log", delete=False) as fh:
            log_path = fh.name
    rig = None
    services: tuple[str, ...] = SERVICES
    if cfg.telephony == "sip":
        from outdial.gateway.rig import SipRig

        rig = SipRig()
        env.update(rig.start())
        services = (*SERVICES, "gateway")
    elif cfg.telephony != "sim":
        raise ValueError(f"--telephony must be sim or sip, not {cfg.telephony!r}")
    services = _with_console(cfg, services, env)
    sup = Supervisor(settings, services=services, extra_env=env, log_path=log_path, demo=cfg.separate)
    result = DemoResult(telephony=cfg.telephony)
    stop_agents = asyncio.Event()
    agents_task: asyncio.Task[Any] | None = None
    try:
        out.print(
            f"[bold]outdial demo[/bold]: starting PostgreSQL/Redis and the four services "
            f"(service logs: {log_path})"
        )
        infra = await sup.start()
        result.database_url = infra.database_url
        s = settings.model_copy(update={"database_url": infra.database_url, "redis_url": infra.redis_url})
        await _wait_serving(s)
        if rig is not None:
            await wait_until_serving(env["OUTDIAL_GATEWAY_ADDR"], timeout=30.0)
            out.print(
                f"SIP: gateway on 127.0.0.1:{rig.ports['sip']}, rtpengine, SIPp carrier on "
                f"127.0.0.1:{rig.ports['carrier']}, SIPp agent phones on 127.0.0.1:{rig.ports['phones']}"
            )
        token = issue_token(issuer_key(s), "demo", Role.ADMIN)
        chans = {name: open_channel(s, s.addr(name), lambda: token) for name in SERVICES}
        camp = campaign_pb2_grpc.CampaignServiceStub(chans["campaign"])
        dnc = dnc_pb2_grpc.DncServiceStub(chans["dnc"])
        pacing = pacing_pb2_grpc.PacingServiceStub(chans["pacing"])

        leads = generate_leads(cfg.leads, seed=cfg.seed)
        registry_text, on_registry = registry_extract(leads.numbers, 0.03, seed=cfg.seed + 1)
        internal = leads.numbers[5::60]
        await _import_registry(dnc, registry_text, virtual_now - timedelta(days=2))
        # The line type of every US number: a predictive campaign dials only known landlines (the wireless
        # list no older than its 15 days, rules/data/us.yaml), unless the lead gave the consent a wireless
        # number needs.
        wireless_text, wireless = registry_extract(leads.numbers, 0.02, seed=cfg.seed + 2)
        await _import_registry(
            dnc, wireless_text, virtual_now - timedelta(days=3), dnc_pb2.LIST_KIND_WIRELESS
        )
        result.wireless_numbers_in_leads = len(wireless)
        await asyncio.gather(
            *(  # batches under the DNC service's max_batch (10,000)
                dnc.AddNumbers(
                    dnc_pb2.AddNumbersRequest(
                        numbers=internal[i : i + 5000],
                        list_kind=dnc_pb2.LIST_KIND_INTERNAL,
                        reason="asked not to be called (demo)",
                        source="demo",
                    )
                )
                for i in range(0, len(internal), 5000)
            )
        )
        result.dnc_numbers_in_leads = len(set(on_registry) | set(internal))
        out.print(
            f"DNC: national registry extract imported ({registry_text.count(chr(10))} numbers, "
            f"{len(on_registry)} of them in the lead list); {len(internal)} numbers on the internal list; "
            f"wireless list imported ({len(wireless)} lead numbers are wireless: no consent, not autodialled)"
        )

        created = await camp.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                campaign=campaign_pb2.Campaign(
                    name=f"Demo {virtual_now:%Y-%m-%d %H:%M}",
                    dial_mode=common_pb2.DIAL_MODE_PREDICTIVE,
                    caller_id="+12127363100",
                    jurisdiction=common_pb2.JURISDICTION_US,
                    abandon_cap=_US_CAP,
                    default_region="US",
                    ring_timeout=Duration(seconds=25),
                    max_lines_per_agent=3,
                    seller_name="Outdial Demo Co",
                    opt_out_number="+12127363199",
                )
            )
        )
        cid = created.campaign.id
        result.campaign_id = cid
        await _announce_console(cfg, out, infra.database_url, cid)
        result.abandon_cap = created.campaign.abandon_cap or _US_CAP
        data = leads.csv_text.encode("utf-8")
        up = await _upload(camp, cid, data)
        result.upload = {
            "rows": up.rows,
            "accepted": up.accepted,
            "duplicates": up.duplicates,
            "rejected": up.rejected,
            "rejected_by_reason": dict(up.rejected_by_reason),
        }
        out.print(
            f"Leads: {up.rows} rows, {up.accepted} accepted, {up.duplicates} duplicates, "
            f"{up.rejected} rejected {dict(up.rejected_by_reason)}"
        )

        started = asyncio.Event()
        agents_task = asyncio.create_task(
            run_simulated_agents(
                s,
                [(cid, 1)],
                cfg.agents,
                stop=stop_agents,
                talk=Distribution(cfg.talk_mean_s, "exp"),
                wrap=Distribution(cfg.wrap_s, "fixed"),
                seed=cfg.seed,
                prefix="demo-agent",
                started=started,
                phone_of=rig.phone_of if rig is not None else None,
                assign_token=token,  # the demo's admin assigns its agents to the campaign
                dispositions={
                    "sale": 0.2,
                    "not_interested": 0.6,
                    "wrong_number": 0.1,
                    "do_not_call": 0.05,
                    "other": 0.05,
                },
            )
        )
        await asyncio.wait_for(started.wait(), 30)
        started_at = datetime.now(UTC)
        await camp.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=cid))
        out.print(
            f"Campaign {cid} started (predictive) with {cfg.agents} simulated agents; running "
            f"{cfg.seconds:.0f}s (virtual time {virtual_now:%H:%M} UTC)"
        )

        t0 = time.monotonic()
        state: pacing_pb2.PacingState | None = None
        stats: campaign_pb2.GetCampaignStatsResponse | None = None
        last_print = 0.0
        with Live(
            _live_table(None, None, 0, cfg.seconds),
            console=out,
            refresh_per_second=4,
            transient=False,
            auto_refresh=cfg.live and out.is_terminal,
        ) as live:
            while (elapsed := time.monotonic() - t0) < cfg.seconds:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    state = (
                        await pacing.GetPacingState(
                            pacing_pb2.GetPacingStateRequest(campaign_id=cid), timeout=5
                        )
                    ).state
                    stats = await camp.GetCampaignStats(
                        campaign_pb2.GetCampaignStatsRequest(campaign_id=cid), timeout=5
                    )
                table = _live_table(state, stats, elapsed, cfg.seconds)
                live.update(table)
                if cfg.on_tick is not None:
                    await cfg.on_tick(elapsed, sup)
                if not out.is_terminal and elapsed - last_print >= 10:
                    out.print(table)
                    last_print = elapsed
                await asyncio.sleep(0.5)

        paused_at = datetime.now(UTC)
        await camp.PauseCampaign(campaign_pb2.PauseCampaignRequest(campaign_id=cid, reason="demo over"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = (await pacing.GetPacingState(pacing_pb2.GetPacingStateRequest(campaign_id=cid))).state
            if st.lines_in_flight == 0 and st.agents.on_call == 0 and st.agents.reserved == 0:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(cfg.wrap_s + 1.5)
        stop_agents.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agents_task, 20)
        if rig is not None:
            result.sip_leftover_sessions = await _sip_leftover(rig)
        # The agent timeline is stamped with Redis TIME (real time), not the shifted service clock.
        await _fill_report(result, infra.database_url, cid, dnc, since=started_at, until=paused_at)
        final = await camp.GetCampaignStats(campaign_pb2.GetCampaignStatsRequest(campaign_id=cid))
        result.leads_by_state = dict(final.leads_by_state)
        for ch in chans.values():
            await ch.close()
    finally:
        stop_agents.set()
        if agents_task is not None and not agents_task.done():
            agents_task.cancel()
            with contextlib.suppress(BaseException):
                await agents_task
        await asyncio.to_thread(sup.stop)
        if rig is not None:
            rig.stop()
    return result


async def _sip_leftover(rig: Any) -> int:
    """Customer calls rtpengine still holds once the campaign is over and the agents logged out (each one a
    dialog that did not end); the agents' legs close with their logout."""
    from outdial.gateway.rtpengine import RtpEngine

    eng = RtpEngine("127.0.0.1", rig.ports["ng"], 1.0)
    try:
        left: list[str] = []
        for _ in range(20):
            left = [c for c in await eng.list_calls() if c.startswith("c-")]
            if not left:
                break
            await asyncio.sleep(0.5)
        if left:
            err_console.print(f"[red]SIP sessions left in rtpengine: {left}[/red]")
        return len(left)
    finally:
        eng.close()


async def _fill_report(
    result: DemoResult,
    database_url: str,
    cid: str,
    dnc: dnc_pb2_grpc.DncServiceStub,
    since: datetime,
    until: datetime,
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        row = await pool.fetchrow(
            """SELECT count(*) FILTER (WHERE dial_at IS NOT NULL) AS placed,
                      count(*) FILTER (WHERE answer = 'human') AS live,
                      count(*) FILTER (WHERE outcome = 'connected') AS connected,
                      count(*) FILTER (WHERE outcome = 'abandoned') AS abandoned,
                      count(*) FILTER (WHERE outcome = 'machine') AS machine,
                      count(*) FILTER (WHERE outcome = 'no_answer') AS no_answer,
                      count(*) FILTER (WHERE outcome = 'busy') AS busy,
                      count(*) FILTER (WHERE outcome = 'failed') AS failed,
                      count(*) FILTER (WHERE opt_out) AS opt_outs
                 FROM dial_attempts WHERE campaign_id = $1""",
            cid,
        )
        assert row is not None
        result.calls_placed, result.live_answers = row["placed"], row["live"]
        result.connected, result.abandoned = row["connected"], row["abandoned"]
        result.machine, result.no_answer, result.busy, result.failed = (
            row["machine"],
            row["no_answer"],
            row["busy"],
            row["failed"],
        )
        result.opt_outs = row["opt_outs"]
        result.messages_played = result.abandoned
        result.abandon_rate = result.abandoned / result.live_answers if result.live_answers else 0.0
        reasons: Counter[str] = Counter()
        for r in await pool.fetch(
            "SELECT reasons FROM dial_attempts WHERE campaign_id = $1 AND NOT allowed", cid
        ):
            for code in json.loads(r["reasons"]) if isinstance(r["reasons"], str) else r["reasons"]:
                reasons[str(code)] += 1
        result.blocked_by_reason = dict(reasons)
        agent_ids = [
            r["agent_id"]
            for r in await pool.fetch(
                "SELECT DISTINCT agent_id FROM agent_state_events WHERE agent_id LIKE 'demo-agent-%'"
            )
        ]
        talk_wrap = logged = 0.0
        for aid in agent_ids:
            # While the campaign ran (the agent timeline is stamped with Redis TIME, i.e. real time).
            events = await load_timeline(pool, aid)
            before = [e for e in events if e.at < since]
            timeline = [e for e in events if since <= e.at <= until]
            if before:  # the state the agent was in when the campaign started
                timeline.insert(0, dataclasses.replace(before[-1], at=since))
            k = compute_kpis(timeline, until=until)
            talk_wrap += k.talk_s + k.wrap_s
            logged += k.logged_in_s
        result.occupancy = talk_wrap / logged if logged else 0.0
    finally:
        await pool.close()
    verify = await dnc.VerifyAudit(dnc_pb2.VerifyAuditRequest())
    result.audit_ok, result.audit_records, result.audit_problem = (
        verify.ok,
        verify.records_checked,
        verify.problem,
    )


def print_report(r: DemoResult) -> None:
    t = Table(title="outdial demo — final report")
    t.add_column("figure")
    t.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("campaign", r.campaign_id),
        ("database (the demo's own, kept for a look; not `outdial run`'s)", database_name(r.database_url)),
        (
            "lead rows read / accepted / duplicates / rejected",
            f"{r.upload.get('rows')} / {r.upload.get('accepted')} / {r.upload.get('duplicates')} / "
            f"{r.upload.get('rejected')}",
        ),
        (
            "rejected at upload, by reason",
            ", ".join(f"{k}: {v}" for k, v in sorted(r.upload.get("rejected_by_reason", {}).items())),
        ),
        ("leads by state", ", ".join(f"{k}: {v}" for k, v in sorted(r.leads_by_state.items()))),
        ("lead numbers on a DNC list (never to be dialled)", str(r.dnc_numbers_in_leads)),
        ("wireless lead numbers without consent (not autodialled)", str(r.wireless_numbers_in_leads)),
        ("calls placed", str(r.calls_placed)),
        ("live answers", str(r.live_answers)),
        ("connected to an agent", str(r.connected)),
        ("abandoned (message played)", f"{r.abandoned} ({r.messages_played})"),
        ("abandonment rate / cap", f"{r.abandon_rate:.2%} / {r.abandon_cap:.0%}"),
        ("machine / no answer / busy / failed", f"{r.machine} / {r.no_answer} / {r.busy} / {r.failed}"),
        ("key-press opt-outs", str(r.opt_outs)),
        ("agent occupancy (talk + wrap / logged in)", f"{r.occupancy:.1%}"),
        (
            "blocked by the gate, by reason",
            ", ".join(f"{k}: {v}" for k, v in sorted(r.blocked_by_reason.items())) or "none",
        ),
        (
            "DNC audit log",
            f"{'verified' if r.audit_ok else 'BROKEN: ' + r.audit_problem} ({r.audit_records} records)",
        ),
    ]
    if r.telephony == "sip":
        rows.append(
            (
                "SIP: dialogs not ended (rtpengine sessions left)",
                f"{r.sip_leftover_sessions}"
                + (" (every dialog ended)" if not r.sip_leftover_sessions else ""),
            )
        )
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    console.print("[green]demo OK[/green]" if r.ok else "[red]demo FAILED[/red]")


def _with_console(cfg: DemoConfig, services: tuple[str, ...], env: dict[str, str]) -> tuple[str, ...]:
    if not cfg.console:
        return services
    env["OUTDIAL_CONSOLE_SECURE_COOKIES"] = "false"  # plain HTTP on loopback
    return (*services, "console")


async def _announce_console(cfg: DemoConfig, out: Any, database_url: str, campaign_id: str) -> None:
    if not cfg.console:
        return
    password = await _console_user(database_url)
    out.print(
        f"Console: http://127.0.0.1:{ConsoleSettings().port}/campaigns/{campaign_id} (live while the demo runs; "
        f"user demo, password {password})"
    )


async def _console_user(database_url: str) -> str:
    """The console user ``demo`` (a manager) with a new random password for this run."""
    from outdial.console import accounts
    from outdial.core import db

    password = accounts.new_password()
    pool = await db.create_pool(database_url, max_size=1)
    try:
        try:
            await accounts.add_user(
                pool, "demo", "manager", password, actor="outdial demo", display_name="Demo"
            )
        except AlreadyExists:
            await accounts.set_password(pool, "demo", password, actor="outdial demo")
    finally:
        await pool.close()
    return password


async def demo(args: argparse.Namespace, settings: Settings) -> int:
    cfg = DemoConfig(
        seconds=args.seconds,
        agents=args.agents,
        leads=args.leads,
        seed=args.seed,
        to_stderr=args.json,
        telephony=args.telephony,
        console=not args.no_console,
        separate=True,
    )
    result = await run_demo(settings, cfg)
    if args.json:
        print_json(result.as_dict())
    else:
        print_report(result)
    return 0 if result.ok else 1


def register(sub: Any) -> None:
    p = command(sub, "demo", demo, "run a simulated campaign end to end and print its report")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the campaign runs (wall clock)")
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--leads", type=int, default=3000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--telephony",
        choices=("sim", "sip"),
        default="sim",
        help="sim: the simulated carrier; sip: real SIP and RTP on loopback (gateway, rtpengine, SIPp)",
    )
    p.add_argument("--no-console", action="store_true", help="do not serve the web console during the demo")
