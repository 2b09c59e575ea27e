"""The gateway's independent SIP peers, tested against each other: SIPp UAC -> each shipped SIPp UAS scenario,
and SIPp -> baresip. Real processes on loopback, ports in 42000-42999; RTP is counted on Python UDP sockets
standing in for the far media end. Skipped only when the binary is missing.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from outdial.gateway.peers import (
    Baresip,
    SipMessage,
    SippError,
    SippUac,
    SippUas,
    parse_messages,
    scenario_keys,
)
from outdial.gateway.peers.sipp import SCENARIO_DIR
from tests.tools import needs, unavailable

needs_sipp = needs("sipp")
needs_baresip = needs("baresip")

# SIP ports 42000-42499, media 42500-42999 (SIPp binds -mp and -mp+2: keep 4 apart).
_sip_ports = itertools.count(42100, 2)
_media_ports = itertools.count(42600, 8)


@dataclass
class Ports:
    def sip(self) -> int:
        return next(_sip_ports)

    def media(self) -> int:
        return next(_media_ports)


@dataclass
class RtpSink:
    """A UDP socket that records every RTP packet: (arrival time, payload type, first payload bytes)."""

    port: int
    packets: list[tuple[float, int, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(2048)
            except TimeoutError:
                continue
            if len(data) >= 12 and data[0] >> 6 == 2:
                self.packets.append((time.time(), data[1] & 0x7F, data[12:16]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def of_type(self, pt: int) -> list[tuple[float, int, bytes]]:
        return [p for p in self.packets if p[1] == pt]


Peers = list[SippUas | SippUac | Baresip | RtpSink]


@pytest.fixture
def peers() -> Iterator[Peers]:
    """Everything a test starts goes in here and is stopped (and reaped) at teardown, even on failure."""
    started: Peers = []
    yield started
    for p in reversed(started):
        if isinstance(p, RtpSink):
            p.close()
        else:
            p.stop()


@pytest.fixture
def ports() -> Ports:
    return Ports()


def uas(peers: Peers, tmp_path: Path, scenario: str, ports: Ports, **kw: Any) -> SippUas:
    p = SippUas(scenario, ports.sip(), ports.media(), trace_dir=tmp_path / "uas", **kw)
    peers.append(p)
    return p.start()


def uac(peers: Peers, tmp_path: Path, target: SippUas | str, ports: Ports, **kw: Any) -> SippUac:
    dest = target if isinstance(target, str) else target.uri_host
    p = SippUac(dest, ports.sip(), ports.media(), trace_dir=tmp_path / f"uac{len(peers)}", **kw)
    peers.append(p)
    return p.start()


def sink(peers: Peers, ports: Ports) -> RtpSink:
    s = RtpSink(ports.media())
    peers.append(s)
    return s


def final_status(msgs: list[SipMessage]) -> int | None:
    """The final response the caller got to its (last) INVITE."""
    finals = [
        m.status for m in msgs if m.direction == "in" and m.method == "INVITE" and (m.status or 0) >= 200
    ]
    return finals[-1] if finals else None


def dtmf_events(rtp: RtpSink) -> set[int]:
    return {payload[0] for _, pt, payload in rtp.of_type(101)}


# -- the trace parser, on a fixed text --------------------------------------------------------------------
TRACE = (
    "----------------------------------------------- 2026-11-30 22:15:17.833966\n"
    "UDP message received [514] bytes :\n\n"
    "INVITE sip:service@127.0.0.1:42010 SIP/2.0\n"
    "Via: SIP/2.0/UDP 127.0.0.1:42011;branch=z9hG4bK-1\n"
    "f: <sip:+12025550100@127.0.0.1>;tag=1\n"
    "P-Asserted-Identity: <sip:+12025550100@127.0.0.1>\n"
    "CSeq: 1 INVITE\n"
    "Content-Length: 3\n\n"
    "v=0\n\n"
    "----------------------------------------------- 2026-11-30 22:15:19.333966\n"
    "UDP message sent (313 bytes):\n\n"
    "SIP/2.0 180 Ringing\n"
    "CSeq: 1 INVITE\n"
    "Content-Length: 0\n\n"
)


def test_trace_parser_reads_direction_time_headers_and_body() -> None:
    invite, ringing = parse_messages(TRACE)
    assert (invite.direction, invite.method, invite.status) == ("in", "INVITE", None)
    assert invite.headers["From"] == "<sip:+12025550100@127.0.0.1>;tag=1"  # compact form expanded
    assert invite.header("p-asserted-identity") == "<sip:+12025550100@127.0.0.1>"
    assert invite.body == "v=0"
    assert (ringing.direction, ringing.status, ringing.method) == ("out", 180, "INVITE")
    assert ringing.timestamp - invite.timestamp == pytest.approx(1.5)


def test_every_scenario_documents_its_keys() -> None:
    names = sorted(p.stem for p in SCENARIO_DIR.glob("*.xml"))
    assert {
        "answer_speech",
        "busy",
        "unavailable",
        "invalid",
        "ring_forever",
        "opt_out",
        "early_media",
    } <= set(names)
    assert {
        "digest_401",
        "caller_id_check",
        "carrier",
        "agent_phone",
        "agent_phone_star",
        "register_ok",
    } <= set(names)
    for name in names:
        text = (SCENARIO_DIR / f"{name}.xml").read_text(encoding="iso-8859-1")
        used = {k for k in scenario_keys(name) if f"[{k}]" in text}
        assert used == set(scenario_keys(name)), name  # every documented key is used, with a default
    assert scenario_keys("carrier")["p_live"] == "0.25"


@needs_sipp
def test_start_reports_a_taken_media_port(tmp_path: Path, ports: Ports) -> None:
    taken = ports.media()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", taken))
        peer = SippUas("busy", ports.sip(), taken, trace_dir=tmp_path)
        with pytest.raises(SippError, match="Unable to bind audio RTP socket"):
            peer.start()
    assert not peer.running


# -- SIPp UAC -> SIPp UAS -------------------------------------------------------------------------------
@needs_sipp
@pytest.mark.parametrize(("scenario", "status"), [("busy", 486), ("unavailable", 503), ("invalid", 404)])
def test_rejecting_callee_gives_its_final_status(
    peers: Peers, tmp_path: Path, ports: Ports, scenario: str, status: int
) -> None:
    callee = uas(peers, tmp_path, scenario, ports, calls=1)
    caller = uac(peers, tmp_path, callee, ports, calls=1)
    assert caller.wait(20) == 0, caller.failure_text()
    assert callee.wait(10) == 0, callee.failure_text()
    assert final_status(caller.messages()) == status
    acks = [m for m in callee.messages() if m.direction == "in" and m.method == "ACK"]
    assert len(acks) == 1  # the caller's ACK of the failure reached the callee's transaction


@needs_sipp
def test_ring_forever_is_cancelled_with_487_and_the_trace_times_the_cancel(
    peers: Peers, tmp_path: Path, ports: Ports
) -> None:
    callee = uas(peers, tmp_path, "ring_forever", ports, calls=1)
    caller = uac(peers, tmp_path, callee, ports, keys={"ring_ms": "1500"})
    assert caller.wait(20) == 0, caller.failure_text()
    assert callee.wait(10) == 0, callee.failure_text()
    seen = callee.messages()
    invite = next(m for m in seen if m.direction == "in" and m.first_line.startswith("INVITE"))
    cancel = next(m for m in seen if m.direction == "in" and m.first_line.startswith("CANCEL"))
    ringing = next(m for m in seen if m.direction == "out" and m.status == 180)
    terminated = next(m for m in seen if m.direction == "out" and m.status == 487)
    assert cancel.timestamp - invite.timestamp >= 1.4  # the caller's ring timer, read off the wire
    assert terminated.header("CSeq") == "1 INVITE"
    assert terminated.header("To") == ringing.header("To")  # same To tag as the 180
    assert any(m.status == 200 and m.method == "CANCEL" for m in seen if m.direction == "out")
    assert final_status(caller.messages()) == 487


@needs_sipp
def test_answer_speech_answers_with_pcma_and_streams_rtp_until_the_callers_bye(
    peers: Peers, tmp_path: Path, ports: Ports
) -> None:
    rtp = sink(peers, ports)
    callee = uas(peers, tmp_path, "answer_speech", ports, calls=1)
    caller = uac(peers, tmp_path, callee, ports, keys={"hold_ms": "2000", "sdp_port": str(rtp.port)})
    assert caller.wait(20) == 0, caller.failure_text()
    assert callee.wait(10) == 0, callee.failure_text()
    got = caller.messages()
    ok = next(m for m in got if m.direction == "in" and m.status == 200 and m.method == "INVITE")
    assert "a=rtpmap:8 PCMA/8000" in ok.body and "telephone-event" in ok.body
    assert len(rtp.of_type(8)) > 30  # ~66 packets of 30 ms in 2 s
    assert [m.first_line.split()[0] for m in callee.messages() if m.direction == "in"][-1] == "BYE"


@needs_sipp
def test_answer_speech_hangs_up_itself_after_talk_ms(peers: Peers, tmp_path: Path, ports: Ports) -> None:
    callee = uas(peers, tmp_path, "answer_speech", ports, calls=1, keys={"talk_ms": "1000"})
    caller = uac(peers, tmp_path, callee, ports, keys={"hold_ms": "30000"})
    assert caller.wait(20) == 0, caller.failure_text()
    assert callee.wait(10) == 0
    sent = callee.messages()
    ack = next(m for m in sent if m.direction == "in" and m.method == "ACK")
    bye = next(m for m in sent if m.direction == "out" and m.first_line.startswith("BYE"))
    assert bye.timestamp - ack.timestamp >= 0.9
    assert any(m.status == 200 and m.method == "BYE" for m in sent if m.direction == "in")


@needs_sipp
def test_early_media_plays_before_the_200(peers: Peers, tmp_path: Path, ports: Ports) -> None:
    rtp = sink(peers, ports)
    callee = uas(peers, tmp_path, "early_media", ports, calls=1, keys={"early_ms": "1500"})
    caller = uac(peers, tmp_path, callee, ports, keys={"hold_ms": "500", "sdp_port": str(rtp.port)})
    assert caller.wait(20) == 0, caller.failure_text()
    got = caller.messages()
    progress = next(m for m in got if m.status == 183)
    ok = next(m for m in got if m.status == 200 and m.method == "INVITE")
    assert "m=audio" in progress.body
    early = [p for p in rtp.of_type(8) if p[0] < ok.timestamp]
    assert len(early) > 20  # 1.5 s of early media at 30 ms


@needs_sipp
def test_opt_out_presses_the_configured_key_then_waits_for_our_bye(
    peers: Peers, tmp_path: Path, ports: Ports
) -> None:
    rtp = sink(peers, ports)
    callee = uas(peers, tmp_path, "opt_out", ports, calls=1, digit="7", keys={"dtmf_after_ms": "500"})
    caller = uac(peers, tmp_path, callee, ports, keys={"hold_ms": "2000", "sdp_port": str(rtp.port)})
    assert caller.wait(20) == 0, caller.failure_text()
    assert callee.wait(10) == 0, callee.failure_text()
    assert dtmf_events(rtp) == {7}
    assert not any(m.first_line.startswith("BYE") for m in callee.messages() if m.direction == "out")


@needs_sipp
def test_digest_401_admits_the_right_password_and_refuses_a_wrong_one(
    peers: Peers, tmp_path: Path, ports: Ports
) -> None:
    keys = {"auth_user": "trunk1", "auth_pass": "s3cret", "talk_ms": "-1"}
    callee = uas(peers, tmp_path, "digest_401", ports, calls=2, keys=keys)
    good = uac(
        peers, tmp_path, callee, ports, auth_user="trunk1", auth_password="s3cret", keys={"hold_ms": "300"}
    )
    assert good.wait(20) == 0, good.failure_text()
    got = good.messages()
    assert [m.status for m in got if m.direction == "in" and (m.status or 0) >= 200][:2] == [401, 200]
    second = [m for m in got if m.direction == "out" and m.first_line.startswith("INVITE")][1]
    assert (second.header("Authorization") or "").startswith("Digest ")
    bad = uac(peers, tmp_path, callee, ports, auth_user="trunk1", auth_password="wrong")
    assert bad.wait(20) == 0, bad.failure_text()
    assert final_status(bad.messages()) == 403
    assert callee.wait(10) == 1  # one call refused: SIPp counts it failed
    stats = callee.stats()
    assert stats is not None and (stats.successful, stats.failed) == (1, 1)


@needs_sipp
def test_caller_id_check_passes_with_from_and_pai_and_fails_without_pai(
    peers: Peers, tmp_path: Path, ports: Ports
) -> None:
    number = "+12025550199"
    keys = {"expect_from": number, "expect_pai": number, "talk_ms": "-1"}
    ok_callee = uas(peers, tmp_path / "ok", "caller_id_check", ports, calls=1, keys=keys)
    pai = f"P-Asserted-Identity: <sip:{number}@127.0.0.1>"
    ok_caller = uac(
        peers, tmp_path, ok_callee, ports, keys={"from_user": number, "extra_header": pai, "hold_ms": "200"}
    )
    assert ok_caller.wait(20) == 0
    assert ok_callee.wait(10) == 0, ok_callee.failure_text()

    bad_callee = uas(peers, tmp_path / "bad", "caller_id_check", ports, calls=1, keys=keys)
    bad_caller = uac(peers, tmp_path, bad_callee, ports, keys={"from_user": number, "hold_ms": "200"})
    assert bad_caller.wait(20) == 0
    assert bad_callee.wait(10) == 1
    stats = bad_callee.stats()
    assert stats is not None and stats.failed == 1
    assert "P-Asserted-Identity" in bad_callee.errors()

    wrong_callee = uas(peers, tmp_path / "wrong", "caller_id_check", ports, calls=1, keys=keys)
    wrong_pai = "P-Asserted-Identity: <sip:+12025550000@127.0.0.1>"
    wrong_caller = uac(
        peers,
        tmp_path,
        wrong_callee,
        ports,
        keys={"from_user": number, "extra_header": wrong_pai, "hold_ms": "200"},
    )
    assert wrong_caller.wait(20) == 0
    assert wrong_callee.wait(10) == 1


@needs_sipp
def test_carrier_mix_over_200_calls(peers: Peers, tmp_path: Path, ports: Ports) -> None:
    fast = {
        "answer_mean_ms": "100",
        "talk_mean_ms": "300",
        "machine_ms": "300",
        "busy_after_ms": "100",
        "failed_after_ms": "50",
    }
    carrier = uas(peers, tmp_path, "carrier", ports, keys=fast)
    caller = uac(
        peers,
        tmp_path,
        carrier,
        ports,
        calls=200,
        rate=50,
        limit=200,
        keys={"ring_ms": "2000", "hold_ms": "1000"},
    )
    assert caller.wait(60) == 0, caller.failure_text()
    outcomes = carrier.outcomes()
    assert sum(outcomes.values()) == 200
    assert set(outcomes) == {"live", "machine", "busy", "failed", "no_answer"}
    answered = (outcomes["live"] + outcomes["machine"]) / 200
    assert 0.25 <= answered <= 0.55  # configured 0.40; ~4 sd either side at n=200
    # What the callers saw on the wire matches what the carrier drew, call by call.
    finals = [
        m.status
        for m in caller.messages()
        if m.direction == "in" and m.method == "INVITE" and (m.status or 0) >= 200
    ]
    assert finals.count(200) == outcomes["live"] + outcomes["machine"]
    assert finals.count(486) == outcomes["busy"]
    assert finals.count(503) == outcomes["failed"]
    assert finals.count(487) == outcomes["no_answer"]
    assert carrier.stop() == 0  # SIGTERM: final statistics written
    stats = carrier.stats()
    assert stats is not None and (stats.successful, stats.failed, stats.current) == (200, 0, 0)


@needs_sipp
@pytest.mark.parametrize(
    "draw",
    [
        {"p_live": "1", "answer_mean_ms": "20000"},  # CANCEL while a person is about to answer
        {"p_live": "0", "p_machine": "1", "answer_mean_ms": "20000"},
        {"p_live": "0", "p_busy": "1", "busy_after_ms": "20000"},  # before the 486
        {"p_live": "0", "p_failed": "1", "failed_after_ms": "20000"},  # before the 503
        {"p_live": "0", "ring_max_ms": "20000"},  # plain ringing
    ],
)
def test_carrier_answers_a_cancel_wherever_it_arrives(
    peers: Peers, tmp_path: Path, ports: Ports, draw: dict[str, str]
) -> None:
    carrier = uas(peers, tmp_path, "carrier", ports, keys=draw)
    caller = uac(peers, tmp_path, carrier, ports, keys={"ring_ms": "400"})
    assert caller.wait(20) == 0, caller.failure_text()
    assert final_status(caller.messages()) == 487
    assert carrier.stop() == 0
    stats = carrier.stats()
    assert stats is not None and (stats.successful, stats.failed, stats.current) == (1, 0, 0)


class RawCaller:
    """A hand-driven caller on a UDP socket, to produce the races SIPp's UAC cannot: a CANCEL crossing the
    200 OK, a BYE crossing the callee's BYE."""

    def __init__(self, port: int, target: SippUas, call_id: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(5)
        self.port, self.dest, self.call_id = port, ("127.0.0.1", target.port), call_id
        self.uri = f"sip:15550002@127.0.0.1:{target.port}"
        self.to = f"<{self.uri}>"

    def send(self, method: str, cseq: int, branch: str, body: str = "") -> None:
        lines = [
            f"{method} {self.uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{branch}",
            f"From: <sip:15550001@127.0.0.1:{self.port}>;tag=raw1",
            f"To: {self.to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:15550001@127.0.0.1:{self.port}>",
            "Max-Forwards: 70",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body)}", "", body]
        self.sock.sendto("\r\n".join(lines).encode(), self.dest)

    def recv(self) -> SipMessage:
        data = self.sock.recv(4096).decode()
        stamp = "2026-01-01 00:00:00.000000"
        return parse_messages(f"{'-' * 47} {stamp}\nUDP message received [1] bytes :\n\n{data}")[0]

    def recv_until(self, pred: Callable[[SipMessage], bool]) -> SipMessage:
        while True:
            msg = self.recv()
            if pred(msg):
                return msg

    def close(self) -> None:
        self.sock.close()


OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\n"
)


@needs_sipp
def test_carrier_survives_a_cancel_crossing_its_200_and_a_bye_crossing_its_bye(
    peers: Peers, tmp_path: Path, ports: Ports
) -> None:
    rtp = sink(peers, ports)
    carrier = uas(
        peers, tmp_path, "carrier", ports, keys={"p_live": "1", "answer_mean_ms": "1", "talk_mean_ms": "1"}
    )
    # 1) CANCEL sent after the 200 OK left the carrier: only 200 (CANCEL); the dialog goes on; our BYE ends it.
    a = RawCaller(ports.sip(), carrier, "cross-cancel@test")
    try:
        a.send("INVITE", 1, "inv1", OFFER.format(port=rtp.port))
        ok = a.recv_until(lambda m: m.status == 200 and m.method == "INVITE")
        a.send("CANCEL", 1, "inv1")
        a.to = ok.header("To") or ""
        a.send("ACK", 1, "ack1")  # right behind the CANCEL, as a caller ACKs a 200 at once
        assert a.recv_until(lambda m: m.status is not None and m.method == "CANCEL").status == 200
        a.send("BYE", 2, "bye1")
        bye_ok = a.recv_until(lambda m: m.method == "BYE")  # the carrier's own BYE may cross ours
        assert bye_ok.status in (200, None)
    finally:
        a.close()
    # 2) The carrier hangs up at once (talk ~ 1 ms): our BYE crosses its BYE; both dialogs close.
    b = RawCaller(ports.sip(), carrier, "cross-bye@test")
    try:
        b.send("INVITE", 1, "inv2", OFFER.format(port=rtp.port))
        ok = b.recv_until(lambda m: m.status == 200 and m.method == "INVITE")
        b.to = ok.header("To") or ""
        b.send("ACK", 1, "ack2")
        their_bye = b.recv_until(lambda m: m.first_line.startswith("BYE"))
        b.send("BYE", 2, "bye2")  # crossing: sent before answering theirs
        assert b.recv_until(lambda m: m.method == "BYE" and m.status is not None).status == 200
        assert their_bye.call_id == "cross-bye@test"
    finally:
        b.close()
    deadline = time.monotonic() + 10
    while (st := carrier.stats()) is None or st.successful + st.failed < 2:
        assert time.monotonic() < deadline, carrier.failure_text()
        time.sleep(0.2)
    assert carrier.stop() == 0, carrier.failure_text()
    stats = carrier.stats()
    assert stats is not None and (stats.successful, stats.failed, stats.current) == (2, 0, 0)


