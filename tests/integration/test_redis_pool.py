"""More concurrent commands than the Redis pool has connections: they wait their turn for a connection
(redis-py's default pool failed them at once with MaxConnectionsError, which the services reported to
their callers as UNAVAILABLE), and the wait is bounded."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions

from outdial.core.redis import create_redis


async def test_a_burst_larger_than_the_pool_waits_for_connections(redis_url: str) -> None:
    client = create_redis(redis_url, max_connections=4)
    try:
        # Each BLPOP holds its connection for 50 ms: 40 of them need ten turns of the 4 connections.
        results = await asyncio.gather(*(client.blpop([f"empty:{i}"], timeout=0.05) for i in range(40)))
        assert results == [None] * 40
        assert await client.ping()
    finally:
        await client.aclose()


async def test_the_wait_for_a_connection_is_bounded(redis_url: str) -> None:
    client = create_redis(redis_url, max_connections=1, pool_wait_s=0.2)
    try:
        holder = asyncio.create_task(client.blpop(["empty:held"], timeout=2))
        await asyncio.sleep(0.1)  # the one connection is now held for 2 s
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
        assert await holder is None
        assert await client.ping()  # the connection is back once the holder is done
    finally:
        await client.aclose()
