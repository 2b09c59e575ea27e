#!/usr/bin/env python3
"""Verify an outdial evidence pack, with nothing but Python 3.11+ and the ``cryptography`` package.

    python3 verify_pack.py PACK_DIR [--public-key KEY.pem ...] [--allow-unanchored] [--json]

This file is copied into every pack as ``verify_pack.py`` (``outdial evidence export``) and is what
``outdial evidence verify`` runs: it imports nothing of outdial, so a third party can read it whole and run it
without installing outdial. It checks, and names the first problem of each kind:

1. ``manifest.json``: every file of the pack is listed with its SHA-256, and nothing else is in the pack;
2. ``chain.json``: the segment of the DNC audit hash chain holds together: each record's hash is
   ``sha256(canonical(record) + prev_hash)`` (canonical: the JSON object of seq, at_us, actor, action, number,
   campaign_id, call_id, result, reason, details, keys sorted, no spaces, non-ASCII as is), each record's
   ``prev_hash`` is the hash of the one before, seq has no gap and time never goes backwards;
3. the signed checkpoints: each is an Ed25519 signature (by a trusted key: ``--public-key``, else the keys in
   the pack, which is weaker and said so) over ``{"at_us","hash","key_id","seq","signed_at_us","v"}``, and a
   checkpoint of a record of the segment agrees with that record. The newest one covering the campaign's last
   record proves that the records up to it were in the log, unchanged, when it was signed;
4. ``decisions.json``: the campaign's audit records are exactly the segment's records of that campaign (none
   altered, none left out);
5. ``dial_attempts.json``: every call that was dialled names (``audit_seqs``) an allowed dial-time decision of
   that call among the campaign's records.

Exit status 0 when every check passes, 1 otherwise (each problem on stderr).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MANIFEST = "manifest.json"
FORMAT = "outdial-evidence/1"
GENESIS = "0" * 64
_FIELDS = (
    "seq",
    "at_us",
    "actor",
    "action",
    "number",
    "campaign_id",
    "call_id",
    "result",
    "reason",
    "details",
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_hash(rec: dict[str, Any]) -> str:
    body = {k: rec[k] for k in _FIELDS}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(canon + str(rec["prev_hash"]).encode()).hexdigest()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def checkpoint_ok(cp: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> str:
    """'' when ``cp`` is signed by one of ``keys``, else the problem."""
    key = keys.get(str(cp.get("key_id")))
    if key is None:
        return f"checkpoint of record {cp.get('seq')}: signed by key {cp.get('key_id')}, which is not trusted"
    body = {k: cp[k] for k in ("v", "seq", "hash", "at_us", "signed_at_us", "key_id")}
    try:
        sig = base64.b64decode(str(cp["sig"]), validate=True)
        key.verify(sig, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    except (InvalidSignature, binascii.Error, ValueError):
        return f"checkpoint of record {cp.get('seq')}: the signature does not verify"
    return ""


class Report:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.facts: dict[str, Any] = {}

    def bad(self, problem: str) -> None:
        self.problems.append(problem)

    @property
    def ok(self) -> bool:
        return not self.problems


def _load(pack: Path, name: str, rep: Report) -> Any:
    try:
        return json.loads((pack / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        rep.bad(f"{name}: cannot be read as JSON ({exc})")
        return None


def check_manifest(pack: Path, rep: Report) -> dict[str, Any] | None:
    manifest = _load(pack, MANIFEST, rep)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        rep.bad(f"{MANIFEST}: not an evidence manifest of format {FORMAT}")
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        rep.bad(f"{MANIFEST}: no files listed")
        return None
    present = {p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file()} - {MANIFEST}
    for name in sorted(set(files) - present):
        rep.bad(f"{name}: listed in the manifest but missing")
    for name in sorted(present - set(files)):
        rep.bad(f"{name}: in the pack but not in the manifest")
    for name in sorted(set(files) & present):
        if sha256_file(pack / name) != files[name]:
            rep.bad(f"{name}: its SHA-256 differs from the manifest's (the file was changed)")
    return manifest


def check_chain(
    chain: dict[str, Any], keys: dict[str, Ed25519PublicKey], rep: Report
) -> dict[int, dict[str, Any]]:
    """The segment's records by seq (those that hold together), checkpoints checked against them."""
    recs = chain.get("records") or []
    by_seq: dict[int, dict[str, Any]] = {}
    prev = str(chain.get("start_prev_hash", ""))
    last_seq = int(chain.get("start_seq", 1)) - 1
    last_at = -1
    for rec in recs:
        seq = int(rec["seq"])
        if seq != last_seq + 1:
            rep.bad(f"chain.json: record {last_seq + 1} is missing (next is {seq})")
            break
        if rec["prev_hash"] != prev:
            rep.bad(f"chain.json: record {seq} does not follow record {last_seq} (prev_hash differs)")
            break
        if record_hash(rec) != rec["hash"]:
            rep.bad(f"chain.json: record {seq} was changed (its contents do not match its hash)")
            break
        if int(rec["at_us"]) < last_at:
            rep.bad(f"chain.json: record {seq} is dated before record {last_seq}")
            break
        by_seq[seq] = rec
        prev, last_seq, last_at = rec["hash"], seq, int(rec["at_us"])
    anchored = 0
    for cp in chain.get("checkpoints") or []:
        problem = checkpoint_ok(cp, keys)
        if problem:
            rep.bad(f"chain.json: {problem}")
            continue
        rec = by_seq.get(int(cp["seq"]))
        if rec is None:
            continue
        if rec["hash"] != cp["hash"] or int(rec["at_us"]) != int(cp["at_us"]):
            rep.bad(
                f"chain.json: record {cp['seq']} disagrees with its signed checkpoint (the log was rewritten)"
            )
            continue
        anchored = max(anchored, int(cp["seq"]))
    rep.facts["segment"] = [int(chain.get("start_seq", 0)), last_seq]
    rep.facts["anchored_seq"] = anchored
    return by_seq


