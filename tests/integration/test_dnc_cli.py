"""``outdial dnc …`` against a real service."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_dnc_audit import run_cli
from tests.integration.test_dnc_gate import start


async def test_cli_flow(services: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    await start(services, monkeypatch)
    code, out = await run_cli(
        services, "dnc", "add", "+12025550123", "=HYPERLINK(1)", "--reason", "=cmd|x", "--json"
    )
    assert code == 2  # one invalid number
    assert json.loads(out.splitlines()[-1])["added"] == 1

    code, out = await run_cli(services, "dnc", "check", "+12025550123", "2025550124", "--json")
    assert code == 1
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["number"], r["allowed"]) for r in rows] == [("+12025550123", False), ("+12025550124", True)]
    assert rows[0]["reasons"][0]["code"] == "dnc.internal"

    reg = tmp_path / "us.txt"
    reg.write_text("2025550130\n2025550131\nbad\n")
    code, out = await run_cli(
        services,
        "dnc",
        "import",
        str(reg),
        "--kind",
        "national",
        "--jurisdiction",
        "US",
        "--downloaded-at",
        "2099-01-01T00:00:00Z",
        "--json",
    )
    assert code == 0, out
    res = json.loads(out.splitlines()[-1])
    assert (res["added"], res["invalid"]) == (2, 1)
    changes = tmp_path / "changes.txt"
    changes.write_text("-2025550130\n+2025550132\n")
    code, out = await run_cli(
        services, "dnc", "import", str(changes), "--changes", "--downloaded-at", "2099-01-02", "--json"
    )
    assert code == 0, out
    code, out = await run_cli(services, "dnc", "lists", "--json")
    lists = {li["id"]: li for li in json.loads(out)["lists"]}
    assert lists["national:US"]["entries"] == 2

    code, out = await run_cli(services, "dnc", "audit", "--csv")
    assert code == 0, out
    table = list(csv.reader(io.StringIO(out)))
    assert table[0][:4] == ["seq", "at", "actor", "action"]
    adds = [r for r in table[1:] if r[3] == "add"]
    assert adds[0][4] == "+12025550123"  # E.164 stays readable
    assert adds[0][8] == "'=cmd|x"  # a formula is neutralised
    assert {r[3] for r in table[1:]} >= {"add", "import", "rebuild"}

    code, out = await run_cli(services, "dnc", "why", "+12025550123", "--at", "now")
    assert code == 0 and "BLOCKED" in out and "dnc.internal" in out
    code, out = await run_cli(services, "dnc", "verify")
    assert code == 0 and "intact" in out
