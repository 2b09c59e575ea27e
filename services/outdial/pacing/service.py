"""PacingService gRPC glue: the published pacing state of a campaign, its settings, and a live stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from outdial.core import keys, versions
from outdial.core.auth import current_actor
from outdial.core.errors import InvalidArgument
from outdial.core.redis import Redis
from outdial.pacing.lease import LeaseStore
from outdial.pacing.store import PacingStore
from outdial.rules.law import HIGHEST_ABANDON_CAP, MIN_RING_S, SHORT_WINDOW_CAP
from outdial.v1 import common_pb2, pacing_pb2, pacing_pb2_grpc

_ALGOS = {
    "progressive": pacing_pb2.PACING_ALGORITHM_PROGRESSIVE,
    "power": pacing_pb2.PACING_ALGORITHM_POWER,
    "predictive": pacing_pb2.PACING_ALGORITHM_PREDICTIVE,
}
_NAMES = {v: k for k, v in _ALGOS.items()}
_FIELDS = (
    "algorithm",
    "power_ratio",
    "max_lines_per_agent",
    "ring_timeout",
    "target_abandon_rate",
    "short_window_cap",
    "paused",
)


def settings_to_pb(d: dict[str, Any]) -> pacing_pb2.PacingSettings:
    out = pacing_pb2.PacingSettings(
        algorithm=_ALGOS.get(str(d.get("algorithm") or ""), pacing_pb2.PACING_ALGORITHM_UNSPECIFIED),
        power_ratio=float(d.get("power_ratio") or 0),
        max_lines_per_agent=int(d.get("max_lines_per_agent") or 0),
        target_abandon_rate=float(d.get("target_abandon_rate") or 0),
        short_window_cap=float(d.get("short_window_cap") or 0),
        paused=bool(d.get("paused")),
    )
    if d.get("ring_timeout_s"):
        out.ring_timeout.CopyFrom(Duration(seconds=int(float(d["ring_timeout_s"]))))
    return out


def state_to_pb(
    campaign_id: str, s: dict[str, Any] | None, settings: dict[str, Any]
) -> pacing_pb2.PacingState:
    st = pacing_pb2.PacingState(campaign_id=campaign_id, settings=settings_to_pb(settings))
    if s is None:
        st.fallback_reason = "no replica is dialling this campaign"
        return st
    st.effective_algorithm = _ALGOS.get(
        str(s.get("effective_algorithm")), pacing_pb2.PACING_ALGORITHM_UNSPECIFIED
    )
    st.mode = str(s.get("algorithm") or "")
    st.effective_mode = str(s.get("effective_algorithm") or "")
    st.fallback_reason = str(s.get("reason") or "")
    st.dial_level = float(s.get("dial_level") or 0)
    st.lines_in_flight = int(s.get("lines_in_flight") or 0)
    st.answered_waiting = int(s.get("answered_waiting") or 0)
    a = s.get("agents") or {}
    st.agents.CopyFrom(
        common_pb2.AgentCounts(
            logged_in=int(a.get("logged_in", 0)),
            ready=int(a.get("ready", 0)),
            reserved=int(a.get("reserved", 0)),
            on_call=int(a.get("on_call", 0)),
            wrap_up=int(a.get("wrap_up", 0)),
            paused=int(a.get("paused", 0)),
        )
    )
    e = s.get("estimates") or {}
    st.estimates.CopyFrom(
        pacing_pb2.Estimates(
            live_answer_rate=float(e.get("live_answer_rate", 0)),
            live_answer_rate_stddev=float(e.get("live_answer_rate_sd", 0)),
            mean_answer_delay_s=float(e.get("mean_answer_delay_s", 0)),
            mean_talk_s=float(e.get("mean_talk_s", 0)),
            mean_wrap_s=float(e.get("mean_wrap_s", 0)),
            samples=int(e.get("samples", 0)),
            confident=bool(e.get("confident", False)),
        )
    )
    b = s.get("budget") or {}
    st.budget.CopyFrom(
        pacing_pb2.AbandonBudget(
            cap=float(b.get("cap", 0)),
            window=Duration(seconds=int(b.get("window_s", 0))),
            live_answers=int(b.get("live_answers", 0)),
            abandoned=int(b.get("abandoned", 0)),
            remaining=float(b.get("remaining", 0)),
            rate=float(b.get("rate", 0)),
            rate_60min=float(b.get("rate_60min", 0)),
        )
    )
    st.leader = str(s.get("leader") or "")
    ts = Timestamp()
    ts.FromMilliseconds(int(s.get("updated_at_ms") or 0))
    st.updated_at.CopyFrom(ts)
    st.calls_placed = int(s.get("calls_placed") or 0)
    st.calls_blocked = int(s.get("calls_blocked") or 0)
    st.calls_released = int(s.get("calls_released") or 0)
    st.agent_service_reachable = bool(s.get("agent_service_reachable", True))
    return st


class PacingServicer(pacing_pb2_grpc.PacingServiceServicer):
    def __init__(self, store: PacingStore, redis: Redis, leases: LeaseStore) -> None:
        self.store = store
        self.redis = redis
        self.leases = leases

    async def _state(self, campaign_id: str) -> pacing_pb2.PacingState:
        if not campaign_id:
            raise InvalidArgument("campaign_id is required", field="campaign_id")
        settings = await self.store.load_settings(campaign_id)
        return state_to_pb(campaign_id, await self.store.read_state(campaign_id), settings)

    async def GetPacingState(
        self, request: pacing_pb2.GetPacingStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pacing_pb2.GetPacingStateResponse:
        return pacing_pb2.GetPacingStateResponse(state=await self._state(request.campaign_id))

    async def UpdatePacingSettings(  # noqa: C901 - one check per rule, in order
        self, request: pacing_pb2.UpdatePacingSettingsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pacing_pb2.UpdatePacingSettingsResponse:
        cid = request.campaign_id
        if not cid:
            raise InvalidArgument("campaign_id is required", field="campaign_id")
        paths = list(request.update_mask.paths) or [f for f in _FIELDS if f != "paused"] + ["paused"]
        unknown = [p for p in paths if p not in _FIELDS]
        if unknown:
            raise InvalidArgument(f"unknown settings field(s): {', '.join(unknown)}", field="update_mask")
        s = request.settings
        current = await self.store.load_settings(cid)
        for p in paths:
            if p == "algorithm":
                current["algorithm"] = _NAMES.get(s.algorithm, "")
            elif p == "power_ratio":
                if s.power_ratio and not 1.0 <= s.power_ratio <= 10.0:
                    raise InvalidArgument("power_ratio must be within 1..10", field="settings.power_ratio")
                current["power_ratio"] = s.power_ratio or None
            elif p == "max_lines_per_agent":
                if s.max_lines_per_agent < 0 or s.max_lines_per_agent > 10:
                    raise InvalidArgument(
                        "max_lines_per_agent must be within 1..10", field="settings.max_lines_per_agent"
                    )
                current["max_lines_per_agent"] = s.max_lines_per_agent or None
            elif p == "ring_timeout":
                secs = s.ring_timeout.seconds + s.ring_timeout.nanos / 1e9
                if secs and secs < MIN_RING_S:
                    raise InvalidArgument(
                        f"ring timeout may not be below {MIN_RING_S:g} s", field="settings.ring_timeout"
                    )
                current["ring_timeout_s"] = secs or None
            elif p == "target_abandon_rate":
                if not 0 <= s.target_abandon_rate <= HIGHEST_ABANDON_CAP:
                    raise InvalidArgument(
                        f"target_abandon_rate must be within 0..{HIGHEST_ABANDON_CAP:g}",
                        field="settings.target_abandon_rate",
                    )
                current["target_abandon_rate"] = s.target_abandon_rate or None
            elif p == "short_window_cap":
                if not 0 <= s.short_window_cap <= SHORT_WINDOW_CAP:
                    raise InvalidArgument(
                        f"short_window_cap must be within 0..{SHORT_WINDOW_CAP:g}",
                        field="settings.short_window_cap",
                    )
                current["short_window_cap"] = s.short_window_cap or None
            elif p == "paused":
                current["paused"] = bool(s.paused)
        current = {k: v for k, v in current.items() if v is not None and v != ""}
        await self.store.save_settings(cid, current, current_actor())
        await self.redis.publish(keys.pacing_updates(cid), "settings")
        return pacing_pb2.UpdatePacingSettingsResponse(settings=settings_to_pb(current))

    async def ListPacingSettingsVersions(
        self,
        request: pacing_pb2.ListPacingSettingsVersionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pacing_pb2.ListPacingSettingsVersionsResponse:
        if not request.campaign_id:
            raise InvalidArgument("campaign_id is required", field="campaign_id")
        rows = await self.store.settings_versions(request.campaign_id)
        return pacing_pb2.ListPacingSettingsVersionsResponse(versions=[versions.to_pb(r) for r in rows])

    async def WatchPacing(
        self, request: pacing_pb2.WatchPacingRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pacing_pb2.WatchPacingResponse]:
        """Push the state when it changes (the lease holder and UpdatePacingSettings publish on
        ``keys.pacing_updates``) and at least every ``interval`` (default 5 s) even when nothing changed.
        Between those, the stream waits on the subscription: no polling."""
        interval = request.interval.seconds + request.interval.nanos / 1e9 or 5.0
        interval = max(0.2, interval)
        first = await self._state(request.campaign_id)
        loop = asyncio.get_running_loop()
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(keys.pacing_updates(request.campaign_id))
        try:
            yield pacing_pb2.WatchPacingResponse(state=first)
            last, last_sent = _comparable(first), loop.time()
            while True:
                wait = max(0.0, interval - (loop.time() - last_sent))
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                due = loop.time() - last_sent >= interval
                if msg is None and not due:
                    continue
                st = await self._state(request.campaign_id)
                cmp = _comparable(st)
                if cmp != last or due:
                    yield pacing_pb2.WatchPacingResponse(state=st)
                    last, last_sent = cmp, loop.time()
        finally:
            # aclose() drops the subscription with its connection (also when the client went away).
            await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]


def _comparable(st: pacing_pb2.PacingState) -> pacing_pb2.PacingState:
    cmp = pacing_pb2.PacingState()
    cmp.CopyFrom(st)
    cmp.ClearField("updated_at")
    return cmp
