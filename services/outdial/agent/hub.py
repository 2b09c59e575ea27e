"""One Redis pub/sub connection per replica that carries (a) offers and status notices for the agents
whose Connect stream this replica holds (channel ``keys.agent_offers(agent)``) and (b) acknowledgements
for the OfferCall calls this replica is waiting on (channel ``keys.agent_acks(replica)``).

Pub/sub, not a stream: an offer only makes sense while the agent's console is connected, and the
assignment script checks ``PUBSUB NUMSUB`` so that an agent with no open stream is never reserved.
The reader blocks on the socket (no polling)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from typing import Any

from redis.asyncio.client import PubSub

from outdial.core import keys
from outdial.core.redis import Redis

log = logging.getLogger("outdial.agent.hub")


class Hub:
    def __init__(self, redis: Redis, replica_id: str) -> None:
        self.redis = redis
        self.replica_id = replica_id
        self.ack_channel = keys.agent_acks(replica_id)
        self._pubsub: PubSub | None = None
        self._queues: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._channel_agent: dict[str, str] = {}
        self._waiters: dict[str, set[asyncio.Future[tuple[str, str]]]] = defaultdict(set)
        # OfferCalls waiting for an agent to become ready (within their 2 s).
        self._ready_waiters: set[asyncio.Future[None]] = set()
        self._lock = asyncio.Lock()
        self._started = asyncio.Event()
        self._closed = False
        self._epoch_seen = False

    async def run(self) -> None:
        """Reader loop; reconnects on errors (redis-py re-subscribes the channels)."""
        while True:
            try:
                self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(self.ack_channel)
                for agent_id in list(self._queues):
                    await self._pubsub.subscribe(keys.agent_offers(agent_id))
                await self._check_epoch()
                self._started.set()
                while True:
                    msg = await self._pubsub.get_message(timeout=None)
                    if msg is not None:
                        self._dispatch(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pub/sub reader error (%s); reconnecting", type(exc).__name__)
                self._started.clear()
                if self._pubsub is not None:
                    with contextlib.suppress(Exception):
                        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(0.2)

    async def _check_epoch(self) -> None:
        """At every (re)connection to Redis: when this replica's marker ``keys.agent_epoch`` is gone, Redis lost its
        data (a restart without persistence, a fail-over to an empty replica) and with it every session:
        the consoles of this replica are told at once (``sessions_lost``), so they log in again now."""
        if (
            await self.redis.set(keys.agent_epoch(self.replica_id), 1, nx=True, ex=7 * 86400)
            and self._epoch_seen
        ):
            log.warning("Redis lost its data: every console connected here logs in again")
            for qs in list(self._queues.values()):
                for q in list(qs):
                    q.put_nowait({"type": "sessions_lost"})
        self._epoch_seen = True

    async def close(self) -> None:
        self._closed = True
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, msg: dict[str, Any]) -> None:
        channel = msg.get("channel")
        data = msg.get("data")
        if not isinstance(data, str) or not isinstance(channel, str):
            return
        if channel == self.ack_channel:
            kind, call_id, agent_id = json.loads(data)
            for fut in list(self._waiters.get(call_id, ())):
                if not fut.done():
                    fut.set_result((kind, agent_id))
            return
        agent_id = self._channel_agent.get(channel)
        if agent_id is None:
            return
        payload = json.loads(data)
        for q in list(self._queues.get(agent_id, ())):
            q.put_nowait(payload)
        if payload.get("type") == "status" and payload.get("state") == "ready":
            for w in list(self._ready_waiters):
                if not w.done():
                    w.set_result(None)

    async def wait_ready(self, timeout: float) -> None:
        """Until an agent whose console is on this replica becomes ready, or ``timeout`` (agents on other
        replicas are not seen here: the caller looks again after the timeout)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready_waiters.add(fut)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout)
        finally:
            self._ready_waiters.discard(fut)

    async def subscribe(self, agent_id: str) -> asyncio.Queue[dict[str, Any]]:
        await self._started.wait()
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        async with self._lock:
            first = not self._queues.get(agent_id)
            self._channel_agent[keys.agent_offers(agent_id)] = agent_id
            self._queues[agent_id].add(q)
            if first and self._pubsub is not None and not self._closed:
                await self._pubsub.subscribe(keys.agent_offers(agent_id))
        return q

    async def unsubscribe(self, agent_id: str, q: asyncio.Queue[dict[str, Any]]) -> None:
        async with self._lock:
            qs = self._queues.get(agent_id)
            if qs is None:
                return
            qs.discard(q)
            if not qs:
                del self._queues[agent_id]
                self._channel_agent.pop(keys.agent_offers(agent_id), None)
                if self._pubsub is not None and not self._closed:
                    # (A closed PubSub would take a fresh connection from the pool just to unsubscribe.)
                    with contextlib.suppress(Exception):
                        await self._pubsub.unsubscribe(keys.agent_offers(agent_id))

    def expect(self, call_id: str) -> asyncio.Future[tuple[str, str]]:
        fut: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self._waiters[call_id].add(fut)
        return fut

    def forget(self, call_id: str, fut: asyncio.Future[tuple[str, str]]) -> None:
        """Drop one waiter (a retried OfferCall for the same call may wait beside the original)."""
        waiters = self._waiters.get(call_id)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del self._waiters[call_id]
