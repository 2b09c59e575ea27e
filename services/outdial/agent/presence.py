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

    async def sweep_once(self, full: bool = False) -> int:
        """One pass over the agents that are due (presence expiry or a state deadline reached: two
        ZRANGEBYSCORE up to Redis TIME), or over every online agent when ``full`` (a safety net run now
        and then). Returns how many agents changed."""
        redis = self.store.redis
        now_s, now_us = await redis.time()
        now_ms = int(now_s) * 1000 + int(now_us) // 1000
        if full:
            ids = {str(a) for a in await redis.smembers(keys.agents_index())}
        else:
            pipe = redis.pipeline(transaction=False)
            pipe.zrangebyscore(keys.agents_presence_due(), "-inf", now_ms, start=0, num=1000)
            pipe.zrangebyscore(keys.agents_deadlines_due(), "-inf", now_ms, start=0, num=1000)
            due_presence, due_deadlines = await pipe.execute()
            ids = {str(a) for a in (*due_presence, *due_deadlines)}
        changed = 0
        for aid in sorted(ids):
            tr = await self.store.run("sweep", aid, self.slack_ms)
            if not tr.changed:
                continue
            changed += 1
            reason = "heartbeat_timeout" if tr.state == "logged_out" else "sweep"
            if tr.state != "logged_out" and tr.prev_state == "wrap_up":
                reason = "wrap_timeout"
            elif tr.state != "logged_out" and tr.prev_state == "reserved":
                reason = "offer_expired"
            self.timeline.record(tr, reason)
            log.info("agent %s: %s -> %s (%s)", aid, tr.prev_state, tr.state, reason)
            if tr.prev_state == "reserved" and tr.extra:
                await self.store.publish_ack(tr.extra, "released", tr.call_id, aid)
        return changed

    async def run(self, interval_s: float, full_every: int = 60) -> None:
        passes = 0
        while True:
            try:
                await self.sweep_once(full=passes % full_every == 0)
                passes += 1
            except Exception:
                log.exception("presence sweep failed")
            await asyncio.sleep(interval_s)
