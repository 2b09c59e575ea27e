"""One dialled call as a state machine: a pure table from (state, event) to (state, outcome, actions).

The dialer (``dialer.py``) feeds each call's events through :func:`step` and carries out the actions it
returns, in order; nothing else decides what happens to a call. Events come from the carrier (through the
telephony adapter), from the offer to an agent, from the agent (hang-up), and from the dialer itself
(capacity release, shutdown, a new lease holder closing a call whose holder died: ``ORPHAN``).

Crashes between steps: what has been done is in PostgreSQL (``dial_attempts``: the answer and its time at
``RECORD_ANSWER``, the agent and connect time at ``RECORD_CONNECT``, the outcome as soon as it is known).
:func:`state_from_record` reads a call's state back from that row, and ``ORPHAN`` from that state gives
the truthful outcome: a call a person answered and nobody connected is abandoned, a connected call stays
connected with its answer, agent and times.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    RINGING = "ringing"  # dialled, not answered
    OFFERED = "offered"  # a person answered; the call is being offered to an agent (≤ 2 s)
    CONNECTED = "connected"  # bridged to an agent
    ABANDONED = "abandoned"  # no agent in time: the message plays, the opt-out key is listened for
    CLOSING = (
        "closing"  # the outcome is known (no answer, busy, failed, machine); waiting for the line to end
    )
    ENDED = "ended"  # written once, terminal


class Event(StrEnum):
    RINGING = "ringing"
    ANSWERED_HUMAN = "answered_human"
    ANSWERED_MACHINE = "answered_machine"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    FAILED = "failed"
    OPT_OUT_KEY = "opt_out_key"  # the opt-out key pressed during the message
    MESSAGE_DONE = "message_done"
    LINE_ENDED = "line_ended"  # the carrier says the line is gone (whoever hung up)
    ORIGINATE_ERROR = "originate_error"  # the adapter refused to place the call
    OFFER_ACCEPTED = "offer_accepted"  # an agent was connected within the 2 s
    OFFER_REFUSED = "offer_refused"  # no agent, the agent service failed, or the agent came too late
    AGENT_HANGUP = "agent_hangup"  # the agent ended the call from their console or phone
    RELEASE = "release"  # capacity loss: the dialer lets go of a ringing call it cannot staff
    SHUTDOWN = "shutdown"  # this replica is stopping and its drain time ran out
    ORPHAN = "orphan"  # the call's holder died; a new holder closes it from its recorded state


class Action(StrEnum):
    EMIT_RINGING = "emit_ringing"  # call.ringing
    RECORD_ANSWER = "record_answer"  # answer + answer time to PostgreSQL, call.answered
    OFFER = "offer"  # OfferCall (the held agent first); its result comes back as OFFER_ACCEPTED/REFUSED
    BRIDGE = "bridge"  # connect the media to the agent
    RECORD_CONNECT = "record_connect"  # agent + connect time (PostgreSQL), live answer into the budget
    RELEASE_AGENT = "release_agent"  # give back the agent held for this call, if any
    PLAY_MESSAGE = "play_message"  # the abandonment message
    RECORD_ABANDON = "record_abandon"  # abandoned live answer into the budget (and the UK 72 h mark)
    RECORD_OPT_OUT = "record_opt_out"  # the number onto the internal DNC list, at once
    EMIT_OUTCOME = "emit_outcome"  # the outcome to PostgreSQL; call.no_answer / call.busy / call.failed
    HANGUP = "hangup"  # hang up an answered line from our side
    CANCEL = "cancel"  # CANCEL a ringing line (only after the legal ring minimum: the planner's rule)
    END_AGENT_CALL = "end_agent_call"  # the agent moves to wrap-up (EndCall)
    FINISH = "finish"  # exactly once: the end in PostgreSQL (first writer wins), call.ended, lead claim freed


@dataclass(frozen=True, slots=True)
class Transition:
    state: State
    outcome: str | None  # the outcome this transition establishes (None: unchanged)
    actions: tuple[Action, ...]
    reason: str = ""


A = Action
S = State
E = Event

_FAILED_ENDS = {
    E.LINE_ENDED: Transition(S.ENDED, "failed", (A.RELEASE_AGENT, A.FINISH), "ended before an outcome"),
    E.ORIGINATE_ERROR: Transition(S.ENDED, "failed", (A.RELEASE_AGENT, A.FINISH), "originate_error"),
    E.SHUTDOWN: Transition(S.ENDED, "failed", (A.RELEASE_AGENT, A.CANCEL, A.FINISH), "shutdown"),
    E.ORPHAN: Transition(S.ENDED, "failed", (A.RELEASE_AGENT, A.FINISH), "replica_lost"),
}

TABLE: dict[tuple[State, Event], Transition] = {
    # ---------------------------------------------------------------- ringing
    (S.RINGING, E.RINGING): Transition(S.RINGING, None, (A.EMIT_RINGING,)),
    (S.RINGING, E.ANSWERED_HUMAN): Transition(S.OFFERED, None, (A.RECORD_ANSWER, A.OFFER)),
    (S.RINGING, E.ANSWERED_MACHINE): Transition(
        S.CLOSING, "machine", (A.RECORD_ANSWER, A.RELEASE_AGENT, A.HANGUP)
    ),
    (S.RINGING, E.NO_ANSWER): Transition(S.CLOSING, "no_answer", (A.RELEASE_AGENT, A.EMIT_OUTCOME)),
    (S.RINGING, E.BUSY): Transition(S.CLOSING, "busy", (A.RELEASE_AGENT, A.EMIT_OUTCOME)),
    (S.RINGING, E.FAILED): Transition(S.CLOSING, "failed", (A.RELEASE_AGENT, A.EMIT_OUTCOME)),
    (S.RINGING, E.RELEASE): Transition(
        S.CLOSING, "no_answer", (A.RELEASE_AGENT, A.CANCEL, A.EMIT_OUTCOME), "released: no agent to staff it"
    ),
    **{(S.RINGING, e): t for e, t in _FAILED_ENDS.items()},
    # ---------------------------------------------------------------- a person answered: the offer
    (S.OFFERED, E.OFFER_ACCEPTED): Transition(S.CONNECTED, "connected", (A.RECORD_CONNECT, A.BRIDGE)),
    (S.OFFERED, E.OFFER_REFUSED): Transition(
        S.ABANDONED, "abandoned", (A.RELEASE_AGENT, A.RECORD_ABANDON, A.PLAY_MESSAGE)
    ),
    (S.OFFERED, E.LINE_ENDED): Transition(
        S.ENDED, "abandoned", (A.RELEASE_AGENT, A.RECORD_ABANDON, A.FINISH), "hung up before an agent"
    ),
    (S.OFFERED, E.SHUTDOWN): Transition(
        S.ENDED, "abandoned", (A.RELEASE_AGENT, A.RECORD_ABANDON, A.HANGUP, A.FINISH), "shutdown"
    ),
    (S.OFFERED, E.ORPHAN): Transition(
        S.ENDED, "abandoned", (A.RELEASE_AGENT, A.RECORD_ABANDON, A.FINISH), "replica_lost"
    ),
    # ---------------------------------------------------------------- connected to an agent
    (S.CONNECTED, E.AGENT_HANGUP): Transition(S.CONNECTED, None, (A.HANGUP,)),
    (S.CONNECTED, E.LINE_ENDED): Transition(S.ENDED, None, (A.END_AGENT_CALL, A.FINISH)),
    (S.CONNECTED, E.SHUTDOWN): Transition(S.ENDED, None, (A.HANGUP, A.END_AGENT_CALL, A.FINISH), "shutdown"),
    (S.CONNECTED, E.ORPHAN): Transition(S.ENDED, None, (A.END_AGENT_CALL, A.FINISH), "replica_lost"),
    # ---------------------------------------------------------------- abandoned: the message
    (S.ABANDONED, E.OPT_OUT_KEY): Transition(S.ABANDONED, None, (A.RECORD_OPT_OUT, A.HANGUP)),
    (S.ABANDONED, E.MESSAGE_DONE): Transition(S.ABANDONED, None, (A.HANGUP,)),
    (S.ABANDONED, E.LINE_ENDED): Transition(S.ENDED, None, (A.FINISH,)),
    (S.ABANDONED, E.SHUTDOWN): Transition(S.ENDED, None, (A.HANGUP, A.FINISH), "shutdown"),
    (S.ABANDONED, E.ORPHAN): Transition(S.ENDED, None, (A.FINISH,), "replica_lost"),
    # ---------------------------------------------------------------- outcome known, line going
    (S.CLOSING, E.LINE_ENDED): Transition(S.ENDED, None, (A.FINISH,)),
    (S.CLOSING, E.SHUTDOWN): Transition(S.ENDED, None, (A.HANGUP, A.FINISH)),
    (S.CLOSING, E.ORPHAN): Transition(S.ENDED, None, (A.FINISH,)),
}


def step(state: State, event: Event) -> Transition:
    """The transition for ``event`` in ``state``; an event that means nothing there changes nothing
    (a late carrier event, a second key press, anything after the end)."""
    t = TABLE.get((state, event))
    if t is None:
        return Transition(state, None, ())
    return t


def state_from_record(
    *, outcome: str | None, answer: str | None, answer_at: object, connect_at: object, end_at: object
) -> State:
    """A call's state as far as PostgreSQL saw it (see the module's note on crashes)."""
    if end_at is not None:
        return S.ENDED
    if connect_at is not None:
        return S.CONNECTED
    if outcome == "abandoned":
        return S.ABANDONED
    if outcome in ("machine", "no_answer", "busy", "failed", "fax"):
        return S.CLOSING
    if answer == "human" and answer_at is not None:
        return S.OFFERED
    return S.RINGING


__all__ = ["TABLE", "Action", "Event", "State", "Transition", "state_from_record", "step"]
