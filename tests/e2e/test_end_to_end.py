"""The whole system end to end: the demo flow (four real service processes, simulated carrier, simulated
agents, a messy lead list, DNC lists), shorter, with an injected clock that crosses calling-window edges,
and the pacing service killed and restarted mid-campaign. Every assertion reads PostgreSQL, the DNC audit
log or the event stream, never the services' own counters."""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.cli.core_commands import Supervisor
from outdial.cli.demo import DemoConfig, DemoResult, run_demo
from outdial.core import keys
from outdial.core.config import Settings
from outdial.rules.windows import WindowSpec, check_window, legal_window
from tests.e2e.checks import assert_no_dnc_dial_and_every_dial_audited, overlaps

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _offset_to(utc_h: int, utc_m: int, utc_s: int) -> tuple[float, datetime]:
    """Clock offset that makes the services' "now" read utc_h:utc_m:utc_s today, and that instant."""
    now = datetime.now(UTC)
    target = now.replace(hour=utc_h, minute=utc_m, second=utc_s, microsecond=0)
    return (target - now).total_seconds(), target


def _settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        dev=True,
        grace_seconds=3,
        health_interval_seconds=0.5,
    )


async def _check_invariants(result: DemoResult, redis_url: str) -> dict[str, Any]:
    """Everything the compliance officer would check, from the records. Returns figures for messages."""
    cid = result.campaign_id
    conn = await asyncpg.connect(result.database_url)
    try:
        dials = await conn.fetch(
            """SELECT d.call_id, d.lead_id, d.number, d.dial_at, d.end_at, d.answer, d.outcome, d.agent_id,
                      d.connect_at, l.state, n.timezones
                 FROM dial_attempts d
                 JOIN leads l ON l.id = d.lead_id::bigint
                 JOIN lead_numbers n ON n.campaign_id = d.campaign_id AND n.e164 = d.number
                WHERE d.campaign_id = $1 AND d.dial_at IS NOT NULL""",
            cid,
        )
        assert dials, "no call was placed"

        # 1. No number on any DNC list was dialled, and every dial has an allowing audit record before it.
        await assert_no_dnc_dial_and_every_dial_audited(conn, cid, dials)

        # 2. No call started outside the lead's local calling window (the law of its state, every zone).
        for d in dials:
            spec = legal_window("US", d["state"] or None, WindowSpec())
            decision = check_window(
                d["dial_at"], list(d["timezones"]), spec, jurisdiction="US", state=d["state"] or None
            )
            assert decision.allowed, (
                f"call {d['call_id']} at {d['dial_at']} to {d['timezones']}: {decision.reason}"
            )

        # 3. Abandonment within the cap; every abandoned call played the message.
        live = [d for d in dials if d["answer"] == "human"]
        abandoned = [d for d in live if d["outcome"] == "abandoned"]
        assert len(abandoned) <= 0.03 * len(live), f"{len(abandoned)} abandoned of {len(live)} live answers"
        r = aioredis.from_url(redis_url, decode_responses=True)
        try:
            played = set()
            for _id, f in await r.xrange(keys.call_events(), "-", "+"):
                if (
                    f.get("type") == "call.abandoned"
                    and f.get("campaign_id") == cid
                    and f.get("message_played") == "1"
                ):
                    played.add(f["call_id"])
            claims = [k async for k in r.scan_iter(match=keys.lead_claim(cid, "*"))]
        finally:
            await r.aclose()
        assert {d["call_id"] for d in abandoned} <= played, "an abandoned call did not play the message"

        # 4. Every live answer connected to exactly one agent or abandoned; no agent held two calls at once.
        for d in live:
            assert d["outcome"] in ("connected", "abandoned"), (
                f"live answer {d['call_id']} ended {d['outcome']}"
            )
            if d["outcome"] == "connected":
                assert d["agent_id"], f"connected call {d['call_id']} has no agent"
        per_agent: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
        for d in live:
            if d["outcome"] == "connected":
                per_agent[d["agent_id"]].append((d["connect_at"], d["end_at"]))
        assert not [a for a, iv in per_agent.items() if overlaps(iv)], "an agent held two calls at once"

        # 5. Every attempt is a call detail record; no lead was dialled twice at the same time.
        for _ in range(40):
            missing = await conn.fetchval(
                """SELECT count(*) FROM dial_attempts d LEFT JOIN call_records c ON c.call_id = d.call_id
                    WHERE d.campaign_id = $1 AND d.dial_at IS NOT NULL
                      AND (c.call_id IS NULL OR c.end_at IS NULL)""",
                cid,
            )
            if missing == 0:
                break
            await asyncio.sleep(0.5)
        assert missing == 0, f"{missing} dialled calls have no complete call detail record"
        per_lead: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
        for d in dials:
            assert d["end_at"] is not None, f"call {d['call_id']} never ended"
            per_lead[d["lead_id"]].append((d["dial_at"], d["end_at"]))
        assert not [lead for lead, iv in per_lead.items() if overlaps(iv)], "a lead was dialled twice at once"

        # 6. No lead lost: every accepted lead is still there, none left claimed.
        leads = await conn.fetchval("SELECT count(*) FROM leads WHERE campaign_id = $1", cid)
        assert leads == result.upload["accepted"]
        assert not claims, f"leads still claimed after the campaign stopped: {claims[:3]}"
        return {
            "dials": len(dials),
            "live": len(live),
            "abandoned": len(abandoned),
            "zones": sorted({z for d in dials for z in d["timezones"]}),
        }
    finally:
        await conn.close()


