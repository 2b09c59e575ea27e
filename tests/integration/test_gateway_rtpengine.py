"""The gateway's media recipes against a real rtpengine (userspace), with raw UDP sockets playing the carrier
(the customer's side) and an agent's phone: G.711 RTP, 20 ms packets, RFC 4733 DTMF.

One rtpengine per module (ports 41000-41399, NG 41900, DTMF log 41901); the test sockets use 41500-41899.
Skipped only when the rtpengine binary is missing.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import struct
import subprocess
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest

from outdial.gateway.rtpengine import (
    DtmfListener,
    Media,
    MediaStateError,
    RtpEngine,
    RtpEngineError,
    RtpEngineUnavailable,
    sdp_audio_port,
)
from outdial.gateway.rtpengine_proc import RtpengineProcess, start_rtpengine
from tests.tools import needs

pytestmark = needs("rtpengine")

HOST = "127.0.0.1"
NG_PORT, DTMF_PORT = 41900, 41901
RTP_MIN, RTP_MAX = 41000, 41399
SINK_PORT = 41500
CUSTOMER_PORT, AGENT_PORT = 41510, 41520
CLOSED_PORT, SILENT_PORT = 41890, 41892
PT_NAME = {0: "PCMU", 8: "PCMA"}


# ------------------------------------------------------------------------------------------ helpers


def phone_sdp(port: int, pt: int) -> str:
    """A far end's SDP answer: one G.711 law and telephone-event, 20 ms."""
    return (
        f"v=0\r\no=- 7 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {PT_NAME[pt]}/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    )


def rtp_packet(seq: int, pt: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, seq * 160, ssrc) + payload


class Peer(asyncio.DatagramProtocol):
    """A raw RTP endpoint (the carrier's media, an agent's phone, the placeholder sink)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.queue.put_nowait((data, (str(addr[0]), addr[1])))

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, (HOST, port))

    async def recv(self, n: int, timeout: float = 5.0) -> list[tuple[bytes, tuple[str, int]]]:
        return [await asyncio.wait_for(self.queue.get(), timeout) for _ in range(n)]

    def pending(self) -> int:
        return self.queue.qsize()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_peer(port: int) -> Peer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(Peer, local_addr=(HOST, port))
    return peer


async def send_stream(peer: Peer, to_port: int, pt: int, ssrc: int, payloads: list[bytes]) -> None:
    for seq, payload in enumerate(payloads):
        peer.send(rtp_packet(seq, pt, ssrc, payload), to_port)
        await asyncio.sleep(0.02)  # 20 ms packetisation, as a phone sends


def payloads(tag: int, n: int) -> list[bytes]:
    return [bytes([tag, i]) * 80 for i in range(n)]


async def send_dtmf(peer: Peer, to_port: int, ssrc: int, event: int, seq0: int) -> None:
    """One RFC 4733 key press: 3 updates, 3 end packets (60 ms), one timestamp (a new one per press)."""
    steps = [(False, 160), (False, 320), (False, 480), (True, 480), (True, 480), (True, 480)]
    for i, (end, duration) in enumerate(steps):
        body = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
        packet = struct.pack("!BBHII", 0x80, 101 | (0x80 if i == 0 else 0), seq0 + i, seq0 * 160, ssrc)
        peer.send(packet + body, to_port)
        await asyncio.sleep(0.02)


def pcap_udp_payloads(path: Path) -> list[bytes]:
    """UDP payloads of a pcap with raw-IP (linktype 101) or Ethernet frames (rtpengine writes raw IP)."""
    data = path.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1", "not a little-endian pcap"
    linktype = struct.unpack_from("<I", data, 20)[0]
    pos, out = 24, []
    while pos + 16 <= len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        ip = frame[14:] if linktype == 1 else frame
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] == 17:
            out.append(ip[ihl + 8 :])
    return out


def render_prompt(path: Path) -> None:
    """espeak-ng's voice when it is installed (CI has it), else a 1 s tone written here."""
    espeak = shutil.which("espeak-ng")
    if espeak:
        subprocess.run([espeak, "-w", str(path), "hello, this is a test call"], check=True)
        return
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(8000)
            )
        )


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rtpengine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtpengineProcess]:
    root = tmp_path_factory.mktemp("rtpengine")
    with start_rtpengine(
        NG_PORT, DTMF_PORT, RTP_MIN, RTP_MAX, root / "recordings", log_path=root / "rtpengine.log"
    ) as proc:
        yield proc
    assert proc.proc.returncode is not None  # stopped and reaped


