"""The presence sweeper: a background loop on every replica (idempotent: the transition script decides,
so two replicas sweeping together change an agent once). It logs out agents whose heartbeat key expired
(their stream dropped and no heartbeat came), returns to ready the agents whose wrap-up timed out or whose
reservation outlived its OfferCall, and wakes the OfferCall waiting on a reservation it released."""

from __future__ import annotations

import asyncio
import logging

from outdial.agent.store import AgentRedis, Timeline
from outdial.core import keys

log = logging.getLogger("outdial.agent.presence")


class Sweeper:
    def __init__(self, store: AgentRedis, timeline: Timeline, *, stuck_offer_slack_ms: int) -> None:
        self.store = store
        self.timeline = timeline
        self.slack_ms = stuck_offer_slack_ms

    async def sweep_once(self) -> int:
        """One pass; returns how many agents changed."""
        redis = self.store.redis
        ids = sorted(str(a) for a in await redis.smembers(keys.agents_index()))
        if not ids:
            return 0
        pipe = redis.pipeline(transaction=False)
        for aid in ids:
            pipe.exists(keys.agent_presence(aid))
            pipe.hmget(keys.agent(aid), "state", "wrap_deadline_ms", "offer_deadline_ms")
        raw = await pipe.execute()
        now_s, now_us = await redis.time()
        now_ms = int(now_s) * 1000 + int(now_us) // 1000
        changed = 0
        for i, aid in enumerate(ids):
            present, (state, wrap_dl, offer_dl) = raw[2 * i], raw[2 * i + 1]
            due = (
                not present
                or state in (None, "logged_out")
                or (state == "wrap_up" and wrap_dl and now_ms >= int(wrap_dl))
                or (state == "reserved" and offer_dl and now_ms > int(offer_dl) + self.slack_ms)
            )
            if not due:
                continue
            tr = await self.store.run("sweep", aid, self.slack_ms)
            if tr.changed:
                changed += 1
                reason = "heartbeat_timeout" if tr.state == "logged_out" else "sweep"
                if tr.prev_state == "wrap_up":
                    reason = "wrap_timeout"
                elif tr.prev_state == "reserved" and tr.state == "ready":
                    reason = "offer_expired"
                self.timeline.record(tr, reason)
                log.info("agent %s: %s -> %s (%s)", aid, tr.prev_state, tr.state, reason)
                if tr.prev_state == "reserved" and tr.extra:
                    await self.store.publish_ack(tr.extra, "released", tr.call_id, aid)
        return changed

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("presence sweep failed")
            await asyncio.sleep(interval_s)
