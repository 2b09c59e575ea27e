"""The far end hung up: the agent service reads ``call.ended`` events (consumer group "agent" on
``keys.call_events()``, XREADGROUP BLOCK, at-least-once) and moves the agent who held that call to wrap-up,
telling their console (``call_ended`` on the Connect stream). Idempotent: the end_call transition only
applies while the agent still holds that very call, so a redelivered event changes nothing."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import redis.exceptions

from outdial.agent.store import AgentRedis, Timeline
from outdial.core import keys

log = logging.getLogger("outdial.agent.hangups")

GROUP = "agent"


class HangupConsumer:
    def __init__(
        self, store: AgentRedis, timeline: Timeline, *, consumer: str, wrap_timeout_s: float
    ) -> None:
        self.store = store
        self.timeline = timeline
        self.consumer = consumer
        self.wrap_ms = int(wrap_timeout_s * 1000)

    async def ensure_group(self) -> None:
        try:
            await self.store.redis.xgroup_create(keys.call_events(), GROUP, id="$", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def handle(self, fields: dict[str, str]) -> bool:
        if fields.get("type") != "call.ended" or not fields.get("agent_id"):
            return False
        agent_id, call_id = fields["agent_id"], fields.get("call_id", "")
        if not call_id:
            return False
        tr = await self.store.run("end_call", agent_id, call_id, self.wrap_ms)
        if not tr.changed:
            return False
        self.timeline.record(tr, "far_end_hangup")
        await self.store.redis.publish(
            keys.agent_offers(agent_id), json.dumps({"type": "call_ended", "call_id": call_id})
        )
        return True

    async def run(self) -> None:
        backlog = True  # first our own unacknowledged entries (after a crash), then new ones
        while True:
            try:
                await self.ensure_group()
                while True:
                    resp: Any = await self.store.redis.xreadgroup(
                        GROUP,
                        self.consumer,
                        {keys.call_events(): "0" if backlog else ">"},
                        count=200,
                        block=None if backlog else 5000,
                    )
                    entries = resp[0][1] if resp else []
                    if backlog and not entries:
                        backlog = False
                        continue
                    for _, fields in entries:
                        await self.handle({str(k): str(v) for k, v in (fields or {}).items()})
                    if entries:
                        # One XACK per batch, after the batch is handled (every call event passes here, and
                        # one round trip per event was a tenth of the service's Redis traffic under load).
                        await self.store.redis.xack(keys.call_events(), GROUP, *(e for e, _ in entries))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("hang-up consumer error; retrying")
                await asyncio.sleep(1.0)
