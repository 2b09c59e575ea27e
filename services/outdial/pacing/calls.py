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

Modes (:class:`Flow`). A **preview** call starts in ``PREVIEWING``: the lead is shown to one held agent and
nothing is dialled. The agent's decision (or the timeout's) is ``PREVIEW_DIAL`` or ``PREVIEW_SKIP``; a dial
passes the dial-time gate in ``GATING`` (``DIAL``), and only an allowed, placed call goes on to ``RINGING``,
from where it is an ordinary call whose agent is already held (so a person who answers reaches that agent at
once: nothing waits for an agent, nothing is abandoned). An **agentless** call (``Flow.MESSAGE``, or
``Flow.MESSAGE_MACHINES`` when machines get the message too) plays the campaign's message on an answer
(``MESSAGE``) instead of offering it to an agent; the opt-out key lands the number on the internal DNC list
at once, as on an abandonment message. Only the transitions that differ per flow are in :data:`FLOW_TABLE`.
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
    PREVIEWING = "previewing"  # preview: the lead is shown to a held agent; nothing dialled yet
    GATING = (
        "gating"  # preview: the agent (or the timeout) chose to dial; the gate and the dial are under way
    )
    MESSAGE = "message"  # agentless: the campaign's message plays, the opt-out key is listened for
    CONFIRMING = "confirming"  # the opt-out key was pressed: the confirmation plays, then we hang up


class Flow(StrEnum):
    AGENT = "agent"  # progressive, power, predictive, and preview once dialled
    MESSAGE = "message"  # agentless: a person hears the campaign's message; machines are hung up on
    MESSAGE_MACHINES = "message_machines"  # agentless, and machines get the message too


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
    PREVIEW_DIAL = "preview_dial"  # the agent pressed dial, or the preview timed out with auto-dial
    PREVIEW_SKIP = "preview_skip"  # the agent skipped the lead, or the preview timed out with auto-skip
    AGENT_GONE = "agent_gone"  # the previewing agent no longer holds the lead (logged out, console gone)
    DIALLED = "dialled"  # the gate allowed the preview call and it was placed
    BLOCKED = "blocked"  # the gate refused the preview call
    NOT_DIALLED = "not_dialled"  # lease fenced off, shutting down, or the lead/number has a call open


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
    DIAL = "dial"  # the dial-time gate, then place the call (manual); the result comes back as an event
    SKIP_LEAD = "skip_lead"  # free the lead's claim; preview.skipped (the campaign delays the lead)
    GIVE_BACK = "give_back"  # the lead back to the front of the hopper, its claim freed (never dialled)
    RELEASE_LEAD = "release_lead"  # free the claim of a lead the gate blocked (dial.blocked decides its fate)
    PLAY_CAMPAIGN_MESSAGE = "play_campaign_message"  # agentless: the campaign's message
    # The opt-out key: the short confirmation replaces the message at once (never the rest of the message)
    PLAY_CONFIRMATION = "play_confirmation"


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

