"""Redis and PostgreSQL work of the agent service: the transition script, the timeline writer, the
disposition table. No gRPC here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from outdial.agent.kpi import StateEvent
from outdial.core import keys
from outdial.core.redis import Redis, load_lua

log = logging.getLogger("outdial.agent.store")

EVENTS_MAXLEN = 1_000_000


@dataclass(frozen=True)
class Transition:
    """What the transition script did."""

    status: str
    agent_id: str
    prev_state: str
    state: str
    at_ms: int
    seq: int
    campaigns: list[dict[str, Any]]
    call_id: str
    extra: str

    @property
    def changed(self) -> bool:
        return self.status == "ok"

    @property
    def campaign_ids(self) -> list[str]:
        return [str(c["id"]) for c in self.campaigns]


def ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class AgentRedis:
    """Runs the one transition script (``transition.lua``) for every agent state change."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(load_lua(__package__, "transition.lua"))
        self._keys = [keys.agents_index(), keys.agents_presence_due(), keys.agents_deadlines_due()]
        self._templates = [
            keys.agent_key_template(k) for k in ("ready", "view", "agent", "presence", "offers")
        ]

    async def run(self, op: str, *args: str | int) -> Transition:
        raw = await self._script(keys=self._keys, args=[*self._templates, op, *args])
        status, aid, prev, new, now, seq, craw, call_id, extra = (str(x) for x in raw)
        if status == "ok" and prev != new:
            # Wallboards (WatchAgents) re-read the agents they show; best effort (they also re-read on a timer).
            with contextlib.suppress(RedisError):
                await self.redis.publish(keys.agent_changes(), aid)
        return Transition(
            status, aid, prev, new, int(now), int(seq), json.loads(craw or "[]"), call_id, extra
        )

    async def agent(self, agent_id: str) -> dict[str, str]:
        data = await self.redis.hgetall(keys.agent(agent_id))
        return {str(k): str(v) for k, v in data.items()}

    async def agents(self, agent_ids: list[str]) -> list[tuple[str, dict[str, str]]]:
        if not agent_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for aid in agent_ids:
            pipe.hgetall(keys.agent(aid))
        rows = await pipe.execute()
        return [(aid, row) for aid, row in zip(agent_ids, rows, strict=True) if row]

    async def touch_presence(self, agent_id: str, session_id: str, ttl_s: float) -> bool:
        """Refresh the agent's presence; False when the agent has no session any more (logged out, or
        Redis lost its data)."""
        tr = await self.run("touch", agent_id, session_id or "1", int(ttl_s * 1000))
        return tr.status != "not_found"

    async def publish_ack(self, replica: str, kind: str, call_id: str, agent_id: str) -> int:
        """Tell the OfferCall waiting on ``replica``; returns how many listened (0: nobody waits any more)."""
        n = await self.redis.publish(keys.agent_acks(replica), json.dumps([kind, call_id, agent_id]))
        return int(n)

    async def add_event(self, fields: dict[str, str]) -> None:
        await self.redis.xadd(keys.call_events(), fields, maxlen=EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]


def call_event(event_type: str, at_ms: int, offer: dict[str, Any], **extra: str) -> dict[str, str]:
    """A call-event record of the contract (COMMON.md): base fields plus the type's own."""
    return {
        "event_id": uuid.uuid4().hex,
        "type": event_type,
        "at": str(at_ms),
        "campaign_id": str(offer.get("campaign_id", "")),
        "call_id": str(offer.get("call_id", "")),
        "lead_id": str(offer.get("lead_id", "")),
        "number": str(offer.get("number", "")),
        **extra,
    }


