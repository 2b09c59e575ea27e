"""Campaign leases: one holder at a time, compare-and-set renewal/release, and the dial-time fence that
stops a replica whose lease expired from placing one more call."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from outdial.core import keys
from outdial.pacing.lease import LeaseStore


async def test_one_holder_fenced_tokens_and_takeover_after_expiry(redis: aioredis.Redis) -> None:
    a = LeaseStore(redis, "replica-a", ttl_ms=300)
    b = LeaseStore(redis, "replica-b", ttl_ms=300)
    la = await a.acquire("c1")
    assert la is not None and la.token == 1
    assert await b.acquire("c1") is None
    assert await a.fence_and_register(la, "call-1", 1000)
    assert await redis.zscore(keys.calls_in_flight("c1"), "call-1") == 1000
    # a stalls past its lease: b takes over with a larger token; a can neither renew nor dial.
    lb = None
    for _ in range(100):
        lb = await b.acquire("c1")
        if lb is not None:
            break
        await asyncio.sleep(0.05)
    assert lb is not None and lb.token == 2
    assert not await a.renew(la)
    assert not await a.fence_and_register(la, "call-2", 2000)
    assert await redis.zscore(keys.calls_in_flight("c1"), "call-2") is None
    assert not await a.release(la)
    assert await b.holder("c1") == "replica-b|2"
    assert await b.renew(lb)
    assert await b.release(lb)
    assert await a.holder("c1") == ""