async def test_window_closing_edge_and_pacing_restart(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Virtual time starts at 01:59:35 UTC: New York's 21:00 closes 25 s in while Chicago, Denver, Los
    Angeles, Anchorage and Honolulu stay open. No feeder margin, so New York leads sit in the hopper when
    the window closes: the dial-time gate must stop them. Pacing is SIGKILLed 12 s in and restarted."""
    killed: dict[str, bool] = {}

    async def kill_pacing(elapsed: float, sup: Supervisor) -> None:
        if elapsed >= 12 and not killed:
            killed["done"] = True
            sup.procs["pacing"].send_signal(signal.SIGKILL)
            await asyncio.to_thread(sup.procs["pacing"].wait)
            sup.start_one("pacing")

    offset, start = _offset_to(1, 59, 35)
    cfg = DemoConfig(
        seconds=40,
        agents=10,
        leads=1400,
        seed=3,
        clock_offset_s=offset,
        window_margin_s=0,
        log_path=str(tmp_path / "services.log"),
        live=False,
        on_tick=kill_pacing,
    )
    result = await run_demo(_settings(database_url, redis_url), cfg)
    assert killed, "pacing was never killed"
    assert result.audit_ok, result.audit_problem
    figures = await _check_invariants(result, redis_url)
    conn = await asyncpg.connect(database_url)
    try:
        edge = start.replace(hour=2, minute=0, second=0)
        late_ny = await conn.fetchval(
            """SELECT count(*) FROM dial_attempts d JOIN lead_numbers n ON n.e164 = d.number
                WHERE d.dial_at >= $1 AND 'America/New_York' = ANY(n.timezones)""",
            edge,
        )
        after_restart = await conn.fetchval(
            "SELECT count(DISTINCT replica) FROM dial_attempts WHERE campaign_id = $1", result.campaign_id
        )
    finally:
        await conn.close()
    assert late_ny == 0
    assert after_restart >= 2, "the restarted pacing service never dialled"
    assert "America/Chicago" in figures["zones"]


async def test_window_opening_edge(database_url: str, redis_url: str, tmp_path: Path) -> None:
    """Virtual time starts at 12:59:45 UTC: only New York's window opens (08:00 EST at 13:00 UTC), every
    zone west of it is still closed for the whole run. Calls must go to New York leads only, after 13:00."""
    offset, start = _offset_to(12, 59, 45)
    cfg = DemoConfig(
        seconds=30,
        agents=8,
        leads=1400,
        seed=5,
        clock_offset_s=offset,
        live=False,
        log_path=str(tmp_path / "services.log"),
    )
    result = await run_demo(_settings(database_url, redis_url), cfg)
    assert result.audit_ok, result.audit_problem
    figures = await _check_invariants(result, redis_url)
    assert figures["zones"] == ["America/New_York"], figures["zones"]
    conn = await asyncpg.connect(database_url)
    try:
        first = await conn.fetchval(
            "SELECT min(dial_at) FROM dial_attempts WHERE campaign_id = $1 AND dial_at IS NOT NULL",
            result.campaign_id,
        )
    finally:
        await conn.close()
    assert first >= start.replace(hour=13, minute=0, second=0)