@pytest.fixture
async def sink() -> AsyncIterator[Peer]:
    peer = await open_peer(SINK_PORT)
    yield peer
    peer.close()


@pytest.fixture
async def media(rtpengine: RtpengineProcess, sink: Peer) -> AsyncIterator[Media]:
    engine = RtpEngine(HOST, NG_PORT, timeout_s=1.0)
    # the test reads the placeholder itself, to see what nobody was meant to hear
    m = Media(engine, rtpengine.recording_dir, sink_port=SINK_PORT, bind_sink=False)
    await m.start()
    try:
        yield m
    finally:
        for call in await engine.list_calls():  # a failed test must not leave calls to the next one
            await engine.delete(call)
        m.close()
        engine.close()


@pytest.fixture
async def phones() -> AsyncIterator[tuple[Peer, Peer]]:
    customer, agent = await open_peer(CUSTOMER_PORT), await open_peer(AGENT_PORT)
    yield customer, agent
    customer.close()
    agent.close()


async def connect(
    media: Media, call_id: str, leg_id: str, customer_pt: int = 8, agent_pt: int = 8
) -> tuple[int, int]:
    """Dial the customer and the agent's phone (offer, far end answers); rtpengine's two outer ports."""
    offer_c = await media.customer_offer(call_id)
    await media.customer_answered(call_id, phone_sdp(CUSTOMER_PORT, customer_pt))
    offer_a = await media.agent_offer(leg_id)
    await media.agent_answered(leg_id, phone_sdp(AGENT_PORT, agent_pt))
    return sdp_audio_port(offer_c), sdp_audio_port(offer_a)


# ---------------------------------------------------------------------------------------------- tests


async def test_ping_and_process_log(rtpengine: RtpengineProcess) -> None:
    engine = RtpEngine(HOST, NG_PORT)
    try:
        assert await engine.ping()
    finally:
        engine.close()
    assert "Startup complete" in rtpengine.log_text()


async def test_offer_points_the_carrier_at_rtpengine(media: Media) -> None:
    sdp = await media.customer_offer("offer1")
    port = sdp_audio_port(sdp)
    assert RTP_MIN <= port <= RTP_MAX
    assert f"c=IN IP4 {HOST}" in sdp and "PCMA/8000" in sdp and "telephone-event/8000" in sdp
    assert await media.leftover() == ["c-offer1"]
    await media.release_customer("offer1")
    assert await media.leftover() == []


async def test_own_placeholder_sink_swallows_unbridged_audio(
    rtpengine: RtpengineProcess, phones: tuple[Peer, Peer]
) -> None:
    customer, _ = phones
    engine = RtpEngine(HOST, NG_PORT)
    media = Media(engine, rtpengine.recording_dir, sink_port=SINK_PORT + 2)  # binds its own sink
    await media.start()
    try:
        assert media.placeholder == (HOST, SINK_PORT + 2)
        cust_port = sdp_audio_port(await media.customer_offer("call0"))
        await media.customer_answered("call0", phone_sdp(CUSTOMER_PORT, 8))
        await send_stream(customer, cust_port, 8, 0x1111, payloads(0, 5))
        for _ in range(200):  # the sink only counts: look until the 5 packets are there (2 s at most)
            if media.placeholder_packets >= 5:
                break
            await asyncio.sleep(0.01)
        assert media.placeholder_packets == 5
        assert customer.pending() == 0
        await media.release_customer("call0")
        assert await media.leftover() == []
    finally:
        media.close()
        engine.close()


