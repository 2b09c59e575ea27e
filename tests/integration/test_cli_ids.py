"""The CLI's IDs (docs/cli.md, "IDs"): a full ID, a unique prefix or a campaign's exact name, the campaign as
``CAMPAIGN`` or ``--campaign`` everywhere; ``--json`` numbers are numbers; tables never cut an ID."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from outdial.core.auth import Role
from outdial.v1 import campaign_pb2, campaign_pb2_grpc
from tests.conftest import Services, make_token


async def _campaign(stub: campaign_pb2_grpc.CampaignServiceStub, name: str) -> campaign_pb2.Campaign:
    c = campaign_pb2.Campaign(name=name, caller_id="+12125550100")
    return (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign


async def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from outdial.cli.main import main

    capsys.readouterr()
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


async def test_prefix_name_and_both_forms(
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    camp = await services.start("campaign")
    stub = campaign_pb2_grpc.CampaignServiceStub(services.channel(camp, role="manager", sub="ann"))
    made = [await _campaign(stub, f"Spring {i}") for i in range(40)]
    monkeypatch.setenv("OUTDIAL_CAMPAIGN_ADDR", camp.addr)
    monkeypatch.setenv("OUTDIAL_TOKEN", make_token(Role.MANAGER, "ann"))
    target = made[7]
    # The shortest prefix that names only the target, and one that names several.
    n = next(n for n in range(1, 33) if sum(c.id.startswith(target.id[:n]) for c in made) == 1)
    shared = next(
        (c.id[:k] for c in made for k in range(1, 4) if sum(x.id.startswith(c.id[:k]) for x in made) > 1),
        None,
    )
    assert shared is not None  # 40 random IDs share a first hex digit

    for argv in (
        ["campaign", "show", target.id[:n], "--json"],
        ["campaign", "show", target.id[:n].upper(), "--json"],
        ["campaign", "show", "--campaign", target.id[:n], "--json"],
        ["campaign", "show", "Spring 7", "--json"],
    ):
        code, out, err = await _cli(argv, capsys)
        assert code == 0, (argv, err)
        assert json.loads(out)["id"] == target.id, argv

    code, _, err = await _cli(["campaign", "show", shared, "--json"], capsys)
    assert code == 3
    error = json.loads(err.splitlines()[-1])
    assert error["error_id"] == "ambiguous_id" and error["field"] == "campaign"
    assert shared in error["message"]

    # Nothing matches: the service's own NOT_FOUND, exit 3.
    code, _, err = await _cli(["campaign", "show", "nosuchcampaign", "--json"], capsys)
    assert code == 3 and json.loads(err.splitlines()[-1])["status"] == "NOT_FOUND"
    # Two different campaigns in both forms, and none at all: bad input naming the field.
    code, _, err = await _cli(["campaign", "show", made[0].id, "--campaign", made[1].id, "--json"], capsys)
    assert code == 2 and json.loads(err.splitlines()[-1])["field"] == "campaign"
    code, _, err = await _cli(["campaign", "stats", "--json"], capsys)
    assert code == 2 and json.loads(err.splitlines()[-1])["field"] == "campaign"

    # A command that used to take only --campaign takes the positional too; lead lists by prefix.
    leads = tmp_path / "leads.csv"
    leads.write_text("phone,first_name\n+12125550123,Ann\n+12125550124,Bob\nnot a number,Cy\n")
    code, out, err = await _cli(["leads", "upload", str(leads), target.id[:n], "--json"], capsys)
    assert code == 0, err
    uploaded = json.loads(out)
    list_id = uploaded["list_id"]
    code, out, err = await _cli(["leads", "lists", "Spring 7", "--json"], capsys)
    assert code == 0, err
    lists = json.loads(out)
    row = lists[0] if isinstance(lists, list) else lists["lists"][0]
    # Typed JSON: 64-bit counts are numbers, as in `leads upload`.
    assert row["id"] == list_id and row["rows"] == 3 and row["accepted"] == 2 and row["rejected"] == 1
    assert isinstance(uploaded["accepted"], int)
    code, out, err = await _cli(["leads", "rejects", "--list", list_id[:8]], capsys)
    assert code == 0, err
    assert "not a number" in out

    code, out, err = await _cli(["campaign", "stats", target.id[:n], "--json"], capsys)
    assert code == 0, err
    stats = json.loads(out)
    assert all(not isinstance(v, str) or not v.isdigit() for v in stats.values()), stats

    # A table at 80 columns shows every ID whole.
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = await _cli(["campaign", "list"], capsys)
    assert code == 0, err
    for c in made:
        assert c.id in out