class Timeline:
    """Appends state changes to ``agent_state_events`` from a queue, in batches, off the hot path.

    Rows carry the Redis sequence number of the agent, which orders changes made in the same millisecond
    across replicas; a replayed row (same agent, seq and instant) is ignored. The sequence restarts if Redis
    loses its data, so rows are never keyed or ordered by it alone. ``flush()`` waits until everything queued so far is written."""

    def __init__(self, pool: asyncpg.Pool, ready: asyncio.Event) -> None:
        self.pool = pool
        self.ready = ready
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._written = asyncio.Condition()
        self._enqueued = 0
        self._done = 0

    def record(self, tr: Transition, reason: str = "", session_id: str = "") -> None:
        if not tr.changed:
            return
        self._enqueued += 1
        self.queue.put_nowait(
            (
                tr.agent_id,
                tr.seq,
                tr.campaign_ids,
                tr.state,
                reason,
                ms_to_dt(tr.at_ms),
                tr.call_id,
                session_id,
            )
        )

    async def flush(self) -> None:
        target = self._enqueued
        async with self._written:
            await self._written.wait_for(lambda: self._done >= target)

    async def run(self) -> None:
        await self.ready.wait()
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < 500:
                batch.append(self.queue.get_nowait())
            delay = 0.2
            while True:
                try:
                    await self.pool.executemany(
                        """INSERT INTO agent_state_events
                               (agent_id, seq, campaigns, state, reason, at, call_id, session_id)
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                           ON CONFLICT (agent_id, seq, at) DO NOTHING""",
                        batch,
                    )
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("timeline write failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            async with self._written:
                self._done += len(batch)
                self._written.notify_all()

    async def drain(self) -> None:
        """On shutdown: write what is queued (best effort, bounded)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 3.0)


class Dispositions:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def insert(
        self,
        *,
        event_id: str,
        agent_id: str,
        offer: dict[str, Any],
        disposition: str,
        callback_at: datetime | None,
        notes: str,
        at: datetime,
        dnc_status: str,
        callback_status: str,
    ) -> tuple[int, str]:
        """Insert the disposition of one call; a retry (same agent and call) keeps the row and the first event
        id, so the agent.disposition event it re-emits is a duplicate consumers skip. The row is a call record
        (append-only, migration 0305): a retry whose content differs appends a revision, in the same statement;
        the follow-up statuses follow the retry."""
        row = await self.pool.fetchrow(
            """WITH d AS (
                   INSERT INTO agent_dispositions (event_id, agent_id, call_id, campaign_id, lead_id, number,
                       disposition, callback_at, notes, at, dnc_status, callback_status)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                   ON CONFLICT (agent_id, call_id) DO UPDATE SET
                       dnc_status = CASE WHEN agent_dispositions.dnc_status = 'done' THEN 'done'
                                         ELSE EXCLUDED.dnc_status END,
                       callback_status = CASE WHEN agent_dispositions.callback_status = 'done' THEN 'done'
                                              ELSE EXCLUDED.callback_status END
                   RETURNING id, event_id, event_id = $1 AS fresh, disposition, callback_at, notes),
               r AS (
                   INSERT INTO agent_disposition_revisions (disposition_id, disposition, callback_at, notes, at)
                   SELECT id, $7, $8, $9, $10 FROM d
                    WHERE NOT fresh AND CASE
                          WHEN EXISTS (SELECT 1 FROM agent_disposition_revisions x WHERE x.disposition_id = d.id)
                          THEN (SELECT (x.disposition, x.callback_at, x.notes)
                                       IS DISTINCT FROM ($7::text, $8::timestamptz, $9::text)
                                  FROM agent_disposition_revisions x WHERE x.disposition_id = d.id
                                 ORDER BY x.id DESC LIMIT 1)
                          ELSE (d.disposition, d.callback_at, d.notes) IS DISTINCT FROM ($7::text, $8::timestamptz, $9::text)
                          END)
               SELECT id, event_id FROM d""",
            event_id,
            agent_id,
            str(offer.get("call_id", "")),
            str(offer.get("campaign_id", "")),
            str(offer.get("lead_id", "")),
            str(offer.get("number", "")),
            disposition,
            callback_at,
            notes,
            at,
            dnc_status,
            callback_status,
        )
        assert row is not None
        return int(row["id"]), str(row["event_id"])

    async def mark(self, row_id: int, column: str, status: str, error: str = "") -> None:
        assert column in ("dnc_status", "callback_status")
        await self.pool.execute(
            f"UPDATE agent_dispositions SET {column} = $2, attempts = attempts + 1, last_error = $3 WHERE id = $1",
            row_id,
            status,
            error,
        )

    async def pending(self, limit: int = 100) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(
            """SELECT * FROM agent_dispositions
               WHERE dnc_status = 'pending' OR callback_status = 'pending' ORDER BY id LIMIT $1""",
            limit,
        )
        return rows


async def load_timeline(pool: asyncpg.Pool, agent_id: str) -> list[StateEvent]:
    """One agent's state timeline from PostgreSQL, in order, ready for ``kpi.compute_kpis``."""
    rows = await pool.fetch(
        "SELECT state, at, call_id, reason, seq FROM agent_state_events WHERE agent_id = $1 ORDER BY at, seq",
        agent_id,
    )
    return [StateEvent(r["state"], r["at"], r["call_id"], r["reason"], r["seq"]) for r in rows]


async def connected_call(pool: asyncpg.Pool, agent_id: str) -> dict[str, Any] | None:
    """The call PostgreSQL says this agent is connected to and that has not ended (``dial_open``, whose
    unique index lets an agent hold one), as an offer; None when there is none. The system of record for
    "on a call" when Redis has lost the agent's state: a login then puts the agent back on that call."""
    row = await pool.fetchrow(
        """SELECT o.call_id, o.campaign_id, o.lead_id, o.number, d.answer_at
             FROM dial_open o JOIN dial_attempts d ON d.call_id = o.call_id
            WHERE o.agent_id = $1""",
        agent_id,
    )
    if row is None:
        return None
    answered = row["answer_at"]
    return {
        "call_id": row["call_id"],
        "campaign_id": row["campaign_id"],
        "lead_id": row["lead_id"],
        "number": row["number"],
        "lead_name": "",
        "answered_at_ms": int(answered.timestamp() * 1000) if answered else 0,
    }


@dataclass(frozen=True)
class AssignmentRow:
    campaign_id: str
    agent_id: str
    assigned_by: str
    assigned_at: datetime


@dataclass(frozen=True)
class AssignmentChange:
    campaign_id: str
    agent_id: str
    action: str
    actor: str
    at: datetime


class Assignments:
    """Which agent may log in to which campaign (``agent_assignments``), and who changed it when
    (``agent_assignment_log``, appended in the same transaction as the change)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def assign(self, campaign_id: str, agent_ids: list[str], actor: str, at: datetime) -> list[str]:
        """Assign; returns the agents newly assigned (the others were already)."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """INSERT INTO agent_assignments (campaign_id, agent_id, assigned_by, assigned_at)
                   SELECT $1, a, $3, $4 FROM unnest($2::text[]) AS a
                   ON CONFLICT (campaign_id, agent_id) DO NOTHING
                   RETURNING agent_id""",
                campaign_id,
                agent_ids,
                actor,
                at,
            )
            added = sorted(str(r["agent_id"]) for r in rows)
            await self._log(conn, campaign_id, added, "assign", actor, at)
        return added

    async def unassign(self, campaign_id: str, agent_ids: list[str], actor: str, at: datetime) -> list[str]:
        """Remove; returns the agents that were assigned."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """DELETE FROM agent_assignments WHERE campaign_id = $1 AND agent_id = ANY($2::text[])
                   RETURNING agent_id""",
                campaign_id,
                agent_ids,
            )
            removed = sorted(str(r["agent_id"]) for r in rows)
            await self._log(conn, campaign_id, removed, "unassign", actor, at)
        return removed

    @staticmethod
    async def _log(
        conn: asyncpg.Connection,
        campaign_id: str,
        agent_ids: list[str],
        action: str,
        actor: str,
        at: datetime,
    ) -> None:
        if agent_ids:
            await conn.executemany(
                """INSERT INTO agent_assignment_log (campaign_id, agent_id, action, actor, at)
                   VALUES ($1, $2, $3, $4, $5)""",
                [(campaign_id, a, action, actor, at) for a in agent_ids],
            )

    async def assigned(self, agent_id: str, campaign_ids: list[str]) -> set[str]:
        """Those of ``campaign_ids`` the agent is assigned to."""
        rows = await self.pool.fetch(
            "SELECT campaign_id FROM agent_assignments WHERE agent_id = $1 AND campaign_id = ANY($2::text[])",
            agent_id,
            campaign_ids,
        )
        return {str(r["campaign_id"]) for r in rows}

    async def current(self, campaign_id: str, agent_id: str, limit: int) -> list[AssignmentRow]:
        rows = await self.pool.fetch(
            """SELECT campaign_id, agent_id, assigned_by, assigned_at FROM agent_assignments
               WHERE ($1 = '' OR campaign_id = $1) AND ($2 = '' OR agent_id = $2)
               ORDER BY campaign_id, agent_id LIMIT $3""",
            campaign_id,
            agent_id,
            limit,
        )
        return [AssignmentRow(**dict(r)) for r in rows]

    async def history(self, campaign_id: str, agent_id: str, limit: int) -> list[AssignmentChange]:
        rows = await self.pool.fetch(
            """SELECT campaign_id, agent_id, action, actor, at FROM agent_assignment_log
               WHERE ($1 = '' OR campaign_id = $1) AND ($2 = '' OR agent_id = $2)
               ORDER BY id DESC LIMIT $3""",
            campaign_id,
            agent_id,
            limit,
        )
        return [AssignmentChange(**dict(r)) for r in rows]
