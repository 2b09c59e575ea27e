"""The telephony adapter interface the dialer talks to.

An adapter places and controls calls on some network (the simulated carrier in :mod:`.sim`, later a SIP
adapter) and reports what happens to them on one asynchronous event feed. Commands are fire-and-forget:
they return once the network accepted them; their effects arrive as :class:`CallEvent` values.

Lifecycle of one call, as events: ``ringing`` (optional) → ``answered`` (``answer`` = human|machine) or a
final ``no_answer`` / ``busy`` / ``failed``; after an answer, ``dtmf`` (key presses, e.g. during the
abandonment message), ``message_done`` when a played message finished, and exactly one ``ended`` when the
line is gone (whoever hung up). A call that never answered also ends with ``ended`` right after its final
event, so a consumer can always wait for ``ended``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum

from outdial.rules.law import MIN_RING_S


class EventKind(StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    FAILED = "failed"
    DTMF = "dtmf"
    MESSAGE_DONE = "message_done"
    ENDED = "ended"


class Answer(StrEnum):
    HUMAN = "human"
    MACHINE = "machine"


@dataclass(frozen=True)
class CallEvent:
    call_id: str
    kind: EventKind
    # Epoch milliseconds, from the adapter's clock.
    at_ms: int
    answer: Answer | None = None
    # For failed: the network's reason; for ended: who hung up ("remote", "local", "timeout").
    reason: str = ""
    digit: str = ""
    # ended, on a recorded call: (path, length ms, SHA-256 of the file).
    recording: tuple[str, int, str] | None = None


@dataclass(frozen=True)
class OriginateOptions:
    """What a network may do with a call beyond placing it (the simulated carrier ignores it)."""

    campaign_id: str = ""
    # Record both directions; the notice plays to the called party first. ``record`` is already False for a
    # lead in an all-party-consent state when there is no notice (:func:`outdial.rules.law.may_record`).
    record: bool = False
    recording_notice: str = ""
    # A recording played instead of the spoken abandonment message.
    abandon_recording: str = ""


#: Never ring for less than this: the legal minimum, :data:`outdial.rules.law.MIN_RING_S`.
MIN_RING_TIMEOUT_S = MIN_RING_S


class TelephonyAdapter(abc.ABC):
    """What the dialer needs from a telephony network. Implementations must be safe to call from one event
    loop concurrently for many calls; unknown call ids are ignored (the call may have just ended)."""

    @abc.abstractmethod
    async def originate(
        self,
        call_id: str,
        number: str,
        caller_id: str,
        ring_timeout_s: float,
        options: OriginateOptions | None = None,
    ) -> None:
        """Start dialing ``number`` presenting ``caller_id``; give up (``no_answer``) after the ring
        timeout, which the adapter raises to :data:`MIN_RING_TIMEOUT_S` if lower."""

    @abc.abstractmethod
    async def cancel(self, call_id: str) -> None:
        """Abandon a call that has not been answered yet (it ends with ``ended`` reason ``local``)."""

    @abc.abstractmethod
    async def play_message(self, call_id: str, text: str, audio_file: str = "") -> None:
        """Play a message on an answered call (``text`` spoken, or the recording ``audio_file`` when the
        network can play one); ``dtmf`` events carry key presses during it and ``message_done`` follows
        when it finished."""

    @abc.abstractmethod
    async def bridge(self, call_id: str, agent_id: str) -> None:
        """Connect an answered call to an agent's line."""

    @abc.abstractmethod
    async def hangup(self, call_id: str) -> None:
        """Hang up an answered call from our side."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[CallEvent]:
        """The event feed for every call of this adapter (one consumer)."""

    def ready(self) -> bool:
        """False while the network cannot take new calls (the dialer launches none); default: always."""
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release network resources; calls still up are hung up."""
