"""The abandonment budget: the cap over its legal window, and what is left of it. Pure, no I/O.

The cap is a rate (3 % of live-answered calls) over a rolling window (30 days in the US, FCC
64.1200(a)(7)(i); 24 hours in the UK, Ofcom's persistent-misuse policy). The budget is how many more calls
may be abandoned now without the window's rate going over the cap: ``cap * live - abandoned``. The last
60 minutes are tracked as well, to keep short windows calm (no hour above 5 %).
"""

from __future__ import annotations

import bisect
from collections import deque

from outdial.pacing.snapshot import BudgetView

US_WINDOW_S = 30 * 86400.0
UK_WINDOW_S = 86400.0
SHORT_WINDOW_S = 3600.0


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

    def __init__(self, cap: float = 0.03, window_s: float = US_WINDOW_S) -> None:
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

    def view(self, now_s: float, short_window_cap: float = 0.05) -> BudgetView:
        self._long.expire(now_s)
        self._short.expire(now_s)
        lw, sw = self._long, self._short
        return BudgetView(
            cap=self.cap,
            window_s=self.window_s,
            live_answers=lw.live,
            abandoned=lw.abandoned,
            remaining=self.cap * lw.live - lw.abandoned,
            rate_60min=sw.abandoned / sw.live if sw.live else 0.0,
            short_window_cap=short_window_cap,
            live_60min=sw.live,
            abandoned_60min=sw.abandoned,
        )
