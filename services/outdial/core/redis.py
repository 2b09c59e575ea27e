"""The Redis client factory (redis-py's ``redis.asyncio``) and a loader for Lua scripts kept in .lua files."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import Redis
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from outdial.core.config import Settings

__all__ = ["Redis", "RedisTLS", "create_redis", "load_lua"]


class _SentinelPrimary(Redis):
    """The primary's client; closing it also closes the connections to the sentinels."""

    _sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """``redis+sentinel://[:password@]host1:26379,host2:26379/MASTER[/DB]`` -> (sentinels, master, db,
    password). Redis Sentinel gives automatic fail-over without any cluster code of ours."""
    parsed = urlsplit(url)
    if parsed.scheme != "redis+sentinel":
        raise ValueError(f"not a redis+sentinel URL: {url!r}")
    netloc = parsed.netloc.rpartition("@")
    password = unquote(netloc[0].partition(":")[2]) if netloc[1] else None
    hosts: list[tuple[str, int]] = []
    for part in netloc[2].split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "26379")
        if not host:
            raise ValueError(f"sentinel host missing in {url!r}")
        hosts.append((host, int(port)))
    path = [p for p in parsed.path.split("/") if p]
    if not path:
        raise ValueError(f"the sentinel master name is missing in {url!r} (redis+sentinel://h:26379/MASTER)")
    db = int(path[1]) if len(path) > 1 else 0
    return hosts, path[0], db, password or None


@dataclass(frozen=True)
class RedisTLS:
    """How a ``rediss://`` client verifies the server (CA bundle; None: the system's roots) and, when the
    server asks for one, which certificate it presents. The host name is always checked against the
    server's certificate, and a server certificate is always required."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisTLS:
        return cls(settings.redis_tls_ca, settings.redis_tls_cert, settings.redis_tls_key)

    def connection_kwargs(self) -> dict[str, Any]:
        if (self.cert is None) != (self.key is None):
            raise ValueError(
                "OUTDIAL_REDIS_TLS_CERT and OUTDIAL_REDIS_TLS_KEY go together: set both or neither"
            )
        for name, path in (("ca", self.ca), ("cert", self.cert), ("key", self.key)):
            if path is not None and not path.is_file():
                raise ValueError(f"OUTDIAL_REDIS_TLS_{name.upper()}: no such file {path}")
        kwargs: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if self.ca is not None:
            kwargs["ssl_ca_certs"] = str(self.ca)
        if self.cert is not None and self.key is not None:
            kwargs["ssl_certfile"], kwargs["ssl_keyfile"] = str(self.cert), str(self.key)
        return kwargs


def create_redis(
    url: str,
    *,
    decode: bool = True,
    max_connections: int = 64,
    pool_wait_s: float = 5.0,
    tls: RedisTLS | None = None,
) -> Redis:
    """A pooled client. It connects lazily and reconnects by itself when Redis comes back.

    ``redis://`` / ``rediss://`` / ``unix://`` URLs name one server; ``redis+sentinel://h1:26379,h2:26379/
    MASTER[/DB]`` asks Sentinel for the current primary (and follows fail-overs). A ``rediss://`` URL speaks
    TLS, verifying the server's certificate and host name against ``tls.ca`` (default: the system's roots);
    ``tls`` is ignored for the other schemes. The ACL user and password go in the URL
    (``rediss://USER:PASSWORD@host:6380/0``)."""
    tls_kwargs = (tls or RedisTLS()).connection_kwargs() if urlsplit(url).scheme == "rediss" else {}
    if url.startswith("redis+sentinel://"):
        hosts, master, db, password = parse_sentinel_url(url)
        sentinel = Sentinel(hosts, socket_connect_timeout=2.0, password=password)  # type: ignore[no-untyped-call]
        primary: _SentinelPrimary = sentinel.master_for(
            master,
            redis_class=_SentinelPrimary,
            db=db,
            password=password,
            decode_responses=decode,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
            health_check_interval=10,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 2),
        )
        primary._sentinel = sentinel
        return primary
    # A blocking pool: when every connection is busy (a burst of RPCs, each running a command), a command
    # waits for a free connection, up to ``pool_wait_s``. redis-py's default pool raises MaxConnectionsError
    # at once instead, which reached callers as UNAVAILABLE ("a dependency is not answering") while Redis
    # was answering in well under a millisecond (bench/assign.py: 500 consoles refreshing presence together).
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait_s,
        decode_responses=decode,
        socket_connect_timeout=2.0,
        # No read timeout: XREADGROUP/XREAD BLOCK and pub/sub reads wait longer than any fixed socket timeout
        # would allow (a 5 s timeout broke 5 s BLOCK reads). A dead peer is found by TCP keepalive and the
        # periodic health check; callers that need a bound wrap the call in asyncio.wait_for.
        socket_timeout=None,
        socket_keepalive=True,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 2),
        retry_on_timeout=False,
        **tls_kwargs,
    )
    client: Redis = aioredis.Redis.from_pool(pool)
    return client


def load_lua(package: str, name: str) -> str:
    """Text of a Lua script that sits beside the code that runs it: ``load_lua(__package__, "x.lua")``."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


async def register_script(client: Redis, package: str, name: str) -> Any:
    return client.register_script(load_lua(package, name))
