"""Carrying out the call state machine's actions (``calls.py``) against the telephony adapter, the agent
service, the DNC service, Redis and PostgreSQL: the per-call I/O of the dialer.

The dialer feeds each call's events to :meth:`CallActions.apply`; a call closed from its record (an orphan:
its replica died) goes through the same table with ``ORPHAN`` (:meth:`CallActions.close_orphan`). What is
written when, so that a crash between two steps loses no fact, is described in ``calls.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import asyncpg
import grpc
import redis.exceptions

from outdial.core import keys
from outdial.core.clock import Clock
from outdial.core.metrics import CALLS_ENDED
from outdial.core.redis import Redis
from outdial.pacing.agents import AgentClient
from outdial.pacing.calls import Action, Event, Flow, State, state_from_record, step
from outdial.pacing.estimates import OnlineEstimator
from outdial.pacing.hopper import Hopper
from outdial.pacing.snapshot import BudgetView
from outdial.pacing.store import PacingStore, ms
from outdial.rules import law
from outdial.rules.message import opt_out_confirmation
from outdial.telephony.base import Answer, CallEvent, EventKind, OriginateOptions, TelephonyAdapter
from outdial.v1 import dnc_pb2, dnc_pb2_grpc

log = logging.getLogger("outdial.pacing.dialer")

_T = TypeVar("_T")
#: Errors of a dependency that is away for a moment (restart, fail-over): worth retrying.
TRANSIENT = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def observe(
    est: OnlineEstimator,
    outcome: str,
    dial_ms: int,
    answer_ms: int | None,
    connect_ms: int | None,
    end_ms: int,
) -> None:
    """Feed one ended call to the estimator (network failures say nothing about people: skipped)."""
    if outcome == "failed" or not outcome:
        return
    human = outcome in ("connected", "abandoned")
    machine = outcome in ("machine", "fax")
    resolved = answer_ms if answer_ms is not None else end_ms
    est.observe_outcome(human, machine, max(0.0, (resolved - dial_ms) / 1000))
    if connect_ms is not None:
        est.observe_talk(max(0.0, (end_ms - connect_ms) / 1000))


def amd_on(config: dict[str, Any]) -> bool:
    """Whether the campaign uses answering-machine detection (``amd``: on unless set off)."""
    return str(config.get("amd") or "on") != "off"


def amd_estimate(config: dict[str, Any]) -> float | None:
    """The campaign's AMD false-positive estimate when AMD is on and one is stated, else None."""
    rate = config.get("amd_false_positive_rate")
    return float(rate) if amd_on(config) and rate is not None else None


def carrier_event(ev: CallEvent, *, amd: bool = True) -> Event | None:
    """The call state machine's event for a telephony event. Without answering-machine detection (``amd``
    off) the adapter's machine classification is not used: every answer is a person's."""
    if ev.kind is EventKind.ANSWERED:
        return Event.ANSWERED_MACHINE if amd and ev.answer is Answer.MACHINE else Event.ANSWERED_HUMAN
    if ev.kind is EventKind.DTMF:
        return Event.OPT_OUT_KEY if ev.digit == law.OPT_OUT_KEY else None
    if ev.kind is EventKind.ENDED:
        return Event.ORIGINATE_ERROR if ev.reason == "originate_error" else Event.LINE_ENDED
    return {
        EventKind.RINGING: Event.RINGING,
        EventKind.NO_ANSWER: Event.NO_ANSWER,
        EventKind.BUSY: Event.BUSY,
        EventKind.FAILED: Event.FAILED,
        EventKind.MESSAGE_DONE: Event.MESSAGE_DONE,
    }.get(ev.kind)


