"""PostgreSQL and Redis work of the pacing service: dial attempts, settings, events, campaign reads."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from outdial.core import keys
from outdial.core.redis import Redis

EVENTS_MAXLEN = 1_000_000
PACING_STATE_TTL_S = 30


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def from_ms(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC)


class PacingStore:
    def __init__(self, pool: asyncpg.Pool, redis: Redis) -> None:
        self.pool = pool
        self.redis = redis

    # ------------------------------------------------------------------ campaign (read-only, Redis)

    async def active_campaigns(self) -> set[str]:
        return {str(c) for c in await self.redis.smembers(keys.active_campaigns())}

    async def campaign_config(self, campaign_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(keys.campaign_config(campaign_id), "json")
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def agents(self, campaign_id: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for agent_id, raw in (await self.redis.hgetall(keys.campaign_agents(campaign_id))).items():
            try:
                v = json.loads(raw)
            except ValueError:
                continue
            if isinstance(v, dict):
                out[str(agent_id)] = v
        return out

    # ------------------------------------------------------------------ events

    async def emit(
        self,
        type_: str,
        at: datetime,
        campaign_id: str,
        call_id: str,
        lead_id: str,
        number: str,
        **fields: Any,
    ) -> str:
        # One event of a type per call (a repeat, e.g. a second ringing, is a duplicate consumers skip): the
        # id is derived, so a consumer that rebuilds a lost event from PostgreSQL uses the very same id.
        event_id = f"{call_id}:{type_}" if call_id else uuid.uuid4().hex
        body: dict[str, str] = {
            "event_id": event_id,
            "type": type_,
            "at": str(ms(at)),
            "campaign_id": campaign_id,
            "call_id": call_id,
            "lead_id": lead_id,
            "number": number,
        }
        for k, v in fields.items():
            body[k] = "" if v is None else (json.dumps(v) if isinstance(v, list | dict) else str(v))
        await self.redis.xadd(keys.call_events(), body, maxlen=EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]
        return event_id

    # ------------------------------------------------------------------ dial attempts (PostgreSQL)

    async def record_gate(
        self,
        *,
        call_id: str,
        campaign_id: str,
        lead_id: str,
        number: str,
        attempt: int,
        replica: str,
        fence_token: int,
        allowed: bool,
        reasons: list[str],
        gate_at: datetime,
        mode: str = "",
        dialled_by: str = "",
    ) -> None:
        """The gate's decision, before any dial. ``dialled_by``: the agent who chose to dial this lead
        (preview), which makes the call manual (agent-initiated) rather than autodialled."""
        await self.pool.execute(
            """INSERT INTO dial_attempts (call_id, campaign_id, lead_id, number, attempt, replica, fence_token,
                   allowed, reasons, gate_at, mode, manual, dialled_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12 <> '', nullif($12, ''))
               ON CONFLICT (call_id) DO NOTHING""",
            call_id,
            campaign_id,
            lead_id,
            number,
            attempt,
            replica,
            fence_token,
            allowed,
            json.dumps(reasons),
            gate_at,
            mode,
            dialled_by,
        )

    async def mark_dialed(self, call_id: str, dial_at: datetime) -> bool:
        """The call is about to leave. False when the lead or the number already has a call open (the
        database's partial unique indexes): then it must not be dialled."""
        try:
            await self.pool.execute(
                "UPDATE dial_attempts SET dial_at = $2 WHERE call_id = $1", call_id, dial_at
            )
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def mark_answered(
        self, call_id: str, answer: str, answer_at: datetime, outcome: str | None
    ) -> None:
        await self.pool.execute(
            """UPDATE dial_attempts SET answer = $2, answer_at = $3, outcome = COALESCE($4, outcome)
               WHERE call_id = $1 AND end_at IS NULL""",
            call_id,
            answer,
            answer_at,
            outcome,
        )

    async def mark_connected(self, call_id: str, connect_at: datetime, agent_id: str) -> bool:
        """False when that agent already has a connected call open (never two calls at once)."""
        try:
            await self.pool.execute(
                """UPDATE dial_attempts SET connect_at = $2, agent_id = $3, outcome = 'connected'
                   WHERE call_id = $1 AND end_at IS NULL""",
                call_id,
                connect_at,
                agent_id,
            )
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def mark_outcome(self, call_id: str, outcome: str) -> None:
        """The outcome as soon as it is known (before the line ends), so a crash keeps it."""
        await self.pool.execute(
            "UPDATE dial_attempts SET outcome = $2 WHERE call_id = $1 AND end_at IS NULL", call_id, outcome
        )

    async def attempts(self, call_ids: list[str]) -> dict[str, asyncpg.Record]:
        rows = await self.pool.fetch("SELECT * FROM dial_attempts WHERE call_id = ANY($1::text[])", call_ids)
        return {r["call_id"]: r for r in rows}

    async def open_attempts(self, campaign_id: str) -> list[asyncpg.Record]:
        """Calls of the campaign dialled and not ended, as PostgreSQL knows them."""
        return list(
            await self.pool.fetch(
                """SELECT * FROM dial_attempts
                   WHERE campaign_id = $1 AND dial_at IS NOT NULL AND end_at IS NULL""",
                campaign_id,
            )
        )

    async def live_answers_since(self, campaign_id: str, since: datetime) -> list[tuple[str, datetime, bool]]:
        """(call id, answer time, abandoned) of every live answer of the campaign since ``since`` whose fate is
        known: the abandonment window's facts, to rebuild the Redis window after a data loss."""
        rows = await self.pool.fetch(
            """SELECT call_id, answer_at, outcome FROM dial_attempts
               WHERE campaign_id = $1 AND answer_at >= $2 AND outcome IN ('connected', 'abandoned')""",
            campaign_id,
            since,
        )
        return [(r["call_id"], r["answer_at"], r["outcome"] == "abandoned") for r in rows]

    async def recent_dials(
        self, campaign_id: str, since: datetime, abandoned_since: datetime
    ) -> list[tuple[str, str, datetime, datetime | None]]:
        """(number, call id, dial time, answer time when abandoned since ``abandoned_since``) of the
        campaign's dials since ``since``: the facts behind the gate's per-number attempt counts and the UK
        72-hour rule."""
        rows = await self.pool.fetch(
            """SELECT number, call_id, dial_at,
                      CASE WHEN outcome = 'abandoned' AND answer_at >= $3 THEN answer_at END AS abandoned_at
               FROM dial_attempts WHERE campaign_id = $1 AND dial_at >= $2""",
            campaign_id,
            since,
            abandoned_since,
        )
        return [(r["number"], r["call_id"], r["dial_at"], r["abandoned_at"]) for r in rows]

    async def finish_attempt(
        self,
        call_id: str,
        *,
        outcome: str,
        answer: str | None,
        answer_at: datetime | None,
        connect_at: datetime | None,
        end_at: datetime,
        agent_id: str | None,
        opt_out: bool,
        recording: tuple[str, int, str] | None = None,
    ) -> bool:
        """Write the call's end, once: the first writer wins (the replica that followed the call, or a lease
        holder closing it after its replica died). True for the writer that won; it alone emits
        ``call.ended``. Facts already recorded (answer, times, agent) are kept when the writer has none."""
        row = await self.pool.fetchval(
            """UPDATE dial_attempts SET outcome = $2, answer = COALESCE($3, answer),
                   answer_at = COALESCE($4, answer_at), connect_at = COALESCE($5, connect_at), end_at = $6,
                   agent_id = COALESCE($7, agent_id), opt_out = opt_out OR $8,
                   recording_path = $9, recording_ms = $10, recording_sha256 = $11
               WHERE call_id = $1 AND end_at IS NULL RETURNING 1""",
            call_id,
            outcome,
            answer,
            answer_at,
            connect_at,
            end_at,
            agent_id,
            opt_out,
            recording[0] if recording else None,
            recording[1] if recording else None,
            recording[2] if recording else None,
        )
        return row is not None

    # ------------------------------------------------------------------ replicas

    async def announce(self, replica: str, ttl_ms: int, started_ms: int) -> None:
        await self.redis.set(keys.pacing_replica(replica), started_ms, px=ttl_ms)

    async def alive(self, replicas: set[str]) -> set[str]:
        if not replicas:
            return set()
        names = sorted(replicas)
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in names:
                pipe.exists(keys.pacing_replica(r))
            found = await pipe.execute()
        return {r for r, f in zip(names, found, strict=True) if f}

    # ------------------------------------------------------------------ settings

    async def load_settings(self, campaign_id: str) -> dict[str, Any]:
        raw = await self.redis.hget(keys.pacing_settings(campaign_id), "json")
        if raw:
            try:
                value = json.loads(raw)
                if isinstance(value, dict):
                    return value
            except ValueError:
                pass
        row = await self.pool.fetchval(
            "SELECT settings FROM pacing_settings WHERE campaign_id = $1", campaign_id
        )
        value = {} if row is None else (json.loads(row) if isinstance(row, str) else row)
        # Cached in Redis, also when empty, so that the dialer's tick does not query PostgreSQL.
        await self.redis.hset(keys.pacing_settings(campaign_id), "json", json.dumps(value))
        return dict(value)

    async def save_settings(self, campaign_id: str, settings: dict[str, Any], actor: str) -> None:
        doc = json.dumps(settings)
        await self.pool.execute(
            """INSERT INTO pacing_settings (campaign_id, settings, updated_at, updated_by)
               VALUES ($1, $2::jsonb, now(), $3)
               ON CONFLICT (campaign_id) DO UPDATE SET settings = EXCLUDED.settings,
                   updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by""",
            campaign_id,
            doc,
            actor,
        )
        await self.redis.hset(keys.pacing_settings(campaign_id), "json", doc)

    # ------------------------------------------------------------------ published state

    async def publish_state(self, campaign_id: str, state: dict[str, Any], *, changed: bool) -> None:
        """Store the holder's state (any replica serves it) and, when it changed, wake the watchers."""
        doc = json.dumps(state, sort_keys=True)
        await self.redis.set(keys.pacing_state(campaign_id), doc, ex=PACING_STATE_TTL_S)
        if changed:
            await self.redis.publish(keys.pacing_updates(campaign_id), "state")

    async def read_state(self, campaign_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(keys.pacing_state(campaign_id))
        if not raw:
            return None
        value = json.loads(raw)
        return value if isinstance(value, dict) else None
