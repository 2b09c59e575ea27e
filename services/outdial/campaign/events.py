"""Call-event consumer (group "campaign" on ``keys.call_events()``): call detail records and lead updates.

At-least-once delivery, applied exactly once: each event is applied in one PostgreSQL transaction that
first inserts its ``event_id`` into ``campaign_events_applied``; a redelivered event finds it there and
changes nothing. The entry is acknowledged (XACK) only after the commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import redis.exceptions

from outdial.campaign import retries
from outdial.campaign.feeder import compliance_block
from outdial.campaign.model import MODE_DEFAULTS
from outdial.campaign.settings import CampaignSettings
from outdial.core import keys
from outdial.core.clock import Clock
from outdial.core.redis import Redis

log = logging.getLogger("outdial.campaign.events")


def _ts(v: str | None) -> datetime | None:
    if not v:
        return None
    try:
        return datetime.fromtimestamp(int(float(v)) / 1000, UTC)
    except (TypeError, ValueError):
        return None


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v not in (None, "") else None
    except ValueError:
        return None


class EventConsumer:
    def __init__(
        self, pool: asyncpg.Pool, redis: Redis, clock: Clock, settings: CampaignSettings, consumer: str
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.clock = clock
        self.settings = settings
        self.group = settings.consumer_group
        self.consumer = consumer
        self.stream = keys.call_events()

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, ready: asyncio.Event) -> None:
        await ready.wait()
        backoff = 0.5
        pending_due = 0.0  # re-read our own unacknowledged entries (failed applies) now and then
        reconcile_due = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.ensure_group()
                if loop.time() >= reconcile_due:
                    await self.reconcile_once()
                    reconcile_due = loop.time() + self.settings.reconcile_interval_s
                if loop.time() >= pending_due:
                    # Entries another (dead) replica took and never acknowledged become ours after 60 s.
                    await self.redis.xautoclaim(
                        self.stream, self.group, self.consumer, min_idle_time=60_000, start_id="0-0",
                        count=self.settings.events_batch,
                    )  # fmt: skip
                    await self.read_once(pending=True)
                    pending_due = loop.time() + 30.0
                await self.read_once()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event consumer failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def read_once(self, *, pending: bool = False, block_ms: int | None = None) -> int:
        """Read and apply one batch; returns the number of entries handled."""
        resp: Any = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: "0" if pending else ">"},
            count=self.settings.events_batch,
            block=None if pending else (block_ms if block_ms is not None else self.settings.events_block_ms),
        )
        handled = 0
        for _stream, entries in resp or []:
            for entry_id, fields in entries:
                try:
                    await self.apply(dict(fields))
                except (asyncpg.PostgresError, ValueError, KeyError) as exc:
                    # Left pending (not acknowledged): retried by the next pending pass; others go on.
                    log.error("call event %s not applied: %s", entry_id, exc)
                    continue
                await self.redis.xack(self.stream, self.group, entry_id)
                handled += 1
        return handled

    async def reconcile_once(self) -> int:
        """Call detail records from PostgreSQL for calls that ended a while ago but whose events never
        arrived (Redis lost them). The pacing service's event ids are ``call_id:type``, so an event rebuilt
        here and the original, should it still come, are one and the same: applied once."""
        now = self.clock.now()
        rows = await self.pool.fetch(
            # Driven by the end events' index (dial_attempt_events_end_at); a call whose record has no entry with
            # an end (no record, or one without its end) is folded, the others are not looked at.
            """SELECT d.* FROM dial_attempts d
                WHERE d.call_id IN (
                      SELECT x.call_id FROM dial_attempt_events x
                       WHERE x.end_at >= $1 AND x.end_at < $2
                         AND NOT EXISTS (SELECT 1 FROM call_record_entries c
                                          WHERE c.call_id = x.call_id AND c.end_at IS NOT NULL))
                  AND d.end_at >= $1 AND d.end_at < $2 AND d.dial_at IS NOT NULL
                ORDER BY d.end_at LIMIT 1000""",
            now - timedelta(days=2),
            now - timedelta(seconds=self.settings.reconcile_after_s),
        )
        for r in rows:
            for ev in _events_from_attempt(r):
                await self.apply(ev)
        if rows:
            log.warning("rebuilt the call detail records of %d calls whose events were lost", len(rows))
        return len(rows)

    async def apply(self, ev: dict[str, str]) -> bool:
        """Apply one event; False when it was already applied (or carries no event_id)."""
        eid = ev.get("event_id")
        if not eid:
            log.warning("call event without event_id ignored: %s", ev.get("type"))
            return False
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO campaign_events_applied (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING 1",
                eid,
            )
            if fresh is None:
                return False
            await self._apply(conn, ev)
        return True

    async def _apply(self, conn: asyncpg.Connection, ev: dict[str, str]) -> None:
        typ = ev.get("type", "")
        call_id = ev.get("call_id", "")
        cid = ev.get("campaign_id", "")
        if not call_id or not cid:
            return
        at = _ts(ev.get("at")) or self.clock.now()
        lead_id = _int(ev.get("lead_id"))
        if lead_id is not None:
            exists = await conn.fetchval(
                "SELECT 1 FROM leads WHERE id = $1 AND campaign_id = $2", lead_id, cid
            )
            if not exists:
                lead_id = None
        if typ.startswith("preview."):
            # A lead shown to an agent in preview mode is not a call (no call record); a skipped one waits
            # the campaign's preview_skip_delay_s before it is offered again.
            if typ == "preview.skipped" and lead_id is not None:
                await self._skipped(conn, cid, lead_id, at)
            return
        # Call detail records are append-only (migration 0410): the call's head once, then one entry per event
        # stating what it carries; the call_records view folds them (the latest entry stating a fact wins).
        await conn.execute(
            """INSERT INTO call_record_heads (call_id, campaign_id, lead_id, called_number) VALUES ($1, $2, $3, $4)
               ON CONFLICT (call_id) DO NOTHING""",
            call_id,
            cid,
            lead_id,
            ev.get("number", ""),
        )
        if typ == "call.dialing":
            await conn.execute(
                """INSERT INTO call_record_entries (call_id, kind, event_id, calling_number, attempt, dial_at)
                   VALUES ($1, 'dialing', $2, $3, $4, $5)""",
                call_id,
                ev["event_id"],
                ev.get("caller_id", ""),
                _int(ev.get("attempt")) or 0,
                at,
            )
            if lead_id is not None:
                await conn.execute(
                    """UPDATE leads SET attempts = attempts + 1, last_attempt_at = $2, updated_at = now()
                        WHERE id = $1""",
                    lead_id,
                    at,
                )
        elif typ == "call.answered":
            await conn.execute(
                """INSERT INTO call_record_entries (call_id, kind, event_id, answer, answer_at)
                   VALUES ($1, 'answered', $2, $3, $4)""",
                call_id,
                ev["event_id"],
                ev.get("answer", ""),
                at,
            )
        elif typ == "call.connected":
            await conn.execute(
                """INSERT INTO call_record_entries (call_id, kind, event_id, agent_id, connect_at)
                   VALUES ($1, 'connected', $2, nullif($3, ''), $4)""",
                call_id,
                ev["event_id"],
                ev.get("agent_id", ""),
                at,
            )
        elif typ == "call.ended":
            await self._ended(conn, ev, call_id, cid, lead_id, at)
        elif typ == "agent.disposition":
            await self._disposition(conn, ev, call_id, lead_id, at)
        elif typ == "dial.blocked":
            await self._blocked(conn, ev, call_id, lead_id, at)

    async def _skipped(self, conn: asyncpg.Connection, cid: str, lead_id: int, at: datetime) -> None:
        cfg = await conn.fetchval("SELECT settings::text FROM campaigns WHERE id = $1", cid)
        s: dict[str, Any] = json.loads(cfg) if cfg else {}
        delay = int(s.get("preview_skip_delay_s", MODE_DEFAULTS["preview_skip_delay_s"]))
        await conn.execute(
            "UPDATE leads SET recheck_at = $2, updated_at = now() WHERE id = $1",
            lead_id,
            at + timedelta(seconds=delay),
        )

    async def _ended(
        self,
        conn: asyncpg.Connection,
        ev: dict[str, str],
        call_id: str,
        cid: str,
        lead_id: int | None,
        at: datetime,
    ) -> None:
        outcome = ev.get("outcome", "")
        dur = ev.get("duration_s", "")
        recorded = bool(ev.get("recording_path") and ev.get("recording_sha256"))
        await conn.execute(
            """INSERT INTO call_record_entries (call_id, kind, event_id, outcome, dial_at, answer_at, connect_at,
                   end_at, agent_id, duration_s, recording_path, recording_ms, recording_sha256)
               VALUES ($1, 'ended', $2, $3, $4, $5, $6, coalesce($7::timestamptz, $8::timestamptz), nullif($9, ''),
                   $10, $11, $12, $13)""",
            call_id,
            ev["event_id"],
            outcome,
            _ts(ev.get("dial_at")),
            _ts(ev.get("answer_at")),
            _ts(ev.get("connect_at")),
            _ts(ev.get("end_at")),
            at,
            ev.get("agent_id", ""),
            float(dur) if dur not in ("", None) else None,
            ev["recording_path"] if recorded else None,
            int(ev.get("recording_ms") or 0) if recorded else None,
            ev["recording_sha256"] if recorded else None,
        )
        if lead_id is None:
            return
        rec = await conn.fetchrow("SELECT disposition FROM call_records WHERE call_id = $1", call_id)
        if outcome == "connected" and rec is not None and rec["disposition"]:
            return  # the disposition (already applied) decides
        cfg = await conn.fetchval("SELECT settings::text FROM campaigns WHERE id = $1", cid)
        s: dict[str, Any] = json.loads(cfg) if cfg else {}
        if outcome == "failed" and ev.get("reason") == retries.INVALID_NUMBER:
            # The network says the number does not exist (SIP 404/410/484/604): no retry rule applies.
            outcome = retries.INVALID_NUMBER
        counts = await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE outcome = $2) AS same,
                      count(*) FILTER (WHERE outcome NOT IN ('', 'blocked')) AS total
                 FROM call_records WHERE lead_id = $1""",
            lead_id,
            outcome,
        )
        assert counts is not None
        upd = retries.after_outcome(
            outcome,
            outcome_count=int(counts["same"]),
            attempts_total=int(counts["total"]),
            rules=s.get("retry_rules", []),
            max_attempts_per_lead=int(s.get("max_attempts_per_lead", 0) or 0),
            now=at,
        )
        await conn.execute(
            """UPDATE leads SET status = $2, final_reason = $3, next_attempt_at = $4, last_outcome = $5,
                      recheck_at = NULL, updated_at = now()
                WHERE id = $1 AND NOT (status = 'final' AND final_reason IN ('dnc', 'wrong_number'))""",
            lead_id,
            upd.status,
            upd.final_reason,
            upd.next_attempt_at,
            outcome,
        )

    async def _disposition(
        self, conn: asyncpg.Connection, ev: dict[str, str], call_id: str, lead_id: int | None, at: datetime
    ) -> None:
        disp = ev.get("disposition", "")
        await conn.execute(
            """INSERT INTO call_record_entries (call_id, kind, event_id, disposition, notes, agent_id)
               VALUES ($1, 'disposition', $2, $3, $4, nullif($5, ''))""",
            call_id,
            ev["event_id"],
            disp,
            ev.get("notes", ""),
            ev.get("agent_id", ""),
        )
        if lead_id is None:
            return
        upd = retries.after_disposition(disp, _ts(ev.get("callback_at")), at)
        # A callback reopens no closed lead but one closed by its connected call (retries.CALLBACK_REOPENS);
        # no disposition turns a do-not-call or wrong-number closure into another final reason.
        res = await conn.execute(
            """UPDATE leads SET status = $2, final_reason = $3, next_attempt_at = $4, recheck_at = NULL,
                      updated_at = now()
                WHERE id = $1 AND NOT (status = 'final' AND CASE WHEN $2 = 'callback'
                      THEN final_reason <> ALL($5::text[]) ELSE final_reason IN ('dnc', 'wrong_number') END)""",
            lead_id,
            upd.status,
            upd.final_reason,
            upd.next_attempt_at,
            sorted(retries.CALLBACK_REOPENS),
        )
        if res.split()[-1] == "0":
            log.info("lead %s is closed: disposition %r of call %s leaves it so", lead_id, disp, call_id)
            return
        if upd.status == "callback" and upd.next_attempt_at is not None:
            await conn.execute(
                """INSERT INTO callbacks (id, campaign_id, lead_id, at, agent_id, note, created_by)
                   SELECT $1, campaign_id, id, $2, $3, $4, 'disposition' FROM leads WHERE id = $5""",
                f"disp-{call_id}",
                upd.next_attempt_at,
                ev.get("agent_id", ""),
                ev.get("notes", ""),
                lead_id,
            )

    async def _blocked(
        self, conn: asyncpg.Connection, ev: dict[str, str], call_id: str, lead_id: int | None, at: datetime
    ) -> None:
        try:
            reasons = [str(r) for r in json.loads(ev.get("reasons") or "[]")]
        except ValueError:
            reasons = []
        await conn.execute(
            """INSERT INTO call_record_entries (call_id, kind, event_id, outcome, notes, end_at)
               VALUES ($1, 'blocked', $2, 'blocked', $3, $4)""",
            call_id,
            ev["event_id"],
            json.dumps({"reasons": reasons, "detail": ev.get("detail", "")}),
            at,
        )
        if lead_id is None:
            return
        await conn.execute(
            "UPDATE leads SET compliance_block = $2 WHERE id = $1 AND compliance_block <> $2",
            lead_id,
            compliance_block(reasons),
        )
        if any(r.startswith("dnc.") for r in reasons):
            await conn.execute(
                "UPDATE leads SET status = 'final', final_reason = 'dnc', updated_at = now() WHERE id = $1",
                lead_id,
            )
        else:
            await conn.execute(
                "UPDATE leads SET recheck_at = $2, updated_at = now() WHERE id = $1",
                lead_id,
                at + timedelta(minutes=15),
            )


