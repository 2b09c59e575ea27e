"""gRPC glue of the gateway: protobuf ↔ :mod:`.engine`, nothing else (errors map through the core table)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from outdial.gateway.engine import Gateway, GatewayEvent, Kind
from outdial.v1 import gateway_pb2 as pb
from outdial.v1 import gateway_pb2_grpc

_KINDS = {
    Kind.RINGING: pb.GATEWAY_EVENT_KIND_RINGING,
    Kind.ANSWERED: pb.GATEWAY_EVENT_KIND_ANSWERED,
    Kind.NO_ANSWER: pb.GATEWAY_EVENT_KIND_NO_ANSWER,
    Kind.BUSY: pb.GATEWAY_EVENT_KIND_BUSY,
    Kind.FAILED: pb.GATEWAY_EVENT_KIND_FAILED,
    Kind.INVALID_NUMBER: pb.GATEWAY_EVENT_KIND_INVALID_NUMBER,
    Kind.DTMF: pb.GATEWAY_EVENT_KIND_DTMF,
    Kind.MESSAGE_DONE: pb.GATEWAY_EVENT_KIND_MESSAGE_DONE,
    Kind.ENDED: pb.GATEWAY_EVENT_KIND_ENDED,
    Kind.AGENT_LEG_UP: pb.GATEWAY_EVENT_KIND_AGENT_LEG_UP,
    Kind.AGENT_LEG_DOWN: pb.GATEWAY_EVENT_KIND_AGENT_LEG_DOWN,
}


def to_proto(ev: GatewayEvent) -> pb.StreamCallEventsResponse:
    msg = pb.StreamCallEventsResponse(
        call_id=ev.call_id,
        kind=_KINDS[ev.kind],
        at_ms=ev.at_ms,
        answer=ev.answer,
        reason=ev.reason,
        digit=ev.digit,
        sip_status=ev.sip_status,
        agent_id=ev.agent_id,
    )
    if ev.recording is not None:
        path, duration_ms, sha = ev.recording
        msg.recording.CopyFrom(pb.Recording(path=path, duration_ms=duration_ms, sha256=sha))
    return msg


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def Originate(
        self, request: pb.OriginateRequest, context: grpc.aio.ServicerContext
    ) -> pb.OriginateResponse:  # type: ignore[override]
        await self.gw.originate(
            request.call_id,
            request.number,
            request.caller_id,
            request.ring_timeout_s,
            request.owner,
            campaign_id=request.campaign_id,
            identity=request.identity,
            record=request.record,
            recording_notice=request.recording_notice,
        )
        return pb.OriginateResponse()

    async def CancelCall(
        self, request: pb.CancelCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelCallResponse:  # type: ignore[override]
        await self.gw.cancel(request.call_id)
        return pb.CancelCallResponse()

    async def HangupCall(
        self, request: pb.HangupCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.HangupCallResponse:  # type: ignore[override]
        await self.gw.hangup(request.call_id)
        return pb.HangupCallResponse()

    async def PlayPrompt(
        self, request: pb.PlayPromptRequest, context: grpc.aio.ServicerContext
    ) -> pb.PlayPromptResponse:  # type: ignore[override]
        ms = await self.gw.play(request.call_id, text=request.text, audio_file=request.audio_file)
        return pb.PlayPromptResponse(duration_ms=ms)

    async def BridgeCall(
        self, request: pb.BridgeCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.BridgeCallResponse:  # type: ignore[override]
        return pb.BridgeCallResponse(bridged=await self.gw.bridge(request.call_id, request.agent_id))

    async def OpenAgentLeg(
        self, request: pb.OpenAgentLegRequest, context: grpc.aio.ServicerContext
    ) -> pb.OpenAgentLegResponse:  # type: ignore[override]
        leg_id = await self.gw.open_agent_leg(request.agent_id, request.contact_uri)
        return pb.OpenAgentLegResponse(leg_id=leg_id)

    async def CloseAgentLeg(
        self, request: pb.CloseAgentLegRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseAgentLegResponse:  # type: ignore[override]
        await self.gw.close_agent_leg(request.agent_id)
        return pb.CloseAgentLegResponse()

    async def ListCalls(
        self, request: pb.ListCallsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCallsResponse:  # type: ignore[override]
        return pb.ListCallsResponse(call_ids=self.gw.calls_of(request.owner))

    async def StreamCallEvents(  # type: ignore[override]
        self, request: pb.StreamCallEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCallEventsResponse]:
        q = self.gw.queue(request.owner)
        # One reader per owner: a reconnecting dialer takes the feed over (events queued meanwhile are kept).
        while True:
            ev = await q.get()
            try:
                yield to_proto(ev)
            except (asyncio.CancelledError, GeneratorExit):
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait(ev)  # not delivered: the next reader gets it (order kept by call)
                raise

    async def GetGatewayStatus(
        self, request: pb.GetGatewayStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetGatewayStatusResponse:  # type: ignore[override]
        gw = self.gw
        return pb.GetGatewayStatusResponse(
            trunk_state=gw.health.state,
            media_reachable=gw.media_up,
            calls_in_flight=gw.in_flight(),
            max_calls=gw.trunk.max_calls,
            calls_per_second=gw.trunk.cps,
            registered_phones=len(gw.registrations),
            agent_legs=sum(1 for leg in gw.legs.values() if leg.state == "up"),
            accepting_calls=gw.accepting(),
        )
