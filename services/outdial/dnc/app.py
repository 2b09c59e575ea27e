"""Wiring of the dnc service: builds its stores and domain objects and registers its servicer."""

from __future__ import annotations

import asyncio

import grpc

from outdial.core.server import ServiceContext, ServiceSpec
from outdial.dnc import consumer
from outdial.dnc.engine import DncEngine
from outdial.dnc.service import DncServicer
from outdial.dnc.settings import DncSettings
from outdial.v1 import dnc_pb2_grpc


async def setup(server: grpc.aio.Server, ctx: ServiceContext) -> None:
    settings = DncSettings()
    engine = DncEngine(ctx.pool, ctx.redis_bytes(), ctx.clock, settings)
    dnc_pb2_grpc.add_DncServiceServicer_to_server(DncServicer(engine), server)

    async def keeper() -> None:
        await ctx.ready.wait()
        await engine.keep_index()

    async def sweeper() -> None:
        await ctx.ready.wait()
        await engine.keep_sweeping()

    ctx.spawn(keeper(), "index-keeper")
    ctx.spawn(sweeper(), "expiry-sweeper")
    if settings.consume_events:
        ctx.spawn(consumer.run(engine, ctx.redis, f"dnc-{ctx.instance_id}", ctx.ready), "call-events")
    await asyncio.sleep(0)


def spec() -> ServiceSpec:
    """The service spec, with the database role read from the environment now (OUTDIAL_DNC_DB_ROLE)."""
    return ServiceSpec(
        name="dnc",
        full_names=("outdial.v1.DncService",),
        setup=setup,
        db_role=DncSettings().db_role or None,
    )


def __getattr__(name: str) -> ServiceSpec:
    # ``SPEC`` is built on each access, so the environment at start time (not import time) decides the role.
    if name == "SPEC":
        return spec()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
