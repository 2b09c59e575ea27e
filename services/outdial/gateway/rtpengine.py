"""The gateway's media side: an asyncio client of rtpengine's NG protocol, its DTMF log, and the media recipes.

Four parts, each usable alone:

- ``bencode`` / ``bdecode``: the NG wire format (BitTorrent's bencode). Our own ~80 lines: strict
  (canonical integers, exact lengths, no trailing bytes), typed, no dependency. Byte strings that are
  valid UTF-8 decode to ``str`` (everything rtpengine sends, SDP included), others stay ``bytes``.
- ``RtpEngine``: one connected UDP socket; each request is ``cookie + " " + bencode(dict)`` and the reply
  starts with the same cookie, so replies are matched to waiting futures by cookie. A request that gets no
  reply within ``timeout_s`` is sent once more with the same cookie (rtpengine keeps a cache of replies by
  cookie, so a retransmitted ``offer`` is not applied twice), then ``RtpEngineUnavailable``. An ICMP "port
  unreachable" (nothing listening) fails every waiting request at once with ``RtpEngineUnavailable``: the
  gateway fails closed (no call is placed without media) instead of waiting. ``result: error`` raises
  ``RtpEngineError`` carrying rtpengine's ``error-reason``.
- ``DtmfListener``: a UDP socket at rtpengine's ``--dtmf-log-dest``. rtpengine 10.5 sends one JSON datagram per
  RFC 4733 digit it forwards (no transcoding needed), seen on this machine as::

      {"callid": "c-42", "source_tag": "c-42", "tags": ["ci-42", "c-42"], "type": "DTMF",
       "timestamp": 1796076859, "source_ip": "127.0.0.1", "event": 5, "duration": 80, "volume": 10}

  (``duration`` in ms). Events 0-9 are the digits, 10 ``*``, 11 ``#``, 12-15 ``A``-``D``.
- ``Media``: the recipes the gateway uses, below.

Call-id and tag scheme (stable: the DTMF log, ``list`` and the recordings' file names carry these names)
-----------------------------------------------------------------------------------------------------------
Each customer call and each agent phone leg is its own rtpengine call with two sides ("monologues"):

============================  ===================  ========================  =====================
what                          rtpengine call-id    outer tag (the far end)   inner tag
============================  ===================  ========================  =====================
customer call ``call_id``     ``c-{call_id}``      ``c-{call_id}``: carrier  ``ci-{call_id}``
agent phone leg ``leg_id``    ``a-{leg_id}``       ``a-{leg_id}``: phone     ``ai-{leg_id}``
============================  ===================  ========================  =====================

The tags are ours, not the SIP dialogs' tags (the gateway is a B2BUA: the SIP tags of a 183 and a 200 from
different forks differ, ours do not). The outer side faces the carrier / the agent's phone; its port is
what goes into our INVITE's SDP and never moves for the life of the call, so no re-INVITE is ever sent to a
phone. The inner side is where the other party's media comes from and goes to:

- at first, and after ``unbridge``, the inner side points at the *placeholder*: a UDP sink socket ``Media``
  owns (one for all calls) that reads and drops what it gets. The party is connected and quiet (agent legs
  stay nailed up between customers this way). A party's RTCP, if it sends any, goes to the placeholder's
  port + 1 meanwhile (nobody listens: dropped); pointing it at the sink's own port would make rtpengine
  offer ``rtcp-mux`` to the carrier (tried), so it is left so.
- ``bridge(call_id, leg_id)`` re-``offer``s each call's inner side with the SDP of the other call's inner
  port, and ``answer``s again with the far end's stored SDP, flags ``["port-latching"]`` (rtpengine keeps
  its ports). The two inner ports then send to each other: customer <-> agent both ways in about 1 ms
  (four NG round trips, the two calls in parallel). When the two far ends chose different codecs
  (PCMA vs PCMU), ``codec: {transcode: [far end's codec]}`` makes rtpengine transcode; with the same codec
  the payload is relayed byte for byte.

Ports: each rtpengine call holds 4 ports (RTP + RTCP on each side) from ``--port-min``..``--port-max``: size
the range for 4 x (calls in flight + agent legs), else ``offer`` fails with "Ran out of ports".

Prompts: ``play media`` with the outer tag plays to that far end (NG ``from-tag`` names the party who
hears it), in the codec it negotiated, first packet a few ms after the command. Not while bridged (the
party would get the prompt and the other party's audio interleaved): ``Media.play`` refuses then.

Who pressed a key: ``Media.who(source_tag)`` maps the DTMF log's ``source_tag``: ``c-X`` -> ("customer", X),
``a-Y`` -> ("agent", Y). While bridged, each digit is reported twice, once where it enters (the outer tag)
and once more where it crosses the bridge (an inner tag ``ci-``/``ai-``): ``who`` returns None for inner
tags, so each key press is counted once.

Recordings: ``start recording`` (``--recording-method=pcap``) creates ``{recording_dir}/pcaps/{rtpengine
call-id}-{16 hex}.pcap`` at once (a new file for each start), with every RTP packet rtpengine *receives* in
that call (both parties' audio once bridged, raw IP + UDP). rtpengine 10.5 does not say the file name in its
reply (its ``metadata/rtpengine-meta-…txt`` file, moved there at stop, names it on its first line), so
``Media.start_recording`` finds the new file in ``pcaps/`` and returns its path for the gateway to store;
the recording directory must be readable by the gateway (same host, or a shared volume).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from outdial.core.errors import FailedPrecondition, InvalidArgument, OutdialError, Unavailable

log = logging.getLogger("outdial.gateway.rtpengine")

# ---------------------------------------------------------------------------------------------- bencode

BValue: TypeAlias = "int | str | bytes | list[BValue] | dict[str, BValue]"


class BencodeError(ValueError):
    pass


def bencode(value: BValue) -> bytes:
    """Encode ints, str (as UTF-8), bytes, lists and dicts with str keys (sorted, as bencode requires)."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: BValue, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise BencodeError("bencode has no booleans")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, str):
        raw = value.encode()
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, bytes):
        out.append(b"%d:" % len(value))
        out.append(value)
    elif isinstance(value, list):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        for key, item in sorted((k.encode(), v) for k, v in value.items()):
            out.append(b"%d:" % len(key))
            out.append(key)
            _encode(item, out)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode {type(value).__name__}")


