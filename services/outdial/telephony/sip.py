"""The SIP telephony adapter: the dialer's :class:`TelephonyAdapter` as a gRPC client of the gateway
(``outdial.gateway``), which holds the SIP dialogs and the media.

Each adapter has an owner id (its dialer replica); the gateway sends it the events of the calls it placed, on
one server stream that the adapter keeps open (reconnecting with backoff and jitter). When the stream comes
back, the adapter asks which of its calls the gateway still holds (``ListCalls``): a call the gateway no
longer knows (it was restarted) is reported ``failed``/``ended`` (reason ``gateway_lost``), so no call stays
open in the dialer for good.

Commands that the gateway refuses because it cannot place the call now (rtpengine down, trunk degraded or
full) raise :class:`TelephonyUnavailable`; :meth:`ready` tells the dialer whether to launch at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator

import grpc

from outdial.core.clock import Clock, SystemClock
from outdial.telephony.base import (
    MIN_RING_TIMEOUT_S,
    Answer,
    CallEvent,
    EventKind,
    OriginateOptions,
    TelephonyAdapter,
)
from outdial.v1 import gateway_pb2 as pb
from outdial.v1 import gateway_pb2_grpc

log = logging.getLogger("outdial.telephony.sip")

_KINDS = {
    pb.GATEWAY_EVENT_KIND_RINGING: EventKind.RINGING,
    pb.GATEWAY_EVENT_KIND_ANSWERED: EventKind.ANSWERED,
    pb.GATEWAY_EVENT_KIND_NO_ANSWER: EventKind.NO_ANSWER,
    pb.GATEWAY_EVENT_KIND_BUSY: EventKind.BUSY,
    pb.GATEWAY_EVENT_KIND_FAILED: EventKind.FAILED,
    pb.GATEWAY_EVENT_KIND_INVALID_NUMBER: EventKind.FAILED,
    pb.GATEWAY_EVENT_KIND_DTMF: EventKind.DTMF,
    pb.GATEWAY_EVENT_KIND_MESSAGE_DONE: EventKind.MESSAGE_DONE,
    pb.GATEWAY_EVENT_KIND_ENDED: EventKind.ENDED,
}
#: The reason a failed call carries when the number does not exist (the campaign closes it).
INVALID_NUMBER = "invalid_number"


class TelephonyUnavailable(RuntimeError):
    """The gateway cannot place calls now (unreachable, media down, trunk degraded or full)."""


def to_event(msg: pb.StreamCallEventsResponse, offset_ms: int = 0) -> CallEvent | None:
    kind = _KINDS.get(msg.kind)
    if kind is None:
        return None
    reason = msg.reason
    if msg.kind == pb.GATEWAY_EVENT_KIND_INVALID_NUMBER:
        reason = INVALID_NUMBER
    answer = None
    if kind is EventKind.ANSWERED:
        answer = Answer.MACHINE if msg.answer == "machine" else Answer.HUMAN
    recording = None
    if msg.HasField("recording") and msg.recording.path:
        recording = (msg.recording.path, int(msg.recording.duration_ms), msg.recording.sha256)
    return CallEvent(
        msg.call_id,
        kind,
        msg.at_ms + offset_ms,
        answer=answer,
        reason=reason,
        digit=msg.digit,
        recording=recording,
    )


class SipTelephonyAdapter(TelephonyAdapter):
    def __init__(
        self,
        channel: grpc.aio.Channel,
        owner: str,
        *,
        identity: str = "",
        rpc_timeout_s: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        # The gateway stamps events with real time; the dialer's clock may be shifted (demos, tests): events
        # are moved onto the dialer's clock so that answer times and the 2-second rule line up.
        self.clock = clock or SystemClock()
        self.stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.channel = channel
        self.owner = owner
        self.identity = identity
        self.rpc_timeout_s = rpc_timeout_s
        self._events: asyncio.Queue[CallEvent] = asyncio.Queue()
        self._mine: dict[str, float] = {}  # call id -> when originated (monotonic)
        self._abandon_audio: dict[str, str] = {}  # call id -> the campaign's recorded abandonment message
        self._stream_task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._accepting = False
        self.status_interval_s = 0.5
        self._connected = False
        self._unavailable_until = 0.0
        self._closed = False

    # --- the event stream -------------------------------------------------------------------------------------

    def _ensure_stream(self) -> None:
        if self._stream_task is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._stream_task = loop.create_task(self._follow(), name="sip-events")
            self._status_task = loop.create_task(self._watch_status(), name="sip-status")

    async def _follow(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                stream = self.stub.StreamCallEvents(pb.StreamCallEventsRequest(owner=self.owner))
                await self._reconcile()
                self._connected = True
                delay = 0.1
                async for msg in stream:
                    ev = to_event(msg, self._offset_ms())
                    if ev is None:
                        continue
                    if ev.kind is EventKind.ENDED:
                        self._mine.pop(ev.call_id, None)
                        self._abandon_audio.pop(ev.call_id, None)
                    self._events.put_nowait(ev)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED and self._closed:
                    return
                log.warning("gateway event stream lost (%s): reconnecting", exc.code().name)
            self._connected = False
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(5.0, delay * 2)

    async def _reconcile(self) -> None:
        """Calls of ours the gateway no longer holds ended (the gateway restarted): say so, once."""
        if not self._mine:
            return
        res = await self.stub.ListCalls(pb.ListCallsRequest(owner=self.owner), timeout=self.rpc_timeout_s)
        held = set(res.call_ids)
        now_ms = int(self.clock.now().timestamp() * 1000)
        for call_id, since in list(self._mine.items()):
            if call_id in held or time.monotonic() - since < 1.0:
                continue
            self._mine.pop(call_id, None)
            log.warning("call %s: the gateway no longer holds it (restarted): ended", call_id)
            self._events.put_nowait(CallEvent(call_id, EventKind.FAILED, now_ms, reason="gateway_lost"))
            self._events.put_nowait(CallEvent(call_id, EventKind.ENDED, now_ms, reason="gateway_lost"))

    def _offset_ms(self) -> int:
        return round((self.clock.now().timestamp() - time.time()) * 1000)

    # --- commands ---------------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """False while the gateway is unreachable, says it places no call now (media down, trunk backing
        off or full), or refused a call a moment ago: the dialer launches nothing meanwhile."""
        self._ensure_stream()
        return self._connected and self._accepting and time.monotonic() >= self._unavailable_until

    async def _watch_status(self) -> None:
        while not self._closed:
            try:
                st = await self.stub.GetGatewayStatus(pb.GetGatewayStatusRequest(), timeout=2.0)
                if st.accepting_calls != self._accepting:
                    log.warning(
                        "gateway %s calls (trunk %s, media %s)",
                        "accepts" if st.accepting_calls else "REFUSES",
                        st.trunk_state,
                        "up" if st.media_reachable else "DOWN",
                    )
                self._accepting = st.accepting_calls
            except grpc.aio.AioRpcError:
                self._accepting = False
            await asyncio.sleep(self.status_interval_s)

    async def originate(
        self,
        call_id: str,
        number: str,
        caller_id: str,
        ring_timeout_s: float,
        options: OriginateOptions | None = None,
    ) -> None:
        self._ensure_stream()
        opts = options or OriginateOptions()
        if opts.abandon_recording:
            self._abandon_audio[call_id] = opts.abandon_recording
        self._mine[call_id] = time.monotonic()
        try:
            await self.stub.Originate(
                pb.OriginateRequest(
                    call_id=call_id,
                    number=number,
                    caller_id=caller_id,
                    ring_timeout_s=max(ring_timeout_s, MIN_RING_TIMEOUT_S),
                    owner=self.owner,
                    identity=self.identity,
                    campaign_id=opts.campaign_id,
                    record=opts.record,
                    recording_notice=opts.recording_notice,
                ),
                timeout=self.rpc_timeout_s + 5.0,  # the CPS pacer may hold the INVITE a moment
            )
        except grpc.aio.AioRpcError as exc:
            self._mine.pop(call_id, None)
            self._abandon_audio.pop(call_id, None)
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                self._unavailable_until = time.monotonic() + 1.0
                raise TelephonyUnavailable(f"{exc.code().name}: {exc.details()}") from exc
            raise

    async def _command(self, name: str, request: object) -> object:
        try:
            return await getattr(self.stub, name)(request, timeout=self.rpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None  # the call just ended: its events say so
            raise

    async def cancel(self, call_id: str) -> None:
        await self._command("CancelCall", pb.CancelCallRequest(call_id=call_id))

    async def play_message(self, call_id: str, text: str, audio_file: str = "") -> None:
        await self._command(
            "PlayPrompt", pb.PlayPromptRequest(call_id=call_id, text=text, audio_file=audio_file)
        )

    async def bridge(self, call_id: str, agent_id: str) -> None:
        res = await self._command("BridgeCall", pb.BridgeCallRequest(call_id=call_id, agent_id=agent_id))
        if isinstance(res, pb.BridgeCallResponse) and not res.bridged:
            log.info("call %s: agent %s has no phone leg on the gateway (console only)", call_id, agent_id)

    async def hangup(self, call_id: str) -> None:
        await self._command("HangupCall", pb.HangupCallRequest(call_id=call_id))

    async def events(self) -> AsyncIterator[CallEvent]:  # type: ignore[override]
        self._ensure_stream()
        while True:
            yield await self._events.get()

    async def close(self) -> None:
        self._closed = True
        for call_id in list(self._mine):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.stub.HangupCall(pb.HangupCallRequest(call_id=call_id), timeout=1.0)
        for task in (self._stream_task, self._status_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
