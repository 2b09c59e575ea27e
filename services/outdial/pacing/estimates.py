"""Online estimates of a campaign's calls, with their uncertainty. Pure, no I/O.

- live-answer rate: a Beta posterior over discounted counts (memory of about ``memory`` calls), so it
  follows slow drift; a fast EWMA beside it detects abrupt changes (a z-test on the gap, the EWMA's own
  standard deviation, a minimum size, and it must last); on a change the posterior restarts from the recent calls and the estimates are
  not ``confident`` again until ``min_samples`` calls have been observed since;
- answer delay: EWMA of its mean and second moment (the Gamma shape follows from them);
- no-answer release, talk and wrap-up times: EWMA means.
"""

from __future__ import annotations

import math

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
        )