_INT = re.compile(rb"i(0|-?[1-9][0-9]*)e")
_LEN = re.compile(rb"(0|[1-9][0-9]*):")


def bdecode(data: bytes) -> BValue:
    """Decode one bencoded value that fills ``data`` exactly (BencodeError otherwise)."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"trailing bytes at {end}")
    return value


def _decode(data: bytes, pos: int, depth: int) -> tuple[BValue, int]:
    if depth > 64:
        raise BencodeError("nested too deep")
    lead = data[pos : pos + 1]
    if lead == b"i":
        m = _INT.match(data, pos)
        if m is None:
            raise BencodeError(f"bad integer at {pos}")
        return int(m.group(1)), m.end()
    if lead == b"l":
        items: list[BValue] = []
        pos += 1
        while data[pos : pos + 1] != b"e":
            if pos >= len(data):
                raise BencodeError("unterminated list")
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos + 1
    if lead == b"d":
        entries: dict[str, BValue] = {}
        pos += 1
        while data[pos : pos + 1] != b"e":
            if pos >= len(data):
                raise BencodeError("unterminated dict")
            raw, pos = _decode_bytes(data, pos)
            try:
                key = raw.decode()
            except UnicodeDecodeError as exc:
                raise BencodeError(f"dict key not UTF-8 at {pos}") from exc
            entries[key], pos = _decode(data, pos, depth + 1)
        return entries, pos + 1
    raw, pos = _decode_bytes(data, pos)
    try:
        return raw.decode(), pos
    except UnicodeDecodeError:
        return raw, pos


def _decode_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    m = _LEN.match(data, pos)
    if m is None:
        raise BencodeError(f"bad value at {pos}")
    start = m.end()
    end = start + int(m.group(1))
    if end > len(data):
        raise BencodeError(f"string past the end at {pos}")
    return data[start:end], end


# ----------------------------------------------------------------------------------------------- errors


class RtpEngineError(OutdialError):
    """rtpengine answered ``result: error`` (``reason`` is its ``error-reason``)."""

    default_id = "rtpengine_error"

    def __init__(self, reason: str, *, command: str = "") -> None:
        super().__init__(f"rtpengine {command}: {reason}", command=command)
        self.reason = reason
        self.command = command

    @property
    def unknown_call(self) -> bool:
        return "unknown call" in self.reason.lower()


class RtpEngineUnavailable(Unavailable):
    """rtpengine did not answer (nothing listening, or no reply after one retransmission)."""

    default_id = "rtpengine_unavailable"


class MediaStateError(FailedPrecondition):
    """A media recipe called in the wrong state (bridge before the far end answered, unknown call…)."""

    default_id = "media_state"


# ------------------------------------------------------------------------------------------- NG client

NgReply: TypeAlias = dict[str, BValue]


def _ng_params(opts: Mapping[str, BValue]) -> dict[str, BValue]:
    """Python keyword names to NG keys: ``to_tag`` -> ``to-tag`` (NG keys use hyphens, or spaces)."""
    return {k.replace("_", "-"): v for k, v in opts.items()}


class _NgProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: RtpEngine) -> None:
        self._client = client

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self._client._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        self._client._on_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._on_lost()


class RtpEngine:
    """An asyncio NG client of one rtpengine (``host:port`` of its ``--listen-ng``)."""

    def __init__(self, host: str, port: int, timeout_s: float = 1.0) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._transport: asyncio.DatagramTransport | None = None
        self._opening: asyncio.Lock | None = None
        self._pending: dict[bytes, asyncio.Future[NgReply]] = {}
        self._prefix = secrets.token_hex(4)
        self._seq = itertools.count(1)
        self._closed = False

    async def _ensure(self) -> asyncio.DatagramTransport:
        if self._closed:
            raise RtpEngineUnavailable("NG client closed")
        if self._transport is not None:
            return self._transport
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._transport is None:
                loop = asyncio.get_running_loop()
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _NgProtocol(self), remote_addr=(self.host, self.port)
                )
                self._transport = transport
            return self._transport

    def _on_datagram(self, data: bytes) -> None:
        cookie, sep, body = data.partition(b" ")
        fut = self._pending.get(cookie)
        if not sep or fut is None or fut.done():
            return  # a late reply to a request that already gave up, or noise
        try:
            reply = bdecode(body)
        except BencodeError as exc:
            fut.set_exception(RtpEngineError(f"undecodable reply: {exc}"))
            return
        if not isinstance(reply, dict):
            fut.set_exception(RtpEngineError("reply is not a dictionary"))
            return
        fut.set_result(reply)

    def _on_error(self, exc: Exception) -> None:
        # On a connected UDP socket, ICMP port unreachable arrives here: rtpengine is not listening.
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RtpEngineUnavailable(f"rtpengine NG {self.host}:{self.port}: {exc}"))

    def _on_lost(self) -> None:
        self._transport = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RtpEngineUnavailable("NG socket closed"))

    async def request(self, command: str, params: Mapping[str, BValue] | None = None) -> NgReply:
        """Send one NG command; its reply, or ``RtpEngineError`` / ``RtpEngineUnavailable``."""
        transport = await self._ensure()
        cookie = f"{self._prefix}_{next(self._seq)}".encode()
        message: dict[str, BValue] = {"command": command, **(params or {})}
        datagram = cookie + b" " + bencode(message)
        fut: asyncio.Future[NgReply] = asyncio.get_running_loop().create_future()
        self._pending[cookie] = fut
        try:
            for attempt in (1, 2):
                transport.sendto(datagram)
                try:
                    reply = await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
                    break
                except TimeoutError:
                    if attempt == 2:
                        raise RtpEngineUnavailable(
                            f"rtpengine NG {self.host}:{self.port}: no reply to {command!r} "
                            f"within 2 x {self.timeout_s:g}s"
                        ) from None
                    log.warning("rtpengine: no reply to %s within %gs, resending", command, self.timeout_s)
        finally:
            del self._pending[cookie]
            if not fut.done():
                fut.cancel()
        result = reply.get("result")
        if result == "error":
            raise RtpEngineError(str(reply.get("error-reason", "unknown error")), command=command)
        if result == "load limit":
            raise RtpEngineUnavailable(f"rtpengine refused {command!r}: load limit")
        if "warning" in reply:
            log.warning("rtpengine %s: %s", command, reply["warning"])
        return reply

    async def ping(self) -> bool:
        """True when rtpengine answers ``pong``; False when it does not answer (for health checks)."""
        try:
            reply = await self.request("ping")
        except RtpEngineUnavailable:
            return False
        return reply.get("result") == "pong"

    async def offer(self, call_id: str, from_tag: str, sdp: str, **opts: BValue) -> str:
        """``offer``: the SDP rewritten to rtpengine's ports (to send to the other party)."""
        params = {"call-id": call_id, "from-tag": from_tag, "sdp": sdp, **_ng_params(opts)}
        return _sdp_of(await self.request("offer", params))

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str, **opts: BValue) -> str:
        """``answer`` (``sdp`` is the answerer's, the to-tag's): the SDP rewritten for the offerer."""
        params = {
            "call-id": call_id,
            "from-tag": from_tag,
            "to-tag": to_tag,
            "sdp": sdp,
            **_ng_params(opts),
        }
        return _sdp_of(await self.request("answer", params))

    async def delete(self, call_id: str, from_tag: str | None = None) -> NgReply:
        params: dict[str, BValue] = {"call-id": call_id}
        if from_tag is not None:
            params["from-tag"] = from_tag
        return await self.request("delete", params)

    async def query(self, call_id: str) -> NgReply:
        return await self.request("query", {"call-id": call_id})

    async def list_calls(self, limit: int = 1_000_000) -> list[str]:
        """Every call-id rtpengine holds (``list`` returns 32 by default: ask for all)."""
        reply = await self.request("list", {"limit": limit})
        calls = reply.get("calls", [])
        return [str(c) for c in calls] if isinstance(calls, list) else []

    async def statistics(self) -> NgReply:
        stats = (await self.request("statistics")).get("statistics", {})
        return stats if isinstance(stats, dict) else {}

    async def play_media(self, call_id: str, to_party_tag: str, file: str | Path) -> int:
        """Play a file (anything ffmpeg reads) to the party ``to_party_tag`` (NG ``from-tag``: the party who
        hears it). Returns its duration in ms as rtpengine reports it (0 when it does not)."""
        reply = await self.request(
            "play media", {"call-id": call_id, "from-tag": to_party_tag, "file": str(file)}
        )
        duration = reply.get("duration", 0)
        return duration if isinstance(duration, int) else 0

    async def stop_media(self, call_id: str, tag: str) -> None:
        await self.request("stop media", {"call-id": call_id, "from-tag": tag})

    async def start_recording(self, call_id: str) -> None:
        await self.request("start recording", {"call-id": call_id})

    async def stop_recording(self, call_id: str) -> None:
        await self.request("stop recording", {"call-id": call_id})

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def _sdp_of(reply: NgReply) -> str:
    sdp = reply.get("sdp")
    if not isinstance(sdp, str):
        raise RtpEngineError("reply without SDP")
    return sdp


