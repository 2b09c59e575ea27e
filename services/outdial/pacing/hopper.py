"""The hopper side of the dialer: take leads with their claims, and give them back. Redis only.

A lead the dialer takes is popped and claimed for one call id in one script (``hopper_take.lua``); a
claimed lead is handed back, or its claim released, by compare-and-delete in one script
(``hopper_return.lua``). So a lead is never held by two calls, and a claim is only ever released by the
call that holds it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from outdial.core import keys
from outdial.core.redis import Redis, load_lua


@dataclass(frozen=True, slots=True)
class TakenLead:
    """A lead popped from the hopper and claimed for ``call_id``; ``fields`` is its hopper hash."""

    lead_id: str
    call_id: str
    fields: dict[str, str]

    @property
    def number(self) -> str:
        return self.fields.get("number", "")

    @property
    def zones(self) -> tuple[str, ...]:
        try:
            return tuple(str(z) for z in json.loads(self.fields.get("timezones") or "[]"))
        except ValueError:
            return ()

    @property
    def attempt(self) -> int:
        """The attempt this call would be (one more than the lead has had)."""
        try:
            return int(self.fields.get("attempt") or 0) + 1
        except ValueError:
            return 1


class Hopper:
    def __init__(self, redis: Redis, claim_ttl_s: int) -> None:
        self.redis = redis
        self.claim_ttl_s = claim_ttl_s
        self._take: Any = redis.register_script(load_lua(__package__, "hopper_take.lua"))
        self._return: Any = redis.register_script(load_lua(__package__, "hopper_return.lua"))

    async def take(self, campaign_id: str, n: int) -> list[TakenLead]:
        if n <= 0:
            return []
        call_ids = [uuid.uuid4().hex for _ in range(n)]
        raw: list[Any] = await self._take(
            keys=[keys.hopper(campaign_id)],
            args=[
                self.claim_ttl_s,
                keys.hopper_lead(campaign_id, "%s"),
                keys.lead_claim(campaign_id, "%s"),
                *call_ids,
            ],
        )
        out: list[TakenLead] = []
        i = 0
        while i < len(raw):
            lead_id, call_id, width = str(raw[i]), str(raw[i + 1]), int(raw[i + 2])
            flat = raw[i + 3 : i + 3 + width]
            out.append(
                TakenLead(lead_id, call_id, {str(flat[j]): str(flat[j + 1]) for j in range(0, width, 2)})
            )
            i += 3 + width
        return out

    async def give_back(self, campaign_id: str, lead_id: str, call_id: str) -> bool:
        """Release the claim and put the lead back at the front of the hopper (not dialled)."""
        return await self._release(campaign_id, lead_id, call_id, requeue=True)

    async def release(self, campaign_id: str, lead_id: str, call_id: str) -> bool:
        """Release the claim only (the call ended, or the gate blocked it: the feeder decides what next)."""
        return await self._release(campaign_id, lead_id, call_id, requeue=False)

    async def _release(self, campaign_id: str, lead_id: str, call_id: str, *, requeue: bool) -> bool:
        done = await self._return(
            keys=[keys.lead_claim(campaign_id, lead_id), keys.hopper(campaign_id)],
            args=[call_id, lead_id, "1" if requeue else "0"],
        )
        return bool(done)

    async def free_stale_claims(self, campaign_id: str, live_call_ids: set[str]) -> int:
        """Free claims held by calls that are neither live nor in flight (their holder died between the
        claim and the dial). SCAN over this campaign's claim keys, never KEYS; compare-and-delete."""
        freed = 0
        async for key in self.redis.scan_iter(match=keys.lead_claim(campaign_id, "*"), count=500):
            call_id = await self.redis.get(key)
            if call_id is None or call_id in live_call_ids:
                continue
            lead_id = str(key).rsplit(":", 1)[-1]
            freed += await self._release(campaign_id, lead_id, str(call_id), requeue=False)
        return freed
