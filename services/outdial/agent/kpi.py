"""Agent KPIs from a state timeline (pure: no I/O).

Occupancy = (talk + wrap-up) / logged-in time (DOMAIN.md). Talk is time ON_CALL; the short RESERVED
hand-over is counted apart (neither talk nor idle). Idle is time READY; ``idle_gaps`` are the ready
stretches, whose mean is the idle time between calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

STATES = ("logged_out", "ready", "reserved", "on_call", "wrap_up", "paused")


@dataclass(frozen=True)
class StateEvent:
    state: str
    at: datetime
    call_id: str = ""
    reason: str = ""
    # Per-agent order of changes (Redis sequence): breaks ties between changes in the same millisecond.
    seq: int = 0


@dataclass
class AgentKpis:
    logged_in_s: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STATES, 0.0))
    idle_gaps: list[float] = field(default_factory=list)
    calls: int = 0

    @property
    def talk_s(self) -> float:
        return self.seconds["on_call"]

    @property
    def wrap_s(self) -> float:
        return self.seconds["wrap_up"]

    @property
    def idle_s(self) -> float:
        return self.seconds["ready"]

    @property
    def paused_s(self) -> float:
        return self.seconds["paused"]

    @property
    def occupancy(self) -> float:
        """(talk + wrap) / logged-in, 0 when never logged in."""
        return (self.talk_s + self.wrap_s) / self.logged_in_s if self.logged_in_s > 0 else 0.0

    @property
    def mean_idle_between_calls_s(self) -> float:
        return sum(self.idle_gaps) / len(self.idle_gaps) if self.idle_gaps else 0.0


def compute_kpis(events: Iterable[StateEvent], until: datetime) -> AgentKpis:
    """KPIs of one agent from their timeline (any order; sorted by time, then seq), counting an open last
    state up to ``until``. Time before the first event, and while logged out, counts for nothing."""
    ordered = sorted(events, key=lambda e: (e.at, e.seq))
    k = AgentKpis()
    for i, ev in enumerate(ordered):
        if ev.state not in STATES:
            raise ValueError(f"unknown agent state {ev.state!r}")
        end = ordered[i + 1].at if i + 1 < len(ordered) else until
        span = max((min(end, until) - ev.at).total_seconds(), 0.0)
        k.seconds[ev.state] += span
        if ev.state != "logged_out":
            k.logged_in_s += span
        if ev.state == "on_call":
            k.calls += 1
        if ev.state == "ready" and span > 0:
            k.idle_gaps.append(span)
    return k
