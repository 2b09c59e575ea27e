"""The agent desktop's server side: one :class:`Desk` per signed-in agent in this console process.

A desk holds the agent's session with the agent service (:class:`outdial.agent.client.AgentSession`, which
reconnects with backoff and resumes the session) and relays its Connect stream to the agent's browser over
server-sent events. The Connect stream is the agent's presence: it runs while a browser page of the agent is
open, and for :data:`LINGER_S` after the last one closes (a reload), then stops, so an agent who closed the
page is logged out by the agent service's presence grace rather than kept ready with nobody at the desk.
The agent service stays the truth: after a reconnection its stream repeats the status and the call in hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc

from outdial.agent.client import AgentSession, SessionEnded
from outdial.v1 import agent_pb2, common_pb2

log = logging.getLogger("outdial.console.desk")

LINGER_S = 15.0
STATE_NAMES = {v: k.removeprefix("AGENT_STATE_").lower() for k, v in common_pb2.AgentState.items()}


@dataclass
class DeskView:
    """What the page shows, as plain values (rendered by templates/_desk.html)."""

    state: str = "logged_out"
    since: str = ""
    pause_reason: str = ""
    campaigns: list[str] = field(default_factory=list)
    offer: dict[str, object] | None = None
    preview: dict[str, object] | None = None
    ended: str = ""
    notes: list[str] = field(default_factory=list)


def _offer_view(o: agent_pb2.CallOffer | agent_pb2.PreviewOffer) -> dict[str, object]:
    view: dict[str, object] = {
        "call_id": o.call_id,
        "campaign_id": o.campaign_id,
        "lead_id": o.lead_id,
        "number": o.number,
        "lead_name": o.lead_name,
        "fields": sorted(o.lead_fields.items()),
    }
    if isinstance(o, agent_pb2.CallOffer) and o.HasField("answered_at"):
        view["answered_at"] = o.answered_at.ToDatetime(tzinfo=UTC).isoformat()
    if isinstance(o, agent_pb2.PreviewOffer) and o.HasField("decide_by"):
        view["decide_by"] = o.decide_by.ToDatetime(tzinfo=UTC).isoformat()
    return view


class Desk:
    def __init__(self, agent: AgentSession, on_close: Callable[[Desk], None]) -> None:
        self.agent = agent
        self.agent_id = agent.agent_id
        self.view = DeskView()
        self._notes: deque[str] = deque(maxlen=8)
        self._listeners: set[asyncio.Queue[DeskView]] = set()
        self._pump: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._on_close = on_close
        self.closed = False

    def note(self, text: str) -> None:
        self._notes.appendleft(f"{datetime.now(UTC).strftime('%H:%M:%S')} {text}")
        self.view.notes = list(self._notes)
        self._publish()

    def set_status(self, st: agent_pb2.AgentStatus) -> None:
        v = self.view
        v.state = STATE_NAMES.get(st.state, "unknown")
        v.since = st.since.ToDatetime(tzinfo=UTC).isoformat() if st.HasField("since") else ""
        v.pause_reason = st.pause_reason
        v.campaigns = [c.campaign_id for c in st.campaigns]
        if st.state in (common_pb2.AGENT_STATE_READY, common_pb2.AGENT_STATE_PAUSED):
            v.offer = None  # no call in hand for the service (ended, or taken away)
        if st.state != common_pb2.AGENT_STATE_RESERVED:
            v.preview = None
        self._publish()

    def _publish(self) -> None:
        for q in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(self.view)

    def attach(self) -> asyncio.Queue[DeskView]:
        """A browser page opened the desk's event stream: the Connect stream runs while one is attached."""
        q: asyncio.Queue[DeskView] = asyncio.Queue(maxsize=64)
        self._listeners.add(q)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run(), name=f"desk:{self.agent_id}")
        q.put_nowait(self.view)
        return q

    def detach(self, q: asyncio.Queue[DeskView]) -> None:
        self._listeners.discard(q)
        if not self._listeners and self._pump is not None and not self._pump.done():
            self._linger = asyncio.get_running_loop().call_later(LINGER_S, self._stop_pump)

    def _stop_pump(self) -> None:
        self._linger = None
        if not self._listeners and self._pump is not None:
            self._pump.cancel()

    async def _run(self) -> None:
        try:
            async for msg in self.agent.events():
                if msg.HasField("status"):
                    self.set_status(msg.status)
                elif msg.HasField("offer"):
                    if self.view.offer is None or self.view.offer["call_id"] != msg.offer.call_id:
                        self.view.offer = _offer_view(msg.offer)
                        self.note(f"call from {msg.offer.lead_name or msg.offer.number}")
                    else:
                        self._publish()
                elif msg.HasField("preview"):
                    self.view.preview = _offer_view(msg.preview)
                    self.note(f"preview of {msg.preview.lead_name or msg.preview.number}")
                elif msg.HasField("preview_decided"):
                    d = msg.preview_decided
                    word = "dialling" if d.decision == agent_pb2.PREVIEW_DECISION_DIAL else "skipped"
                    self.view.preview = None
                    self.note(f"preview {word} ({d.by})")
                elif msg.call_ended:
                    self.note("the customer hung up")
        except SessionEnded as ended:
            self.view.ended = (
                "You were logged out."
                if ended.reason == "logged_out"
                else "Your session was taken over by another console."
            )
            self.view.state = "logged_out"
            self._publish()
            self.close()
        except grpc.aio.AioRpcError as exc:
            self.view.ended = f"The agent service refused the session: {exc.details() or exc.code().name}"
            self._publish()
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
        self._on_close(self)

    async def shutdown(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        await self.agent.close()