# -------------------------------------------------------------------------------------------- DTMF log

DTMF_DIGITS = "0123456789*#ABCD"


def dtmf_digit(event: int) -> str | None:
    """RFC 4733 event code to its key: 0-9, 10 ``*``, 11 ``#``, 12-15 ``A``-``D``; None for others."""
    return DTMF_DIGITS[event] if 0 <= event < len(DTMF_DIGITS) else None


@dataclass(frozen=True)
class DtmfEvent:
    call_id: str  # rtpengine's call-id (``c-…`` / ``a-…``)
    source_tag: str  # the side the digit came from
    digit: str
    duration_ms: int


def parse_dtmf_datagram(data: bytes) -> DtmfEvent | None:
    """One datagram of rtpengine's ``--dtmf-log-dest`` to an event (None when not a DTMF event)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("type", "DTMF") != "DTMF":
        return None
    call_id, tag, event = doc.get("callid"), doc.get("source_tag"), doc.get("event")
    if not isinstance(call_id, str) or not isinstance(tag, str) or not isinstance(event, int):
        return None
    digit = dtmf_digit(event)
    if digit is None:
        return None
    duration = doc.get("duration", 0)
    return DtmfEvent(call_id, tag, digit, duration if isinstance(duration, int) else 0)


DtmfCallback: TypeAlias = Callable[[str, str, str], None]


class _DtmfProtocol(asyncio.DatagramProtocol):
    def __init__(self, callback: DtmfCallback) -> None:
        self._callback = callback

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        event = parse_dtmf_datagram(data)
        if event is None:
            log.warning("rtpengine DTMF log: ignored datagram %r", data[:200])
            return
        try:
            self._callback(event.call_id, event.source_tag, event.digit)
        except Exception as exc:  # a bug in the callback: reported, and we keep listening
            asyncio.get_running_loop().call_exception_handler(
                {"message": "DTMF callback failed", "exception": exc}
            )


class DtmfListener:
    """Listens at rtpengine's ``--dtmf-log-dest``; ``callback(call_id, source_tag, digit)`` per key press."""

    def __init__(self, host: str, port: int, callback: DtmfCallback) -> None:
        self.host = host
        self.port = port
        self._callback = callback
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _DtmfProtocol(self._callback), local_addr=(self.host, self.port)
        )

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


