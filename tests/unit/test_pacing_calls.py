"""The per-call state machine, transition by transition, and crashes between any two steps."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from outdial.pacing.calls import FLOW_TABLE, TABLE, Action, Event, Flow, State, state_from_record, step

A, E, S, F = Action, Event, State, Flow

# (state, event) -> (new state, outcome set, actions): the whole table, written out once more on purpose.
EXPECTED: dict[tuple[State, Event], tuple[State, str | None, tuple[Action, ...]]] = {
    (S.RINGING, E.RINGING): (S.RINGING, None, (A.EMIT_RINGING,)),
    (S.RINGING, E.ANSWERED_HUMAN): (S.OFFERED, None, (A.RECORD_ANSWER, A.OFFER)),
    (S.RINGING, E.ANSWERED_MACHINE): (S.CLOSING, "machine", (A.RECORD_ANSWER, A.RELEASE_AGENT, A.HANGUP)),
    (S.RINGING, E.NO_ANSWER): (S.CLOSING, "no_answer", (A.RELEASE_AGENT, A.EMIT_OUTCOME)),
    (S.RINGING, E.BUSY): (S.CLOSING, "busy", (A.RELEASE_AGENT, A.EMIT_OUTCOME)),
    (S.RINGING, E.FAILED): (S.CLOSING, "failed", (A.RELEASE_AGENT, A.EMIT_OUTCOME)),
    (S.RINGING, E.RELEASE): (S.CLOSING, "no_answer", (A.RELEASE_AGENT, A.CANCEL, A.EMIT_OUTCOME)),
    (S.RINGING, E.LINE_ENDED): (S.ENDED, "failed", (A.RELEASE_AGENT, A.FINISH)),
    (S.RINGING, E.ORIGINATE_ERROR): (S.ENDED, "failed", (A.RELEASE_AGENT, A.FINISH)),
    (S.RINGING, E.SHUTDOWN): (S.ENDED, "failed", (A.RELEASE_AGENT, A.CANCEL, A.FINISH)),
    (S.RINGING, E.ORPHAN): (S.ENDED, "failed", (A.RELEASE_AGENT, A.FINISH)),
    (S.OFFERED, E.OFFER_ACCEPTED): (S.CONNECTED, "connected", (A.RECORD_CONNECT, A.BRIDGE)),
    (S.OFFERED, E.OFFER_REFUSED): (
        S.ABANDONED,
        "abandoned",
        (A.RELEASE_AGENT, A.RECORD_ABANDON, A.PLAY_MESSAGE),
    ),
    (S.OFFERED, E.LINE_ENDED): (S.ENDED, "abandoned", (A.RELEASE_AGENT, A.RECORD_ABANDON, A.FINISH)),
    (S.OFFERED, E.SHUTDOWN): (S.ENDED, "abandoned", (A.RELEASE_AGENT, A.RECORD_ABANDON, A.HANGUP, A.FINISH)),
    (S.OFFERED, E.ORPHAN): (S.ENDED, "abandoned", (A.RELEASE_AGENT, A.RECORD_ABANDON, A.FINISH)),
    (S.CONNECTED, E.AGENT_HANGUP): (S.CONNECTED, None, (A.HANGUP,)),
    (S.CONNECTED, E.LINE_ENDED): (S.ENDED, None, (A.END_AGENT_CALL, A.FINISH)),
    (S.CONNECTED, E.SHUTDOWN): (S.ENDED, None, (A.HANGUP, A.END_AGENT_CALL, A.FINISH)),
    (S.CONNECTED, E.ORPHAN): (S.ENDED, None, (A.END_AGENT_CALL, A.FINISH)),
    (S.ABANDONED, E.OPT_OUT_KEY): (S.CONFIRMING, None, (A.PLAY_CONFIRMATION, A.RECORD_OPT_OUT)),
    (S.ABANDONED, E.MESSAGE_DONE): (S.ABANDONED, None, (A.HANGUP,)),
    (S.ABANDONED, E.LINE_ENDED): (S.ENDED, None, (A.FINISH,)),
    (S.ABANDONED, E.SHUTDOWN): (S.ENDED, None, (A.HANGUP, A.FINISH)),
    (S.ABANDONED, E.ORPHAN): (S.ENDED, None, (A.FINISH,)),
    (S.CLOSING, E.LINE_ENDED): (S.ENDED, None, (A.FINISH,)),
    (S.CLOSING, E.SHUTDOWN): (S.ENDED, None, (A.HANGUP, A.FINISH)),
    (S.CLOSING, E.ORPHAN): (S.ENDED, None, (A.FINISH,)),
    # preview: the lead is shown, nothing is dialled until the agent (or the timeout) says dial
    (S.PREVIEWING, E.PREVIEW_DIAL): (S.GATING, None, (A.DIAL,)),
    (S.PREVIEWING, E.PREVIEW_SKIP): (S.ENDED, "skipped", (A.SKIP_LEAD, A.RELEASE_AGENT)),
    (S.PREVIEWING, E.AGENT_GONE): (S.ENDED, None, (A.RELEASE_AGENT, A.GIVE_BACK)),
    (S.PREVIEWING, E.SHUTDOWN): (S.ENDED, None, (A.RELEASE_AGENT, A.GIVE_BACK)),
    (S.GATING, E.DIALLED): (S.RINGING, None, ()),
    (S.GATING, E.BLOCKED): (S.ENDED, "blocked", (A.RELEASE_AGENT, A.RELEASE_LEAD)),
    (S.GATING, E.NOT_DIALLED): (S.ENDED, None, (A.RELEASE_AGENT, A.GIVE_BACK)),
    (S.GATING, E.ORIGINATE_ERROR): (S.ENDED, "failed", (A.RELEASE_AGENT, A.FINISH)),
    # agentless: the campaign's message
    (S.MESSAGE, E.OPT_OUT_KEY): (S.CONFIRMING, None, (A.PLAY_CONFIRMATION, A.RECORD_OPT_OUT)),
    (S.MESSAGE, E.MESSAGE_DONE): (S.MESSAGE, None, (A.HANGUP,)),
    (S.MESSAGE, E.LINE_ENDED): (S.ENDED, None, (A.FINISH,)),
    (S.MESSAGE, E.SHUTDOWN): (S.ENDED, None, (A.HANGUP, A.FINISH)),
    (S.MESSAGE, E.ORPHAN): (S.ENDED, None, (A.FINISH,)),
    # the opt-out key: the confirmation, then the hang-up at its end; a second key changes nothing
    (S.CONFIRMING, E.MESSAGE_DONE): (S.CONFIRMING, None, (A.HANGUP,)),
    (S.CONFIRMING, E.LINE_ENDED): (S.ENDED, None, (A.FINISH,)),
    (S.CONFIRMING, E.SHUTDOWN): (S.ENDED, None, (A.HANGUP, A.FINISH)),
    (S.CONFIRMING, E.ORPHAN): (S.ENDED, None, (A.FINISH,)),
}

# Per flow, what differs from EXPECTED.
PLAY = (S.MESSAGE, "delivered", (A.RECORD_ANSWER, A.PLAY_CAMPAIGN_MESSAGE))
EXPECTED_FLOW: dict[Flow, dict[tuple[State, Event], tuple[State, str | None, tuple[Action, ...]]]] = {
    F.AGENT: {},
    F.MESSAGE: {(S.RINGING, E.ANSWERED_HUMAN): PLAY},
    F.MESSAGE_MACHINES: {
        (S.RINGING, E.ANSWERED_HUMAN): PLAY,
        (S.RINGING, E.ANSWERED_MACHINE): (S.MESSAGE, "machine", (A.RECORD_ANSWER, A.PLAY_CAMPAIGN_MESSAGE)),
    },
}


@pytest.mark.parametrize(("flow", "state", "event"), list(itertools.product(Flow, State, Event)))
def test_every_transition(flow: Flow, state: State, event: Event) -> None:
    t = step(state, event, flow)
    want = {**EXPECTED, **EXPECTED_FLOW[flow]}
    if (state, event) in want:
        assert (t.state, t.outcome, t.actions) == want[(state, event)]
    else:
        # Anything else means nothing in that state: a late carrier event, a second key, anything after the end.
        assert (t.state, t.outcome, t.actions) == (state, None, ())


def test_the_table_has_no_transition_the_test_does_not_know() -> None:
    assert set(TABLE) == set(EXPECTED)
    assert {f: set(t) for f, t in FLOW_TABLE.items()} == {f: set(t) for f, t in EXPECTED_FLOW.items()}


def _all_transitions() -> list[tuple[State, Event, object]]:
    return [(s, e, t) for (s, e), t in TABLE.items()] + [
        (s, e, t) for table in FLOW_TABLE.values() for (s, e), t in table.items()
    ]


def test_ended_is_terminal_and_finish_only_enters_it() -> None:
    """FINISH (the end written to dial_attempts) enters ENDED, exactly once; only a preview that was never
    placed (skipped, blocked, handed back) ends without it, since nothing was dialled."""
    for state, event, t in _all_transitions():
        assert state is not S.ENDED
        never_placed = state in (S.PREVIEWING, S.GATING) and event is not E.ORIGINATE_ERROR
        assert (A.FINISH in t.actions) == (t.state is S.ENDED and not never_placed)  # type: ignore[attr-defined]
        assert t.actions.count(A.FINISH) <= 1  # type: ignore[attr-defined]


def test_nothing_is_dialled_but_through_the_gate_after_a_dial_decision() -> None:
    """A preview reaches RINGING only through GATING (the gate allowed it and it was placed), and GATING only
    through a dial decision; a skipped or blocked lead never rings."""
    into_ringing = [(s, e) for s, e, t in _all_transitions() if t.state is S.RINGING and s is not S.RINGING]  # type: ignore[attr-defined]
    assert into_ringing == [(S.GATING, E.DIALLED)]
    assert [(s, e) for s, e, t in _all_transitions() if t.state is S.GATING and s is not S.GATING] == [  # type: ignore[attr-defined]
        (S.PREVIEWING, E.PREVIEW_DIAL)
    ]
    assert [s for s, _e, t in _all_transitions() if A.DIAL in t.actions] == [S.PREVIEWING]  # type: ignore[attr-defined]


def test_an_agentless_call_is_never_offered_nor_abandoned() -> None:
    """No agent is waited for: an answer plays the message, so no live answer can be abandoned."""
    for flow in (F.MESSAGE, F.MESSAGE_MACHINES):
        state = S.RINGING
        for ev in (E.RINGING, E.ANSWERED_HUMAN, E.OPT_OUT_KEY, E.LINE_ENDED):
            t = step(state, ev, flow)
            assert A.OFFER not in t.actions and A.RECORD_ABANDON not in t.actions
            assert t.outcome in (None, "delivered")
            state = t.state
        assert state is S.ENDED
    assert step(S.RINGING, E.ANSWERED_MACHINE, F.MESSAGE).actions == (
        A.RECORD_ANSWER,
        A.RELEASE_AGENT,
        A.HANGUP,
    )


def test_only_an_accepted_offer_after_a_human_answer_connects() -> None:
    for (state, event), t in TABLE.items():
        if t.outcome == "connected":
            assert (state, event) == (S.OFFERED, E.OFFER_ACCEPTED)
    # ...and OFFERED is only reached by a person answering.
    assert [k for k, t in TABLE.items() if t.state is S.OFFERED] == [(S.RINGING, E.ANSWERED_HUMAN)]


def test_a_released_call_was_never_answered() -> None:
    assert [s for (s, e) in TABLE if e is E.RELEASE] == [S.RINGING]


# ------------------------------------------------------------------------------------------------ crashes
@dataclass
class Record:
    """What PostgreSQL holds of a call after each action (what ``dialer.py`` writes at each one)."""

    outcome: str | None = None
    answer: str | None = None
    answer_at: float | None = None
    connect_at: float | None = None
    end_at: float | None = None
    log: list[Action] = field(default_factory=list)

    def apply(self, action: Action, outcome: str | None) -> None:
        self.log.append(action)
        if action is A.RECORD_ANSWER:
            self.answer, self.answer_at = ("machine" if outcome == "machine" else "human"), 1.0
            if outcome in ("machine", "delivered"):
                self.outcome = outcome
        elif action is A.RECORD_CONNECT:
            self.connect_at, self.outcome = 2.0, "connected"
        elif action is A.RECORD_ABANDON:
            self.outcome = "abandoned"
        elif action is A.EMIT_OUTCOME:
            self.outcome = outcome
        elif action is A.FINISH:
            self.end_at = 9.0


PATHS: dict[str, list[Event]] = {
    "connected": [E.RINGING, E.ANSWERED_HUMAN, E.OFFER_ACCEPTED, E.AGENT_HANGUP, E.LINE_ENDED],
    "abandoned": [E.RINGING, E.ANSWERED_HUMAN, E.OFFER_REFUSED, E.OPT_OUT_KEY, E.LINE_ENDED],
    "abandoned_heard_it_all": [E.ANSWERED_HUMAN, E.OFFER_REFUSED, E.MESSAGE_DONE, E.LINE_ENDED],
    "machine": [E.RINGING, E.ANSWERED_MACHINE, E.LINE_ENDED],
    "no_answer": [E.RINGING, E.NO_ANSWER, E.LINE_ENDED],
    "busy": [E.BUSY, E.LINE_ENDED],
    "released": [E.RINGING, E.RELEASE, E.LINE_ENDED],
    "preview_connected": [E.PREVIEW_DIAL, E.DIALLED, E.ANSWERED_HUMAN, E.OFFER_ACCEPTED, E.LINE_ENDED],
    "preview_no_answer": [E.PREVIEW_DIAL, E.DIALLED, E.RINGING, E.NO_ANSWER, E.LINE_ENDED],
    "delivered": [E.RINGING, E.ANSWERED_HUMAN, E.OPT_OUT_KEY, E.LINE_ENDED],
    "delivered_heard_it_all": [E.ANSWERED_HUMAN, E.MESSAGE_DONE, E.LINE_ENDED],
    "machine_got_the_message": [E.RINGING, E.ANSWERED_MACHINE, E.MESSAGE_DONE, E.LINE_ENDED],
}
FLOWS = {
    "delivered": F.MESSAGE,
    "delivered_heard_it_all": F.MESSAGE,
    "machine_got_the_message": F.MESSAGE_MACHINES,
}


def _truth(rec: Record) -> str:
    """The truthful outcome of a call whose holder died with ``rec`` written."""
    if rec.connect_at is not None:
        return "connected"
    if rec.outcome == "delivered":
        return "delivered"  # agentless: nobody was waited for, the message was the call
    if rec.answer == "human":
        return "abandoned"  # a person answered and nobody was connected
    return rec.outcome or "failed"


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_crash_between_any_two_steps_closes_with_the_truth(path: str) -> None:
    steps: list[tuple[Action, str | None]] = []
    flow = FLOWS.get(path, F.AGENT)
    state, outcome = (S.PREVIEWING if path.startswith("preview") else S.RINGING), None
    for ev in PATHS[path]:
        t = step(state, ev, flow)
        state, outcome = t.state, t.outcome or outcome
        steps += [(a, outcome) for a in t.actions]
    assert state is S.ENDED and [a for a, _ in steps].count(A.FINISH) == 1
    expected = path.split("_heard")[0].replace("released", "no_answer").removeprefix("preview_")
    assert outcome == {"machine_got_the_message": "machine"}.get(expected, expected)
    for k in range(len(steps)):  # the holder dies after k actions
        rec = Record()
        for a, o in steps[:k]:
            rec.apply(a, o)
        if rec.end_at is not None:
            continue
        recovered = state_from_record(
            outcome=rec.outcome,
            answer=rec.answer,
            answer_at=rec.answer_at,
            connect_at=rec.connect_at,
            end_at=None,
        )
        t = step(recovered, E.ORPHAN, flow)
        final = t.outcome or rec.outcome or "failed"
        assert t.state is S.ENDED and A.FINISH in t.actions
        assert final == _truth(rec), (path, k, rec)
        if final == "connected":  # the database's CHECK: connected implies a human answer with its time
            assert rec.answer == "human" and rec.answer_at is not None
        if final == "abandoned":  # an abandoned live answer always counts against the budget
            assert A.RECORD_ABANDON in rec.log or A.RECORD_ABANDON in t.actions