async def test_bridge_relays_both_ways_byte_for_byte(
    media: Media, phones: tuple[Peer, Peer], sink: Peer
) -> None:
    customer, agent = phones
    cust_port, agent_port = await connect(media, "call1", "leg1")

    # before the bridge each side's audio goes to the placeholder only
    await send_stream(customer, cust_port, 8, 0x1111, payloads(1, 3))
    await sink.recv(3)
    assert agent.pending() == 0

    t0 = time.perf_counter()
    await media.bridge("call1", "leg1")
    print(f"\nbridge: {(time.perf_counter() - t0) * 1000:.2f} ms")

    from_customer, from_agent = payloads(2, 10), payloads(3, 10)
    await asyncio.gather(
        send_stream(customer, cust_port, 8, 0x1111, from_customer),
        send_stream(agent, agent_port, 8, 0x2222, from_agent),
    )
    at_agent = await agent.recv(10)
    at_customer = await customer.recv(10)
    assert [d[12:] for d, _ in at_agent] == from_customer
    assert [d[12:] for d, _ in at_customer] == from_agent
    # each phone hears from the very port it was given in the INVITE's SDP: no re-INVITE needed
    assert {addr for _, addr in at_agent} == {(HOST, agent_port)}
    assert {addr for _, addr in at_customer} == {(HOST, cust_port)}
    assert sink.pending() == 0

    await media.release_customer("call1")
    await media.release_agent("leg1")
    assert await media.leftover() == []
    stats = await media.engine.statistics()
    interfaces = stats["interfaces"]
    assert isinstance(interfaces, list) and isinstance(interfaces[0], dict)
    ports = interfaces[0]["ports"]
    assert isinstance(ports, dict) and ports["used"] == 0  # every port freed


async def test_bridge_transcodes_pcma_to_pcmu(media: Media, phones: tuple[Peer, Peer]) -> None:
    customer, agent = phones
    cust_port, agent_port = await connect(media, "call2", "leg2", customer_pt=8, agent_pt=0)
    await media.bridge("call2", "leg2")
    await asyncio.gather(
        send_stream(customer, cust_port, 8, 0x1111, [b"\xd5" * 160] * 5),
        send_stream(agent, agent_port, 0, 0x2222, [b"\xff" * 160] * 5),
    )
    at_agent, at_customer = await agent.recv(5), await customer.recv(5)
    assert {d[1] & 0x7F for d, _ in at_agent} == {0}  # the agent's phone gets PCMU
    assert {d[1] & 0x7F for d, _ in at_customer} == {8}  # the carrier gets PCMA
    assert all(len(d) == 172 for d, _ in at_agent + at_customer)
    await media.release_customer("call2")
    await media.release_agent("leg2")
    assert await media.leftover() == []


async def test_unbridge_silences_and_the_agent_leg_stays_up(
    media: Media, phones: tuple[Peer, Peer], sink: Peer
) -> None:
    customer, agent = phones
    cust_port, agent_port = await connect(media, "call3", "leg3")
    await media.bridge("call3", "leg3")
    await send_stream(customer, cust_port, 8, 0x1111, payloads(4, 2))
    await agent.recv(2)

    await media.unbridge("call3", "leg3")
    await asyncio.gather(
        send_stream(customer, cust_port, 8, 0x1111, payloads(5, 5)),
        send_stream(agent, agent_port, 8, 0x2222, payloads(6, 5)),
    )
    got = await sink.recv(10)  # both went to the placeholder ...
    assert sorted(d[12:] for d, _ in got) == sorted(payloads(5, 5) + payloads(6, 5))
    assert agent.pending() == 0 and customer.pending() == 0  # ... and neither party heard the other

    await media.release_customer("call3")
    assert await media.leftover() == ["a-leg3"]
    assert await media.agent_leg_alive("leg3")
    # the agent's phone keeps sending to the same port: still relayed (to the placeholder), nothing back
    await send_stream(agent, agent_port, 8, 0x2222, payloads(7, 3))
    assert [d[12:] for d, _ in await sink.recv(3)] == payloads(7, 3)
    assert agent.pending() == 0

    # a new customer call is bridged to the same agent leg, same phone port
    cust_port2 = sdp_audio_port(await media.customer_offer("call4"))
    await media.customer_answered("call4", phone_sdp(CUSTOMER_PORT, 8))
    await media.bridge("call4", "leg3")
    await send_stream(customer, cust_port2, 8, 0x3333, payloads(8, 3))
    assert [d[12:] for d, _ in await agent.recv(3)] == payloads(8, 3)

    # releasing a bridged customer puts the agent back on the placeholder by itself
    await media.release_customer("call4")
    await send_stream(agent, agent_port, 8, 0x2222, payloads(9, 2))
    assert [d[12:] for d, _ in await sink.recv(2)] == payloads(9, 2)

    await media.release_agent("leg3")
    assert await media.leftover() == []
    assert not await media.agent_leg_alive("leg3")


