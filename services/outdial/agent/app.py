"""Wiring of the agent service: builds its stores and domain objects and registers its servicer."""

from __future__ import annotations

import grpc

from outdial.agent.followups import Followups
from outdial.agent.hangups import HangupConsumer
from outdial.agent.hub import Hub
from outdial.agent.presence import Sweeper
from outdial.agent.service import AgentService
from outdial.agent.settings import AgentSettings
from outdial.agent.store import AgentRedis, Assignments, Dispositions, Timeline
from outdial.core.clients import open_channel
from outdial.core.server import ServiceContext, ServiceSpec
from outdial.v1 import agent_pb2_grpc, gateway_pb2_grpc


async def setup(server: grpc.aio.Server, ctx: ServiceContext) -> None:
    cfg = AgentSettings()
    # Unique per process even when two replicas share a hostname-pid (tests run two in one process).
    replica_id = f"{ctx.instance_id}-{id(ctx):x}"
    store = AgentRedis(ctx.redis)
    hub = Hub(ctx.redis, replica_id)
    timeline = Timeline(ctx.pool, ctx.ready)
    dispositions = Dispositions(ctx.pool)
    followups = Followups(dispositions, ctx.channel)
    stub: list[gateway_pb2_grpc.GatewayServiceStub] = []

    def gateway() -> gateway_pb2_grpc.GatewayServiceStub:
        """The telephony gateway (SIP), opened on first use: only agents who log in with a phone need it."""
        if not stub:
            channel = open_channel(ctx.settings, ctx.settings.gateway_addr, ctx.token)
            ctx.on_close(channel.close)
            stub.append(gateway_pb2_grpc.GatewayServiceStub(channel))
        return stub[0]

    sweeper = Sweeper(store, timeline, stuck_offer_slack_ms=cfg.stuck_offer_slack_ms)
    servicer = AgentService(
        cfg=cfg,
        store=store,
        hub=hub,
        timeline=timeline,
        dispositions=dispositions,
        followups=followups,
        assignments=Assignments(ctx.pool),
        replica_id=replica_id,
        clock=ctx.clock,
        gateway=gateway,
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    ctx.spawn(hub.run(), "offers-hub")
    ctx.spawn(timeline.run(), "timeline-writer")
    ctx.spawn(sweeper.run(cfg.sweep_interval_s), "presence-sweeper")
    ctx.spawn(followups.run(ctx.ready, cfg.followup_retry_s), "disposition-followups")
    hangups = HangupConsumer(store, timeline, consumer=replica_id, wrap_timeout_s=cfg.wrap_timeout_s)
    ctx.spawn(hangups.run(), "hangup-consumer")
    ctx.on_close(hub.close)
    ctx.on_close(timeline.drain)
    ctx.on_close(servicer.close)  # closers run last-registered first: this one before the hub closes


SPEC = ServiceSpec(name="agent", full_names=("outdial.v1.AgentService",), setup=setup)
