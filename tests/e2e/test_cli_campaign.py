"""The ``outdial campaign`` and ``outdial leads`` commands as a user runs them, against the real service."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Services, make_token


async def cli(env: dict[str, str], *argv: str, ok: bool = True) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outdial.cli.main", *argv,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    rc = proc.returncode
    assert rc is not None
    if ok:
        assert rc == 0, err.decode()
    return rc, out.decode(), err.decode()


async def test_campaign_and_leads_commands(services: Services, tmp_path: Path) -> None:
    rs = await services.start("campaign")
    env = {
        **os.environ,
        "OUTDIAL_CAMPAIGN_ADDR": rs.addr,
        "OUTDIAL_TOKEN": make_token("manager", "cli"),
        "OUTDIAL_DEV": "1",
    }
    _, out, _ = await cli(env, "campaign", "create", "--name", "Spring", "--caller-id", "+12125550100",
                          "--mode", "predictive", "--json")  # fmt: skip
    draft_id = json.loads(out)["id"]
    # No seller's legal name or callback number yet: the start is refused, naming the field.
    rc, _, err = await cli(env, "campaign", "start", draft_id, ok=False)
    assert rc == 3 and "FAILED_PRECONDITION" in err and "seller_name" in err
    _, out, _ = await cli(env, "campaign", "update", draft_id, "--seller-name", "Spring Solar LLC",
                          "--opt-out-number", "+12125550199", "--json")  # fmt: skip
    doc: dict[str, Any] = json.loads(out)
    cid = doc["id"]
    assert doc["name"] == "Spring" and doc["state"] == "draft" and doc["dial_mode"] == "predictive"
    rc, _, err = await cli(env, "campaign", "create", "--name", "x", "--caller-id", "123", "--json", ok=False)
    assert rc == 2 and "INVALID_ARGUMENT" in err and "E.164" in err
    _, out, _ = await cli(
        env, "campaign", "update", cid, "--window", "09:00-20:00", "--max-calls-24h", "2", "--json"
    )
    doc = json.loads(out)
    assert doc["calling_window"]["start_local"] == "09:00" and doc["max_calls_per_number_24h"] == 2

    f = tmp_path / "leads.csv"
    f.write_bytes(
        "\ufeffFirst Name;Phone Number;Mobile;Score\r\n"
        "Ann;(212) 555-0101;;=1+2\r\n"
        "Bob;(212) 555-0101;;7\r\n"
        'Cy;=HYPERLINK("http://x");;9\r\n'
        "Di;1-800-555-0100;(310) 555-0102;3\r\n".encode()
    )
    _, out, _ = await cli(env, "leads", "upload", str(f), "--campaign", cid, "--json")
    summary = json.loads(out)
    assert set(summary) == {"list_id", "rows", "accepted", "duplicates", "rejected", "rejected_by_reason"}
    assert (summary["rows"], summary["accepted"], summary["duplicates"], summary["rejected"]) == (4, 2, 1, 1)
    assert summary["rejected_by_reason"] == {"not_a_number": 1}
    # Rejects as CSV: the toll-free number of a row that was accepted anyway, and the formula, neutralised.
    _, out, _ = await cli(env, "leads", "rejects", "--list", summary["list_id"])
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {(r["row_number"], r["reason"]) for r in rows} == {("4", "not_a_number"), ("5", "toll_free")}
    formula = next(r for r in rows if r["row_number"] == "4")
    assert formula["raw_value"].startswith("'=")
    # Mapping by header, human output with a table.
    g = tmp_path / "mapped.csv"
    g.write_text("Who,Contact\nEve,646-555-0111\n")
    _, out, _ = await cli(env, "leads", "upload", str(g), "--campaign", cid, "--map", 'phone="Contact"',
                          "--map", "first_name=Who")  # fmt: skip
    assert "leads accepted" in out
    for action, state in (
        ("start", "active"),
        ("pause", "paused"),
        ("resume", "active"),
        ("complete", "completed"),
    ):
        _, out, _ = await cli(env, "campaign", action, cid, "--json")
        assert json.loads(out)["state"] == state
    rc, _, err = await cli(env, "campaign", "start", cid, ok=False)
    assert rc == 3 and "FAILED_PRECONDITION" in err
    _, out, _ = await cli(env, "campaign", "list", "--json")
    assert [c["id"] for c in json.loads(out)] == [cid]
    _, out, _ = await cli(env, "campaign", "show", cid, "--json")
    assert json.loads(out)["state"] == "completed"
    _, out, _ = await cli(env, "campaign", "stats", cid, "--json")
    st = json.loads(out)
    assert st["leads_total"] == 3 and st["leads_by_state"] == {"new": 3}
    _, out, _ = await cli(env, "campaign", "stats", cid)
    assert "list penetration" in out