def _ms(at: datetime | None) -> str:
    return "" if at is None else str(int(at.timestamp() * 1000))


def _events_from_attempt(r: asyncpg.Record) -> list[dict[str, str]]:
    """The lifecycle events the pacing service emitted for one call, as PostgreSQL recorded the call."""
    base = {
        "campaign_id": str(r["campaign_id"]),
        "call_id": str(r["call_id"]),
        "lead_id": str(r["lead_id"]),
        "number": str(r["number"]),
    }
    out = [
        base
        | {"event_id": f"{r['call_id']}:call.dialing", "type": "call.dialing", "at": _ms(r["dial_at"])}
        | {"attempt": str(r["attempt"])}
    ]
    if r["answer"]:
        out.append(
            base
            | {
                "event_id": f"{r['call_id']}:call.answered",
                "type": "call.answered",
                "at": _ms(r["answer_at"]),
            }
            | {"answer": str(r["answer"])}
        )
    start = r["connect_at"] or r["answer_at"]
    out.append(
        base
        | {"event_id": f"{r['call_id']}:call.ended", "type": "call.ended", "at": _ms(r["end_at"])}
        | {
            "outcome": str(r["outcome"] or "failed"),
            "dial_at": _ms(r["dial_at"]),
            "answer_at": _ms(r["answer_at"]),
            "connect_at": _ms(r["connect_at"]),
            "end_at": _ms(r["end_at"]),
            "agent_id": str(r["agent_id"] or ""),
            "duration_s": f"{(r['end_at'] - start).total_seconds():.3f}" if start else "0",
            "recording_path": str(r.get("recording_path") or ""),
            "recording_ms": str(r.get("recording_ms") or ""),
            "recording_sha256": str(r.get("recording_sha256") or ""),
        }
    )
    return out
