"""The dialer over real SIP: the dnc, agent and pacing services (pacing with ``OUTDIAL_TELEPHONY=sip``) drive
the gateway, which calls SIPp (the carrier) through rtpengine; agents log in with a SIPp phone. Checked
from PostgreSQL, the DNC service and the SIP peers themselves."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from outdial.agent.simulated import Distribution, SimulatedAgent
from outdial.core import keys
from outdial.gateway.peers.sipp import SippUas
from outdial.gateway.prompts import PromptCache
from outdial.rules import law
from outdial.rules.message import opt_out_confirmation
from outdial.v1 import dnc_pb2, dnc_pb2_grpc
from outdial.v1 import gateway_pb2 as pb
from tests.conftest import Services, make_token
from tests.integration.siprig import Rig, free_port, free_tcp_udp_port, gateway_rig, require_sip
from tests.integration.test_pacing_dialer import CID, campaign_config, fast_sim_env, seed_hopper, wait_for
from tests.integration.test_pacing_modes import CLOCK, Running, all_ended, sim_agent

require_sip()
pytestmark = [pytest.mark.timeout(180)]


def sip_env(monkeypatch: pytest.MonkeyPatch, services: Services, rig: Rig) -> None:
    fast_sim_env(monkeypatch)
    monkeypatch.setenv("OUTDIAL_TELEPHONY", "sip")
    services.settings = services.settings.model_copy(update={"gateway_addr": rig.settings.gateway_listen})


async def start_sip_pacing(services: Services, redis: aioredis.Redis) -> None:
    await services.start("pacing", clock=CLOCK, instance_id="p1")
    await redis.sadd(keys.active_campaigns(), CID)


async def _leftover(rig: Rig) -> list[str]:
    from outdial.gateway.rtpengine import RtpEngine

    eng = RtpEngine("127.0.0.1", rig.rtp.ng_port, 1.0)
    try:
        return await eng.list_calls()
    finally:
        eng.close()


async def test_agentless_message_over_sip_and_the_opt_out_key_lists_the_number(
    services: Services,
    redis: aioredis.Redis,
    pg: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    async with gateway_rig(tmp_path) as rig:
        sip_env(monkeypatch, services, rig)
        carrier = SippUas(
            "opt_out.xml",
            port=rig.trunk_port(),
            media_port=free_port(),
            digit="9",
            keys={"dtmf_after_ms": "2500"},
            calls=1,
            trace_dir=tmp_path / "carrier",
        )
        carrier.start()
        try:
            cfg = campaign_config(
                dial_mode="agentless",
                agentless_message="Your prescription is ready for pickup at the Main Street pharmacy.",
                message_informational=True,
                agentless_lines=2,
            )
            await redis.hset(keys.campaign_config(CID), "json", json.dumps(cfg))
            number = "+12122340177"
            await seed_hopper(redis, [number], state="NY")
            dnc = await services.start("dnc", clock=CLOCK)
            await services.start("agent", clock=CLOCK)
            await start_sip_pacing(services, redis)
            await wait_for(lambda: all_ended(pg, 1), timeout=90)

            row = await pg.fetchrow("SELECT * FROM dial_attempts WHERE campaign_id = $1", CID)
            assert row is not None
            assert row["outcome"] == "delivered" and row["opt_out"], dict(row)
            # The key (2.5 s in), the short confirmation, our BYE: the call ends before the message would
            # have (its length as the gateway renders it), in the gateway's call-event timestamps.
            cache = PromptCache(tmp_path / "measure")
            try:
                full = await cache.render(
                    law.agentless_message(cfg["agentless_message"], cfg["seller_name"], cfg["opt_out_number"])
                )
                confirmation = await cache.render(opt_out_confirmation("US"))
            finally:
                await cache.aclose()
            heard_ms = (row["end_at"] - row["answer_at"]).total_seconds() * 1000
            assert heard_ms >= 2500 + confirmation.duration_ms * 0.9, (heard_ms, confirmation.duration_ms)
            assert heard_ms < full.duration_ms, (heard_ms, full.duration_ms)
            check = await dnc_pb2_grpc.DncServiceStub(
                services.channel(dnc, role="service", sub="svc:pacing")
            ).CheckNumbers(dnc_pb2.CheckNumbersRequest(numbers=[number], campaign_id=CID))
            assert any(b.code == "dnc.internal" for b in check.decisions[0].reasons)
            # On the wire: the caller ID we sent, the key pressed, and our BYE right after it.
            assert carrier.wait(20) == 0
            msgs = carrier.messages()
            invite = next(m for m in msgs if m.direction == "in" and m.first_line.startswith("INVITE"))
            assert "+12125550100" in (invite.header("From") or "")
            assert "+12125550100" in (invite.header("P-Asserted-Identity") or "")
            assert any(m.direction == "in" and m.first_line.startswith("BYE") for m in msgs)
            await wait_for(lambda: _none_left(rig), timeout=10)
        finally:
            carrier.stop()


async def _none_left(rig: Rig) -> bool:
    return not [c for c in await _leftover(rig) if c.startswith("c-")]


async def test_progressive_call_reaches_the_agents_phone_and_the_agent_hangs_up(
    services: Services,
    redis: aioredis.Redis,
    pg: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    async with gateway_rig(tmp_path) as rig:
        sip_env(monkeypatch, services, rig)
        carrier = SippUas(
            "answer_speech.xml",
            port=rig.trunk_port(),
            media_port=free_port(),
            keys={"talk_ms": "60000"},
            calls=2,
            trace_dir=tmp_path / "carrier",
        )
        phone_port = free_tcp_udp_port()
        phone = SippUas(
            "agent_phone.xml", port=phone_port, media_port=free_port(), trace_dir=tmp_path / "phone"
        )
        carrier.start()
        phone.start()
        running = Running()
        try:
            await redis.hset(
                keys.campaign_config(CID),
                "json",
                json.dumps(campaign_config(dial_mode="progressive", dispositions=["not_interested"])),
            )
            await seed_hopper(redis, ["+12122340201", "+12122340202"], state="NY")
            await services.start("dnc", clock=CLOCK)
            agent = await services.start("agent", clock=CLOCK)
            await services.assign(CID, "agent-sip-1", target=agent)
            await running.start(
                sim_agent(services, agent, "agent-sip-1", phone=f"sip:agent-sip-1@127.0.0.1:{phone_port}")
            )
            await start_sip_pacing(services, redis)
            await wait_for(lambda: all_ended(pg, 2), timeout=120)
            rows = await pg.fetch("SELECT * FROM dial_attempts WHERE campaign_id = $1 ORDER BY dial_at", CID)
            assert [r["outcome"] for r in rows] == ["connected", "connected"], [dict(r) for r in rows]
            assert {r["agent_id"] for r in rows} == {"agent-sip-1"}
            for r in rows:  # the 2-second rule, from the 200 OK the gateway saw
                assert (r["connect_at"] - r["answer_at"]).total_seconds() < 2.0
            # The carrier got our BYE for both calls (the agent hung up); the phone stayed up between them.
            assert carrier.wait(20) == 0
            byes = [m for m in carrier.messages() if m.direction == "in" and m.first_line.startswith("BYE")]
            assert len(byes) == 2
            phone_invites = [m for m in phone.messages() if m.first_line.startswith("INVITE")]
            assert len(phone_invites) == 1  # one nailed-up call for the whole session
        finally:
            await running.close()
            carrier.stop()
            phone.stop()


async def test_gateway_killed_mid_call_leaves_no_call_open_and_no_lead_lost(
    services: Services,
    redis: aioredis.Redis,
    pg: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    async with gateway_rig(tmp_path) as rig:
        sip_env(monkeypatch, services, rig)
        # The called party talks until hung up on: the call is up when the gateway dies.
        carrier = SippUas(
            "answer_speech.xml",
            port=rig.trunk_port(),
            media_port=free_port(),
            keys={"talk_ms": "-1"},
            trace_dir=tmp_path / "carrier",
        )
        phone_port = free_tcp_udp_port()
        phone = SippUas(
            "agent_phone.xml", port=phone_port, media_port=free_port(), trace_dir=tmp_path / "phone"
        )
        carrier.start()
        phone.start()
        running = Running()
        numbers = ["+12122340301", "+12122340302", "+12122340303"]
        try:
            await redis.hset(
                keys.campaign_config(CID),
                "json",
                json.dumps(campaign_config(dial_mode="progressive", dispositions=["not_interested"])),
            )
            await seed_hopper(redis, numbers, state="NY")
            await services.start("dnc", clock=CLOCK)
            agent = await services.start("agent", clock=CLOCK)
            await services.assign(CID, "agent-sip-2", target=agent)
            await running.start(
                SimulatedAgent(
                    lambda: services.channel(agent, role="agent", sub="agent-sip-2"),
                    make_token("agent", "agent-sip-2"),
                    "agent-sip-2",
                    [(CID, 1)],
                    talk=Distribution(600, "fixed"),  # never hangs up by itself
                    wrap=Distribution(0.1, "fixed"),
                    rng=random.Random(7),
                    dispositions={"not_interested": 1.0},
                    phone=f"sip:agent-sip-2@127.0.0.1:{phone_port}",
                )
            )
            await start_sip_pacing(services, redis)

            async def connected() -> bool:
                n = await pg.fetchval(
                    "SELECT count(*) FROM dial_attempts WHERE campaign_id = $1 AND connect_at IS NOT NULL",
                    CID,
                )
                return bool(n)

            await wait_for(connected, timeout=60)
            killed, killed_number = await pg.fetchrow(
                "SELECT call_id, number FROM dial_attempts WHERE campaign_id = $1 AND connect_at IS NOT NULL",
                CID,
            )
            rig.kill_gateway()  # SIGKILL, mid-call
            await rig.start_gateway()

            # The dialer learns from the restarted gateway that its call is gone, and ends it.
            async def ended() -> bool:
                return bool(
                    await pg.fetchval(
                        "SELECT end_at IS NOT NULL FROM dial_attempts WHERE call_id = $1", killed
                    )
                )

            await wait_for(ended, timeout=60)
            row = await pg.fetchrow("SELECT * FROM dial_attempts WHERE call_id = $1", killed)
            assert row["outcome"] == "connected" and row["agent_id"] == "agent-sip-2"
            rows = await pg.fetch(
                "SELECT * FROM dial_attempts WHERE campaign_id = $1 AND dial_at IS NOT NULL", CID
            )
            # No lead lost: every lead was dialled and closed, or is still to be dialled (in the hopper).
            dialled = {r["lead_id"] for r in rows}
            waiting = set(await redis.zrange(keys.hopper(CID), 0, -1))
            assert {f"lead-{i}" for i in range(len(numbers))} <= dialled | waiting
            assert await _claims_are_live(redis, pg)

            # The restarted gateway hung the killed call up at the carrier (its journalled BYE) ...
            sip_call_id = next(
                m.call_id
                for m in carrier.messages()
                if m.direction == "in" and m.first_line.startswith("INVITE") and killed_number in m.first_line
            )

            async def carrier_got_bye() -> bool:
                return any(
                    m.direction == "in" and m.first_line.startswith("BYE") and m.call_id == sip_call_id
                    for m in carrier.messages()
                )

            await wait_for(carrier_got_bye, timeout=20)

            # ... and freed what the dead one left in rtpengine (the killed call's ports).
            async def freed() -> bool:
                return f"c-{killed}" not in await _leftover(rig)

            await wait_for(freed, timeout=20)
        finally:
            await running.close()
            carrier.stop()
            phone.stop()


async def _claims_are_live(redis: aioredis.Redis, pg: asyncpg.Pool) -> bool:
    """Claims left are those of calls still in flight (a lead being dialled now), none of an ended call."""
    open_leads = {
        r["lead_id"]
        for r in await pg.fetch(
            "SELECT lead_id FROM dial_attempts WHERE campaign_id = $1 AND end_at IS NULL AND allowed", CID
        )
    }
    claims = [k async for k in redis.scan_iter(match=keys.lead_claim(CID, "*"))]
    return all(str(k).rsplit(":", 1)[-1] in open_leads for k in claims)


async def test_a_softphone_that_hangs_up_its_nailed_up_call_pauses_the_agent(
    services: Services,
    redis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from outdial.gateway.peers.baresip import Baresip
    from outdial.v1 import agent_pb2, agent_pb2_grpc, common_pb2

    fast_sim_env(monkeypatch)
    await redis.hset(keys.campaign_config(CID), "json", json.dumps(campaign_config(dial_mode="progressive")))
    # The agent service calls the gateway (phone logins) and the gateway the agent service (pauses).
    gateway_addr = f"127.0.0.1:{free_tcp_udp_port()}"
    services.settings = services.settings.model_copy(update={"gateway_addr": gateway_addr})
    agent = await services.start("agent", clock=CLOCK)
    async with gateway_rig(tmp_path, agent_addr=agent.addr, gateway_listen=gateway_addr) as rig:
        phone = Baresip(
            "agent7", "s3cret-pass", f"127.0.0.1:{rig.sip_port}", free_tcp_udp_port(), tmp_path / "bs"
        )
        phone.start()
        try:
            assert await asyncio.to_thread(phone.wait_registered, 15)
            stub = agent_pb2_grpc.AgentServiceStub(services.channel(agent, role="agent", sub="agent7"))
            await services.assign(CID, "agent7", target=agent)
            await stub.Login(
                agent_pb2.LoginRequest(
                    agent_id="agent7",
                    campaigns=[agent_pb2.CampaignMembership(campaign_id=CID, priority=1)],
                    phone="registered",
                ),
                timeout=45,
            )
            assert (await rig.stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=5)).agent_legs == 1
            phone.stop()  # the softphone quits: it hangs up the nailed-up call

            supervisor = agent_pb2_grpc.AgentServiceStub(services.channel(agent, role="manager"))

            async def paused() -> bool:
                res = await supervisor.ListAgents(agent_pb2.ListAgentsRequest(campaign_id=CID), timeout=5)
                return any(
                    a.agent_id == "agent7"
                    and a.state == common_pb2.AGENT_STATE_PAUSED
                    and a.pause_reason == "phone_disconnected"
                    for a in res.agents
                )

            await wait_for(paused, timeout=20)
        finally:
            phone.stop()
