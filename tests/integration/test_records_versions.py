"""Proof for every decision (issue 13, point 7): campaign and pacing settings are versioned (who, when, the
whole settings, what changed) and listed by RPC and ``outdial campaign history``; call records and dial
attempts are append-only, enforced by the database for the services' own logins; corrections are new rows."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from outdial.core import db
from outdial.core.auth import Role
from outdial.migrations.grants import role_name
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, pacing_pb2, pacing_pb2_grpc
from tests.conftest import Services, as_user, make_token
from tests.integration.test_pacing_dialer import workday_clock


async def _campaign(stub: campaign_pb2_grpc.CampaignServiceStub) -> campaign_pb2.Campaign:
    c = campaign_pb2.Campaign(
        name="Spring", caller_id="+12125550100", seller_name="Spring Solar LLC", opt_out_number="+12125550100"
    )
    return (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign


async def test_settings_versions_rpc_and_cli(
    services: Services,
    pg: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    camp = await services.start("campaign")
    pacing = await services.start("pacing", clock=workday_clock(), instance_id="r1")
    stub = campaign_pb2_grpc.CampaignServiceStub(services.channel(camp, role="manager", sub="ann"))
    c = await _campaign(stub)
    await stub.UpdateCampaign(
        campaign_pb2.UpdateCampaignRequest(
            campaign=campaign_pb2.Campaign(id=c.id, name="Summer", max_attempts_per_lead=4),
            update_mask=field_mask_pb2.FieldMask(paths=["name", "max_attempts_per_lead"]),
        )
    )
    pstub = pacing_pb2_grpc.PacingServiceStub(services.channel(pacing, role="manager", sub="bob"))
    for ratio in (1.5, 2.0):
        await pstub.UpdatePacingSettings(
            pacing_pb2.UpdatePacingSettingsRequest(
                campaign_id=c.id,
                settings=pacing_pb2.PacingSettings(power_ratio=ratio),
                update_mask=field_mask_pb2.FieldMask(paths=["power_ratio"]),
            )
        )

    got = (
        await stub.ListCampaignVersions(campaign_pb2.ListCampaignVersionsRequest(campaign_id=c.id))
    ).versions
    assert [(v.version, v.action, v.actor) for v in got] == [
        (1, "create", "manager:ann"),
        (2, "update", "manager:ann"),
    ]
    assert json.loads(got[1].settings_json)["name"] == "Summer"
    assert [(ch.path, ch.before_json, ch.after_json) for ch in got[1].changes] == [
        ("name", '"Spring"', '"Summer"'),
        ("settings.max_attempts_per_lead", "0", "4"),
    ]
    pv = (
        await pstub.ListPacingSettingsVersions(pacing_pb2.ListPacingSettingsVersionsRequest(campaign_id=c.id))
    ).versions
    assert [(v.version, v.action, v.actor) for v in pv] == [
        (1, "create", "manager:bob"),
        (2, "update", "manager:bob"),
    ]
    assert [(ch.path, ch.before_json, ch.after_json) for ch in pv[1].changes] == [
        ("power_ratio", "1.5", "2.0")
    ]

    # An agent may not read the history; an unknown campaign is NOT_FOUND.
    agent = campaign_pb2_grpc.CampaignServiceStub(services.channel(camp, role="agent"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent.ListCampaignVersions(campaign_pb2.ListCampaignVersionsRequest(campaign_id=c.id))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListCampaignVersions(campaign_pb2.ListCampaignVersionsRequest(campaign_id="nope"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND

    from outdial.cli.main import main

    monkeypatch.setenv("OUTDIAL_CAMPAIGN_ADDR", camp.addr)
    monkeypatch.setenv("OUTDIAL_PACING_ADDR", pacing.addr)
    monkeypatch.setenv("OUTDIAL_TOKEN", make_token(Role.COMPLIANCE, "carol"))
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["campaign", "history", c.id, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in out["campaign"]] == [1, 2]
    assert out["campaign"][1]["settings"]["name"] == "Summer"
    assert [v["actor"] for v in out["pacing"]] == ["manager:bob", "manager:bob"]
    assert await asyncio.to_thread(main, ["campaign", "history", c.id]) == 0
    text = capsys.readouterr().out
    assert "manager:ann" in text and "power_ratio" in text

    # The services' own logins may append versions but never change or remove one.
    for who, table in (("campaign", "campaign_versions"), ("pacing", "pacing_settings_versions")):
        conn = await asyncpg.connect(as_user(services.settings.database_url, role_name(who)))
        try:
            for sql in (f"UPDATE {table} SET actor = 'x'", f"DELETE FROM {table}"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
        finally:
            await conn.close()
    # Nor can the schema's owner: the trigger refuses.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pg.execute("UPDATE campaign_versions SET actor = 'x' WHERE campaign_id = $1", c.id)


T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


async def test_call_records_are_append_only_with_corrections_as_new_rows(
    services: Services, pg: asyncpg.Pool
) -> None:
    # A call as the dialer writes it: gate, dial, answer, connect, end.
    pacing = await asyncpg.connect(as_user(services.settings.database_url, role_name("pacing")))
    campaign = await asyncpg.connect(as_user(services.settings.database_url, role_name("campaign")))
    try:
        await pacing.execute(
            """INSERT INTO dial_attempt_gates (call_id, campaign_id, lead_id, number, replica, fence_token, allowed,
                   gate_at) VALUES ('c1', 'k', 'l1', '+12125550101', 'r', 1, true, $1)""",
            T0,
        )
        await pacing.execute(
            """INSERT INTO dial_open (call_id, campaign_id, lead_id, number) VALUES ('c1', 'k', 'l1', '+12125550101')"""
        )
        await pacing.execute(
            "INSERT INTO dial_attempt_events (call_id, kind, dial_at) VALUES ('c1', 'dial', $1)", T0
        )
        await pacing.execute(
            """INSERT INTO dial_attempt_events (call_id, kind, outcome, answer, answer_at, end_at)
               VALUES ('c1', 'end', 'no_answer', NULL, NULL, $1)""",
            T0 + timedelta(seconds=30),
        )
        # A second end is refused (the end is written once).
        with pytest.raises(asyncpg.UniqueViolationError):
            await pacing.execute(
                "INSERT INTO dial_attempt_events (call_id, kind, outcome, end_at) VALUES ('c1', 'end', 'busy', $1)",
                T0,
            )
        # A call may not end connected without a person's answer and an agent (0401's check, on the fold).
        await pacing.execute(
            """INSERT INTO dial_attempt_gates (call_id, campaign_id, lead_id, number, replica, fence_token, allowed,
                   gate_at) VALUES ('c2', 'k', 'l2', '+12125550102', 'r', 1, true, $1)""",
            T0,
        )
        with pytest.raises(asyncpg.CheckViolationError, match="connected without a human answer"):
            await pacing.execute(
                "INSERT INTO dial_attempt_events (call_id, kind, outcome, end_at) VALUES ('c2', 'end', 'connected', $1)",
                T0,
            )
        await campaign.execute(
            "INSERT INTO call_record_heads (call_id, campaign_id, called_number) VALUES ('c1', 'k', '+12125550101')"
        )
        await campaign.execute(
            "INSERT INTO call_record_entries (call_id, kind, outcome, end_at) VALUES ('c1', 'ended', 'no_answer', $1)",
            T0 + timedelta(seconds=30),
        )
        # UPDATE and DELETE by the services' logins fail, on the tables and on the views.
        for conn, tables in (
            (pacing, ("dial_attempt_gates", "dial_attempt_events", "dial_attempts")),
            (campaign, ("call_record_heads", "call_record_entries", "call_records", "dial_attempts")),
        ):
            for t in tables:
                # a view refuses before its privileges are looked at (it has no UPDATE or DELETE rule)
                refused = (
                    asyncpg.PostgresError
                    if t in ("dial_attempts", "call_records")
                    else asyncpg.InsufficientPrivilegeError
                )
                for sql in (f"UPDATE {t} SET call_id = call_id", f"DELETE FROM {t}", f"TRUNCATE {t}"):
                    with pytest.raises(refused):
                        await conn.execute(sql)
    finally:
        await pacing.close()
        await campaign.close()
    # Not even the schema's owner changes a row (the trigger).
    for t in ("dial_attempt_events", "call_record_entries", "dial_attempt_gates", "call_record_heads"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pg.execute(f"UPDATE {t} SET call_id = call_id")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pg.execute(f"DELETE FROM {t}")

    d = await pg.fetchrow("SELECT * FROM dial_attempts WHERE call_id = 'c1'")
    assert (d["dial_at"], d["outcome"], d["end_at"], d["revisions"]) == (
        T0,
        "no_answer",
        T0 + timedelta(seconds=30),
        2,
    )
    # A correction is a new row that names who and why; the view shows the corrected fact, the history stays.
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute(
            "INSERT INTO call_record_entries (call_id, kind, outcome) VALUES ('c1', 'correction', 'busy')"
        )
    await pg.execute(
        """INSERT INTO call_record_entries (call_id, kind, outcome, actor, reason)
           VALUES ('c1', 'correction', 'busy', 'compliance:carol', 'carrier CDR says busy')"""
    )
    rec = await pg.fetchrow("SELECT outcome, end_at, revisions FROM call_records WHERE call_id = 'c1'")
    assert (rec["outcome"], rec["end_at"], rec["revisions"]) == ("busy", T0 + timedelta(seconds=30), 2)
    kinds = [
        r["kind"]
        for r in await pg.fetch("SELECT kind FROM call_record_entries WHERE call_id = 'c1' ORDER BY seq")
    ]
    assert kinds == ["ended", "correction"]


async def test_agent_dispositions_keep_their_record_and_revise_by_new_rows(
    services: Services, pg: asyncpg.Pool
) -> None:
    from outdial.agent.store import Dispositions

    pool = await asyncpg.create_pool(
        as_user(services.settings.database_url, role_name("agent")), min_size=1, max_size=2
    )
    assert pool is not None
    try:
        store = Dispositions(pool)
        offer = {"call_id": "d1", "campaign_id": "k", "lead_id": "1", "number": "+12125550101"}
        common = {"agent_id": "ann", "offer": offer, "callback_at": None, "at": T0, "callback_status": "none"}
        first = await store.insert(event_id="e1", disposition="sale", notes="", dnc_status="none", **common)
        # The same retry: the row, its event id, no revision.
        assert (
            await store.insert(event_id="e2", disposition="sale", notes="", dnc_status="none", **common)
            == first
        )
        # A retry that says otherwise: a revision; the record keeps what was written first.
        again = await store.insert(
            event_id="e3", disposition="do_not_call", notes="asked", dnc_status="pending", **common
        )
        assert again == first
        await store.insert(
            event_id="e4", disposition="do_not_call", notes="asked", dnc_status="pending", **common
        )
        row = await pg.fetchrow("SELECT disposition, dnc_status FROM agent_dispositions WHERE call_id = 'd1'")
        assert (row["disposition"], row["dnc_status"]) == ("sale", "pending")
        cur = await pg.fetchrow(
            "SELECT disposition, notes, revisions FROM agent_dispositions_current WHERE call_id = 'd1'"
        )
        assert (cur["disposition"], cur["notes"], cur["revisions"]) == ("do_not_call", "asked", 1)
        # The follow-up columns change; the record does not, and nothing is deleted.
        await store.mark(first[0], "dnc_status", "done")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pool.execute("UPDATE agent_dispositions SET disposition = 'x'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pool.execute("DELETE FROM agent_dispositions")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pool.execute("UPDATE agent_disposition_revisions SET notes = 'x'")
    finally:
        await pool.close()
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pg.execute("UPDATE agent_dispositions SET notes = 'x'")
    assert await pg.fetchval("SELECT dnc_status FROM agent_dispositions WHERE call_id = 'd1'") == "done"


async def test_records_written_before_the_upgrade_keep_every_fact(infra: Any, pg: asyncpg.Pool) -> None:
    """A database of the release before (old-shape rows, an open call): after 0117-0412 the views show each
    row as it was, the open call still holds its locks, and the settings are version 1."""
    new = {"0117", "0118", "0305", "0409", "0410", "0411", "0412"}
    name = f"odt_{infra.run_id}_upgrade_{uuid.uuid4().hex[:6]}"
    await pg.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(infra.db_url(name))
    try:
        await conn.execute(
            """CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                   checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        for m in db.load_migrations():
            if m.name[:4] not in new:
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
        await conn.execute(
            """INSERT INTO campaigns (id, name, settings, created_by) VALUES ('k', 'Old', '{"jurisdiction": "US"}', 'ann');
               INSERT INTO pacing_settings (campaign_id, settings, updated_by) VALUES ('k', '{"power_ratio": 2}', 'bob');
               INSERT INTO dial_attempts (call_id, campaign_id, lead_id, number, replica, fence_token, allowed, gate_at,
                   dial_at, answer, answer_at, connect_at, agent_id, outcome, end_at, opt_out)
               VALUES ('done', 'k', 'l1', '+12125550101', 'r', 1, true, '2026-01-05 15:00Z', '2026-01-05 15:00Z',
                       'human', '2026-01-05 15:00:08Z', '2026-01-05 15:00:09Z', 'a1', 'connected',
                       '2026-01-05 15:01Z', true),
                      ('open', 'k', 'l2', '+12125550102', 'r', 1, true, '2026-01-05 16:00Z', '2026-01-05 16:00Z',
                       NULL, NULL, NULL, NULL, NULL, NULL, false);
               INSERT INTO call_records (call_id, campaign_id, called_number, dial_at, end_at, outcome, agent_id,
                   disposition, notes) VALUES ('done', 'k', '+12125550101', '2026-01-05 15:00Z', '2026-01-05 15:01Z',
                   'connected', 'a1', 'sale', 'n');"""
        )
        before = {
            t: [dict(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY call_id")]
            for t in ("dial_attempts", "call_records")
        }
        await db.migrate(conn, grants=False)
        for t, rows in before.items():
            after = [dict(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY call_id")]
            for old, now in zip(rows, after, strict=True):
                old.pop("updated_at", None)
                assert {k: now[k] for k in old} == old, t
        # The open call still holds its lead and number: a second call to them is refused.
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO dial_open (call_id, campaign_id, lead_id, number) VALUES ('open', 'k', 'l9', '+12125550102')"
            )
        v = await conn.fetchrow(
            "SELECT version, actor, action FROM campaign_versions WHERE campaign_id = 'k'"
        )
        assert (v["version"], v["actor"], v["action"]) == (1, "ann", "import")
        p = await conn.fetchrow(
            "SELECT version, actor, settings FROM pacing_settings_versions WHERE campaign_id = 'k'"
        )
        assert (p["version"], p["actor"], json.loads(p["settings"])) == (1, "bob", {"power_ratio": 2})
    finally:
        await conn.close()
        await pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
