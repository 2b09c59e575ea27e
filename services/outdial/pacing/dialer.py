"""The dialer: thin I/O around the pure pacing core.

Per replica, one :class:`Dialer` holds campaign leases (``lease.py``) and runs one loop per campaign it
holds. Each tick reads the campaign from Redis, asks the planner (``planner.py``, the very code the
simulator runs) what to do, releases the ringing calls it says to release, takes leads from the hopper with
their claims (``hopper.py``), passes each through the dial-time gate (``gate.py``) and originates through the
telephony adapter. Every call's events go through the pure state machine (``calls.py``), whose actions
``actions.py`` carries out against the adapter, the agent service (``agents.py``), Redis and PostgreSQL
(``store.py``). Agent hang-ups come from ``hangups.py``.

What survives what:
- **A call's end is written once**, by whoever writes it first into PostgreSQL (``finish_attempt``): the
  replica that followed the call, or a lease holder closing it after its replica died. Only that writer
  emits ``call.ended``.
- **Orphans**: every lease pass, the holder reads the campaign's calls PostgreSQL shows as dialled and not
  ended; those whose replica has been gone (no presence key) for a lease time are closed from their
  recorded state (``calls.state_from_record`` + ``ORPHAN``): answers, times and agents are kept. This also
  closes the calls that were in flight when Redis lost its data.
- **The abandonment window** lives in Redis for speed and is rebuilt from PostgreSQL at every lease
  acquisition, so a Redis data loss does not reset the budget.
- **Agent hang-ups** arrive on a per-campaign stream read through a consumer group; a notice sent while
  the lease changes hands stays pending and the next holder claims it.
- **Never two at once**: a lead is claimed atomically with its pop; PostgreSQL's partial unique indexes
  refuse a second open call to a lead or a number, and a second connected call to an agent.

Modes the planner does not pace (``Plan.flow``): *preview* shows each ready agent a lead and dials only on
their word (``preview.py``, states ``PREVIEWING``/``GATING`` of the call table); *agentless* launches
message calls (``calls.Flow.MESSAGE``) that no agent is waited for.

Agent-reserved mode (``Plan.reserve_agent``: progressive, and the fallback of the others): before a call
is dialled, ``ReserveAgent`` holds one ready agent for it (no agent held: the lead goes back to the hopper,
nothing is dialled); on a live answer ``OfferCall`` names that agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis.exceptions

from outdial.core import dnc_changes, keys
from outdial.core.clock import Clock
from outdial.core.metrics import (
    ABANDON_RATE,
    CALLS_BLOCKED,
    CALLS_PLACED,
    CALLS_RELEASED,
    DIAL_LEVEL,
    LINES_IN_FLIGHT,
)
from outdial.core.redis import Redis
from outdial.pacing.actions import (
    Call,
    CallActions,
    amd_estimate,
    amd_on,
    carrier_event,
    observe,
    originate_options,
)
from outdial.pacing.agents import AgentClient
from outdial.pacing.budget import budget_view
from outdial.pacing.calls import Event, Flow, State
from outdial.pacing.estimates import OnlineEstimator
from outdial.pacing.gate import DialGate, GateLead, GateResult, window_open_at
from outdial.pacing.hangups import HangupReader
from outdial.pacing.hopper import Hopper, TakenLead
from outdial.pacing.lease import Lease, LeaseStore
from outdial.pacing.planner import Plan, Planner, RingingCall, TickInput, abandon_limits, effective_params
from outdial.pacing.preview import PreviewFlow
from outdial.pacing.snapshot import AGENT_STATES, PAUSED, AgentSnap, BudgetView, Estimates, PacingParams
from outdial.pacing.store import PacingStore, from_ms, ms
from outdial.rules import law
from outdial.rules.caps import DAY
from outdial.telephony.base import EventKind, TelephonyAdapter
from outdial.v1 import agent_pb2_grpc, dnc_pb2_grpc

log = logging.getLogger("outdial.pacing.dialer")

BUDGET_REFRESH_S = 1.0
BOOTSTRAP_EVENTS = 20_000
#: How far back the gate's per-number attempt history reaches (rolling caps look at the last 24 h).
NUMBER_HISTORY_S = 8 * 24 * 3600

#: (live answers, abandoned, machine-classified answers) in the window: members ``:h``, ``:a``, ``:m``.
_COUNT_ABANDONED = """
local m = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local a = 0
local machines = 0
for _, v in ipairs(m) do
  local tail = string.sub(v, -2)
  if tail == ':a' then a = a + 1 elseif tail == ':m' then machines = machines + 1 end
