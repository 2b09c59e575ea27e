"""What a pacing algorithm sees and what it answers: plain frozen values, no I/O.

The dialer (and the simulator) build a :class:`Snapshot` for one campaign at one instant; an algorithm turns
it into a :class:`Decision`. Times are seconds; ``now_s`` is on whatever clock the caller uses (epoch
seconds in the dialer, virtual seconds in the simulator) and is only compared with itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from outdial.rules.law import MIN_RING_S, SHORT_WINDOW_CAP, ring_time

__all__ = ["MIN_RING_S"]  # re-exported: what the snapshot's ring time is bounded by

# Agent states as the agent service publishes them in ``keys.campaign_agents(cid)``.
READY = "ready"
RESERVED = "reserved"
ON_CALL = "on_call"
WRAP_UP = "wrap_up"
PAUSED = "paused"
AGENT_STATES = (READY, RESERVED, ON_CALL, WRAP_UP, PAUSED)


@dataclass(frozen=True, slots=True)
class AgentSnap:
    """One logged-in agent: its state (one of ``AGENT_STATES``) and how long it has been in it."""

    state: str
    in_state_s: float


@dataclass(frozen=True, slots=True)
class Estimates:
    """What has been learned about the campaign's calls, with how sure we are.

    ``live_answer_rate`` is the probability that a dialed call is answered by a person (per dialed call);
    ``live_answer_rate_sd`` its posterior standard deviation. ``answer_delay_shape`` is the shape of the
    Gamma law assumed for the answer delay (its mean is ``mean_answer_delay_s``), the same for answering
    machines, which answer a ``machine_rate`` share of dialed calls. ``mean_no_answer_release_s`` is the
    mean time to the end of calls nobody answered (busy, failed and unanswered together).
    ``talk_survival`` is the talk time's law, from which the pacer predicts when each busy agent frees up.
    """

    live_answer_rate: float
    live_answer_rate_sd: float
    mean_answer_delay_s: float
    mean_no_answer_release_s: float
    mean_talk_s: float
    mean_wrap_s: float
    samples: int
    confident: bool
    answer_delay_shape: float = 4.0
    machine_rate: float = 0.0
    # P(talk > x) on the grid x = 0, 5, 10 … 1800 s (``estimates.TALK_GRID_S``); () = not enough talks yet:
    # the pacer then takes talk times as exponential with ``mean_talk_s``.
    talk_survival: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class BudgetView:
    """The abandonment budget of the campaign at one instant.

    ``cap`` is the legal cap (fraction of live answers) over ``window_s`` (30 days US, 24 h UK);
    ``live_answers`` and ``abandoned`` are counted over that window; ``remaining`` is how many more calls
    may be abandoned right now without the window's rate going over the cap (``cap * live - abandoned``,
    may be negative); ``rate_60min`` is the abandonment rate of the last 60 minutes, to be kept under
    ``short_window_cap``.
    """

    cap: float
    window_s: float
    live_answers: int
    abandoned: int
    remaining: float
    rate_60min: float
    short_window_cap: float = SHORT_WINDOW_CAP
    live_60min: int = 0
    abandoned_60min: int = 0

    @property
    def rate(self) -> float:
        return self.abandoned / self.live_answers if self.live_answers else 0.0

    @property
    def spent(self) -> bool:
        """No budget left to spend (the window's rate is at the cap) or the last hour is over its cap."""
        return self.remaining <= 0.0 or self.rate_60min >= self.short_window_cap


@dataclass(frozen=True, slots=True)
class PacingParams:
    """Per-campaign settings. ``target_abandon_rate`` None = derived from the budget."""

    algorithm: str = "predictive"
    power_ratio: float = 2.0
    max_lines_per_agent: int = 3
    ring_timeout_s: float = 25.0
    target_abandon_rate: float | None = None
    # Agentless: most message calls in flight (no agent bounds them).
    max_lines: int = 10


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One campaign at one instant.

    ``agents``: every logged-in agent (paused ones included). ``in_flight_ages_s``: age of every call
    dialed and not yet answered or ended (ringing). ``answered_waiting``: calls answered by a person that
    are waiting for an agent (at most 2 s, then they are abandoned).
    """

    now_s: float
    agents: tuple[AgentSnap, ...]
    in_flight_ages_s: tuple[float, ...]
    answered_waiting: int
    estimates: Estimates
    budget: BudgetView
    params: PacingParams


@dataclass(frozen=True, slots=True)
class Decision:
    """How many calls to launch now.

    ``dial_level`` is lines per non-paused agent the decision aims at (for display); ``mode`` the mode
    actually used ("progressive", "power", "predictive", "none"), ``reason`` a short explanation.
    ``reserve_agent`` True = progressive agent-reserved: the dialer reserves one ready agent per call
    before dialing, so that call cannot be abandoned. ``ring_timeout_s`` is how long each call rings
    before the dialer gives up (never below :data:`outdial.rules.law.MIN_RING_S`).
    """

    calls: int
    dial_level: float
    mode: str
    reason: str
    reserve_agent: bool
    ring_timeout_s: float = 25.0


def ring_timeout(params: PacingParams) -> float:
    """The ring time to use: the campaign's, but never below the legal minimum."""
    return ring_time(params.ring_timeout_s)
