"""Graceful shutdown: in-flight RPCs finish, then the process exits 0 within its grace period."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from outdial.core import auth
from outdial.core.auth import Role
from outdial.core.config import Settings
from outdial.core.infra import free_port
from outdial.core.server import ServiceContext, ServiceSpec, serve
from tests.conftest import make_token, wait_serving_status

SLOW = "/outdial.test.Slow/Sleep"


async def test_stop_lets_in_flight_rpc_finish(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(auth.PERMISSIONS, SLOW, frozenset({Role.ADMIN}))
    entered = asyncio.Event()

    async def sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        entered.set()
        await asyncio.sleep(0.8)
        return b"done:" + request

    async def setup(server: grpc.aio.Server, ctx: ServiceContext) -> None:
        handler = grpc.method_handlers_generic_handler(
            "outdial.test.Slow", {"Sleep": grpc.unary_unary_rpc_method_handler(sleep)}
        )
        server.add_generic_rpc_handlers((handler,))

    spec = ServiceSpec(name="dnc", full_names=("outdial.test.Slow",), setup=setup)
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(spec, settings, stop=stop, started=port.set_result))
    addr = f"127.0.0.1:{await port}"
    await wait_serving_status(addr, True)
    async with grpc.aio.insecure_channel(addr) as ch:
        call = ch.unary_unary(SLOW)(b"x", metadata=(("authorization", f"Bearer {make_token('admin')}"),))
        await asyncio.wait_for(entered.wait(), 10)
        stop.set()  # the same path SIGTERM takes
        assert await call == b"done:x"
    await asyncio.wait_for(task, 10)


def test_sigterm_exits_zero_within_grace(settings: Settings) -> None:
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "OUTDIAL_DATABASE_URL": settings.database_url or "",
            "OUTDIAL_REDIS_URL": settings.redis_url or "",
            "OUTDIAL_AGENT_ADDR": f"127.0.0.1:{port}",
            "OUTDIAL_METRICS_PORT": "0",
            "OUTDIAL_GRACE_SECONDS": "3",
            "OUTDIAL_DEV": "1",
        }
    )
    proc = subprocess.Popen([sys.executable, "-m", "outdial.agent"], env=env, stdout=subprocess.DEVNULL)
    try:
        asyncio.run(wait_serving_status(f"127.0.0.1:{port}", True, timeout=30))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=3 + 5) == 0
        assert time.monotonic() - started < 8
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