async def test_play_reaches_the_customer(media: Media, phones: tuple[Peer, Peer], tmp_path: Path) -> None:
    customer, agent = phones
    prompt = tmp_path / "hello.wav"
    render_prompt(prompt)
    cust_port, _ = await connect(media, "call5", "leg5")

    t0 = time.perf_counter()
    duration_ms = await media.play("call5", prompt)
    first = await customer.recv(1)
    print(f"\nplay: first packet at the customer {(time.perf_counter() - t0) * 1000:.1f} ms")
    assert duration_ms > 200
    expected = duration_ms // 20
    rest = await customer.recv(expected - 5, timeout=duration_ms / 1000 + 5)
    packets = [d for d, _ in first + rest]
    assert {d[1] & 0x7F for d in packets} == {8}  # the negotiated PCMA
    assert all(len(d) == 12 + 160 for d in packets)  # 20 ms of G.711 each
    assert any(set(d[12:]) - {0xD5, 0x55} for d in packets)  # sound, not silence
    assert {addr for _, addr in first + rest} == {(HOST, cust_port)}
    assert agent.pending() == 0  # only the customer hears it

    await media.bridge("call5", "leg5")
    with pytest.raises(MediaStateError):  # the agent's voice and a prompt at once: refused
        await media.play("call5", prompt)
    await media.release_customer("call5")
    await media.release_agent("leg5")
    assert await media.leftover() == []


async def test_dtmf_is_reported_with_who_pressed(media: Media, phones: tuple[Peer, Peer]) -> None:
    customer, agent = phones
    presses: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
    relayed: list[str] = []

    def on_dtmf(call_id: str, source_tag: str, digit: str) -> None:
        who = Media.who(source_tag)
        if who is None:
            relayed.append(source_tag)
        else:
            presses.put_nowait((who[0], who[1], digit))

    listener = DtmfListener(HOST, DTMF_PORT, on_dtmf)
    await listener.start()
    try:
        cust_port, agent_port = await connect(media, "call6", "leg6")
        # not bridged yet: the customer presses 5
        await send_dtmf(customer, cust_port, 0x1111, 5, 10)
        assert await asyncio.wait_for(presses.get(), 5) == ("customer", "call6", "5")

        await media.bridge("call6", "leg6")
        await send_dtmf(agent, agent_port, 0x2222, 10, 20)  # the agent presses *
        assert await asyncio.wait_for(presses.get(), 5) == ("agent", "leg6", "*")
        await send_dtmf(customer, cust_port, 0x1111, 11, 30)  # the customer presses #
        assert await asyncio.wait_for(presses.get(), 5) == ("customer", "call6", "#")
        await send_dtmf(customer, cust_port, 0x1111, 13, 40)  # ... and B
        assert await asyncio.wait_for(presses.get(), 5) == ("customer", "call6", "B")
        # the bridged digits also crossed to the other phone, and were logged there under inner tags only
        assert "ci-call6" in relayed  # the agent's * as it entered the customer's call
        assert set(relayed) <= {"ci-call6", "ai-leg6"}
        assert any(d[1] & 0x7F == 101 for d, _ in await agent.recv(agent.pending()))
    finally:
        listener.close()
    await media.release_customer("call6")
    await media.release_agent("leg6")
    assert await media.leftover() == []


async def test_recording_writes_a_pcap_of_both_parties(
    media: Media, phones: tuple[Peer, Peer], rtpengine: RtpengineProcess
) -> None:
    customer, agent = phones
    cust_port, agent_port = await connect(media, "call7", "leg7")
    await media.bridge("call7", "leg7")

    path = await media.start_recording("call7")
    assert path.parent == rtpengine.recording_dir / "pcaps"
    assert path.name.startswith("c-call7-") and path.exists()
    from_customer, from_agent = payloads(10, 5), payloads(11, 5)
    await asyncio.gather(
        send_stream(customer, cust_port, 8, 0x1111, from_customer),
        send_stream(agent, agent_port, 8, 0x2222, from_agent),
    )
    await agent.recv(5)
    await customer.recv(5)
    assert await media.stop_recording("call7") == path

    recorded = [p[12:] for p in pcap_udp_payloads(path)]
    assert all(p in recorded for p in from_customer)
    assert all(p in recorded for p in from_agent)
    await media.release_customer("call7")
    await media.release_agent("leg7")
    assert await media.leftover() == []


