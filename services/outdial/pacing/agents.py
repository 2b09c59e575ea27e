"""The dialer's client of the agent service: hold an agent before a dial, offer a live answer, give an agent
back, end an agent's call, and whether the service can be reached at all (its gRPC health).

Reachability matters for compliance: agents the dialer reads from Redis may no longer be behind a live
agent service (it was killed, or is rolling). While the service does not answer its health check, or an
RPC to it fails with UNAVAILABLE, the planner sees no agents: nothing is launched, and ringing calls are
released after the legal ring minimum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outdial.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("outdial.pacing.agents")

_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_DECISION_PB = {"dial": agent_pb2.PREVIEW_DECISION_DIAL, "skip": agent_pb2.PREVIEW_DECISION_SKIP}


def duration(seconds: float) -> Duration:
    return Duration(seconds=int(seconds), nanos=int(seconds * 1e9) % 1_000_000_000)


@dataclass(frozen=True, slots=True)
class OfferResult:
    assigned: bool
    agent_id: str = ""
    reason: str = ""


class AgentClient:
    def __init__(
        self, stub: agent_pb2_grpc.AgentServiceStub, health: health_pb2_grpc.HealthStub | None = None
    ) -> None:
        self.stub = stub
        self.health = health
        self.reachable = True
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ reachability

    def start(self) -> None:
        if self.health is not None and self._task is None:
            self._task = asyncio.create_task(self._probe(), name="pacing:agent-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _probe(self) -> None:
        """Health.Watch on the agent service's channel: a stream that breaks the moment the service dies,
        so the dialer stops counting its agents at once (no polling); re-opened with backoff."""
        assert self.health is not None
        backoff = 0.05
        while True:
            try:
                stream = self.health.Watch(health_pb2.HealthCheckRequest(service=""))
                async for resp in stream:
                    self._set(resp.status == health_pb2.HealthCheckResponse.SERVING)
                    backoff = 0.05
                self._set(False)  # the stream ended: the server is going away
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                    # A peer without the health service answers: it is there. Nothing more to watch.
                    self._set(True)
                    return
                self._set(False)
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)

    def _set(self, up: bool) -> None:
        if up != self.reachable:
            log.warning("agent service %s", "reachable again" if up else "unreachable: no agents counted")
        self.reachable = up

    def _saw(self, exc: grpc.aio.AioRpcError) -> None:
        # A deadline on a call says nothing about the service being there; the probe decides then.
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            self.reachable = False

    # ------------------------------------------------------------------ calls

    async def hold(self, campaign_id: str, call_id: str, ttl_s: float) -> str:
        """ReserveAgent for a call about to be dialled: the held agent's id, or "" (nothing is dialled)."""
        req = agent_pb2.ReserveAgentRequest(campaign_id=campaign_id, call_id=call_id, ttl=duration(ttl_s))
        try:
            resp = await self.stub.ReserveAgent(req, timeout=2.0)
        except grpc.aio.AioRpcError as exc:
            self._saw(exc)
            log.warning("campaign %s: ReserveAgent failed (%s): not dialling", campaign_id, exc.code().name)
            return ""
        return str(resp.agent_id) if resp.reserved else ""

    async def release(self, agent_id: str, call_id: str, reason: str) -> None:
        """Give an agent back (idempotent in the agent service; a hold lapses by itself if this fails)."""
        try:
            await self.stub.ReleaseAgent(
                agent_pb2.ReleaseAgentRequest(agent_id=agent_id, call_id=call_id, reason=reason), timeout=2.0
            )
        except grpc.aio.AioRpcError as exc:
            self._saw(exc)
            log.warning("ReleaseAgent %s for call %s failed: %s", agent_id, call_id, exc.code().name)

    async def offer(
        self,
        *,
        campaign_id: str,
        call_id: str,
        lead_id: str,
        number: str,
        lead_name: str,
        lead_fields: dict[str, str],
        answered_at: datetime,
        deadline_s: float,
        reserved_agent_id: str,
    ) -> OfferResult:
        ts = Timestamp()
        ts.FromDatetime(answered_at)
        req = agent_pb2.OfferCallRequest(
            campaign_id=campaign_id,
            call_id=call_id,
            lead_id=lead_id,
            number=number,
            lead_name=lead_name,
            lead_fields=lead_fields,
            answered_at=ts,
            deadline=duration(deadline_s),
            reserved_agent_id=reserved_agent_id,
        )
        # A restarting agent service refuses connections for a moment: retry while the 2 s still allow it.
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline_s
        while True:
            left = until - loop.time()
            try:
                resp = await self.stub.OfferCall(req, timeout=max(0.05, left) + 0.25)
                return OfferResult(bool(resp.assigned), str(resp.agent_id), str(resp.reason))
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE or left < 0.15:
                    self._saw(exc)
                    return OfferResult(False, "", f"agent service: {exc.code().name}")
            await asyncio.sleep(0.05)
            req.deadline.CopyFrom(duration(max(0.05, until - loop.time())))

    # ------------------------------------------------------------------ preview mode

    async def preview(
        self,
        *,
        campaign_id: str,
        call_id: str,
        lead_id: str,
        number: str,
        lead_name: str,
        lead_fields: dict[str, str],
        timeout_s: float,
        timeout_action: str,
        dial_hold_s: float,
    ) -> OfferResult:
        """PreviewLead: a ready agent held and shown the lead (``assigned``), or nobody (nothing to dial)."""
        req = agent_pb2.PreviewLeadRequest(
            campaign_id=campaign_id,
            call_id=call_id,
            lead_id=lead_id,
            number=number,
            lead_name=lead_name,
            lead_fields=lead_fields,
            timeout=duration(timeout_s),
            timeout_action=_DECISION_PB[timeout_action],
            dial_hold=duration(dial_hold_s),
        )
        try:
            resp = await self.stub.PreviewLead(req, timeout=5.0)
        except grpc.aio.AioRpcError as exc:
            self._saw(exc)
            return OfferResult(False, "", f"agent service: {exc.code().name}")
        return OfferResult(bool(resp.previewed), str(resp.agent_id), str(resp.reason))

    async def decide_preview(self, agent_id: str, call_id: str, decision: str) -> str:
        """DecidePreview for a preview that timed out: the decision that stands ("dial" or "skip"; the
        agent's own when they were first), or "" when the agent no longer holds it or the service failed."""
        req = agent_pb2.DecidePreviewRequest(
            agent_id=agent_id, call_id=call_id, decision=_DECISION_PB[decision]
        )
        try:
            resp = await self.stub.DecidePreview(req, timeout=2.0)
        except grpc.aio.AioRpcError as exc:
            self._saw(exc)
            log.warning("DecidePreview for call %s failed: %s", call_id, exc.code().name)
            return ""
        return {v: k for k, v in _DECISION_PB.items()}.get(resp.decision, "")

    async def end_call(self, agent_id: str, call_id: str) -> None:
        """The far side hung up: the agent moves on to wrap-up (they may have ended the call first)."""
        try:
            await self.stub.EndCall(agent_pb2.EndCallRequest(agent_id=agent_id, call_id=call_id), timeout=2.0)
        except grpc.aio.AioRpcError as exc:
            self._saw(exc)
            if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                log.warning("EndCall for agent %s failed: %s", agent_id, exc.code().name)
