"""Pacing algorithms: given a :class:`~outdial.pacing.snapshot.Snapshot`, how many calls to launch now.

Pure code: no clock, no I/O. The dialer and the simulator (``outdial.sim``) drive the very same objects.

Modes (see ../shared/DOMAIN.md):

- ``progressive``: one call per ready agent, the agent reserved before dialing, so it cannot abandon.
- ``power``: a fixed ratio of lines per ready agent (and per agent about to be ready).
- ``predictive``: model-based (:class:`Predictive`): predicts over the next seconds the live answers that
  will need an agent and the agents that will be free, and launches the most calls for which the predicted
  abandonment stays inside the campaign's budget.

The safety rules around every mode (no agent, line caps, fallbacks to progressive, the ring minimum, capacity
loss) are the planner's (:mod:`outdial.pacing.planner`), in one place for the dialer and the simulator.

Two baselines re-implemented from their vendors' documented behaviour, for the benchmark only:
``vicidial_adapt_tapered`` and ``cisco_correction``. They keep state between calls (one instance per
campaign) and obey the planner's basic guards (no agents, lines cap, ring) but not outdial's fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import numpy as np

from outdial.pacing.estimates import free_within
from outdial.pacing.snapshot import (
    ON_CALL,
    PAUSED,
    READY,
    RESERVED,
    WRAP_UP,
    BudgetView,
    Decision,
    PacingParams,
    Snapshot,
    ring_timeout,
)
from outdial.rules import law

ALGORITHMS = ("progressive", "power", "predictive", "vicidial_adapt_tapered", "cisco_correction")

# A person who answers is abandoned when no agent is on the line within this (rules/law.py).
PATIENCE_S = law.CONNECT_LIMIT_S


class PacingAlgorithm(Protocol):
    name: str

    def decide(self, snap: Snapshot) -> Decision: ...


@dataclass(frozen=True, slots=True)
class Counts:
    """Agents by state, and lines in use, of one snapshot."""

    logged_in: int
    ready: int
    reserved: int
    on_call: int
    wrap_up: int
    paused: int
    in_flight: int
    waiting: int

    @property
    def active(self) -> int:
        """Agents that can take calls now or soon (not paused)."""
        return self.logged_in - self.paused

    @property
    def unreserved_in_flight(self) -> int:
        """Ringing calls with no agent reserved for them (each reserved agent holds one ringing call)."""
        return max(0, self.in_flight - self.reserved)


def count(snap: Snapshot) -> Counts:
    by = {READY: 0, RESERVED: 0, ON_CALL: 0, WRAP_UP: 0, PAUSED: 0}
    for a in snap.agents:
        by[a.state] = by.get(a.state, 0) + 1
    return Counts(
        logged_in=len(snap.agents),
        ready=by[READY],
        reserved=by[RESERVED],
        on_call=by[ON_CALL],
        wrap_up=by[WRAP_UP],
        paused=by[PAUSED],
        in_flight=len(snap.in_flight_ages_s),
        waiting=snap.answered_waiting,
    )


def _level(c: Counts, calls: int) -> float:
    return (c.in_flight + c.waiting + calls) / c.active if c.active else 0.0


# ---------------------------------------------------------------------------------------------- progressive
class Progressive:
    """One call per ready agent, that agent reserved for it before dialing: no call can be abandoned.

    Ready agents already covered by an answered call waiting or by a ringing call that has no reserved
    agent (left over from another mode) are not counted.
    """

    name = "progressive"

    def decide(self, snap: Snapshot) -> Decision:
        c = count(snap)
        calls = max(0, c.ready - c.waiting - c.unreserved_in_flight)
        return Decision(calls, _level(c, calls), "progressive", "one call per ready agent, reserved", True)


# ---------------------------------------------------------------------------------------------- power
class Power:
    """``power_ratio`` lines per ready agent and per agent finishing wrap-up within ``soon_s``."""

    name = "power"

    def __init__(self, soon_s: float = 5.0) -> None:
        self.soon_s = soon_s

    def decide(self, snap: Snapshot) -> Decision:
        c = count(snap)
        wrap = snap.estimates.mean_wrap_s
        soon = sum(1 for a in snap.agents if a.state == WRAP_UP and a.in_state_s >= wrap - self.soon_s)
        lines = math.floor(snap.params.power_ratio * (c.ready + soon) + 0.5)
        calls = max(0, lines - c.unreserved_in_flight - c.waiting)
        reason = f"{snap.params.power_ratio:g} lines per ready agent ({c.ready} ready, {soon} soon)"
        return Decision(calls, _level(c, calls), "power", reason, False)


# ---------------------------------------------------------------------------------------------- predictive
def _erlang_cdf(x: float, shape: int, scale: float) -> float:
    if x <= 0.0:
        return 0.0
    z = x / scale
    term = 1.0
    acc = 1.0
    for i in range(1, shape):
        term *= z / i
        acc += term
    return 1.0 - math.exp(-z) * acc


@dataclass(frozen=True, slots=True)
class _Model:
    """Per-estimate tables over the horizon grid ``tau = 0, step, 2*step, … horizon``."""

    taus: tuple[float, ...]
    new_answer: tuple[float, ...]  # P(a call dialed now is live-answered by tau)
    by_age: tuple[tuple[float, ...], ...]  # [age bucket][tau]: P(live answer in (age, age+tau] | ringing)
    on_call_free: tuple[float, ...]  # P(an agent on a call now is free by tau + patience)
    wrap_s: float
    # The same tables as arrays, for the exact small-team computation (:meth:`Predictive._exact_calls`).
    by_age_a: np.ndarray = field(compare=False, repr=False)
    on_call_free_a: np.ndarray = field(compare=False, repr=False)
    new_answer_a: np.ndarray = field(compare=False, repr=False)
    new_weight_a: np.ndarray = field(compare=False, repr=False)  # answer-time law of a new live call


@lru_cache(maxsize=64)
def _model(
    p: float,
    machine: float,
    delay_mean: float,
    shape: int,
    ring_s: float,
    release_s: float,
    talk_s: float,
    wrap_s: float,
) -> _Model:
    step = 1.0
    n = math.ceil(ring_s / step) + 1
    taus = tuple(i * step for i in range(n + 1))
    scale = max(delay_mean, 0.5) / shape
    g_ring = max(_erlang_cdf(ring_s, shape, scale), 1e-9)

    def gt(x: float) -> float:  # answer-delay CDF of live calls, truncated at the ring time
        return min(1.0, _erlang_cdf(min(x, ring_s), shape, scale) / g_ring)

    g_at = [gt(i * step) for i in range(2 * n + 2)]  # the grid is integral: one CDF value per instant
    new_answer = tuple(p * g_at[j] for j in range(n + 1))
    # Calls nobody answers end either at once (busy, failed) or at the ring time: the share of the latter
    # follows from their mean release time.
    unanswered = max(0.0, 1.0 - p - machine)
    long_share = min(1.0, max(0.0, release_s / ring_s))
    rows = []
    for age in range(n + 1):
        g0 = g_at[age]
        live_left = p * (1.0 - g0)
        other_left = machine * (1.0 - g0) + (unanswered * long_share if age < ring_s else 0.0)
        alive = live_left + other_left
        if alive <= 1e-12:
            rows.append((0.0,) * (n + 1))
            continue
        k = p / alive
        rows.append(tuple(k * (g_at[age + j] - g0) for j in range(n + 1)))
    talk = max(talk_s, 1.0)
    on_call = tuple(
        (1.0 - math.exp(-(t + PATIENCE_S - wrap_s) / talk)) if t + PATIENCE_S > wrap_s else 0.0 for t in taus
    )
    return _Model(
        taus,
        new_answer,
        tuple(rows),
        on_call,
        wrap_s,
        np.array(rows),
        np.array(on_call)[:, None],
        np.array(new_answer),
        np.diff(np.array(new_answer), prepend=0.0) / max(new_answer[-1], 1e-12),
    )


# Expected abandoned calls below this are noise (keeps N = 0 from being refused when nothing is ringing).
_EPS = 1e-3
# The least risk predictive takes for its last call when the target rate is (near) nothing: it keeps
# dialing calls that will almost surely find an agent rather than handing over to progressive. Progressive
# makes few live answers (a reserved agent idles through every unanswered ring), which would shrink the
# hour's denominator and keep its rate high for longer; near-safe predictive calls dilute it instead.
_MIN_THETA = 0.002


def _phi(z: float) -> float:
    return math.exp(-0.5 * z * z) * 0.3989422804014327


def _expected_excess(mu: float, var: float) -> float:
    """E[max(X, 0)] for X ~ Normal(mu, var)."""
    if var <= 1e-12:
        return max(mu, 0.0)
    sd = math.sqrt(var)
    z = mu / sd
    return mu * 0.5 * math.erfc(-z * 0.7071067811865476) + sd * _phi(z)


def target_rate(budget: BudgetView, params: PacingParams, margin: float = 0.75) -> float:
    """The abandonment rate to aim at now, from what is left of the budget.

    The cap is a rate over a long window (30 days): the pacer aims at ``margin * cap`` and steers the
    window's rate there, spending deliberately what earlier hours left unspent and saving when they
    overspent: ``target = margin * cap + (margin * cap - window rate)``, the window rate counted over at
    least 500 live answers (a young campaign is not steered by its first few calls). Whatever the window,
    the target stays within the cap. The last 60 minutes are kept below their own cap
    (``short_window_cap``, 5 %): once their rate passes half of it, the target tapers down to nothing,
    and it tapers too when fewer than 5 more abandoned calls would take the hour over (small teams).
    """
    if params.target_abandon_rate is not None:
        base = params.target_abandon_rate
    else:
        aim = margin * budget.cap
        spent = budget.abandoned / max(budget.live_answers, 500)
        base = min(budget.cap, 2.0 * aim - spent)
    short = budget.short_window_cap
    base = min(base, 0.6 * short)
    knee = 0.5 * short
    if budget.rate_60min > knee:
        base *= max(0.0, (short - budget.rate_60min) / (short - knee))
    # Small teams: a handful of abandoned calls moves the hour's rate; keep a few in hand.
    if budget.live_60min or budget.abandoned_60min:  # (counts given: AbandonBudget.view fills them)
        headroom = short * budget.live_60min - budget.abandoned_60min
        base *= min(1.0, max(0.0, (headroom - 3.0) / 4.0))
    # The same for the long window: a young campaign (its first hours are the whole window) or one that
    # has just overspent keeps a few abandoned calls in hand instead of running into ``spent``.
    base *= min(1.0, max(0.0, (budget.remaining - 1.0) / 4.0))
    return max(0.0, base)


def busy_free(snap: Snapshot, m: _Model) -> np.ndarray:
    """``[a, j]``: P(busy agent ``a`` is free by ``tau_j + 2 s``), for the agents on a call (then those
    reserved for a ringing call, taken as just connected).

    From each agent's time on the call and the talk-time law (:func:`outdial.pacing.estimates.free_within`:
    the hazard of the talk time, given how long the call has lasted), followed by the mean wrap-up.
    Without a talk-time law yet, the exponential law of the model (every agent alike).
    """
    elapsed = [a.in_state_s for a in snap.agents if a.state == ON_CALL]
    elapsed += [0.0 for a in snap.agents if a.state == RESERVED]
    est = snap.estimates
    if not est.talk_survival:
        return np.broadcast_to(m.on_call_free_a[:, 0], (len(elapsed), len(m.taus)))
    horizons = np.asarray(m.taus) + PATIENCE_S - m.wrap_s
    return free_within(est.talk_survival, est.mean_talk_s, np.asarray(elapsed), horizons)


def _exact_tail(snap: Snapshot, c: Counts, m: _Model, room: int) -> np.ndarray:
    """``tail[j, i]``: P(a new call answered at ``tau_j`` finds no agent | ``i`` other new calls answered).

    The event of :class:`Predictive`'s normal approximation (the answers by ``tau`` take every agent free by
    ``tau + 2 s``), but the answers of the ringing calls and the frees of the busy agents are convolved
    exactly, as the independent Bernoulli terms they are. With a few agents the normal law is far off:
    one ringing call and one ready agent gave the next call a 35 % risk where the truth is under 25 %.
    """
    k = len(m.taus)
    busy = c.on_call + c.reserved
    size = busy + c.in_flight + 1
    # pmf[j, x]: P(answers by tau_j of the ringing calls - frees by tau_j + 2 s of the busy agents = x - busy)
    pmf = np.zeros((k, size))
    pmf[:, busy] = 1.0
    top = len(m.by_age) - 1
    for age in snap.in_flight_ages_s:
        q = m.by_age_a[min(int(age), top)][:, None]
        up = pmf[:, :-1] * q
        pmf *= 1.0 - q
        pmf[:, 1:] += up
    for f in busy_free(snap, m):
        f = f[:, None]
        down = pmf[:, 1:] * f
        pmf *= 1.0 - f
        pmf[:, :-1] += down
    surv = np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1]  # surv[j, x] = P(D_j >= x - busy)
    free = np.full(k, float(c.ready))
    patience = np.asarray(m.taus) + PATIENCE_S
    for a in snap.agents:
        if a.state == WRAP_UP:
            free += patience >= m.wrap_s - a.in_state_s
    # No agent for the new call when D + (other new answers) >= free - waiting.
    idx = (free.astype(int) - c.waiting + busy)[:, None] - np.arange(room + 1)[None, :]
    tail = np.take_along_axis(surv, np.clip(idx, 0, size - 1), axis=1)
    return np.where(idx <= 0, 1.0, np.where(idx >= size, 0.0, tail))


class Predictive:
    """Model-based pacing.

    For the grid of instants ``tau`` over the next ring time, it predicts

    - answers: answered calls waiting now, plus for each ringing call (by age) the probability that a
      person answers it by ``tau`` given that it is still ringing (Gamma answer delay truncated at the
      ring time; a call not answered by the no-answer release time is live-pending only), plus for ``N``
      new calls ``N * p * G(tau)``;
    - free agents: the ready ones, the ones in wrap-up whose wrap ends by ``tau + 2 s``, and the ones on a
      call by the exponential hazard of their remaining talk time followed by the mean wrap-up.

    The deficit ``answers(tau) - free(tau + 2 s)`` is a sum of Bernoulli terms. A new call answered at
    ``tau`` is abandoned when that deficit (with the other new calls' answers) leaves no agent for it; the
    risk of the next call is that probability averaged over its answer time. It launches the most calls
    whose last one's risk stays under ``theta = gain * target_rate``, the target coming from the budget
    (:func:`target_rate`): a marginal rule, since a call whose risk is high costs budget for little talk.

    With many terms (big teams) the deficit is taken as normal, the live-answer rate's own uncertainty
    added. With at most ``exact_max_terms`` ringing calls and busy agents (small teams) it is counted
    exactly (:func:`_exact_tail`): there the normal law overstated the risk of the first calls beyond the
    ready agents several times over, so small teams sat idle for lack of calls (10 agents at p = 0.25:
    talk occupancy 0.721 → 0.731, day abandonment and worst hour unchanged within the seeds' spread).
    ``gain`` calibrates the fluid approximation (tuned with the simulator).
    """

    name = "predictive"

    def __init__(self, gain: float = 1.0, margin: float = 0.75, exact_max_terms: int = 40) -> None:
        self.gain = gain
        self.margin = margin
        self.exact_max_terms = exact_max_terms

    def decide(self, snap: Snapshot) -> Decision:
        c = count(snap)
        est = snap.estimates
        p = min(max(est.live_answer_rate, 1e-4), 1.0)
        m = _model(
            round(p, 3),
            round(est.machine_rate, 2),
            round(est.mean_answer_delay_s, 1),
            max(1, round(est.answer_delay_shape)),
            ring_timeout(snap.params),
            round(est.mean_no_answer_release_s, 1),
            round(est.mean_talk_s, 0),
            round(est.mean_wrap_s, 0),
        )
        rate = target_rate(snap.budget, snap.params, self.margin)
        room = max(0, snap.params.max_lines_per_agent * c.active - c.in_flight - c.waiting)
        theta = min(0.9, max(_MIN_THETA, self.gain * rate))
        if c.in_flight + c.on_call + c.reserved <= self.exact_max_terms:
            calls = self._exact_calls(snap, c, m, theta, room)
        else:
            calls = self._normal_calls(snap, c, m, theta, room)
        reason = f"target abandon {rate:.2%}, p={p:.3f}, {c.ready} ready, {c.in_flight} ringing"
        return Decision(calls, _level(c, calls), "predictive", reason, False)

    def _normal_calls(self, snap: Snapshot, c: Counts, m: _Model, theta: float, room: int) -> int:
        """The most calls whose last one's risk stays under ``theta``, the deficit taken as normal."""
        base_mu, base_var, answers = self._baseline(snap, c, m)
        est = snap.estimates
        rel_sd = est.live_answer_rate_sd / min(max(est.live_answer_rate, 1e-4), 1.0)
        w = [m.new_answer[0]] + [m.new_answer[j] - m.new_answer[j - 1] for j in range(1, len(m.new_answer))]
        total = m.new_answer[-1]

        def risk(n: int) -> float:
            """P(the next call, launched after n others now, is abandoned | a person answers it)."""
            acc = 0.0
            for j, wj in enumerate(w):
                if wj <= 1e-9:
                    continue
                g = m.new_answer[j]
                a_new = n * g
                var = base_var[j] + a_new * (1.0 - g) + (rel_sd * (answers[j] + a_new)) ** 2 + 0.25
                z = (base_mu[j] + a_new + 0.5) / math.sqrt(var)
                acc += wj * 0.5 * math.erfc(-z * 0.7071067811865476)
            return acc / total

        if risk(0) > theta:
            return 0
        lo, hi = 0, room
        while lo < hi:  # most calls whose last one's risk stays under theta (risk grows with n)
            mid = (lo + hi + 1) // 2
            if risk(mid - 1) <= theta:
                lo = mid
            else:
                hi = mid - 1
        return lo

    @staticmethod
    def _exact_calls(snap: Snapshot, c: Counts, m: _Model, theta: float, room: int) -> int:
        """The most calls whose last one's risk stays under ``theta``, the counts taken exactly."""
        tail = _exact_tail(snap, c, m, room)
        g = m.new_answer_a
        w = m.new_weight_a
        binom = np.zeros((len(g), room + 1))  # binom[j, i]: P(i of the other new calls answered by tau_j)
        binom[:, 0] = 1.0
        calls = 0
        while calls < room:
            if float(w @ np.einsum("ji,ji->j", binom, tail)) > theta:
                break
            calls += 1
            up = binom[:, :-1] * g[:, None]
            binom *= (1.0 - g)[:, None]
            binom[:, 1:] += up
        return calls

    @staticmethod
    def _baseline(snap: Snapshot, c: Counts, m: _Model) -> tuple[list[float], list[float], list[float]]:
        """Mean and variance of the deficit at each tau without new calls, and the expected answers."""
        k = len(m.taus)
        ages: dict[int, int] = {}
        top = len(m.by_age) - 1
        for age in snap.in_flight_ages_s:
            b = min(int(age), top)
            ages[b] = ages.get(b, 0) + 1
        answers = [float(c.waiting)] * k
        var = [0.0] * k
        for b, n in ages.items():
            row = m.by_age[b]
            for j in range(k):
                q = row[j]
                answers[j] += n * q
                var[j] += n * q * (1.0 - q)
        free = [float(c.ready)] * k
        fq = busy_free(snap, m)
        q_sum = fq.sum(axis=0)
        q_var = (fq * (1.0 - fq)).sum(axis=0)
        for j in range(k):
            free[j] += float(q_sum[j])
            var[j] += float(q_var[j])
        horizon_free = [t + PATIENCE_S for t in m.taus]
        for a in snap.agents:
            if a.state == WRAP_UP:
                left = m.wrap_s - a.in_state_s
                for j in range(k):
                    if horizon_free[j] >= left:
                        free[j] += 1.0
        mu = [answers[j] - free[j] for j in range(k)]
        return mu, var, answers


# ---------------------------------------------------------------------------------------------- baselines
class VicidialAdaptTapered:
    """VICIdial's ``ADAPT_TAPERED`` re-implemented from its documentation (for the benchmark).

    The dial level (lines per non-paused agent, counting calls ringing, waiting and talking) is updated
    every 15 s from ready agents minus waiting calls, within [1, 3]. The drop rate since the start of the
    day is refreshed every 60 s; over the limit the level tapers down. "Tapered": the limit allowed is
    loose early in the shift (up to twice the cap) and tightens to the cap by the end of the shift.
    """

    name = "vicidial_adapt_tapered"

    def __init__(self, shift_s: float = 8 * 3600.0, intensity: float = 0.5) -> None:
        self.shift_s = shift_s
        self.intensity = intensity
        self.level = 1.0
        self.start: tuple[float, int, int] | None = None
        self.last_update = -1e18
        self.last_drop_refresh = -1e18
        self.drop_rate = 0.0

    def decide(self, snap: Snapshot) -> Decision:
        c = count(snap)
        b = snap.budget
        if self.start is None:
            self.start = (snap.now_s, b.live_answers, b.abandoned)
        t0, live0, ab0 = self.start
        if snap.now_s - self.last_drop_refresh >= 60.0:
            live = b.live_answers - live0
            self.drop_rate = (b.abandoned - ab0) / live if live > 0 else 0.0
            self.last_drop_refresh = snap.now_s
        if snap.now_s - self.last_update >= 15.0:
            self.last_update = snap.now_s
            elapsed = min(1.0, (snap.now_s - t0) / self.shift_s)
            allowed = b.cap * max(1.0, 2.0 * (1.0 - elapsed))
            if self.drop_rate > allowed:
                self.level = max(1.0, self.level - max(0.1, (self.drop_rate - allowed) * 10.0))
            elif c.active:
                self.level += self.intensity * (c.ready - c.waiting) / c.active
            self.level = min(3.0, max(1.0, self.level))
        lines = math.floor(self.level * c.active)
        calls = max(0, lines - c.in_flight - c.waiting - c.on_call - c.reserved)
        return Decision(calls, self.level, "vicidial_adapt_tapered", f"level {self.level:.2f}", False)


class CiscoCorrection:
    """A Cisco Outbound Option–style correction loop (for the benchmark).

    Dials ``lines_per_agent`` lines per ready agent. Every ``pace`` live answers it compares the
    abandonment of those answers with the target: over it, lines per agent go down in proportion;
    under it, they go up (more when agents sat ready). Kept within [1, max_lines_per_agent].
    """

    name = "cisco_correction"

    def __init__(self, pace: int = 100, gain: float = 0.5, initial: float = 1.5) -> None:
        self.pace = pace
        self.gain = gain
        self.lpa = initial
        self.mark: tuple[int, int] | None = None

    def decide(self, snap: Snapshot) -> Decision:
        c = count(snap)
        b = snap.budget
        if self.mark is None:
            self.mark = (b.live_answers, b.abandoned)
        live = b.live_answers - self.mark[0]
        if live >= self.pace:
            rate = (b.abandoned - self.mark[1]) / live
            target = b.cap
            self.lpa *= 1.0 + self.gain * (target - rate) / target * 0.2
            self.lpa = min(float(snap.params.max_lines_per_agent), max(1.0, self.lpa))
            self.mark = (b.live_answers, b.abandoned)
        lines = math.floor(self.lpa * c.ready + 0.5)
        calls = max(0, lines - c.unreserved_in_flight - c.waiting)
        return Decision(calls, self.lpa, "cisco_correction", f"{self.lpa:.2f} lines per ready agent", False)


# ---------------------------------------------------------------------------------------------- registry
#: Modes that fall back to agent-reserved progressive when the budget is spent or the estimates are not
#: confident (the planner decides that). The two baselines run as their vendors' documents describe.
FALLBACK_ALGORITHMS = frozenset({"progressive", "power", "predictive"})


def new_algorithm(name: str) -> PacingAlgorithm:
    """A fresh algorithm by name, unguarded (one instance per campaign: baselines keep state). The
    safety rules and fallbacks around it are :class:`outdial.pacing.planner.Planner`'s."""
    if name == "progressive":
        return Progressive()
    if name == "power":
        return Power()
    if name == "predictive":
        return Predictive()
    if name == "vicidial_adapt_tapered":
        return VicidialAdaptTapered()
    if name == "cisco_correction":
        return CiscoCorrection()
    raise ValueError(f"unknown pacing algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
