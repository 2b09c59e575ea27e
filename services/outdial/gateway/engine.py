"""The gateway's use cases, without gRPC: calls to the trunk, agents' nailed-up legs, bridging, prompts, DTMF,
the carrier's limits and the trunk's health. The SIP work happens in :mod:`.sip` (sippy's thread), the media
work in rtpengine through :class:`Media`; this module turns their events into one feed per owner (a dialer
replica), in the vocabulary of :mod:`outdial.telephony.base`.

Life of a call placed for a dialer (key ``c:<call_id>`` in the SIP thread):
``Originate`` → (CPS pacer, trunk room, media check) → rtpengine offer → INVITE (From and P-Asserted-Identity
carry the caller ID; the operator's Identity header passes through) → ``ringing`` → either a final failure
(mapped by :func:`outcome_of`) or 200 OK → rtpengine answer → ``answered``. A call still ringing at its ring
time is CANCELled by the gateway (never earlier: the timer starts when the INVITE leaves and is at least the
legal minimum) and reported ``no_answer``. Every call ends with exactly one ``ended``, after which its
rtpengine ports are released.

Agents' legs (key ``a:<agent_id>``): at login the gateway calls the agent's phone (its registered contact, or
a URI the agent gave) and keeps that call up for the whole session. Bridging a customer to an agent joins the
two in rtpengine with no SIP signalling to either phone (no ringing: the customer hears the agent at once).
``*`` on the agent's phone (RFC 4733 or SIP INFO) hangs up the customer and keeps the agent's leg. If the
leg drops, the agent is paused (reason ``phone_disconnected``) through the agent service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from outdial.core.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from outdial.core.metrics import (
    BRIDGE_SECONDS,
    GATEWAY_CALLS,
    SIP_REJECTED,
    SIP_REQUESTS,
)
from outdial.rules import law

log = logging.getLogger("outdial.gateway")


# Time added to the legal minimum ring so that no observer measures less than the minimum.
RING_GUARD_S = 0.25


class Kind(StrEnum):
    RINGING = "ringing"
    ANSWERED = "answered"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    FAILED = "failed"
    INVALID_NUMBER = "invalid_number"
    DTMF = "dtmf"
    MESSAGE_DONE = "message_done"
    ENDED = "ended"
    AGENT_LEG_UP = "agent_leg_up"
    AGENT_LEG_DOWN = "agent_leg_down"


@dataclass(frozen=True)
class GatewayEvent:
    call_id: str
    kind: Kind
    at_ms: int
    answer: str = ""
    reason: str = ""
    digit: str = ""
    sip_status: int = 0
    agent_id: str = ""
    recording: tuple[str, int, str] | None = None  # path, duration ms, sha256


def outcome_of(status: int) -> Kind:
    """The outcome of a SIP final failure response (issue 11's table; RFC 3261 §21)."""
    if status in (486, 600):
        return Kind.BUSY
    if status in (404, 410, 484, 604):
        return Kind.INVALID_NUMBER
    if status in (480, 408, 487):
        return Kind.NO_ANSWER
    return Kind.FAILED


class MediaPort(Protocol):
    """What the engine needs from rtpengine (``rtpengine.Media``)."""

    async def ping(self) -> bool: ...
    async def customer_offer(self, call_id: str) -> str: ...
    async def customer_answered(self, call_id: str, remote_sdp: str) -> None: ...
    async def agent_offer(self, leg_id: str) -> str: ...
    async def agent_answered(self, leg_id: str, remote_sdp: str) -> None: ...
    async def bridge(self, call_id: str, leg_id: str) -> None: ...
    async def unbridge(self, call_id: str, leg_id: str) -> None: ...
    async def play(self, call_id: str, file: str) -> int: ...
    async def start_recording(self, call_id: str) -> object: ...
    async def stop_recording(self, call_id: str) -> object: ...
    async def release_customer(self, call_id: str) -> None: ...
    async def release_agent(self, leg_id: str) -> None: ...


class PromptPort(Protocol):
    async def render(self, text: str) -> tuple[Path, int]: ...
    async def recording(self, path: Path) -> tuple[Path, int]: ...


class SipPort(Protocol):
    def call(self, method: str, *args: object, **kwargs: object) -> None: ...


@dataclass
class TrunkConfig:
    host: str
    port: int | None
    next_hop: tuple[str, int]
    from_domain: str
    auth: tuple[str, str] | None
    proxy: tuple[str, int] | None
    max_calls: int
    cps: float


def parse_sip_uri(uri: str) -> tuple[str, str, int | None]:
    """``sip:user@host:port;params`` → (user, host, port). Raises ValueError naming the URI."""
    m = re.fullmatch(
        r"sips?:(?:([^@;:]+)(?::[^@]*)?@)?(\[[^\]]+\]|[^:;>]+)(?::(\d+))?(?:;.*)?", uri.strip("<> ")
    )
    if not m:
        raise ValueError(f"not a SIP URI: {uri!r}")
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad port in SIP URI {uri!r}")
    return m.group(1) or "", m.group(2), port


class Pacer:
    """At most ``cps`` INVITEs per second, evenly spaced (carriers police a rate, not a burst). Spacing is
    measured from each INVITE's actual release, with a 5 % margin for the hop to the SIP thread and the
    wire, so that no one-second window the carrier looks at holds more than ``cps``."""

    MARGIN = 1.05

    def __init__(self, cps: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = self.MARGIN / cps
        self.clock = clock
        self.last = -1e9
        self._lock = asyncio.Lock()

    async def slot(self) -> None:
        async with self._lock:
            wait = self.last + self.interval - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            self.last = self.clock()


class TrunkHealth:
    """Consecutive network-side failures (5xx, 408 without a ring, no response) open a back-off window in which
    no call is placed; the first call after it is a probe. Reported as ``up`` / ``degraded``."""

    def __init__(self, threshold: int = 5, base_s: float = 1.0, max_s: float = 30.0) -> None:
        self.threshold, self.base_s, self.max_s = threshold, base_s, max_s
        self.failures = 0
        self.until = 0.0

    def ok(self) -> None:
        self.failures, self.until = 0, 0.0

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            back = min(self.max_s, self.base_s * 2 ** (self.failures - self.threshold))
            self.until = time.monotonic() + back

    @property
    def state(self) -> str:
        return "degraded" if self.failures >= self.threshold else "up"

    def allows(self) -> bool:
        return time.monotonic() >= self.until


@dataclass
class Call:
    call_id: str
    owner: str
    number: str
    campaign_id: str
    ring_s: float
    record: bool
    notice: str = ""
    state: str = "new"  # new → ringing → answered → ended
    ring_timer: asyncio.TimerHandle | None = None
    message_timer: asyncio.TimerHandle | None = None
    cancelled: bool = False
    leg_agent: str = ""
    outcome_sent: bool = False
    media_open: bool = False
    # Media commands of one call run one at a time, and none after its release (an answer that reached
    # rtpengine after the delete would bring the session back, and leak its ports).
    media_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    released: bool = False


@dataclass
class AgentLeg:
    agent_id: str
    leg_id: str
    contact: str
    state: str = "calling"  # calling → up → down
    up: asyncio.Future[str] | None = None
    call_id: str = ""  # the customer call bridged to it
    closing: bool = False


@dataclass
class Registration:
    contact: str
    expires_at: float
    source: str


class Gateway:
    def __init__(
        self,
        trunk: TrunkConfig,
        media: MediaPort,
        prompts: PromptPort,
        *,
        pause_agent: Callable[[str, str], Awaitable[None]] | None = None,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        agent_answer_s: float = 30.0,
        summarise: Callable[[Path], tuple[str, int, str]] | None = None,
        journal_dir: Path | None = None,
    ) -> None:
        self.journal_dir = journal_dir
        self.summarise = summarise
        self.trunk = trunk
        self.media = media
        self.prompts = prompts
        self.sip: SipPort | None = None
        self.pause_agent = pause_agent
        self.now_ms = now_ms
        self.agent_answer_s = agent_answer_s
        self.calls: dict[str, Call] = {}
        self.legs: dict[str, AgentLeg] = {}
        self.leg_by_id: dict[str, AgentLeg] = {}
        self.registrations: dict[str, Registration] = {}
        self.queues: dict[str, asyncio.Queue[GatewayEvent]] = {}
        self.pacer = Pacer(trunk.cps)
        self.health = TrunkHealth()
        self.media_up = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._leg_seq = 0

    # --- the feed ------------------------------------------------------------------------------------------

    def queue(self, owner: str) -> asyncio.Queue[GatewayEvent]:
        q = self.queues.get(owner)
        if q is None:
            q = self.queues[owner] = asyncio.Queue()
        return q

    def _emit(self, call: Call, kind: Kind, at_ms: int | None = None, **kw: object) -> None:
        ev = GatewayEvent(call.call_id, kind, at_ms or self.now_ms(), **kw)  # type: ignore[arg-type]
        self.queue(call.owner).put_nowait(ev)

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("gateway: %s failed", what)

        t = asyncio.get_running_loop().create_task(run())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def accepting(self) -> bool:
        """Whether a call would be placed now (media up, trunk not backing off, a trunk call free)."""
        return (
            self.sip is not None
            and self.media_up
            and self.health.allows()
            and self.in_flight() < self.trunk.max_calls
        )

    def in_flight(self) -> int:
        return sum(1 for c in self.calls.values() if c.state != "ended")

    def calls_of(self, owner: str) -> list[str]:
        return [c.call_id for c in self.calls.values() if c.owner == owner and c.state != "ended"]

    # --- commands --------------------------------------------------------------------------------------------

    async def originate(
        self,
        call_id: str,
        number: str,
        caller_id: str,
        ring_timeout_s: float,
        owner: str,
        campaign_id: str = "",
        identity: str = "",
        record: bool = False,
        recording_notice: str = "",
    ) -> None:
        if not call_id or not owner:
            raise InvalidArgument(error_id="gateway.bad_request", message="call_id and owner are required")
        if call_id in self.calls:
            return  # a retried request: the call is already placed
        if not re.fullmatch(r"\+[1-9]\d{6,14}", number):
            raise InvalidArgument(
                error_id="gateway.bad_number",
                message=f"number must be E.164 (+ and 7-15 digits), got {number!r}",
            )
        if not re.fullmatch(r"\+?[0-9]{3,15}", caller_id):
            raise InvalidArgument(
                error_id="gateway.bad_caller_id",
                message=f"caller_id must be digits (E.164), got {caller_id!r}",
            )
        if record and not recording_notice.strip():
            raise InvalidArgument(
                error_id="gateway.recording_without_notice",
                message="a recorded call needs its recording notice (played first to the called party)",
                field="recording_notice",
            )
        if "\r" in identity or "\n" in identity:
            raise InvalidArgument(error_id="gateway.bad_identity", message="identity header must be one line")
        if self.sip is None:
            raise Unavailable(error_id="gateway.unavailable", message="SIP stack not started")
        if not self.media_up:
            raise Unavailable(
                error_id="gateway.media_unavailable", message="rtpengine is not answering: no call is placed"
            )
        if not self.health.allows():
            raise Unavailable(error_id="gateway.trunk_degraded", message="the trunk is failing: backing off")
        if self.in_flight() >= self.trunk.max_calls:
            raise ResourceExhausted(
                error_id="gateway.trunk_full", message=f"the trunk's {self.trunk.max_calls} calls are in use"
            )
        # The legal minimum is measured at the far end, from the INVITE it receives to the CANCEL: the
        # timer starts before the SIP thread sends the INVITE, so the minimum carries a guard.
        ring = max(float(ring_timeout_s or 0), law.MIN_RING_S + RING_GUARD_S)
        call = Call(call_id, owner, number, campaign_id, ring, record, recording_notice.strip())
        self.calls[call_id] = call
        try:
            sdp = await self.media.customer_offer(call_id)
            call.media_open = True
            await self.pacer.slot()
        except (
            BaseException
        ):  # refused, failed or cancelled (the caller gave up): the offer may be in rtpengine
            self.calls.pop(call_id, None)
            call.state, call.media_open = "ended", True
            self._spawn(self._release_media(call), "release media of a call not placed")
            raise
        if call.state == "ended":  # cancelled while waiting for its slot
            return
        t = self.trunk
        cid = caller_id if caller_id.startswith("+") else f"+{caller_id}"
        from_host = t.from_domain or t.host
        headers = [f"P-Asserted-Identity: <sip:{cid}@{from_host}>"]
        if identity:
            headers.append(f"Identity: {identity}")
        call.state = "ringing"
        self.sip.call(
            "place",
            f"c:{call_id}",
            user=number,
            host=t.host,
            port=t.port,
            next_hop=t.next_hop,
            from_user=cid,
            from_host=from_host,
            sdp=sdp,
            headers=headers,
            auth=t.auth,
            proxy=t.proxy,
        )
        loop = asyncio.get_running_loop()
        call.ring_timer = loop.call_later(ring, self._ring_timeout, call_id)

    def _ring_timeout(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.state != "ringing":
            return
        call.cancelled = True
        assert self.sip is not None
        self.sip.call("disconnect", f"c:{call_id}")
        self._final(call, Kind.NO_ANSWER, reason="ring_timeout")
        self._end(call, "local")

    async def cancel(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.state == "ended":
            return
        if call.state == "answered":
            await self.hangup(call_id)
            return
        call.cancelled = True
        if self.sip is not None:
            self.sip.call("disconnect", f"c:{call_id}")
        self._end(call, "local")

    async def hangup(self, call_id: str, by: str = "local") -> None:
        call = self.calls.get(call_id)
        if call is None or call.state == "ended":
            return
        if self.sip is not None:
            self.sip.call("disconnect", f"c:{call_id}")
        self._end(call, by)

    async def play(self, call_id: str, text: str = "", audio_file: str = "") -> int:
        call = self.calls.get(call_id)
        if call is None or call.state != "answered":
            raise NotFound(error_id="gateway.no_call", message=f"call {call_id} is not answered")
        path: Path | None = None
        duration = 0
        if audio_file:
            try:
                path, duration = await self.prompts.recording(Path(audio_file))
            except Exception as exc:  # never silence where the law wants a message: speak the text
                if not text.strip():
                    raise
                log.error("call %s: recording %s unusable (%s): speaking the text", call_id, audio_file, exc)
        if path is None and text.strip():
            path, duration = await self.prompts.render(text)
        if path is None:
            raise InvalidArgument(error_id="gateway.no_prompt", message="text or audio_file is required")
        played = await self.media.play(call_id, str(path))
        duration = played or duration
        if call.message_timer is not None:
            call.message_timer.cancel()
        call.message_timer = asyncio.get_running_loop().call_later(
            duration / 1000, self._message_done, call_id
        )
        return duration

    def _message_done(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.state == "answered":
            self._emit(call, Kind.MESSAGE_DONE)

    async def bridge(self, call_id: str, agent_id: str) -> bool:
        call = self.calls.get(call_id)
        if call is None or call.state != "answered":
            raise NotFound(error_id="gateway.no_call", message=f"call {call_id} is not answered")
        leg = self.legs.get(agent_id)
        if leg is None or leg.state != "up":
            return False
        if leg.call_id and leg.call_id != call_id:
            old = self.calls.get(leg.call_id)
            if old is not None and old.state == "answered":
                raise FailedPrecondition(
                    error_id="gateway.agent_busy", message=f"agent {agent_id} is on call {leg.call_id}"
                )
        t0 = time.perf_counter()
        await self.media.bridge(call_id, leg.leg_id)
        BRIDGE_SECONDS.observe(time.perf_counter() - t0)
        leg.call_id, call.leg_agent = call_id, agent_id
        return True

    # --- agents' legs --------------------------------------------------------------------------------------

    def register(self, user: str, contact: str, expires: int, source: str) -> None:
        if expires <= 0 or not contact:
            self.registrations.pop(user, None)
            return
        self.registrations[user] = Registration(contact, time.monotonic() + expires, source)

    def registered_contact(self, agent_id: str) -> str | None:
        r = self.registrations.get(agent_id)
        if r is None or r.expires_at < time.monotonic():
            return None
        return r.contact

    async def open_agent_leg(self, agent_id: str, contact_uri: str = "") -> str:
        if self.sip is None:
            raise Unavailable(error_id="gateway.unavailable", message="SIP stack not started")
        if not self.media_up:
            raise Unavailable(error_id="gateway.media_unavailable", message="rtpengine is not answering")
        old = self.legs.get(agent_id)
        if old is not None and old.state == "up" and (not contact_uri or contact_uri == old.contact):
            return old.leg_id
        if old is not None:
            await self.close_agent_leg(agent_id)
        contact = contact_uri or self.registered_contact(agent_id)
        if not contact:
            raise FailedPrecondition(
                error_id="gateway.phone_not_registered",
                message=f"agent {agent_id} has no registered phone and gave no contact URI",
            )
        try:
            user, host, port = parse_sip_uri(contact)
        except ValueError as exc:
            raise InvalidArgument(error_id="gateway.bad_contact", message=str(exc)) from exc
        self._leg_seq += 1
        leg = AgentLeg(agent_id, f"{agent_id}.{self._leg_seq}", contact)
        leg.up = asyncio.get_running_loop().create_future()
        self.legs[agent_id] = leg
        self.leg_by_id[leg.leg_id] = leg
        sdp = await self.media.agent_offer(leg.leg_id)
        self.sip.call(
            "place",
            f"a:{leg.leg_id}",
            user=user or agent_id,
            host=host,
            port=port,
            next_hop=(host, port or 5060),
            from_user="outdial",
            from_host=self.trunk.from_domain or host,
            sdp=sdp,
            headers=[],
        )
        try:
            result = await asyncio.wait_for(asyncio.shield(leg.up), self.agent_answer_s)
        except TimeoutError:
            result = "no answer"
        if result != "up":
            await self.close_agent_leg(agent_id)
            raise FailedPrecondition(
                error_id="gateway.phone_unreachable",
                message=f"agent {agent_id}'s phone did not answer: {result}",
            )
        return leg.leg_id

    async def close_agent_leg(self, agent_id: str) -> None:
        leg = self.legs.pop(agent_id, None)
        if leg is None:
            return
        leg.closing = True
        self.leg_by_id.pop(leg.leg_id, None)
        self._journal_drop(f"a:{leg.leg_id}")
        if self.sip is not None:
            self.sip.call("disconnect", f"a:{leg.leg_id}")
        leg.state = "down"
        if leg.up is not None and not leg.up.done():
            leg.up.set_result("closed")
        with contextlib.suppress(Exception):
            await self.media.release_agent(leg.leg_id)

    def _leg_down(self, leg: AgentLeg, why: str) -> None:
        was_up = leg.state == "up"
        leg.state = "down"
        if leg.up is not None and not leg.up.done():
            leg.up.set_result(why)
        if self.legs.get(leg.agent_id) is leg:
            del self.legs[leg.agent_id]
        self.leg_by_id.pop(leg.leg_id, None)
        self._journal_drop(f"a:{leg.leg_id}")
        self._spawn(self.media.release_agent(leg.leg_id), "release agent leg")
        if leg.call_id:
            call = self.calls.get(leg.call_id)
            if call is not None and call.state == "answered":
                self._spawn(self.hangup(call.call_id, by="agent_phone"), "hang up after agent leg drop")
        if was_up and not leg.closing and self.pause_agent is not None:
            log.warning("agent %s: phone leg dropped (%s): pausing the agent", leg.agent_id, why)
            self._spawn(self.pause_agent(leg.agent_id, "phone_disconnected"), "pause agent")

    # --- SIP events (from the SIP thread, on the loop) --------------------------------------------------------

    def on_sip(self, kind: str, *args: object) -> None:
        if kind == "request":
            method = str(args[0])
            SIP_REQUESTS.labels(method if method.isalpha() and len(method) < 12 else "other").inc()
            if method == "INVITE":  # the gateway takes no calls: a stranger's INVITE gets 403
                SIP_REJECTED.labels("inbound_invite").inc()
            return
        if kind == "malformed":
            SIP_REJECTED.labels("malformed").inc()
            return
        if kind == "auth_failed":
            SIP_REJECTED.labels("digest").inc()
            return
        if kind == "dialog":
            key, raw, host, port, transport = args
            self._journal_write(str(key), {"bye": raw, "host": host, "port": port, "transport": transport})
            return
        if kind == "register":
            user, contact, expires, source = args
            self.register(str(user), str(contact), int(expires), str(source))  # type: ignore[call-overload]
            return
        key = str(args[0])
        if key.startswith("a:"):
            self._on_leg(key[2:], kind, args[1:])
        elif key.startswith("c:"):
            self._on_call(key[2:], kind, args[1:])

    def _on_leg(self, leg_id: str, kind: str, args: tuple[object, ...]) -> None:
        leg = self.leg_by_id.get(leg_id)
        if leg is None:
            if kind == "connect" and self.sip is not None:  # a phone answered a leg we already gave up
                self.sip.call("disconnect", f"a:{leg_id}")
            return
        if kind == "connect":
            sdp = args[1]
            if isinstance(sdp, str):
                self._spawn(self._leg_answered(leg, sdp), "agent leg answer")
        elif kind == "fail":
            self._leg_down(leg, f"{args[0]} {args[1]}")
        elif kind == "disc":
            self._leg_down(leg, "hung up")
        elif kind == "info":
            digit = _info_digit(str(args[0]))
            if digit:
                self.on_agent_digit(leg, digit)
        elif kind == "update" and self.sip is not None:
            self.sip.call("answer_update", f"a:{leg_id}", None)

    async def _leg_answered(self, leg: AgentLeg, sdp: str) -> None:
        try:
            await self.media.agent_answered(leg.leg_id, sdp)
        except Exception as exc:
            log.error("agent %s: media for the phone leg failed: %s", leg.agent_id, exc)
            if self.sip is not None:
                self.sip.call("disconnect", f"a:{leg.leg_id}")
            self._leg_down(leg, "media failed")
            return
        leg.state = "up"
        if leg.up is not None and not leg.up.done():
            leg.up.set_result("up")

    def on_agent_digit(self, leg: AgentLeg, digit: str) -> None:
        if digit == "*" and leg.call_id:
            call = self.calls.get(leg.call_id)
            if call is not None and call.state == "answered":
                self._spawn(self.hangup(call.call_id, by="agent"), "agent * hang-up")

    def _on_call(self, call_id: str, kind: str, args: tuple[object, ...]) -> None:
        call = self.calls.get(call_id)
        if call is None:
            if kind == "connect" and self.sip is not None:
                self.sip.call("disconnect", f"c:{call_id}")
            return
        if kind == "ring":
            self._on_ring(call, args[0], args[1])
        elif kind == "connect":
            sdp = args[1]
            if call.state != "ringing" or call.cancelled:
                if self.sip is not None:
                    self.sip.call("disconnect", f"c:{call_id}")
                return
            self._spawn(self._answered(call, sdp if isinstance(sdp, str) else None), "answer")
        elif kind == "fail":
            self._on_fail(call, int(str(args[0])), str(args[1]))
        elif kind == "disc":
            self._end(call, "remote")
        elif kind == "info":
            digit = _info_digit(str(args[0]))
            if digit and call.state == "answered":
                self._emit(call, Kind.DTMF, digit=digit)
        elif kind == "update" and self.sip is not None:
            self.sip.call("answer_update", f"c:{call_id}", None)

    def _on_ring(self, call: Call, code: object, sdp: object) -> None:
        if call.state == "ringing" and isinstance(code, int) and code >= 180:
            self._emit(call, Kind.RINGING, sip_status=code)
            self.health.ok()
            if isinstance(sdp, str):  # early media (183): the network's tones and announcements
                self._spawn(self._remote_sdp(call, sdp), "early media")

    def _on_fail(self, call: Call, code: int, reason: str) -> None:
        if call.state == "ended":
            return
        outcome = outcome_of(code)
        if code >= 500 or (code == 408 and call.state == "ringing"):
            self.health.failed()
        elif outcome is not Kind.FAILED:
            self.health.ok()
        if call.cancelled:
            self._end(call, "local")
            return
        self._final(call, outcome, reason=f"{code} {reason}", sip_status=code)
        self._end(call, "remote")

    async def _answered(self, call: Call, sdp: str | None) -> None:
        # The answer's time is the 200 OK's arrival (the 2-second rule runs from there), not when the media
        # was ready.
        at_200 = self.now_ms()
        call.state = "answered"
        if call.ring_timer is not None:
            call.ring_timer.cancel()
        self.health.ok()
        try:
            if sdp is not None:
                await self._remote_sdp(call, sdp)
            if call.record:
                await self.media.start_recording(call.call_id)
                path, _ = await self.prompts.render(call.notice)
                await self.media.play(call.call_id, str(path))
        except Exception as exc:
            log.error("call %s: media after answer failed (%s): hanging up", call.call_id, exc)
            self._final(call, Kind.FAILED, reason=f"media: {type(exc).__name__}")
            await self.hangup(call.call_id)
            return
        if call.state == "answered":
            GATEWAY_CALLS.labels("answered").inc()
            self._emit(call, Kind.ANSWERED, at_ms=at_200, answer="human", sip_status=200)

    async def _remote_sdp(self, call: Call, sdp: str) -> None:
        async with call.media_lock:
            if call.released:
                return
            await self.media.customer_answered(call.call_id, sdp)

    async def _release_media(self, call: Call) -> None:
        async with call.media_lock:
            if call.released or not call.media_open:
                call.released = True
                return
            call.released = True
            try:
                await self.media.release_customer(call.call_id)
            except Exception as exc:
                log.error("call %s: rtpengine session not released: %s", call.call_id, exc)

    def on_dtmf(self, tag: str, digit: str) -> None:
        """A key press rtpengine saw; ``tag`` tells whose side: ``c-<call_id>`` or ``a-<leg_id>``."""
        if tag.startswith("c-"):
            call = self.calls.get(tag[2:])
            if call is not None and call.state == "answered":
                self._emit(call, Kind.DTMF, digit=digit)
        elif tag.startswith("a-"):
            leg = self.leg_by_id.get(tag[2:])
            if leg is not None:
                self.on_agent_digit(leg, digit)

    def _final(self, call: Call, kind: Kind, **kw: object) -> None:
        if call.outcome_sent:
            return
        call.outcome_sent = True
        GATEWAY_CALLS.labels(kind.value).inc()
        self._emit(call, kind, None, **kw)

    def _end(self, call: Call, by: str) -> None:
        if call.state == "ended":
            return
        answered = call.state == "answered"
        call.state = "ended"
        for timer in (call.ring_timer, call.message_timer):
            if timer is not None:
                timer.cancel()
        if not answered and not call.outcome_sent and not call.cancelled:
            self._final(call, Kind.FAILED, reason=f"ended before an answer ({by})")
        self._spawn(self._release(call, answered, by), "release call")

    async def _release(self, call: Call, answered: bool, by: str) -> None:
        leg = self.legs.get(call.leg_agent) if call.leg_agent else None
        if leg is not None and leg.call_id == call.call_id:
            leg.call_id = ""
            with contextlib.suppress(Exception):
                await self.media.unbridge(call.call_id, leg.leg_id)
        recording = None
        pcap: object = None
        if call.record and answered:
            try:
                pcap = await self.media.stop_recording(call.call_id)
            except Exception as exc:
                log.error("call %s: recording not stopped cleanly: %s", call.call_id, exc)
        await self._release_media(call)
        if isinstance(pcap, Path) and self.summarise is not None:
            try:
                recording = await asyncio.to_thread(self.summarise, pcap)
            except Exception as exc:
                log.error("call %s: recording %s unreadable: %s", call.call_id, pcap, exc)
        self._journal_drop(f"c:{call.call_id}")
        self._emit(call, Kind.ENDED, reason=by, recording=recording)
        if self.sip is not None:
            self.sip.call("forget", f"c:{call.call_id}")
        # Keep the record a little for retried commands, then forget it.
        asyncio.get_running_loop().call_later(60, self.calls.pop, call.call_id, None)

    # --- the dialog journal (a BYE for every answered dialog, for a gateway restarted after a SIGKILL) ---------

    def _journal_path(self, key: str) -> Path | None:
        if self.journal_dir is None:
            return None
        return self.journal_dir / (key.replace(":", "_").replace("/", "_") + ".json")

    def _journal_write(self, key: str, entry: dict[str, object]) -> None:
        path = self._journal_path(key)
        if path is None:
            return
        # The dialog may have ended already (a BYE crossing the 200 OK): only journal what is up.
        kind, _, ident = key.partition(":")
        alive = (kind == "c" and ident in self.calls and self.calls[ident].state != "ended") or (
            kind == "a" and ident in self.leg_by_id
        )
        if not alive:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entry))
            tmp.replace(path)
        except OSError as exc:
            log.error("dialog journal %s not written: %s", path, exc)

    def _journal_drop(self, key: str) -> None:
        path = self._journal_path(key)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    def replay_journal(self) -> int:
        """At start: hang up the dialogs a killed gateway left up (their journalled BYEs), then forget them."""
        if self.journal_dir is None or not self.journal_dir.is_dir() or self.sip is None:
            return 0
        sent = 0
        for path in sorted(self.journal_dir.glob("*.json")):
            try:
                e = json.loads(path.read_text())
                self.sip.call("send_bye", str(e["bye"]), str(e["host"]), int(e["port"]), str(e["transport"]))
                sent += 1
            except (OSError, ValueError, KeyError) as exc:
                log.error("dialog journal %s unreadable: %s", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
        return sent

    # --- health ------------------------------------------------------------------------------------------------

    async def watch_media(self, interval_s: float = 1.0) -> None:
        while True:
            try:
                up = await self.media.ping()
            except Exception:
                up = False
            if up != self.media_up:
                log.warning("rtpengine %s", "reachable" if up else "UNREACHABLE: no call will be placed")
            self.media_up = up
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        for call in list(self.calls.values()):
            if call.state != "ended":
                await self.hangup(call.call_id)
        for agent_id in list(self.legs):
            await self.close_agent_leg(agent_id)
        for t in list(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(t, 2.0)


def _info_digit(body: str) -> str:
    """The key of a SIP INFO body (application/dtmf-relay ``Signal=9`` or application/dtmf ``9``)."""
    m = re.search(r"Signal\s*=\s*([0-9A-Da-d*#])", body)
    if m:
        return m.group(1).upper()
    s = body.strip()
    return s.upper() if re.fullmatch(r"[0-9A-Da-d*#]", s) else ""
