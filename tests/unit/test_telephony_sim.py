"""The simulated carrier: outcomes follow their probabilities, draws are reproducible, commands act on calls,
every call ends exactly once, and rings last at least 15 s (simulated)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from outdial.telephony.base import Answer, CallEvent, EventKind
from outdial.telephony.sim import Outcome, SimCarrier, SimCarrierConfig, draw


def test_draws_are_reproducible_and_follow_probabilities() -> None:
    cfg = SimCarrierConfig(p_live=0.3, p_machine=0.2, p_busy=0.1, p_failed=0.05, seed=7)
    a = [draw(cfg, k) for k in range(4000)]
    assert a == [draw(cfg, k) for k in range(4000)]
    counts = Counter(d.outcome for d in a)
    assert abs(counts[Outcome.LIVE] / 4000 - 0.3) < 0.04
    assert abs(counts[Outcome.MACHINE] / 4000 - 0.2) < 0.04
    assert abs(counts[Outcome.NO_ANSWER] / 4000 - 0.35) < 0.04
    mean_delay = sum(d.answer_delay_s for d in a) / len(a)
    assert 13.5 < mean_delay < 16.5
    other = [draw(SimCarrierConfig(seed=8), k) for k in range(50)]
    assert other != a[:50]


def test_bad_probabilities_are_refused() -> None:
    with pytest.raises(ValueError):
        SimCarrierConfig(p_live=0.8, p_machine=0.5)


async def _collect(carrier: SimCarrier, n_ended: int) -> list[CallEvent]:
    out: list[CallEvent] = []
    ended = 0
    async for ev in carrier.events():
        out.append(ev)
        if ev.kind is EventKind.ENDED:
            ended += 1
            if ended == n_ended:
                return out
    return out


async def test_live_call_bridged_then_ends_once() -> None:
    cfg = SimCarrierConfig(p_live=1.0, p_machine=0, p_busy=0, p_failed=0, talk_mean_s=2, time_scale=50)
    carrier = SimCarrier(cfg)
    await carrier.originate("c1", "+15551230001", "+15550000000", 20)
    events: list[CallEvent] = []

    async def drive() -> None:
        async for ev in carrier.events():
            events.append(ev)
            if ev.kind is EventKind.ANSWERED:
                await carrier.bridge("c1", "agent-1")
            if ev.kind is EventKind.ENDED:
                return

    await asyncio.wait_for(drive(), 30)
    kinds = [e.kind for e in events]
    assert kinds[0] is EventKind.RINGING
    assert events[kinds.index(EventKind.ANSWERED)].answer is Answer.HUMAN
    assert kinds.count(EventKind.ENDED) == 1
    assert carrier.active_calls == 0
    await carrier.close()


async def test_no_answer_rings_at_least_15_simulated_seconds() -> None:
    cfg = SimCarrierConfig(p_live=0, p_machine=0, p_busy=0, p_failed=0, time_scale=100)
    carrier = SimCarrier(cfg)
    await carrier.originate("c1", "+15551230001", "+15550000000", 5)  # asks for 5 s: raised to 15 s
    events = await asyncio.wait_for(_collect(carrier, 1), 30)
    no_answer = next(e for e in events if e.kind is EventKind.NO_ANSWER)
    ringing = next(e for e in events if e.kind is EventKind.RINGING)
    # 14.5 simulated seconds between ringing and giving up = 145 ms real at time scale 100.
    assert no_answer.at_ms - ringing.at_ms >= 140
    await carrier.close()


async def test_abandonment_message_with_opt_out_key() -> None:
    cfg = SimCarrierConfig(
        p_live=1.0, p_machine=0, p_busy=0, p_failed=0, p_opt_out=1.0, message_s=2, time_scale=50
    )
    carrier = SimCarrier(cfg)
    await carrier.originate("c1", "+15551230001", "+15550000000", 20)
    events: list[CallEvent] = []

    async def drive() -> None:
        async for ev in carrier.events():
            events.append(ev)
            if ev.kind is EventKind.ANSWERED:
                await carrier.play_message("c1", "Acme calling; press 9 to opt out")
            if ev.kind is EventKind.ENDED:
                return

    await asyncio.wait_for(drive(), 30)
    kinds = [e.kind for e in events]
    assert EventKind.DTMF in kinds and EventKind.MESSAGE_DONE in kinds
    assert kinds.index(EventKind.DTMF) < kinds.index(EventKind.MESSAGE_DONE) < kinds.index(EventKind.ENDED)
    assert events[kinds.index(EventKind.DTMF)].digit == "9"
    await carrier.close()


async def test_a_prompt_after_the_opt_out_key_cuts_the_message_off_and_our_hangup_ends_it() -> None:
    """The confirmation replaces the message: its end comes ``confirmation_s`` after it started, not at the
    message's end, and the hang-up that follows ends the call from our side (simulated time)."""
    cfg = SimCarrierConfig(
        p_live=1.0, p_machine=0, p_busy=0, p_failed=0, p_opt_out=1.0, message_s=20, confirmation_s=2,
        time_scale=20,
    )  # fmt: skip
    carrier = SimCarrier(cfg)
    await carrier.originate("c1", "+15551230001", "+15550000000", 20)
    events: list[CallEvent] = []

    async def drive() -> None:
        async for ev in carrier.events():
            events.append(ev)
            if ev.kind is EventKind.ANSWERED:
                await carrier.play_message("c1", "Acme calling; press 9 to opt out")
            elif ev.kind is EventKind.DTMF:
                await carrier.play_message("c1", "You will not be called again.")
            elif ev.kind is EventKind.MESSAGE_DONE:
                await carrier.hangup("c1")
            elif ev.kind is EventKind.ENDED:
                return

    await asyncio.wait_for(drive(), 30)
    at = {e.kind: e for e in events}
    assert [e.kind for e in events].count(EventKind.MESSAGE_DONE) == 1
    # 2 simulated seconds of confirmation = 100 ms at scale 20; the rest of the message (8 s = 400 ms) never
    # plays.
    assert 90 <= at[EventKind.MESSAGE_DONE].at_ms - at[EventKind.DTMF].at_ms < 400
    assert at[EventKind.ENDED].reason == "local"
    await carrier.close()


