"""PostgreSQL and Redis work of the pacing service: dial attempts, settings, events, campaign reads."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from outdial.core import keys, versions
from outdial.core.persons import person_dials
from outdial.core.redis import Redis

EVENTS_MAXLEN = 1_000_000
#: First key of the advisory locks that serialise dials to one person (``mark_dialed``); the second is the
#: hash of one of the person's numbers.
PERSON_LOCK_CLASS = 0x0D1A
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
            """INSERT INTO dial_attempt_gates (call_id, campaign_id, lead_id, number, attempt, replica, fence_token,
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

    # Every step of a call below is one statement, as the UPDATE it replaced (migration 0409): an event row
    # appended (dial_attempt_events, never changed), with the call's lock row in dial_open taken, moved or
    # dropped in the same statement. A step after the end (the lock row gone) writes nothing.

    _DIAL = """WITH o AS (
                   INSERT INTO dial_open (call_id, campaign_id, lead_id, number)
                   SELECT call_id, campaign_id, lead_id, number FROM dial_attempt_gates WHERE call_id = $1
                   RETURNING call_id)
               INSERT INTO dial_attempt_events (call_id, kind, dial_at) SELECT call_id, 'dial', $2 FROM o"""

    async def mark_dialed(
        self,
        call_id: str,
        dial_at: datetime,
        *,
        person: frozenset[str] = frozenset(),
        cap: int | None = None,
        period: timedelta = timedelta(0),
    ) -> bool:
        """The call is about to leave. False when the lead or the number already has a call open (the lock
        rows' unique indexes), or when ``cap`` is set and the ``person`` (every number of the person,
        core/persons.py) already had ``cap`` calls dialled in the ``period`` before ``dial_at``: then it must
        not be dialled. The cap is counted under a transaction-scoped advisory lock on each of the person's
        numbers (taken in one order), so two replicas dialling two leads of one person at once cannot both pass
        the gate's count; a refused call gets a ``refusal`` event (``cap.person_24h``, migration 0412), which the
        dial_attempts view reads as not allowed with that reason."""
        try:
            if cap is None or not person:
                await self.pool.execute(self._DIAL, call_id, dial_at)
                return True
            async with self.pool.acquire() as conn, conn.transaction():
                for n in sorted(person):
                    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", PERSON_LOCK_CLASS, n)
                # A call is dialled within a day of its gate decision: the gate time bounds the calls folded
                # (the index dial_attempt_gates_number_gate, 0412).
                dialled = await conn.fetchval(
                    """SELECT count(*) FROM dial_attempts
                        WHERE number = ANY($1::text[]) AND gate_at > $2::timestamptz - interval '1 day'
                          AND dial_at IS NOT NULL AND dial_at > $2 AND dial_at <= $3 AND call_id <> $4""",
                    sorted(person),
                    dial_at - period,
                    dial_at,
                    call_id,
                )
                if dialled >= cap:
                    await conn.execute(
                        """INSERT INTO dial_attempt_events (call_id, kind, actor, reason)
                           VALUES ($1, 'refusal', 'pacing', 'cap.person_24h')""",
                        call_id,
                    )
                    return False
                await conn.execute(self._DIAL, call_id, dial_at)
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def mark_answered(
        self, call_id: str, answer: str, answer_at: datetime, outcome: str | None
    ) -> None:
        await self.pool.execute(
            """INSERT INTO dial_attempt_events (call_id, kind, answer, answer_at, outcome)
               SELECT call_id, 'answer', $2, $3, $4 FROM dial_open WHERE call_id = $1 FOR KEY SHARE""",
            call_id,
            answer,
            answer_at,
            outcome,
        )

    async def mark_connected(self, call_id: str, connect_at: datetime, agent_id: str) -> bool:
        """False when that agent already has a connected call open (never two calls at once)."""
        try:
            await self.pool.execute(
                """WITH o AS (UPDATE dial_open SET agent_id = $3 WHERE call_id = $1 RETURNING call_id)
                   INSERT INTO dial_attempt_events (call_id, kind, connect_at, agent_id, outcome)
                   SELECT call_id, 'connect', $2, $3, 'connected' FROM o""",
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
            """INSERT INTO dial_attempt_events (call_id, kind, outcome)
               SELECT call_id, 'outcome', $2 FROM dial_open WHERE call_id = $1 FOR KEY SHARE""",
            call_id,
            outcome,
        )

    async def attempts(self, call_ids: list[str]) -> dict[str, asyncpg.Record]:
        rows = await self.pool.fetch("SELECT * FROM dial_attempts WHERE call_id = ANY($1::text[])", call_ids)
        return {r["call_id"]: r for r in rows}

    async def open_attempts(self, campaign_id: str) -> list[asyncpg.Record]:
        """Calls of the campaign dialled and not ended, as PostgreSQL knows them (their lock rows)."""
        return list(
            await self.pool.fetch(
                """SELECT d.* FROM dial_open o JOIN dial_attempts d ON d.call_id = o.call_id
                   WHERE o.campaign_id = $1""",
                campaign_id,
            )
        )

    # The two reads below rebuild Redis state at a lease takeover from many calls at once. They read the events
    # of the campaign's recent calls without folding them whole (max and bool_or need no sort): the strictest
    # reading of a call's events, i.e. abandoned when any step said so, which a correction can only make
    # stricter, never laxer. A call is dialled and answered within a day of its gate decision (it rings for
    # seconds), which bounds the calls read.

    async def live_answers_since(
        self, campaign_id: str, since: datetime, *, machines: bool = False
    ) -> list[tuple[str, datetime, str]]:
        """(call id, answer time, ``h`` connected / ``a`` abandoned / ``m`` machine) of every live answer of the
        campaign since ``since`` whose fate is known (and, with ``machines``, every machine-classified answer:
        the AMD false positives the budget estimates among them): the abandonment window's facts, to rebuild
        the Redis window after a data loss. A call any step said was abandoned is abandoned."""
        rows = await self.pool.fetch(
            """SELECT g.call_id, f.answer_at, f.abandoned, f.live
                 FROM dial_attempt_gates g
                 CROSS JOIN LATERAL (
                       SELECT max(e.answer_at) AS answer_at, bool_or(e.outcome = 'abandoned') AS abandoned,
                              bool_or(e.outcome IN ('connected', 'abandoned')) AS live,
                              bool_or(e.outcome = 'machine') AS machine
                         FROM dial_attempt_events e WHERE e.call_id = g.call_id) f
                WHERE g.campaign_id = $1 AND g.gate_at >= $2::timestamptz - interval '1 day'
                  AND f.answer_at >= $2 AND (f.live OR ($3 AND f.machine))""",
            campaign_id,
            since,
            machines,
        )
        return [
            (r["call_id"], r["answer_at"], "a" if r["abandoned"] else "h" if r["live"] else "m") for r in rows
        ]

    async def person_dials(
        self, numbers: Sequence[str], since: datetime
    ) -> tuple[dict[str, frozenset[str]], dict[str, dict[str, datetime]]]:
        """Who is behind each number (every number of every lead linked to it by shared numbers, in every
        campaign) and every dial to those numbers since ``since``, from PostgreSQL: the dial-time gate's
        per-person cap facts (core/persons.py). Raises PersonFactsUnavailable when PostgreSQL cannot answer."""
        return await person_dials(self.pool, list(numbers), since)

    async def recent_dials(
        self, campaign_id: str, since: datetime, abandoned_since: datetime
    ) -> list[tuple[str, str, datetime, datetime | None]]:
        """(number, call id, dial time, answer time when abandoned since ``abandoned_since``) of the
        campaign's dials since ``since``: the facts behind the gate's per-number attempt counts and the UK
        72-hour rule."""
        rows = await self.pool.fetch(
            """SELECT g.number, g.call_id, f.dial_at,
                      CASE WHEN f.abandoned AND f.answer_at >= $3 THEN f.answer_at END AS abandoned_at
                 FROM dial_attempt_gates g
                 CROSS JOIN LATERAL (
                       SELECT max(e.dial_at) AS dial_at, max(e.answer_at) AS answer_at,
                              bool_or(e.outcome = 'abandoned') AS abandoned
                         FROM dial_attempt_events e WHERE e.call_id = g.call_id) f
                WHERE g.campaign_id = $1 AND g.gate_at >= $2::timestamptz - interval '1 day' AND f.dial_at >= $2""",
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
        holder closing it after its replica died; the unique index on a call's 'end' event). True for the
        writer that won; it alone emits ``call.ended``. Facts already recorded (answer, times, agent) are kept
        when the writer has none (the view folds the latest row that states each). The call's lock row goes
        in the same statement."""
        row = await self.pool.fetchval(
            """WITH e AS (
                   INSERT INTO dial_attempt_events (call_id, kind, outcome, answer, answer_at, connect_at, end_at,
                       agent_id, opt_out, recording_path, recording_ms, recording_sha256)
                   SELECT call_id, 'end', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM dial_attempt_gates g
                    WHERE call_id = $1 AND NOT EXISTS (
                          SELECT 1 FROM dial_attempt_events x WHERE x.call_id = $1 AND x.end_at IS NOT NULL)
                   ON CONFLICT (call_id) WHERE kind = 'end' DO NOTHING RETURNING call_id),
               o AS (DELETE FROM dial_open WHERE call_id IN (SELECT call_id FROM e))
               SELECT 1 FROM e""",
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

    async def save_settings(self, campaign_id: str, settings: dict[str, Any], actor: str) -> int:
        """Store the settings and append their version (who, when, the whole settings, what changed) in one
        transaction; the settings row's lock orders concurrent updates. Returns the version number."""
        doc = json.dumps(settings)
        async with self.pool.acquire() as conn, conn.transaction():
            before = await conn.fetchval(
                """INSERT INTO pacing_settings (campaign_id, settings, updated_at, updated_by)
                   VALUES ($1, '{}'::jsonb, now(), $2) ON CONFLICT (campaign_id) DO UPDATE SET campaign_id = $1
                   RETURNING (SELECT p.settings::text FROM pacing_settings p WHERE p.campaign_id = $1)""",
                campaign_id,
                actor,
            )
            old = json.loads(before) if before else None
            await conn.execute(
                """UPDATE pacing_settings SET settings = $2::jsonb, updated_at = now(), updated_by = $3
                   WHERE campaign_id = $1""",
                campaign_id,
                doc,
                actor,
            )
            number = await conn.fetchval(
                """INSERT INTO pacing_settings_versions (campaign_id, version, actor, at, action, settings, changes)
                   SELECT $1, coalesce(max(version), 0) + 1, $2, now(),
                          CASE WHEN max(version) IS NULL THEN 'create' ELSE 'update' END, $3::jsonb, $4::jsonb
                     FROM pacing_settings_versions WHERE campaign_id = $1
                   RETURNING version""",
                campaign_id,
                actor,
                doc,
                json.dumps([c.as_dict() for c in versions.diff(old, settings)]),
            )
        await self.redis.hset(keys.pacing_settings(campaign_id), "json", doc)
        return int(number)

    async def settings_versions(self, campaign_id: str) -> list[asyncpg.Record]:
        return list(
            await self.pool.fetch(
                """SELECT version, actor, at, action, settings::text AS settings, changes::text AS changes
                     FROM pacing_settings_versions WHERE campaign_id = $1 ORDER BY version""",
                campaign_id,
            )
        )

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
