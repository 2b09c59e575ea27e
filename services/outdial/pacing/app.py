"""Wiring of the pacing service: builds its stores and domain objects, registers its servicer and starts
the dialer (leases, one dialing loop per leased campaign) as a background task."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2_grpc

from outdial.core.clients import open_channel
from outdial.core.server import ServiceContext, ServiceSpec
from outdial.pacing.dialer import Dialer
from outdial.pacing.lease import LeaseStore
from outdial.pacing.service import PacingServicer
from outdial.pacing.settings import PacingServiceSettings
from outdial.pacing.store import PacingStore
from outdial.telephony.base import TelephonyAdapter
from outdial.telephony.sim import SimCarrier, SimCarrierConfig
from outdial.telephony.sip import SipTelephonyAdapter
from outdial.v1 import agent_pb2_grpc, dnc_pb2_grpc, pacing_pb2_grpc


def make_adapter(s: PacingServiceSettings, ctx: ServiceContext) -> TelephonyAdapter:
    if s.telephony == "sip":
        channel = open_channel(ctx.settings, ctx.settings.gateway_addr, ctx.token)
        ctx.on_close(channel.close)
        return SipTelephonyAdapter(
            channel, owner=f"pacing:{ctx.instance_id}", identity=s.sip_identity, clock=ctx.clock
        )
    if s.telephony != "sim":
        raise ValueError(f"OUTDIAL_TELEPHONY: unknown telephony adapter {s.telephony!r} (sim or sip)")
    return SimCarrier(
        SimCarrierConfig(
            p_live=s.sim_p_live,
            p_machine=s.sim_p_machine,
            p_busy=s.sim_p_busy,
            p_failed=s.sim_p_failed,
            answer_delay_mean_s=s.sim_answer_delay_mean_s,
            answer_delay_shape=s.sim_answer_delay_shape,
            talk_mean_s=s.sim_talk_mean_s,
            message_s=s.sim_message_s,
            p_opt_out=s.sim_p_opt_out,
            confirmation_s=s.sim_confirmation_s,
            time_scale=s.sim_time_scale,
            seed=s.sim_seed,
        ),
        clock=ctx.clock,
    )


async def setup(server: grpc.aio.Server, ctx: ServiceContext) -> None:
    s = PacingServiceSettings()
    store = PacingStore(ctx.pool, ctx.redis)
    leases = LeaseStore(ctx.redis, ctx.instance_id, s.pacing_lease_ms)
    pacing_pb2_grpc.add_PacingServiceServicer_to_server(PacingServicer(store, ctx.redis, leases), server)
    dialer = Dialer(
        redis=ctx.redis,
        store=store,
        leases=leases,
        adapter=make_adapter(s, ctx),
        dnc=dnc_pb2_grpc.DncServiceStub(ctx.channel("dnc")),
        agent=agent_pb2_grpc.AgentServiceStub(ctx.channel("agent")),
        agent_health=health_pb2_grpc.HealthStub(ctx.channel("agent")),
        clock=ctx.clock,
        tick_s=s.pacing_tick_ms / 1000,
        renew_s=s.renew_ms / 1000,
        offer_deadline_s=s.pacing_offer_deadline_ms / 1000,
        drain_s=s.pacing_drain_s,
        claim_ttl_s=s.pacing_claim_ttl_s,
    )

    async def run() -> None:
        await ctx.ready.wait()
        await dialer.run()

    ctx.spawn(run(), "dialer")


SPEC = ServiceSpec(name="pacing", full_names=("outdial.v1.PacingService",), setup=setup)
