"""``outdial evidence export|verify``: a campaign's pack from real PostgreSQL (read with the auditor login), a
signed checkpoint, the standalone verifier; every kind of tampering is caught."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from outdial.cli import evidence_check
from outdial.cli.main import build_parser
from outdial.dnc.anchor import public_pem, sign
from outdial.dnc.audit import record_hash
from outdial.dnc.sinks import FileSink
from outdial.pacing.gate import DialGate, GateLead
from outdial.pacing.store import PacingStore
from tests.conftest import as_user
from tests.integration.test_dnc_gate import pacing, start
from tests.integration.test_pacing_dialer import campaign_config

AT = datetime(2026, 11, 18, 14, 30, tzinfo=UTC)  # 09:30 in New York, 08:30 in Chicago
CID = "camp-pack"


async def cli(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return int(await args.handler(args, None))


def rehash(pack: Path) -> None:
    """What a forger does after changing a file: fix the manifest."""
    m = json.loads((pack / "manifest.json").read_text())
    m["files"] = {
        p.relative_to(pack).as_posix(): evidence_check.sha256_file(p)
        for p in pack.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    (pack / "manifest.json").write_text(json.dumps(m))


def edit_json(pack: Path, name: str, change: Callable[[Any], None]) -> None:
    obj = json.loads((pack / name).read_text())
    change(obj)
    (pack / name).write_text(json.dumps(obj))


def problems(pack: Path, key: Any = None, **kw: Any) -> list[str]:
    return evidence_check.verify_pack(pack, [key] if key else None, **kw).problems


async def make_decisions(
    services: Any, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await start(services, monkeypatch)
    gate = DialGate(redis, pacing(services), PacingStore(pg, redis))
    ny = ("America/New_York",)
    await gate.check(CID, campaign_config(id=CID), [GateLead("c0", "l0", "+12122340000", ny, "NY", 1)], AT)
    # another campaign's decision in between: in the chain segment, not in this campaign's decisions
    await gate.check(
        "other", campaign_config(id="other"), [GateLead("o1", "x", "+12122340009", ny, "NY", 1)], AT
    )
    await gate.check(
        CID,
        campaign_config(id=CID),
        [GateLead("c1", "l1", "+13122340001", ("America/Chicago",), "IL", 1)],  # too early there
        AT,
    )


async def test_export_verifies_and_every_tampering_is_caught(
    services: Any,
    redis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    pg: asyncpg.Pool,
    database_url: str,
    tmp_path: Path,
) -> None:
    await make_decisions(services, redis, pg, monkeypatch)
    # the dialer's attempt of the allowed call, and its call record
    await pg.execute(
        "INSERT INTO dial_attempts (call_id, campaign_id, lead_id, number, attempt, replica, fence_token, allowed,"
        " gate_at, dial_at, end_at, outcome) VALUES ('c0', $1, 'l0', '+12122340000', 1, 'r1', 1, true, $2, $2,"
        " $3, 'no_answer')",
        CID,
        AT,
        AT + timedelta(seconds=30),
    )
    await pg.execute(
        "INSERT INTO call_records (call_id, campaign_id, called_number, dial_at, outcome) "
        "VALUES ('c0', $1, '+12122340000', $2, 'no_answer')",
        CID,
        AT,
    )
    # a signed checkpoint of the head, kept outside the database
    key = Ed25519PrivateKey.generate()
    head = await pg.fetchrow("SELECT seq, hash, at FROM dnc_audit_head")
    cp_dir = tmp_path / "checkpoints"
    await FileSink(cp_dir, cp_dir.as_uri()).put(sign(key, head["seq"], head["hash"], head["at"], head["at"]))
    pem = tmp_path / "audit.pub.pem"
    pem.write_bytes(public_pem(key.public_key()))

    pack = tmp_path / "pack"
    auditor = as_user(database_url, "outdial_auditor")
    args = [
        "--campaign",
        CID,
        "--database-url",
        auditor,
        "--checkpoints",
        cp_dir.as_uri(),
        "--public-key",
        str(pem),
    ]
    assert await cli("evidence", "export", "--out", str(pack), *args) == 0
    assert sorted(p.name for p in pack.iterdir()) == [
        "README.txt",
        "call_records.csv",
        "call_records.json",
        "chain.json",
        "decisions.csv",
        "decisions.json",
        "dial_attempts.csv",
        "dial_attempts.json",
        "manifest.json",
        "rules.json",
        "verify_pack.py",
    ]
    decisions = json.loads((pack / "decisions.json").read_text())["records"]
    assert [(r["call_id"], r["result"]) for r in decisions] == [("c0", "allowed"), ("c1", "blocked")]
    inputs = json.loads(decisions[1]["details"])["inputs"]["dialer"]
    assert inputs["window"]["zones"][0]["local_time"] == "2026-11-18T08:30:00-06:00"
    chain = json.loads((pack / "chain.json").read_text())
    assert "o1" in {r["call_id"] for r in chain["records"]}
    assert chain["checkpoints"][0]["seq"] == head["seq"]
    attempts = json.loads((pack / "dial_attempts.json").read_text())["rows"]
    assert [(a["call_id"], a["audit_seqs"]) for a in attempts] == [("c0", [decisions[0]["seq"]])]
    rule_ids = {r["id"] for r in json.loads((pack / "rules.json").read_text())["rows"]}
    assert {"us.calling_window", "us-fl.call_cap"} <= rule_ids

    trusted = key.public_key()
    assert problems(pack, trusted) == []
    rep = evidence_check.verify_pack(pack)  # the pack's own key: passes, with a warning to compare its id
    assert rep.ok and rep.warnings
    assert await cli("evidence", "verify", str(pack), "--public-key", str(pem)) == 0
    # the standalone verifier: Python and cryptography only, outdial not importable
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", str(pack / "verify_pack.py"), str(pack), "--public-key", str(pem), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out)["ok"] is True

    def copy(name: str) -> Path:
        return Path(shutil.copytree(pack, tmp_path / name))

    # 1. any byte of any file
    for f in sorted(pack.iterdir()):
        t = copy(f"byte-{f.name}")
        with (t / f.name).open("ab") as fh:
            fh.write(b"x")
        found = problems(t, trusted)
        assert found and all(f.name in p for p in found), (f.name, found)
    t = copy("csv")
    (t / "decisions.csv").write_text((t / "decisions.csv").read_text().replace("blocked", "allowed"))
    assert any("decisions.csv" in p and "SHA-256" in p for p in problems(t, trusted))
    t = copy("verifier")
    (t / "verify_pack.py").write_text("print('all good')\n")
    assert any("verify_pack.py" in p for p in problems(t, trusted))
    # 2. a file removed, a file added
    t = copy("removed")
    (t / "call_records.json").unlink()
    assert any("call_records.json" in p and "missing" in p for p in problems(t, trusted))
    t = copy("added")
    (t / "extra.json").write_text("{}")
    assert any("extra.json" in p for p in problems(t, trusted))
    # 3. a decision changed, manifest fixed: it no longer matches the chain
    t = copy("decision")
    edit_json(t, "decisions.json", lambda d: d["records"][1].update(result="allowed"))
    rehash(t)
    assert any("differs from the chain" in p for p in problems(t, trusted))
    # 4. a decision left out
    t = copy("omitted")
    edit_json(t, "decisions.json", lambda d: d["records"].pop())
    rehash(t)
    assert any("left out" in p for p in problems(t, trusted))
    # 5. the chain rewritten consistently (every later hash recomputed): the signed checkpoint disagrees
    t = copy("rewritten")

    def rewrite(chain: dict[str, Any]) -> None:
        prev = chain["start_prev_hash"]
        for r in chain["records"]:
            if r["call_id"] == "c1":
                r["result"], r["reason"] = "allowed", ""
            r["prev_hash"] = prev
            at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=r["at_us"])
            r["hash"] = prev = record_hash(
                r["seq"],
                at,
                evidence_record(r),
                r["prev_hash"],
            )

    edit_json(t, "chain.json", rewrite)
    chain = json.loads((t / "chain.json").read_text())
    by_seq = {r["seq"]: r for r in chain["records"]}
    edit_json(t, "decisions.json", lambda d: d.update(records=[by_seq[r["seq"]] for r in d["records"]]))
    rehash(t)
    assert any("disagrees with its signed checkpoint" in p for p in problems(t, trusted))
    # ...and a forged checkpoint needs the private key
    edit_json(t, "chain.json", lambda c: c["checkpoints"][0].update(hash=c["records"][-1]["hash"]))
    rehash(t)
    assert any("signature does not verify" in p for p in problems(t, trusted))
    # 6. a dialled call with no allowed decision
    t = copy("attempt")
    edit_json(
        t,
        "dial_attempts.json",
        lambda d: d["rows"].append(
            {"call_id": "c9", "dial_at": AT.isoformat(), "allowed": True, "audit_seqs": [decisions[0]["seq"]]}
        ),
    )
    rehash(t)
    assert any("c9" in p for p in problems(t, trusted))
    # ...or one pointing at a blocked decision
    t = copy("blocked-attempt")
    edit_json(t, "dial_attempts.json", lambda d: d["rows"][0].update(audit_seqs=[decisions[1]["seq"]]))
    rehash(t)
    assert any("c0" in p for p in problems(t, trusted))
    assert await cli("evidence", "verify", str(t), "--public-key", str(pem)) == 3

    # without checkpoints the pack says it is not anchored, and verify fails unless told to accept that
    bare = tmp_path / "bare"
    assert (
        await cli("evidence", "export", "--out", str(bare), "--campaign", CID, "--database-url", auditor) == 0
    )
    assert any("no signed checkpoint covers" in p for p in problems(bare))
    assert problems(bare, allow_unanchored=True) == []
    assert (
        await cli("evidence", "export", "--out", str(bare), "--campaign", CID, "--database-url", auditor) == 2
    )


def evidence_record(r: dict[str, Any]) -> Any:
    from outdial.dnc.audit import AuditEntry

    return AuditEntry(
        r["actor"],
        r["action"],
        r["number"],
        r["campaign_id"],
        r["call_id"],
        r["result"],
        r["reason"],
        r["details"],
    )