async def test_cancel_before_answer_and_mixed_outcomes_each_end_once() -> None:
    cfg = SimCarrierConfig(p_live=0.3, p_machine=0.3, p_busy=0.2, p_failed=0.1, time_scale=200, seed=3)
    carrier = SimCarrier(cfg)
    for i in range(40):
        await carrier.originate(f"c{i}", f"+1555123{i:04d}", "+15550000000", 15)
    await carrier.cancel("c0")

    async def drive() -> list[CallEvent]:
        out: list[CallEvent] = []
        ended = 0
        async for ev in carrier.events():
            out.append(ev)
            if ev.kind is EventKind.ANSWERED:
                await carrier.hangup(ev.call_id)
            if ev.kind is EventKind.ENDED:
                ended += 1
                if ended == 40:
                    return out
        return out

    events = await asyncio.wait_for(drive(), 60)
    ends = Counter(e.call_id for e in events if e.kind is EventKind.ENDED)
    assert set(ends) == {f"c{i}" for i in range(40)} and set(ends.values()) == {1}
    assert next(e for e in events if e.call_id == "c0" and e.kind is EventKind.ENDED).reason == "local"
    finals = Counter(
        e.kind for e in events if e.kind in (EventKind.BUSY, EventKind.FAILED, EventKind.ANSWERED)
    )
    assert finals[EventKind.BUSY] > 0 and finals[EventKind.ANSWERED] > 0
    with pytest.raises(ValueError):
        await carrier.originate("x", "+15551239999", "", 15)
    await carrier.close()


async def test_a_message_left_on_a_machine_is_recorded_to_the_end() -> None:
    """Agentless campaigns that leave their message on machines: the machine records it all, then ends."""
    cfg = SimCarrierConfig(p_live=0, p_machine=1.0, p_busy=0, p_failed=0, message_s=2, time_scale=50)
    carrier = SimCarrier(cfg)
    await carrier.originate("c1", "+15551230001", "+15550000000", 20)
    events: list[CallEvent] = []

    async def drive() -> None:
        async for ev in carrier.events():
            events.append(ev)
            if ev.kind is EventKind.ANSWERED:
                await carrier.play_message("c1", "This is Acme. Your order is ready.")
            if ev.kind is EventKind.ENDED:
                return

    await asyncio.wait_for(drive(), 30)
    kinds = [e.kind for e in events]
    assert events[kinds.index(EventKind.ANSWERED)].answer is Answer.MACHINE
    assert kinds.index(EventKind.MESSAGE_DONE) < kinds.index(EventKind.ENDED)
    assert EventKind.DTMF not in kinds
    await carrier.close()
