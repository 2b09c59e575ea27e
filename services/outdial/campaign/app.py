"""Wiring of the campaign service: builds its stores and domain objects and registers its servicer."""

from __future__ import annotations

import asyncio
import logging

import grpc

from outdial.campaign import store
from outdial.campaign.events import EventConsumer
from outdial.campaign.feeder import Feeder
from outdial.campaign.model import CampaignRecord
from outdial.campaign.scheduler import CampaignScheduler
from outdial.campaign.service import CampaignServicer
from outdial.campaign.settings import CampaignSettings
from outdial.core import keys
from outdial.core.server import ServiceContext, ServiceSpec
from outdial.v1 import campaign_pb2_grpc

log = logging.getLogger("outdial.campaign")


async def _publish_all(ctx: ServiceContext, sched: CampaignScheduler, check_s: float = 1.0) -> None:
    """Write every campaign's config to Redis, rebuild the active set, schedule start/end: at start, and
    again whenever the marker :func:`keys.campaigns_published` is gone (Redis lost its data): PostgreSQL is
    the truth, and dialing resumes without a restart."""
    await ctx.ready.wait()
    delay = 0.5
    while True:
        try:
            if await ctx.redis.exists(keys.campaigns_published()):
                await asyncio.sleep(check_s)
                continue
            recs = await store.all_campaigns(ctx.pool)
            for rec in recs:
                await store.publish(ctx.redis, rec)
                sched.sync(rec)
            active = {r.id for r in recs if r.state == "active"}
            stale = [
                str(c) for c in await ctx.redis.smembers(keys.active_campaigns()) if str(c) not in active
            ]
            if stale:
                await ctx.redis.srem(keys.active_campaigns(), *stale)
            await ctx.redis.set(keys.campaigns_published(), int(ctx.clock.now().timestamp()))
            log.info("published %d campaign configs (%d active)", len(recs), len(active))
            delay = 0.5
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("publishing campaign configs failed; retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def setup(server: grpc.aio.Server, ctx: ServiceContext) -> None:
    settings = CampaignSettings()
    feeder = Feeder(ctx.pool, ctx.redis, ctx.clock, settings, ctx.channel("dnc"), ctx.instance_id)
    servicer = CampaignServicer(ctx, settings)
    sched = CampaignScheduler(servicer._move)

    async def changed(rec: CampaignRecord) -> None:
        sched.sync(rec)
        if rec.state == "active":
            feeder.wake.set()

    servicer.on_change = changed
    campaign_pb2_grpc.add_CampaignServiceServicer_to_server(servicer, server)
    consumer = EventConsumer(ctx.pool, ctx.redis, ctx.clock, settings, ctx.instance_id)
    sched.start()

    async def retention_job() -> None:
        await servicer.run_retention(dry_run=False, actor=f"service:campaign/{ctx.instance_id}")

    sched.every("retention", settings.retention_interval_s, retention_job)

    async def _stop() -> None:
        sched.shutdown()

    ctx.on_close(_stop)
    ctx.spawn(_publish_all(ctx, sched), "publish")
    ctx.spawn(feeder.run(ctx.ready), "feeder")
    ctx.spawn(consumer.run(ctx.ready), "events")
    servicer.feeder, servicer.consumer, servicer.scheduler = feeder, consumer, sched


SPEC = ServiceSpec(name="campaign", full_names=("outdial.v1.CampaignService",), setup=setup)
