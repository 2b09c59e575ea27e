"""Killing the pacing replica that drives a campaign (SIGKILL: no lease release, calls left in flight) hands
the campaign to another replica within the lease time; the new holder closes the calls the dead one left
(exactly one ``call.ended`` per dialed call) and dials on, never a lead twice at once."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.core import keys
from tests.conftest import Services
from tests.integration.test_pacing_dialer import (
    CID,
    WORKDAY,
    FakeAgents,
    FakeDnc,
    events,
    seed_campaign,
    start_peers,
    wait_for,
    workday_clock,
)

LEASE_MS = 1500


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTDIAL_PACING_LEASE_MS", str(LEASE_MS))
    monkeypatch.setenv("OUTDIAL_PACING_TICK_MS", "100")
    monkeypatch.setenv("OUTDIAL_PACING_DRAIN_S", "2")
    monkeypatch.setenv("OUTDIAL_SIM_TIME_SCALE", "20")
    monkeypatch.setenv("OUTDIAL_SIM_TALK_MEAN_S", "60")
    monkeypatch.setenv("OUTDIAL_SIM_P_LIVE", "0.5")


async def test_killed_holder_hands_over_within_the_lease(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, env: None
) -> None:
    await seed_campaign(redis, n_leads=400, n_agents=4, dial_mode="power")
    peers = await start_peers(services, FakeDnc(set()), FakeAgents(refuse_every=1000))
    s = services.settings
    offset = (WORKDAY - datetime.now(UTC)).total_seconds()
    child_env = {
        **os.environ,
        "OUTDIAL_DATABASE_URL": str(s.database_url),
        "OUTDIAL_REDIS_URL": str(s.redis_url),
        "OUTDIAL_DNC_ADDR": s.dnc_addr,
        "OUTDIAL_AGENT_ADDR": s.agent_addr,
        "OUTDIAL_DEV": "1",
        "OUTDIAL_LISTEN_PORT": "0",
        "OUTDIAL_METRICS_PORT": "0",
        "OUTDIAL_INSTANCE_ID": "doomed",
        "OUTDIAL_CLOCK_OFFSET_SECONDS": str(offset),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outdial.pacing", env=child_env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:

        async def doomed_dialing() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM dial_attempts WHERE replica = 'doomed' AND dial_at IS NOT NULL"
            )
            return bool(n >= 6 and await redis.zcard(keys.calls_in_flight(CID)) > 0)

        await wait_for(doomed_dialing, timeout=60)
        await services.start("pacing", clock=workday_clock(), instance_id="heir")
        assert (await redis.get(keys.pacing_lease(CID))).startswith("doomed|")

        loop = asyncio.get_running_loop()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        killed = loop.time()
        left_in_flight = await redis.zcard(keys.calls_in_flight(CID))

        async def heir_holds() -> bool:
            h = await redis.get(keys.pacing_lease(CID))
            return bool(h and h.startswith("heir|"))

        await wait_for(heir_holds, timeout=30, every=0.05)
        handover_s = loop.time() - killed

        async def heir_dialing() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM dial_attempts WHERE replica = 'heir' AND dial_at IS NOT NULL"
            )
            return bool(n >= 6)

        await wait_for(heir_dialing, timeout=60)

        async def doomed_closed() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM dial_attempts WHERE replica = 'doomed' AND dial_at IS NOT NULL AND end_at IS NULL"
            )
            return n == 0

        await wait_for(doomed_closed, timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await peers.stop(None)

    # Within the lease time, plus one renewal pass of the heir (lease/3) and generous slack for a loaded box.
    assert handover_s < LEASE_MS / 1000 + LEASE_MS / 3000 + 3.0
    assert left_in_flight > 0
    rows = await pg.fetch("SELECT * FROM dial_attempts WHERE dial_at IS NOT NULL")
    tokens = {r["replica"]: r["fence_token"] for r in rows}
    assert tokens["heir"] > tokens["doomed"]
    # Exactly one call.ended for every call either replica dialed, the dead one's included.
    ended = Counter(e["call_id"] for e in await events(redis) if e["type"] == "call.ended")
    finished = {r["call_id"] for r in rows if r["end_at"] is not None}
    assert {c: n for c, n in ended.items()} == dict.fromkeys(finished, 1)
    assert {r["call_id"] for r in rows if r["replica"] == "doomed"} <= finished
    # No lead dialled twice at once.
    for _lead, calls in itertools.groupby(
        sorted(rows, key=lambda r: (r["lead_id"], r["dial_at"])), key=lambda r: r["lead_id"]
    ):
        for a, b in itertools.pairwise(list(calls)):
            assert a["end_at"] is not None and a["end_at"] <= b["dial_at"]


async def test_sigterm_stops_dialing_cleanly(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, env: None
) -> None:
    """SIGTERM: no new dial, calls in flight finish or are handed back (each with its call.ended, written by
    the replica itself), the lease released at once, exit status 0."""
    await seed_campaign(redis, n_leads=400, n_agents=4, dial_mode="power")
    peers = await start_peers(services, FakeDnc(set()), FakeAgents(refuse_every=1000))
    s = services.settings
    child_env = {
        **os.environ,
        "OUTDIAL_DATABASE_URL": str(s.database_url),
        "OUTDIAL_REDIS_URL": str(s.redis_url),
        "OUTDIAL_DNC_ADDR": s.dnc_addr,
        "OUTDIAL_AGENT_ADDR": s.agent_addr,
        "OUTDIAL_DEV": "1",
        "OUTDIAL_LISTEN_PORT": "0",
        "OUTDIAL_METRICS_PORT": "0",
        "OUTDIAL_INSTANCE_ID": "leaving",
        "OUTDIAL_CLOCK_OFFSET_SECONDS": str((WORKDAY - datetime.now(UTC)).total_seconds()),
        "OUTDIAL_GRACE_SECONDS": "2",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outdial.pacing", env=child_env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:

        async def dialing() -> bool:
            n = await pg.fetchval("SELECT count(*) FROM dial_attempts WHERE dial_at IS NOT NULL")
            return bool(n >= 6 and await redis.zcard(keys.calls_in_flight(CID)) > 0)

        await wait_for(dialing, timeout=60)
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await peers.stop(None)
    assert rc == 0
    assert await redis.get(keys.pacing_lease(CID)) is None
    assert await redis.zcard(keys.calls_in_flight(CID)) == 0
    assert await redis.keys(f"od:{{c:{CID}}}:claim:*") == []
    rows = await pg.fetch("SELECT * FROM dial_attempts WHERE dial_at IS NOT NULL")
    assert rows and all(r["end_at"] is not None and r["outcome"] for r in rows)
    evs = await events(redis)
    ended = Counter(e["call_id"] for e in evs if e["type"] == "call.ended")
    assert ended == Counter({r["call_id"]: 1 for r in rows})
    assert not [e for e in evs if e.get("reason") == "replica_lost"]
    # No lead lost: each was dialled, or is (back) in the hopper.
    dialled = {r["lead_id"] for r in rows}
    in_hopper = set(await redis.zrange(keys.hopper(CID), 0, -1))
    assert dialled | in_hopper == {f"lead-{i}" for i in range(400)}
