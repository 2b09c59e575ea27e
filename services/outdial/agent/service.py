"""gRPC glue of the agent service: protobuf <-> domain, permission checks, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import grpc

from outdial.agent.followups import CALLBACK, DO_NOT_CALL, Followups
from outdial.agent.hub import Hub
from outdial.agent.settings import AgentSettings
from outdial.agent.store import (
    AgentRedis,
    Assignments,
    Dispositions,
    Timeline,
    Transition,
    call_event,
    connected_call,
    ms_to_dt,
)
from outdial.core import keys
from outdial.core.auth import Role, agent_may_act_for, current_actor, current_principal
from outdial.core.clock import Clock
from outdial.core.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from outdial.core.metrics import OFFER_SECONDS, OFFERS
from outdial.v1 import agent_pb2, agent_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc


def _session_gone(agent_id: str) -> FailedPrecondition:
    return FailedPrecondition(f"agent {agent_id} is not logged in", error_id="not_logged_in")


#: While waiting for a ready agent, look again at least this often (agents on other replicas).
_READY_RECHECK_S = 0.25
#: ... and stop waiting this long before the deadline, so the answer itself arrives in time.
_ANSWER_MARGIN_S = 0.02

log = logging.getLogger("outdial.agent")

STATE_TO_PB = {
    "logged_out": common_pb2.AGENT_STATE_LOGGED_OUT,
    "ready": common_pb2.AGENT_STATE_READY,
    "reserved": common_pb2.AGENT_STATE_RESERVED,
    "on_call": common_pb2.AGENT_STATE_ON_CALL,
    "wrap_up": common_pb2.AGENT_STATE_WRAP_UP,
    "paused": common_pb2.AGENT_STATE_PAUSED,
}
COUNT_FIELDS = ("ready", "reserved", "on_call", "wrap_up", "paused")
DECISION_TO_PB: dict[str, agent_pb2.PreviewDecision.ValueType] = {
    "dial": agent_pb2.PREVIEW_DECISION_DIAL,
    "skip": agent_pb2.PREVIEW_DECISION_SKIP,
}
PB_TO_DECISION = {v: k for k, v in DECISION_TO_PB.items()}
#: Most agents one AssignAgents / UnassignAgents names; most rows ListAssignments returns.
MAX_ASSIGN_BATCH = 1000
MAX_ASSIGNMENT_ROWS = 10_000
MAX_HISTORY_ROWS = 1000
#: Campaign and agent ids: printable, no spaces, bounded (they become Redis key parts and SQL values).
MAX_ID_LEN = 200


# WatchAgents: changes within this long go out as one listing; a listing at least this often regardless.
WATCH_COALESCE_S = 0.2
WATCH_RESYNC_S = 10.0


def _agent_id(requested: str) -> str:
    """The agent the caller acts for: agents only for themselves (auth.agent_may_act_for)."""
    principal = current_principal()
    agent_id = requested.strip() or (principal.subject if principal.role is Role.AGENT else "")
    if not agent_id:
        raise InvalidArgument("agent_id is required", field="agent_id")
    if not agent_may_act_for(principal, agent_id):
        raise PermissionDenied(f"an agent may act only for themselves, not {agent_id!r}", error_id="not_self")
    return agent_id


def _id(value: str, field: str) -> str:
    v = value.strip()
    if not v:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(v) > MAX_ID_LEN or not v.isprintable() or any(c.isspace() for c in v):
        raise InvalidArgument(
            f"{field} must be at most {MAX_ID_LEN} printable characters without spaces", field=field
        )
    return v


def _agent_ids(values: Any) -> list[str]:
    ids = sorted({_id(a, "agent_ids") for a in values})
    if not ids:
        raise InvalidArgument("name at least one agent", field="agent_ids")
    if len(ids) > MAX_ASSIGN_BATCH:
        raise InvalidArgument(f"at most {MAX_ASSIGN_BATCH} agents per call", field="agent_ids")
    return ids


def status_pb(agent_id: str, h: dict[str, str]) -> agent_pb2.AgentStatus:
    state = h.get("state") or "logged_out"
    st = agent_pb2.AgentStatus(
        agent_id=agent_id,
        state=STATE_TO_PB.get(state, common_pb2.AGENT_STATE_UNSPECIFIED),
        skills=json.loads(h.get("skills") or "[]"),
        pause_reason=h.get("reason", "") if state == "paused" else "",
        call_id=h.get("call_id", ""),
        session_id=h.get("session_id", ""),
    )
    if h.get("since_ms"):
        st.since.FromMilliseconds(int(h["since_ms"]))
    for c in json.loads(h.get("campaigns") or "[]"):
        st.campaigns.add(campaign_id=str(c["id"]), priority=int(c.get("priority", 0)))
    return st


def offer_pb(o: dict[str, Any]) -> agent_pb2.CallOffer:
    pb = agent_pb2.CallOffer(
        call_id=str(o.get("call_id", "")),
        campaign_id=str(o.get("campaign_id", "")),
        lead_id=str(o.get("lead_id", "")),
        number=str(o.get("number", "")),
        lead_name=str(o.get("lead_name", "")),
        lead_fields={str(k): str(v) for k, v in (o.get("lead_fields") or {}).items()},
    )
    if o.get("answered_at_ms"):
        pb.answered_at.FromMilliseconds(int(o["answered_at_ms"]))
    if o.get("offered_at_ms"):
        pb.offered_at.FromMilliseconds(int(o["offered_at_ms"]))
    return pb


def preview_pb(o: dict[str, Any]) -> agent_pb2.PreviewOffer:
    pb = agent_pb2.PreviewOffer(
        call_id=str(o.get("call_id", "")),
        campaign_id=str(o.get("campaign_id", "")),
        lead_id=str(o.get("lead_id", "")),
        number=str(o.get("number", "")),
        lead_name=str(o.get("lead_name", "")),
        lead_fields={str(k): str(v) for k, v in (o.get("lead_fields") or {}).items()},
        timeout_action=DECISION_TO_PB.get(
            str(o.get("timeout_action", "")), agent_pb2.PREVIEW_DECISION_UNSPECIFIED
        ),
    )
    if o.get("offered_at_ms"):
        pb.offered_at.FromMilliseconds(int(o["offered_at_ms"]))
    if o.get("decide_by_ms"):
        pb.decide_by.FromMilliseconds(int(o["decide_by_ms"]))
    return pb


def offer_of(request: agent_pb2.OfferCallRequest) -> dict[str, Any]:
    """The offer an agent is shown, as the transition script stores and publishes it."""
    offer: dict[str, Any] = {
        "call_id": request.call_id,
        "campaign_id": request.campaign_id,
        "lead_id": request.lead_id,
        "number": request.number,
        "lead_name": request.lead_name,
        "answered_at_ms": request.answered_at.ToMilliseconds() if request.HasField("answered_at") else 0,
    }
    if request.lead_fields:
        offer["lead_fields"] = dict(request.lead_fields)  # never empty: cjson would make it a list
    return offer


def preview_decided_pb(msg: dict[str, Any]) -> agent_pb2.PreviewDecided:
    return agent_pb2.PreviewDecided(
        call_id=str(msg.get("call_id", "")),
        decision=DECISION_TO_PB.get(str(msg.get("decision", "")), agent_pb2.PREVIEW_DECISION_UNSPECIFIED),
        by=str(msg.get("by", "")),
    )


def shown_pb(msg: dict[str, Any]) -> agent_pb2.ConnectResponse:
    """What the console is shown of an offer: a call (``offer``) or a lead before any dial (``preview``)."""
    if msg.get("type") == "preview":
        return agent_pb2.ConnectResponse(preview=preview_pb(msg))
    return agent_pb2.ConnectResponse(offer=offer_pb(msg))


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        *,
        cfg: AgentSettings,
        store: AgentRedis,
        hub: Hub,
        timeline: Timeline,
        dispositions: Dispositions,
        followups: Followups,
        assignments: Assignments,
        replica_id: str,
        clock: Clock,
        gateway: Callable[[], gateway_pb2_grpc.GatewayServiceStub] | None = None,
    ) -> None:
        self.gateway = gateway
        self.assignments = assignments
        self.cfg = cfg
        self.clock = clock
        self.store = store
        self.hub = hub
        self.timeline = timeline
        self.dispositions = dispositions
        self.followups = followups
        self.replica_id = replica_id
        self._acks_template = keys.agent_key_template("acks")
        self._hangups_template = keys.agent_key_template("hangups")
        self._bg: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ helpers

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def close(self) -> None:
        """On shutdown: let the short clean-up tasks (stream closed, call events) finish, briefly."""
        pending = list(self._bg)
        if pending:
            _, late = await asyncio.wait(pending, timeout=2.0)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late)

    async def _status(self, agent_id: str) -> agent_pb2.AgentStatus:
        return status_pb(agent_id, await self.store.agent(agent_id))

    @staticmethod
    def _check(tr: Transition, action: str) -> None:
        if tr.status == "not_found":
            raise FailedPrecondition(f"agent {tr.agent_id} is not logged in", error_id="not_logged_in")
        if tr.status == "bad_state":
            raise FailedPrecondition(
                f"cannot {action} while {tr.prev_state or 'logged_out'}",
                error_id=f"{tr.status}_{tr.prev_state}",
            )

    async def _released(self, tr: Transition) -> None:
        """The agent held a reservation when they went away: wake the OfferCall that waits on it."""
        if tr.changed and tr.prev_state == "reserved" and tr.extra:
            await self.store.publish_ack(tr.extra, "released", tr.call_id, tr.agent_id)

    # ------------------------------------------------------------------ sessions and states

    async def Login(
        self, request: agent_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.LoginResponse:  # type: ignore[override]
        agent_id = _agent_id(request.agent_id)
        seen: dict[str, int] = {}
        for m in request.campaigns:
            cid = m.campaign_id.strip()
            if not cid:
                raise InvalidArgument("campaign_id must not be empty", field="campaigns")
            seen[cid] = max(min(int(m.priority), 99), 0)
        if not seen:
            raise InvalidArgument("log in to at least one campaign", field="campaigns")
        await self._check_assigned(agent_id, list(seen))
        campaigns = [{"id": cid, "priority": p} for cid, p in seen.items()]
        skills = sorted({s.strip() for s in request.skills if s.strip()})
        if request.phone.strip():
            await self._open_phone(agent_id, request.phone.strip())
        tr = await self.store.run(
            "login",
            agent_id,
            json.dumps(campaigns),
            json.dumps(skills),
            uuid.uuid4().hex,
            await self._open_call_offer(agent_id),
        )
        session_id = tr.extra
        await self.store.touch_presence(agent_id, session_id, self.cfg.heartbeat_timeout_s)
        if tr.status == "resumed":
            # Logged in already (their console crashed or was started again): the same session goes on,
            # in the same state and call. Not a new login.
            log.info("agent %s took their session back (%s)", agent_id, tr.prev_state)
        else:
            self.timeline.record(tr, "login", session_id)
        # An assignment removed between the check and the login (its UnassignAgents found no session to
        # change): taken out of the session now, as UnassignAgents would have.
        gone = sorted(set(seen) - await self.assignments.assigned(agent_id, list(seen)))
        for cid in gone:
            await self._drop_campaign(agent_id, cid)
        if gone and len(gone) == len(seen):
            raise PermissionDenied(
                f"agent {agent_id} is not assigned to campaign {gone[0]}", error_id="not_assigned"
            )
        resp = agent_pb2.LoginResponse(session_id=session_id, status=await self._status(agent_id))
        resp.heartbeat_interval.FromMilliseconds(int(self.cfg.heartbeat_interval_s * 1000))
        return resp

    async def _open_call_offer(self, agent_id: str) -> str:
        """The connected call PostgreSQL has open for this agent, as offer JSON ('' = none). Only the login
        script uses it, and only when Redis knows no session and no held call for the agent (Redis lost its
        data): the agent is then put back on that call until the dialer ends it, never offered a second."""
        offer = await connected_call(self.assignments.pool, agent_id)
        return json.dumps(offer) if offer else ""

    async def _check_assigned(self, agent_id: str, campaign_ids: list[str]) -> None:
        """Login only to campaigns a manager assigned the agent to (AssignAgents)."""
        missing = sorted(set(campaign_ids) - await self.assignments.assigned(agent_id, campaign_ids))
        if missing:
            which = "campaign " + missing[0] if len(missing) == 1 else "campaigns " + ", ".join(missing)
            raise PermissionDenied(
                f"agent {agent_id} is not assigned to {which}: a manager assigns agents "
                f"(outdial agent assign CAMPAIGN AGENT)",
                error_id="not_assigned",
            )

    async def _drop_campaign(self, agent_id: str, campaign_id: str) -> bool:
        """Take an unassigned campaign out of the agent's running session; True when it had it."""
        tr = await self.store.run("unassign", agent_id, campaign_id)
        if tr.changed:  # their last campaign, and idle: logged out
            self.timeline.record(tr, "unassigned")
            await self.store.redis.delete(keys.agent_presence(agent_id))
            await self._close_phone(agent_id)
            await self._released(tr)
        return tr.status in ("ok", "updated")

    # ------------------------------------------------------------------ assignments

    async def AssignAgents(
        self, request: agent_pb2.AssignAgentsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AssignAgentsResponse:  # type: ignore[override]
        cid = _id(request.campaign_id, "campaign_id")
        ids = _agent_ids(request.agent_ids)
        added = await self.assignments.assign(cid, ids, current_actor(), self.clock.now())
        log.info(
            "agents assigned to campaign %s by %s: %s", cid, current_actor(), ", ".join(added) or "none new"
        )
        return agent_pb2.AssignAgentsResponse(assigned=len(added), already_assigned=len(ids) - len(added))

    async def UnassignAgents(
        self, request: agent_pb2.UnassignAgentsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.UnassignAgentsResponse:  # type: ignore[override]
        cid = _id(request.campaign_id, "campaign_id")
        ids = _agent_ids(request.agent_ids)
        removed = await self.assignments.unassign(cid, ids, current_actor(), self.clock.now())
        # After the commit: a Login racing with this either sees the row gone, or logged in before the
        # session change below (Login checks again after its own session change).
        changed = [a for a in ids if await self._drop_campaign(a, cid)]
        log.info(
            "agents unassigned from campaign %s by %s: %s", cid, current_actor(), ", ".join(removed) or "none"
        )
        return agent_pb2.UnassignAgentsResponse(
            unassigned=len(removed), not_assigned=len(ids) - len(removed), sessions_changed=changed
        )

    async def ListAssignments(
        self, request: agent_pb2.ListAssignmentsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListAssignmentsResponse:  # type: ignore[override]
        principal = current_principal()
        agent_id = request.agent_id.strip()
        if principal.role is Role.AGENT:
            # An agent sees only their own assignments.
            agent_id = _agent_id(agent_id)
        cid = request.campaign_id.strip()
        resp = agent_pb2.ListAssignmentsResponse()
        for row in await self.assignments.current(cid, agent_id, MAX_ASSIGNMENT_ROWS):
            a = resp.assignments.add(
                campaign_id=row.campaign_id, agent_id=row.agent_id, assigned_by=row.assigned_by
            )
            a.assigned_at.FromDatetime(row.assigned_at)
        if request.history:
            for ch in await self.assignments.history(cid, agent_id, MAX_HISTORY_ROWS):
                h = resp.history.add(
                    campaign_id=ch.campaign_id, agent_id=ch.agent_id, action=ch.action, actor=ch.actor
                )
                h.at.FromDatetime(ch.at)
        return resp

    async def Logout(
        self, request: agent_pb2.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.LogoutResponse:  # type: ignore[override]
        agent_id = _agent_id(request.agent_id)
        principal = current_principal()
        if principal.subject == agent_id:
            reason = "logout"
        else:
            why = request.reason.strip()
            if not why and principal.role is not Role.SERVICE:
                raise InvalidArgument("logging another agent out needs a reason", field="reason")
            reason = f"logout_by_{principal.role.value}" + (
                f" {principal.subject}: {why[:200]}" if why else ""
            )
        tr = await self.store.run("logout", agent_id, reason)
        await self.store.redis.delete(keys.agent_presence(agent_id))
        await self._close_phone(agent_id)
        self.timeline.record(tr, reason)
        await self._released(tr)
        return agent_pb2.LogoutResponse(status=await self._status(agent_id))

    async def _open_phone(self, agent_id: str, phone: str) -> None:
        """The gateway calls the agent's phone and keeps the call up for the session (SIP telephony)."""
        if self.gateway is None:
            raise FailedPrecondition(
                "this agent service has no telephony gateway (OUTDIAL_GATEWAY_ADDR): log in without a phone",
                error_id="no_gateway",
            )
        if phone != "registered" and not phone.startswith(("sip:", "sips:")):
            raise InvalidArgument("phone must be 'registered' or a sip: URI", field="phone")
        contact = "" if phone == "registered" else phone
        try:
            await self.gateway().OpenAgentLeg(
                gateway_pb2.OpenAgentLegRequest(agent_id=agent_id, contact_uri=contact), timeout=40.0
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(f"the telephony gateway is unreachable: {exc.details()}") from exc
            raise FailedPrecondition(
                f"the agent's phone could not be reached: {exc.details()}", error_id="phone_unreachable"
            ) from exc

    async def _close_phone(self, agent_id: str) -> None:
        if self.gateway is None:
            return
        try:
            await self.gateway().CloseAgentLeg(
                gateway_pb2.CloseAgentLegRequest(agent_id=agent_id), timeout=5.0
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("agent %s: phone leg not closed (%s)", agent_id, exc.code().name)

    async def SetState(
        self, request: agent_pb2.SetStateRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.SetStateResponse:  # type: ignore[override]
        agent_id = _agent_id(request.agent_id)
        if request.state == common_pb2.AGENT_STATE_READY:
            want, reason = "ready", ""
        elif request.state == common_pb2.AGENT_STATE_PAUSED:
            want, reason = "paused", request.pause_reason.strip()
            if not reason:
                raise InvalidArgument("a pause needs a reason code", field="pause_reason")
        else:
            raise InvalidArgument("state must be READY or PAUSED", field="state")
        principal = current_principal()
        if principal.subject != agent_id and principal.role in (Role.MANAGER, Role.ADMIN):
            # A supervisor acts on another agent: only a pause, and the timeline says who did it.
            if want != "paused":
                raise PermissionDenied(
                    "a supervisor may pause an agent, not make them ready", error_id="not_self"
                )
            reason = f"{reason[:200]} (by {principal.role.value} {principal.subject})"
        tr = await self.store.run("set_state", agent_id, want, reason)
        self._check(tr, f"go {want}")
        self.timeline.record(tr, reason)
        return agent_pb2.SetStateResponse(status=await self._status(agent_id))

    async def Heartbeat(
        self, request: agent_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.HeartbeatResponse:  # type: ignore[override]
        agent_id = _agent_id(request.agent_id)
        h = await self.store.agent(agent_id)
        if (h.get("state") or "logged_out") == "logged_out":
            raise FailedPrecondition(f"agent {agent_id} is not logged in", error_id="not_logged_in")
        if request.session_id and request.session_id != h.get("session_id"):
            raise FailedPrecondition(
                "this session was replaced by a newer login", error_id="session_superseded"
            )
        await self.store.touch_presence(agent_id, h.get("session_id", ""), self.cfg.heartbeat_timeout_s)
        return agent_pb2.HeartbeatResponse(status=status_pb(agent_id, h))

    async def Connect(  # type: ignore[override]
        self, request: agent_pb2.ConnectRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.ConnectResponse]:
        """The console's stream. Any number of reconnections resume the same session: the console gets
        its status, then the call it is on (or an offer still awaiting acknowledgement) again. The newest
        connection of an agent wins; an older one ends with ``session_superseded``."""
        agent_id = _agent_id(request.agent_id)
        conn_id = uuid.uuid4().hex
        # Subscribed before the attach: every notice from then on reaches this stream.
        q = await self.hub.subscribe(agent_id)
        pending: dict[str, Any] | None = None
        superseded = False
        refresh = self.cfg.heartbeat_timeout_s / 3
        try:
            again, base = await self._attach(agent_id, conn_id, request.session_id)
            session_id = base.session_id
            yield agent_pb2.ConnectResponse(status=base)
            if again:
                # Back on the call they are on, an offer still awaiting its acknowledgement, or the lead they
                # are previewing: shown again.
                pending = again if base.state == common_pb2.AGENT_STATE_RESERVED else None
                yield shown_pb(again)
                if pending is not None and not await self._acknowledge_again(again, agent_id):
                    yield agent_pb2.ConnectResponse(call_ended=str(again.get("call_id", "")))
                pending = None
            loop = asyncio.get_running_loop()
            refreshed = loop.time()
            while True:
                # Presence is refreshed while the stream is open, however busy it is.
                if loop.time() - refreshed >= refresh:
                    if not await self.store.touch_presence(
                        agent_id, session_id, self.cfg.heartbeat_timeout_s
                    ):
                        raise _session_gone(agent_id)
                    refreshed = loop.time()
                try:
                    msg = await asyncio.wait_for(
                        q.get(), timeout=max(refresh - (loop.time() - refreshed), 0.01)
                    )
                except TimeoutError:
                    continue
                kind = msg.get("type")
                if kind == "sessions_lost":
                    # Redis lost its data: the console logs in again at once (the client does that on
                    # not_logged_in) rather than at its next presence refresh.
                    raise _session_gone(agent_id)
                if kind == "attach" and msg.get("conn") != conn_id:
                    superseded = True
                    raise FailedPrecondition(
                        "this console was replaced by a newer connection of the same agent",
                        error_id="session_superseded",
                    )
                if kind in ("offer", "preview"):
                    pending = msg
                    yield shown_pb(msg)
                    pending = None
                    if not await self._acknowledge(msg, agent_id):
                        yield agent_pb2.ConnectResponse(call_ended=str(msg.get("call_id", "")))
                elif kind == "preview_decided":
                    yield agent_pb2.ConnectResponse(preview_decided=preview_decided_pb(msg))
                elif kind == "status":
                    yield agent_pb2.ConnectResponse(
                        status=await self._status_notice(agent_id, session_id, base, msg)
                    )
                    if msg.get("state") == "logged_out":
                        return  # logged out (by themselves, a manager, or the heartbeat grace)
                elif kind == "call_ended":
                    yield agent_pb2.ConnectResponse(call_ended=str(msg.get("call_id", "")))
        finally:
            # Superseded: the newer connection is subscribed too, and delivers them.
            undelivered = [] if superseded else self._undelivered(q, pending)
            self._background(self._stream_closed(agent_id, q, undelivered))

    @staticmethod
    def _undelivered(
        q: asyncio.Queue[dict[str, Any]], pending: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        """The offers (calls and previews) a closing stream took and never handed over: the one it was showing
        and those still queued."""
        out = [pending] if pending else []
        while not q.empty():
            m = q.get_nowait()
            if m.get("type") in ("offer", "preview"):
                out.append(m)
        return out

    async def _attach(
        self, agent_id: str, conn_id: str, session_id: str
    ) -> tuple[dict[str, Any] | None, agent_pb2.AgentStatus]:
        """Attach a new Connect stream to the agent's session: the offer to show again (or None), and the
        status the stream starts with."""
        tr = await self.store.run("attach", agent_id, conn_id, session_id)
        if tr.status == "not_found":
            raise FailedPrecondition(f"agent {agent_id} is not logged in", error_id="not_logged_in")
        if tr.status == "superseded":
            raise FailedPrecondition(
                "this session was replaced by a newer login", error_id="session_superseded"
            )
        h = await self.store.agent(agent_id)
        await self.store.touch_presence(agent_id, h.get("session_id", ""), self.cfg.heartbeat_timeout_s)
        base = status_pb(agent_id, h)
        # The status read after the attach may be newer; shown again only while still in that state.
        again = json.loads(tr.extra) if tr.extra and h.get("state") == tr.prev_state else None
        return again, base

    async def _status_notice(
        self, agent_id: str, session_id: str, base: agent_pb2.AgentStatus, msg: dict[str, Any]
    ) -> agent_pb2.AgentStatus:
        if msg.get("reason") == "login" and msg.get("state") != "logged_out":
            # Logged in anew (after a logout this stream missed): not this stream's session any more.
            h = await self.store.agent(agent_id)
            if h.get("session_id", "") != session_id:
                raise FailedPrecondition(
                    "this session was replaced by a newer login", error_id="session_superseded"
                )
        return self._status_from_notice(base, msg)

    async def _acknowledge_again(self, offer: dict[str, Any], agent_id: str) -> bool:
        """``_acknowledge`` for an offer shown again at a reconnection. A preview stays the agent's to decide
        even when nobody listens: its PreviewLead has usually returned long ago (the dialer, not this service,
        follows the preview until the agent or its timeout decides)."""
        if offer.get("type") != "preview":
            return await self._acknowledge(offer, agent_id)
        call_id = str(offer.get("call_id", ""))
        await self.store.publish_ack(str(offer.get("reply_to", "")), "ack", call_id, agent_id)
        return True

    async def _acknowledge(self, offer: dict[str, Any], agent_id: str) -> bool:
        """Tell the OfferCall (or PreviewLead) waiting for ``offer`` that the console has it. When nobody waits
        any more (its replica died), the reservation is undone: the console is told the call is gone. False
        then (never for a preview: the status notice that follows takes it off the console)."""
        call_id = str(offer.get("call_id", ""))
        if await self.store.publish_ack(str(offer.get("reply_to", "")), "ack", call_id, agent_id):
            return True
        rel = await self.store.run("release", agent_id, call_id, "offer_orphaned")
        self.timeline.record(rel, "offer_orphaned")
        if offer.get("type") == "preview":
            return True
        # Not released: connected meanwhile (a retried OfferCall took it), or no longer theirs.
        return not rel.changed and rel.prev_state == "on_call" and rel.call_id == call_id

    @staticmethod
    def _status_from_notice(base: agent_pb2.AgentStatus, msg: dict[str, Any]) -> agent_pb2.AgentStatus:
        """The agent's status from a state-change notice, campaigns/skills/session from the stream's start
        (they change only at login, which ends or refreshes the stream): no Redis round trip per change."""
        st = agent_pb2.AgentStatus()
        st.CopyFrom(base)
        state = str(msg.get("state", ""))
        st.state = STATE_TO_PB.get(state, common_pb2.AGENT_STATE_UNSPECIFIED)
        st.since.FromMilliseconds(int(msg.get("since_ms", 0)))
        st.call_id = str(msg.get("call_id", ""))
        st.pause_reason = str(msg.get("reason", "")) if state == "paused" else ""
        return st

    async def _stream_closed(
        self, agent_id: str, q: asyncio.Queue[dict[str, Any]], offers: list[dict[str, Any]]
    ) -> None:
        await self.hub.unsubscribe(agent_id, q)
        for m in offers:
            with contextlib.suppress(Exception):
                await self.store.publish_ack(str(m["reply_to"]), "released", str(m["call_id"]), agent_id)

    # ------------------------------------------------------------------ calls

    async def OfferCall(
        self, request: agent_pb2.OfferCallRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.OfferCallResponse:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        started = loop.time()
        end = started + self._offer_deadline_ms(request) / 1000
        offer = offer_of(request)
        skills = json.dumps(sorted({s for s in request.required_skills if s}))
        reason = "no_agent_ready"

        def done(assigned: bool, agent_id: str = "", why: str = "") -> agent_pb2.OfferCallResponse:
            elapsed = loop.time() - started
            resp = agent_pb2.OfferCallResponse(assigned=assigned, agent_id=agent_id, reason=why)
            resp.latency.FromNanoseconds(int(elapsed * 1e9))
            OFFERS.labels("assigned" if assigned else (why or "not_assigned")).inc()
            if assigned:
                OFFER_SECONDS.observe(elapsed)
            return resp

        held = request.reserved_agent_id.strip()
        waiting = False  # for an agent to become ready
        while True:
            remaining = end - loop.time()
            if remaining <= 0:
                return done(False, why="no_agent_ready" if waiting else "deadline")
            fut = self.hub.expect(request.call_id)
            try:
                tr = await self.store.run(
                    "reserve",
                    request.campaign_id,
                    request.call_id,
                    skills,
                    json.dumps(offer),
                    max(int(remaining * 1000), 1),
                    self.replica_id,
                    self.cfg.max_candidates,
                    self.cfg.stuck_offer_slack_ms,
                    keys.call_agent(request.call_id),
                    held,
                    self._acks_template,
                )
                held = ""
                if tr.status == "existing":
                    # A retry: the call already has this agent. Never a second one.
                    self.hub.forget(request.call_id, fut)
                    ok, why = await self._existing(tr.agent_id, request.call_id, tr.extra, end)
                    if why == "reattached":
                        continue  # their console came back: offer again (answered to us this time)
                    return done(ok, tr.agent_id if ok else "", why)
                left = end - loop.time() - _ANSWER_MARGIN_S
                if tr.status == "no_agent" and left > 0:
                    # Nobody ready now: the first agent to become ready within the 2 s takes the call, as
                    # a person waits that long on the line (the law counts from the greeting).
                    waiting = True
                    await self.hub.wait_ready(min(_READY_RECHECK_S, left))
                    continue
                if tr.status not in ("ok", "offered_held"):
                    return done(False, why=reason)
                self.timeline.record(tr, "offer")
                try:
                    kind, _ = await asyncio.wait_for(fut, timeout=max(end - loop.time(), 0.001))
                except TimeoutError:
                    rel = await self.store.run("release", tr.agent_id, request.call_id, "offer_timeout")
                    self.timeline.record(rel, "offer_timeout")
                    return done(False, why="deadline")
            finally:
                self.hub.forget(request.call_id, fut)
            if kind == "ack":
                con = await self.store.run("connected", tr.agent_id, request.call_id)
                if con.changed or con.status == "already":
                    self.timeline.record(con, "connected")
                    delivered = json.loads(tr.extra)
                    self._background(self._call_events(delivered, tr.agent_id, con.at_ms))
                    return done(True, tr.agent_id)
                if con.status == "same":
                    return done(True, tr.agent_id)  # connected by the OfferCall this one retried
                reason = "agent_lost"
            else:
                rel = await self.store.run("release", tr.agent_id, request.call_id, "stream_closed")
                self.timeline.record(rel, "stream_closed")
                reason = "agent_lost"
            # The agent went away between reservation and delivery: offer to another one while time allows.

    def _offer_deadline_ms(self, request: agent_pb2.OfferCallRequest) -> int:
        if not request.campaign_id:
            raise InvalidArgument("campaign_id is required", field="campaign_id")
        if not request.call_id:
            raise InvalidArgument("call_id is required", field="call_id")
        asked = request.deadline.ToMilliseconds() if request.HasField("deadline") else 0
        if asked < 0:
            raise InvalidArgument("deadline must not be negative", field="deadline")
        return min(self.cfg.offer_deadline_ms, asked) if asked > 0 else self.cfg.offer_deadline_ms

    async def _existing(self, agent_id: str, call_id: str, what: str, end: float) -> tuple[bool, str]:
        """OfferCall retried for a call that already has ``agent_id``: connected (or connected and ended)
        is assigned; an offer still out is awaited (the agent's state notices, no polling) until the
        deadline; the first OfferCall keeps the job of releasing the agent when it times out. When the
        agent's console connects again meanwhile, "reattached": the caller offers again (the reservation
        script re-offers only when the first OfferCall's replica is gone)."""
        if what in ("on_call", "ended"):
            return True, ""
        if what != "offered":
            return False, "agent_lost"
        q = await self.hub.subscribe(agent_id)
        loop = asyncio.get_running_loop()
        try:
            h = await self.store.agent(agent_id)
            state, cur = h.get("state", ""), h.get("call_id", "")
            while cur == call_id and state == "reserved":
                remaining = end - loop.time()
                if remaining <= 0:
                    return False, "deadline"
                try:
                    msg = await asyncio.wait_for(q.get(), timeout=remaining)
                except TimeoutError:
                    return False, "deadline"
                if msg.get("type") == "status":
                    state, cur = str(msg.get("state", "")), str(msg.get("call_id", ""))
                elif msg.get("type") == "attach":
                    return False, "reattached"
            if cur == call_id and state in ("on_call", "wrap_up"):
                return True, ""  # connected (and maybe already ended by the agent)
            return False, "agent_lost"
        finally:
            await self.hub.unsubscribe(agent_id, q)

    async def ReserveAgent(
        self, request: agent_pb2.ReserveAgentRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ReserveAgentResponse:  # type: ignore[override]
        if not request.campaign_id:
            raise InvalidArgument("campaign_id is required", field="campaign_id")
        if not request.call_id:
            raise InvalidArgument("call_id is required", field="call_id")
        ttl_ms = request.ttl.ToMilliseconds() if request.HasField("ttl") else 0
        if ttl_ms < 0:
            raise InvalidArgument("ttl must not be negative", field="ttl")
        ttl_ms = min(ttl_ms or self.cfg.hold_default_ms, self.cfg.hold_max_ms)
        skills = json.dumps(sorted({s for s in request.required_skills if s}))
        tr = await self.store.run(
            "hold",
            request.campaign_id,
            request.call_id,
            skills,
            ttl_ms,
            self.cfg.max_candidates,
            self.cfg.stuck_offer_slack_ms,
            keys.call_agent(request.call_id),
        )
        if tr.status == "existing":
            held = tr.extra in ("held", "offered", "on_call")
            return agent_pb2.ReserveAgentResponse(
                reserved=held, agent_id=tr.agent_id if held else "", reason="" if held else "call_ended"
            )
        if not tr.changed:
            return agent_pb2.ReserveAgentResponse(reserved=False, reason="no_agent_ready")
        self.timeline.record(tr, "hold")
        return agent_pb2.ReserveAgentResponse(reserved=True, agent_id=tr.agent_id)

    async def ReleaseAgent(
        self, request: agent_pb2.ReleaseAgentRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ReleaseAgentResponse:  # type: ignore[override]
        if not request.agent_id:
            raise InvalidArgument("agent_id is required", field="agent_id")
        if not request.call_id:
            raise InvalidArgument("call_id is required", field="call_id")
        reason = request.reason.strip() or "released"
        tr = await self.store.run("release", request.agent_id, request.call_id, f"released_{reason}", "1")
        if tr.changed:
            self.timeline.record(tr, f"released_{reason}")
            if tr.prev_state == "on_call":
                # Withdrawn from an agent already on it (connected too late): the console drops the call.
                await self.store.redis.publish(
                    keys.agent_offers(request.agent_id),
                    json.dumps({"type": "call_ended", "call_id": request.call_id}),
                )
        return agent_pb2.ReleaseAgentResponse(
            released=tr.changed, status=await self._status(request.agent_id)
        )

    # ------------------------------------------------------------------ preview mode

    async def PreviewLead(
        self, request: agent_pb2.PreviewLeadRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.PreviewLeadResponse:  # type: ignore[override]
        """Hold a ready agent and show them the lead (nothing is dialled): delivered to their console within
        the offer deadline, or the agent is given back and nobody is shown it."""
        if not request.campaign_id:
            raise InvalidArgument("campaign_id is required", field="campaign_id")
        if not request.call_id:
            raise InvalidArgument("call_id is required", field="call_id")
        timeout_ms = request.timeout.ToMilliseconds() if request.HasField("timeout") else 0
        dial_hold_ms = request.dial_hold.ToMilliseconds() if request.HasField("dial_hold") else 0
        if timeout_ms < 0 or dial_hold_ms < 0:
            raise InvalidArgument("timeout and dial_hold must not be negative", field="timeout")
        preview: dict[str, Any] = {
            "call_id": request.call_id,
            "campaign_id": request.campaign_id,
            "lead_id": request.lead_id,
            "number": request.number,
            "lead_name": request.lead_name,
            "lead_fields": dict(request.lead_fields),
            "timeout_action": PB_TO_DECISION.get(request.timeout_action, ""),
            "timeout_ms": timeout_ms,  # the script sets decide_by_ms from Redis TIME
            "dial_hold_ms": min(dial_hold_ms or self.cfg.hold_default_ms, self.cfg.hold_max_ms),
        }
        if not preview["lead_fields"]:
            preview.pop("lead_fields")  # cjson would turn an empty object into a list
        # The hold outlives the decision time a little (the dialer decides at the timeout); with no timeout
        # it lasts while the agent looks at it, up to preview_hold_max_ms.
        ttl_ms = timeout_ms + self.cfg.stuck_offer_slack_ms if timeout_ms else self.cfg.preview_hold_max_ms
        skills = json.dumps(sorted({s for s in request.required_skills if s}))
        fut = self.hub.expect(request.call_id)
        try:
            tr = await self.store.run(
                "preview",
                request.campaign_id,
                request.call_id,
                skills,
                json.dumps(preview),
                ttl_ms,
                self.replica_id,
                self.cfg.max_candidates,
                self.cfg.stuck_offer_slack_ms,
                keys.call_agent(request.call_id),
            )
            if tr.status == "existing":
                shown = tr.extra in ("offered", "held")
                return agent_pb2.PreviewLeadResponse(
                    previewed=shown,
                    agent_id=tr.agent_id if shown else "",
                    reason="" if shown else "call_ended",
                )
            if not tr.changed:
                return agent_pb2.PreviewLeadResponse(previewed=False, reason="no_agent_ready")
            self.timeline.record(tr, "preview")
            try:
                kind, _ = await asyncio.wait_for(fut, timeout=self.cfg.offer_deadline_ms / 1000)
            except TimeoutError:
                kind = "timeout"
        finally:
            self.hub.forget(request.call_id, fut)
        if kind == "ack":
            return agent_pb2.PreviewLeadResponse(previewed=True, agent_id=tr.agent_id)
        rel = await self.store.run("release", tr.agent_id, request.call_id, "preview_not_delivered")
        self.timeline.record(rel, "preview_not_delivered")
        return agent_pb2.PreviewLeadResponse(previewed=False, reason="not_delivered")

    async def DecidePreview(
        self, request: agent_pb2.DecidePreviewRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.DecidePreviewResponse:  # type: ignore[override]
        """Dial or skip a previewed lead. The first decision stands; the dialer holding the campaign hears of
        it on the campaign's agent-notice stream (durable: a lease change loses nothing)."""
        agent_id = _agent_id(request.agent_id)
        if not request.call_id:
            raise InvalidArgument("call_id is required", field="call_id")
        decision = PB_TO_DECISION.get(request.decision)
        if decision is None:
            raise InvalidArgument("decision must be DIAL or SKIP", field="decision")
        by = "agent" if current_principal().subject == agent_id else "timeout"
        tr = await self.store.run(
            "preview_decide", agent_id, request.call_id, decision, by, self.cfg.stuck_offer_slack_ms
        )
        standing, _, cid = tr.extra.partition(":")
        if tr.changed:
            self.timeline.record(tr, f"preview_{decision}_{by}")
            if cid:
                await self.store.redis.xadd(
                    keys.agent_hangups(cid),
                    {
                        "kind": "preview",
                        "call_id": request.call_id,
                        "agent_id": agent_id,
                        "decision": standing,
                        "by": by,
                    },
                    maxlen=keys.AGENT_HANGUPS_MAXLEN,
                    approximate=True,
                )
        return agent_pb2.DecidePreviewResponse(
            decision=DECISION_TO_PB.get(standing, agent_pb2.PREVIEW_DECISION_UNSPECIFIED)
            if tr.status in ("ok", "already")
            else agent_pb2.PREVIEW_DECISION_UNSPECIFIED,
            campaign_id=cid,
            status=await self._status(agent_id),
        )

    async def _call_events(self, offer: dict[str, Any], agent_id: str, connected_ms: int) -> None:
        try:
            await self.store.add_event(
                call_event("call.offered", int(offer["offered_at_ms"]), offer, agent_id=agent_id)
            )
            await self.store.add_event(call_event("call.connected", connected_ms, offer, agent_id=agent_id))
        except Exception:
            log.exception("could not write call events for %s", offer.get("call_id"))

    async def EndCall(
        self, request: agent_pb2.EndCallRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.EndCallResponse:  # type: ignore[override]
        agent_id = _agent_id(request.agent_id)
        by_agent = current_principal().subject == agent_id
        wrap_ms = int(self.cfg.wrap_timeout_s * 1000)
        if by_agent:
            # The agent hung up: the same transition adds one entry to the campaign's hang-up stream
            # (keys.agent_hangups), from which the dialer hangs up the carrier leg at once.
            at_ms = int(self.clock.now().timestamp() * 1000)
            tr = await self.store.run(
                "end_call",
                agent_id,
                request.call_id,
                wrap_ms,
                self._hangups_template,
                at_ms,
                keys.AGENT_HANGUPS_MAXLEN,
            )
        else:
            tr = await self.store.run("end_call", agent_id, request.call_id, wrap_ms)
        self._check(tr, "end a call")
        self.timeline.record(tr, "end_call" if by_agent else "far_end_hangup")
        if not by_agent and tr.changed:
            # The dialer (or a manager) ended it: the far end hung up. Tell the console.
            await self.store.redis.publish(
                keys.agent_offers(agent_id), json.dumps({"type": "call_ended", "call_id": tr.call_id})
            )
        return agent_pb2.EndCallResponse(status=await self._status(agent_id))

    async def SetDisposition(
        self, request: agent_pb2.SetDispositionRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.SetDispositionResponse:  # type: ignore[override]
        agent_id = _agent_id(request.agent_id)
        disposition = request.disposition.strip()
        if not disposition:
            raise InvalidArgument("disposition is required", field="disposition")
        h = await self.store.agent(agent_id)
        offer = json.loads(h.get("last_call") or "{}")
        call_id = request.call_id or str(offer.get("call_id", ""))
        if not offer or call_id != offer.get("call_id"):
            raise FailedPrecondition(
                f"no ended call {call_id!r} to set a disposition for", error_id="no_call"
            )
        if h.get("dispositioned") == call_id:
            return agent_pb2.SetDispositionResponse(status=status_pb(agent_id, h))  # a retry: already done
        allowed = await self._dispositions_of(str(offer.get("campaign_id", "")))
        if disposition not in allowed:
            raise InvalidArgument(
                f"unknown disposition {disposition!r}; allowed: {', '.join(allowed)}", field="disposition"
            )
        callback_at: datetime | None = None
        if disposition == CALLBACK:
            if not request.HasField("callback_at"):
                raise InvalidArgument("a callback needs callback_at", field="callback_at")
            callback_at = request.callback_at.ToDatetime(tzinfo=ms_to_dt(0).tzinfo)
        # Durable first (PostgreSQL row, then the event), state change last: a failure anywhere leaves the
        # agent in wrap-up, and the console's retry writes the same row and the same event id again.
        now_s, now_us = await self.store.redis.time()
        at_ms = int(now_s) * 1000 + int(now_us) // 1000
        row_id, event_id = await self.dispositions.insert(
            event_id=uuid.uuid4().hex,
            agent_id=agent_id,
            offer=offer,
            disposition=disposition,
            callback_at=callback_at,
            notes=request.notes,
            at=ms_to_dt(at_ms),
            dnc_status="pending" if disposition == DO_NOT_CALL else "none",
            callback_status="pending" if callback_at is not None else "none",
        )
        fields = call_event(
            "agent.disposition",
            at_ms,
            offer,
            agent_id=agent_id,
            disposition=disposition,
            callback_at=str(int(callback_at.timestamp() * 1000)) if callback_at else "",
            notes=request.notes,
        )
        fields["event_id"] = event_id
        await self.store.add_event(fields)
        tr = await self.store.run("disposition", agent_id, call_id)
        self._check(tr, "set a disposition")
        self.timeline.record(tr, "disposition")
        if disposition == DO_NOT_CALL:
            await self.followups.opt_out(
                row_id,
                number=str(offer.get("number", "")),
                campaign_id=str(offer.get("campaign_id", "")),
                call_id=str(offer.get("call_id", "")),
                agent_id=agent_id,
            )
        if callback_at is not None:
            await self.followups.callback(
                row_id,
                campaign_id=str(offer.get("campaign_id", "")),
                lead_id=str(offer.get("lead_id", "")),
                at=callback_at,
                agent_id=agent_id,
                note=request.notes,
            )
        return agent_pb2.SetDispositionResponse(status=await self._status(agent_id))

    async def _dispositions_of(self, campaign_id: str) -> list[str]:
        if campaign_id:
            raw = await self.store.redis.hget(keys.campaign_config(campaign_id), "json")
            if raw:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    listed = [str(d) for d in json.loads(raw).get("dispositions") or []]
                    if listed:
                        # The two with side effects are always available: compliance and callbacks.
                        return [*listed, *(d for d in (DO_NOT_CALL, CALLBACK) if d not in listed)]
        return list(self.cfg.default_dispositions)

    # ------------------------------------------------------------------ views

    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListAgentsResponse:  # type: ignore[override]
        if request.campaign_id:
            ids = await self.store.redis.hkeys(keys.campaign_agents(request.campaign_id))
        else:
            ids = [str(a) for a in await self.store.redis.smembers(keys.agents_index())]
        rows = await self.store.agents(sorted(str(a) for a in ids))
        return agent_pb2.ListAgentsResponse(agents=[status_pb(aid, h) for aid, h in rows])

    async def WatchAgents(  # type: ignore[override]
        self, request: agent_pb2.WatchAgentsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.WatchAgentsResponse]:
        """The agents, then again after every change of state (coalesced over WATCH_COALESCE_S), and at least
        every WATCH_RESYNC_S (a pub/sub message lost while Redis failed over)."""
        listing = agent_pb2.ListAgentsRequest(campaign_id=request.campaign_id)
        pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(keys.agent_changes())
        try:
            last: agent_pb2.WatchAgentsResponse | None = None
            while True:
                listed = await self.ListAgents(listing, context)
                snapshot = agent_pb2.WatchAgentsResponse(agents=listed.agents)
                if snapshot != last:
                    yield snapshot
                    last = snapshot
                msg = await pubsub.get_message(timeout=WATCH_RESYNC_S)
                if msg is not None:
                    await asyncio.sleep(WATCH_COALESCE_S)
                    while await pubsub.get_message(timeout=0) is not None:
                        pass
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def GetAgentCounts(
        self, request: agent_pb2.GetAgentCountsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.GetAgentCountsResponse:  # type: ignore[override]
        if not request.campaign_id:
            raise InvalidArgument("campaign_id is required", field="campaign_id")
        view = await self.store.redis.hgetall(keys.campaign_agents(request.campaign_id))
        counts = agent_counts(view.values())
        return agent_pb2.GetAgentCountsResponse(counts=common_pb2.AgentCounts(logged_in=len(view), **counts))


def agent_counts(views: Any) -> dict[str, int]:
    counts = dict.fromkeys(COUNT_FIELDS, 0)
    for raw in views:
        with contextlib.suppress(ValueError, TypeError):
            state = json.loads(raw).get("state")
            if state in counts:
                counts[state] += 1
    return counts