#: The opt-out key during a message (abandonment or agentless): the confirmation first, so that not one more
#: word of the message plays, then the number onto the internal DNC list (retried while the DNC service is
#: slow: the confirmation covers that time); the hang-up follows the confirmation's end (CONFIRMING).
_OPT_OUT = Transition(S.CONFIRMING, None, (A.PLAY_CONFIRMATION, A.RECORD_OPT_OUT))

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
    (S.ABANDONED, E.OPT_OUT_KEY): _OPT_OUT,
    (S.ABANDONED, E.MESSAGE_DONE): Transition(S.ABANDONED, None, (A.HANGUP,)),
    (S.ABANDONED, E.LINE_ENDED): Transition(S.ENDED, None, (A.FINISH,)),
    (S.ABANDONED, E.SHUTDOWN): Transition(S.ENDED, None, (A.HANGUP, A.FINISH), "shutdown"),
    (S.ABANDONED, E.ORPHAN): Transition(S.ENDED, None, (A.FINISH,), "replica_lost"),
    # ---------------------------------------------------------------- outcome known, line going
    (S.CLOSING, E.LINE_ENDED): Transition(S.ENDED, None, (A.FINISH,)),
    (S.CLOSING, E.SHUTDOWN): Transition(S.ENDED, None, (A.HANGUP, A.FINISH)),
    (S.CLOSING, E.ORPHAN): Transition(S.ENDED, None, (A.FINISH,)),
    # ---------------------------------------------------------------- preview: shown, not dialled
    (S.PREVIEWING, E.PREVIEW_DIAL): Transition(S.GATING, None, (A.DIAL,)),
    (S.PREVIEWING, E.PREVIEW_SKIP): Transition(
        S.ENDED, "skipped", (A.SKIP_LEAD, A.RELEASE_AGENT), "skipped by the agent"
    ),
    (S.PREVIEWING, E.AGENT_GONE): Transition(S.ENDED, None, (A.RELEASE_AGENT, A.GIVE_BACK), "agent_gone"),
    (S.PREVIEWING, E.SHUTDOWN): Transition(S.ENDED, None, (A.RELEASE_AGENT, A.GIVE_BACK), "shutdown"),
    # ---------------------------------------------------------------- preview: the gate and the dial
    (S.GATING, E.DIALLED): Transition(S.RINGING, None, ()),
    (S.GATING, E.BLOCKED): Transition(S.ENDED, "blocked", (A.RELEASE_AGENT, A.RELEASE_LEAD), "blocked"),
    (S.GATING, E.NOT_DIALLED): Transition(S.ENDED, None, (A.RELEASE_AGENT, A.GIVE_BACK), "not_dialled"),
    (S.GATING, E.ORIGINATE_ERROR): _FAILED_ENDS[E.ORIGINATE_ERROR],
    # ---------------------------------------------------------------- agentless: the campaign's message
    (S.MESSAGE, E.OPT_OUT_KEY): _OPT_OUT,
    (S.MESSAGE, E.MESSAGE_DONE): Transition(S.MESSAGE, None, (A.HANGUP,)),
    (S.MESSAGE, E.LINE_ENDED): Transition(S.ENDED, None, (A.FINISH,)),
    (S.MESSAGE, E.SHUTDOWN): Transition(S.ENDED, None, (A.HANGUP, A.FINISH), "shutdown"),
    (S.MESSAGE, E.ORPHAN): Transition(S.ENDED, None, (A.FINISH,), "replica_lost"),
    # ---------------------------------------------------------------- opt-out confirmed: hang up when it ends
    # MESSAGE_DONE is the confirmation's end (a new prompt replaces the message on the network, and with it
    # the message's own end); a second key press changes nothing.
    (S.CONFIRMING, E.MESSAGE_DONE): Transition(S.CONFIRMING, None, (A.HANGUP,)),
    (S.CONFIRMING, E.LINE_ENDED): Transition(S.ENDED, None, (A.FINISH,)),
    (S.CONFIRMING, E.SHUTDOWN): Transition(S.ENDED, None, (A.HANGUP, A.FINISH), "shutdown"),
    (S.CONFIRMING, E.ORPHAN): Transition(S.ENDED, None, (A.FINISH,), "replica_lost"),
}

_PLAY = Transition(S.MESSAGE, "delivered", (A.RECORD_ANSWER, A.PLAY_CAMPAIGN_MESSAGE))

#: Transitions that differ from :data:`TABLE` in a flow (agentless: an answer hears the message).
FLOW_TABLE: dict[Flow, dict[tuple[State, Event], Transition]] = {
    Flow.AGENT: {},
    Flow.MESSAGE: {(S.RINGING, E.ANSWERED_HUMAN): _PLAY},
    Flow.MESSAGE_MACHINES: {
        (S.RINGING, E.ANSWERED_HUMAN): _PLAY,
        (S.RINGING, E.ANSWERED_MACHINE): Transition(
            S.MESSAGE, "machine", (A.RECORD_ANSWER, A.PLAY_CAMPAIGN_MESSAGE)
        ),
    },
}


def step(state: State, event: Event, flow: Flow = Flow.AGENT) -> Transition:
    """The transition for ``event`` in ``state`` (in ``flow``); an event that means nothing there changes
    nothing (a late carrier event, a second key press, a preview decision after the dial, anything after
    the end)."""
    t = FLOW_TABLE[flow].get((state, event)) or TABLE.get((state, event))
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
    if outcome == "delivered":
        return S.MESSAGE
    if outcome in ("machine", "no_answer", "busy", "failed", "fax"):
        return S.CLOSING
    if answer == "human" and answer_at is not None:
        return S.OFFERED
    return S.RINGING


__all__ = [
    "FLOW_TABLE",
    "TABLE",
    "Action",
    "Event",
    "Flow",
    "State",
    "Transition",
    "state_from_record",
    "step",
]
