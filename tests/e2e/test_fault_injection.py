"""A day of faults, compressed: the demo's predictive campaign (four real service processes, the simulated
carrier, 20 simulated agents, a messy lead list) runs while, in turn, numbers are added to the DNC list, each
service is SIGKILLed and restarted, Redis is restarted empty, PostgreSQL crashes and restarts, and pacing is
SIGKILLed again. PostgreSQL and Redis are private servers this test owns, so it can crash them.

Everything is checked from PostgreSQL and the DNC audit log, never from the services' own counters: no DNC
dial; no lead, number or agent with two calls at once; every dial ended and has its call detail record;
every connected call was answered by a person; abandonment within the cap; no lead lost or left claimed."""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.cli.core_commands import Supervisor
from outdial.cli.demo import DemoConfig, run_demo
from outdial.cli.demo_data import generate_leads
from outdial.core import keys
from outdial.core.auth import Role
from outdial.core.clients import open_channel
from outdial.core.config import Settings
from outdial.core.infra import (
    PrivateServer,
    ensure_database,
    free_port,
    start_private_postgres,
    start_private_redis,
)
from outdial.v1 import dnc_pb2, dnc_pb2_grpc
from tests.conftest import make_token
from tests.e2e.checks import assert_no_dnc_dial_and_every_dial_audited, overlaps

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SEED = 11
LEADS = 3000
RUN_S = 120