end
return {#m - machines, a, machines}
"""


def flow_of(config: dict[str, Any]) -> Flow:
    """The call flow of a campaign's calls (agentless: the message; otherwise an agent)."""
    if config.get("dial_mode") != "agentless":
        return Flow.AGENT
    return Flow.MESSAGE_MACHINES if config.get("machine_action") == "leave_message" else Flow.MESSAGE


@dataclass
class CampaignRun:
    lease: Lease
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    placed: int = 0
    blocked: int = 0
    released: int = 0
    budget: BudgetView | None = None
    budget_at: float = 0.0
    estimator: OnlineEstimator = field(default_factory=OnlineEstimator)
    planner: Planner = field(default_factory=Planner)
    last_state: str = ""
    # Set before the loop is cancelled: a cancellation that a client library turned into an error must
    # not keep the loop (or its state publication) going.
    stopped: bool = False


class Dialer:
    def __init__(
        self,
        *,
        redis: Redis,
        store: PacingStore,
        leases: LeaseStore,
        adapter: TelephonyAdapter,
        dnc: dnc_pb2_grpc.DncServiceStub,
        agent: agent_pb2_grpc.AgentServiceStub,
        clock: Clock,
        agent_health: Any = None,
        tick_s: float = 0.2,
        renew_s: float = 1.0,
        offer_deadline_s: float = law.OFFER_DEADLINE_S,
        drain_s: float = 5.0,
        claim_ttl_s: int = 3600,
    ) -> None:
        self.redis = redis
        self.store = store
        self.leases = leases
        self.adapter = adapter
        self.dnc = dnc
        self.agents = AgentClient(agent, agent_health)
        self.clock = clock
        self.gate = DialGate(redis, dnc, store)
        self.hopper = Hopper(redis, claim_ttl_s)
        self.tick_s = tick_s
        self.renew_s = renew_s
        self.offer_deadline_s = min(law.CONNECT_LIMIT_S, offer_deadline_s)
        self.drain_s = drain_s
        self.campaigns: dict[str, CampaignRun] = {}
        self.calls: dict[str, Call] = {}
        self._dialing = True
        self._count: Any = redis.register_script(_COUNT_ABANDONED)
        self._started_ms = ms(clock.now())
        # Replicas seen without presence, and since when (monotonic): orphans only after a lease time.
        self._absent: dict[str, float] = {}
        self.actions = CallActions(
            redis=redis,
            store=store,
            adapter=adapter,
            agents=self.agents,
            dnc=dnc,
            hopper=self.hopper,
            clock=clock,
            offer_deadline_s=self.offer_deadline_s,
        )
        # Hang-ups are read for the campaigns leased and for those whose calls this replica still follows: a
        # paused campaign's connected calls end when their agents hang up, not when the customers do.
        self.hangups = HangupReader(redis, leases.replica, self._hangup_campaigns, self._on_hangup)
        # Preview mode's side of the dialer; the call table's preview actions are carried out there.
        self.preview = PreviewFlow(self)
        self.actions.extension = self.preview

    @property
    def replica(self) -> str:
        return self.leases.replica

    # ================================================================ replica loop: leases + event pump

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._pump(), name="pacing:event-pump"),
            asyncio.create_task(self.hangups.run(), name="pacing:agent-hangups"),
        ]
        self.agents.start()
        try:
            while True:
                try:
                    await self._lease_pass()
                except (OSError, ConnectionError, TimeoutError, redis.exceptions.ConnectionError) as exc:
                    log.warning("lease pass failed: %s", type(exc).__name__)
                except Exception:
                    log.exception("lease pass failed")
                await asyncio.sleep(self.renew_s)
        finally:
            await asyncio.shield(self._shutdown(tasks))

    async def _lease_pass(self) -> None:
        await self.store.announce(self.replica, self.leases.ttl_ms, self._started_ms)
        active = await self.store.active_campaigns()
        for cid, run in list(self.campaigns.items()):
            ok = cid in active and await self.leases.renew(run.lease)
            if not ok:
                await self._stop_campaign(cid, release=cid not in active)
        for cid in list(self.campaigns):
            try:
                await self._reconcile(cid)
            except Exception:
                log.exception("campaign %s: reconciliation failed", cid)
        if not self._dialing:
            return
        for cid in sorted(active - set(self.campaigns)):
            lease = await self.leases.acquire(cid)
            if lease is None:
                continue
            log.info("campaign %s: lease taken (token %d)", cid, lease.token)
            run = CampaignRun(lease)
            try:
                await self._take_over(cid, run)
            except Exception:
                log.exception("campaign %s: take-over steps failed; dialing anyway", cid)
            self.campaigns[cid] = run
            self.hangups.wake()
            run.task = asyncio.create_task(self._campaign_loop(cid, run), name=f"pacing:dial:{cid}")

    async def _take_over(self, cid: str, run: CampaignRun) -> None:
        """At lease acquisition: the hang-up stream's group, the abandonment window rebuilt from PostgreSQL,
        calls of dead holders closed, stale claims freed, estimates learned from recent calls."""
        await self.hangups.take_over(cid)
        config = await self.store.campaign_config(cid) or {}
        await self._rebuild_window(cid, config)
        await self._rebuild_number_history(cid)
        await self._reconcile(cid, taking_over=True)
        await self._bootstrap_estimates(cid, run)

    async def _stop_campaign(self, cid: str, *, release: bool) -> None:
        run = self.campaigns.pop(cid, None)
        if run is None:
            return
        await self._halt(run)
        self.preview.withdraw(cid)
        if release:
            with contextlib.suppress(Exception):
                await self.leases.release(run.lease)
        log.info("campaign %s: stopped dialing (lease %s)", cid, "released" if release else "lost")

    async def _halt(self, run: CampaignRun, patience_s: float = 10.0) -> None:
        """Stop a campaign loop between two steps, not in the middle of one: a tick that took leads finishes
        with them (the ones it can no longer dial go back to the hopper). Cancelled only when it does not
        stop within ``patience_s``."""
        run.stopped = True
        run.wake.set()
        if run.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(run.task), patience_s)
        except TimeoutError:
            run.task.cancel()
        except Exception:
            pass
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await run.task

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        """Stop dialing; let calls in flight finish for ``drain_s``, and in any case until every ringing call
        has rung the legal minimum (a shutdown never cuts one short); close the rest; release leases."""
        self._dialing = False
        for cid in list(self.campaigns):
            await self._halt(self.campaigns[cid])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_s

        def too_young() -> bool:
            now = self.clock.now()
            return any(
                c.state is State.RINGING and (now - c.dial_at).total_seconds() < law.MIN_RING_S
                for c in self.calls.values()
            )

        while self.calls and (loop.time() < deadline or too_young()):
            await asyncio.sleep(0.05)
        for call in list(self.calls.values()):
            call.events.put_nowait(Event.SHUTDOWN)
        pending = [c.task for c in self.calls.values() if c.task is not None]
        if pending:
            _, late = await asyncio.wait(pending, timeout=5.0)
            for t in late:
                t.cancel()
        for cid in list(self.campaigns):
            run = self.campaigns.pop(cid)
            with contextlib.suppress(Exception):
                await self.leases.release(run.lease)
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.agents.stop()
        with contextlib.suppress(Exception):
            await self.adapter.close()

    async def _pump(self) -> None:
        async for ev in self.adapter.events():
            call = self.calls.get(ev.call_id)
            if call is not None:
                call.events.put_nowait(ev)

    # ================================================================ agent hang-ups

    def _hangup_campaigns(self) -> list[str]:
        return sorted(set(self.campaigns) | {c.campaign_id for c in self.calls.values()})

    async def _on_hangup(self, fields: dict[str, str]) -> None:
        call = self.calls.get(str(fields.get("call_id", "")))
        if fields.get("kind") == "preview":
            if call is not None:
                self.preview.on_notice(call, fields)
        elif call is not None and call.state is State.CONNECTED and call.end_at is None:
            call.end_at = from_ms(int(fields["at_ms"])) if fields.get("at_ms") else self.clock.now()
            log.info("call %s: the agent hung up; hanging up the carrier leg", call.call_id)
            call.events.put_nowait(Event.AGENT_HANGUP)

    # ================================================================ per-campaign loop

    async def _campaign_loop(self, cid: str, run: CampaignRun) -> None:
        while not run.stopped:
            try:
                await self._tick(cid, run)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("campaign %s: tick failed", cid)
            if run.stopped:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.wake.wait(), self.tick_s)
            if not run.stopped:
                run.wake.clear()

    async def _budget(
        self, cid: str, run: CampaignRun, config: dict[str, Any], overrides: dict[str, Any], now: datetime
    ) -> BudgetView:
        mono = self.clock.monotonic()
        if run.budget is not None and mono - run.budget_at < BUDGET_REFRESH_S:
            return run.budget
        cap, window_s, short_cap = abandon_limits(config, overrides)
        now_ms = ms(now)
        key = keys.abandon_window(cid)
        await self.redis.zremrangebyscore(key, "-inf", now_ms - int(window_s * 1000))
        live, ab = await self._window_counts(key, now_ms - int(window_s * 1000), config)
        live60, ab60 = await self._window_counts(key, now_ms - int(law.SHORT_WINDOW_S * 1000), config)
        run.budget = budget_view(cap, window_s, live, ab, live60, ab60, short_cap)
        run.budget_at = mono
        return run.budget

    async def _window_counts(self, key: str, since_ms: int, config: dict[str, Any]) -> tuple[int, int]:
        """(live answers, abandoned) in the window since ``since_ms``, the AMD false positives the campaign
        estimates among its machine-classified answers counted in as abandoned live answers (Ofcom;
        :func:`outdial.rules.law.with_amd_false_positives`)."""
        live, ab, machines = (int(x) for x in await self._count(keys=[key], args=[since_ms]))
        live, ab, _ = law.with_amd_false_positives(
            str(config.get("jurisdiction") or ""), live, ab, machines, amd_estimate(config)
        )
        return live, ab

    async def _rebuild_window(self, cid: str, config: dict[str, Any]) -> None:
        """The Redis abandonment window from PostgreSQL's facts (idempotent: one member per call)."""
        _, window_s, _ = abandon_limits(config, {})
        since = self.clock.now() - timedelta(seconds=window_s)
        facts = await self.store.live_answers_since(cid, since, machines=amd_estimate(config) is not None)
        if facts:
            await self.redis.zadd(
                keys.abandon_window(cid),
                {f"{call_id}:{kind}": ms(at) for call_id, at, kind in facts},
            )

    async def _rebuild_number_history(self, cid: str) -> None:
        """The gate's per-number facts in Redis (attempts of the last days, the UK 72-hour mark) from the
        campaign's dials in PostgreSQL, so a Redis that lost its data does not loosen the dial-time caps
        (idempotent: one attempt member per call; the abandonment mark keeps the latest time)."""
        now = self.clock.now()
        quiet = law.UK_ABANDON_QUIET
        dials = await self.store.recent_dials(cid, now - timedelta(seconds=NUMBER_HISTORY_S), now - quiet)
        latest: dict[str, datetime] = {}
        for i in range(0, len(dials), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for number, call_id, dial_at, abandoned_at in dials[i : i + 1000]:
                    pipe.zadd(keys.number_attempts(number), {call_id: ms(dial_at)})
                    pipe.expire(keys.number_attempts(number), NUMBER_HISTORY_S)
                    if abandoned_at is not None and abandoned_at > latest.get(number, abandoned_at - quiet):
                        latest[number] = abandoned_at
                await pipe.execute()
        for number, at in latest.items():
            held = await self.redis.get(keys.number_abandoned(number))
            if held is None or int(held) < ms(at):
                left = int((at + quiet - now).total_seconds()) + 1
                await self.redis.set(keys.number_abandoned(number), ms(at), ex=max(1, left))

    async def _tick(self, cid: str, run: CampaignRun) -> None:
        now = self.clock.now()
        config = await self.store.campaign_config(cid)
        overrides = await self.store.load_settings(cid)
        agents = await self.store.agents(cid)
        params = effective_params(config or {}, overrides)
        snaps = tuple(
            AgentSnap(
                str(a.get("state")) if a.get("state") in AGENT_STATES else PAUSED,
                max(0.0, (ms(now) - int(a.get("since_ms") or ms(now))) / 1000),
            )
            for a in agents.values()
        )
        mine = [c for c in self.calls.values() if c.campaign_id == cid]
        ringing = [c for c in mine if c.state is State.RINGING]
        waiting = sum(1 for c in mine if c.state is State.OFFERED)
        # Agentless lines in use: the message playing, or its opt-out confirmation.
        messages = sum(
            1
            for c in mine
            if c.state is State.MESSAGE or (c.state is State.CONFIRMING and c.flow is not Flow.AGENT)
        )
        # Calls of a previous holder still in flight count as ringing (conservative).
        raw_inflight: Any = await self.redis.zrange(keys.calls_in_flight(cid), 0, -1, withscores=True)
        foreign = tuple(
            max(0.0, (ms(now) - float(sc)) / 1000) for m, sc in raw_inflight if m not in self.calls
        )
        budget = await self._budget(cid, run, config or {}, overrides, now)
        stop = ""
        if config is None or config.get("state") != "active":
            stop = "campaign not active"
        elif overrides.get("paused"):
            stop = "paused by pacing settings"
        estimates = run.estimator.snapshot()
        plan = run.planner.plan(
            TickInput(
                now_s=now.timestamp(),
                params=params,
                agents=snaps,
                ringing=tuple(
                    RingingCall((now - c.dial_at).total_seconds(), bool(c.held_agent)) for c in ringing
                ),
                answered_waiting=waiting,
                estimates=estimates,
                budget=budget,
                foreign_ringing_ages_s=foreign,
                agents_reachable=self.agents.reachable,
                stop_reason=stop,
                other_lines=messages,
            )
        )
        if run.stopped:
            return
        for i in plan.cancel:
            run.released += 1
            CALLS_RELEASED.labels(cid).inc()
            log.warning("campaign %s: releasing call %s (no agent can staff it)", cid, ringing[i].call_id)
            ringing[i].events.put_nowait(Event.RELEASE)
        if plan.flow == "preview":
            self.preview.check_agents(cid, agents)
        if plan.launch > 0 and config is not None:
            if plan.flow == "preview":
                await self.preview.launch(cid, run, config, plan)
            else:
                await self._launch(cid, run, config, plan)
        await self._publish(cid, run, now, overrides, params, plan, agents, waiting, estimates, budget)

    # ================================================================ launching calls

    async def _launch(self, cid: str, run: CampaignRun, config: dict[str, Any], plan: Plan) -> None:
        """Take leads, gate them, hold agents, originate. Every lead taken is dialled, released (blocked) or
        handed back to the hopper, on every path, errors and cancellation included."""
        if not self.adapter.ready():
            return  # the network refuses calls a moment (trunk degraded, media down): back off
        taken = await self.hopper.take(cid, plan.launch)
        if not taken:
            return
        pending = {t.call_id: t for t in taken}
        try:
            now = self.clock.now()
            gate_leads = [
                GateLead(
                    t.call_id,
                    t.lead_id,
                    t.number,
                    t.zones,
                    t.fields.get("state", ""),
                    t.attempt,
                    zip=t.fields.get("zip", ""),
                )
                for t in taken
            ]
            results = await self.gate.check(cid, config, gate_leads, now)
            out_of_agents = False
            for t, g, r in zip(taken, gate_leads, results, strict=True):
                await self.store.record_gate(
                    call_id=g.call_id,
                    campaign_id=cid,
                    lead_id=g.lead_id,
                    number=g.number,
                    attempt=g.attempt,
                    replica=self.replica,
                    fence_token=run.lease.token,
                    allowed=r.allowed,
                    reasons=r.reasons,
                    gate_at=now,
                    mode=str(config.get("dial_mode") or ""),
                )
                if not r.allowed:
                    run.blocked += 1
                    CALLS_BLOCKED.labels(cid, r.reasons[0] if r.reasons else "unknown").inc()
                    await self.store.emit(
                        "dial.blocked",
                        now,
                        cid,
                        g.call_id,
                        g.lead_id,
                        g.number,
                        reasons=r.reasons,
                        detail=r.detail,
                    )
                    pending.pop(t.call_id)
                    await self.hopper.release(cid, t.lead_id, t.call_id)
                    continue
                held = ""
                if plan.reserve_agent and not out_of_agents and not run.stopped:
                    held = await self.agents.hold(cid, g.call_id, plan.ring_s + self.offer_deadline_s + 10.0)
                    out_of_agents = not held
                if run.stopped or (plan.reserve_agent and not held):
                    if held:
                        await self.agents.release(held, g.call_id, "not_dialled")
                    continue  # handed back below
                dialled = await self._originate(cid, run, config, t, g, plan.ring_s, held, r)
                if dialled is None:
                    if held:
                        await self.agents.release(held, g.call_id, "not_dialled")
                    continue
                pending.pop(t.call_id)
                if not dialled:
                    # The lead or number already has a call open (PostgreSQL said so): leave it to that call.
                    if held:
                        await self.agents.release(held, g.call_id, "not_dialled")
                    await self.hopper.release(cid, t.lead_id, t.call_id)
        finally:
            for t in pending.values():
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.hopper.give_back(cid, t.lead_id, t.call_id))

    async def enter_flight(
        self,
        run: CampaignRun,
        cid: str,
        call_id: str,
        number: str,
        dial_at: datetime,
        gate: GateResult | None = None,
    ) -> bool | None:
        """The last steps before a call leaves, for every dial (paced or preview): the lease fence with the
        in-flight entry, the dial time in PostgreSQL (with the gate's per-person cap counted again under a
        lock), the number's attempt for the gate. None: fenced off or shutting down. False: the lead or number
        already has a call open, or the person reached the cap meanwhile (PostgreSQL said so)."""
        if gate is not None and await self._listed_since_check(number, gate):
            log.warning(
                "call %s: its number was listed or its consent revoked after the DNC check: not dialled",
                call_id,
            )
            return None
        if not self._dialing or not await self.leases.fence_and_register(run.lease, call_id, ms(dial_at)):
            return None
        person, cap = (gate.person, gate.person_cap) if gate is not None else (frozenset(), None)
        if not await self.store.mark_dialed(call_id, dial_at, person=person, cap=cap, period=DAY):
            await self.redis.zrem(keys.calls_in_flight(cid), call_id)
            return False
        await self.redis.zadd(keys.number_attempts(number), {call_id: ms(dial_at)})
        await self.redis.expire(keys.number_attempts(number), NUMBER_HISTORY_S)
        return True

    async def _originate(
        self,
        cid: str,
        run: CampaignRun,
        config: dict[str, Any],
        taken: TakenLead,
        g: GateLead,
        ring_s: float,
        held_agent: str,
        gate: GateResult | None = None,
    ) -> bool | None:
        """True: dialled. None: fenced off or shutting down (hand the lead back). False: refused because the
        lead or number has a call open, or the person reached the cap since the gate counted."""
        dial_at = self.clock.now()
        if not window_open_at(config, g, dial_at):
            log.warning("call %s: the calling window closed after the gate: not dialled", g.call_id)
            return None
        call = Call(
            g.call_id,
            cid,
            g.lead_id,
            g.number,
            taken.fields,
            config,
            dial_at,
            held_agent=held_agent,
            flow=flow_of(config),
        )
        # Known as ours before it is in flight or PostgreSQL shows it dialled, so reconciliation never takes
        # it for an orphan nor drops its in-flight entry.
        self.calls[g.call_id] = call
        entered = await self.enter_flight(run, cid, g.call_id, g.number, dial_at, gate)
        if not entered:
            self.calls.pop(g.call_id, None)
            if entered is False:
                log.warning(
                    "call %s: lead %s or its number already has a call open, or its person reached the cap: "
                    "not dialled",
                    g.call_id,
                    g.lead_id,
                )
            return entered
        await self.store.emit(
            "call.dialing",
            dial_at,
            cid,
            g.call_id,
            g.lead_id,
            g.number,
            caller_id=config["caller_id"],
            attempt=g.attempt,
        )
        run.placed += 1
        CALLS_PLACED.labels(cid).inc()
        try:
            await self.adapter.originate(
                g.call_id, g.number, str(config["caller_id"]), ring_s, originate_options(cid, config, g.state)
            )
        except Exception as exc:
            call.reason = f"originate: {type(exc).__name__}"
            call.events.put_nowait(Event.ORIGINATE_ERROR)
        call.task = asyncio.create_task(self._follow(call, run), name=f"pacing:call:{g.call_id}")
        return True

    async def _listed_since_check(self, number: str, gate: GateResult) -> bool:
        """Read after the dial time is taken (core/dnc_changes.py): True, and the call is not dialled, when a
        listing or a consent revocation of ``number`` came after the gate's check, or it cannot be told."""
        if gate.dnc_seen < 0:
            return True
        try:
            return await dnc_changes.changed_since(self.redis, number, gate.dnc_seen)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("DNC changes unreadable at the dial (%s): not dialled", type(exc).__name__)
            return True

    # ================================================================ one call: the state machine's actions

    async def _follow(self, call: Call, run: CampaignRun) -> None:
        try:
            while call.state is not State.ENDED:
                item = await call.events.get()
                if isinstance(item, Event):
                    event, at = item, self.clock.now()
                else:
                    mapped = carrier_event(item, amd=amd_on(call.config))
                    if mapped is None:
                        continue
                    event, at = mapped, from_ms(item.at_ms) or self.clock.now()
                    if item.kind is EventKind.FAILED and item.reason and not call.reason:
                        call.reason = item.reason
                    if item.recording is not None:
                        call.recording = item.recording
                    if event is Event.LINE_ENDED and call.end_at is None:
                        call.end_at = at  # the carrier's time of the end, not the time we got to it
                await self.actions.apply(call, event, at, run)
        except asyncio.CancelledError:
            if call.state is not State.ENDED:
                await asyncio.shield(self.actions.apply(call, Event.SHUTDOWN, self.clock.now(), run))
            raise
        finally:
            self.calls.pop(call.call_id, None)
            run.wake.set()

    # ================================================================ orphans and stale claims

    async def _reconcile(self, cid: str, *, taking_over: bool = False) -> None:
        """Close the campaign's calls whose replica is gone: those PostgreSQL shows as dialled and not ended,
        and those in the Redis in-flight set. A replica counts as gone once its presence key has been
        missing for a whole lease time (a live replica whose Redis lost its data announces itself again
        within a lease pass). Then free lead claims no live call holds."""
        rows = await self.store.open_attempts(cid)
        raw: Any = await self.redis.zrange(keys.calls_in_flight(cid), 0, -1)
        in_flight = {str(m) for m in raw}
        by_id = {str(r["call_id"]): r for r in rows}
        foreign = {c: r for c, r in by_id.items() if c not in self.calls}
        replicas = {str(r["replica"]) for r in foreign.values()}
        alive = await self.store.alive(replicas - {self.replica})
        mono = self.clock.monotonic()
        ttl_s = self.leases.ttl_ms / 1000
        gone: set[str] = set()
        for rep in replicas:
            if rep == self.replica:
                gone.add(
                    rep
                )  # our own calls not followed by this process: left by a crash of an earlier life
                continue
            if rep in alive:
                self._absent.pop(rep, None)
                continue
            since = self._absent.setdefault(rep, mono)
            if mono - since >= ttl_s:
                gone.add(rep)
        closed = 0
        for row in foreign.values():
            if str(row["replica"]) in gone:
                await self.actions.close_orphan(row)
                closed += 1
        # In-flight entries with no open call behind them (ended, or never dialled) are dropped.
        for call_id in in_flight - set(by_id) - set(self.calls):
            await self.redis.zrem(keys.calls_in_flight(cid), call_id)
        if closed:
            log.warning("campaign %s: closed %d calls left open by a lost replica", cid, closed)
        if taking_over or closed:
            live = set(self.calls) | {c for c, r in foreign.items() if str(r["replica"]) not in gone}
            freed = await self.hopper.free_stale_claims(cid, live)
            if freed:
                log.warning(
                    "campaign %s: freed %d leads claimed by a lost replica but never dialled", cid, freed
                )

    async def _bootstrap_estimates(self, cid: str, run: CampaignRun) -> None:
        """A new holder learns from the campaign's recent ``call.ended`` events (the last
        ``BOOTSTRAP_EVENTS`` of the stream), so a failover does not start from nothing."""
        try:
            entries: Any = await self.redis.xrevrange(keys.call_events(), count=BOOTSTRAP_EVENTS)
        except Exception as exc:
            log.warning("campaign %s: no estimate bootstrap (%s)", cid, type(exc).__name__)
            return
        n = 0
        for _id, f in reversed(entries):
            if f.get("type") != "call.ended" or f.get("campaign_id") != cid:
                continue
            try:
                observe(
                    run.estimator,
                    f.get("outcome", ""),
                    int(f["dial_at"]),
                    int(f["answer_at"]) if f.get("answer_at") else None,
                    int(f["connect_at"]) if f.get("connect_at") else None,
                    int(f["end_at"]),
                )
                n += 1
            except (KeyError, ValueError):
                continue
        if n:
            log.info("campaign %s: estimates bootstrapped from %d recent calls", cid, n)

    # ================================================================ published state

    async def _publish(
        self,
        cid: str,
        run: CampaignRun,
        now: datetime,
        overrides: dict[str, Any],
        params: PacingParams,
        plan: Plan,
        agents: dict[str, dict[str, Any]],
        waiting: int,
        est: Estimates,
        budget: BudgetView,
    ) -> None:
        decision = plan.decision
        LINES_IN_FLIGHT.labels(cid).set(plan.lines)
        DIAL_LEVEL.labels(cid).set(decision.dial_level)
        ABANDON_RATE.labels(cid).set(budget.rate)
        counts = {s: 0 for s in AGENT_STATES}
        for a in agents.values():
            s = str(a.get("state"))
            counts[s if s in counts else PAUSED] += 1
        state = {
            "campaign_id": cid,
            "settings": overrides,
            "algorithm": params.algorithm,
            "effective_algorithm": decision.mode,
            "reason": decision.reason,
            "dial_level": decision.dial_level,
            "lines_in_flight": plan.lines,
            "answered_waiting": waiting,
            "agents": {"logged_in": len(agents), **counts},
            "agent_service_reachable": self.agents.reachable,
            "estimates": {
                "live_answer_rate": est.live_answer_rate,
                "live_answer_rate_sd": est.live_answer_rate_sd,
                "mean_answer_delay_s": est.mean_answer_delay_s,
                "mean_talk_s": est.mean_talk_s,
                "mean_wrap_s": est.mean_wrap_s,
                "samples": est.samples,
                "confident": est.confident,
            },
            "budget": {
                "cap": budget.cap,
                "window_s": budget.window_s,
                "live_answers": budget.live_answers,
                "abandoned": budget.abandoned,
                "remaining": budget.remaining,
                "rate": budget.rate,
                "rate_60min": budget.rate_60min,
            },
            "leader": run.lease.value,
            "updated_at_ms": ms(now),
            "calls_placed": run.placed,
            "calls_blocked": run.blocked,
            "calls_released": run.released,
        }
        if run.stopped:
            return
        volatile = {"updated_at_ms"}
        sig = json.dumps({k: v for k, v in state.items() if k not in volatile}, sort_keys=True)
        await self.store.publish_state(cid, state, changed=sig != run.last_state)
        run.last_state = sig
        await self.redis.set(keys.pacing_estimates(cid), json.dumps(state["estimates"]), ex=7 * 24 * 3600)