async def test_errors_and_unknown_calls(media: Media) -> None:
    with pytest.raises(RtpEngineError) as err:
        await media.engine.query("c-no-such-call")
    assert err.value.unknown_call
    assert not await media.agent_leg_alive("no-such-leg")
    await media.release_customer("never-dialled")  # nothing to free: no error


async def test_fail_closed_when_nothing_listens() -> None:
    engine = RtpEngine(HOST, CLOSED_PORT, timeout_s=5.0)
    try:
        assert not await engine.ping()
        with pytest.raises(RtpEngineUnavailable):  # ICMP port unreachable: at once, not after 2 x 5 s
            await asyncio.wait_for(engine.offer("c-x", "ci-x", phone_sdp(SINK_PORT, 8)), 4.0)
    finally:
        engine.close()


async def test_silent_rtpengine_gets_one_retransmission_then_unavailable() -> None:
    silent = await open_peer(SILENT_PORT)
    engine = RtpEngine(HOST, SILENT_PORT, timeout_s=0.2)
    try:
        with pytest.raises(RtpEngineUnavailable):
            await engine.query("c-x")
        sent = await silent.recv(2)
        assert sent[0][0] == sent[1][0]  # the same cookie: rtpengine would answer it from its cache
        assert sent[0][0].split(b" ", 1)[1].startswith(b"d")
        assert silent.pending() == 0
    finally:
        engine.close()
        silent.close()


async def test_a_killed_rtpengine_is_noticed(tmp_path: Path) -> None:
    proc = start_rtpengine(41910, 41911, 41400, 41499, tmp_path / "rec", log_path=tmp_path / "r.log")
    engine = RtpEngine(HOST, 41910, timeout_s=0.5)
    try:
        assert await engine.ping()
        proc.kill()
        assert proc.proc.returncode is not None
        with pytest.raises(RtpEngineUnavailable):
            await engine.offer("c-y", "ci-y", phone_sdp(SINK_PORT, 8))
    finally:
        engine.close()
        proc.stop()


async def test_early_media_then_answer_from_another_port(
    media: Media, phones: tuple[Peer, Peer], sink: Peer
) -> None:
    """A 183 with SDP (early media: ringback, announcements) and then a 200 OK whose SDP names another
    port: the customer's media follows the latest answer, and a bridge made during early media holds."""
    customer, agent = phones
    answer_peer = await open_peer(CUSTOMER_PORT + 20)
    try:
        cust_port = sdp_audio_port(await media.customer_offer("call8"))
        await media.customer_answered("call8", phone_sdp(CUSTOMER_PORT, 8))  # 183
        agent_port = sdp_audio_port(await media.agent_offer("leg8"))
        await media.agent_answered("leg8", phone_sdp(AGENT_PORT, 8))
        await media.bridge("call8", "leg8")
        await send_stream(customer, cust_port, 8, 0x1111, payloads(12, 3))  # the ringback
        assert [d[12:] for d, _ in await agent.recv(3)] == payloads(12, 3)

        await media.customer_answered("call8", phone_sdp(CUSTOMER_PORT + 20, 8))  # 200 OK
        await asyncio.gather(
            send_stream(answer_peer, cust_port, 8, 0x4444, payloads(13, 3)),
            send_stream(agent, agent_port, 8, 0x2222, payloads(14, 3)),
        )
        assert [d[12:] for d, _ in await agent.recv(3)] == payloads(13, 3)
        assert [d[12:] for d, _ in await answer_peer.recv(3)] == payloads(14, 3)
        assert customer.pending() == 0 and sink.pending() == 0
    finally:
        answer_peer.close()
    await media.release_customer("call8")
    await media.release_agent("leg8")
    assert await media.leftover() == []
