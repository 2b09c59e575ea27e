"""Capacity loss: the agents vanish while about twenty lines ring. The dialer launches nothing more, lets no
ringing call go before it has rung the legal minimum, then releases (CANCEL) the ones no agent can take; the
abandoned calls are only those answered in between, bounded by the lines that were ringing, and reported."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.core import keys
from outdial.rules.law import MIN_RING_S
from outdial.v1 import agent_pb2
from tests.conftest import Services
from tests.integration.test_pacing_dialer import (
    CID,
    FakeAgents,
    FakeDnc,
    events,
    seed_campaign,
    start_peers,
    wait_for,
    workday_clock,
)

pytestmark = pytest.mark.timeout(120)


class VanishingAgents(FakeAgents):
    """Takes every offer until the agents are gone, then none."""

    def __init__(self) -> None:
        super().__init__(refuse_every=10**9)
        self.gone = False

    async def OfferCall(self, request: Any, context: Any) -> agent_pb2.OfferCallResponse:
        if self.gone:
            return agent_pb2.OfferCallResponse(assigned=False, reason="no_agent_ready")
        return await super().OfferCall(request, context)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Real time on the carrier: the 15 s ring minimum is measured on the wall clock.
    monkeypatch.setenv("OUTDIAL_DNC_REQUIRE_REGISTRY", "false")
    monkeypatch.setenv("OUTDIAL_PACING_TICK_MS", "100")
    monkeypatch.setenv("OUTDIAL_SIM_TIME_SCALE", "1")
    monkeypatch.setenv("OUTDIAL_SIM_P_LIVE", "0.3")
    monkeypatch.setenv("OUTDIAL_SIM_ANSWER_DELAY_MEAN_S", "14")


async def test_agents_vanish_with_lines_ringing(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, env: None
) -> None:
    # A no-fallback algorithm, so the lines are not agent-reserved: 14 ready agents, 1.5 lines each.
    await seed_campaign(redis, n_leads=200, n_agents=14, dial_mode="cisco_correction", ring_timeout_s=60)
    agents = VanishingAgents()
    peers = await start_peers(services, FakeDnc(set()), agents)
    try:
        clock = workday_clock()
        await services.start("pacing", clock=clock, instance_id="r1")

        async def dialled() -> int:
            return int(
                await pg.fetchval(
                    "SELECT count(*) FROM dial_attempts WHERE campaign_id = $1 AND dial_at IS NOT NULL", CID
                )
            )

        await wait_for(lambda: _ge(dialled, 18), timeout=30)
        # The agents vanish: logged out of the campaign's pacing view, offers refused.
        await redis.delete(keys.campaign_agents(CID))
        agents.gone = True
        vanished_at = clock.now()
        ringing_then = int(
            await pg.fetchval(
                "SELECT count(*) FROM dial_attempts WHERE campaign_id = $1 AND dial_at IS NOT NULL"
                " AND answer_at IS NULL AND end_at IS NULL",
                CID,
            )
        )

        async def all_ended() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM dial_attempts WHERE campaign_id = $1 AND dial_at IS NOT NULL"
                " AND end_at IS NULL",
                CID,
            )
            return n == 0

        await wait_for(all_ended, timeout=60, every=0.3)
        rows = await pg.fetch(
            "SELECT call_id, dial_at, answer, outcome FROM dial_attempts WHERE campaign_id = $1"
            " AND dial_at IS NOT NULL",
            CID,
        )
        # Nothing launched after the agents were gone (a tick already under way may finish its launch).
        late = [r for r in rows if (r["dial_at"] - vanished_at).total_seconds() > 0.5]
        assert not late, f"{len(late)} calls launched after the agents vanished"

        evs = await events(redis)
        dial_at = {r["call_id"]: r["dial_at"] for r in rows}
        released = [
            e for e in evs if e["type"] == "call.no_answer" and e.get("reason") == "released_no_agent"
        ]
        assert released, "no ringing call was released"
        for e in released:
            rang = (
                datetime.fromtimestamp(int(e["at"]) / 1000, dial_at[e["call_id"]].tzinfo)
                - dial_at[e["call_id"]]
            )
            assert rang.total_seconds() >= MIN_RING_S - 0.01, f"released after {rang}"
        abandoned = [r for r in rows if r["outcome"] == "abandoned"]
        assert all(r["answer"] == "human" for r in abandoned)
        assert len(abandoned) <= ringing_then
        assert len(abandoned) + len(released) <= ringing_then
        # ... and reported: the published pacing state counts the released lines.
        state = json.loads(await redis.get(keys.pacing_state(CID)) or "{}")
        assert state.get("calls_released", 0) == len(released)
        assert state.get("lines_in_flight") == 0
    finally:
        await peers.stop(None)


async def _ge(fn: Any, n: int) -> bool:
    return bool(await fn() >= n)
