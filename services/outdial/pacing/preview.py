"""Preview mode, the dialer's side: show a lead to an agent, then dial it only when they (or the timeout)
say so, through the same dial-time gate as every other call. Thin I/O; what happens when is the call table's
(``calls.py``: ``PREVIEWING`` → ``GATING`` → ``RINGING`` …), and the calls run in the dialer's one call loop.

1. **Show** (:meth:`PreviewFlow.launch`, once per ready agent, as the planner says): a lead is taken from the
   hopper with its claim; ``PreviewLead`` holds one ready agent and puts the lead on their console. Nothing
   is dialled, nothing is gated yet. No agent took it: the lead goes back to the front of the hopper.
2. **Decide**: the agent's ``DecidePreview`` reaches this replica on the campaign's agent-notice stream (the
   one hang-ups use: durable across a lease change) → ``PREVIEW_DIAL`` / ``PREVIEW_SKIP``. At the campaign's
   ``preview_seconds`` (0 = wait for the agent) the dialer decides itself, through the same RPC, so that the
   agent service keeps one truth: an agent who pressed a key first wins.
3. **Dial** (``DIAL``): the gate (campaign state, window, caps, the audited DNC check) at this moment, with
   the agent's id: the attempt is recorded ``manual`` and ``dialled_by`` that agent (an agent-initiated
   call, not an autodialled one). Blocked: the lead's claim is freed and ``dial.blocked`` says why. Allowed:
   placed, ringing, with the agent still held, so that a person who answers is offered to that agent at
   once: nothing waits for an agent, so nothing is abandoned.
4. **Skip** (``SKIP_LEAD``): the claim is freed and ``preview.skipped`` tells the campaign service, which
   holds the lead back for the campaign's ``preview_skip_delay_s``. An agent who goes away (logged out,
   console gone) while looking at a lead gives it back to the front of the hopper (``AGENT_GONE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from outdial.core.metrics import CALLS_BLOCKED, CALLS_PLACED
from outdial.pacing.actions import Call, Run, originate_options
from outdial.pacing.calls import Action, Event, State
from outdial.pacing.gate import GateLead, window_open_at
from outdial.pacing.hopper import TakenLead
from outdial.pacing.planner import DEFAULT_RING_S, Plan
from outdial.rules import law

if TYPE_CHECKING:
    from outdial.pacing.dialer import CampaignRun, Dialer

log = logging.getLogger("outdial.pacing.preview")

DEFAULT_PREVIEW_S = 30.0
#: An agent whose console no longer shows a previewed lead for this long has gone away (the agent's own
#: decision reaches the dialer within milliseconds; this only covers one that never will).
AGENT_GONE_GRACE_S = 3.0


def preview_settings(config: dict[str, Any]) -> tuple[float, str]:
    """``(seconds the agent has, "dial" | "skip" at the timeout)``; 0 s = wait for the agent."""
    raw = config.get("preview_seconds")
    seconds = DEFAULT_PREVIEW_S if raw is None else max(0.0, float(raw))
    action = "skip" if config.get("preview_timeout_action") == "skip" else "dial"
    return seconds, action


def decision_event(decision: str) -> Event | None:
    return {"dial": Event.PREVIEW_DIAL, "skip": Event.PREVIEW_SKIP}.get(decision)


class PreviewFlow:
    #: Actions of the call table carried out here.
    ACTIONS = frozenset({Action.DIAL, Action.SKIP_LEAD, Action.GIVE_BACK, Action.RELEASE_LEAD})

    def __init__(self, dialer: Dialer) -> None:
        self.d = dialer
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._gone_since: dict[str, float] = {}

    # ------------------------------------------------------------------ 1. show

    async def launch(self, cid: str, run: CampaignRun, config: dict[str, Any], plan: Plan) -> None:
        """Show up to ``plan.launch`` leads, one per agent. Every lead taken is shown or handed back."""
        d = self.d
        taken = await d.hopper.take(cid, plan.launch)
        pending = {t.call_id: t for t in taken}
        seconds, on_timeout = preview_settings(config)
        try:
            for t in taken:
                if run.stopped or not d._dialing:
                    break
                name = " ".join(
                    x for x in (t.fields.get("first_name", ""), t.fields.get("last_name", "")) if x
                )
                call = Call(t.call_id, cid, t.lead_id, t.number, t.fields, config, d.clock.now())
                call.state = State.PREVIEWING
                d.calls[t.call_id] = call  # its claim is live (reconciliation frees no claim a call holds)
                res = await d.agents.preview(
                    campaign_id=cid,
                    call_id=t.call_id,
                    lead_id=t.lead_id,
                    number=t.number,
                    lead_name=name,
                    lead_fields=_fields(t.fields),
                    timeout_s=seconds,
                    timeout_action=on_timeout,
                    dial_hold_s=plan.ring_s + d.offer_deadline_s + 10.0,
                )
                if not res.assigned:
                    d.calls.pop(t.call_id, None)
                    break  # no agent to show it to: this lead and the rest go back
                pending.pop(t.call_id)
                call.held_agent = res.agent_id
                call.task = asyncio.create_task(d._follow(call, run), name=f"pacing:preview:{t.call_id}")
                if seconds > 0:
                    self._timers[t.call_id] = asyncio.create_task(
                        self._timeout(call, seconds, on_timeout), name=f"pacing:preview-timer:{t.call_id}"
                    )
                try:
                    await d.store.emit(
                        "preview.offered",
                        d.clock.now(),
                        cid,
                        t.call_id,
                        t.lead_id,
                        t.number,
                        agent_id=res.agent_id,
                    )
                except Exception as exc:  # a record of the showing, not a condition of it
                    log.warning("call %s: preview.offered not recorded (%s)", t.call_id, type(exc).__name__)
        finally:
            for t in pending.values():
                d.calls.pop(t.call_id, None)
                with contextlib.suppress(Exception):
                    await asyncio.shield(d.hopper.give_back(cid, t.lead_id, t.call_id))

    # ------------------------------------------------------------------ 2. decide

    def on_notice(self, call: Call, fields: dict[str, str]) -> None:
        """A decision from the agent-notice stream."""
        ev = decision_event(str(fields.get("decision", "")))
        if ev is not None and call.state is State.PREVIEWING:
            if fields.get("by") == "timeout" and not call.reason:
                call.reason = "preview timed out"
            call.events.put_nowait(ev)

    async def _timeout(self, call: Call, seconds: float, action: str) -> None:
        await asyncio.sleep(seconds)
        if call.state is not State.PREVIEWING:
            return
        standing = await self.d.agents.decide_preview(call.held_agent, call.call_id, action)
        if call.state is not State.PREVIEWING:
            return
        ev = decision_event(standing)
        if ev is None:
            call.events.put_nowait(Event.AGENT_GONE)  # no longer theirs (or the agent service is down)
            return
        if standing == action and not call.reason:
            call.reason = "preview timed out"
        call.events.put_nowait(ev)

    def check_agents(self, cid: str, agents: dict[str, dict[str, Any]]) -> None:
        """Each tick: a previewing agent who no longer holds their lead (logged out, console gone, the hold
        lapsed) for :data:`AGENT_GONE_GRACE_S` gives it back."""
        now = self.d.clock.monotonic()
        for call in [c for c in self.d.calls.values() if c.campaign_id == cid]:
            if call.state is not State.PREVIEWING:
                self._gone_since.pop(call.call_id, None)
                continue
            view = agents.get(call.held_agent) or {}
            if view.get("state") == "reserved" and view.get("call_id") == call.call_id:
                self._gone_since.pop(call.call_id, None)
                continue
            since = self._gone_since.setdefault(call.call_id, now)
            if now - since >= AGENT_GONE_GRACE_S:
                self._gone_since.pop(call.call_id, None)
                call.events.put_nowait(Event.AGENT_GONE)

    def withdraw(self, cid: str) -> None:
        """The campaign stops here (paused, lease lost): its leads still being looked at go back."""
        for call in [c for c in self.d.calls.values() if c.campaign_id == cid]:
            if call.state is State.PREVIEWING:
                call.events.put_nowait(Event.SHUTDOWN)

    # ------------------------------------------------------------------ 3./4. the table's actions

    async def act(self, call: Call, action: Action, at: datetime, run: Run | None) -> None:
        timer = self._timers.pop(call.call_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        d = self.d
        if action is Action.DIAL:
            await self._dial(
                call, cast("CampaignRun | None", run)
            )  # the dialer's calls run under a CampaignRun
        elif action is Action.SKIP_LEAD:
            await d.hopper.release(call.campaign_id, call.lead_id, call.call_id)
            await d.actions._emit(
                call,
                "preview.skipped",
                at,
                agent_id=call.held_agent,
                by="timeout" if call.reason == "preview timed out" else "agent",
            )
        elif action is Action.GIVE_BACK:
            await d.hopper.give_back(call.campaign_id, call.lead_id, call.call_id)
        elif action is Action.RELEASE_LEAD:
            await d.hopper.release(call.campaign_id, call.lead_id, call.call_id)

    async def _dial(self, call: Call, run: CampaignRun | None) -> None:
        """The gate now, then the call: the result goes back into the table (BLOCKED, NOT_DIALLED,
        ORIGINATE_ERROR or DIALLED)."""
        d = self.d
        cid = call.campaign_id
        agent = call.dialled_by = call.held_agent
        config = await d.store.campaign_config(cid) or {}  # the campaign as it is now: paused = blocked
        t = TakenLead(call.lead_id, call.call_id, call.lead)
        g = GateLead(
            call.call_id,
            call.lead_id,
            call.number,
            t.zones,
            t.fields.get("state", ""),
            t.attempt,
            zip=t.fields.get("zip", ""),
        )
        now = d.clock.now()
        fence = run.lease.token if run is not None else 0
        [r] = await d.gate.check(cid, config, [g], now)
        await d.store.record_gate(
            call_id=g.call_id,
            campaign_id=cid,
            lead_id=g.lead_id,
            number=g.number,
            attempt=g.attempt,
            replica=d.replica,
            fence_token=fence,
            allowed=r.allowed,
            reasons=r.reasons,
            gate_at=now,
            mode="preview",
            dialled_by=agent,
        )
        if not r.allowed:
            if run is not None:
                run.blocked += 1
            CALLS_BLOCKED.labels(cid, r.reasons[0] if r.reasons else "unknown").inc()
            await d.actions._emit(
                call, "dial.blocked", now, reasons=r.reasons, detail=r.detail, manual=1, agent_id=agent
            )
            log.info("call %s: preview dial blocked by the gate (%s)", call.call_id, ",".join(r.reasons))
            await d.actions.apply(call, Event.BLOCKED, now, run)
            return
        dial_at = d.clock.now()
        if (
            run is None
            or run.stopped
            or not window_open_at(config, g, dial_at)
            or not await d.enter_flight(run, cid, call.call_id, call.number, dial_at, r)
        ):
            await d.actions.apply(call, Event.NOT_DIALLED, dial_at, run)
            return
        call.dial_at = dial_at
        await d.actions._emit(
            call,
            "call.dialing",
            dial_at,
            caller_id=config.get("caller_id", ""),
            attempt=g.attempt,
            mode="preview",
            manual=1,
            dialled_by=agent,
        )
        run.placed += 1
        CALLS_PLACED.labels(cid).inc()
        ring_s = law.ring_time(float(config.get("ring_timeout_s") or DEFAULT_RING_S))
        try:
            await d.adapter.originate(
                call.call_id,
                call.number,
                str(config.get("caller_id", "")),
                ring_s,
                originate_options(cid, config, str(call.lead.get("state", ""))),
            )
        except Exception as exc:  # the adapter refused: the call ends failed, through the table
            call.reason = f"originate: {type(exc).__name__}"
            await d.actions.apply(call, Event.ORIGINATE_ERROR, d.clock.now(), run)
            return
        await d.actions.apply(call, Event.DIALLED, dial_at, run)


def _fields(fields: dict[str, str]) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in json.loads(fields.get("fields") or "{}").items()}
    except (ValueError, AttributeError):
        return {}
