"""``outdial evidence export --campaign C --out DIR`` and ``outdial evidence verify DIR``: a self-verifying
evidence pack of one campaign's dial decisions, for a lawyer to hand over.

Like ``outdial dnc verify --database-url``, export reads PostgreSQL directly with a read-only login (the
``outdial_auditor`` role may read the audit log, dial_attempts and call_records), not through the services:
the pack is evidence about the services, so it should not need to trust them. It takes one repeatable-read
snapshot and writes:

- ``decisions.json`` / ``decisions.csv``: every DNC audit record of the campaign (each dial-time decision
  with its inputs: zones, local time, rule versions, counts, consent id; opt-outs and list changes of it);
- ``dial_attempts.json`` / ``.csv`` and ``call_records.json`` / ``.csv``: the dialer's attempts and the call
  records of the campaign, each with ``audit_seqs``: the audit records of its call;
- ``chain.json``: the segment of the hash chain from the campaign's first record to the signed checkpoint
  that covers its last one (every record in between, of any campaign: a hash chain cannot be checked with
  holes), the checkpoints and the public key(s) that signed them;
- ``rules.json``: the rule rows (with source and effective dates) in force on any day of the segment;
- ``verify_pack.py`` (a copy of :mod:`outdial.cli.evidence_check`, only Python and ``cryptography``
  needed) and ``README.txt``;
- ``manifest.json``: the SHA-256 of every other file. Its own SHA-256 is the pack's fingerprint (printed).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from outdial.cli import evidence_check
from outdial.cli.base import command, err_console, fail, group, print_json
from outdial.core.config import Settings
from outdial.core.csvsafe import csv_safe

README = """outdial evidence pack: campaign {campaign}
Exported {created} from the database as of that moment.

Files (their SHA-256 in manifest.json; the SHA-256 of manifest.json is this pack's fingerprint:
{fingerprint_note}):
  decisions.json / .csv        every audit record of the campaign (dial-time decisions with their inputs)
  dial_attempts.json / .csv    the dialer's attempts
  call_records.json / .csv     the call records
  chain.json                   the hash-chain segment {segment}, the signed checkpoints, the public key(s)
  rules.json                   the rule rows in force (source, effective dates)
  verify_pack.py               the verifier

To verify with nothing but Python 3.11+ and the `cryptography` package (pip install cryptography):

  python3 verify_pack.py .  --public-key THE_COMPANY_KEY.pem

