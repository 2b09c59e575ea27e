"""``outdial dnc add|remove|check|import|lists|audit|verify|consent|why|rnd``: the compliance officer's
commands."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from outdial.cli.base import channel, command, err_console, fail, group, print_json, print_table, to_dict
from outdial.cli.when import parse_when
from outdial.core.config import Settings
from outdial.core.csvsafe import csv_safe
from outdial.core.jurisdictions import JURISDICTION_PB
from outdial.v1 import common_pb2, dnc_pb2, dnc_pb2_grpc

KINDS = {
    "internal": dnc_pb2.LIST_KIND_INTERNAL,
    "campaign": dnc_pb2.LIST_KIND_CAMPAIGN,
    "national": dnc_pb2.LIST_KIND_NATIONAL,
    "state": dnc_pb2.LIST_KIND_STATE,
    "wireless": dnc_pb2.LIST_KIND_WIRELESS,
}
JUR = JURISDICTION_PB
CHUNK = 1 << 20


def _stub(args: argparse.Namespace, settings: Settings) -> dnc_pb2_grpc.DncServiceStub:
    # keep the channel referenced for the command's life (grpc.aio closes a channel when it is collected)
    ch = args.dnc_channel = channel(args, settings, "dnc")
    return dnc_pb2_grpc.DncServiceStub(ch)


def _auth(args: argparse.Namespace, settings: Settings) -> list[tuple[str, str]]:
    """Streaming calls carry the token themselves (the channel interceptor covers unary calls only)."""
    token = getattr(args, "token", None) or settings.token
    return [("authorization", f"Bearer {token}")] if token else []


def _time(s: str, option: str) -> Timestamp:
    """A time option: ISO 8601 or a relative form ('1 hour ago', 'yesterday'), see cli/when.py."""
    dt = parse_when(s, option)
    t = Timestamp()
    t.FromDatetime(dt.astimezone(UTC))
    return t


def _target(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "list_kind": KINDS[args.list_kind],
        "campaign_id": args.campaign or "",
        "state": args.state or "",
        "jurisdiction": JUR[args.jurisdiction] if args.jurisdiction else common_pb2.JURISDICTION_UNSPECIFIED,
    }
    if args.list:
        out["list_id"] = args.list
    return out


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("numbers", nargs="+", metavar="NUMBER")
    p.add_argument("--reason", required=True, help="why (kept in the audit log)")
    p.add_argument("--list-kind", choices=sorted(KINDS), default="internal")
    p.add_argument("--list", help="list id (e.g. internal, campaign:C1, state:US-FL, wireless:US)")
    p.add_argument("--campaign", help="campaign id (campaign lists)")
    p.add_argument("--state", help="state code (state lists)")
    p.add_argument("--jurisdiction", choices=sorted(JUR))


async def _add(args: argparse.Namespace, settings: Settings) -> int:
    req = dnc_pb2.AddNumbersRequest(numbers=args.numbers, reason=args.reason, source="cli", **_target(args))
    if args.expires:
        req.expires_at.CopyFrom(_time(args.expires, "--expires"))
    resp = await _stub(args, settings).AddNumbers(req, timeout=30)
    if args.json:
        print_json(to_dict(resp))
    else:
        print(f"{resp.added} added to {resp.list_id}, {resp.already_present} already there")
        for bad in resp.invalid:
            err_console.print(f"[yellow]not a phone number:[/yellow] {bad}")
    return 2 if resp.invalid else 0


async def _remove(args: argparse.Namespace, settings: Settings) -> int:
    req = dnc_pb2.RemoveNumbersRequest(numbers=args.numbers, reason=args.reason, **_target(args))
    resp = await _stub(args, settings).RemoveNumbers(req, timeout=30)
    if args.json:
        print_json(to_dict(resp))
    else:
        print(f"{resp.removed} removed from {resp.list_id}, {resp.not_present} were not on it")
    return 0


def _reason(r: dnc_pb2.BlockReason) -> dict[str, Any]:
    d: dict[str, Any] = {"code": r.code, "detail": r.detail}
    if r.list_id:
        d["list_id"] = r.list_id
    if r.HasField("since"):
        d["since"] = r.since.ToDatetime(tzinfo=UTC).isoformat()
    if r.HasField("expires_at"):
        d["expires_at"] = r.expires_at.ToDatetime(tzinfo=UTC).isoformat()
    return d


METHODS = {
    "autodialled": common_pb2.CALL_METHOD_AUTODIALLED,
    "prerecorded": common_pb2.CALL_METHOD_PRERECORDED,
    "manual": common_pb2.CALL_METHOD_MANUAL,
}
PURPOSES = {
    "telemarketing": common_pb2.CALL_PURPOSE_TELEMARKETING,
    "informational": common_pb2.CALL_PURPOSE_INFORMATIONAL,
}


def _call_type(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "call_method": METHODS[args.method] if args.method else common_pb2.CALL_METHOD_UNSPECIFIED,
        "call_purpose": PURPOSES[args.purpose] if args.purpose else common_pb2.CALL_PURPOSE_UNSPECIFIED,
    }


def _call_type_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        choices=sorted(METHODS),
        help="how the call is placed (default autodialled; preview: manual)",
    )
    p.add_argument("--purpose", choices=sorted(PURPOSES), help="what it is for (default telemarketing)")


async def _check(args: argparse.Namespace, settings: Settings) -> int:
    req = dnc_pb2.CheckNumbersRequest(
        numbers=args.numbers,
        campaign_id=args.campaign or "",
        jurisdiction=JUR[args.jurisdiction] if args.jurisdiction else common_pb2.JURISDICTION_UNSPECIFIED,
        **_call_type(args),
    )
    resp = await _stub(args, settings).CheckNumbers(req, timeout=30)
    if args.json:
        for d in resp.decisions:
            print_json({"number": d.number, "allowed": d.allowed, "reasons": [_reason(r) for r in d.reasons]})
    else:
        print_table(
            None,
            ["number", "allowed", "reasons"],
            [
                (
                    d.number,
                    "yes" if d.allowed else "NO",
                    "; ".join(f"{r.code}: {r.detail}" for r in d.reasons),
                )
                for d in resp.decisions
            ],
        )
    return 0 if all(d.allowed for d in resp.decisions) else 1


async def _import(args: argparse.Namespace, settings: Settings) -> int:
    if not os.path.exists(args.file):
        return fail(f"no such file: {args.file}", 2)
    size = os.path.getsize(args.file)
    header = dnc_pb2.ImportRegistryHeader(
        list_kind=KINDS[args.kind],
        jurisdiction=JUR[args.jurisdiction],
        state=args.state or "",
        mode=dnc_pb2.IMPORT_MODE_CHANGES if args.changes else dnc_pb2.IMPORT_MODE_FULL,
        downloaded_at=_time(args.downloaded_at, "--downloaded-at"),
        source=os.path.basename(args.file),
    )
    show = not args.json and sys.stderr.isatty()
    progress = Progress(
        TextColumn("importing"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not show,
    )

    async def gen() -> AsyncIterator[dnc_pb2.ImportRegistryRequest]:
        yield dnc_pb2.ImportRegistryRequest(header=header)
        task = progress.add_task("import", total=size)
        with open(args.file, "rb") as f:
            while chunk := f.read(CHUNK):
                progress.update(task, advance=len(chunk))
                yield dnc_pb2.ImportRegistryRequest(chunk=chunk)

    with progress:
        resp = await _stub(args, settings).ImportRegistry(gen(), timeout=3600, metadata=_auth(args, settings))
    if args.json:
        print_json(to_dict(resp))
    else:
        print(
            f"{resp.list_id}: {resp.lines} lines, {resp.added} added, {resp.removed} removed, "
            f"{resp.invalid} invalid; index version {resp.index_version}"
        )
        for s in resp.invalid_samples:
            err_console.print(f"[yellow]invalid line:[/yellow] {s}")
    return 0


async def _lists(args: argparse.Namespace, settings: Settings) -> int:
    resp = await _stub(args, settings).ListLists(dnc_pb2.ListListsRequest(), timeout=30)
    if args.json:
        print_json(to_dict(resp))
        return 0
    rows = []
    for li in resp.lists:
        reg = (
            li.registry_date.ToDatetime(tzinfo=UTC).date().isoformat() if li.HasField("registry_date") else ""
        )
        rows.append(
            (
                li.id,
                dnc_pb2.ListKind.Name(li.kind).removeprefix("LIST_KIND_").lower(),
                li.name,
                li.entries,
                reg,
            )
        )
    print_table("DNC lists", ["id", "kind", "name", "entries", "registry date"], rows)
    return 0


AUDIT_COLUMNS = [
    "seq",
    "at",
    "actor",
    "action",
    "number",
    "campaign_id",
    "call_id",
    "result",
    "reason",
    "details_json",
    "hash",
]


async def _audit(args: argparse.Namespace, settings: Settings) -> int:
    req = dnc_pb2.QueryAuditRequest(
        number=args.number or "",
        campaign_id=args.campaign or "",
        actor=args.actor or "",
        action=args.action or "",
        result=args.result or "",
    )
    if args.since:
        req.since.CopyFrom(_time(args.since, "--since"))
    if args.until:
        req.until.CopyFrom(_time(args.until, "--until"))
    stream = _stub(args, settings).QueryAudit(req, timeout=3600, metadata=_auth(args, settings))
    writer = csv.writer(sys.stdout) if args.csv else None
    if writer:
        writer.writerow(AUDIT_COLUMNS)
    rows: list[list[str]] = []
    async for page in stream:
        for r in page.records:
            row = [
                str(r.seq),
                r.at.ToDatetime(tzinfo=UTC).isoformat(),
                r.actor,
                r.action,
                r.number,
                r.campaign_id,
                r.call_id,
                r.result,
                r.reason,
                r.details_json,
                r.hash,
            ]
            if writer:
                writer.writerow([csv_safe(c) for c in row])
            elif args.json:
                print_json(dict(zip(AUDIT_COLUMNS, row, strict=True)))
            else:
                rows.append(row)
    if rows:
        print_table("DNC audit log", AUDIT_COLUMNS[:9], [r[:9] for r in rows])
    return 0


async def _verify_direct(args: argparse.Namespace) -> dnc_pb2.VerifyAuditResponse | int:
    """Straight against PostgreSQL, without the services: any login that may read dnc_audit and its head
    (outdial_auditor), the checkpoints, and the public key. The same code the service runs
    (outdial.dnc.verify), so an auditor need not trust the service: that is why the CLI imports it."""
    import asyncpg
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from outdial.dnc.anchor import CheckpointError, load_public_key
    from outdial.dnc.sinks import CheckpointSink, open_sink
    from outdial.dnc.verify import verification_response, verify_with_sink

    keys: list[Ed25519PublicKey] = []
    for path in args.public_key or []:
        try:
            with open(path, "rb") as f:
                keys.append(load_public_key(f.read()))
        except (OSError, CheckpointError) as exc:
            return fail(f"--public-key {path}: {exc}", 2)
    sink: CheckpointSink | None = None
    if args.checkpoints:
        if not keys:
            return fail("--checkpoints needs --public-key (the key that signed them)", 2)
        try:
            sink = open_sink(args.checkpoints)
        except ValueError as exc:
            return fail(str(exc), 2)
    else:
        err_console.print(
            "[yellow]no --checkpoints: checking the chain alone (a rewrite by the database owner that "
            "recomputed the hashes cannot be told without them)[/yellow]"
        )
    try:
        conn = await asyncpg.connect(args.database_url)
    except (OSError, asyncpg.PostgresError) as exc:
        return fail(f"--database-url: cannot connect: {exc}", 1)
    try:
        v = await verify_with_sink(conn, args.from_seq, sink, keys)
    finally:
        await conn.close()
    return verification_response(v)


async def _verify(args: argparse.Namespace, settings: Settings) -> int:
    if args.from_seq < 0:
        return fail("--from-seq must be 0 or more", 2)
    if args.database_url:
        got = await _verify_direct(args)
        if isinstance(got, int):
            return got
        resp = got
    else:
        if args.checkpoints or args.public_key:
            return fail(
                "--checkpoints and --public-key go with --database-url (verify without the service)", 2
            )
        resp = await _stub(args, settings).VerifyAudit(
            dnc_pb2.VerifyAuditRequest(from_seq=args.from_seq), timeout=3600
        )
    if args.json:
        print_json(to_dict(resp))
    elif resp.ok:
        anchored = (
            f"; checkpoints: {resp.checkpoints_checked} checked, record {resp.anchored_seq} anchored "
            f"(signed {resp.anchored_at.ToDatetime(tzinfo=UTC).isoformat()}), "
            f"{resp.unanchored_records} records after it"
            if resp.checkpoints_checked
            else "; no checkpoint checked"
        )
        print(f"audit log intact: {resp.records_checked} records, head {resp.head_hash}{anchored}")
        if resp.records_checked and not resp.checkpoints_checked:
            err_console.print(
                "[yellow]warning: no signed checkpoint covers this log, so a rewrite by the database owner "
                "that recomputed the hashes cannot be told[/yellow]"
            )
    else:
        err_console.print(f"[red]audit log BROKEN at record {resp.first_bad_seq}[/red]: {resp.problem}")
    if not resp.ok:
        if args.json:
            sys.stderr.write(f"audit log broken at record {resp.first_bad_seq}: {resp.problem}\n")
        return 3
    return 0


async def _why(args: argparse.Namespace, settings: Settings) -> int:
    req = dnc_pb2.ExplainDecisionRequest(
        number=args.number, campaign_id=args.campaign or "", **_call_type(args)
    )
    req.at.CopyFrom(_time(args.at, "--at"))
    resp = await _stub(args, settings).ExplainDecision(req, timeout=30)
    if args.json:
        out = to_dict(resp)
        print_json(out)
    else:
        print(resp.explanation)
        for r in resp.records:
            print(
                f"  #{r.seq} {r.at.ToDatetime(tzinfo=UTC).isoformat()} {r.actor} {r.action} {r.result} {r.reason}"
            )
    return 0


#: The kinds by the rules table's names (rules/data/*.yaml ``requires_any``), and their short names.
CONSENT_KINDS = {
    "prior_express_consent": dnc_pb2.CONSENT_KIND_EXPRESS,
    "prior_express_written_consent": dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN,
    "established_business_relationship": dnc_pb2.CONSENT_KIND_EXISTING_BUSINESS_RELATIONSHIP,
    "campaign_opt_in": dnc_pb2.CONSENT_KIND_CAMPAIGN_OPT_IN,
    "express": dnc_pb2.CONSENT_KIND_EXPRESS,
    "express_written": dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN,
    "ebr": dnc_pb2.CONSENT_KIND_EXISTING_BUSINESS_RELATIONSHIP,
}
EBR_BASES = {"purchase": dnc_pb2.EBR_BASIS_PURCHASE, "inquiry": dnc_pb2.EBR_BASIS_INQUIRY}
CHANNELS = {"sms": dnc_pb2.INBOUND_CHANNEL_SMS, "email": dnc_pb2.INBOUND_CHANNEL_EMAIL}


async def _consent(args: argparse.Namespace, settings: Settings) -> int:
    """Record (or revoke) a person's consent: compliance only; a grant names its evidence."""
    req = dnc_pb2.SetConsentRequest(
        number=args.number,
        revoke=args.revoke,
        campaign_id=args.campaign or "",
        evidence=args.evidence or "",
        obtained_via=args.via or "",
        text_agreed=args.text or "",
        ip_address=args.ip or "",
        recording_ref=args.recording or "",
    )
    if args.kind:
        req.kind = CONSENT_KINDS[args.kind]
    if args.ebr_basis:
        req.ebr_basis = EBR_BASES[args.ebr_basis]
    if args.obtained_at:
        req.obtained_at.CopyFrom(_time(args.obtained_at, "--obtained-at"))
    if args.expires:
        req.expires_at.CopyFrom(_time(args.expires, "--expires"))
    resp = await _stub(args, settings).SetConsent(req)
    if args.json:
        print_json(to_dict(resp))
    else:
        print(f"{'revoked' if args.revoke else 'granted'}: audit record #{resp.audit_seq}")
    return 0