# ---------------------------------------------------------------------------------------------- SDP bits

_STATIC_PT = {0: "PCMU", 3: "GSM", 4: "G723", 8: "PCMA", 9: "G722", 18: "G729"}


def sdp_audio_port(sdp: str) -> int:
    m = re.search(r"^m=audio (\d+)", sdp, re.MULTILINE)
    if m is None:
        raise InvalidArgument("SDP without an audio stream", field="sdp")
    return int(m.group(1))


def sdp_audio_codec(sdp: str) -> str:
    """The first audio codec of the SDP's audio stream (an answer's choice), e.g. ``PCMA``."""
    m = re.search(r"^m=audio \d+ \S+ ([\d ]+)", sdp, re.MULTILINE)
    if m is None:
        raise InvalidArgument("SDP without an audio stream", field="sdp")
    names: dict[int, str] = {
        int(pt): str(name).upper() for pt, name in re.findall(r"^a=rtpmap:(\d+) ([^/\s]+)", sdp, re.MULTILINE)
    }
    for pt in (int(p) for p in m.group(1).split()):
        name = names.get(pt, _STATIC_PT.get(pt, ""))
        if name and name not in ("TELEPHONE-EVENT", "CN"):
            return name
    raise InvalidArgument("SDP without an audio codec", field="sdp")


