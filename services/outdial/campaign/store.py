"""SQL of the campaign service (asyncpg) and the Redis copy of each campaign's config."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from outdial.campaign.model import CampaignRecord
from outdial.campaign.retries import CALLBACK_REOPENS
from outdial.core import keys, versions
from outdial.core.errors import FailedPrecondition, InvalidArgument, NotFound
from outdial.core.redis import Redis
from outdial.rules import law

_COLS = "id, name, description, state, settings, scheduled_start, scheduled_end, created_at, updated_at"


def new_id() -> str:
    return uuid.uuid4().hex


async def get_campaign(
    conn: asyncpg.Pool | asyncpg.Connection, cid: str, *, lock: bool = False
) -> CampaignRecord:
    if not cid:
        raise InvalidArgument("campaign_id is required", field="campaign_id")
    row = await conn.fetchrow(
        f"SELECT {_COLS} FROM campaigns WHERE id = $1" + (" FOR UPDATE" if lock else ""), cid
    )
    if row is None:
        raise NotFound(f"no campaign {cid}", error_id="campaign_not_found")
    return CampaignRecord.from_row(row)


def version_doc(
    name: str, description: str, settings: dict[str, Any], start: datetime | None, end: datetime | None
) -> dict[str, Any]:
    """The whole of a campaign's settings as one version stores them."""
    return {
        "name": name,
        "description": description,
        "scheduled_start": start.isoformat() if start else None,
        "scheduled_end": end.isoformat() if end else None,
        "settings": settings,
    }


async def insert_campaign(
    conn: asyncpg.Pool | asyncpg.Connection,
    *,
    name: str,
    description: str,
    settings: dict[str, Any],
    start: datetime | None,
    end: datetime | None,
    actor: str,
    now: datetime,
) -> CampaignRecord:
    """The campaign and its version 1, in one statement."""
    doc = version_doc(name, description, settings, start, end)
    row = await conn.fetchrow(
        f"""WITH c AS (
                INSERT INTO campaigns (id, name, description, state, settings, scheduled_start, scheduled_end,
                                       created_by, created_at, updated_at)
                VALUES ($1, $2, $3, 'draft', $4::jsonb, $5, $6, $7, $8, $8) RETURNING {_COLS}),
            v AS (
                INSERT INTO campaign_versions (campaign_id, version, actor, at, action, settings, changes)
                SELECT id, 1, $7, $8, 'create', $9::jsonb, $10::jsonb FROM c)
            SELECT * FROM c""",
        new_id(),
        name,
        description,
        json.dumps(settings),
        start,
        end,
        actor,
        now,
        json.dumps(doc),
        json.dumps([c.as_dict() for c in versions.diff(None, doc)]),
    )
    assert row is not None
    return CampaignRecord.from_row(row)


async def record_version(
    conn: asyncpg.Connection, before: CampaignRecord, after: CampaignRecord, actor: str, at: datetime
) -> int:
    """Append the version ``after`` is (in the transaction that holds the campaign's row lock, which
    orders versions). Returns its number."""
    old = version_doc(
        before.name, before.description, before.settings, before.scheduled_start, before.scheduled_end
    )
    new = version_doc(
        after.name, after.description, after.settings, after.scheduled_start, after.scheduled_end
    )
    number = await conn.fetchval(
        """INSERT INTO campaign_versions (campaign_id, version, actor, at, action, settings, changes)
           SELECT $1, coalesce(max(version), 0) + 1, $2, $3, 'update', $4::jsonb, $5::jsonb
             FROM campaign_versions WHERE campaign_id = $1
           RETURNING version""",
        after.id,
        actor,
        at,
        json.dumps(new),
        json.dumps([c.as_dict() for c in versions.diff(old, new)]),
    )
    return int(number)


async def list_versions(pool: asyncpg.Pool, cid: str) -> list[asyncpg.Record]:
    await get_campaign(pool, cid)  # NOT_FOUND for an unknown campaign
    return list(
        await pool.fetch(
            """SELECT version, actor, at, action, settings::text AS settings, changes::text AS changes
                 FROM campaign_versions WHERE campaign_id = $1 ORDER BY version""",
            cid,
        )
    )


