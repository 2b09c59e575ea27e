"""The dialer's dial-time gate on real Redis: each rule blocks with its reason, and the DNC check fails
closed (no answer = blocked)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import redis.asyncio as aioredis

from outdial.core import keys
from outdial.pacing.gate import DialGate, GateLead
from outdial.pacing.store import PacingStore
from outdial.v1 import dnc_pb2, dnc_pb2_grpc
from tests.integration.test_pacing_dialer import FakeDnc, campaign_config

NOON_NY = datetime(2026, 11, 18, 17, 0, tzinfo=UTC)  # Wednesday 12:00 in New York
NIGHT_NY = datetime(2026, 11, 19, 3, 0, tzinfo=UTC)  # Wednesday 22:00 in New York


def lead(
    i: int, number: str = "", state: str = "", zones: tuple[str, ...] = ("America/New_York",)
) -> GateLead:
    return GateLead(f"call-{i}", f"lead-{i}", number or f"+1212234{i:04d}", zones, state, 1)


async def serve(dnc: FakeDnc) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    dnc_pb2_grpc.add_DncServiceServicer_to_server(dnc, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def test_each_rule_blocks_with_its_reason(redis: aioredis.Redis, pg: asyncpg.Pool) -> None:
    dnc = FakeDnc({"+12122340003"})
    server, ch = await serve(dnc)
    try:
        gate = DialGate(redis, dnc_pb2_grpc.DncServiceStub(ch), PacingStore(pg, redis))
        cfg: dict[str, Any] = campaign_config(max_calls_per_number_24h=2)
        # Two earlier calls to lead 1's number within 24 h; one 25 h ago to lead 2's (outside the window).
        now_ms = int(NOON_NY.timestamp() * 1000)
        await redis.zadd(
            keys.number_attempts("+12122340001"), {"a": now_ms - 3_600_000, "b": now_ms - 60_000}
        )
        await redis.zadd(keys.number_attempts("+12122340002"), {"c": now_ms - 25 * 3_600_000})
        leads = [
            lead(0),
            lead(1),
            lead(2),
            lead(3),
            # A zone nobody knows (the number's own zones are added to the stored ones): fail closed.
            lead(4, zones=("Mars/Olympus_Mons",)),
            lead(5, zones=("America/Los_Angeles",)),
        ]
        res = await gate.check("camp-1", cfg, leads, NOON_NY)
        assert [r.allowed for r in res] == [True, False, True, False, False, True]
        assert res[1].reasons == ["cap.max_calls_24h"]
        assert res[3].reasons == ["dnc.internal"]
        assert res[4].reasons[0].startswith("window.")
        # Every number was sent at dial time with its call id, the locally blocked ones too (their decision
        # and its inputs go to the audit record), and each with the dialer's own decision.
        assert [(n, c) for n, c, dt in dnc.checked if dt] == [(ld.number, ld.call_id) for ld in leads]
        assert [tuple(d.blocked) for d in dnc.dialer] == [
            (),
            ("cap.max_calls_24h",),
            (),
            (),
            (res[4].reasons[0],),
            (),
        ]
        cap_in = json.loads(dnc.dialer[1].inputs_json)["cap"]
        assert (cap_in["number_attempts_in_period"], cap_in["campaign_max"]) == (2, 2)
        # New York has no cap of its own: the person's count is recorded, the law's cap is none
        assert (cap_in["attempts_in_period"], cap_in["law_max"], cap_in["person_numbers"]) == (
            2,
            None,
            [leads[1].number],
        )

        night = await gate.check("camp-1", cfg, [lead(0)], NIGHT_NY)
        assert not night[0].allowed and night[0].reasons[0].startswith("window.")
        paused = await gate.check("camp-1", {**cfg, "state": "paused"}, [lead(0)], NOON_NY)
        assert paused[0].reasons == ["campaign.not_active"]
        no_cli = await gate.check("camp-1", {**cfg, "caller_id": ""}, [lead(0)], NOON_NY)
        assert no_cli[0].reasons == ["caller_id.missing"]

        # UK: no call within 72 h of an abandoned call to the number.
        uk = {**cfg, "jurisdiction": "UK"}
        uk_lead = GateLead("call-uk", "lead-uk", "+442079460123", ("Europe/London",), "", 1)
        assert (await gate.check("camp-1", uk, [uk_lead], NOON_NY))[0].allowed
        await redis.set(
            keys.number_abandoned(uk_lead.number), int((NOON_NY - timedelta(hours=10)).timestamp() * 1000)
        )
        uk_res = await gate.check("camp-1", uk, [uk_lead], NOON_NY)
        assert not uk_res[0].allowed and uk_res[0].reasons == ["cap.uk_abandon_72h"]
    finally:
        await ch.close()
        await server.stop(None)


async def test_dnc_unreachable_blocks_everything(redis: aioredis.Redis, pg: asyncpg.Pool) -> None:
    server, ch = await serve(FakeDnc(set()))
    await server.stop(None)  # nothing answers any more
    try:
        gate = DialGate(redis, dnc_pb2_grpc.DncServiceStub(ch), PacingStore(pg, redis), dnc_timeout_s=1.0)
        res = await gate.check("camp-1", campaign_config(), [lead(0), lead(1)], NOON_NY)
        assert all(not r.allowed and r.reasons == ["compliance.unavailable"] for r in res)
    finally:
        await ch.close()


class WrongCountDnc(dnc_pb2_grpc.DncServiceServicer):
    async def CheckNumbers(self, request: Any, context: Any) -> dnc_pb2.CheckNumbersResponse:
        return dnc_pb2.CheckNumbersResponse(
            decisions=[dnc_pb2.NumberDecision(number=request.numbers[0], allowed=True)]
        )


async def test_a_short_dnc_answer_blocks(redis: aioredis.Redis, pg: asyncpg.Pool) -> None:
    server = grpc.aio.server()
    dnc_pb2_grpc.add_DncServiceServicer_to_server(WrongCountDnc(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        gate = DialGate(redis, dnc_pb2_grpc.DncServiceStub(ch), PacingStore(pg, redis))
        res = await gate.check("camp-1", campaign_config(), [lead(0), lead(1)], NOON_NY)
        assert all(not r.allowed and r.reasons == ["compliance.unavailable"] for r in res)
    finally:
        await ch.close()
        await server.stop(None)
