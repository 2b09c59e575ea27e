"""``outdial campaign create|update|list|show|start|pause|resume|complete|archive|stats|history`` and
``outdial leads upload|rejects|lists``: the campaign manager's commands."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from google.protobuf import field_mask_pb2
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from outdial.campaign.leads import neutralise_formula
from outdial.cli.base import channel, command, console, fail, group, print_json, print_table, to_dict
from outdial.cli.when import parse_when
from outdial.core.config import Settings
from outdial.core.jurisdictions import JURISDICTION_PB
from outdial.rules.law import MIN_RING_S, abandon_policy
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, common_pb2, pacing_pb2, pacing_pb2_grpc

MODES = {
    "preview": common_pb2.DIAL_MODE_PREVIEW,
    "progressive": common_pb2.DIAL_MODE_PROGRESSIVE,
    "power": common_pb2.DIAL_MODE_POWER,
    "predictive": common_pb2.DIAL_MODE_PREDICTIVE,
    "agentless": common_pb2.DIAL_MODE_AGENTLESS,
}
JUR = JURISDICTION_PB
STATES = {
    "draft": common_pb2.CAMPAIGN_STATE_DRAFT,
    "active": common_pb2.CAMPAIGN_STATE_ACTIVE,
    "paused": common_pb2.CAMPAIGN_STATE_PAUSED,
    "completed": common_pb2.CAMPAIGN_STATE_COMPLETED,
    "archived": common_pb2.CAMPAIGN_STATE_ARCHIVED,
}
CHUNK = 1 << 20


def _stub(args: argparse.Namespace, settings: Settings) -> campaign_pb2_grpc.CampaignServiceStub:
    ch = args.campaign_channel = channel(args, settings, "campaign")  # keep the channel referenced
    return campaign_pb2_grpc.CampaignServiceStub(ch)


def _auth(args: argparse.Namespace, settings: Settings) -> list[tuple[str, str]]:
    """Streaming calls carry the token themselves (the channel interceptor covers unary calls only)."""
    token = getattr(args, "token", None) or settings.token
    return [("authorization", f"Bearer {token}")] if token else []


def _campaign_json(c: campaign_pb2.Campaign) -> dict[str, Any]:
    d = to_dict(c)
    for k, enum, prefix in (
        ("state", common_pb2.CampaignState, "CAMPAIGN_STATE_"),
        ("dial_mode", common_pb2.DialMode, "DIAL_MODE_"),
        ("jurisdiction", common_pb2.Jurisdiction, "JURISDICTION_"),
    ):
        d[k] = str(enum.Name(getattr(c, k))).removeprefix(prefix).lower()
    d["jurisdiction"] = d["jurisdiction"].upper()
    return d


def _time(s: str, option: str) -> datetime:
    return parse_when(s, option, prefer="future")


def _settings_args(p: argparse.ArgumentParser, create: bool) -> None:
    p.add_argument("--name", required=create)
    p.add_argument("--description")
    p.add_argument("--caller-id", help="E.164 caller ID, e.g. +12125550100 (required to start)")
    p.add_argument("--mode", choices=sorted(MODES))
    p.add_argument("--power-ratio", type=float)
    p.add_argument("--jurisdiction", choices=sorted(JUR))
    p.add_argument("--window", help="calling window in the lead's local time, HH:MM-HH:MM")
    p.add_argument("--days", help="ISO weekdays allowed, e.g. 1,2,3,4,5")
    p.add_argument("--holiday", action="append", help="YYYY-MM-DD with no calls (repeatable)")
    p.add_argument("--skip-public-holidays", action="store_true", default=None)
    p.add_argument(
        "--abandon-cap", type=float, help=f"fraction of live answers, e.g. {abandon_policy('US').cap:g}"
    )
    p.add_argument(
        "--max-calls-24h", type=int, help="max calls per number per rolling 24 h (0 = legal default)"
    )
    p.add_argument("--max-attempts", type=int, help="max attempts per lead (0 = retry rules only)")
    p.add_argument("--region", help="default region for national-format numbers (US, CA, GB …)")
    p.add_argument("--ring-timeout", type=int, help=f"seconds (>= {MIN_RING_S:g}, the legal minimum)")
    p.add_argument("--max-lines-per-agent", type=int)
    p.add_argument("--seller-name", help="the seller's legal name, spoken by the message (required to start)")
    p.add_argument(
        "--opt-out-number",
        help="E.164 callback number for do-not-call requests, of the campaign's country (required to start)",
    )
    p.add_argument(
        "--seller-is-campaign-name",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the seller's legal name is the campaign's name on purpose",
    )
    p.add_argument("--disposition", action="append", help="disposition name (repeatable; replaces the list)")
    p.add_argument(
        "--retry",
        action="append",
        metavar="OUTCOME=DELAY_S:MAX",
        help="retry rule, e.g. no_answer=3600:5 (repeatable; replaces the rules)",
    )
    p.add_argument("--preview-seconds", type=int, help="preview: seconds the agent has (0 = wait for them)")
    p.add_argument("--preview-timeout-action", choices=["dial", "skip"], help="preview: at the timeout")
    p.add_argument("--preview-skip-delay", type=int, help="preview: seconds before a skipped lead comes back")
    p.add_argument("--message", help="agentless: the message (outdial adds who calls and the opt-out)")
    p.add_argument(
        "--informational",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="agentless: the message is informational, not telemarketing (required to start)",
    )
    p.add_argument(
        "--purpose",
        choices=["telemarketing", "informational"],
        help="what the calls are for (default telemarketing): decides the consent each number needs",
    )
    p.add_argument("--machine-action", choices=["hang_up", "leave_message"], help="agentless: on a machine")
    p.add_argument("--agentless-lines", type=int, help="agentless: most calls in flight")
    p.add_argument("--amd", choices=["on", "off"], help="answering-machine detection (default on)")
    p.add_argument(
        "--amd-false-positive-rate",
        type=float,
        help="AMD: estimated share of machine-classified answers that were people (a fraction; UK: required)",
    )
    p.add_argument("--amd-false-positive-basis", help="AMD: how the estimate was measured or reasoned")
    p.add_argument("--start-at", help="scheduled start (ISO 8601, or relative: 'tomorrow 9am', '1 hour ago')")
    p.add_argument("--end-at", help="scheduled end (ISO 8601, or relative: 'tomorrow 9am', '1 hour ago')")


def _mode_args(args: argparse.Namespace, c: campaign_pb2.Campaign, put: Any, paths: list[str]) -> None:
    for value, path in (
        (args.preview_seconds, "preview_timeout"),
        (args.preview_skip_delay, "preview_skip_delay"),
    ):
        if value is not None:
            getattr(c, path).FromSeconds(value)
            paths.append(path)
    if args.preview_timeout_action:
        put(
            "preview_timeout_action",
            "preview_timeout_action",
            campaign_pb2.PreviewTimeoutAction.Value(
                f"PREVIEW_TIMEOUT_ACTION_{args.preview_timeout_action.upper()}"
            ),
        )
    if args.machine_action:
        put(
            "machine_action",
            "machine_action",
            campaign_pb2.MachineAction.Value(f"MACHINE_ACTION_{args.machine_action.upper()}"),
        )
    if args.purpose:
        put(
            "call_purpose",
            "call_purpose",
            common_pb2.CallPurpose.Value(f"CALL_PURPOSE_{args.purpose.upper()}"),
        )
    put("agentless_message", "agentless_message", args.message)
    put("message_informational", "message_informational", args.informational)
    put("agentless_lines", "agentless_lines", args.agentless_lines)
    put("amd", "amd", campaign_pb2.AmdMode.Value(f"AMD_MODE_{args.amd.upper()}") if args.amd else None)
    put("amd_false_positive_rate", "amd_false_positive_rate", args.amd_false_positive_rate)
    put("amd_false_positive_basis", "amd_false_positive_basis", args.amd_false_positive_basis)


def _campaign_from_args(args: argparse.Namespace) -> tuple[campaign_pb2.Campaign, list[str]]:
    c = campaign_pb2.Campaign()
    paths: list[str] = []

    def put(path: str, attr: str, value: Any) -> None:
        if value is not None:
            setattr(c, attr, value)
            paths.append(path)

    put("name", "name", args.name)
    put("description", "description", args.description)
    put("caller_id", "caller_id", args.caller_id)
    put("dial_mode", "dial_mode", MODES[args.mode] if args.mode else None)
    put("power_ratio", "power_ratio", args.power_ratio)
    put("jurisdiction", "jurisdiction", JUR[args.jurisdiction] if args.jurisdiction else None)
    put("abandon_cap", "abandon_cap", args.abandon_cap)
    put("max_calls_per_number_24h", "max_calls_per_number_24h", args.max_calls_24h)
    put("max_attempts_per_lead", "max_attempts_per_lead", args.max_attempts)
    put("default_region", "default_region", args.region)
    put("max_lines_per_agent", "max_lines_per_agent", args.max_lines_per_agent)
    put("seller_name", "seller_name", args.seller_name)
    put("opt_out_number", "opt_out_number", args.opt_out_number)
    put("seller_is_campaign_name", "seller_is_campaign_name", args.seller_is_campaign_name)
    if args.ring_timeout is not None:
        c.ring_timeout.FromSeconds(args.ring_timeout)
        paths.append("ring_timeout")
    _mode_args(args, c, put, paths)
    if args.window or args.days or args.holiday or args.skip_public_holidays:
        start, _, end = (args.window or "").partition("-")  # empty: the default window
        c.calling_window.start_local, c.calling_window.end_local = start.strip(), end.strip()
        if args.days:
            c.calling_window.days_of_week.extend(int(d) for d in args.days.split(","))
        c.calling_window.holiday_dates.extend(args.holiday or [])
        c.calling_window.skip_public_holidays = bool(args.skip_public_holidays)
        paths.append("calling_window")
    if args.disposition:
        c.dispositions.extend(args.disposition)
        paths.append("dispositions")
    if args.retry:
        for spec in args.retry:
            outcome, _, rest = spec.partition("=")
            delay, _, mx = rest.partition(":")
            r = c.retry_rules.add(
                outcome=common_pb2.CallOutcome.Value(f"CALL_OUTCOME_{outcome.strip().upper()}"),
                max_attempts=int(mx or 0),
            )
            r.delay.FromSeconds(int(delay or 0))
        paths.append("retry_rules")
    for flag, path, option in (
        (args.start_at, "scheduled_start", "--start-at"),
        (args.end_at, "scheduled_end", "--end-at"),
    ):
        if flag:
            getattr(c, path).FromDatetime(_time(flag, option))
            paths.append(path)
    return c, paths


def _show(args: argparse.Namespace, c: campaign_pb2.Campaign) -> None:
    d = _campaign_json(c)
    if args.json:
        print_json(d)
        return
    cw = c.calling_window
    print_table(
        f"campaign {c.id}",
        ["field", "value"],
        [
            ("name", c.name),
            ("state", d["state"]),
            ("mode", d["dial_mode"] + (f" x{c.power_ratio:g}" if d["dial_mode"] == "power" else "")),
            ("caller id", c.caller_id),
            ("jurisdiction", d["jurisdiction"]),
            ("window", f"{cw.start_local}-{cw.end_local} days {','.join(map(str, cw.days_of_week))}"),
            ("abandon cap", f"{c.abandon_cap:.1%} over {c.abandon_window.seconds // 3600} h"),
            ("max calls/number/24h", c.max_calls_per_number_24h or "legal default"),
            (
                "answering-machine detection",
                "off"
                if c.amd == campaign_pb2.AMD_MODE_OFF
                else (
                    f"on, false positives estimated at {c.amd_false_positive_rate:.1%} "
                    f"({c.amd_false_positive_basis})"
                    if c.HasField("amd_false_positive_rate")
                    else "on, no false-positive estimate"
                ),
            ),
            (
                "retry",
                ", ".join(
                    f"{common_pb2.CallOutcome.Name(r.outcome).removeprefix('CALL_OUTCOME_').lower()}"
                    f"={r.delay.seconds}s:{r.max_attempts}"
                    for r in c.retry_rules
                ),
            ),
        ],
    )


async def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    c, _ = _campaign_from_args(args)
    resp = await _stub(args, settings).CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))
    _show(args, resp.campaign)
    return 0


async def cmd_update(args: argparse.Namespace, settings: Settings) -> int:
    c, paths = _campaign_from_args(args)
    if not paths:
        return fail("nothing to change: give at least one setting")
    c.id = args.id
    req = campaign_pb2.UpdateCampaignRequest(campaign=c, update_mask=field_mask_pb2.FieldMask(paths=paths))
    resp = await _stub(args, settings).UpdateCampaign(req)
    _show(args, resp.campaign)
    return 0


async def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    resp = await _stub(args, settings).GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id=args.id))
    _show(args, resp.campaign)
    return 0


async def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    stub = _stub(args, settings)
    out: list[campaign_pb2.Campaign] = []
    token = ""
    while True:
        resp = await stub.ListCampaigns(
            campaign_pb2.ListCampaignsRequest(states=[STATES[s] for s in args.state or []], page_token=token)
        )
        out += list(resp.campaigns)
        token = resp.next_page_token
        if not token:
            break
    if args.json:
        print_json([_campaign_json(c) for c in out])
        return 0
    print_table(
        "campaigns",
        ["id", "name", "state", "mode", "caller id"],
        [
            (c.id, c.name, _campaign_json(c)["state"], _campaign_json(c)["dial_mode"], c.caller_id)
            for c in out
        ],
    )
    return 0


def _mover(action: str) -> Any:
    async def handler(args: argparse.Namespace, settings: Settings) -> int:
        stub = _stub(args, settings)
        rpc = getattr(stub, f"{action.capitalize()}Campaign")
        req_cls = getattr(campaign_pb2, f"{action.capitalize()}CampaignRequest")
        kw = {"reason": args.reason} if action == "pause" and args.reason else {}
        resp = await rpc(req_cls(campaign_id=args.id, **kw))
        _show(args, resp.campaign)
        return 0

    return handler


def _amd_line(st: campaign_pb2.GetCampaignStatsResponse) -> str:
    if not st.amd:
        return "off"
    if not st.HasField("amd_false_positive_rate"):
        return f"on, {st.amd_machine_answers} machine answers, no false-positive estimate stated"
    return (
        f"on, false positives estimated at {st.amd_false_positive_rate:.1%} ({st.amd_false_positive_basis}): "
        f"{st.amd_estimated_false_positives} of {st.amd_machine_answers} machine answers counted as abandoned"
    )


async def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    st = await _stub(args, settings).GetCampaignStats(
        campaign_pb2.GetCampaignStatsRequest(campaign_id=args.id)
    )
    if args.json:
        print_json(to_dict(st))
        return 0
    print_table(
        f"campaign {st.campaign_id}",
        ["figure", "value"],
        [
            ("leads", st.leads_total),
            *((f"  {k}", v) for k, v in sorted(st.leads_by_state.items())),
            ("attempts", st.attempts),
            ("live answers", st.live_answers),
            ("connected", st.connected),
            ("abandoned", st.abandoned),
            ("abandonment 24 h", f"{st.abandon_rate_24h:.2%}"),
            ("abandonment 30 d", f"{st.abandon_rate_30d:.2%}"),
            ("abandonment over the window", f"{st.abandon_rate_window:.2%} (cap {st.abandon_cap:.1%})"),
            ("answering-machine detection", _amd_line(st)),
            ("contacts last hour", f"{st.contacts_per_hour:g}"),
            ("list penetration", f"{st.list_penetration:.1%}"),
            ("blocked at dial time", st.blocked),
            ("leads needing consent", st.leads_need_consent),
            ("leads needing a fresh wireless list (or consent)", st.leads_need_fresh_list),
            ("hopper", st.hopper_size),
        ],
    )
    return 0


# ----------------------------------------------------------------------------------- leads


def _mapping(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise ValueError(f'--map {it!r}: expected field="Header"')
        out[k.strip()] = v.strip().strip('"')
    return out


async def cmd_upload(args: argparse.Namespace, settings: Settings) -> int:
    try:
        mapping = _mapping(args.map)
    except ValueError as exc:
        return fail(str(exc))
    if not os.path.isfile(args.file):
        return fail(f"no such file: {args.file}")
    size = os.path.getsize(args.file)
    header = campaign_pb2.UploadLeadsHeader(
        campaign_id=args.campaign,
        file_name=os.path.basename(args.file),
        column_mapping=mapping,
        default_region=args.region or "",
        request_id=args.request_id or "",
    )
    show = not args.json and sys.stderr.isatty()
    progress = Progress(
        TextColumn("[bold]uploading"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console if not args.json else None,
        disable=not show,
    )

    async def chunks() -> AsyncIterator[campaign_pb2.UploadLeadsRequest]:
        yield campaign_pb2.UploadLeadsRequest(header=header)
        task = progress.add_task("upload", total=size)
        with open(args.file, "rb") as fh:
            while data := fh.read(CHUNK):
                yield campaign_pb2.UploadLeadsRequest(chunk=data)
                progress.advance(task, len(data))

    with progress:
        resp = await _stub(args, settings).UploadLeads(chunks(), metadata=_auth(args, settings), timeout=3600)
    out = {
        "list_id": resp.list_id,
        "rows": resp.rows,
        "accepted": resp.accepted,
        "duplicates": resp.duplicates,
        "rejected": resp.rejected,
        "rejected_by_reason": dict(sorted(resp.rejected_by_reason.items())),
    }
    if args.json:
        print_json(out)
        return 0
    print_table(
        f"lead list {resp.list_id}",
        ["", "count"],
        [
            ("rows read", resp.rows),
            ("leads accepted", resp.accepted),
            ("numbers accepted", resp.numbers_accepted),
            ("duplicates", resp.duplicates),
            ("rejected", resp.rejected),
            *((f"  {k}", v) for k, v in sorted(resp.rejected_by_reason.items())),
        ],
    )
    if resp.rejected:
        console.print(f"rejected rows: outdial leads rejects --list {resp.list_id} > rejects.csv")
    return 0


async def cmd_rejects(args: argparse.Namespace, settings: Settings) -> int:
    stub = _stub(args, settings)
    call = stub.ListLeadRejects(
        campaign_pb2.ListLeadRejectsRequest(list_id=args.list), metadata=_auth(args, settings)
    )
    if args.json:
        rows = [to_dict(r) async for page in call for r in page.rejects]
        print_json(rows)
        return 0
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["row_number", "field", "raw_value", "reason", "detail"])
    async for page in call:
        for r in page.rejects:
            w.writerow(
                [r.row_number, *(neutralise_formula(v) for v in (r.field, r.raw_value, r.reason, r.detail))]
            )
    sys.stdout.flush()
    return 0


async def cmd_lists(args: argparse.Namespace, settings: Settings) -> int:
    resp = await _stub(args, settings).ListLeadLists(
        campaign_pb2.ListLeadListsRequest(campaign_id=args.campaign)
    )
    if args.json:
        print_json([to_dict(x) for x in resp.lists])
        return 0
    print_table(
        "lead lists",
        ["id", "file", "rows", "accepted", "duplicates", "rejected"],
        [(x.id, x.file_name, x.rows, x.accepted, x.duplicates, x.rejected) for x in resp.lists],
    )
    return 0


def _version_row(kind: str, v: common_pb2.SettingsVersion) -> tuple[Any, ...]:
    changed = "; ".join(f"{c.path}: {c.before_json or '-'} -> {c.after_json or '-'}" for c in v.changes)
    return (kind, v.version, v.at.ToDatetime(tzinfo=UTC).isoformat(), v.actor, v.action, changed)


def _version_json(kind: str, v: common_pb2.SettingsVersion) -> dict[str, Any]:
    return {
        "kind": kind,
        "version": v.version,
        "at": v.at.ToDatetime(tzinfo=UTC).isoformat(),
        "actor": v.actor,
        "action": v.action,
        "settings": json.loads(v.settings_json),
        "changes": [{"path": c.path, "before": c.before_json, "after": c.after_json} for c in v.changes],
    }


async def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    """Every version of the campaign's settings and of its pacing settings: who, when, what changed."""
    camp = await _stub(args, settings).ListCampaignVersions(
        campaign_pb2.ListCampaignVersionsRequest(campaign_id=args.id)
    )
    args.pacing_channel = channel(args, settings, "pacing")  # keep the channel referenced
    pacing = await pacing_pb2_grpc.PacingServiceStub(args.pacing_channel).ListPacingSettingsVersions(
        pacing_pb2.ListPacingSettingsVersionsRequest(campaign_id=args.id)
    )
    if args.json:
        print_json(
            {
                "campaign_id": args.id,
                "campaign": [_version_json("campaign", v) for v in camp.versions],
                "pacing": [_version_json("pacing", v) for v in pacing.versions],
            }
        )
        return 0
    rows = [_version_row("campaign", v) for v in camp.versions]
    rows += [_version_row("pacing", v) for v in pacing.versions]
    rows.sort(key=lambda r: (r[2], r[0], r[1]))
    print_table(
        f"settings history of campaign {args.id}",
        ["settings", "version", "at", "actor", "action", "changes"],
        rows,
    )
    return 0


