"""A discrete-event call-centre simulator over the real pacing code (virtual clock, no network).

Each tick it calls the dialer's own pacing core, :meth:`outdial.pacing.planner.Planner.plan` (or the
clairvoyant bound, which only the simulator can implement since it reads the future), against simulated
agents and a simulated carrier, for hours of virtual time in seconds; the ringing calls the planner
releases (capacity loss) are released here too.

Common random numbers: every lead's draws (an outcome uniform, its answer delay, its talk time) come from
one seeded stream, lead after lead, and leads are dialed in order; agents' log-ins, breaks and the shift
change come from another. So lead k behaves identically under every policy, and so do the agents.

The carrier: a lead dialed at ``t`` is a person with probability ``p(t)`` (which may drop at an hour),
else a machine, busy, failed or unanswered. People and machines answer after a Gamma(shape 4, mean 15 s)
delay, truncated at the no-answer release (25 s); an unanswered call is released at
``min(ring time, release)``. A person is connected to a ready agent (the longest idle) or to the first
agent to free up within 2 s; otherwise the call is abandoned. Talk is Exp(mean) (or lognormal with the same
mean: ``talk_sigma``), wrap-up fixed.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from outdial.pacing.algorithms import PATIENCE_S
from outdial.pacing.budget import US_WINDOW_S, AbandonBudget
from outdial.pacing.estimates import OnlineEstimator
from outdial.pacing.planner import Planner, RingingCall, TickInput
from outdial.pacing.snapshot import (
    ON_CALL,
    PAUSED,
    READY,
    RESERVED,
    WRAP_UP,
    AgentSnap,
    Decision,
    PacingParams,
    ring_timeout,
)
from outdial.rules.law import ABANDON_POLICIES

CLAIRVOYANT = "clairvoyant"
# The clairvoyant reference: an answer lands this much inside the person's 2 s (event order at equal times);
# it draws new leads for an agent freeing within this many seconds (answer delays are dense there), at most
# so many per agent and tick; its look-ahead pool of live leads holds at most so many.
_CLAIRVOYANT_SLACK_S = 0.05
_CLAIRVOYANT_DRAW_S = 20.0
_CLAIRVOYANT_MAX_DRAWS = 400
_CLAIRVOYANT_POOL = 4096

# Call outcomes.
LIVE, MACHINE, BUSY, FAILED, NO_ANSWER = range(5)
# Event kinds.
_TICK, _RESOLVE, _ABANDON, _TALK_END, _WRAP_END, _LOGIN, _BREAK, _BREAK_END, _SHIFT = range(9)
# Call states.
_RINGING, _WAITING, _DONE = range(3)


@dataclass(frozen=True)
class SimConfig:
    agents: int = 50
    hours: float = 8.0
    answer_rate: float = 0.25
    answer_rate_drop_at_hour: float | None = None
    answer_rate_after: float | None = None
    machine_rate: float = 0.15
    busy_rate: float = 0.05
    failed_rate: float = 0.03
    answer_delay_mean_s: float = 15.0
    answer_delay_shape: float = 4.0
    no_answer_release_s: float = 25.0
    busy_release_s: float = 4.0
    failed_release_s: float = 1.0
    talk_mean_s: float = 120.0
    # 0: talk times exponential; > 0: lognormal with this sigma (of the log) and the same mean.
    talk_sigma: float = 0.0
    wrap_s: float = 15.0
    algorithm: str = "predictive"
    params: PacingParams = field(default_factory=PacingParams)
    abandon_cap: float = ABANDON_POLICIES["US"].cap
    abandon_window_s: float = US_WINDOW_S
    tick_s: float = 1.0
    login_spread_s: float = 60.0
    breaks: bool = False
    break_s: float = 900.0
    shift_change_at_hour: float | None = None
    shift_change_fraction: float = 0.3
    sample_every_s: float = 60.0
    seed: int = 1


@dataclass
class SimResult:
    config: dict[str, Any]
    talk_occupancy: float
    idle_wait_s: float
    abandon_rate: float
    worst_60min_abandon_rate: float
    calls: int
    live_answers: int
    connects: int
    abandoned: int
    calls_per_agent_hour: float
    connects_per_agent_hour: float
    agent_hours: float
    progressive_share: float
    estimator_changes: int
    timeline: list[dict[str, float | str]]
    released: int = 0

    def to_dict(self, timeline: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not timeline:
            d.pop("timeline")
        return d


class _Lead:
    __slots__ = ("delay", "talk", "u")

    def __init__(self, u: float, delay: float, talk: float) -> None:
        self.u = u
        self.delay = delay
        self.talk = talk


class _Leads:
    """Lead k's draws, from one seeded stream, identical whatever the policy (common random numbers)."""

    def __init__(self, cfg: SimConfig, seed: int) -> None:
        self.rng = random.Random(seed)
        self.cfg = cfg
        self.drawn: list[_Lead] = []
        self.next_index = 0

    def peek(self, k: int) -> _Lead:
        while len(self.drawn) <= k:
            r = self.rng
            shape, scale = (
                self.cfg.answer_delay_shape,
                self.cfg.answer_delay_mean_s / self.cfg.answer_delay_shape,
            )
            u = r.random()
            d = r.gammavariate(shape, scale)
            while d > self.cfg.no_answer_release_s:
                d = r.gammavariate(shape, scale)
            if self.cfg.talk_sigma > 0.0:
                sigma = self.cfg.talk_sigma
                talk = r.lognormvariate(math.log(self.cfg.talk_mean_s) - 0.5 * sigma * sigma, sigma)
            else:
                talk = r.expovariate(1.0 / self.cfg.talk_mean_s)
            self.drawn.append(_Lead(u, d, talk))
        return self.drawn[k]

    def pop(self) -> _Lead:
        lead = self.peek(self.next_index)
        self.drawn[self.next_index] = lead
        self.next_index += 1
        return lead