async def update_campaign(
    conn: asyncpg.Connection,
    cid: str,
    *,
    name: str,
    description: str,
    settings: dict[str, Any],
    start: datetime | None,
    end: datetime | None,
    now: datetime,
) -> CampaignRecord:
    row = await conn.fetchrow(
        f"""UPDATE campaigns SET name = $2, description = $3, settings = $4::jsonb, scheduled_start = $5,
                   scheduled_end = $6, updated_at = $7 WHERE id = $1 RETURNING {_COLS}""",
        cid,
        name,
        description,
        json.dumps(settings),
        start,
        end,
        now,
    )
    assert row is not None
    # Settings changed: every feeder hint computed from the old window is stale.
    await conn.execute(
        "UPDATE leads SET recheck_at = NULL WHERE campaign_id = $1 AND status <> 'final' AND recheck_at IS NOT NULL",
        cid,
    )
    return CampaignRecord.from_row(row)


async def set_state(conn: asyncpg.Connection, cid: str, state: str, now: datetime) -> CampaignRecord:
    row = await conn.fetchrow(
        f"UPDATE campaigns SET state = $2, updated_at = $3 WHERE id = $1 RETURNING {_COLS}", cid, state, now
    )
    assert row is not None
    return CampaignRecord.from_row(row)


async def record_start(
    conn: asyncpg.Connection, rec: CampaignRecord, action: str, actor: str, at: datetime
) -> None:
    """Append the start (or resume) of ``rec`` to ``campaign_starts``: who, when, and the seller's legal name,
    callback number and caller ID in force from then on (never updated or deleted)."""
    s = rec.settings
    await conn.execute(
        """INSERT INTO campaign_starts (campaign_id, action, actor, at, seller_name, callback_number,
                                         caller_id, jurisdiction)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        rec.id,
        action,
        actor,
        at,
        str(s.get("seller_name") or ""),
        str(s.get("opt_out_number") or ""),
        str(s.get("caller_id") or ""),
        str(s.get("jurisdiction") or ""),
    )


async def list_campaigns(
    pool: asyncpg.Pool, states: list[str], limit: int, after: str | None
) -> list[CampaignRecord]:
    rows = await pool.fetch(
        f"""SELECT {_COLS} FROM campaigns
            WHERE (cardinality($1::text[]) = 0 OR state = ANY($1::text[])) AND ($2::text IS NULL OR id > $2)
            ORDER BY id LIMIT $3""",
        states,
        after,
        limit,
    )
    return [CampaignRecord.from_row(r) for r in rows]


async def all_campaigns(pool: asyncpg.Pool) -> list[CampaignRecord]:
    rows = await pool.fetch(f"SELECT {_COLS} FROM campaigns WHERE state <> 'archived'")
    return [CampaignRecord.from_row(r) for r in rows]


async def publish(redis: Redis, rec: CampaignRecord) -> None:
    """Write the campaign-config contract and the active set (on every change)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.campaign_config(rec.id), mapping={"json": json.dumps(rec.config_json())})
        if rec.state == "active":
            pipe.sadd(keys.active_campaigns(), rec.id)
        else:
            pipe.srem(keys.active_campaigns(), rec.id)
            pipe.delete(keys.hopper(rec.id))
        await pipe.execute()


# ----------------------------------------------------------------------------------- lead lists


_LIST_COLS = (
    "id, campaign_id, file_name, sha256, uploaded_by, uploaded_at, rows, accepted, duplicates, rejected, "
    "numbers_accepted, rejected_by_reason"
)


async def get_list(pool: asyncpg.Pool, list_id: str) -> asyncpg.Record:
    if not list_id:
        raise InvalidArgument("list_id is required", field="list_id")
    row = await pool.fetchrow(f"SELECT {_LIST_COLS} FROM lead_lists WHERE id = $1", list_id)
    if row is None:
        raise NotFound(f"no lead list {list_id}", error_id="list_not_found")
    return row


