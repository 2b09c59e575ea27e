"""Online estimates of a campaign's calls, with their uncertainty. Pure, no I/O.

- live-answer rate: a Beta posterior over discounted counts (memory of about ``memory`` calls), so it
  follows slow drift; a fast EWMA beside it detects abrupt changes (a z-test on the gap, the EWMA's own
  standard deviation, a minimum size, and it must last); on a change the posterior restarts from the recent calls and the estimates are
  not ``confident`` again until ``min_samples`` calls have been observed since;
- answer delay: EWMA of its mean and second moment (the Gamma shape follows from them);
- no-answer release, talk and wrap-up times: EWMA means;
- talk time's whole law (:class:`TalkSurvival`): a discounted histogram of recent talk times, so the pacer
  predicts when each busy agent frees up from how long they have talked already (the hazard), not from
  the mean alone. Talk times are rarely exponential: short calls end fast, a call that has lasted long
  tends to last longer.
"""

from __future__ import annotations

import math

import numpy as np

from outdial.pacing.snapshot import Estimates


class _Ewma:
    __slots__ = ("alpha", "m1", "m2", "n")

    def __init__(self, memory: float, prior: float) -> None:
        self.alpha = 1.0 / memory
        self.m1 = prior
        self.m2 = prior * prior
        self.n = 0

    def add(self, x: float) -> None:
        self.n += 1
        a = max(self.alpha, 1.0 / self.n)  # plain average until the memory is full
        self.m1 += a * (x - self.m1)
        self.m2 += a * (x * x - self.m2)

    @property
    def var(self) -> float:
        return max(0.0, self.m2 - self.m1 * self.m1)


#: The talk-time survival function is published on this grid (seconds) up to :data:`TALK_GRID_MAX_S`.
TALK_GRID_S = 5.0
TALK_GRID_MAX_S = 1800.0


class TalkSurvival:
    """The law of talk times, from a histogram of the recent ones (memory of about ``memory`` calls).

    ``survival()`` gives ``S(x) = P(talk > x)`` on the grid ``0, TALK_GRID_S, …, TALK_GRID_MAX_S``; the
    pacer turns it into ``P(an agent who has talked e seconds is done within h) = 1 - S(e + h) / S(e)``
    (:func:`free_within`). Past the grid, and where the histogram is thin, the tail is exponential with the
    mean of the talk times beyond the grid's end (or the overall mean).
    """

    def __init__(self, memory: float = 2000.0, min_samples: int = 200) -> None:
        self.decay = 1.0 - 1.0 / memory
        self.min_samples = min_samples
        self.bins = [0.0] * (int(TALK_GRID_MAX_S / TALK_GRID_S) + 1)  # last bin: beyond the grid
        self.total = 0.0
        self.n = 0

    def add(self, s: float) -> None:
        if self.n % 64 == 0 and self.n:  # discount in batches: the same memory, 64 times less work
            f = self.decay**64
            self.bins = [b * f for b in self.bins]
            self.total *= f
        self.n += 1
        i = min(len(self.bins) - 1, int(max(0.0, s) / TALK_GRID_S))
        self.bins[i] += 1.0
        self.total += 1.0

    def survival(self) -> tuple[float, ...]:
        """``S`` on the grid, or ``()`` while fewer than ``min_samples`` talks have been seen."""
        if self.n < self.min_samples or self.total <= 0.0:
            return ()
        out = [1.0]
        left = self.total
        for b in self.bins[:-1]:
            left -= b
            out.append(max(0.0, left / self.total))
        return tuple(out)


def free_within(
    survival: tuple[float, ...], mean_talk_s: float, elapsed_s: np.ndarray, horizons_s: np.ndarray
) -> np.ndarray:
    """``[i, j] = P(talk <= elapsed_i + h_j | talk > elapsed_i)``: the chance that an agent who has talked
    ``elapsed_i`` seconds is done within ``h_j`` more (0 for ``h_j <= 0``).

    From the survival function on the grid (linear between points). Where it cannot tell (fewer than 1 %
    of talks last that long), and without a survival function (too few talks yet), the exponential law
    with mean ``mean_talk_s``, whose hazard does not depend on the time already talked.
    """
    e = np.asarray(elapsed_s, dtype=float)[:, None]
    h = np.asarray(horizons_s, dtype=float)[None, :]
    hp = np.maximum(h, 0.0)
    expo = np.where(h > 0.0, 1.0 - np.exp(-hp / max(mean_talk_s, 1.0)), 0.0)
    if not survival:
        return np.broadcast_to(expo, (e.shape[0], h.shape[1])).copy()
    grid = np.arange(len(survival)) * TALK_GRID_S
    surv = np.asarray(survival, dtype=float)
    s0 = np.interp(e, grid, surv, right=0.0)
    s1 = np.interp(e + hp, grid, surv, right=0.0)
    known = s0 >= 0.01
    emp = np.where(h > 0.0, 1.0 - s1 / np.where(known, s0, 1.0), 0.0)
    return np.clip(np.where(known, emp, expo), 0.0, 1.0)


