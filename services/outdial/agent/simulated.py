"""Simulated agents for demos, load tests and end-to-end tests. They use exactly the RPCs a real console
uses (Login, Connect, EndCall, SetDisposition, DecidePreview, Logout), with talk, wrap-up and preview
think times drawn from seeded distributions; a previewed lead is dialled after the think time, or skipped
with probability ``p_skip``. Importable: ``run_simulated_agents(...)`` or one :class:`SimulatedAgent` at a time."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from outdial.core.auth import Role, issue_token
from outdial.core.clients import open_channel
from outdial.core.config import Settings
from outdial.v1 import agent_pb2, agent_pb2_grpc

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


class SimulatedAgent:
    def __init__(
        self,
        channel: grpc.aio.Channel,
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
        think: Distribution | None = None,
        p_skip: float = 0.1,
    ) -> None:
        self.think = think or Distribution(2.0, "lognormal")
        self.p_skip = p_skip
        self.stub = agent_pb2_grpc.AgentServiceStub(channel)
        # Streaming calls carry the token explicitly (grpc.aio applies a multi-kind client interceptor to
        # unary-unary calls only).
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.agent_id = agent_id
        self.campaigns = list(campaigns)
        self.talk, self.wrap, self.rng = talk, wrap, rng
        weights = dispositions or DEFAULT_DISPOSITIONS
        self.dispo_names, self.dispo_weights = list(weights), list(weights.values())
        self.skills = list(skills)
        self.on_offer = on_offer
        self.stats = SimStats()
        self.connected = asyncio.Event()
        self._calls: set[asyncio.Task[None]] = set()
        self._hangups: dict[str, asyncio.Event] = {}

    async def run(self, stop: asyncio.Event) -> SimStats:
        await self.stub.Login(
            agent_pb2.LoginRequest(
                agent_id=self.agent_id,
                campaigns=[
                    agent_pb2.CampaignMembership(campaign_id=c, priority=p) for c, p in self.campaigns
                ],
                skills=self.skills,
            ),
            metadata=self.metadata,
        )
        call = self.stub.Connect(agent_pb2.ConnectRequest(agent_id=self.agent_id), metadata=self.metadata)
        reader = asyncio.create_task(self._read(call))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            call.cancel()
            stopper.cancel()
            for t in (reader, stopper, *self._calls):
                t.cancel()
            for t in (reader, stopper, *self._calls):
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await t
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.stub.Logout(
                    agent_pb2.LogoutRequest(agent_id=self.agent_id), metadata=self.metadata
                )
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]
        return self.stats

    async def _read(self, call: Any) -> None:
        async for msg in call:
            if msg.HasField("status"):
                self.connected.set()
            elif msg.call_ended:
                self._hangups.setdefault(msg.call_ended, asyncio.Event()).set()
            elif msg.HasField("preview"):
                self.stats.previews += 1
                task = asyncio.create_task(self._preview(msg.preview))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
            elif msg.HasField("offer"):
                self.stats.offers += 1
                offer = msg.offer
                if offer.HasField("offered_at"):
                    now = datetime.now(UTC)
                    self.stats.handover_s.append(
                        (now - offer.offered_at.ToDatetime(tzinfo=UTC)).total_seconds()
                    )
                if self.on_offer is not None:
                    self.on_offer(self.agent_id, offer)
                task = asyncio.create_task(self._handle(offer))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)

    async def _preview(self, preview: agent_pb2.PreviewOffer) -> None:
        """Look at the lead for a think time, then dial it or (sometimes) skip it. A preview that timed out
        first was decided for the agent; the service answers with that decision."""
        await asyncio.sleep(self.think.sample(self.rng))
        skip = self.rng.random() < self.p_skip
        want = agent_pb2.PREVIEW_DECISION_SKIP if skip else agent_pb2.PREVIEW_DECISION_DIAL
        try:
            resp = await self.stub.DecidePreview(
                agent_pb2.DecidePreviewRequest(
                    agent_id=self.agent_id, call_id=preview.call_id, decision=want
                ),
                metadata=self.metadata,
            )
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
                    await self.stub.EndCall(
                        agent_pb2.EndCallRequest(agent_id=self.agent_id, call_id=offer.call_id),
                        metadata=self.metadata,
                    )
                except grpc.aio.AioRpcError as exc:
                    # Ended on the far side at the same moment: wrap up and disposition all the same.
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        raise
            self.stats.ended += 1
            await asyncio.sleep(self.wrap.sample(self.rng))
            dispo = self.rng.choices(self.dispo_names, self.dispo_weights)[0]
            req = agent_pb2.SetDispositionRequest(
                agent_id=self.agent_id, call_id=offer.call_id, disposition=dispo
            )
            if dispo == "callback":
                req.callback_at.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
            await self.stub.SetDisposition(req, metadata=self.metadata)
            self.stats.dispositions[dispo] += 1
        except grpc.aio.AioRpcError:
            # The offer was withdrawn or the wrap-up timed out first: the agent is ready again either way.
            self.stats.errors += 1
        finally:
            self._hangups.pop(offer.call_id, None)


def agent_token(settings: Settings, agent_id: str) -> str:
    """An agent token minted with the settings' secret (simulators, demos and tests only)."""
    return issue_token(settings.auth_secret, agent_id, Role.AGENT, ttl_seconds=settings.token_ttl_seconds)


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
    think: Distribution | None = None,
    p_skip: float = 0.1,
) -> list[SimulatedAgent]:
    """Run ``count`` simulated agents against ``settings.agent_addr`` until ``stop`` is set."""
    master = random.Random(seed)
    agents: list[SimulatedAgent] = []
    channels: list[grpc.aio.Channel] = []
    for i in range(count):
        agent_id = f"{prefix}-{i + 1:04d}"
        token = agent_token(settings, agent_id)
        ch = open_channel(settings, settings.agent_addr, lambda t=token: t)  # type: ignore[misc]
        channels.append(ch)
        agents.append(
            SimulatedAgent(
                ch,
                token,
                agent_id,
                campaigns,
                talk=talk,
                wrap=wrap,
                rng=random.Random(master.random()),
                dispositions=dispositions,
                on_offer=on_offer,
                think=think,
                p_skip=p_skip,
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
        for t in tasks:
            t.cancel()
        for ch in channels:
            await ch.close()
    return agents