def verify_pack(
    pack: Path, trusted: list[Ed25519PublicKey] | None = None, *, allow_unanchored: bool = False
) -> Report:
    rep = Report()
    manifest = check_manifest(pack, rep)
    if manifest is None:
        return rep
    campaign = str(manifest.get("campaign_id", ""))
    rep.facts["campaign_id"] = campaign
    chain = _load(pack, "chain.json", rep)
    decisions = _load(pack, "decisions.json", rep)
    attempts = _load(pack, "dial_attempts.json", rep)
    if chain is None or decisions is None or attempts is None:
        return rep
    by_seq = check_chain(chain, _keys(chain, trusted, rep), rep)

    mine = {s for s, r in by_seq.items() if r["campaign_id"] == campaign}
    listed: set[int] = set()
    for rec in decisions.get("records") or []:
        seq = int(rec["seq"])
        listed.add(seq)
        seg = by_seq.get(seq)
        if seg is None:
            rep.bad(f"decisions.json: record {seq} is not in the verified chain segment")
        elif {k: rec.get(k) for k in (*_FIELDS, "prev_hash", "hash")} != {
            k: seg.get(k) for k in (*_FIELDS, "prev_hash", "hash")
        }:
            rep.bad(f"decisions.json: record {seq} differs from the chain's record {seq}")
        elif rec["campaign_id"] != campaign:
            rep.bad(f"decisions.json: record {seq} is of campaign {rec['campaign_id']!r}, not {campaign!r}")
    for seq in sorted(mine - listed):
        rep.bad(f"decisions.json: the chain's record {seq} of campaign {campaign} is left out")
    last = max(listed, default=0)
    rep.facts["decisions"] = len(listed)
    if last and rep.facts.get("anchored_seq", 0) < last:
        msg = (
            f"no signed checkpoint covers record {last} (the campaign's last): the records after "
            f"{rep.facts.get('anchored_seq', 0)} are proven by the hash chain and the manifest only"
        )
        if allow_unanchored:
            rep.warnings.append(msg)
        else:
            rep.bad(msg)

    check_dials(attempts.get("rows") or [], {s: by_seq[s] for s in listed if s in by_seq}, rep)
    return rep


def _keys(
    chain: dict[str, Any], trusted: list[Ed25519PublicKey] | None, rep: Report
) -> dict[str, Ed25519PublicKey]:
    """The keys to check the checkpoints with: the trusted ones, else the pack's own (with a warning)."""
    if trusted:
        return {key_id(k): k for k in trusted}
    keys = {}
    for pem in chain.get("public_keys") or []:
        try:
            k = load_key(pem.encode())
        except ValueError as exc:
            rep.bad(f"chain.json: a public key cannot be read ({exc})")
            continue
        keys[key_id(k)] = k
    rep.warnings.append(
        "the checkpoints were checked with the public key(s) in the pack: compare their key id "
        f"({', '.join(sorted(keys)) or 'none'}) with the one the company published, or pass --public-key"
    )
    return keys


def check_dials(rows: list[dict[str, Any]], decisions: dict[int, dict[str, Any]], rep: Report) -> None:
    """Every dialled attempt names (``audit_seqs``) an allowed dial-time decision of its own call."""

    def allowed_check(seq: Any, call_id: Any) -> bool:
        r = decisions.get(seq) if isinstance(seq, int) else None
        return (
            r is not None and r["action"] == "check" and r["result"] == "allowed" and r["call_id"] == call_id
        )

    dialled = [a for a in rows if a.get("dial_at")]
    for a in dialled:
        if not any(allowed_check(s, a.get("call_id")) for s in a.get("audit_seqs") or []):
            rep.bad(
                f"dial_attempts.json: call {a.get('call_id')} was dialled with no allowed dial-time decision "
                "among its audit records"
            )
    rep.facts["dialled"] = len(dialled)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="verify an outdial evidence pack")
    p.add_argument("pack", help="the pack's directory")
    p.add_argument("--public-key", action="append", default=[], help="trusted PEM public key (repeatable)")
    p.add_argument(
        "--allow-unanchored", action="store_true", help="records after the last checkpoint: warn only"
    )
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    trusted = [load_key(Path(k).read_bytes()) for k in a.public_key]
    rep = verify_pack(Path(a.pack), trusted or None, allow_unanchored=a.allow_unanchored)
    if a.json:
        print(json.dumps({"ok": rep.ok, "problems": rep.problems, "warnings": rep.warnings, **rep.facts}))
    else:
        for w in rep.warnings:
            print(f"warning: {w}", file=sys.stderr)
        for problem in rep.problems:
            print(f"PROBLEM: {problem}", file=sys.stderr)
        if rep.ok:
            print(
                f"evidence pack intact: campaign {rep.facts.get('campaign_id')}, {rep.facts.get('decisions')} "
                f"audit records, chain segment {rep.facts.get('segment')}, anchored up to record "
                f"{rep.facts.get('anchored_seq')}, {rep.facts.get('dialled')} dialled calls each with an "
                "allowed decision"
            )
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
