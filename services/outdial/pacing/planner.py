"""The pacing core: one campaign, one instant, one decision. Pure: no clock, no I/O.

The dialer and the simulator (``outdial.sim``) both call :meth:`Planner.plan` every tick, so the
benchmark and ``outdial sim pacing`` exercise exactly the code that dials. One decision is, in order:

1. **Stop reasons** — campaign not active, paused by its pacing settings, no agent logged in, every agent
   paused, the agent service unreachable: no call.
   **Modes without pacing** (:data:`UNPACED_MODES`) end here: *preview* shows one lead to each ready agent
   (``flow="preview"``: nothing is dialled until the agent says so); *agentless* keeps up to its
   ``max_lines`` message calls in flight, with no agent at all (``flow="agentless"``).
2. **The algorithm** of the campaign (:mod:`.algorithms`), unless a **fallback** applies: the
   abandonment budget over the legal window spent, the last 60 minutes at their cap, or estimates not yet
   confident → agent-reserved progressive (no call can then be abandoned).
3. **Line caps** — at most ``max_lines_per_agent`` lines (ringing + answered waiting) per non-paused agent;
   agent-reserved calls only for ready agents no other line already claims.
4. **Capacity loss** — when the agents that can take calls (ready, reserved, on a call or in wrap-up; none
   when the agent service is unreachable) can no longer staff the lines in flight, nothing is launched and
   the surplus ringing calls without a held agent are released (CANCEL), oldest first, but never before
   they have rung the legal minimum (:data:`outdial.rules.law.MIN_RING_S`). Younger ones are released as
   they reach it, at a later tick.
5. **Ring time** — the campaign's, never below the legal minimum.

The abandonment budget itself is :func:`outdial.pacing.budget.budget_view`: the dialer feeds it counts
kept in Redis (rebuilt from PostgreSQL), the simulator counts kept in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from outdial.pacing.algorithms import FALLBACK_ALGORITHMS, PacingAlgorithm, Progressive, count, new_algorithm
from outdial.pacing.snapshot import (
    PAUSED,
    READY,
    AgentSnap,
    BudgetView,
    Decision,
    Estimates,
    PacingParams,
    Snapshot,
)
from outdial.rules import law

#: Modes a campaign can be set to that the pacing algorithms do not pace: the agent dials (preview), or a
#: message needs no agent (agentless).
UNPACED_MODES = frozenset({"preview", "agentless"})
DEFAULT_AGENTLESS_LINES = 10
DEFAULT_RING_S = 25.0
DEFAULT_MAX_LINES_PER_AGENT = 3
DEFAULT_POWER_RATIO = 2.0


@dataclass(frozen=True, slots=True)
class RingingCall:
    """A call of this holder dialled and not answered yet: how long it has rung, and whether an agent is
    held for it (agent-reserved calls are never surplus: their agent waits for them)."""

    age_s: float
    reserved: bool = False


@dataclass(frozen=True, slots=True)
class TickInput:
    """What the planner sees of one campaign at one instant.

    ``stop_reason`` is set by the caller for what only it knows (campaign state, pacing settings
    paused). ``ringing`` are this holder's ringing calls (it may release them); ``foreign_ringing_ages_s``
    the calls of a previous holder still in flight (counted, not released).
    """

    now_s: float
    params: PacingParams
    agents: tuple[AgentSnap, ...]
    ringing: tuple[RingingCall, ...]
    answered_waiting: int
    estimates: Estimates
    budget: BudgetView
    foreign_ringing_ages_s: tuple[float, ...] = ()
    agents_reachable: bool = True
    stop_reason: str = ""
    # Calls answered and still up that wait for no agent (agentless messages): lines, not agent demand.
    other_lines: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """The tick's decision: launch ``launch`` calls (each with an agent held first when
    ``reserve_agent``), ringing ``ring_s``; release the ringing calls at indexes ``cancel``."""

    decision: Decision
    launch: int
    reserve_agent: bool
    ring_s: float
    cancel: tuple[int, ...] = ()
    lines: int = 0
    capacity: int = 0
    # "" (paced calls), "preview" (each launch is a lead shown to an agent) or "agentless" (message calls).
    flow: str = ""

    @property
    def reason(self) -> str:
        return self.decision.reason


def effective_params(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> PacingParams:
    """A campaign's pacing parameters: its pacing settings over its configuration over the defaults.
    The ring time is never below the legal minimum."""
    mode = str(overrides.get("algorithm") or config.get("dial_mode") or "progressive")
    if config.get("dial_mode") in UNPACED_MODES:
        # A preview campaign's leads may be ones that must not be autodialled; an agentless one has no
        # agents: a pacing-settings algorithm never turns either into a paced campaign.
        mode = str(config["dial_mode"])
    target = overrides.get("target_abandon_rate")
    ring = overrides.get("ring_timeout_s") or config.get("ring_timeout_s") or DEFAULT_RING_S
    return PacingParams(
        algorithm=mode,
        power_ratio=float(overrides.get("power_ratio") or config.get("power_ratio") or DEFAULT_POWER_RATIO),
        max_lines_per_agent=int(
            overrides.get("max_lines_per_agent")
            or config.get("max_lines_per_agent")
            or DEFAULT_MAX_LINES_PER_AGENT
        ),
        ring_timeout_s=law.ring_time(float(ring)),
        target_abandon_rate=float(target) if target else None,
        max_lines=int(config.get("agentless_lines") or DEFAULT_AGENTLESS_LINES),
    )


def abandon_limits(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> tuple[float, float, float]:
    """``(cap, window_s, short_window_cap)`` of a campaign: its own figures where set, never looser than
    its jurisdiction's law or outdial's short-window guard."""
    policy = law.abandon_policy(str(config.get("jurisdiction") or law.DEFAULT_JURISDICTION))
    cap = float(config.get("abandon_cap") or policy.cap)
    window_s = float(config.get("abandon_window_s") or policy.window_s)
    short = overrides.get("short_window_cap")
    short_cap = min(law.SHORT_WINDOW_CAP, float(short)) if short else law.SHORT_WINDOW_CAP
    return min(cap, policy.cap), max(window_s, policy.window_s), short_cap


class Planner:
    """The pacing core of one campaign. Keeps its algorithm (baselines keep state between ticks); an
    unknown algorithm name is progressive, never an error in the middle of dialing."""

    def __init__(self, name: str = "progressive") -> None:
        self.name = ""
        self.algo: PacingAlgorithm = Progressive()
        self._progressive = Progressive()
        self.use(name)

    def use(self, name: str) -> None:
        if name == self.name:
            return
        try:
            self.algo = new_algorithm(name)
        except ValueError:
            self.algo = Progressive()
        self.name = name

    # ----------------------------------------------------------------------------- the snapshot decision

    def decide(self, snap: Snapshot) -> Decision:
        """Steps 1 (agents), 2, 3 (lines) and 5 on a :class:`Snapshot`: what to launch now."""
        ring = law.ring_time(snap.params.ring_timeout_s)
        c = count(snap)
        if c.logged_in == 0:
            return Decision(0, 0.0, "none", "no agent logged in", False, ring)
        if c.active == 0:
            return Decision(0, 0.0, "none", "every agent paused", False, ring)
        reason = ""
        if self.algo.name in FALLBACK_ALGORITHMS and self.algo.name != Progressive.name:
            if snap.budget.spent:
                reason = "abandonment budget spent"
            elif not snap.estimates.confident:
                reason = "estimates not confident yet"
        if reason:
            d = self._progressive.decide(snap)
            d = replace(d, reason=f"{reason}: {d.reason}")
        else:
            d = self.algo.decide(snap)
        room = max(0, snap.params.max_lines_per_agent * c.active - c.in_flight - c.waiting)
        return replace(d, calls=max(0, min(d.calls, room)), ring_timeout_s=ring)

    # ----------------------------------------------------------------------------- the tick

    def plan(self, inp: TickInput) -> Plan:
        self.use(inp.params.algorithm)
        ring = law.ring_time(inp.params.ring_timeout_s)
        agents = inp.agents if inp.agents_reachable else ()
        ages = tuple(r.age_s for r in inp.ringing) + inp.foreign_ringing_ages_s
        lines = len(ages) + inp.answered_waiting
        staffed = sum(1 for a in agents if a.state != PAUSED)
        ready = sum(1 for a in agents if a.state == READY)
        if inp.params.algorithm == "agentless":
            return self._agentless(inp, ring, lines + inp.other_lines)
        cancel = self._surplus(inp, staffed)
        stop = inp.stop_reason
        if not stop and not inp.agents_reachable and inp.agents:
            stop = "agent service unreachable"
        if stop:
            return Plan(Decision(0, 0.0, "none", stop, False, ring), 0, False, ring, cancel, lines, staffed)
        if inp.params.algorithm == "preview":
            return self._preview(inp, ring, cancel, lines, staffed, ready)
        snap = Snapshot(inp.now_s, agents, ages, inp.answered_waiting, inp.estimates, inp.budget, inp.params)
        d = self.decide(snap)
        n = d.calls
        if cancel:
            n = 0  # the agents there are cannot staff the lines up now: launch nothing more
        if d.reserve_agent:
            held = sum(1 for r in inp.ringing if r.reserved)
            n = min(n, max(0, ready - (lines - held)))
        return Plan(d, max(0, n), d.reserve_agent, max(ring, d.ring_timeout_s), cancel, lines, staffed)

    @staticmethod
    def _preview(
        inp: TickInput, ring: float, cancel: tuple[int, ...], lines: int, staffed: int, ready: int
    ) -> Plan:
        """One lead shown to each ready agent (an agent previewing or on a preview call is not ready)."""
        if not inp.agents:
            why, n = "no agent logged in", 0
        elif staffed == 0:
            why, n = "every agent paused", 0
        else:
            why, n = f"preview: a lead for each of {ready} ready agents", ready
        d = Decision(n, 0.0, "preview", why, False, ring)
        return Plan(d, n, False, ring, cancel, lines, staffed, flow="preview")

    @staticmethod
    def _agentless(inp: TickInput, ring: float, lines: int) -> Plan:
        """Message calls up to the campaign's lines; no agent is waited for, so none is counted."""
        cap = max(0, inp.params.max_lines)
        if inp.stop_reason:
            why, n = inp.stop_reason, 0
        else:
            n = max(0, cap - lines)
            why = f"agentless: {lines} of {cap} lines in use"
        d = Decision(n, float(n), "agentless", why, False, ring)
        return Plan(d, n, False, ring, (), lines, 0, flow="agentless")

    @staticmethod
    def _surplus(inp: TickInput, staffed: int) -> tuple[int, ...]:
        """Indexes of this holder's ringing calls to release now (capacity loss, step 4)."""
        room = inp.params.max_lines_per_agent * staffed
        unstaffed = [i for i, r in enumerate(inp.ringing) if not r.reserved]
        held = len(inp.ringing) - len(unstaffed)
        excess = len(unstaffed) + len(inp.foreign_ringing_ages_s) + inp.answered_waiting + held - room
        if excess <= 0:
            return ()
        ripe = sorted(
            (i for i in unstaffed if inp.ringing[i].age_s >= law.MIN_RING_S),
            key=lambda i: -inp.ringing[i].age_s,
        )
        return tuple(sorted(ripe[:excess]))


def make_algorithm(name: str) -> Planner:
    """A planner for a known algorithm name (an unknown one is refused here, for callers that configure
    it; the dialer's :class:`Planner` itself runs an unknown name as progressive)."""
    new_algorithm(name)
    return Planner(name)