async def _inbound(args: argparse.Namespace, settings: Settings) -> int:
    """An SMS or email reply: one holding a revocation word (STOP, UNSUBSCRIBE, "do not call", …) revokes the
    number's consent and puts it on the internal list at once."""
    req = dnc_pb2.RecordInboundMessageRequest(
        channel=CHANNELS[args.channel],
        sender=args.sender,
        body=args.body,
        number=args.number or "",
        campaign_id=args.campaign or "",
    )
    req.received_at.CopyFrom(_time(args.received_at, "--received-at"))
    resp = await _stub(args, settings).RecordInboundMessage(req)
    if args.json:
        print_json(to_dict(resp))
    elif resp.revocation:
        print(
            f"revocation ({resp.matched!r}): {resp.number} is on the internal list, "
            f"{resp.consents_revoked} consent(s) revoked; audit record #{resp.audit_seq}"
        )
    else:
        print(f"no revocation word in the message; audit record #{resp.audit_seq}")
    return 0


RND_ANSWERS = {
    dnc_pb2.RND_ANSWER_YES: "yes",
    dnc_pb2.RND_ANSWER_NO: "no",
    dnc_pb2.RND_ANSWER_NO_DATA: "no_data",
}


async def _rnd_import(args: argparse.Namespace, settings: Settings) -> int:
    """Import Reassigned Numbers Database query results (exit 1 when rows were rejected)."""
    if not os.path.exists(args.file):
        return fail(f"no such file: {args.file}", 2)

    async def gen() -> AsyncIterator[dnc_pb2.ImportRndResultsRequest]:
        yield dnc_pb2.ImportRndResultsRequest(
            header=dnc_pb2.ImportRndResultsHeader(source=args.source or os.path.basename(args.file))
        )
        with open(args.file, "rb") as f:
            while chunk := f.read(CHUNK):
                yield dnc_pb2.ImportRndResultsRequest(chunk=chunk)

    resp = await _stub(args, settings).ImportRndResults(gen(), timeout=600, metadata=_auth(args, settings))
    if args.json:
        print_json(to_dict(resp))
    else:
        print(
            f"RND import #{resp.import_id}: {resp.rows} rows, {resp.imported} imported, "
            f"{resp.already_present} already present, {resp.rejected} rejected; audit record #{resp.audit_seq}"
        )
        for r in resp.rejects:
            err_console.print(f"[yellow]row {r.row}[/yellow] {r.field}: {r.reason} ({r.value!r})")
        if resp.rejected > len(resp.rejects):
            err_console.print(f"… and {resp.rejected - len(resp.rejects)} more rejected rows")
    return 1 if resp.rejected else 0


