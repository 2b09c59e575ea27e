"""A simulated carrier: calls that ring, answer (a person or a machine), stay busy, fail or go unanswered,
with seeded random outcomes and timings, in real (optionally accelerated) time.

Every random draw of a call is made when it is originated, from a generator seeded by ``(seed, ordinal)``,
so call number *k* of a run behaves the same whatever the dialer does with it (common random numbers).
``time_scale`` divides every delay (20 = a 15 s ring lasts 0.75 s), for demos and tests; event timestamps
are taken from the clock, so they show the accelerated time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum

from outdial.core.clock import Clock, SystemClock
from outdial.telephony.base import (
    MIN_RING_TIMEOUT_S,
    Answer,
    CallEvent,
    EventKind,
    OriginateOptions,
    TelephonyAdapter,
)


class Outcome(StrEnum):
    LIVE = "live"
    MACHINE = "machine"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    FAILED = "failed"


@dataclass(frozen=True)
class SimCarrierConfig:
    """Outcome probabilities (``no_answer`` takes what the others leave) and timing distributions, seconds."""

    p_live: float = 0.25
    p_machine: float = 0.15
    p_busy: float = 0.05
    p_failed: float = 0.03
    # Answer delay ~ Gamma(shape, scale = mean / shape), from the start of ringing.
    answer_delay_shape: float = 4.0
    answer_delay_mean_s: float = 15.0
    # Talk time once bridged ~ Exp(mean).
    talk_mean_s: float = 120.0
    ring_event_s: float = 0.5
    busy_after_s: float = 3.0
    failed_after_s: float = 1.0
    # A person who hears nothing hangs up after this long; a machine records this long, then hangs up.
    silence_hangup_s: float = 6.0
    machine_hangup_s: float = 20.0
    # The abandonment message: its length, and the chance that the person presses the opt-out key.
    message_s: float = 8.0
    p_opt_out: float = 0.1
    # A prompt played over the message (the opt-out confirmation) replaces it and lasts this long.
    confirmation_s: float = 2.0
    opt_out_digit: str = "9"
    time_scale: float = 1.0
    seed: int = 1

    def __post_init__(self) -> None:
        total = self.p_live + self.p_machine + self.p_busy + self.p_failed
        if min(self.p_live, self.p_machine, self.p_busy, self.p_failed) < 0 or total > 1.0 + 1e-9:
            raise ValueError("outcome probabilities must be >= 0 and sum to at most 1")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be > 0")


@dataclass(frozen=True)
class _Draw:
    outcome: Outcome
    answer_delay_s: float
    talk_s: float
    opt_out: bool


def draw(config: SimCarrierConfig, ordinal: int) -> _Draw:
    """The fate of call number ``ordinal`` (pure: the same inputs give the same call)."""
    rng = random.Random(f"{config.seed}:{ordinal}")
    u = rng.random()
    edges = [
        (Outcome.LIVE, config.p_live),
        (Outcome.MACHINE, config.p_machine),
        (Outcome.BUSY, config.p_busy),
        (Outcome.FAILED, config.p_failed),
    ]
    outcome = Outcome.NO_ANSWER
    acc = 0.0
    for name, p in edges:
        acc += p
        if u < acc:
            outcome = name
            break
    shape = config.answer_delay_shape
    delay = rng.gammavariate(shape, config.answer_delay_mean_s / shape)
    talk = rng.expovariate(1.0 / config.talk_mean_s) if config.talk_mean_s > 0 else 0.0
    opt_out = rng.random() < config.p_opt_out
    return _Draw(outcome, delay, talk, opt_out)


@dataclass
class _Call:
    call_id: str
    draw: _Draw
    ring_timeout_s: float
    commands: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    answered: bool = False


class SimCarrier(TelephonyAdapter):
    def __init__(self, config: SimCarrierConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or SimCarrierConfig()
        self.clock = clock or SystemClock()
        self._calls: dict[str, _Call] = {}
        self._events: asyncio.Queue[CallEvent] = asyncio.Queue()
        self._ordinal = 0
        self._closed = False
        self.originated = 0

    # ---------------------------------------------------------------- commands

    async def originate(
        self,
        call_id: str,
        number: str,
        caller_id: str,
        ring_timeout_s: float,
        options: OriginateOptions | None = None,
    ) -> None:
        if self._closed:
            raise RuntimeError("carrier closed")
        if call_id in self._calls:
            raise ValueError(f"call {call_id} already exists")
        if not caller_id:
            # Like a real network that rejects anonymous telemarketing: the dialer's gate should stop it first.
            raise ValueError("caller id required")
        d = draw(self.config, self._ordinal)
        self._ordinal += 1
        self.originated += 1
        call = _Call(call_id, d, max(MIN_RING_TIMEOUT_S, ring_timeout_s))
        self._calls[call_id] = call
        call.task = asyncio.create_task(self._run(call), name=f"simcall:{call_id}")

    async def cancel(self, call_id: str) -> None:
        self._command(call_id, "cancel")

    async def play_message(self, call_id: str, text: str, audio_file: str = "") -> None:
        self._command(call_id, "play", text)

    async def bridge(self, call_id: str, agent_id: str) -> None:
        self._command(call_id, "bridge", agent_id)

    async def hangup(self, call_id: str) -> None:
        self._command(call_id, "hangup")

    async def events(self) -> AsyncIterator[CallEvent]:  # type: ignore[override]
        while True:
            yield await self._events.get()

    async def close(self) -> None:
        self._closed = True
        calls = list(self._calls.values())
        for c in calls:
            if c.task is not None:
                c.task.cancel()
        for c in calls:
            if c.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await c.task

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    # ---------------------------------------------------------------- the simulated network

    def _command(self, call_id: str, name: str, arg: str = "") -> None:
        call = self._calls.get(call_id)
        if call is not None:
            call.commands.put_nowait((name, arg))

    def _emit(self, call: _Call, kind: EventKind, **kw: object) -> None:
        at_ms = int(self.clock.now().timestamp() * 1000)
        self._events.put_nowait(CallEvent(call.call_id, kind, at_ms, **kw))  # type: ignore[arg-type]

    async def _wait(self, call: _Call, seconds: float) -> tuple[str, str] | None:
        """Wait ``seconds`` of simulated time for a command; None when the time passed without one."""
        if seconds <= 0:
            return None if call.commands.empty() else call.commands.get_nowait()
        try:
            return await asyncio.wait_for(call.commands.get(), seconds / self.config.time_scale)
        except TimeoutError:
            return None

    async def _run(self, call: _Call) -> None:
        ended_reason = "remote"
        try:
            ended_reason = await self._script(call)
        except asyncio.CancelledError:
            ended_reason = "carrier_closed"
            raise
        finally:
            self._calls.pop(call.call_id, None)
            self._emit(call, EventKind.ENDED, reason=ended_reason)

    async def _script(self, call: _Call) -> str:
        cfg, d = self.config, call.draw
        cmd = await self._wait(call, cfg.ring_event_s)
        if cmd is not None and cmd[0] in ("cancel", "hangup"):
            return "local"
        if d.outcome is Outcome.FAILED:
            await self._wait(call, cfg.failed_after_s)
            self._emit(call, EventKind.FAILED, reason="network")
            return "remote"
        self._emit(call, EventKind.RINGING)
        if d.outcome is Outcome.BUSY:
            await self._wait(call, cfg.busy_after_s)
            self._emit(call, EventKind.BUSY)
            return "remote"
        rang = cfg.ring_event_s
        answers = d.outcome in (Outcome.LIVE, Outcome.MACHINE) and d.answer_delay_s < call.ring_timeout_s
        until = (d.answer_delay_s if answers else call.ring_timeout_s) - rang
        cmd = await self._wait(call, max(0.0, until))
        if cmd is not None and cmd[0] in ("cancel", "hangup"):
            return "local"
        if not answers:
            self._emit(call, EventKind.NO_ANSWER)
            return "timeout"
        call.answered = True
        if d.outcome is Outcome.MACHINE:
            self._emit(call, EventKind.ANSWERED, answer=Answer.MACHINE)
            cmd = await self._wait(call, cfg.machine_hangup_s)
            if cmd is not None and cmd[0] == "play":
                # A message left on the machine (agentless campaigns that leave one): it records it all.
                cmd = await self._wait(call, cfg.message_s)
                if cmd is not None and cmd[0] in ("hangup", "cancel"):
                    return "local"
                self._emit(call, EventKind.MESSAGE_DONE)
                return "remote"
            return "local" if cmd is not None and cmd[0] in ("hangup", "cancel") else "remote"
        self._emit(call, EventKind.ANSWERED, answer=Answer.HUMAN)
        cmd = await self._wait(call, cfg.silence_hangup_s)
        if cmd is None:
            return "remote"
        if cmd[0] in ("hangup", "cancel"):
            return "local"
        if cmd[0] == "bridge":
            cmd = await self._wait(call, d.talk_s)
            return "local" if cmd is not None and cmd[0] in ("hangup", "cancel") else "remote"
        return await self._listen(call)

    async def _listen(self, call: _Call) -> str:
        """A person hears a message (the abandonment message, or an agentless campaign's), maybe presses the
        opt-out key, then hangs up at its end; a prompt played over it (the opt-out confirmation) cuts it off:
        the person listens to that, then waits a moment for us to hang up before hanging up themselves."""
        cfg, d = self.config, call.draw
        if d.opt_out:
            cmd = await self._wait(call, cfg.message_s * 0.6)
            if cmd is not None and cmd[0] in ("hangup", "cancel"):
                return "local"
            self._emit(call, EventKind.DTMF, digit=cfg.opt_out_digit)
            rest = cfg.message_s * 0.4
        else:
            rest = cfg.message_s
        cmd = await self._wait(call, rest)
        if cmd is not None and cmd[0] == "play":
            while cmd is not None and cmd[0] == "play":
                cmd = await self._wait(call, cfg.confirmation_s)
            if cmd is not None and cmd[0] in ("hangup", "cancel"):
                return "local"
            self._emit(call, EventKind.MESSAGE_DONE)
            cmd = await self._wait(call, cfg.silence_hangup_s)
            return "local" if cmd is not None and cmd[0] in ("hangup", "cancel") else "remote"
        if cmd is not None and cmd[0] in ("hangup", "cancel"):
            return "local"
        self._emit(call, EventKind.MESSAGE_DONE)
        return "remote"
