"""Retention (issue 13, point 7): call records older than the retention period are removed by the campaign
service's job (RunRetention, ``outdial retention run``) through the database's retention_prune, never younger
than each jurisdiction's minimum from the rules table; every run is recorded; a setting below the minimum
refuses the service at start, naming the setting."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from outdial.core.auth import Role
from outdial.core.config import StartupRefused
from outdial.migrations.grants import role_name
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, common_pb2
from tests.conftest import Services, as_user, make_token

YEAR = timedelta(days=365.25)


async def _campaign(stub: campaign_pb2_grpc.CampaignServiceStub, jurisdiction: int, caller: str) -> str:
    c = campaign_pb2.Campaign(
        name="R",
        caller_id=caller,
        seller_name="Spring Solar LLC",
        opt_out_number=caller,
        jurisdiction=jurisdiction,
    )
    return (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign.id


async def _call(pg: asyncpg.Pool, call_id: str, cid: str, age: timedelta) -> None:
    """A call as the services record it (through the views' import path), ``age`` old."""
    at = datetime.now(UTC) - age
    await pg.execute(
        """INSERT INTO dial_attempts (call_id, campaign_id, lead_id, number, replica, fence_token, allowed, gate_at,
               dial_at, end_at, outcome) VALUES ($1, $2, 'l1', '+12125550101', 'r', 1, true, $3, $3, $3, 'no_answer')""",
        call_id, cid, at,
    )  # fmt: skip
    await pg.execute(
        """INSERT INTO call_records (call_id, campaign_id, called_number, dial_at, end_at, outcome, created_at)
           VALUES ($1, $2, '+12125550101', $3, $3, 'no_answer', $3)""",
        call_id, cid, at,
    )  # fmt: skip


async def test_retention_removes_only_what_is_older_than_each_minimum(
    services: Services, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rs = await services.start("campaign")
    manager = campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role="manager"))
    us = await _campaign(manager, common_pb2.JURISDICTION_US, "+12125550100")
    uk = await _campaign(manager, common_pb2.JURISDICTION_UK, "+442079460958")
    floors = {r["jurisdiction"]: r["min_years"] for r in await pg.fetch("SELECT * FROM retention_policy")}
    assert floors["US"] == 5 and floors["UK"] == 6
    await _call(pg, "us-old", us, 5 * YEAR + timedelta(days=30))  # past the US 5 years
    await _call(pg, "us-young", us, 4 * YEAR)
    await _call(pg, "uk-5y", uk, 5 * YEAR + timedelta(days=30))  # the UK keeps 6 years
    await _call(pg, "uk-old", uk, 6 * YEAR + timedelta(days=30))
    # An old call corrected a month ago is kept: its correction is younger than the period.
    await _call(pg, "us-corrected", us, 5 * YEAR + timedelta(days=30))
    await pg.execute(
        """INSERT INTO call_record_entries (call_id, kind, outcome, actor, reason)
           VALUES ('us-corrected', 'correction', 'busy', 'compliance:c', 'carrier CDR')"""
    )

    compliance = campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role="compliance", sub="cora"))
    dry = await compliance.RunRetention(campaign_pb2.RunRetentionRequest(dry_run=True))
    assert dry.dry_run and dict(dry.removed)["call_records"] == 2 and dict(dry.removed)["dial_attempts"] == 3
    assert dict(dry.floors) == floors and dry.years == 0
    assert await pg.fetchval("SELECT count(*) FROM call_records") == 5  # a dry run removes nothing

    from outdial.cli.main import main

    monkeypatch.setenv("OUTDIAL_CAMPAIGN_ADDR", rs.addr)
    monkeypatch.setenv("OUTDIAL_TOKEN", make_token(Role.COMPLIANCE, "cora"))
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["retention", "run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"]["call_records"] == 2 and out["removed"]["dial_attempts"] == 3 and not out["dry_run"]
    left = {r["call_id"] for r in await pg.fetch("SELECT call_id FROM call_records")}
    assert left == {"us-young", "uk-5y", "us-corrected"}
    left = {r["call_id"] for r in await pg.fetch("SELECT call_id FROM dial_attempts")}
    assert left == {"us-young", "uk-5y"}  # the correction was to the call record only
    # Every run is recorded, with who ran it and what it removed; the record cannot be changed.
    runs = await pg.fetch("SELECT actor, dry_run, removed FROM retention_runs ORDER BY id")
    assert [(r["actor"], r["dry_run"]) for r in runs][:2] == [
        ("compliance:cora", True),
        ("compliance:cora", False),
    ]
    assert json.loads(runs[1]["removed"])["call_records"] == 2
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pg.execute("DELETE FROM retention_runs")

    # The service's login cannot delete a call record itself, and retention_prune keeps the floor whatever
    # period it is asked for.
    conn = await asyncpg.connect(as_user(services.settings.database_url, role_name("campaign")))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM call_record_heads WHERE call_id = 'us-young'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO retention_policy VALUES ('US', 1, 'x', 'x')")
        await conn.fetch("SELECT * FROM retention_prune(1, false, 'compliance:mallory', 1000)")
    finally:
        await conn.close()
    assert await pg.fetchval("SELECT count(*) FROM call_records") == 3
    # An agent may not run it.
    agent = campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role="agent"))
    with pytest.raises(Exception, match="PERMISSION_DENIED"):
        await agent.RunRetention(campaign_pb2.RunRetentionRequest(dry_run=True))


async def test_a_retention_below_the_legal_minimum_refuses_the_start(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTDIAL_CAMPAIGN_RETENTION_YEARS", "2")
    with pytest.raises(StartupRefused, match="OUTDIAL_CAMPAIGN_RETENTION_YEARS=2 is below the legal minimum"):
        await services.start("campaign")