_CODEC_PT = {"PCMU": 0, "PCMA": 8}


def placeholder_sdp(host: str, port: int, codecs: tuple[str, ...] = ("PCMA", "PCMU")) -> str:
    """The inner side's SDP while it points at the sink: G.711 both laws and RFC 4733 events, 20 ms."""
    pts = " ".join(str(_CODEC_PT[c]) for c in codecs)
    lines = [
        "v=0",
        f"o=- {secrets.randbelow(1 << 31)} 1 IN IP4 {host}",
        "s=outdial",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {pts} 101",
        *(f"a=rtpmap:{_CODEC_PT[c]} {c}/8000" for c in codecs),
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return "\r\n".join(lines) + "\r\n"


# ----------------------------------------------------------------------------------------------- recipes

_ID = re.compile(r"[A-Za-z0-9_.@+-]{1,128}")
_NG_OPTS: dict[str, BValue] = {"replace": ["origin", "session-connection"], "ICE": "remove"}


@dataclass
class _Leg:
    """One rtpengine call (a customer call or an agent phone leg) as the recipes see it."""

    kind: Literal["customer", "agent"]
    ident: str
    rtp_call_id: str
    outer_tag: str
    inner_tag: str
    outer_port: int = 0  # rtpengine's port facing the carrier / phone (in our INVITE's SDP)
    remote_sdp: str | None = None  # the far end's answer (183 / 200 OK)
    inner_sdp: str | None = None  # rtpengine's SDP for the inner side (what a bridged peer sends to)
    codec: str = ""
    peer: str | None = None  # the leg it is bridged to (leg_id for a customer, call_id for an agent)
    recording: Path | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.received += 1


class Media:
    """The gateway's media recipes on one rtpengine (see the module docstring for the scheme).

    ``start()`` binds the placeholder sink (``sink_host:sink_port``, reachable by rtpengine: on its host;
    with ``bind_sink=False`` the address is used as it is, someone else reads it);
    ``recording_dir`` is rtpengine's ``--recording-dir`` as seen from the gateway.
    """

    def __init__(
        self,
        engine: RtpEngine,
        recording_dir: Path,
        *,
        sink_host: str = "127.0.0.1",
        sink_port: int = 0,
        bind_sink: bool = True,
        codecs: tuple[str, ...] = ("PCMA", "PCMU"),
    ) -> None:
        self.engine = engine
        self.recording_dir = recording_dir
        self._sink_addr = (sink_host, sink_port)
        self._sink: _Sink | None = None
        self._sink_transport: asyncio.DatagramTransport | None = None
        self._bind_sink = bind_sink
        self.codecs = codecs
        self._customers: dict[str, _Leg] = {}
        self._agents: dict[str, _Leg] = {}

    # -- lifecycle

    async def start(self) -> None:
        if not self._bind_sink:
            return
        loop = asyncio.get_running_loop()
        transport, sink = await loop.create_datagram_endpoint(_Sink, local_addr=self._sink_addr)
        self._sink_transport, self._sink = transport, sink
        host, port = transport.get_extra_info("sockname")[:2]
        self._sink_addr = (str(host), int(port))

    def close(self) -> None:
        if self._sink_transport is not None:
            self._sink_transport.close()
            self._sink_transport = None

    @property
    def placeholder(self) -> tuple[str, int]:
        """Where idle inner sides send their media (the sink)."""
        return self._sink_addr

    @property
    def placeholder_packets(self) -> int:
        """Packets the sink has swallowed (what nobody was meant to hear)."""
        return self._sink.received if self._sink is not None else 0

    # -- naming

    @staticmethod
    def customer_ids(call_id: str) -> tuple[str, str, str]:
        """(rtpengine call-id, outer tag, inner tag) of a customer call."""
        return f"c-{call_id}", f"c-{call_id}", f"ci-{call_id}"

    @staticmethod
    def agent_ids(leg_id: str) -> tuple[str, str, str]:
        """(rtpengine call-id, outer tag, inner tag) of an agent phone leg."""
        return f"a-{leg_id}", f"a-{leg_id}", f"ai-{leg_id}"

    @staticmethod
    def who(source_tag: str) -> tuple[Literal["customer", "agent"], str] | None:
        """Who pressed a key, from the DTMF log's ``source_tag``: ("customer", call_id), ("agent", leg_id),
        or None for a digit seen again where it crosses a bridge (inner tags)."""
        if source_tag.startswith("c-"):
            return "customer", source_tag[2:]
        if source_tag.startswith("a-"):
            return "agent", source_tag[2:]
        return None

    def _new(self, kind: Literal["customer", "agent"], ident: str) -> _Leg:
        if _ID.fullmatch(ident) is None:
            raise InvalidArgument(f"bad {kind} id {ident!r}", field="call_id")
        table = self._customers if kind == "customer" else self._agents
        if ident in table:
            raise MediaStateError(f"{kind} {ident} already has media")
        ids = self.customer_ids(ident) if kind == "customer" else self.agent_ids(ident)
        leg = _Leg(kind, ident, *ids)
        table[ident] = leg
        return leg

    def _get(self, kind: Literal["customer", "agent"], ident: str) -> _Leg:
        leg = (self._customers if kind == "customer" else self._agents).get(ident)
        if leg is None:
            raise MediaStateError(f"no media for {kind} {ident}")
        return leg

    # -- offer / answer towards the carrier and the phones

    async def _offer(self, leg: _Leg) -> str:
        host, port = self._sink_addr
        try:
            sdp = await self.engine.offer(
                leg.rtp_call_id, leg.inner_tag, placeholder_sdp(host, port, self.codecs), **_NG_OPTS
            )
        except BaseException:
            (self._customers if leg.kind == "customer" else self._agents).pop(leg.ident, None)
            raise
        leg.outer_port = sdp_audio_port(sdp)
        return sdp

    async def _answered(self, leg: _Leg, remote_sdp: str) -> None:
        async with leg.lock:
            codec = sdp_audio_codec(remote_sdp)
            leg.inner_sdp = await self.engine.answer(
                leg.rtp_call_id, leg.inner_tag, leg.outer_tag, remote_sdp, **_NG_OPTS
            )
            leg.remote_sdp, leg.codec = remote_sdp, codec

    async def customer_offer(self, call_id: str) -> str:
        """The SDP offer for our INVITE to the carrier (rtpengine's carrier-facing port)."""
        return await self._offer(self._new("customer", call_id))

    async def customer_answered(self, call_id: str, remote_sdp: str) -> None:
        """The carrier's SDP answer (a 183's for early media, then the 200 OK's; either may repeat)."""
        await self._answered(self._get("customer", call_id), remote_sdp)

    async def agent_offer(self, leg_id: str) -> str:
        """The SDP offer for our INVITE to an agent's phone."""
        return await self._offer(self._new("agent", leg_id))

    async def agent_answered(self, leg_id: str, remote_sdp: str) -> None:
        await self._answered(self._get("agent", leg_id), remote_sdp)

    # -- bridge

    async def _point_inner(self, leg: _Leg, inner_party_sdp: str, transcode: bool) -> None:
        """Re-offer ``leg``'s inner side as ``inner_party_sdp`` and answer again with the far end's SDP;
        rtpengine's ports stay (port-latching), so the far end notices nothing."""
        if leg.remote_sdp is None:
            raise MediaStateError(f"{leg.kind} {leg.ident} has not answered", error_id="media_not_answered")
        opts: dict[str, BValue] = {**_NG_OPTS, "flags": ["port-latching"]}
        if transcode:
            opts["codec"] = {"transcode": [leg.codec]}
        out = await self.engine.offer(leg.rtp_call_id, leg.inner_tag, inner_party_sdp, **opts)
        inner = await self.engine.answer(
            leg.rtp_call_id, leg.inner_tag, leg.outer_tag, leg.remote_sdp, **opts
        )
        if sdp_audio_port(out) != leg.outer_port or (
            leg.inner_sdp is not None and sdp_audio_port(inner) != sdp_audio_port(leg.inner_sdp)
        ):
            raise RtpEngineError(f"{leg.rtp_call_id}: rtpengine moved its ports", command="offer")

    async def bridge(self, call_id: str, leg_id: str) -> None:
        """Customer <-> agent both ways, no SIP re-INVITE to either (about 1 ms)."""
        cust, agent = self._get("customer", call_id), self._get("agent", leg_id)
        async with cust.lock, agent.lock:
            if cust.peer == leg_id and agent.peer == call_id:
                return
            if cust.peer is not None or agent.peer is not None:
                raise MediaStateError(
                    f"customer {call_id} or agent leg {leg_id} is bridged elsewhere",
                    error_id="media_busy",
                )
            if cust.inner_sdp is None or agent.inner_sdp is None:
                raise MediaStateError(
                    f"bridge of customer {call_id} and agent leg {leg_id} before both answered",
                    error_id="media_not_answered",
                )
            await asyncio.gather(
                self._point_inner(cust, agent.inner_sdp, cust.codec != agent.codec),
                self._point_inner(agent, cust.inner_sdp, cust.codec != agent.codec),
            )
            cust.peer, agent.peer = leg_id, call_id

    async def unbridge(self, call_id: str, leg_id: str) -> None:
        """Both back to the placeholder: each party stays connected and hears nothing."""
        cust, agent = self._get("customer", call_id), self._get("agent", leg_id)
        async with cust.lock, agent.lock:
            if cust.peer != leg_id or agent.peer != call_id:
                raise MediaStateError(f"customer {call_id} is not bridged to agent leg {leg_id}")
            await self._unbridge_locked(cust, agent)

    async def _unbridge_locked(self, cust: _Leg, agent: _Leg) -> None:
        host, port = self._sink_addr
        sdp = placeholder_sdp(host, port, self.codecs)
        await asyncio.gather(self._point_inner(cust, sdp, False), self._point_inner(agent, sdp, False))
        cust.peer = agent.peer = None

    # -- prompts, recording

    async def play(self, call_id: str, file: str | Path) -> int:
        """Play a file (WAV…) to the customer; its duration in ms. Refused while bridged: rtpengine would
        send the prompt and the agent's audio side by side (two SSRCs interleaved, measured), not mixed."""
        leg = self._get("customer", call_id)
        if leg.peer is not None:
            raise MediaStateError(
                f"customer {call_id} is bridged to agent leg {leg.peer}: unbridge before playing",
                error_id="media_bridged",
            )
        return await self.engine.play_media(leg.rtp_call_id, leg.outer_tag, file)

    async def play_agent(self, leg_id: str, file: str | Path) -> int:
        """Play a file to the agent's phone (a beep, a whisper); its duration in ms."""
        leg = self._get("agent", leg_id)
        return await self.engine.play_media(leg.rtp_call_id, leg.outer_tag, file)

    async def stop_play(self, call_id: str) -> None:
        leg = self._get("customer", call_id)
        await self.engine.stop_media(leg.rtp_call_id, leg.outer_tag)

    def _pcaps(self, leg: _Leg) -> set[Path]:
        pattern = re.compile(re.escape(leg.rtp_call_id) + r"-[0-9a-f]{16}\.pcap")
        folder = self.recording_dir / "pcaps"
        if not folder.is_dir():
            return set()
        return {p for p in folder.iterdir() if pattern.fullmatch(p.name)}

    async def start_recording(self, call_id: str) -> Path:
        """Start recording the customer call (both parties once bridged); the pcap file's path."""
        leg = self._get("customer", call_id)
        before = self._pcaps(leg)
        await self.engine.start_recording(leg.rtp_call_id)
        new = self._pcaps(leg) - before
        if len(new) != 1:
            raise RtpEngineError(
                f"{leg.rtp_call_id}: recording started but no new pcap in "
                f"{self.recording_dir / 'pcaps'} (is it rtpengine's --recording-dir?)",
                command="start recording",
            )
        leg.recording = new.pop()
        return leg.recording

    async def stop_recording(self, call_id: str) -> Path | None:
        """Stop recording; the pcap's path (complete once this returns)."""
        leg = self._get("customer", call_id)
        await self.engine.stop_recording(leg.rtp_call_id)
        return leg.recording

    # -- release, leftovers

    async def _delete(self, leg: _Leg) -> None:
        try:
            await self.engine.delete(leg.rtp_call_id)
        except RtpEngineError as exc:
            if not exc.unknown_call:  # already gone (timeout, restart): nothing to free
                raise

    async def release_customer(self, call_id: str) -> None:
        """Delete the customer's media (every port freed); a bridged agent leg goes back to the
        placeholder and stays up."""
        cust = self._customers.get(call_id)
        if cust is None:
            return
        if cust.peer is not None and (agent := self._agents.get(cust.peer)) is not None:
            async with cust.lock, agent.lock:
                await self._unbridge_locked(cust, agent)
        async with cust.lock:
            await self._delete(cust)
            self._customers.pop(call_id, None)

    async def release_agent(self, leg_id: str) -> None:
        """Delete the agent leg's media; a bridged customer goes back to the placeholder."""
        agent = self._agents.get(leg_id)
        if agent is None:
            return
        if agent.peer is not None and (cust := self._customers.get(agent.peer)) is not None:
            async with cust.lock, agent.lock:
                await self._unbridge_locked(cust, agent)
        async with agent.lock:
            await self._delete(agent)
            self._agents.pop(leg_id, None)

    async def agent_leg_alive(self, leg_id: str) -> bool:
        """False when rtpengine no longer knows the leg (``Unknown call-ID``: treat as dropped)."""
        try:
            await self.engine.query(self.agent_ids(leg_id)[0])
        except RtpEngineError as exc:
            if exc.unknown_call:
                return False
            raise
        return True

    async def leftover(self) -> list[str]:
        """The calls rtpengine still holds (empty once every call and leg is released)."""
        return await self.engine.list_calls()

    def bridged_to(self, call_id: str) -> str | None:
        leg = self._customers.get(call_id)
        return leg.peer if leg is not None else None
