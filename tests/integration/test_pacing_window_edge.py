"""A call never leaves after its calling window closed, even when the window closes between the dial-time
gate's decision and the dial (the DNC check, the records and the agent hold take time): the dialer asks the
window again at the dial instant. Found by the adversarial compliance day (tests/e2e/test_compliance_day.py),
where a lead gated a moment before 10:00 in New York was dialled 0.46 s after it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.core import keys
from outdial.core.clock import OffsetClock
from outdial.v1 import dnc_pb2
from tests.conftest import Services
from tests.integration.test_pacing_dialer import (
    CID,
    FakeAgents,
    FakeDnc,
    seed_campaign,
    start_peers,
    wait_for,
)

#: 20:00 in New York on a Wednesday: the end of the campaign window of ``campaign_config``.
EDGE = datetime(2026, 11, 18, 20, 0, tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)


class SlowDnc(FakeDnc):
    """Answers a dial-time check only once the window has closed (a slow DNC check at the edge)."""

    def __init__(self, clock: OffsetClock) -> None:
        super().__init__(set())
        self.clock = clock

    async def CheckNumbers(self, request: Any, context: Any) -> dnc_pb2.CheckNumbersResponse:
        if request.dial_time:
            wait = (EDGE + timedelta(seconds=0.2) - self.clock.now()).total_seconds()
            await asyncio.sleep(max(0.0, wait))
        return await super().CheckNumbers(request, context)


async def test_the_window_closing_between_gate_and_dial_stops_the_call(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTDIAL_PACING_TICK_MS", "100")
    monkeypatch.setenv("OUTDIAL_SIM_TIME_SCALE", "40")
    clock = OffsetClock(EDGE - timedelta(seconds=8) - datetime.now(UTC))
    dnc = SlowDnc(clock)
    peers = await start_peers(services, dnc, FakeAgents(refuse_every=1000))
    try:
        await services.start("pacing", clock=clock, instance_id="r1")
        # The leads appear 1.5 s before the edge: the gate passes them, the DNC answers 0.2 s after it (inside
        # the gate's 2 s timeout).
        await asyncio.sleep((EDGE - timedelta(seconds=1.5) - clock.now()).total_seconds())
        await seed_campaign(redis, n_leads=3, n_agents=3)

        async def settled() -> bool:
            """A lead gated again after the edge (the first ones were handed back), or a call left."""
            rows = await pg.fetch("SELECT gate_at, dial_at FROM dial_attempts WHERE campaign_id = $1", CID)
            return any(r["gate_at"] >= EDGE or r["dial_at"] is not None for r in rows)

        await wait_for(settled, timeout=30)
    finally:
        await peers.stop(None)
    rows = await pg.fetch("SELECT * FROM dial_attempts WHERE campaign_id = $1 ORDER BY gate_at", CID)
    # The gate let the first calls through before the edge (their dial-time DNC checks ran)...
    passed = [r for r in rows if r["allowed"] and r["gate_at"] < EDGE]
    assert passed and {r["call_id"] for r in passed} <= {c for _n, c, dial_time in dnc.checked if dial_time}
    # ...but none of them left: the window had closed by the dial instant. Later passes are blocked outright.
    assert [r["dial_at"] for r in rows if r["dial_at"] is not None] == []
    assert all(
        not r["allowed"] and "window.outside_hours" in r["reasons"] for r in rows if r["gate_at"] >= EDGE
    )
    assert not [f for _id, f in await redis.xrange(keys.call_events()) if f.get("type") == "call.dialing"]