Without --public-key the checkpoints are checked with the key(s) in chain.json (key id {key_ids}): compare that
id with the one the company published. The verifier checks every file against the manifest, every record's
hash and link, the checkpoint signatures, that the campaign's records are exactly those of the chain segment,
and that every dialled call has an allowed dial-time decision. Any change to any file is reported.
"""


def _iso(v: Any) -> Any:
    return v.astimezone(UTC).isoformat() if isinstance(v, datetime) else v


def _row(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in dict(r).items():
        if isinstance(v, datetime):
            out[k] = _iso(v)
        elif isinstance(v, date):
            out[k] = v.isoformat()
        else:
            out[k] = v
    return out


def _micros(at: datetime) -> int:
    delta = at.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _record(r: Any) -> dict[str, Any]:
    """A record as the verifier recomputes its hash (``at_us``) plus its time for people (``at``)."""
    return {
        "seq": int(r["seq"]),
        "at_us": _micros(r["at"]),
        "at": _iso(r["at"]),
        "actor": r["actor"],
        "action": r["action"],
        "number": r["number"],
        "campaign_id": r["campaign_id"],
        "call_id": r["call_id"],
        "result": r["result"],
        "reason": r["reason"],
        "details": r["details"],
        "prev_hash": r["prev_hash"],
        "hash": r["hash"],
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(
        json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, default=str) + "\n", "utf-8"
    )


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([csv_safe("" if r.get(c) is None else str(r.get(c))) for c in columns])


def rules_rows(first: date, last: date) -> list[dict[str, Any]]:
    """Every rule row in force on some day from ``first`` to ``last`` (inclusive), with its file."""
    from outdial.rules.dialcheck import rule_refs
    from outdial.rules.table import load_tables

    tables = load_tables()
    out: list[dict[str, Any]] = []
    for (j, st), (name, t) in sorted(tables.files.items()):
        for ref, row in zip(rule_refs(t.rules, full=True), t.rules, strict=True):
            if row.effective_from <= last and (row.effective_until is None or row.effective_until > first):
                out.append({"file": name, "jurisdiction": j, "state": st, **ref})
    return out


AUDIT_COLUMNS = ["seq", "at", "actor", "action", "number", "call_id", "result", "reason", "details", "hash"]


async def _signed(args: argparse.Namespace) -> tuple[list[Any], list[Any]] | int:
    """The trusted public keys (``--public-key``) and the checkpoints of ``--checkpoints`` they verify, or the
    exit code of a refusal."""
    from outdial.dnc.anchor import Checkpoint, CheckpointError, load_public_key
    from outdial.dnc.sinks import open_sink
    from outdial.dnc.verify import load_checkpoints

    keys = []
    for path in args.public_key or []:
        try:
            keys.append(load_public_key(Path(path).read_bytes()))
        except (OSError, CheckpointError) as exc:
            return fail(f"--public-key {path}: {exc}", 2)
    checkpoints: list[Checkpoint] = []
    if args.checkpoints:
        if not keys:
            return fail("--checkpoints needs --public-key (the key that signed them)", 2)
        try:
            sink = open_sink(args.checkpoints)
        except ValueError as exc:
            return fail(str(exc), 2)
        checkpoints, bad = await load_checkpoints(sink, keys)
        if bad is not None:
            return fail(f"the checkpoints do not verify: record {bad[0]}: {bad[1]}", 3)
    else:
        err_console.print(
            "[yellow]no --checkpoints: the pack's chain segment is not anchored by a signed checkpoint; "
            "its verifier will say so[/yellow]"
        )
    return keys, checkpoints


async def export(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from outdial.dnc.anchor import key_id, public_pem

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        return fail(f"--out {out}: the directory is not empty (a pack is written into an empty one)", 2)
    signed = await _signed(args)
    if isinstance(signed, int):
        return signed
    keys, checkpoints = signed
    try:
        conn = await asyncpg.connect(args.database_url)
    except (OSError, asyncpg.PostgresError) as exc:
        return fail(f"--database-url: cannot connect: {exc}", 1)
    cols = "seq, at, actor, action, number, campaign_id, call_id, result, reason, details, prev_hash, hash"
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            mine = [
                _record(r)
                for r in await conn.fetch(
                    f"SELECT {cols} FROM dnc_audit WHERE campaign_id = $1 ORDER BY seq", args.campaign
                )
            ]
            if not mine:
                return fail(f"--campaign {args.campaign}: no audit record of that campaign", 2)
            first, last = mine[0]["seq"], mine[-1]["seq"]
            covering = sorted(c.seq for c in checkpoints if c.seq >= last)
            head = int(await conn.fetchval("SELECT seq FROM dnc_audit_head WHERE id = 1"))
            end = covering[0] if covering else head
            segment = [
                _record(r)
                for r in await conn.fetch(
                    f"SELECT {cols} FROM dnc_audit WHERE seq BETWEEN $1 AND $2 ORDER BY seq", first, end
                )
            ]
            attempts = [
                _row(r)
                for r in await conn.fetch(
                    "SELECT * FROM dial_attempts WHERE campaign_id = $1 ORDER BY gate_at, call_id",
                    args.campaign,
                )
            ]
            calls = [
                _row(r)
                for r in await conn.fetch(
                    "SELECT * FROM call_records WHERE campaign_id = $1 ORDER BY dial_at NULLS LAST, call_id",
                    args.campaign,
                )
            ]
    except asyncpg.InsufficientPrivilegeError as exc:
        return fail(f"--database-url: this login may not read what the pack needs: {exc}", 1)
    finally:
        await conn.close()

    # each attempt and call record names the audit records of its call (the dial-time decision, an opt-out)
    seqs_of: dict[str, list[int]] = {}
    for r in mine:
        if r["call_id"]:
            seqs_of.setdefault(r["call_id"], []).append(r["seq"])
    for row in (*attempts, *calls):
        row["audit_seqs"] = seqs_of.get(str(row.get("call_id")), [])
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC).isoformat()
    used = [c for c in checkpoints if first <= c.seq <= end]
    if covering:
        used = [c for c in used if c.seq <= covering[0]]
    _write_json(out / "decisions.json", {"campaign_id": args.campaign, "records": mine})
    _write_csv(out / "decisions.csv", mine, AUDIT_COLUMNS)
    _write_json(out / "dial_attempts.json", {"campaign_id": args.campaign, "rows": attempts})
    _write_csv(out / "dial_attempts.csv", attempts, list(attempts[0]) if attempts else ["call_id"])
    _write_json(out / "call_records.json", {"campaign_id": args.campaign, "rows": calls})
    _write_csv(out / "call_records.csv", calls, list(calls[0]) if calls else ["call_id"])
    _write_json(
        out / "chain.json",
        {
            "start_seq": first,
            "start_prev_hash": segment[0]["prev_hash"],
            "end_seq": end,
            "records": segment,
            "checkpoints": [json.loads(c.to_json()) for c in used],
            "public_keys": [public_pem(k).decode() for k in keys],
        },
    )
    days = [datetime.fromisoformat(r["at"]).date() for r in (segment[0], segment[-1])]
    _write_json(
        out / "rules.json",
        {"from": days[0].isoformat(), "to": days[1].isoformat(), "rows": rules_rows(*days)},
    )
    (out / "verify_pack.py").write_bytes(Path(evidence_check.__file__).read_bytes())
    (out / "README.txt").write_text(
        README.format(
            campaign=args.campaign,
            created=created,
            fingerprint_note="printed by `outdial evidence export`; keep it with the pack",
            segment=f"{first}..{end}",
            key_ids=", ".join(key_id(k) for k in keys) or "none",
        ),
        "utf-8",
    )
    files = {
        p.relative_to(out).as_posix(): evidence_check.sha256_file(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != evidence_check.MANIFEST
    }
    _write_json(
        out / evidence_check.MANIFEST,
        {
            "format": evidence_check.FORMAT,
            "campaign_id": args.campaign,
            "created_at": created,
            "segment": [first, end],
            "anchored": bool(covering),
            "files": files,
        },
    )
    fingerprint = hashlib.sha256((out / evidence_check.MANIFEST).read_bytes()).hexdigest()
    summary = {
        "out": os.fspath(out),
        "campaign_id": args.campaign,
        "records": len(mine),
        "segment": [first, end],
        "anchored_by_checkpoint": covering[0] if covering else 0,
        "dial_attempts": len(attempts),
        "call_records": len(calls),
        "fingerprint": fingerprint,
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"evidence pack written to {out}: {len(mine)} audit records, {len(attempts)} attempts, "
            f"{len(calls)} call records, chain {first}..{end}"
            + (f" anchored by the checkpoint of record {covering[0]}" if covering else " (NOT anchored)")
        )
        print(f"fingerprint (SHA-256 of manifest.json): {fingerprint}")
    return 0


async def verify(args: argparse.Namespace, settings: Settings) -> int:
    from outdial.dnc.anchor import CheckpointError, load_public_key

    trusted = []
    for path in args.public_key or []:
        try:
            trusted.append(load_public_key(Path(path).read_bytes()))
        except (OSError, CheckpointError) as exc:
            return fail(f"--public-key {path}: {exc}", 2)
    pack = Path(args.pack)
    if not pack.is_dir():
        return fail(f"{pack}: not a directory", 2)
    rep = evidence_check.verify_pack(pack, trusted or None, allow_unanchored=args.allow_unanchored)
    if args.json:
        print_json({"ok": rep.ok, "problems": rep.problems, "warnings": rep.warnings, **rep.facts})
    else:
        for w in rep.warnings:
            err_console.print(f"[yellow]warning:[/yellow] {w}")
        for p in rep.problems:
            err_console.print(f"[red]PROBLEM:[/red] {p}")
        if rep.ok:
            print(
                f"evidence pack intact: campaign {rep.facts['campaign_id']}, {rep.facts['decisions']} audit "
                f"records, chain segment {rep.facts['segment']}, anchored up to record {rep.facts['anchored_seq']}"
            )
    return 0 if rep.ok else 3


def register(sub: Any) -> None:
    g = group(sub, "evidence", "self-verifying evidence packs of a campaign's dial decisions")
    p = command(
        g, "export", export, "write a campaign's evidence pack (decisions, calls, chain proof, rules)"
    )
    p.add_argument("--campaign", required=True)
    p.add_argument("--out", required=True, help="an empty (or new) directory")
    p.add_argument(
        "--database-url",
        required=True,
        help="PostgreSQL, read-only (the outdial_auditor login reads the audit log, dial_attempts, call_records)",
    )
    p.add_argument("--checkpoints", help="where the signed checkpoints are (file:///directory)")
    p.add_argument("--public-key", action="append", help="PEM public key that signs the checkpoints")
    p = command(g, "verify", verify, "verify an evidence pack (exit 3 naming every problem)")
    p.add_argument("pack")
    p.add_argument(
        "--public-key", action="append", help="trusted PEM public key (else the pack's, with a warning)"
    )
    p.add_argument(
        "--allow-unanchored",
        action="store_true",
        help="records after the last signed checkpoint: a warning, not a failure",
    )