@needs_sipp
def test_agent_phone_answers_concurrent_calls_on_one_port_and_streams_past_the_pcap_length(
    peers: Peers, tmp_path: Path, ports: Ports
) -> None:
    rtp = sink(peers, ports)
    phone = uas(peers, tmp_path, "agent_phone", ports)
    calls = uac(
        peers,
        tmp_path,
        phone,
        ports,
        calls=2,
        rate=10,
        service="agent7",
        keys={"hold_ms": "8500", "sdp_port": str(rtp.port)},
    )
    assert calls.wait(30) == 0, calls.failure_text()
    speech = rtp.of_type(8)
    assert len(speech) > 2 * 200  # two calls x 8.5 s at 30 ms
    assert speech[-1][0] - speech[0][0] > 8.0  # the 7 s pcap was restarted
    seen = phone.messages()
    assert sum(1 for m in seen if m.direction == "out" and m.status == 200 and m.method == "INVITE") == 2
    assert not any(m.first_line.startswith("BYE") for m in seen if m.direction == "out")  # only we hang up
    assert phone.stop() == 0
    stats = phone.stats()
    assert stats is not None and (stats.successful, stats.failed) == (2, 0)


@needs_sipp
def test_agent_phone_star_presses_star_and_stays_up(peers: Peers, tmp_path: Path, ports: Ports) -> None:
    rtp = sink(peers, ports)
    phone = uas(peers, tmp_path, "agent_phone_star", ports, keys={"star_after_ms": "1000"})
    call = uac(peers, tmp_path, phone, ports, keys={"hold_ms": "3000", "sdp_port": str(rtp.port)})
    assert call.wait(20) == 0, call.failure_text()
    assert dtmf_events(rtp) == {10}  # RFC 4733 event 10 is *
    star_at = rtp.of_type(101)[0][0]
    assert any(t > star_at + 0.5 for t, _, _ in rtp.of_type(8))  # speech resumed after the key press
    assert not any(m.first_line.startswith("BYE") for m in phone.messages() if m.direction == "out")