async def find_list_by_request(pool: asyncpg.Pool, cid: str, request_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        f"SELECT {_LIST_COLS} FROM lead_lists WHERE campaign_id = $1 AND request_id = $2", cid, request_id
    )


async def lists_of(pool: asyncpg.Pool, cid: str, id_prefix: str = "") -> list[asyncpg.Record]:
    """A campaign's lead lists (cid), or any campaign's (cid empty) whose ID starts with id_prefix (at most 20)."""
    return list(
        await pool.fetch(
            f"""SELECT {_LIST_COLS} FROM lead_lists
                WHERE ($1 = '' OR campaign_id = $1) AND ($2 = '' OR id LIKE $2 || '%')
                ORDER BY uploaded_at LIMIT CASE WHEN $1 = '' THEN 20 END""",
            cid,
            id_prefix,
        )
    )


# ----------------------------------------------------------------------------------- callbacks, stats


async def last_call_of(pool: asyncpg.Pool, agent_id: str) -> tuple[str, int | None] | None:
    """(campaign id, lead id) of the call the agent was last connected to, from the call detail records."""
    row = await pool.fetchrow(
        """SELECT h.campaign_id, h.lead_id FROM call_record_entries e JOIN call_record_heads h USING (call_id)
            WHERE e.agent_id = $1 AND e.connect_at IS NOT NULL ORDER BY e.connect_at DESC LIMIT 1""",
        agent_id,
    )
    return None if row is None else (str(row["campaign_id"]), row["lead_id"])