@dataclass
class Call:
    call_id: str
    campaign_id: str
    lead_id: str
    number: str
    lead: dict[str, str]
    config: dict[str, Any]
    dial_at: datetime
    events: asyncio.Queue[CallEvent | Event] = field(default_factory=asyncio.Queue)
    state: State = State.RINGING
    answer: str | None = None
    answer_at: datetime | None = None
    connect_at: datetime | None = None
    agent_id: str = ""
    opt_out: bool = False
    message_played: bool = False
    outcome: str = ""
    reason: str = ""
    outcome_emitted: bool = False
    task: asyncio.Task[None] | None = None
    # The agent ReserveAgent held for this call before it was dialled ("" when none is held).
    held_agent: str = ""
    # When the agent hung up (the carrier leg is then hung up by the dialer).
    end_at: datetime | None = None
    # False for a call closed from its record (an orphan): no carrier leg of ours to act on.
    followed: bool = True
    # Agentless calls play the campaign's message instead of waiting for an agent (calls.Flow).
    flow: Flow = Flow.AGENT
    # Preview: the agent who chose to dial this lead (the call is manual, not autodialled).
    dialled_by: str = ""
    # A recorded call: (path, length ms, SHA-256), from the network's ``ended``.
    recording: tuple[str, int, str] | None = None


class Run(Protocol):
    """What a call's campaign run offers its calls: the estimator that learns from them, and the budget
    cache that an abandonment invalidates."""

    estimator: OnlineEstimator
    budget: BudgetView | None


class Extension(Protocol):
    """Actions of the call table carried out outside this module (preview mode's: ``preview.py``)."""

    ACTIONS: frozenset[Action]

    async def act(self, call: Call, action: Action, at: datetime, run: Run | None) -> None: ...