class _Agent:
    __slots__ = (
        "avail_since",
        "break_pending",
        "call",
        "free_since",
        "id",
        "leaving",
        "logged_in",
        "since",
        "state",
        "talk_end",
    )

    def __init__(self, aid: int) -> None:
        self.id = aid
        self.state = PAUSED
        self.since = 0.0
        self.logged_in = False
        self.leaving = False
        self.break_pending = False
        self.call: _Call | None = None
        self.free_since = 0.0
        self.avail_since = 0.0
        self.talk_end = 0.0


class _Call:
    __slots__ = ("agent", "answer_t", "dial_t", "id", "lead", "outcome", "resolve_t", "state")

    def __init__(self, cid: int, lead: _Lead, outcome: int, dial_t: float, resolve_t: float) -> None:
        self.id = cid
        self.lead = lead
        self.outcome = outcome
        self.dial_t = dial_t
        self.resolve_t = resolve_t
        self.state = _RINGING
        self.agent: _Agent | None = None
        self.answer_t = 0.0


class PacingSim:
    """One simulated day of one campaign under one policy."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.end = cfg.hours * 3600.0
        self.ring = ring_timeout(cfg.params)
        self.planner: Planner | None = None
        if cfg.algorithm != CLAIRVOYANT:
            self.planner = Planner(cfg.algorithm)
        self.leads = _Leads(cfg, cfg.seed * 1_000_003 + 17)
        self.agent_rng = random.Random(cfg.seed * 7_919 + 5)
        self.budget = AbandonBudget(cfg.abandon_cap, cfg.abandon_window_s)
        self.est = OnlineEstimator()
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.agents: list[_Agent] = []
        self.ready: dict[int, _Agent] = {}
        self.in_flight: dict[int, _Call] = {}
        self.waiting: deque[_Call] = deque()
        self.n_waiting = 0
        self.next_call = 0
        # metrics
        self.calls = 0
        self.live = 0
        self.connects = 0
        self.abandoned = 0
        self.talk_s = 0.0
        self.avail_s = 0.0
        self.idle_wait_total = 0.0
        self.live_events: list[tuple[float, bool]] = []
        self.ticks = 0
        self.released = 0
        self.progressive_ticks = 0
        self.timeline: list[dict[str, float | str]] = []
        # clairvoyant: live leads drawn in order and not dialed yet, sorted by answer delay
        self._pool: list[_Lead] = []
        self._pool_delay: list[float] = []
        self.last_decision: Decision | None = None
        self._lines_sum = 0
        self._lines_n = 0

    # ------------------------------------------------------------------------------------------ plumbing
    def _push(self, t: float, kind: int, ref: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, ref))

    def _p_live(self, t: float) -> float:
        c = self.cfg
        if c.answer_rate_drop_at_hour is not None and c.answer_rate_after is not None:
            if t >= c.answer_rate_drop_at_hour * 3600.0:
                return c.answer_rate_after
        return c.answer_rate

    def _schedule_agents(self) -> None:
        c, r = self.cfg, self.agent_rng
        for i in range(c.agents):
            a = _Agent(i)
            self.agents.append(a)
            self._push(r.uniform(0.0, c.login_spread_s), _LOGIN, a)
            if c.breaks:
                self._push(r.uniform(0.25, 0.75) * self.end, _BREAK, a)
        if c.shift_change_at_hour is not None and c.shift_change_fraction > 0:
            self._push(c.shift_change_at_hour * 3600.0, _SHIFT, None)

    # ------------------------------------------------------------------------------------------ agents
    def _login(self, a: _Agent, t: float) -> None:
        a.logged_in = True
        a.avail_since = t
        self._free(a, t)

    def _logout(self, a: _Agent, t: float) -> None:
        self.ready.pop(a.id, None)
        if a.state != PAUSED:
            self.avail_s += t - a.avail_since
        a.logged_in = False
        a.state = PAUSED

    def _free(self, a: _Agent, t: float, released: bool = False) -> None:
        """The agent can take a call: log out, pause, take a waiting call or become ready.

        ``released``: its reserved call went unanswered (it has been idle since before the reservation)."""
        a.call = None
        if a.leaving:
            self._logout(a, t)
            return
        if a.break_pending:
            a.break_pending = False
            self.avail_s += t - a.avail_since
            a.state, a.since = PAUSED, t
            self._push(t + self.cfg.break_s, _BREAK_END, a)
            return
        if not released:
            a.free_since = t
        while self.waiting:
            call = self.waiting.popleft()
            if call.state == _WAITING:
                self.n_waiting -= 1
                self._connect(a, call, t)
                return
        a.state, a.since = READY, t
        self.ready[a.id] = a

    def _connect(self, a: _Agent, call: _Call, t: float) -> None:
        self.ready.pop(a.id, None)
        call.state = _DONE
        call.agent = a
        a.call = call
        a.state, a.since = ON_CALL, t
        a.talk_end = t + call.lead.talk
        self.idle_wait_total += t - a.free_since
        self.connects += 1
        self.live += 1
        self.live_events.append((t, False))
        self.budget.record_live(t, False)
        self._push(a.talk_end, _TALK_END, a)

    def _talk_end(self, a: _Agent, t: float) -> None:
        call = a.call
        talk = call.lead.talk if call is not None else 0.0
        self.talk_s += talk
        self.est.observe_talk(talk)
        a.state, a.since = WRAP_UP, t
        self._push(t + self.cfg.wrap_s, _WRAP_END, a)

    def _wrap_end(self, a: _Agent, t: float) -> None:
        self.est.observe_wrap(self.cfg.wrap_s)
        self._free(a, t)

    def _break(self, a: _Agent, t: float) -> None:
        if not a.logged_in:
            return
        if a.state == READY:
            self.ready.pop(a.id, None)
            self.avail_s += t - a.avail_since
            a.state, a.since = PAUSED, t
            self._push(t + self.cfg.break_s, _BREAK_END, a)
        else:
            a.break_pending = True

    def _break_end(self, a: _Agent, t: float) -> None:
        if a.logged_in and a.state == PAUSED:
            a.avail_since = t
            self._free(a, t)

    def _shift_change(self, t: float) -> None:
        c, r = self.cfg, self.agent_rng
        present = [a for a in self.agents if a.logged_in and not a.leaving]
        n = round(c.shift_change_fraction * len(present))
        for a in r.sample(present, n):
            a.leaving = True
            if a.state in (READY, PAUSED):
                self._logout(a, t)
        for _ in range(n):
            a = _Agent(len(self.agents))
            self.agents.append(a)
            self._push(t + r.uniform(0.0, 120.0), _LOGIN, a)

    # ------------------------------------------------------------------------------------------ calls
    def _launch(self, t: float, reserve: bool, lead: _Lead | None = None) -> bool:
        agent: _Agent | None = None
        if reserve:
            if not self.ready:
                return False
            agent = self.ready.pop(next(iter(self.ready)))
            agent.state, agent.since = RESERVED, t
        if lead is None:
            lead = self.leads.pop()
        p = self._p_live(t)
        c = self.cfg
        u = lead.u
        if u < p:
            outcome = LIVE
        elif u < p + c.machine_rate:
            outcome = MACHINE
        elif u < p + c.machine_rate + c.busy_rate:
            outcome = BUSY
        elif u < p + c.machine_rate + c.busy_rate + c.failed_rate:
            outcome = FAILED
        else:
            outcome = NO_ANSWER
        if outcome in (LIVE, MACHINE):
            dur = lead.delay
            if dur > self.ring:
                outcome, dur = NO_ANSWER, self.ring
        elif outcome == BUSY:
            dur = c.busy_release_s
        elif outcome == FAILED:
            dur = c.failed_release_s
        else:
            dur = min(self.ring, c.no_answer_release_s)
        call = _Call(self.next_call, lead, outcome, t, t + dur)
        self.next_call += 1
        call.agent = agent
        if agent is not None:
            agent.call = call
        self.in_flight[call.id] = call
        self.calls += 1
        self._push(call.resolve_t, _RESOLVE, call)
        return True

    def _resolve(self, call: _Call, t: float) -> None:
        if self.in_flight.pop(call.id, None) is None:
            return  # released by the planner (capacity loss) before it resolved
        live = call.outcome == LIVE
        self.est.observe_outcome(live, call.outcome == MACHINE, t - call.dial_t)
        reserved = call.agent
        if not live:
            call.state = _DONE
            if reserved is not None:
                self._free(reserved, t, released=True)
            return
        call.answer_t = t
        if reserved is not None:
            self._connect(reserved, call, t)
        elif self.ready:
            self._connect(self.ready[next(iter(self.ready))], call, t)
        else:
            call.state = _WAITING
            self.waiting.append(call)
            self.n_waiting += 1
            self._push(t + PATIENCE_S, _ABANDON, call)

    def _abandon(self, call: _Call, t: float) -> None:
        if call.state != _WAITING:
            return
        call.state = _DONE
        self.n_waiting -= 1
        self.live += 1
        self.abandoned += 1
        self.live_events.append((t, True))
        self.budget.record_live(t, True)

    # ------------------------------------------------------------------------------------------ pacing
    def _tick_input(self, t: float, ringing: list[_Call]) -> TickInput:
        params = self.cfg.params
        if params.algorithm != self.cfg.algorithm:
            params = replace(params, algorithm=self.cfg.algorithm)
        return TickInput(
            now_s=t,
            params=params,
            agents=tuple(AgentSnap(a.state, t - a.since) for a in self.agents if a.logged_in),
            ringing=tuple(RingingCall(t - c.dial_t, c.agent is not None) for c in ringing),
            answered_waiting=self.n_waiting,
            estimates=self.est.snapshot(),
            budget=self.budget.view(t),
        )

    def _tick(self, t: float) -> None:
        self.ticks += 1
        self._lines_sum += len(self.in_flight) + self.n_waiting
        self._lines_n += 1
        if self.planner is None:
            self._clairvoyant(t)
        else:
            ringing = list(self.in_flight.values())
            plan = self.planner.plan(self._tick_input(t, ringing))
            d = plan.decision
            self.last_decision = d
            for i in plan.cancel:
                self._release(ringing[i], t)
            if plan.reserve_agent:
                self.progressive_ticks += 1
            for _ in range(plan.launch):
                if not self._launch(t, plan.reserve_agent):
                    break
        nxt = t + self.cfg.tick_s
        if nxt < self.end:
            self._push(nxt, _TICK, None)

    def _release(self, call: _Call, t: float) -> None:
        """The planner released a ringing call nobody could staff (after the legal ring minimum)."""
        del self.in_flight[call.id]
        call.state = _DONE
        self.released += 1
        self.est.observe_outcome(False, False, t - call.dial_t)

    def _clairvoyant(self, t: float) -> None:
        """The clairvoyant reference: knows every lead's outcome and timing and every agent's free time.

        Leads are drawn in order; a lead nobody will answer is dialed at once (it never needs an agent).
        Live leads wait in a look-ahead pool sorted by answer delay (live leads it never needs are simply
        not dialed). For each agent about to be free that no answer covers yet, in order of free time, it
        dials now a pooled lead whose answer lands within the 2 s before that free time (the person waits,
        the agent has no idle second), drawing more leads while none does once the free time is within
        :data:`_CLAIRVOYANT_DRAW_S`; else it waits for a later tick, unless this tick is the last one before
        the agent frees: then the soonest answer that still finds the agent. Lines are not limited.

        It is a reference, not a proven optimum: it decides on 1 s ticks, greedily, agent by agent, and never
        abandons a call. The upper bound for any pacer that does not pick leads by their talk time is the
        ceiling ``E(talk) / (E(talk) + wrap)``.
        """
        frees: list[float] = []
        for a in self.agents:
            if not a.logged_in or a.leaving or a.break_pending or a.state == PAUSED:
                continue
            if a.state == READY:
                frees.append(t)
            elif a.state == ON_CALL:
                frees.append(a.talk_end + self.cfg.wrap_s)
            elif a.state == WRAP_UP:
                frees.append(a.since + self.cfg.wrap_s)
        frees.sort()
        covered = self.n_waiting + sum(1 for c in self.in_flight.values() if c.outcome == LIVE)
        for f in frees[covered:]:
            ahead = f - t
            lo = max(0.0, ahead - PATIENCE_S + _CLAIRVOYANT_SLACK_S)  # answered at most 2 s before f ...
            last = ahead < self.cfg.tick_s  # ... and no later than f, unless this is the last tick before f
            lead = self._pooled(lo, ahead, last)
            draws = 0
            while lead is None and ahead <= _CLAIRVOYANT_DRAW_S and draws < _CLAIRVOYANT_MAX_DRAWS:
                self._draw_pooled(t)
                draws += 1
                lead = self._pooled(lo, ahead, last)
            if lead is None:
                break  # a later tick will find one (agents are covered in order of free time)
            self._launch(t, False, lead)

    def _pooled(self, lo: float, hi: float, last: bool) -> _Lead | None:
        """Take from the pool the live lead answering latest within ``[lo, hi]`` seconds from now, or (on
        the last chance) the one answering soonest from ``lo`` on."""
        d = self._pool_delay
        if last:
            i = bisect.bisect_left(d, lo)
            if i == len(d):
                return None
        else:
            i = bisect.bisect_right(d, hi) - 1
            if i < 0 or d[i] < lo:
                return None
        del d[i]
        return self._pool.pop(i)

    def _draw_pooled(self, t: float) -> None:
        """Draw the next lead: into the pool if a person answers it within the ring time, else dial it."""
        lead = self.leads.pop()
        if lead.u >= self._p_live(t) or lead.delay > self.ring:
            self._launch(t, False, lead)
            return
        i = bisect.bisect_right(self._pool_delay, lead.delay)
        self._pool_delay.insert(i, lead.delay)
        self._pool.insert(i, lead)
        if len(self._pool) > _CLAIRVOYANT_POOL:  # never dialed: the shortest answers pile up
            del self._pool_delay[_CLAIRVOYANT_POOL // 2]
            del self._pool[_CLAIRVOYANT_POOL // 2]

    # ------------------------------------------------------------------------------------------ run
    def _sample(self, t: float) -> None:
        active = sum(1 for a in self.agents if a.logged_in and a.state != PAUSED)
        view = self.budget.view(t)
        d = self.last_decision
        lines = self._lines_sum / self._lines_n if self._lines_n else 0.0
        self._lines_sum = self._lines_n = 0
        self.timeline.append(
            {
                "t_s": t,
                "dial_level": lines / active if active else 0.0,  # lines per agent, mean over the minute
                "ready": float(len(self.ready)),
                "active_agents": float(active),
                "abandon_rate": view.rate,
                "abandon_rate_60min": view.rate_60min,
                "live_answer_rate_est": self.est.rate,
                "mode": d.mode if d else CLAIRVOYANT,
            }
        )

    def run(self, progress: Callable[[float], None] | None = None) -> SimResult:
        self._schedule_agents()
        self._push(0.0, _TICK, None)
        next_sample = 0.0
        handlers: dict[int, Callable[[Any, float], None]] = {
            _RESOLVE: self._resolve,
            _ABANDON: self._abandon,
            _TALK_END: self._talk_end,
            _WRAP_END: self._wrap_end,
            _LOGIN: self._login,
            _BREAK: self._break,
            _BREAK_END: self._break_end,
        }
        heap = self.heap
        while heap:
            t, _, kind, ref = heapq.heappop(heap)
            if t >= self.end:
                break
            while t >= next_sample:
                self._sample(next_sample)
                if progress is not None:
                    progress(next_sample / self.end)
                next_sample += self.cfg.sample_every_s
            if kind == _TICK:
                self._tick(t)
            elif kind == _SHIFT:
                self._shift_change(t)
            else:
                handlers[kind](ref, t)
        return self._result()

    def _result(self) -> SimResult:
        end = self.end
        for a in self.agents:
            if not a.logged_in:
                continue
            if a.state != PAUSED:
                self.avail_s += end - a.avail_since
            if a.state == ON_CALL:
                self.talk_s += end - a.since
        hours = self.avail_s / 3600.0
        return SimResult(
            config={k: v for k, v in asdict(self.cfg).items() if k != "params"}
            | {"params": asdict(self.cfg.params)},
            talk_occupancy=self.talk_s / self.avail_s if self.avail_s else 0.0,
            idle_wait_s=self.idle_wait_total / self.connects if self.connects else 0.0,
            abandon_rate=self.abandoned / self.live if self.live else 0.0,
            worst_60min_abandon_rate=worst_window_rate(self.live_events, 3600.0, end),
            calls=self.calls,
            live_answers=self.live,
            connects=self.connects,
            abandoned=self.abandoned,
            calls_per_agent_hour=self.calls / hours if hours else 0.0,
            connects_per_agent_hour=self.connects / hours if hours else 0.0,
            agent_hours=hours,
            progressive_share=self.progressive_ticks / self.ticks if self.ticks else 0.0,
            estimator_changes=self.est.changes,
            timeline=self.timeline,
            released=self.released,
        )


def worst_window_rate(events: list[tuple[float, bool]], span: float, end: float) -> float:
    """The highest abandonment rate over any ``span``-second window ending within the day.

    Windows end at each live answer from ``span`` on (the first full window) and at the end of the day;
    a day shorter than ``span`` counts as one window.
    """
    ev = sorted(events)
    if not ev:
        return 0.0
    if end <= span:
        return sum(1 for _, ab in ev if ab) / len(ev)
    worst = 0.0
    lo = 0
    live = 0
    abandoned = 0
    ends = [t for t, _ in ev if t >= span] + [end]
    hi = 0
    for e in ends:
        while hi < len(ev) and ev[hi][0] <= e:
            live += 1
            abandoned += ev[hi][1]
            hi += 1
        while lo < hi and ev[lo][0] <= e - span:
            live -= 1
            abandoned -= ev[lo][1]
            lo += 1
        if live:
            worst = max(worst, abandoned / live)
    return worst


def simulate(cfg: SimConfig, progress: Callable[[float], None] | None = None) -> SimResult:
    return PacingSim(cfg).run(progress)


def plot(result: SimResult, path: str) -> None:
    """Dial level and abandonment (overall and last 60 minutes) over the day, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = result.timeline
    hours = [float(s["t_s"]) / 3600.0 for s in tl]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ax1.plot(hours, [float(s["dial_level"]) for s in tl], label="lines per agent")
    ax1.plot(
        hours, [float(s["ready"]) / max(float(s["active_agents"]), 1.0) for s in tl], label="ready share"
    )
    ax1.set_ylabel("dial level")
    ax1.legend(loc="upper right")
    ax2.plot(hours, [100 * float(s["abandon_rate"]) for s in tl], label="abandoned, since start")
    ax2.plot(hours, [100 * float(s["abandon_rate_60min"]) for s in tl], label="abandoned, last 60 min")
    ax2.axhline(100 * result.config["abandon_cap"], color="red", linestyle="--", label="cap")
    ax2.axhline(5.0, color="orange", linestyle=":", label="60-min limit")
    ax2.set_ylabel("%")
    ax2.set_xlabel("hour")
    ax2.legend(loc="upper right")
    c = result.config
    fig.suptitle(
        f"{c['algorithm']}: {c['agents']} agents, answer rate {c['answer_rate']:g}; "
        f"occupancy {result.talk_occupancy:.3f}, abandoned {100 * result.abandon_rate:.2f} %"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
