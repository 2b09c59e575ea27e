"""The dialer: per leased campaign, each tick asks the pacing algorithm how many calls to launch, pops and
claims leads, runs every call through the dial-time gate, and originates through the telephony adapter;
then follows each call to exactly one ``call.ended`` event.

One :class:`Dialer` per replica: it holds leases (``lease.py``), runs one loop per campaign it holds,
pumps the adapter's event feed to the calls, and on shutdown stops dialing, lets calls in flight finish for
a while, hands the rest back (claim released, ``call.ended``), and releases its leases.

Agent-reserved mode (``Decision.reserve_agent``: progressive, and the fallback of the others): before a
call is dialled, ``AgentService.ReserveAgent`` holds one ready agent for it (no agent held: the lead goes
back to the hopper, nothing is dialled). On a live answer ``OfferCall`` names that agent
(``reserved_agent_id``), so the call cannot be abandoned for want of an agent; on no answer, busy,
machine, failure or any end before a connection the agent is released (``ReleaseAgent``). A hold the
dialer never follows up (it died) lapses in the agent service after its ttl.

When the agent ends the call (``EndCall`` from the console), the agent service publishes on
``keys.agent_hangups(campaign)``; this replica, subscribed for the campaigns it leases, hangs up the
carrier leg at once and records that moment as the call's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from outdial.core import keys
from outdial.core.clock import Clock
from outdial.core.metrics import (
    ABANDON_RATE,
    CALLS_BLOCKED,
    CALLS_ENDED,
    CALLS_PLACED,
    DIAL_LEVEL,
    LINES_IN_FLIGHT,
)
from outdial.core.redis import Redis, load_lua
from outdial.pacing.algorithms import PacingAlgorithm, make_algorithm
from outdial.pacing.estimates import OnlineEstimator
from outdial.pacing.gate import DialGate, GateLead
from outdial.pacing.lease import Lease, LeaseStore
from outdial.pacing.snapshot import (
    AGENT_STATES,
    PAUSED,
    READY,
    AgentSnap,
    BudgetView,
    Decision,
    Estimates,
    PacingParams,
    Snapshot,
    ring_timeout,
)
from outdial.pacing.store import PacingStore, from_ms, ms
from outdial.telephony.base import Answer, CallEvent, EventKind, TelephonyAdapter
from outdial.v1 import agent_pb2, agent_pb2_grpc, dnc_pb2, dnc_pb2_grpc

log = logging.getLogger("outdial.pacing.dialer")

DEFAULT_CAP = 0.03
DAY_S = 24 * 3600.0
BUDGET_REFRESH_S = 1.0

_COUNT_ABANDONED = """
local m = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local a = 0
for _, v in ipairs(m) do if string.sub(v, -2) == ':a' then a = a + 1 end end
return {#m, a}
"""


def default_window_s(jurisdiction: str) -> float:
    return DAY_S if jurisdiction == "UK" else 30 * DAY_S


def effective_params(config: dict[str, Any], overrides: dict[str, Any]) -> PacingParams:
    mode = str(overrides.get("algorithm") or config.get("dial_mode") or "progressive")
    target = overrides.get("target_abandon_rate")
    return PacingParams(
        algorithm=mode,
        power_ratio=float(overrides.get("power_ratio") or config.get("power_ratio") or 2.0),
        max_lines_per_agent=int(
            overrides.get("max_lines_per_agent") or config.get("max_lines_per_agent") or 3
        ),
        ring_timeout_s=max(
            15.0, float(overrides.get("ring_timeout_s") or config.get("ring_timeout_s") or 25)
        ),
        target_abandon_rate=float(target) if target else None,
    )


def make_guarded(name: str) -> PacingAlgorithm:
    """The campaign's algorithm, guarded by the safety rules; an unknown name gets progressive."""
    try:
        return make_algorithm(name)
    except ValueError:
        log.warning("unknown pacing algorithm %r: using progressive", name)
        return make_algorithm("progressive")


BOOTSTRAP_EVENTS = 20_000


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


@dataclass
class Call:
    call_id: str
    campaign_id: str
    lead_id: str
    number: str
    lead: dict[str, str]
    config: dict[str, Any]
    dial_at: datetime
    events: asyncio.Queue[CallEvent] = field(default_factory=asyncio.Queue)
    phase: str = "ringing"  # ringing | answered | connected | message | done
    answer: str | None = None
    answer_at: datetime | None = None
    connect_at: datetime | None = None
    agent_id: str = ""
    opt_out: bool = False
    message_played: bool = False
    outcome: str = ""
    reason: str = ""
    task: asyncio.Task[None] | None = None
    # The agent ReserveAgent held for this call before it was dialled ("" when none is held).
    held_agent: str = ""
    # When the agent hung up (the carrier leg is then hung up by the dialer).
    end_at: datetime | None = None


@dataclass
class CampaignRun:
    lease: Lease
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    placed: int = 0
    blocked: int = 0
    budget: BudgetView | None = None
    budget_at: float = 0.0
    estimator: OnlineEstimator = field(default_factory=OnlineEstimator)
    algo_name: str = ""
    algo: PacingAlgorithm | None = None
    last_state: str = ""
    # Set before the loop is cancelled: a cancellation that a client library turned into an error must
    # not keep the loop (or its state publication) going.
    stopped: bool = False

    def algorithm(self, name: str) -> PacingAlgorithm:
        if self.algo is None or name != self.algo_name:
            self.algo, self.algo_name = make_guarded(name), name
        return self.algo


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
        tick_s: float = 0.2,
        renew_s: float = 1.0,
        offer_deadline_s: float = 2.0,
        drain_s: float = 5.0,
        claim_ttl_s: int = 3600,
    ) -> None:
        self.redis = redis
        self.store = store
        self.leases = leases
        self.adapter = adapter
        self.dnc = dnc
        self.agent = agent
        self.clock = clock
        self.gate = DialGate(redis, dnc)
        self.tick_s = tick_s
        self.renew_s = renew_s
        self.offer_deadline_s = min(2.0, offer_deadline_s)
        self.drain_s = drain_s
        self.claim_ttl_s = claim_ttl_s
        self.campaigns: dict[str, CampaignRun] = {}
        self.calls: dict[str, Call] = {}
        self._dialing = True
        self._count: Any = redis.register_script(_COUNT_ABANDONED)
        self._claim_release: Any = redis.register_script(load_lua(__package__, "claim_release.lua"))
        # Agent hang-ups (keys.agent_hangups) of the campaigns this replica leases: one pub/sub connection.
        self._hang_channels: set[str] = set()
        self._hang_wanted = asyncio.Event()
        self._hang_ps: Any = None
        self._hang_task: asyncio.Task[None] | None = None

    @property
    def replica(self) -> str:
        return self.leases.replica

    # ================================================================ replica loop: leases + event pump

    async def run(self) -> None:
        pump = asyncio.create_task(self._pump(), name="pacing:event-pump")
        self._hang_task = asyncio.create_task(self._hangup_listener(), name="pacing:agent-hangups")
        try:
            while True:
                try:
                    await self._lease_pass()
                except (OSError, ConnectionError, TimeoutError) as exc:
                    log.warning("lease pass failed: %s", type(exc).__name__)
                except Exception:
                    log.exception("lease pass failed")
                await asyncio.sleep(self.renew_s)
        finally:
            await asyncio.shield(self._shutdown(pump))

    async def _lease_pass(self) -> None:
        active = await self.store.active_campaigns()
        for cid, run in list(self.campaigns.items()):
            ok = cid in active and await self.leases.renew(run.lease)
            if not ok:
                await self._stop_campaign(cid, release=cid not in active)
        if not self._dialing:
            return
        for cid in sorted(active - set(self.campaigns)):
            lease = await self.leases.acquire(cid)
            if lease is not None:
                log.info("campaign %s: lease taken (token %d)", cid, lease.token)
                run = CampaignRun(lease)
                await self._listen_hangups(cid)
                try:
                    await self._sweep_orphans(cid)
                except Exception:
                    log.exception("campaign %s: orphan sweep failed; dialing anyway", cid)
                await self._bootstrap_estimates(cid, run)
                self.campaigns[cid] = run
                run.task = asyncio.create_task(self._campaign_loop(cid, run), name=f"pacing:dial:{cid}")

    async def _stop_campaign(self, cid: str, *, release: bool) -> None:
        run = self.campaigns.pop(cid, None)
        if run is None:
            return
        await self._halt(run)
        await self._unlisten_hangups(cid)
        if release:
            with contextlib.suppress(Exception):
                await self.leases.release(run.lease)
        log.info("campaign %s: stopped dialing (lease %s)", cid, "released" if release else "lost")

    async def _halt(self, run: CampaignRun, patience_s: float = 10.0) -> None:
        """Stop a campaign loop between two steps, not in the middle of one: a tick that popped leads
        finishes with them (the ones it can no longer dial go back to the hopper, their claims released).
        Cancelled only when it does not stop within ``patience_s``."""
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

    async def _shutdown(self, pump: asyncio.Task[None]) -> None:
        """Stop dialing; let calls in flight finish for ``drain_s``; hand back the rest; release leases."""
        self._dialing = False
        for cid in list(self.campaigns):
            await self._halt(self.campaigns[cid])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_s
        while self.calls and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for call in list(self.calls.values()):
            call.reason = "shutdown"
            if call.task is not None:
                call.task.cancel()
        for call in list(self.calls.values()):
            if call.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await call.task
        for cid in list(self.campaigns):
            run = self.campaigns.pop(cid)
            with contextlib.suppress(Exception):
                await self.leases.release(run.lease)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        if self._hang_task is not None:
            self._hang_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._hang_task
        with contextlib.suppress(Exception):
            await self.adapter.close()

    async def _listen_hangups(self, cid: str) -> None:
        ch = keys.agent_hangups(cid)
        self._hang_channels.add(ch)
        self._hang_wanted.set()
        if self._hang_ps is not None:
            with contextlib.suppress(Exception):
                await self._hang_ps.subscribe(ch)

    async def _unlisten_hangups(self, cid: str) -> None:
        ch = keys.agent_hangups(cid)
        self._hang_channels.discard(ch)
        if self._hang_ps is not None:
            with contextlib.suppress(Exception):
                await self._hang_ps.unsubscribe(ch)

    async def _hangup_listener(self) -> None:
        """Blocks on the pub/sub socket (no polling); reconnects and re-subscribes on errors."""
        while True:
            ps: Any = None
            try:
                await self._hang_wanted.wait()
                ps = self.redis.pubsub(ignore_subscribe_messages=True)
                self._hang_ps = ps
                await ps.subscribe(*self._hang_channels)
                while True:
                    msg = await ps.get_message(timeout=None)
                    if msg is not None:
                        await self._on_agent_hangup(msg.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("agent hang-up listener error (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(0.2)
            finally:
                self._hang_ps = None
                if ps is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(ps.aclose())

    async def _on_agent_hangup(self, data: Any) -> None:
        try:
            call_id = str(json.loads(data)["call_id"])
        except (ValueError, TypeError, KeyError):
            return
        call = self.calls.get(call_id)
        if call is None or call.phase != "connected" or call.end_at is not None:
            return
        call.end_at = self.clock.now()
        log.info("call %s: the agent hung up; hanging up the carrier leg", call_id)
        try:
            await self.adapter.hangup(call_id)
        except Exception:
            log.exception("call %s: carrier hang-up failed", call_id)

    async def _pump(self) -> None:
        async for ev in self.adapter.events():
            call = self.calls.get(ev.call_id)
            if call is not None:
                call.events.put_nowait(ev)

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

    async def _budget(self, cid: str, run: CampaignRun, config: dict[str, Any], now: datetime) -> BudgetView:
        mono = self.clock.monotonic()
        if run.budget is not None and mono - run.budget_at < BUDGET_REFRESH_S:
            return run.budget
        jur = str(config.get("jurisdiction") or "US").upper()
        window_s = float(config.get("abandon_window_s") or default_window_s(jur))
        cap = float(config.get("abandon_cap") or DEFAULT_CAP)
        now_ms = ms(now)
        key = keys.abandon_window(cid)
        await self.redis.zremrangebyscore(key, "-inf", now_ms - int(window_s * 1000))
        live, ab = await self._count(keys=[key], args=[now_ms - int(window_s * 1000)])
        live60, ab60 = await self._count(keys=[key], args=[now_ms - 3600 * 1000])
        live, ab, live60, ab60 = int(live), int(ab), int(live60), int(ab60)
        run.budget = BudgetView(
            cap=cap,
            window_s=window_s,
            live_answers=live,
            abandoned=ab,
            remaining=cap * live - ab,
            rate_60min=(ab60 / live60) if live60 else 0.0,
            live_60min=live60,
            abandoned_60min=ab60,
        )
        run.budget_at = mono
        return run.budget

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
        ringing = [c for c in mine if c.phase == "ringing"]
        waiting = sum(1 for c in mine if c.phase == "answered")
        # Calls of a previous holder still in flight count as ringing (conservative).
        raw_inflight: Any = await self.redis.zrange(keys.calls_in_flight(cid), 0, -1, withscores=True)
        foreign = [float(sc) for m, sc in raw_inflight if m not in self.calls]
        ages = tuple((ms(now) - c.dial_at.timestamp() * 1000) / 1000 for c in ringing) + tuple(
            max(0.0, (ms(now) - s) / 1000) for s in foreign
        )
        budget = await self._budget(cid, run, config or {}, now)
        short_cap = overrides.get("short_window_cap")
        if short_cap:
            budget = replace(budget, short_window_cap=min(0.05, float(short_cap)))
        estimates = run.estimator.snapshot()
        snap = Snapshot(now.timestamp(), snaps, ages, waiting, estimates, budget, params)
        working = [a for a in snaps if a.state != PAUSED]
        ready = sum(1 for a in snaps if a.state == READY)
        stop_reason = ""
        if config is None or config.get("state") != "active":
            stop_reason = "campaign not active"
        elif overrides.get("paused"):
            stop_reason = "paused by pacing settings"
        elif params.algorithm in ("preview", "agentless"):
            stop_reason = f"{params.algorithm} mode is not dialled by the pacer"
        elif not snaps:
            stop_reason = "no agent logged in"
        elif not working:
            stop_reason = "every agent paused"
        if stop_reason:
            decision = Decision(0, 0.0, "none", stop_reason, False, ring_timeout(params))
        else:
            decision = run.algorithm(params.algorithm).decide(snap)
        n = max(0, decision.calls)
        lines = len(ages) + waiting
        n = min(n, max(0, params.max_lines_per_agent * len(working) - lines))
        if decision.reserve_agent:
            # Reserved agents are no longer ready; calls without a held agent still compete for the ready ones.
            held = sum(1 for c in mine if c.held_agent and c.phase in ("ringing", "answered"))
            n = min(n, max(0, ready - (lines - held)))
        if run.stopped:
            return
        if n > 0 and config is not None:
            ring_s = max(15.0, decision.ring_timeout_s, params.ring_timeout_s)
            await self._launch(cid, run, config, n, ring_s, reserve=decision.reserve_agent)
        await self._publish(
            cid, run, now, overrides, params, decision, agents, lines, waiting, estimates, budget
        )

    # ================================================================ launching calls

    async def _launch(
        self,
        cid: str,
        run: CampaignRun,
        config: dict[str, Any],
        n: int,
        ring_s: float,
        *,
        reserve: bool = False,
    ) -> None:
        popped: Any = await self.redis.zpopmin(keys.hopper(cid), n)
        if not popped:
            return
        claimed: list[tuple[GateLead, dict[str, str]]] = []
        for lead_id, _score in popped:
            lead: dict[str, str] = dict(await self.redis.hgetall(keys.hopper_lead(cid, lead_id)))  # type: ignore[arg-type]
            if not lead:
                continue
            call_id = uuid.uuid4().hex
            ok = await self.redis.set(keys.lead_claim(cid, lead_id), call_id, nx=True, ex=self.claim_ttl_s)
            if not ok:
                continue  # another call holds this lead: never two at once
            try:
                zones = tuple(str(z) for z in json.loads(lead.get("timezones") or "[]"))
            except ValueError:
                zones = ()
            claimed.append(
                (
                    GateLead(
                        call_id,
                        str(lead_id),
                        lead.get("number", ""),
                        zones,
                        lead.get("state", ""),
                        int(lead.get("attempt") or 0) + 1,
                    ),
                    lead,
                )
            )
        if not claimed:
            return
        now = self.clock.now()
        results = await self.gate.check(cid, config, [g for g, _ in claimed], now)
        out_of_agents = False
        for (g, lead), r in zip(claimed, results, strict=True):
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
                await self.redis.delete(keys.lead_claim(cid, g.lead_id))
                continue
            held = ""
            if reserve and not out_of_agents and not run.stopped:
                held = await self._hold_agent(cid, g.call_id, ring_s)
                out_of_agents = not held
            if (
                run.stopped
                or (reserve and not held)
                or not await self._originate(cid, run, config, g, lead, ring_s, held)
            ):
                # Fenced off (lease lost), shutting down, or no agent to hold: hand the lead back untouched.
                if held:
                    await self._release(held, g.call_id, "not_dialled")
                await self.redis.delete(keys.lead_claim(cid, g.lead_id))
                await self.redis.zadd(keys.hopper(cid), {g.lead_id: 0})

    async def _originate(
        self,
        cid: str,
        run: CampaignRun,
        config: dict[str, Any],
        g: GateLead,
        lead: dict[str, str],
        ring_s: float,
        held_agent: str = "",
    ) -> bool:
        dial_at = self.clock.now()
        if not self._dialing or not await self.leases.fence_and_register(run.lease, g.call_id, ms(dial_at)):
            return False
        call = Call(g.call_id, cid, g.lead_id, g.number, lead, config, dial_at, held_agent=held_agent)
        self.calls[g.call_id] = call
        await self.redis.zadd(keys.number_attempts(g.number), {g.call_id: ms(dial_at)})
        await self.redis.expire(keys.number_attempts(g.number), 8 * 24 * 3600)
        await self.store.mark_dialed(g.call_id, dial_at)
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
            await self.adapter.originate(g.call_id, g.number, str(config["caller_id"]), ring_s)
        except Exception as exc:
            call.outcome, call.reason = "failed", f"originate: {type(exc).__name__}"
            call.events.put_nowait(
                CallEvent(g.call_id, EventKind.ENDED, ms(dial_at), reason="originate_error")
            )
        call.task = asyncio.create_task(self._follow(call, run), name=f"pacing:call:{g.call_id}")
        return True

    # ================================================================ one call

    async def _next(self, call: Call) -> CallEvent:
        return await call.events.get()

    async def _follow(self, call: Call, run: CampaignRun) -> None:
        try:
            while True:
                ev = await self._next(call)
                at = from_ms(ev.at_ms) or self.clock.now()
                if ev.kind is EventKind.ENDED:
                    break
                if ev.kind is EventKind.RINGING:
                    await self._emit(call, "call.ringing", at)
                elif ev.kind in (EventKind.NO_ANSWER, EventKind.BUSY, EventKind.FAILED):
                    call.outcome = ev.kind.value
                    call.phase = "done"
                    extra = {"reason": ev.reason} if ev.kind is EventKind.FAILED else {}
                    await self._release_held(call, ev.kind.value)
                    await self._emit(call, f"call.{ev.kind.value}", at, **extra)
                elif ev.kind is EventKind.ANSWERED and ev.answer is Answer.MACHINE:
                    call.answer, call.answer_at, call.outcome, call.phase = "machine", at, "machine", "done"
                    await self._emit(call, "call.answered", at, answer="machine")
                    await self._release_held(call, "machine")
                    await self.adapter.hangup(call.call_id)
                elif ev.kind is EventKind.ANSWERED:
                    call.answer, call.answer_at, call.phase = "human", at, "answered"
                    await self._emit(call, "call.answered", at, answer="human")
                    await self._hand_to_agent(call, run)
                elif ev.kind is EventKind.DTMF and call.phase == "message" and not call.opt_out:
                    call.opt_out = True
                    await self._opt_out(call)
                elif ev.kind is EventKind.MESSAGE_DONE:
                    await self.adapter.hangup(call.call_id)
        finally:
            await asyncio.shield(self._end(call, run))

    async def _hand_to_agent(self, call: Call, run: CampaignRun) -> None:
        assert call.answer_at is not None
        elapsed = (self.clock.now() - call.answer_at).total_seconds()
        budget = max(0.05, self.offer_deadline_s - max(0.0, elapsed))
        ts = Timestamp()
        ts.FromDatetime(call.answer_at)
        name = " ".join(x for x in (call.lead.get("first_name", ""), call.lead.get("last_name", "")) if x)
        try:
            fields = {str(k): str(v) for k, v in json.loads(call.lead.get("fields") or "{}").items()}
        except (ValueError, AttributeError):
            fields = {}
        req = agent_pb2.OfferCallRequest(
            campaign_id=call.campaign_id,
            call_id=call.call_id,
            lead_id=call.lead_id,
            number=call.number,
            lead_name=name,
            lead_fields=fields,
            answered_at=ts,
            deadline=Duration(nanos=int(budget * 1e9) % 1_000_000_000, seconds=int(budget)),
            reserved_agent_id=call.held_agent,
        )
        assigned, agent_id, why = False, "", ""
        try:
            resp = await self.agent.OfferCall(req, timeout=budget + 0.25)
            assigned, agent_id, why = resp.assigned, resp.agent_id, resp.reason
        except grpc.aio.AioRpcError as exc:
            why = f"agent service: {exc.code().name}"
        now = self.clock.now()
        # The law counts from the greeting: an assignment that comes back late is an abandonment too.
        if assigned and (now - call.answer_at) <= timedelta(seconds=2.0):
            if call.held_agent and call.held_agent != agent_id:
                await self._release(call.held_agent, call.call_id, "offered_elsewhere")
            call.held_agent = ""
            call.agent_id, call.connect_at, call.phase, call.outcome = agent_id, now, "connected", "connected"
            await self.adapter.bridge(call.call_id, agent_id)
            await self.store.mark_connected(call.call_id, now, agent_id)
            await self.redis.zadd(
                keys.abandon_window(call.campaign_id), {f"{call.call_id}:h": ms(call.answer_at)}
            )
            return
        if assigned:
            why = "assigned after the 2 s deadline"
            # The agent service connected them, but the call is abandoned: give the agent back at once.
            await self._release(agent_id, call.call_id, "abandoned")
        await self._release_held(call, "abandoned")
        call.phase, call.outcome, call.reason = "message", "abandoned", why or "no agent"
        cfg = call.config
        text = (
            f"This is {cfg.get('seller_name') or 'the caller'} with a telemarketing call. We are sorry no one was "
            f"available. To not be called again press 9, or call {cfg.get('opt_out_number') or cfg.get('caller_id')}."
        )
        await self.adapter.play_message(call.call_id, text)
        call.message_played = True
        await self.redis.zadd(
            keys.abandon_window(call.campaign_id), {f"{call.call_id}:a": ms(call.answer_at)}
        )
        await self.redis.set(keys.number_abandoned(call.number), ms(call.answer_at), ex=72 * 3600)
        run.budget = None  # refresh the budget at the next tick

    async def _hold_agent(self, cid: str, call_id: str, ring_s: float) -> str:
        """ReserveAgent for a call about to be dialled: the held agent's id, or "" (then nothing is dialled:
        a progressive call must never wait for an agent)."""
        ttl = ring_s + self.offer_deadline_s + 10.0
        req = agent_pb2.ReserveAgentRequest(
            campaign_id=cid,
            call_id=call_id,
            ttl=Duration(seconds=int(ttl), nanos=int(ttl * 1e9) % 1_000_000_000),
        )
        try:
            resp = await self.agent.ReserveAgent(req, timeout=2.0)
        except grpc.aio.AioRpcError as exc:
            log.warning("campaign %s: ReserveAgent failed (%s): not dialling", cid, exc.code().name)
            return ""
        return str(resp.agent_id) if resp.reserved else ""

    async def _release(self, agent_id: str, call_id: str, reason: str) -> None:
        """Give an agent back (idempotent in the agent service; the hold lapses by itself if this fails)."""
        try:
            await self.agent.ReleaseAgent(
                agent_pb2.ReleaseAgentRequest(agent_id=agent_id, call_id=call_id, reason=reason), timeout=2.0
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("ReleaseAgent %s for call %s failed: %s", agent_id, call_id, exc.code().name)

    async def _release_held(self, call: Call, reason: str) -> None:
        if call.held_agent:
            agent_id, call.held_agent = call.held_agent, ""
            await self._release(agent_id, call.call_id, reason)

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

    async def _end(self, call: Call, run: CampaignRun) -> None:
        """Exactly once per dialed call: the abandonment record, ``call.ended``, and the clean-up."""
        end_at = call.end_at or self.clock.now()
        with contextlib.suppress(Exception):
            await self._release_held(call, call.reason or call.outcome or "ended")
        if not call.outcome:
            if call.phase == "connected":
                call.outcome = "connected"
            elif call.phase in ("answered", "message"):
                call.outcome = "abandoned"
            else:
                call.outcome = "failed"
                call.reason = call.reason or "ended before an outcome"
        if call.reason == "shutdown":
            with contextlib.suppress(Exception):
                await self.adapter.hangup(call.call_id)
        try:
            if not await self._own_end(call.campaign_id, call.call_id):
                log.warning("call %s was closed by the campaign's new lease holder", call.call_id)
                return
            if call.outcome == "abandoned":
                if not call.message_played and call.answer_at is not None:
                    await self.redis.zadd(
                        keys.abandon_window(call.campaign_id), {f"{call.call_id}:a": ms(call.answer_at)}
                    )
                await self._emit(
                    call,
                    "call.abandoned",
                    end_at,
                    message_played=int(call.message_played),
                    opt_out=int(call.opt_out),
                )
            if call.outcome == "failed" and call.reason:
                await self._emit(call, "call.failed", end_at, reason=call.reason)
            self._learn(call, run, end_at)
            CALLS_ENDED.labels(call.campaign_id, call.outcome).inc()
            if call.outcome == "connected" and call.agent_id:
                await self._agent_call_ended(call)
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
            )
            await self.store.finish_attempt(
                call.call_id,
                outcome=call.outcome,
                answer=call.answer,
                answer_at=call.answer_at,
                connect_at=call.connect_at,
                end_at=end_at,
                agent_id=call.agent_id or None,
                opt_out=call.opt_out,
            )
        except Exception:
            log.exception("call %s: end record failed", call.call_id)
        finally:
            with contextlib.suppress(Exception):
                claim = keys.lead_claim(call.campaign_id, call.lead_id)
                if await self.redis.get(claim) == call.call_id:
                    await self.redis.delete(claim)
            self.calls.pop(call.call_id, None)
            run.wake.set()

    async def _own_end(self, campaign_id: str, call_id: str) -> bool:
        """Whoever removes a call from the in-flight set writes its end (ZREM is atomic): the replica that
        followed it, or a new lease holder sweeping the calls of one that died. Exactly one ``call.ended``."""
        try:
            return bool(await self.redis.zrem(keys.calls_in_flight(campaign_id), call_id))
        except Exception:
            log.warning("call %s: in-flight set unreachable; writing its end anyway", call_id)
            return True

    async def _sweep_orphans(self, cid: str) -> None:
        """At lease acquisition: calls still in flight belong to a holder whose lease ran out (a graceful stop
        ends or hands back its calls first). Nobody follows them any more: close each one (outcome as far as
        it got: connected, else failed with reason ``replica_lost``), release its lead and its agent."""
        entries: Any = await self.redis.zrange(keys.calls_in_flight(cid), 0, -1, withscores=True)
        orphans = [(str(m), float(sc)) for m, sc in entries if m not in self.calls]
        await self._sweep_stale_claims(cid, {str(m) for m, _ in entries})
        if not orphans:
            return
        rows = await self.store.attempts([m for m, _ in orphans])
        now = self.clock.now()
        for call_id, score in orphans:
            if not await self._own_end(cid, call_id):
                continue
            row = rows.get(call_id)
            lead_id = str(row["lead_id"]) if row else ""
            number = str(row["number"]) if row else ""
            connect_at = row["connect_at"] if row else None
            agent_id = str(row["agent_id"] or "") if row else ""
            outcome = "connected" if connect_at is not None else "failed"
            if outcome == "failed":
                await self.store.emit(
                    "call.failed", now, cid, call_id, lead_id, number, reason="replica_lost"
                )
            await self.store.emit(
                "call.ended",
                now,
                cid,
                call_id,
                lead_id,
                number,
                outcome=outcome,
                dial_at=int(score),
                answer_at="",
                connect_at=ms(connect_at) if connect_at else "",
                end_at=ms(now),
                agent_id=agent_id,
                duration_s=f"{(now - connect_at).total_seconds():.3f}" if connect_at else "0",
            )
            if row is not None:
                await self.store.finish_attempt(
                    call_id,
                    outcome=outcome,
                    answer=row["answer"],
                    answer_at=row["answer_at"],
                    connect_at=connect_at,
                    end_at=now,
                    agent_id=agent_id or None,
                    opt_out=False,
                )
            if lead_id:
                claim = keys.lead_claim(cid, lead_id)
                if await self.redis.get(claim) == call_id:
                    await self.redis.delete(claim)
            if agent_id:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.agent.EndCall(
                        agent_pb2.EndCallRequest(agent_id=agent_id, call_id=call_id), timeout=2.0
                    )
            else:
                # An agent held for this call before it was dialled (progressive) goes back to ready now
                # rather than when the hold lapses.
                held = await self.redis.get(keys.call_agent(call_id))
                if held:
                    await self._release(str(held), call_id, "replica_lost")
        log.warning("campaign %s: closed %d calls left in flight by a lost replica", cid, len(orphans))

    async def _sweep_stale_claims(self, cid: str, in_flight: set[str]) -> None:
        """At lease acquisition: a lead claimed by a holder that died between the claim and the dial (its call
        never reached the in-flight set) would stay unavailable until the claim's TTL. The new holder is the
        only one allowed to dial (a late dial by the old one is refused by the fence), so a claim whose call is
        neither in flight nor ours is stale: delete it (compare-and-delete) so the feeder offers the lead again.
        SCAN over this campaign's claim keys, never KEYS."""
        freed = 0
        async for key in self.redis.scan_iter(match=keys.lead_claim(cid, "*"), count=500):
            call_id = await self.redis.get(key)
            if call_id is None or call_id in in_flight or call_id in self.calls:
                continue
            freed += int(await self._claim_release(keys=[key], args=[call_id]))
        if freed:
            log.warning("campaign %s: freed %d leads claimed by a lost replica but never dialled", cid, freed)

    async def _agent_call_ended(self, call: Call) -> None:
        """The far side hung up: the agent moves on to wrap-up (it may have ended the call itself first)."""
        try:
            await self.agent.EndCall(
                agent_pb2.EndCallRequest(agent_id=call.agent_id, call_id=call.call_id), timeout=2.0
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                log.warning("EndCall for agent %s failed: %s", call.agent_id, exc.code().name)

    def _learn(self, call: Call, run: CampaignRun, end_at: datetime) -> None:
        if call.reason == "shutdown":
            return
        observe(
            run.estimator,
            call.outcome,
            ms(call.dial_at),
            ms(call.answer_at) if call.answer_at else None,
            ms(call.connect_at) if call.connect_at else None,
            ms(end_at),
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
        decision: Decision,
        agents: dict[str, dict[str, Any]],
        lines: int,
        waiting: int,
        est: Estimates,
        budget: BudgetView,
    ) -> None:
        LINES_IN_FLIGHT.labels(cid).set(lines)
        DIAL_LEVEL.labels(cid).set(decision.dial_level)
        ABANDON_RATE.labels(cid).set(budget.abandoned / budget.live_answers if budget.live_answers else 0.0)
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
            "lines_in_flight": lines,
            "answered_waiting": waiting,
            "agents": {"logged_in": len(agents), **counts},
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
        }
        if run.stopped:
            return
        volatile = {"updated_at_ms"}
        sig = json.dumps({k: v for k, v in state.items() if k not in volatile}, sort_keys=True)
        await self.store.publish_state(cid, state, changed=sig != run.last_state)
        run.last_state = sig
        await self.redis.set(keys.pacing_estimates(cid), json.dumps(state["estimates"]), ex=7 * 24 * 3600)
