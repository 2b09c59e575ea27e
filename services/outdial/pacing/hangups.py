"""Agent hang-ups, durable: the per-campaign stream ``keys.agent_hangups(cid)`` read through the consumer
group ``keys.AGENT_HANGUPS_GROUP`` by the replica that leases the campaign.

A notice sent while the lease changes hands stays pending in the group; the next holder claims it
(``take_over``) when it takes the campaign. Each notice is acknowledged once handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import redis.exceptions

from outdial.core import keys
from outdial.core.redis import Redis

log = logging.getLogger("outdial.pacing.hangups")

Handler = Callable[[dict[str, str]], Awaitable[None]]


class HangupReader:
    def __init__(
        self, redis: Redis, consumer: str, campaigns: Callable[[], Collection[str]], handle: Handler
    ) -> None:
        self.redis = redis
        self.consumer = consumer
        self.campaigns = campaigns
        self.handle = handle
        self._wanted = asyncio.Event()

    def wake(self) -> None:
        """The set of leased campaigns changed."""
        self._wanted.set()

    async def take_over(self, cid: str) -> None:
        """At lease acquisition: the group exists, and notices a previous holder read but never handled
        are this holder's now."""
        try:
            await self.redis.xgroup_create(
                keys.agent_hangups(cid), keys.AGENT_HANGUPS_GROUP, id="0", mkstream=True
            )
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        resp: Any = await self.redis.xautoclaim(
            keys.agent_hangups(cid), keys.AGENT_HANGUPS_GROUP, self.consumer, min_idle_time=0, start_id="0-0"
        )
        for entry_id, fields in resp[1] if resp else []:
            await self._one(cid, entry_id, fields)
        self.wake()

    async def run(self) -> None:
        """Blocks on XREADGROUP over the streams of the leased campaigns (the read returns at least every
        second, to follow changes in that set), handles each notice, acknowledges it."""
        while True:
            try:
                await self._wanted.wait()
                cids = list(self.campaigns())
                if not cids:
                    self._wanted.clear()
                    continue
                streams: dict[Any, Any] = {keys.agent_hangups(cid): ">" for cid in cids}
                resp: Any = await self.redis.xreadgroup(
                    keys.AGENT_HANGUPS_GROUP, self.consumer, streams, count=100, block=1000
                )
                by_stream = {keys.agent_hangups(c): c for c in cids}
                for stream, entries in resp or []:
                    for entry_id, fields in entries:
                        await self._one(by_stream.get(stream, ""), entry_id, fields)
            except asyncio.CancelledError:
                raise
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    for cid in list(self.campaigns()):
                        with contextlib.suppress(Exception):
                            await self.take_over(cid)
                else:
                    log.warning("agent hang-up reader error (%s)", exc)
                await asyncio.sleep(0.2)
            except Exception as exc:
                log.warning("agent hang-up reader error (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.2)

    async def _one(self, cid: str, entry_id: str, fields: dict[str, str]) -> None:
        await self.handle(fields)
        if cid:
            await self.redis.xack(keys.agent_hangups(cid), keys.AGENT_HANGUPS_GROUP, entry_id)
