"""``outdial agent console`` in a real pseudo-terminal (as under tmux): logs in, shows the offered call with
the lead's details, ends it and sets a disposition with single keys, logs out on q."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import sys

import redis.asyncio as aioredis

from outdial.core import keys
from tests.conftest import Services
from tests.integration.test_agent_service import dialer, offer_req, wait_for


async def test_console_takes_a_call_with_keys(services: Services, redis: aioredis.Redis) -> None:
    rs = await services.start("agent")
    await services.assign("c1", "zoe")
    master, slave = pty.openpty()
    env = {
        **os.environ,
        "OUTDIAL_AGENT_ADDR": rs.addr,
        "OUTDIAL_DEV": "1",
        "OUTDIAL_TOKEN": "",
        "TERM": "xterm-256color",
        "COLUMNS": "120",
        "LINES": "40",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "outdial.cli.main",
        "agent",
        "console",
        "--campaign",
        "c1",
        "--agent-id",
        "zoe",
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    screen = bytearray()
    loop = asyncio.get_running_loop()

    def on_output() -> None:
        with contextlib.suppress(OSError):
            screen.extend(os.read(master, 65536))

    loop.add_reader(master, on_output)
    try:

        async def state(want: str) -> bool:
            return await redis.hget(keys.agent("zoe"), "state") == want

        await wait_for(lambda: state("ready"), timeout=30, what="console login")
        await wait_for(lambda: _subscribed(redis), timeout=30, what="console stream")
        req = offer_req("c1", "tty1")
        req.lead_fields["plan"] = "platinum"
        resp = await dialer(services, rs).OfferCall(req)
        assert resp.assigned and resp.agent_id == "zoe"
        await wait_for(lambda: _shows(screen, b"platinum"), what="lead details on screen")
        os.write(master, b"e")
        await wait_for(lambda: state("wrap_up"), what="end call key")
        os.write(master, b"1")
        await wait_for(lambda: state("ready"), what="disposition key")
        os.write(master, b"q")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert await state("logged_out")
    finally:
        loop.remove_reader(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)


async def _subscribed(redis: aioredis.Redis) -> bool:
    subs = await redis.pubsub_numsub(keys.agent_offers("zoe"))
    return bool(subs and subs[0][1] > 0)


async def _shows(screen: bytearray, text: bytes) -> bool:
    return text in screen
