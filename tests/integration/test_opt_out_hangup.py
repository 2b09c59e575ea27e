"""The opt-out key on the abandonment message, through the real pacing service and the simulated carrier:
the number is recorded, a short confirmation replaces the message, and we hang up when it ends (issue 13,
point 6). Timed in the carrier's call-event timestamps, converted to simulated seconds."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.core import keys
from tests.conftest import Services
from tests.integration.test_pacing_dialer import (
    CID,
    FakeAgents,
    FakeDnc,
    events,
    fast_sim_env,
    seed_campaign,
    start_peers,
    wait_for,
    workday_clock,
)

pytestmark = [pytest.mark.timeout(60)]

SCALE = 20.0
MESSAGE_S = 80.0  # the message's full length (simulated)
CONFIRMATION_S = 4.0
KEY_AT_S = MESSAGE_S * 0.6  # the simulated person presses the key 60 % into the message


async def test_the_opt_out_key_is_recorded_confirmed_and_hung_up_long_before_the_message_ends(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_sim_env(
        monkeypatch,
        OUTDIAL_SIM_TIME_SCALE=str(SCALE),
        OUTDIAL_SIM_P_LIVE="1.0",
        OUTDIAL_SIM_P_MACHINE="0",
        OUTDIAL_SIM_P_BUSY="0",
        OUTDIAL_SIM_P_FAILED="0",
        OUTDIAL_SIM_P_OPT_OUT="1.0",
        OUTDIAL_SIM_ANSWER_DELAY_MEAN_S="4",
        OUTDIAL_SIM_MESSAGE_S=str(MESSAGE_S),
        OUTDIAL_SIM_CONFIRMATION_S=str(CONFIRMATION_S),
    )
    numbers = await seed_campaign(redis, n_leads=2, n_agents=2)
    dnc, agents = FakeDnc(set()), FakeAgents(refuse_every=1)  # no agent ever: every answer is abandoned
    peers = await start_peers(services, dnc, agents)
    try:
        await services.start("pacing", clock=workday_clock(), instance_id="r1")

        async def ended() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM dial_attempts WHERE campaign_id = $1 AND end_at IS NOT NULL", CID
            )
            return bool(n == len(numbers))

        await wait_for(ended, timeout=40)
    finally:
        await peers.stop(None)

    rows = await pg.fetch("SELECT * FROM dial_attempts WHERE campaign_id = $1", CID)
    assert {r["number"] for r in rows} == set(numbers)
    # Recorded as today: on the DNC service's list, and on the call's record and event.
    assert sorted(dnc.opt_outs) == sorted(numbers)
    abandoned = {e["call_id"]: e for e in await events(redis) if e["type"] == "call.abandoned"}
    for r in rows:
        assert r["outcome"] == "abandoned" and r["opt_out"], dict(r)
        assert abandoned[r["call_id"]]["message_played"] == "1" and abandoned[r["call_id"]]["opt_out"] == "1"
        heard_s = (r["end_at"] - r["answer_at"]).total_seconds() * SCALE
        # The key, then the whole confirmation (the call did not end at the key press) ...
        assert heard_s >= KEY_AT_S + CONFIRMATION_S - 1.0, heard_s
        # ... and the hang-up right after it: never the rest of the message.
        assert heard_s < MESSAGE_S, heard_s
    assert await redis.zcard(keys.calls_in_flight(CID)) == 0