class OnlineEstimator:
    def __init__(
        self,
        *,
        memory: float = 4000.0,
        fast_memory: float = 300.0,
        change_z: float = 3.5,
        min_change: float = 0.3,
        persist: int = 200,
        min_samples: int = 100,
        min_talk_samples: int = 20,
        prior_rate: float = 0.2,
        prior_delay_s: float = 15.0,
        prior_release_s: float = 25.0,
        prior_talk_s: float = 120.0,
        prior_wrap_s: float = 15.0,
    ) -> None:
        self.decay = 1.0 - 1.0 / memory
        self.fast_alpha = 1.0 / fast_memory
        self.change_z = change_z
        self.min_change = min_change
        self.persist = persist
        self._streak = 0
        self.min_samples = min_samples
        self.min_talk_samples = min_talk_samples
        # Beta(a, b) over discounted counts; a weak prior worth 4 calls.
        self.a = prior_rate * 4.0
        self.b = (1.0 - prior_rate) * 4.0
        self.fast = prior_rate
        self.machine = 0.0
        self.since_change = 0
        self.samples = 0
        self.changes = 0
        self.delay = _Ewma(500.0, prior_delay_s)
        self.release = _Ewma(500.0, prior_release_s)
        self.talk = _Ewma(500.0, prior_talk_s)
        self.talk_law = TalkSurvival()
        self._surv_at = -1
        self._surv: tuple[float, ...] = ()
        self.wrap = _Ewma(500.0, prior_wrap_s)

    @property
    def rate(self) -> float:
        return self.a / (self.a + self.b)

    def observe_outcome(self, answered_human: bool, answered_machine: bool, delay_s: float) -> None:
        """One dialed call resolved: answered by a person, by a machine, or not (``delay_s`` = time to the
        answer, or to the release when not answered)."""
        x = 1.0 if answered_human else 0.0
        self.samples += 1
        self.since_change += 1
        self.a = self.a * self.decay + x
        self.b = self.b * self.decay + (1.0 - x)
        self.machine += max(1.0 - self.decay, 1.0 / self.samples) * (
            (1.0 if answered_machine else 0.0) - self.machine
        )
        n_fast = min(self.since_change, 1.0 / self.fast_alpha)
        self.fast += max(self.fast_alpha, 1.0 / self.since_change) * (x - self.fast)
        if answered_human or answered_machine:
            self.delay.add(delay_s)
        else:
            self.release.add(delay_s)
        if self.since_change >= self.min_samples:
            p = self.rate
            sd = math.sqrt(max(p * (1.0 - p), 1e-6) / (2.0 * n_fast - 1.0))
            # A change worth relearning: improbable under the current estimate and big (a quarter or more).
            # It must also last (``persist`` calls in a row): outcomes of a burst of calls arrive sorted
            # by how fast they resolve (failures, then answers, then no-answers), a passing cluster.
            if abs(self.fast - p) > max(self.change_z * sd, self.min_change * p):
                self._streak += 1
                if self._streak >= self.persist:
                    self._restart()
            else:
                self._streak = 0

    def _restart(self) -> None:
        """An abrupt change: start again from the recent calls; not confident until enough new ones."""
        weight = 20.0
        self.a = self.fast * weight
        self.b = (1.0 - self.fast) * weight
        self.since_change = 0
        self._streak = 0
        self.changes += 1

    def observe_talk(self, s: float) -> None:
        self.talk.add(s)
        self.talk_law.add(s)

    def observe_wrap(self, s: float) -> None:
        self.wrap.add(s)

    def snapshot(self) -> Estimates:
        n = self.a + self.b
        p = self.rate
        sd = math.sqrt(p * (1.0 - p) / (n + 1.0))
        mean_delay = max(self.delay.m1, 0.1)
        shape = mean_delay * mean_delay / self.delay.var if self.delay.var > 1e-9 else 4.0
        if self.delay.n < 30:
            shape = 4.0
        confident = (
            self.since_change >= self.min_samples
            and self.talk.n >= self.min_talk_samples
            and self.delay.n >= 10
            and sd <= max(0.25 * p, 0.01)
        )
        return Estimates(
            live_answer_rate=p,
            live_answer_rate_sd=sd,
            mean_answer_delay_s=mean_delay,
            mean_no_answer_release_s=self.release.m1,
            mean_talk_s=self.talk.m1,
            mean_wrap_s=self.wrap.m1,
            samples=self.samples,
            confident=confident,
            answer_delay_shape=min(10.0, max(1.0, shape)),
            machine_rate=self.machine,
            talk_survival=self._survival(),
        )

    def _survival(self) -> tuple[float, ...]:
        """The talk-time survival function, recomputed once per 16 new talks (it moves slowly)."""
        n = self.talk_law.n
        if self._surv_at != n // 16:
            self._surv_at = n // 16
            self._surv = self.talk_law.survival()
        return self._surv
