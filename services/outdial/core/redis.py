"""The Redis client factory (redis-py's ``redis.asyncio``) and a loader for Lua scripts kept in .lua files."""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

__all__ = ["Redis", "create_redis", "load_lua"]


def create_redis(url: str, *, decode: bool = True, max_connections: int = 64) -> Redis:
    """A pooled client. It connects lazily and reconnects by itself when Redis comes back."""
    client: Redis = aioredis.from_url(
        url,
        decode_responses=decode,
        max_connections=max_connections,
        socket_connect_timeout=2.0,
        # No read timeout: XREADGROUP/XREAD BLOCK and pub/sub reads wait longer than any fixed socket timeout
        # would allow (a 5 s timeout broke 5 s BLOCK reads). A dead peer is found by TCP keepalive and the
        # periodic health check; callers that need a bound wrap the call in asyncio.wait_for.
        socket_timeout=None,
        socket_keepalive=True,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 2),
        retry_on_timeout=False,
    )
    return client


def load_lua(package: str, name: str) -> str:
    """Text of a Lua script that sits beside the code that runs it: ``load_lua(__package__, "x.lua")``."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


async def register_script(client: Redis, package: str, name: str) -> Any:
    return client.register_script(load_lua(package, name))
