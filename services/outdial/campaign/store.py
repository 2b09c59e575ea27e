"""SQL of the campaign service (asyncpg) and the Redis copy of each campaign's config."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from outdial.campaign.model import CampaignRecord
from outdial.campaign.retries import CALLBACK_REOPENS
from outdial.core import keys
from outdial.core.errors import FailedPrecondition, InvalidArgument, NotFound
from outdial.core.redis import Redis

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
    row = await conn.fetchrow(
        f"""INSERT INTO campaigns (id, name, description, state, settings, scheduled_start, scheduled_end,
                                    created_by, created_at, updated_at)
            VALUES ($1, $2, $3, 'draft', $4::jsonb, $5, $6, $7, $8, $8) RETURNING {_COLS}""",
        new_id(),
        name,
        description,
        json.dumps(settings),
        start,
        end,
        actor,
        now,
    )
    assert row is not None
    return CampaignRecord.from_row(row)


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


async def lists_of(pool: asyncpg.Pool, cid: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            f"SELECT {_LIST_COLS} FROM lead_lists WHERE campaign_id = $1 ORDER BY uploaded_at", cid
        )
    )


# ----------------------------------------------------------------------------------- callbacks, stats


async def last_call_of(pool: asyncpg.Pool, agent_id: str) -> tuple[str, int | None] | None:
    """(campaign id, lead id) of the call the agent was last connected to, from the call detail records."""
    row = await pool.fetchrow(
        """SELECT campaign_id, lead_id FROM call_records WHERE agent_id = $1 AND connect_at IS NOT NULL
           ORDER BY connect_at DESC LIMIT 1""",
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


async def stats(pool: asyncpg.Pool, cid: str, now: datetime) -> dict[str, Any]:
    by_state = await pool.fetch(
        """SELECT CASE WHEN status = 'final' THEN coalesce(nullif(final_reason, ''), 'final') ELSE status END AS s,
                  count(*) AS n FROM leads WHERE campaign_id = $1 GROUP BY 1""",
        cid,
    )
    leads = await pool.fetchrow(
        "SELECT count(*) AS total, count(*) FILTER (WHERE attempts > 0) AS touched FROM leads WHERE campaign_id = $1",
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
             count(*) FILTER (WHERE outcome = 'abandoned' AND end_at > $3) AS ab30,
             count(*) FILTER (WHERE outcome IN ('connected', 'abandoned') AND end_at > $3) AS live30,
             count(*) FILTER (WHERE outcome = 'connected' AND coalesce(connect_at, end_at) > $4) AS contacts_1h
           FROM call_records WHERE campaign_id = $1""",
        cid,
        now - timedelta(hours=24),
        now - timedelta(days=30),
        now - timedelta(hours=1),
    )
    assert leads is not None and win is not None
    oc = {r["outcome"]: int(r["n"]) for r in outcomes}
    return {
        "leads_by_state": {r["s"]: int(r["n"]) for r in by_state},
        "leads_total": int(leads["total"]),
        "touched": int(leads["touched"]),
        "outcomes": oc,
        "attempts": int(win["attempts"]),
        "live_answers": oc.get("connected", 0) + oc.get("abandoned", 0),
        "connected": oc.get("connected", 0),
        "abandoned": oc.get("abandoned", 0),
        "blocked": oc.get("blocked", 0),
        "abandon_rate_24h": (win["ab24"] / win["live24"]) if win["live24"] else 0.0,
        "abandon_rate_30d": (win["ab30"] / win["live30"]) if win["live30"] else 0.0,
        "contacts_per_hour": float(win["contacts_1h"]),
    }