class CallActions:
    def __init__(
        self,
        *,
        redis: Redis,
        store: PacingStore,
        adapter: TelephonyAdapter,
        agents: AgentClient,
        dnc: dnc_pb2_grpc.DncServiceStub,
        hopper: Hopper,
        clock: Clock,
        offer_deadline_s: float,
    ) -> None:
        self.redis = redis
        self.store = store
        self.adapter = adapter
        self.agents = agents
        self.dnc = dnc
        self.hopper = hopper
        self.clock = clock
        self.offer_deadline_s = offer_deadline_s
        self.extension: Extension | None = None

    async def apply(self, call: Call, event: Event, at: datetime, run: Run | None) -> None:
        t = step(call.state, event, call.flow)
        call.state = t.state
        if t.outcome:
            call.outcome = t.outcome
        if t.reason and not call.reason:
            call.reason = t.reason
        for action in t.actions:
            try:
                await self._do(call, action, at, run)
            except Exception:
                if action is Action.FINISH:
                    raise
                log.exception("call %s: %s failed", call.call_id, action.value)

    async def _do(self, call: Call, action: Action, at: datetime, run: Run | None) -> None:  # noqa: C901
        live = call.followed
        if self.extension is not None and action in self.extension.ACTIONS:
            await self.extension.act(call, action, at, run)
        elif action is Action.PLAY_CAMPAIGN_MESSAGE and live:
            await self._play_campaign_message(call)
        elif action is Action.EMIT_RINGING:
            await self._emit(call, "call.ringing", at)
        elif action is Action.RECORD_ANSWER:
            call.answer = "machine" if call.outcome == "machine" else "human"
            call.answer_at = at
            await self.store.mark_answered(call.call_id, call.answer, at, call.outcome or None)
            await self._emit(call, "call.answered", at, answer=call.answer)
            if call.answer == "machine" and amd_estimate(call.config) is not None:
                # A machine-classified answer: some of these were people (AMD false positives), counted into
                # the abandonment budget at the campaign's estimated rate (dialer._budget).
                await self.redis.zadd(
                    keys.abandon_window(call.campaign_id), {f"{call.call_id}:m": ms(call.answer_at)}
                )
        elif action is Action.OFFER:
            await self._offer(call, run)
        elif action is Action.BRIDGE and live:
            await self.adapter.bridge(call.call_id, call.agent_id)
        elif action is Action.RECORD_CONNECT and call.answer_at is not None:
            await self.redis.zadd(
                keys.abandon_window(call.campaign_id), {f"{call.call_id}:h": ms(call.answer_at)}
            )
        elif action is Action.RELEASE_AGENT:
            await self._release_held(call, call.reason or call.outcome or "ended")
        elif action is Action.PLAY_MESSAGE and live:
            await self.adapter.play_message(
                call.call_id, self._message(call.config), str(call.config.get("abandon_recording") or "")
            )
            call.message_played = True
        elif action is Action.PLAY_CONFIRMATION and live:
            await self._confirm_opt_out(call)
        elif action is Action.RECORD_ABANDON:
            await self._record_abandon(call, run)
        elif action is Action.RECORD_OPT_OUT:
            call.opt_out = True
            await self._opt_out(call)
        elif action is Action.EMIT_OUTCOME:
            extra = {"reason": call.reason or call.outcome} if call.outcome == "failed" else {}
            if call.reason.startswith("released"):
                extra = {"reason": "released_no_agent"}
            call.outcome_emitted = True
            await self.store.mark_outcome(call.call_id, call.outcome)
            await self._emit(call, f"call.{call.outcome}", at, **extra)
        elif action is Action.HANGUP and live:
            try:
                await self.adapter.hangup(call.call_id)
            except Exception as exc:  # the line may be gone already; its end event still comes
                log.warning("call %s: hang-up not carried out: %r", call.call_id, exc)
        elif action is Action.CANCEL and live:
            try:
                await self.adapter.cancel(call.call_id)
            except Exception as exc:
                log.warning("call %s: cancel not carried out: %r", call.call_id, exc)
        elif action is Action.END_AGENT_CALL and call.agent_id:
            await self.agents.end_call(call.agent_id, call.call_id)
        elif action is Action.FINISH:
            await self._finish(call, run)

    @staticmethod
    def _message(cfg: dict[str, Any]) -> str:
        """The abandonment message from the rules (:func:`outdial.rules.law.abandon_message`): the seller's
        legal name, the callback number and the opt-out key, as the campaign set them; a campaign cannot
        start or resume without both (``campaign/model.check_message_identity``). Only a campaign that was
        already active before that check existed can lack them: it still gets a message (silence on an
        abandoned call is the worse breach), built from its name and caller ID, and an error in the log."""
        seller = str(cfg.get("seller_name") or "").strip()
        callback = str(cfg.get("opt_out_number") or "").strip()
        if not seller or not callback:
            log.error(
                "campaign %s has no seller_name/opt_out_number (active since before they were required): "
                "its name and caller ID stand in; pause it and set both",
                cfg.get("id"),
            )
            seller = seller or str(cfg.get("name") or "").strip() or "the caller"
            callback = callback or str(cfg.get("caller_id") or "").strip() or "the number on your display"
        return law.abandon_message(seller, callback, jurisdiction=str(cfg.get("jurisdiction") or "US")).text

    async def _confirm_opt_out(self, call: Call) -> None:
        """The opt-out key: the confirmation replaces whatever plays; the hang-up comes at its end
        (``MESSAGE_DONE`` in ``CONFIRMING``). When it cannot be played, hang up now."""
        try:
            await self.adapter.play_message(
                call.call_id, opt_out_confirmation(str(call.config.get("jurisdiction") or "US"))
            )
        except Exception as exc:
            log.warning("call %s: opt-out confirmation not played (%r): hanging up", call.call_id, exc)
            await self.adapter.hangup(call.call_id)

    async def _play_campaign_message(self, call: Call) -> None:
        """Agentless: the campaign's message (who calls, the message, a number and the opt-out key)."""
        cfg = call.config
        try:
            text = law.agentless_message(
                str(cfg.get("agentless_message") or ""),
                str(cfg.get("seller_name") or cfg.get("name") or ""),
                str(cfg.get("opt_out_number") or cfg.get("caller_id") or ""),
                jurisdiction=str(cfg.get("jurisdiction") or law.DEFAULT_JURISDICTION),
            )
        except ValueError as exc:
            log.error("call %s: no message to play (%s): hanging up", call.call_id, exc)
            await self.adapter.hangup(call.call_id)
            return
        await self.adapter.play_message(call.call_id, text)
        call.message_played = True

    async def _offer(self, call: Call, run: Run | None) -> None:
        assert call.answer_at is not None
        elapsed = (self.clock.now() - call.answer_at).total_seconds()
        budget = max(0.05, self.offer_deadline_s - max(0.0, elapsed))
        name = " ".join(x for x in (call.lead.get("first_name", ""), call.lead.get("last_name", "")) if x)
        try:
            fields = {str(k): str(v) for k, v in json.loads(call.lead.get("fields") or "{}").items()}
        except (ValueError, AttributeError):
            fields = {}
        res = await self.agents.offer(
            campaign_id=call.campaign_id,
            call_id=call.call_id,
            lead_id=call.lead_id,
            number=call.number,
            lead_name=name,
            lead_fields=fields,
            answered_at=call.answer_at,
            deadline_s=budget,
            reserved_agent_id=call.held_agent,
        )
        now = self.clock.now()
        why = res.reason
        # The law counts from the greeting: an assignment that comes back late is an abandonment too.
        in_time = res.assigned and (now - call.answer_at) <= timedelta(seconds=law.CONNECT_LIMIT_S)
        if in_time and not await self._record_connect(call, now, res.agent_id):
            in_time, why = False, "agent already on a call"
        if in_time:
            if call.held_agent and call.held_agent != res.agent_id:
                await self.agents.release(call.held_agent, call.call_id, "offered_elsewhere")
            call.held_agent = ""
            call.agent_id, call.connect_at = res.agent_id, now
            await self.apply(call, Event.OFFER_ACCEPTED, now, run)
            return
        if res.assigned:
            why = why if why == "agent already on a call" else "assigned after the 2 s deadline"
            # The agent service connected them, but the call is abandoned: give the agent back at once.
            await self.agents.release(res.agent_id, call.call_id, "abandoned")
        call.reason = why or "no agent"
        await self.apply(call, Event.OFFER_REFUSED, now, run)

    async def _record_connect(self, call: Call, now: datetime, agent_id: str) -> bool:
        """Record the connection before the media is bridged: False when PostgreSQL says that agent already
        has a connected call open. When PostgreSQL cannot be reached the person is connected all the same
        (the agent service assigned the agent atomically) and the end record carries the connection."""
        try:
            return await self.store.mark_connected(call.call_id, now, agent_id)
        except TRANSIENT as exc:
            log.warning("call %s: connection not recorded yet (%s)", call.call_id, type(exc).__name__)
            return True

    async def _record_abandon(self, call: Call, run: Run | None) -> None:
        await self.store.mark_outcome(call.call_id, "abandoned")
        if call.answer_at is not None:
            await self.redis.zadd(
                keys.abandon_window(call.campaign_id), {f"{call.call_id}:a": ms(call.answer_at)}
            )
            quiet = int(law.UK_ABANDON_QUIET.total_seconds())
            await self.redis.set(keys.number_abandoned(call.number), ms(call.answer_at), ex=quiet)
        if run is not None:
            run.budget = None  # refresh the budget at the next tick

    async def _release_held(self, call: Call, reason: str) -> None:
        if call.held_agent:
            agent_id, call.held_agent = call.held_agent, ""
            await self.agents.release(agent_id, call.call_id, reason)

    async def _opt_out(self, call: Call) -> None:
        req = dnc_pb2.RecordOptOutRequest(
            number=call.number, campaign_id=call.campaign_id, call_id=call.call_id, source="keypress"
        )
        for attempt in range(3):
            try:
                await self.dnc.RecordOptOut(req, timeout=2.0)
                return
            except grpc.aio.AioRpcError as exc:
                log.warning("opt-out not recorded yet (%s), attempt %d", exc.code().name, attempt + 1)
                await asyncio.sleep(0.2 * (attempt + 1))
        log.error(
            "opt-out of call %s could not be recorded: the call.abandoned event carries it", call.call_id
        )

    async def _emit(self, call: Call, type_: str, at: datetime, **fields: Any) -> None:
        await self.store.emit(type_, at, call.campaign_id, call.call_id, call.lead_id, call.number, **fields)

    async def _finish(self, call: Call, run: Run | None) -> None:
        """Exactly once per dialled call, whoever gets there first: the end in PostgreSQL, then (for the
        writer that won) ``call.ended`` and its companions; the lead's claim and the in-flight entry go."""
        end_at = call.end_at or self.clock.now()
        try:
            won = await self.retrying(
                f"call {call.call_id}: end record",
                lambda: self.store.finish_attempt(
                    call.call_id,
                    outcome=call.outcome or "failed",
                    answer=call.answer,
                    answer_at=call.answer_at,
                    connect_at=call.connect_at,
                    end_at=end_at,
                    agent_id=call.agent_id or None,
                    opt_out=call.opt_out,
                    recording=call.recording,
                ),
            )
            if not won:
                log.warning(
                    "call %s: its end was already written (closed by the campaign's lease holder)",
                    call.call_id,
                )
                return
            await self.retrying(f"call {call.call_id}: end events", lambda: self._emit_end(call, end_at, run))
        finally:
            with contextlib.suppress(Exception):
                await self.redis.zrem(keys.calls_in_flight(call.campaign_id), call.call_id)
            with contextlib.suppress(Exception):
                await self.hopper.release(call.campaign_id, call.lead_id, call.call_id)

    async def retrying(self, what: str, op: Callable[[], Awaitable[_T]], patience_s: float = 120.0) -> _T:
        """``op`` again and again while PostgreSQL or Redis is unreachable (a restart, a fail-over), for up to
        ``patience_s``; then the error goes up (the call, still open in PostgreSQL, is then closed by the
        lease pass's reconciliation, since no live call of this process holds it any more)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + patience_s
        delay = 0.1
        while True:
            try:
                return await op()
            except TRANSIENT as exc:
                if loop.time() + delay > until:
                    raise
                log.warning("%s: %s; retrying in %.1fs", what, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _emit_end(self, call: Call, end_at: datetime, run: Run | None) -> None:
        if call.outcome == "abandoned":
            await self._emit(
                call,
                "call.abandoned",
                end_at,
                message_played=int(call.message_played),
                opt_out=int(call.opt_out),
                reason=call.reason,
            )
        if call.outcome == "failed" and not call.outcome_emitted:
            await self._emit(call, "call.failed", end_at, reason=call.reason or "failed")
        if run is not None and call.followed and call.reason != "shutdown":
            observe(
                run.estimator,
                call.outcome,
                ms(call.dial_at),
                ms(call.answer_at) if call.answer_at else None,
                ms(call.connect_at) if call.connect_at else None,
                ms(end_at),
            )
        CALLS_ENDED.labels(call.campaign_id, call.outcome).inc()
        start = call.connect_at or call.answer_at
        await self._emit(
            call,
            "call.ended",
            end_at,
            outcome=call.outcome,
            dial_at=ms(call.dial_at),
            answer_at=ms(call.answer_at) if call.answer_at else "",
            connect_at=ms(call.connect_at) if call.connect_at else "",
            end_at=ms(end_at),
            agent_id=call.agent_id,
            duration_s=f"{(end_at - start).total_seconds():.3f}" if start else "0",
            recording_path=call.recording[0] if call.recording else "",
            recording_ms=call.recording[1] if call.recording else "",
            recording_sha256=call.recording[2] if call.recording else "",
            # The network's reason of a failed call (e.g. invalid_number: the campaign closes the number).
            reason=call.reason if call.outcome == "failed" else "",
        )

    async def close_orphan(self, row: Any) -> None:
        """Close one call from what PostgreSQL recorded of it, through the same state machine (``ORPHAN``)."""
        state = state_from_record(
            outcome=row["outcome"],
            answer=row["answer"],
            answer_at=row["answer_at"],
            connect_at=row["connect_at"],
            end_at=row["end_at"],
        )
        call = Call(
            call_id=str(row["call_id"]),
            campaign_id=str(row["campaign_id"]),
            lead_id=str(row["lead_id"]),
            number=str(row["number"]),
            lead={},
            config={},
            dial_at=row["dial_at"],
            state=state,
            answer=row["answer"],
            answer_at=row["answer_at"],
            connect_at=row["connect_at"],
            agent_id=str(row["agent_id"] or ""),
            outcome=str(row["outcome"] or ""),
            opt_out=bool(row["opt_out"]),
            followed=False,
        )
        if not call.agent_id:
            held = await self.redis.get(keys.call_agent(call.call_id))
            call.held_agent = str(held or "")
        await self.apply(call, Event.ORPHAN, self.clock.now(), None)


def originate_options(cid: str, config: dict[str, Any], state: str) -> OriginateOptions:
    """What the network does with a call besides placing it: recording (never, in an all-party-consent
    state, without the notice), and the campaign's recorded abandonment message."""
    notice = str(config.get("recording_notice") or "")
    record = bool(config.get("record_calls")) and law.may_record(state, notice)
    return OriginateOptions(
        campaign_id=cid,
        record=record,
        recording_notice=notice if record else "",
        abandon_recording=str(config.get("abandon_recording") or ""),
    )