# -- SIPp -> baresip -----------------------------------------------------------------------------------
@needs_sipp
@needs_baresip
def test_baresip_registers_with_a_registrar_and_auto_answers(
    peers: Peers, tmp_path: Path, ports: Ports
) -> None:
    registrar = uas(peers, tmp_path, "register_ok", ports)
    heard = tmp_path / "heard.wav"
    phone = Baresip(
        "agent1",
        "pw",
        registrar.uri_host,
        ports.sip(),
        tmp_path / "baresip",
        capture_wav=heard,
        rtp_ports=(42990, 42999),
    )
    peers.append(phone)
    config = (phone.write_config() / "config").read_text()
    assert "net_interface 127.0.0.1" in config and "sip_listen 127.0.0.1:" in config
    assert "answermode=auto" in (tmp_path / "baresip" / "accounts").read_text()
    phone.start()
    assert phone.wait_registered(10), phone.log()[-2000:]
    register = next(m for m in registrar.messages() if m.first_line.startswith("REGISTER"))
    assert "agent1" in (register.header("Contact") or "")

    rtp = sink(peers, ports)
    caller = uac(
        peers,
        tmp_path,
        f"127.0.0.1:{phone.listen_port}",
        ports,
        service="agent1",
        keys={"hold_ms": "1500", "sdp_port": str(rtp.port)},
    )
    assert caller.wait(20) == 0, caller.failure_text()
    assert final_status(caller.messages()) == 200
    assert len(rtp.of_type(8)) > 20  # its 8 kHz tone, as PCMA
    phone.stop()
    with wave.open(str(heard), "rb") as w:  # what it heard: the caller's speech pcap, decoded
        samples = struct.unpack(f"<{w.getnframes()}h", w.readframes(w.getnframes()))
    assert len(samples) > 8000 and max(abs(x) for x in samples) > 1000


@needs_baresip
def test_baresip_without_registrar_starts_and_does_not_register(tmp_path: Path, ports: Ports) -> None:
    phone = Baresip("agent2", "pw", None, ports.sip(), tmp_path / "b2")
    try:
        phone.start()
        assert phone.running
        time.sleep(0.3)
        assert not phone.registered()
        assert "regint=0" in (tmp_path / "b2" / "accounts").read_text()
    finally:
        assert phone.stop() is not None
    assert not phone.running


def test_dtmf_payload_event_of_the_shipped_pcaps() -> None:
    """The DTMF pcaps carry RFC 4733 events with payload type 101 (what our SDP answers announce)."""
    data = Path("/usr/share/sip-tester/dtmf_2833_star.pcap")
    if not data.exists():
        unavailable("the pcaps of Debian's sip-tester")
    raw = data.read_bytes()
    first = raw[24 + 16 :]  # global header, first record header
    rtp = first[14 + 20 + 8 :]  # ethernet, IPv4, UDP
    assert rtp[1] & 0x7F == 101 and rtp[12] == 10
    assert struct.unpack("!H", rtp[2:4])[0] > 0
