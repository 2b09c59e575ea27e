"""Per-campaign pacing leases: one replica at a time drives a campaign's dialing.

A lease is a Redis string ``replica|token`` set with NX and a TTL; the token comes from INCR on the
campaign's fence counter at every acquisition, so a later holder always has a larger token. Renewal and
release are compare-and-set Lua scripts (a replica never extends or drops someone else's lease), and the
dialer runs ``dial_fence.lua`` right before every origination: a replica that lost its lease (paused by
GC, partitioned, its TTL ran out) cannot place one more call, because the lease value or the fence no
longer match what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from outdial.core import keys
from outdial.core.redis import Redis, load_lua


@dataclass(frozen=True)
class Lease:
    campaign_id: str
    replica: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.replica}|{self.token}"


class LeaseStore:
    """The Redis side of leases (scripts registered once per client)."""

    def __init__(self, redis: Redis, replica: str, ttl_ms: int) -> None:
        if ttl_ms < 100:
            raise ValueError("lease time must be at least 100 ms")
        self.redis = redis
        self.replica = replica
        self.ttl_ms = ttl_ms
        self._acquire: Any = redis.register_script(load_lua(__package__, "lease_acquire.lua"))
        self._renew: Any = redis.register_script(load_lua(__package__, "lease_renew.lua"))
        self._release: Any = redis.register_script(load_lua(__package__, "lease_release.lua"))
        self._fence: Any = redis.register_script(load_lua(__package__, "dial_fence.lua"))

    async def acquire(self, campaign_id: str) -> Lease | None:
        token = int(
            await self._acquire(
                keys=[keys.pacing_lease(campaign_id), keys.pacing_fence(campaign_id)],
                args=[self.replica, self.ttl_ms],
            )
        )
        return Lease(campaign_id, self.replica, token) if token else None

    async def renew(self, lease: Lease) -> bool:
        ok = await self._renew(keys=[keys.pacing_lease(lease.campaign_id)], args=[lease.value, self.ttl_ms])
        return bool(int(ok))

    async def release(self, lease: Lease) -> bool:
        ok = await self._release(keys=[keys.pacing_lease(lease.campaign_id)], args=[lease.value])
        return bool(int(ok))

    async def holder(self, campaign_id: str) -> str:
        """``replica|token`` of the current holder, or "" when nobody holds the campaign."""
        value = await self.redis.get(keys.pacing_lease(campaign_id))
        return str(value) if value else ""

    async def fence_and_register(self, lease: Lease, call_id: str, dial_ms: int) -> bool:
        """True when ``lease`` is still current; the call is then registered in flight, atomically."""
        cid = lease.campaign_id
        ok = await self._fence(
            keys=[keys.pacing_lease(cid), keys.pacing_fence(cid), keys.calls_in_flight(cid)],
            args=[lease.value, lease.token, call_id, dial_ms],
        )
        return bool(int(ok))
