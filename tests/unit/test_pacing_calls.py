"""The per-call state machine, transition by transition, and crashes between any two steps."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from outdial.pacing.calls import TABLE, Action, Event, State, state_from_record, step

A, E, S = Action, Event, State

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
    (S.ABANDONED, E.OPT_OUT_KEY): (S.ABANDONED, None, (A.RECORD_OPT_OUT, A.HANGUP)),
    (S.ABANDONED, E.MESSAGE_DONE): (S.ABANDONED, None, (A.HANGUP,)),
    (S.ABANDONED, E.LINE_ENDED): (S.ENDED, None, (A.FINISH,)),
    (S.ABANDONED, E.SHUTDOWN): (S.ENDED, None, (A.HANGUP, A.FINISH)),
    (S.ABANDONED, E.ORPHAN): (S.ENDED, None, (A.FINISH,)),
    (S.CLOSING, E.LINE_ENDED): (S.ENDED, None, (A.FINISH,)),
    (S.CLOSING, E.SHUTDOWN): (S.ENDED, None, (A.HANGUP, A.FINISH)),
    (S.CLOSING, E.ORPHAN): (S.ENDED, None, (A.FINISH,)),
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_transition(state: State, event: Event) -> None:
    t = step(state, event)
    if (state, event) in EXPECTED:
        assert (t.state, t.outcome, t.actions) == EXPECTED[(state, event)]
    else:
        # Anything else means nothing in that state: a late carrier event, a second key, anything after the end.
        assert (t.state, t.outcome, t.actions) == (state, None, ())


def test_the_table_has_no_transition_the_test_does_not_know() -> None:
    assert set(TABLE) == set(EXPECTED)


def test_ended_is_terminal_and_finish_only_enters_it() -> None:
    for (state, _event), t in TABLE.items():
        assert state is not S.ENDED
        assert (A.FINISH in t.actions) == (t.state is S.ENDED)
        assert t.actions.count(A.FINISH) <= 1


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
            if outcome == "machine":
                self.outcome = "machine"
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
}


def _truth(rec: Record) -> str:
    """The truthful outcome of a call whose holder died with ``rec`` written."""
    if rec.connect_at is not None:
        return "connected"
    if rec.answer == "human":
        return "abandoned"  # a person answered and nobody was connected
    return rec.outcome or "failed"


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_crash_between_any_two_steps_closes_with_the_truth(path: str) -> None:
    steps: list[tuple[Action, str | None]] = []
    state, outcome = S.RINGING, None
    for ev in PATHS[path]:
        t = step(state, ev)
        state, outcome = t.state, t.outcome or outcome
        steps += [(a, outcome) for a in t.actions]
    assert state is S.ENDED and [a for a, _ in steps].count(A.FINISH) == 1
    assert outcome == path.split("_heard")[0].replace("released", "no_answer")
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
        t = step(recovered, E.ORPHAN)
        final = t.outcome or rec.outcome or "failed"
        assert t.state is S.ENDED and A.FINISH in t.actions
        assert final == _truth(rec), (path, k, rec)
        if final == "connected":  # the database's CHECK: connected implies a human answer with its time
            assert rec.answer == "human" and rec.answer_at is not None
        if final == "abandoned":  # an abandoned live answer always counts against the budget
            assert A.RECORD_ABANDON in rec.log or A.RECORD_ABANDON in t.actions