class Faults:
    """The schedule, run from the demo's tick; each fault once, in order, and logged with its time."""

    def __init__(
        self, settings: Settings, pg: PrivateServer, rd: PrivateServer, dnc_numbers: list[str]
    ) -> None:
        self.settings = settings
        self.pg = pg
        self.rd = rd
        self.dnc_numbers = dnc_numbers
        self.done: list[tuple[float, str]] = []
        self.schedule: list[tuple[float, str, Callable[[Supervisor], Awaitable[None]]]] = [
            (6, "DNC additions", self.add_dnc),
            (12, "SIGKILL pacing", self.kill("pacing")),
            (24, "SIGKILL agent", self.kill("agent")),
            (36, "SIGKILL dnc", self.kill("dnc")),
            (46, "SIGKILL campaign", self.kill("campaign")),
            (56, "Redis restarted empty", self.restart_redis),
            (70, "PostgreSQL crash-restarted", self.crash_postgres),
            (84, "SIGKILL pacing again", self.kill("pacing")),
        ]

    async def tick(self, elapsed: float, sup: Supervisor) -> None:
        while self.schedule and elapsed >= self.schedule[0][0]:
            _, what, act = self.schedule.pop(0)
            await act(sup)
            self.done.append((elapsed, what))

    def kill(self, name: str) -> Callable[[Supervisor], Awaitable[None]]:
        async def act(sup: Supervisor) -> None:
            sup.procs[name].send_signal(signal.SIGKILL)
            await asyncio.to_thread(sup.procs[name].wait)
            sup.start_one(name)

        return act

    async def add_dnc(self, sup: Supervisor) -> None:
        token = make_token(Role.ADMIN, "compliance-1")
        ch = open_channel(self.settings, self.settings.addr("dnc"), lambda: token)
        try:
            await dnc_pb2_grpc.DncServiceStub(ch).AddNumbers(
                dnc_pb2.AddNumbersRequest(
                    numbers=self.dnc_numbers,
                    list_kind=dnc_pb2.LIST_KIND_INTERNAL,
                    reason="asked not to be called (fault test)",
                    source="test",
                ),
                timeout=10,
            )
        finally:
            await ch.close()

    async def restart_redis(self, sup: Supervisor) -> None:
        self.rd.proc.kill()  # no save, no append-only file: it comes back empty
        await asyncio.to_thread(self.rd.proc.wait)
        await asyncio.to_thread(self.rd.restart)

    async def crash_postgres(self, sup: Supervisor) -> None:
        self.pg.proc.send_signal(signal.SIGQUIT)  # immediate shutdown: crash recovery at the next start
        await asyncio.to_thread(self.pg.proc.wait)
        await asyncio.sleep(1.0)
        try:
            await asyncio.to_thread(self.pg.restart)
        except RuntimeError as exc:
            log = (self.pg.directory / "postgres.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"PostgreSQL did not come back: {exc}\n{log}") from exc


async def test_a_day_of_faults(tmp_path: Path) -> None:
    pg = await asyncio.to_thread(lambda: start_private_postgres(durable=True))
    rd = await asyncio.to_thread(start_private_redis)
    try:
        database_url = await ensure_database(pg.url, "outdial")
        # Ports of its own, so that it can run beside another demo or end-to-end run on this machine.
        addrs = {
            f"{name}_addr": f"127.0.0.1:{free_port()}" for name in ("campaign", "pacing", "dnc", "agent")
        }
        settings = Settings(
            database_url=database_url,
            redis_url=rd.url,
            dev=True,
            grace_seconds=3,
            health_interval_seconds=0.5,
            **addrs,
        )
        numbers = generate_leads(LEADS, seed=SEED).numbers
        faults = Faults(settings, pg, rd, numbers[7::97])
        cfg = DemoConfig(
            seconds=RUN_S,
            agents=20,
            leads=LEADS,
            seed=SEED,
            live=False,
            log_path=str(tmp_path / "services.log"),
            on_tick=faults.tick,
            extra_env={
                "OUTDIAL_RECONCILE_AFTER_S": "5",
                "OUTDIAL_RECONCILE_INTERVAL_S": "2",
                **{f"OUTDIAL_{k.upper()}": v for k, v in addrs.items()},
            },
        )
        result = await run_demo(settings, cfg)
        assert [w for _, w in faults.done] == [
            "DNC additions",
            "SIGKILL pacing",
            "SIGKILL agent",
            "SIGKILL dnc",
            "SIGKILL campaign",
            "Redis restarted empty",
            "PostgreSQL crash-restarted",
            "SIGKILL pacing again",
        ], faults.done
        assert result.audit_ok, result.audit_problem
        await _check(database_url, rd.url, result.campaign_id, result.upload["accepted"], faults)
    finally:
        await asyncio.to_thread(rd.stop)
        await asyncio.to_thread(pg.stop)


async def _check(database_url: str, redis_url: str, cid: str, accepted: int, faults: Faults) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        dials = await conn.fetch(
            """SELECT call_id, lead_id, number, dial_at, answer, answer_at, connect_at, end_at, outcome, agent_id
                 FROM dial_attempts WHERE campaign_id = $1 AND dial_at IS NOT NULL""",
            cid,
        )
        assert len(dials) > 100, (
            f"only {len(dials)} calls placed; dial_attempts by campaign: "
            f"{await conn.fetch('SELECT campaign_id, count(*), count(dial_at) FROM dial_attempts GROUP BY 1')}"
        )

        await assert_no_dnc_dial_and_every_dial_audited(conn, cid, dials)

        # Every dial ended, with a complete call detail record (rebuilt from PostgreSQL when Redis lost it).
        assert not [d["call_id"] for d in dials if d["end_at"] is None], "calls never ended"
        missing = -1
        for _ in range(60):
            missing = await conn.fetchval(
                """SELECT count(*) FROM dial_attempts d LEFT JOIN call_records c ON c.call_id = d.call_id
                    WHERE d.campaign_id = $1 AND d.dial_at IS NOT NULL AND (c.call_id IS NULL OR c.end_at IS NULL)""",
                cid,
            )
            if missing == 0:
                break
            await asyncio.sleep(0.5)
        assert missing == 0, f"{missing} dialled calls have no complete call detail record"

        # No lead, number or agent with two calls at once.
        for key in ("lead_id", "number"):
            spans: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
            for d in dials:
                spans[d[key]].append((d["dial_at"], d["end_at"]))
            assert not [k for k, iv in spans.items() if overlaps(iv)], f"a {key} had two calls at once"
        per_agent: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
        for d in dials:
            if d["outcome"] == "connected":
                per_agent[d["agent_id"]].append((d["connect_at"], d["end_at"]))
        assert not [a for a, iv in per_agent.items() if overlaps(iv)], "an agent held two calls at once"

        # Every connected call was answered by a person, with its time.
        bad = [
            d for d in dials if d["outcome"] == "connected" and (d["answer"] != "human" or not d["answer_at"])
        ]
        assert not bad, f"connected calls without a human answer: {bad[:3]}"

        # No lead lost, none left claimed.
        assert await conn.fetchval("SELECT count(*) FROM leads WHERE campaign_id = $1", cid) == accepted
        r = aioredis.from_url(redis_url, decode_responses=True)
        try:
            claims = [k async for k in r.scan_iter(match=keys.lead_claim(cid, "*"))]
            raw: Any = await r.xrange(keys.call_events(), "-", "+")
            events: dict[str, Any] = {
                f["call_id"]: f
                for _id, f in raw
                if f.get("type") == "call.abandoned" and f.get("campaign_id") == cid
            }
        finally:
            await r.aclose()
        # Abandonment within the cap over the campaign's whole history.
        live = [d for d in dials if d["answer"] == "human"]
        abandoned = [d for d in live if d["outcome"] == "abandoned"]
        t0 = min(d["dial_at"] for d in dials)
        per10 = [0] * (RUN_S // 10 + 2)
        for d in live:
            per10[min(len(per10) - 1, int((d["answer_at"] - t0).total_seconds() // 10))] += 1
        print(f"live answers per 10 s: {per10}")
        print(
            f"abandoned: {[(d['answer_at'].time(), events.get(d['call_id'], {}).get('reason')) for d in abandoned]}"
        )
        assert all(d["outcome"] in ("connected", "abandoned") for d in live)
        assert len(abandoned) <= 0.03 * len(live), (
            f"{len(abandoned)} abandoned of {len(live)} live answers; faults: {faults.done}; abandoned: "
            f"{[(d['answer_at'].time(), events.get(d['call_id'], {}).get('reason')) for d in abandoned]}"
        )

        assert not claims, f"leads still claimed after the campaign stopped: {claims[:3]}"
        print(
            f"fault day: {len(dials)} dials, {len(live)} live answers, {len(abandoned)} abandoned "
            f"({len(abandoned) / max(1, len(live)):.2%}), faults at {[round(t) for t, _ in faults.done]} s"
        )
        # Every abandoned call heard the message, unless its replica died first (closed from its record).
        # (Events of calls ended before Redis lost its data are gone: those are not checked here.)
        unheard = [
            c
            for c, f in events.items()
            if f.get("message_played") != "1" and f.get("reason") != "replica_lost"
        ]
        assert not unheard, f"abandoned calls that did not play the message: {unheard[:3]}"
    finally:
        await conn.close()
