"""The abandonment budget: the cap over its legal window, and what is left of it. Pure, no I/O.

The cap is a rate of live-answered calls over a rolling window, per jurisdiction (:mod:`outdial.rules.law`). The budget is how many more calls
may be abandoned now without the window's rate going over the cap: ``cap * live - abandoned``. The last
60 minutes are tracked as well, to keep short windows calm (no hour above 5 %).
"""

from __future__ import annotations

import bisect
from collections import deque

from outdial.pacing.snapshot import BudgetView
from outdial.rules import law

US_WINDOW_S = law.ABANDON_POLICIES["US"].window_s
SHORT_WINDOW_S = law.SHORT_WINDOW_S


def budget_view(
    cap: float,
    window_s: float,
    live: int,
    abandoned: int,
    live_60min: int,
    abandoned_60min: int,
    short_window_cap: float = law.SHORT_WINDOW_CAP,
) -> BudgetView:
    """The budget from the counts over the legal window and over the last 60 minutes: the one formula
    the dialer (counts kept in Redis, rebuilt from PostgreSQL) and the simulator (counts in memory) use."""
    return BudgetView(
        cap=cap,
        window_s=window_s,
        live_answers=live,
        abandoned=abandoned,
        remaining=cap * live - abandoned,
        rate_60min=abandoned_60min / live_60min if live_60min else 0.0,
        short_window_cap=short_window_cap,
        live_60min=live_60min,
        abandoned_60min=abandoned_60min,
    )


class _Window:
    """Exact rolling counts of (time, abandoned) over ``span`` seconds; amortised O(1) per event."""

    __slots__ = ("abandoned", "events", "live", "span")

    def __init__(self, span: float) -> None:
        self.span = span
        self.events: deque[tuple[float, bool]] = deque()
        self.live = 0
        self.abandoned = 0

    def add(self, t: float, abandoned: bool) -> None:
        ev = (t, abandoned)
        if self.events and t < self.events[-1][0]:
            # Late event (rare): keep the deque sorted so expiry stays exact.
            self.events.insert(bisect.bisect_right(self.events, ev), ev)
        else:
            self.events.append(ev)
        self.live += 1
        self.abandoned += abandoned

    def expire(self, now: float) -> None:
        edge = now - self.span
        ev = self.events
        while ev and ev[0][0] <= edge:
            _, ab = ev.popleft()
            self.live -= 1
            self.abandoned -= ab


class AbandonBudget:
    """Live answers and abandoned calls over the campaign's window, exact and rolling.

    ``record_live(t, abandoned)`` once per live-answered call (at its answer time, abandoned or not);
    ``view(now)`` the budget at ``now`` (events at or before ``now - window`` have left the window).
    """

    def __init__(self, cap: float = law.ABANDON_POLICIES["US"].cap, window_s: float = US_WINDOW_S) -> None:
        if not 0.0 <= cap <= 1.0:
            raise ValueError("cap must be a fraction between 0 and 1")
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.cap = cap
        self.window_s = window_s
        self._long = _Window(window_s)
        self._short = _Window(min(SHORT_WINDOW_S, window_s))

    def record_live(self, t_s: float, abandoned: bool) -> None:
        self._long.add(t_s, abandoned)
        self._short.add(t_s, abandoned)

    def view(self, now_s: float, short_window_cap: float = law.SHORT_WINDOW_CAP) -> BudgetView:
        self._long.expire(now_s)
        self._short.expire(now_s)
        lw, sw = self._long, self._short
        return budget_view(
            self.cap, self.window_s, lw.live, lw.abandoned, sw.live, sw.abandoned, short_window_cap
        )