async def cmd_retention_run(args: argparse.Namespace, settings: Settings) -> int:
    """Remove call records older than the retention period now (the campaign service also runs it on a
    schedule); ``--dry-run`` counts them. Every run is recorded in retention_runs."""
    resp = await _stub(args, settings).RunRetention(
        campaign_pb2.RunRetentionRequest(dry_run=args.dry_run), timeout=3600
    )
    out = {
        "dry_run": resp.dry_run,
        "years": resp.years,
        "floors": dict(sorted(resp.floors.items())),
        "removed": dict(sorted(resp.removed.items())),
        "run_ids": list(resp.run_ids),
    }
    if args.json:
        print_json(out)
        return 0
    verb = "would remove" if resp.dry_run else "removed"
    print_table(
        f"retention run {', '.join(map(str, resp.run_ids))}: records kept "
        f"{f'{resp.years} years' if resp.years else 'the minimum of their jurisdiction'} "
        f"(minimum per jurisdiction in years: {', '.join(f'{k} {v}' for k, v in sorted(resp.floors.items()))})",
        ["records", verb],
        sorted(resp.removed.items()),
    )
    return 0


def register(sub: Any) -> None:
    g = group(
        sub,
        "campaign",
        "campaigns: create, change, run, stats (live pacing: `outdial pacing watch CAMPAIGN`)",
    )
    p = command(g, "create", cmd_create, "create a campaign (draft)")
    _settings_args(p, True)
    p = command(g, "update", cmd_update, "change a campaign's settings")
    p.add_argument("id")
    _settings_args(p, False)
    p = command(g, "list", cmd_list, "list campaigns")
    p.add_argument("--state", action="append", choices=sorted(STATES))
    p = command(g, "show", cmd_show, "show one campaign")
    p.add_argument("id")
    for action, text in (
        ("start", "start a draft campaign"),
        ("pause", "pause an active campaign"),
        ("resume", "resume a paused campaign"),
        ("complete", "complete a campaign"),
        ("archive", "archive a campaign"),
    ):
        p = command(g, action, _mover(action), text)
        p.add_argument("id")
        if action == "pause":
            p.add_argument("--reason")
    p = command(g, "stats", cmd_stats, "a campaign's figures")
    p.add_argument("id")
    p = command(g, "history", cmd_history, "every version of a campaign's settings and pacing settings")
    p.add_argument("id", metavar="CAMPAIGN")

    rg = group(sub, "retention", "call-record retention (the rules' minimum, configurable upward only)")
    p = command(rg, "run", cmd_retention_run, "remove call records older than the retention period now")
    p.add_argument("--dry-run", action="store_true", help="count what would be removed, remove nothing")

    lg = group(sub, "leads", "lead lists: upload, rejects")
    p = command(lg, "upload", cmd_upload, "upload a CSV lead file to a campaign")
    p.add_argument("file")
    p.add_argument("--campaign", required=True)
    p.add_argument(
        "--map",
        action="append",
        metavar='FIELD="Header"',
        help="map a lead field to a column: phone, phone2, first_name, last_name, zip, state, timezone",
    )
    p.add_argument("--region", help="default region for this file's national-format numbers")
    p.add_argument("--request-id", help="idempotency key: a retried upload returns the first result")
    p = command(lg, "rejects", cmd_rejects, "the rejected rows of a lead list, as CSV on stdout")
    p.add_argument("--list", required=True)
    p = command(lg, "lists", cmd_lists, "the lead lists of a campaign")
    p.add_argument("--campaign", required=True)