async def _rnd_show(args: argparse.Namespace, settings: Settings) -> int:
    """The RND answers stored for a number, newest queried date first."""
    resp = await _stub(args, settings).GetRndResults(dnc_pb2.GetRndResultsRequest(number=args.number))
    if args.json:
        print_json(to_dict(resp))
        return 0
    if not resp.results:
        print(f"{resp.number}: no Reassigned Numbers Database results imported")
        return 0
    print_table(
        f"RND results for {resp.number}",
        ["queried date", "answer", "disconnect date", "imported", "import"],
        [
            [
                r.queried_date,
                RND_ANSWERS.get(r.answer, "?"),
                r.disconnect_date or "-",
                r.imported_at.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds"),
                str(r.import_id),
            ]
            for r in resp.results
        ],
    )
    return 0


def register(sub: Any) -> None:
    g = group(sub, "dnc", "do-not-call lists, the gate and the audit log")
    p = command(g, "add", _add, "put numbers on a DNC list (internal by default)")
    _target_args(p)
    p.add_argument("--expires", help="expiry time (ISO 8601, or relative: 'tomorrow 9am', '1 hour ago')")
    p = command(g, "remove", _remove, "take numbers off a DNC list (audited; history is kept)")
    _target_args(p)
    p = command(g, "check", _check, "may these numbers be dialled? (exit 1 when any is blocked)")
    p.add_argument("numbers", nargs="+", metavar="NUMBER")
    p.add_argument("--campaign")
    p.add_argument("--jurisdiction", choices=sorted(JUR))
    _call_type_args(p)
    p = command(g, "import", _import, "import a registry file (full copy, or a change file with --changes)")
    p.add_argument("file")
    p.add_argument("--kind", choices=["national", "state", "wireless"], default="national")
    p.add_argument("--jurisdiction", choices=sorted(JUR), default="US")
    p.add_argument("--state")
    p.add_argument(
        "--downloaded-at",
        required=True,
        help="when the registry copy was downloaded (ISO 8601, or relative: 'tomorrow 9am', '1 hour ago')",
    )
    p.add_argument("--changes", action="store_true", help="lines are +N / -N (or N,A / N,D)")
    command(g, "lists", _lists, "the DNC lists and their sizes")
    p = command(g, "audit", _audit, "query the audit log")
    for opt in ("--number", "--campaign", "--since", "--until", "--actor", "--action", "--result"):
        p.add_argument(opt)
    p.add_argument("--csv", action="store_true", help="CSV export (formula-safe)")
    p = command(
        g, "verify", _verify, "recompute the audit hash chain (exit non-zero naming the first bad record)"
    )
    p.add_argument("--from-seq", type=int, default=0)
    p.add_argument(
        "--database-url",
        help="verify straight against PostgreSQL, without the services (a read-only login: outdial_auditor)",
    )
    p.add_argument("--checkpoints", help="where the signed checkpoints are (file:///directory)")
    p.add_argument(
        "--public-key",
        action="append",
        help="PEM public key that signs the checkpoints (repeat for rotated keys)",
    )
    p = command(
        g, "consent", _consent, "record a person's consent with its evidence, or revoke it (compliance only)"
    )
    p.add_argument("number")
    p.add_argument("--kind", choices=sorted(CONSENT_KINDS), help="required for a grant")
    p.add_argument(
        "--evidence", help="what proves it: the signed form's reference, the recording, the message"
    )
    p.add_argument(
        "--obtained-at", help="when the person gave it (ISO 8601, or relative: 'tomorrow 9am', '1 hour ago')"
    )
    p.add_argument(
        "--via", help="the source, how it was obtained: web_form, signed_paper, recorded_call, sms, …"
    )
    p.add_argument("--text", help="the text the person agreed to (required for a grant)")
    p.add_argument("--ip", help="the IP address the consent came from (this or --recording for a grant)")
    p.add_argument("--recording", help="a reference to the consent's recording")
    p.add_argument(
        "--ebr-basis",
        choices=sorted(EBR_BASES),
        help="an established business relationship's basis (its months come from the rules table)",
    )
    p.add_argument("--campaign", help="only for this campaign (default: every campaign)")
    p.add_argument("--expires", help="when it lapses (ISO 8601, or relative: 'tomorrow 9am', '1 hour ago')")
    p.add_argument("--revoke", action="store_true", help="revoke instead (no evidence needed)")
    p = command(
        g,
        "inbound",
        _inbound,
        "record an SMS/email reply: a revocation word (STOP, UNSUBSCRIBE, do not call, …) revokes consent at once",
    )
    p.add_argument(
        "--from", dest="sender", required=True, help="the sender: a phone number (sms) or an address"
    )
    p.add_argument("--channel", choices=sorted(CHANNELS), default="sms")
    p.add_argument("--body", required=True, help="the message's text")
    p.add_argument("--number", help="the phone number the reply is about (required for email)")
    p.add_argument("--campaign", help="the campaign the reply answers, when known")
    p.add_argument(
        "--received-at", default="now", help="when the message arrived (ISO 8601 or relative; default now)"
    )
    r = group(g, "rnd", "Reassigned Numbers Database results (the 47 CFR 64.1200(m) safe harbor)")
    p = command(
        r,
        "import",
        _rnd_import,
        "import RND query results: CSV number,queried_date,answer(yes|no|no_data)[,disconnect_date]",
    )
    p.add_argument("file")
    p.add_argument("--source", help="where the results came from (default: the file's name)")
    p = command(r, "show", _rnd_show, "the RND results stored for a number")
    p.add_argument("number")
    p = command(g, "why", _why, "why a number was or was not dialled at a time")
    p.add_argument("number")
    p.add_argument(
        "--at", required=True, help="time (ISO 8601, or relative: 'now', '1 hour ago', 'yesterday')"
    )
    p.add_argument("--campaign")
    _call_type_args(p)
