"""Simulated agents for demos, load tests and end-to-end tests. They use exactly the RPCs a real console
uses (Login, Connect, EndCall, SetDisposition, DecidePreview, Logout) through the same reconnecting session
(:mod:`outdial.agent.client`), with talk, wrap-up and preview think times drawn from seeded distributions:
they ride out restarts of the agent service and keep the call in hand. A previewed lead is dialled after the
think time, or skipped with probability ``p_skip``. Importable: ``run_simulated_agents(...)`` or one
:class:`SimulatedAgent` at a time."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from outdial.agent.client import AgentSession, Backoff, SessionEnded
from outdial.core.auth import Role, issue_token
from outdial.core.clients import open_channel
from outdial.core.config import Settings
from outdial.core.signing import SigningKey, issuer_key
from outdial.v1 import agent_pb2, agent_pb2_grpc, common_pb2

DEFAULT_DISPOSITIONS: dict[str, float] = {
    "sale": 0.15,
    "not_interested": 0.55,
    "wrong_number": 0.08,
    "callback": 0.07,
    "do_not_call": 0.03,
    "other": 0.12,
}


@dataclass(frozen=True)
class Distribution:
    """A duration distribution in seconds: "exp" (exponential), "lognormal" (sigma 0.5) or "fixed"."""

    mean_s: float
    kind: str = "exp"

    def sample(self, rng: random.Random) -> float:
        if self.mean_s <= 0:
            return 0.0
        if self.kind == "fixed":
            return self.mean_s
        if self.kind == "lognormal":
            sigma = 0.5
            return rng.lognormvariate(math.log(self.mean_s) - sigma * sigma / 2, sigma)
        if self.kind == "exp":
            return rng.expovariate(1 / self.mean_s)
        raise ValueError(f"unknown distribution {self.kind!r}")


@dataclass
class SimStats:
    offers: int = 0
    ended: int = 0
    dispositions: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    # Offer hand-over seconds (offered_at -> received), as this client measured them.
    handover_s: list[float] = field(default_factory=list)
    previews: int = 0
    preview_dials: int = 0
    preview_skips: int = 0
    # Calls shown again after a reconnection (the same call, not a new offer), and calls taken over from an
    # earlier run of the agent (a console that crashed while the agent was on a call).
    shown_again: int = 0
    taken_back: int = 0
    # Calls the service took away while the agent was on them (withdrawn, or ended while away).
    withdrawn: int = 0
    reconnects: int = 0
    relogins: int = 0


class SimulatedAgent:
    def __init__(
        self,
        open_channel: Callable[[], grpc.aio.Channel],
        token: str,
        agent_id: str,
        campaigns: Sequence[tuple[str, int]],
        *,
        talk: Distribution,
        wrap: Distribution,
        rng: random.Random,
        dispositions: dict[str, float] | None = None,
        skills: Sequence[str] = (),
        on_offer: Callable[[str, agent_pb2.CallOffer], None] | None = None,
        backoff: Backoff | None = None,
        think: Distribution | None = None,
        p_skip: float = 0.1,
        phone: str = "",
    ) -> None:
        self.think = think or Distribution(2.0, "lognormal")
        self.p_skip = p_skip
        # Streaming calls carry the token explicitly (grpc.aio applies a multi-kind client interceptor to
        # unary-unary calls only).
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.agent_id = agent_id
        self.session = AgentSession(
            open_channel,
            agent_pb2.LoginRequest(
                agent_id=agent_id,
                campaigns=[agent_pb2.CampaignMembership(campaign_id=c, priority=p) for c, p in campaigns],
                skills=list(skills),
                phone=phone,
            ),
            self.metadata,
            backoff=backoff,
            rng=random.Random(rng.random()),
        )
        self.campaigns = list(campaigns)
        self.talk, self.wrap, self.rng = talk, wrap, rng
        weights = dispositions or DEFAULT_DISPOSITIONS
        self.dispo_names, self.dispo_weights = list(weights), list(weights.values())
        self.on_offer = on_offer
        self.stats = SimStats()
        self.connected = self.session.connected
        # Calls this agent is handling (talk, then wrap-up), by call id; the hang-up event of those in talk.
        self._calls: dict[str, asyncio.Task[None]] = {}
        self._hangups: dict[str, asyncio.Event] = {}
        self._withdrawn: set[str] = set()
        # Previewed leads this agent is looking at (think, then DecidePreview), by call id.
        self._previews: dict[str, asyncio.Task[None]] = {}
        # Dispositions being sent: a stopping agent lets them finish (what it decided is recorded and counted).
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> SimStats:
        """Work until ``stop``: through restarts of the agent service (the session resumes), logged out by
        the heartbeat grace (logs in again). Ends early only when a newer console took the session over."""
        reader: asyncio.Task[None] | None = None
        stopper = asyncio.create_task(stop.wait())
        try:
            await self.session.login()
            reader = asyncio.create_task(self._read())
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self._sending:
                await asyncio.wait(set(self._sending), timeout=5)
            tasks = [
                t for t in (reader, stopper, *self._calls.values(), *self._previews.values()) if t is not None
            ]
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, SessionEnded):
                    await t
            self.stats.reconnects = self.session.reconnects
            await self.session.logout()
            await self.session.close()
        if reader is not None and not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]
        return self.stats

    async def _read(self) -> None:
        while True:
            try:
                async for msg in self.session.events():
                    self._on_message(msg)
            except SessionEnded as ended:
                if ended.reason == "superseded":
                    return  # another console of this agent took over: this one stops
                # Logged out while connected (a manager, or the grace ran out): a simulated agent wants to
                # work, so it logs in again.
                self.stats.relogins += 1
                await asyncio.sleep(self.session.backoff.delay(0, self.rng))
                await self.session.login()

    def _on_message(self, msg: agent_pb2.ConnectResponse) -> None:
        if msg.HasField("status"):
            self._on_status(msg.status)
        elif msg.call_ended:
            self._hangups.setdefault(msg.call_ended, asyncio.Event()).set()
        elif msg.HasField("preview"):
            call_id = msg.preview.call_id
            if call_id in self._previews:
                self.stats.shown_again += 1  # shown again after a reconnection: still deciding
                return
            self.stats.previews += 1
            task = asyncio.create_task(self._preview(msg.preview))
            self._previews[call_id] = task
            task.add_done_callback(lambda _t: self._previews.pop(call_id, None))
        elif msg.HasField("offer"):
            offer = msg.offer
            if offer.call_id in self._calls:
                self.stats.shown_again += 1  # shown again after a reconnection: the call in hand
                return
            self.stats.offers += 1
            st = self.session.status
            if st is not None and st.state == common_pb2.AGENT_STATE_ON_CALL and st.call_id == offer.call_id:
                self.stats.taken_back += 1  # on this call already: an earlier run of this agent took it
            if offer.HasField("offered_at"):
                now = datetime.now(UTC)
                self.stats.handover_s.append((now - offer.offered_at.ToDatetime(tzinfo=UTC)).total_seconds())
            if self.on_offer is not None:
                self.on_offer(self.agent_id, offer)
            self._start(offer.call_id, self._handle(offer))

    def _on_status(self, st: agent_pb2.AgentStatus) -> None:
        if st.state in (common_pb2.AGENT_STATE_READY, common_pb2.AGENT_STATE_PAUSED):
            # Not on any call for the service: a call still in talk here was taken away.
            for call_id, ev in self._hangups.items():
                if not ev.is_set():
                    self._withdrawn.add(call_id)
                    ev.set()
        elif st.state == common_pb2.AGENT_STATE_WRAP_UP and st.call_id:
            if st.call_id not in self._calls:
                # In wrap-up for a call an earlier run of this agent took (it crashed): finish it.
                self.stats.taken_back += 1
                self._start(st.call_id, self._wrap_up(st.call_id))
            elif st.call_id in self._hangups:
                # Ended on the far side while the stream was down (its notice missed): stop talking.
                self._hangups[st.call_id].set()

    def _start(self, call_id: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._calls[call_id] = task
        task.add_done_callback(lambda _t: self._calls.pop(call_id, None))

    async def _preview(self, preview: agent_pb2.PreviewOffer) -> None:
        """Look at the lead for a think time, then dial it or (sometimes) skip it. A preview that timed out
        first was decided for the agent; the service answers with that decision."""
        await asyncio.sleep(self.think.sample(self.rng))
        skip = self.rng.random() < self.p_skip
        want = agent_pb2.PREVIEW_DECISION_SKIP if skip else agent_pb2.PREVIEW_DECISION_DIAL
        req = agent_pb2.DecidePreviewRequest(agent_id=self.agent_id, call_id=preview.call_id, decision=want)
        try:
            resp = await self.session.call(lambda stub: stub.DecidePreview(req, metadata=self.metadata))
        except grpc.aio.AioRpcError:
            self.stats.errors += 1
            return
        if resp.decision == agent_pb2.PREVIEW_DECISION_DIAL:
            self.stats.preview_dials += 1
        elif resp.decision == agent_pb2.PREVIEW_DECISION_SKIP:
            self.stats.preview_skips += 1

    async def _handle(self, offer: agent_pb2.CallOffer) -> None:
        hangup = self._hangups.setdefault(offer.call_id, asyncio.Event())
        try:
            try:
                # Talk until the agent is done, or until the far end hangs up (the service then has
                # already put the agent in wrap-up).
                await asyncio.wait_for(hangup.wait(), self.talk.sample(self.rng))
            except TimeoutError:
                try:
                    await self.session.call(
                        lambda stub: stub.EndCall(
                            agent_pb2.EndCallRequest(agent_id=self.agent_id, call_id=offer.call_id),
                            metadata=self.metadata,
                        )
                    )
                except grpc.aio.AioRpcError as exc:
                    # Ended on the far side at the same moment: wrap up and disposition all the same.
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        raise
            if offer.call_id in self._withdrawn:
                self.stats.withdrawn += 1
                return
            self.stats.ended += 1
        finally:
            self._hangups.pop(offer.call_id, None)
            self._withdrawn.discard(offer.call_id)
        await self._wrap_up(offer.call_id)

    async def _wrap_up(self, call_id: str) -> None:
        await asyncio.sleep(self.wrap.sample(self.rng))
        dispo = self.rng.choices(self.dispo_names, self.dispo_weights)[0]
        req = agent_pb2.SetDispositionRequest(agent_id=self.agent_id, call_id=call_id, disposition=dispo)
        if dispo == "callback":
            req.callback_at.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
        send = asyncio.create_task(self._send_disposition(req))
        self._sending.add(send)
        send.add_done_callback(self._sending.discard)
        # Shielded: stopping the agent cancels this wrap-up, not the disposition on its way (run() waits for it).
        await asyncio.shield(send)

    async def _send_disposition(self, req: agent_pb2.SetDispositionRequest) -> None:
        try:
            await self.session.call(lambda stub: stub.SetDisposition(req, metadata=self.metadata))
        except grpc.aio.AioRpcError:
            # The wrap-up timed out first, or the call is no longer this agent's: ready again either way.
            self.stats.errors += 1
            return
        self.stats.dispositions[req.disposition] += 1


def agent_token(settings: Settings, agent_id: str, key: SigningKey | None = None) -> str:
    """An agent token signed with the issuer's key (OUTDIAL_ISSUER_KEY, or the development key with
    OUTDIAL_DEV=1): simulators, demos and tests only."""
    key = key or issuer_key(settings)
    return issue_token(key, agent_id, Role.AGENT, ttl_seconds=settings.token_ttl_seconds)


async def assign_agents(
    settings: Settings, token: str, campaign_ids: Sequence[str], agent_ids: Sequence[str]
) -> None:
    """Assign the agents to each campaign (AgentService.AssignAgents, with a manager's or admin's token)."""
    channel = open_channel(settings, settings.agent_addr, lambda: token)
    try:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        for cid in campaign_ids:
            for i in range(0, len(agent_ids), 1000):
                await stub.AssignAgents(
                    agent_pb2.AssignAgentsRequest(campaign_id=cid, agent_ids=list(agent_ids[i : i + 1000])),
                    timeout=30,
                )
    finally:
        await channel.close()


async def run_simulated_agents(
    settings: Settings,
    campaigns: Sequence[tuple[str, int]],
    count: int,
    *,
    stop: asyncio.Event,
    talk: Distribution,
    wrap: Distribution,
    seed: int = 1,
    prefix: str = "sim",
    dispositions: dict[str, float] | None = None,
    on_offer: Callable[[str, agent_pb2.CallOffer], None] | None = None,
    started: asyncio.Event | None = None,
    backoff: Backoff | None = None,
    think: Distribution | None = None,
    p_skip: float = 0.1,
    phone_of: Callable[[str], str] | None = None,
    assign_token: str | None = None,
) -> list[SimulatedAgent]:
    """Run ``count`` simulated agents against ``settings.agent_addr`` until ``stop`` is set. With
    ``assign_token`` (a manager's or an admin's), the agents are first assigned to the campaigns: an agent
    logs in only to a campaign they are assigned to."""
    master = random.Random(seed)
    agents: list[SimulatedAgent] = []
    ids = [f"{prefix}-{i + 1:04d}" for i in range(count)]
    if assign_token is not None:
        await assign_agents(settings, assign_token, [c for c, _ in campaigns], ids)
    key = issuer_key(settings) if count else None
    for agent_id in ids:
        token = agent_token(settings, agent_id, key)

        def opener(t: str = token) -> grpc.aio.Channel:
            return open_channel(settings, settings.agent_addr, lambda: t)

        agents.append(
            SimulatedAgent(
                opener,
                token,
                agent_id,
                campaigns,
                talk=talk,
                wrap=wrap,
                rng=random.Random(master.random()),
                dispositions=dispositions,
                on_offer=on_offer,
                backoff=backoff,
                think=think,
                p_skip=p_skip,
                phone=phone_of(agent_id) if phone_of else "",
            )
        )
    tasks = [asyncio.create_task(a.run(stop)) for a in agents]
    try:
        if started is not None:

            async def all_connected() -> None:
                await asyncio.gather(*(a.connected.wait() for a in agents))
                started.set()

            waiter = asyncio.create_task(all_connected())
            done, _ = await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                waiter.cancel()
        await asyncio.gather(*tasks)
    finally:
        # Each agent closes its own channel when its task ends; none is closed under a running agent.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return agents
