"""`outdial demo --telephony sip`, shorter: the demo campaign over real SIP on loopback (the five processes,
rtpengine, SIPp as the carrier and as the agents' phones). Checked from PostgreSQL: every dial ended with a
complete record, no DNC-listed number dialled, every dial audited, no agent with two calls at once, and every
SIP dialog ended (no rtpengine session left) before the processes were stopped."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import asyncpg
import pytest

from outdial.cli.demo import DemoConfig, run_demo
from outdial.core.config import Settings
from tests.e2e.checks import assert_no_dnc_dial_and_every_dial_audited, overlaps
from tests.integration.siprig import require_sip

require_sip()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


async def test_demo_over_sip(database_url: str, redis_url: str) -> None:
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        dev=True,
        grace_seconds=5,
        health_interval_seconds=0.5,
    )
    cfg = DemoConfig(seconds=45, agents=8, leads=400, telephony="sip", live=False, to_stderr=True)
    result = await run_demo(settings, cfg)
    assert result.calls_placed > 10 and result.connected > 0, result.as_dict()
    assert result.sip_leftover_sessions == 0
    assert result.ok, result.as_dict()
    conn = await asyncpg.connect(result.database_url)
    try:
        dials = await conn.fetch(
            """SELECT call_id, number, dial_at, end_at, outcome, agent_id, connect_at, answer, answer_at
                 FROM dial_attempts WHERE campaign_id = $1 AND dial_at IS NOT NULL""",
            result.campaign_id,
        )
        await assert_no_dnc_dial_and_every_dial_audited(conn, result.campaign_id, dials)
        assert all(d["end_at"] is not None for d in dials), "a call never ended"
        per_agent: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
        for d in dials:
            if d["outcome"] == "connected":
                per_agent[d["agent_id"]].append((d["connect_at"], d["end_at"]))
                assert d["answer"] == "human" and (d["connect_at"] - d["answer_at"]).total_seconds() < 2.0
        assert not [a for a, iv in per_agent.items() if overlaps(iv)], "an agent held two calls at once"
    finally:
        await conn.close()