async def schedule_callback(
    pool: asyncpg.Pool, cid: str, lead_id: int, at: datetime, agent_id: str, note: str, actor: str
) -> str:
    cb = new_id()
    async with pool.acquire() as conn, conn.transaction():
        lead = await conn.fetchrow(
            "SELECT status, final_reason FROM leads WHERE id = $1 AND campaign_id = $2 FOR UPDATE",
            lead_id,
            cid,
        )
        if lead is None:
            raise NotFound(f"no lead {lead_id} in campaign {cid}", error_id="lead_not_found")
        if lead["status"] == "final" and lead["final_reason"] not in CALLBACK_REOPENS:  # retries.py
            # One answer for every closed lead (DNC, wrong number, exhausted, dispositioned, …): the caller
            # learns nothing of the lead's DNC status from it.
            raise FailedPrecondition(f"lead {lead_id} is not callable", error_id="lead_not_callable")
        await conn.execute(
            """INSERT INTO callbacks (id, campaign_id, lead_id, at, agent_id, note, created_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            cb,
            cid,
            lead_id,
            at,
            agent_id,
            note,
            actor,
        )
        await conn.execute(
            """UPDATE leads SET status = 'callback', final_reason = '', next_attempt_at = $2, recheck_at = NULL,
                      updated_at = now() WHERE id = $1""",
            lead_id,
            at,
        )
    return cb


async def stats(
    pool: asyncpg.Pool, cid: str, now: datetime, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A campaign's figures. The abandonment rates count in the AMD false positives the campaign estimates
    (``settings``: its AMD mode and estimate; :func:`outdial.rules.law.with_amd_false_positives`): over the
    fixed 24 h and 30 d of the report and over the campaign's own window (``abandon_window_s``, the law's)."""
    s = settings or {}
    window_s = float(s.get("abandon_window_s") or 0) or None
    by_state = await pool.fetch(
        """SELECT CASE WHEN status = 'final' THEN coalesce(nullif(final_reason, ''), 'final') ELSE status END AS s,
                  count(*) AS n FROM leads WHERE campaign_id = $1 GROUP BY 1""",
        cid,
    )
    leads = await pool.fetchrow(
        """SELECT count(*) AS total, count(*) FILTER (WHERE attempts > 0) AS touched,
                  count(*) FILTER (WHERE compliance_block = 'consent' AND status <> 'final') AS need_consent,
                  count(*) FILTER (WHERE compliance_block = 'fresh_list' AND status <> 'final') AS need_list
           FROM leads WHERE campaign_id = $1""",
        cid,
    )
    outcomes = await pool.fetch(
        "SELECT outcome, count(*) AS n FROM call_records WHERE campaign_id = $1 AND outcome <> '' GROUP BY 1",
        cid,
    )
    win = await pool.fetchrow(
        """SELECT
             count(*) FILTER (WHERE outcome <> 'blocked' AND dial_at IS NOT NULL) AS attempts,
             count(*) FILTER (WHERE outcome = 'abandoned' AND end_at > $2) AS ab24,
             count(*) FILTER (WHERE outcome IN ('connected', 'abandoned') AND end_at > $2) AS live24,
             count(*) FILTER (WHERE outcome = 'machine' AND end_at > $2) AS m24,
             count(*) FILTER (WHERE outcome = 'abandoned' AND end_at > $3) AS ab30,
             count(*) FILTER (WHERE outcome IN ('connected', 'abandoned') AND end_at > $3) AS live30,
             count(*) FILTER (WHERE outcome = 'machine' AND end_at > $3) AS m30,
             count(*) FILTER (WHERE outcome = 'abandoned' AND end_at > $5) AS abw,
             count(*) FILTER (WHERE outcome IN ('connected', 'abandoned') AND end_at > $5) AS livew,
             count(*) FILTER (WHERE outcome = 'machine' AND end_at > $5) AS mw,
             count(*) FILTER (WHERE outcome = 'connected' AND coalesce(connect_at, end_at) > $4) AS contacts_1h
           FROM call_records WHERE campaign_id = $1""",
        cid,
        now - timedelta(hours=24),
        now - timedelta(days=30),
        now - timedelta(hours=1),
        now - timedelta(seconds=window_s) if window_s else now - timedelta(days=30),
    )
    assert leads is not None and win is not None
    oc = {r["outcome"]: int(r["n"]) for r in outcomes}
    amd = str(s.get("amd") or "on") != "off"
    fpr = s.get("amd_false_positive_rate")
    jur = str(s.get("jurisdiction") or "")

    def rate(live: int, abandoned: int, machines: int) -> tuple[float, int]:
        lv, ab, fp = law.with_amd_false_positives(jur, live, abandoned, machines, fpr, amd=amd)
        return (ab / lv if lv else 0.0), fp

    r24, _ = rate(win["live24"], win["ab24"], win["m24"])
    r30, _ = rate(win["live30"], win["ab30"], win["m30"])
    rw, fpw = rate(win["livew"], win["abw"], win["mw"])
    return {
        "leads_by_state": {r["s"]: int(r["n"]) for r in by_state},
        "leads_total": int(leads["total"]),
        "touched": int(leads["touched"]),
        "leads_need_consent": int(leads["need_consent"]),
        "leads_need_fresh_list": int(leads["need_list"]),
        "outcomes": oc,
        "attempts": int(win["attempts"]),
        "live_answers": oc.get("connected", 0) + oc.get("abandoned", 0),
        "connected": oc.get("connected", 0),
        "abandoned": oc.get("abandoned", 0),
        "blocked": oc.get("blocked", 0),
        "abandon_rate_24h": r24,
        "abandon_rate_30d": r30,
        "abandon_rate_window": rw,
        "amd": amd,
        "amd_false_positive_rate": fpr,
        "amd_false_positive_basis": str(s.get("amd_false_positive_basis") or ""),
        "amd_machine_answers": int(win["mw"]),
        "amd_estimated_false_positives": fpw,
        "contacts_per_hour": float(win["contacts_1h"]),
    }


# ----------------------------------------------------------------------------------- retention


async def prune(
    pool: asyncpg.Pool, years: int, dry_run: bool, actor: str, limit: int
) -> tuple[int, dict[str, int], dict[str, int]]:
    """One batch of the retention job through ``retention_prune`` (SECURITY DEFINER, migration 0118): the
    service itself may not delete call records. Returns (run id, rows removed per kind, floors applied)."""
    row = await pool.fetchrow(
        "SELECT run_id, removed::text AS removed, floors::text AS floors FROM retention_prune($1, $2, $3, $4)",
        years,
        dry_run,
        actor,
        limit,
    )
    assert row is not None
    return int(row["run_id"]), json.loads(row["removed"]), json.loads(row["floors"])
