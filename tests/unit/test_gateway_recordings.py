"""Recordings: rtpengine's pcap files, summarised and decoded.

``tests/data/rtpengine_call.pcap`` was written by a real rtpengine 10.5 (Debian 12) driven by
:func:`record_call` below; regenerate it with ``PYTHONPATH=services python -m tests.unit.test_gateway_recordings``
(needs ``rtpengine`` on PATH, uses UDP ports 43000-43099 and 43900 on 127.0.0.1). The call: the caller sends
1 s of a 440 Hz tone as PCMU (sequence numbers and RTP timestamps wrapping during the call), the callee
0.8 s of a 660 Hz tone as PCMA with its 21st packet lost, both at 20 ms per packet.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outdial.gateway.recordings import (
    RecordingError,
    RecordingSummary,
    decode_alaw,
    decode_ulaw,
    summarise,
    to_wav,
)
from tests.tools import needs

FIXTURE = Path(__file__).parent.parent / "data" / "rtpengine_call.pcap"
CALLER_SSRC, CALLEE_SSRC = 0xA1A1A1A1, 0xB2B2B2B2
NG_PORT = 43900
RTP_PORT_MIN, RTP_PORT_MAX = 43000, 43099
needs_sox = needs("sox")
needs_rtpengine = needs("rtpengine")


# --- what a listener would notice in a decoded recording ------------------------------------------------


def read_wav(path: Path) -> tuple[int, int, npt.NDArray[np.int16]]:
    """(rate, bytes per sample, samples as frames x channels)."""
    with wave.open(str(path), "rb") as w:
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return w.getframerate(), w.getsampwidth(), frames.reshape(-1, w.getnchannels())


def dominant_hz(samples: npt.NDArray[np.int16], rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def longest_zero_run(samples: npt.NDArray[np.int16]) -> int:
    best = run = 0
    for is_zero in samples == 0:
        run = run + 1 if is_zero else 0
        best = max(best, run)
    return best


# --- the committed fixture, recorded by a real rtpengine ------------------------------------------------


def check_fixture_call(summary: RecordingSummary) -> None:
    streams = {s.ssrc: s for s in summary.streams}
    assert set(streams) == {CALLER_SSRC, CALLEE_SSRC}
    caller, callee = streams[CALLER_SSRC], streams[CALLEE_SSRC]
    assert (caller.payload_type, caller.packets, caller.payload_bytes, caller.lost) == (0, 50, 8000, 0)
    assert (callee.payload_type, callee.packets, callee.payload_bytes, callee.lost) == (8, 39, 6240, 1)
    assert (caller.duration_ms, callee.duration_ms) == (1000, 800)
    assert summary.duration_ms == 1000
    assert summary.other_packets == 0
    # rtpengine's ports: each party sends to its own one.
    assert caller.dst != callee.dst
    assert summary.started_at == min(caller.first_packet_at, callee.first_packet_at)


def test_summary_of_an_rtpengine_recording() -> None:
    summary = summarise(FIXTURE)
    assert summary.path == FIXTURE
    assert summary.sha256 == hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    check_fixture_call(summary)


def test_summarise_moves_the_pcap_into_the_kept_directory(tmp_path: Path) -> None:
    spool = tmp_path / "spool" / "pcaps"
    spool.mkdir(parents=True)
    written = spool / FIXTURE.name
    shutil.copy(FIXTURE, written)
    summary = summarise(written, out_dir=tmp_path / "kept")
    assert summary.path == tmp_path / "kept" / FIXTURE.name
    assert not written.exists()
    assert summary.sha256 == hashlib.sha256(summary.path.read_bytes()).hexdigest()
    assert summary.sha256 == hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    check_fixture_call(summary)


def test_a_pcap_cut_short_is_summarised_up_to_its_last_whole_packet(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    data = FIXTURE.read_bytes()
    cut.write_bytes(data[:-100])  # rtpengine killed while writing the last packet
    summary = summarise(cut)
    assert sum(s.packets for s in summary.streams) == 88
    assert summary.sha256 == hashlib.sha256(data[:-100]).hexdigest()


def test_a_file_that_is_not_a_pcap_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "x.pcap"
    bogus.write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(RecordingError, match="not a pcap"):
        summarise(bogus)


@needs_sox
def test_to_wav_puts_each_party_on_its_own_channel(tmp_path: Path) -> None:
    summary = summarise(FIXTURE)
    decoded = to_wav(FIXTURE, tmp_path / "call.wav")
    rate, width, frames = read_wav(decoded.path)
    assert (rate, width, frames.shape[1], decoded.channels) == (8000, 2, 2, 2)
    # As long as the longest stream (plus the few samples between the two parties' first packets).
    assert abs(len(frames) - summary.duration_ms * 8) <= 40
    assert decoded.duration_ms == len(frames) * 1000 // 8000
    caller, callee = frames[:, 0], frames[:, 1]
    assert abs(dominant_hz(caller) - 440) < 5
    assert abs(dominant_hz(callee) - 660) < 5
    # The callee's lost packet is 20 ms of silence; the callee stops after 0.8 s.
    assert longest_zero_run(callee[:6000]) == 160
    assert longest_zero_run(caller) < 10
    assert not callee[6500:].any()
    assert decoded.sha256 == hashlib.sha256(decoded.path.read_bytes()).hexdigest()
    # sox reads the same length from the header.
    soxi = subprocess.run(["soxi", "-s", str(decoded.path)], capture_output=True, text=True, check=True)
    assert int(soxi.stdout) == len(frames)


def test_to_wav_mixed_is_one_channel_with_both_parties(tmp_path: Path) -> None:
    stereo = to_wav(FIXTURE, tmp_path / "stereo.wav")
    mixed = to_wav(FIXTURE, tmp_path / "mixed.wav", mode="mixed")
    _, _, frames = read_wav(mixed.path)
    assert frames.shape[1] == mixed.channels == 1
    assert mixed.duration_ms == stereo.duration_ms
    spectrum = np.abs(np.fft.rfft(frames[:6400, 0].astype(np.float64)))
    freqs = np.fft.rfftfreq(6400, 1 / 8000)
    top_two = sorted(float(f) for f in freqs[np.argsort(spectrum)[-2:]])
    assert abs(top_two[0] - 440) < 5 and abs(top_two[1] - 660) < 5


@needs_sox
def test_g711_tables_match_sox_for_every_code(tmp_path: Path) -> None:
    codes = tmp_path / "codes.raw"
    codes.write_bytes(bytes(range(256)))
    for encoding, decode in (("u-law", decode_ulaw), ("a-law", decode_alaw)):
        out = tmp_path / f"{encoding}.s16"
        subprocess.run(
            [
                *("sox", "-t", "raw", "-r", "8000", "-c", "1", "-e", encoding, str(codes)),
                *("-t", "raw", "-e", "signed-integer", "-b", "16", "-L", str(out)),
            ],
            check=True,
        )
        assert np.array_equal(decode(bytes(range(256))), np.fromfile(out, dtype="<i2")), encoding


# --- pcaps built here: the parser's corners -------------------------------------------------------------


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, *, marker: bool = False) -> bytes:
    return (
        struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
        + payload
    )


def ip_udp(payload: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    if ":" in src[0]:
        return (
            struct.pack("!IHBB", 6 << 28, len(udp), 17, 64)
            + socket.inet_pton(socket.AF_INET6, src[0])
            + socket.inet_pton(socket.AF_INET6, dst[0])
            + udp
        )
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0)
    return header + socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + udp


def pcap(
    records: list[tuple[float, bytes]], *, linktype: int = 101, order: str = "<", nano: bool = False
) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for t, data in records:
        frac = round((t % 1) * (1e9 if nano else 1e6))
        if linktype == 1:
            data = bytes(12) + (b"\x86\xdd" if data[0] >> 4 == 6 else b"\x08\x00") + data
        out.append(struct.pack(order + "IIII", int(t), frac, len(data), len(data)) + data)
    return b"".join(out)


A, ENGINE_A = ("10.1.1.1", 4000), ("10.0.0.9", 30000)  # addresses written into a file, never used


@pytest.mark.parametrize(
    ("linktype", "order", "nano"), [(101, "<", False), (101, ">", True), (1, "<", False), (12, ">", False)]
)
def test_raw_or_ethernet_ipv4_or_ipv6_either_byte_order_and_rtcp_skipped(
    tmp_path: Path, linktype: int, order: str, nano: bool
) -> None:
    records: list[tuple[float, bytes]] = []
    t0 = 1_800_000_000.0
    for k in range(25):
        records.append((t0 + 0.02 * k, ip_udp(rtp(8, k, 160 * k, 1, bytes(160)), A, ENGINE_A)))
        records.append(
            (t0 + 0.02 * k, ip_udp(rtp(0, k, 160 * k, 2, bytes(160)), ("::1", 5000), ("::1", 30002)))
        )
    rtcp_sr = struct.pack("!BBHI", 0x80, 200, 6, 1) + bytes(20)
    records.append((t0 + 0.5, ip_udp(rtcp_sr, ("10.1.1.1", 4001), ("10.0.0.9", 30001))))
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap(records, linktype=linktype, order=order, nano=nano))
    summary = summarise(path)
    streams = {s.ssrc: s for s in summary.streams}
    assert (streams[1].packets, streams[1].payload_type, streams[1].duration_ms) == (25, 8, 500)
    assert (streams[2].packets, streams[2].payload_type, streams[2].duration_ms) == (25, 0, 500)
    assert streams[1].src == "10.1.1.1:4000" and streams[2].src == "[::1]:5000"
    assert summary.other_packets == 1
    assert summary.started_at == pytest.approx(t0)


def test_dtmf_events_in_a_stream_and_a_dynamic_codec(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    records = [(t0 + 0.02 * k, ip_udp(rtp(8, k, 160 * k, 7, bytes(160)), A, ENGINE_A)) for k in range(50)]
    # An RFC 4733 event (PT 101) inside the PCMA stream, same SSRC.
    records += [
        (t0 + 0.3, ip_udp(rtp(101, 50 + k, 2400, 7, b"\x05\x0a\x00\xa0"), A, ENGINE_A)) for k in range(3)
    ]
    # Opus (dynamic PT 111, 48 kHz clock unknown without the SDP): timed by arrival, 20 ms per packet.
    records += [(t0 + 0.02 * k, ip_udp(rtp(111, k, 960 * k, 9, bytes(60)), A, ENGINE_A)) for k in range(100)]
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap(sorted(records)))
    streams = {s.ssrc: s for s in summarise(path).streams}
    assert streams[7].payload_type == 8
    assert streams[7].packets_by_payload_type == ((8, 50), (101, 3))
    assert streams[7].duration_ms == 1000
    assert streams[9].duration_ms == 2000
    decoded = to_wav(path, tmp_path / "x.wav")
    assert decoded.skipped_ssrcs == (9,)
    assert decoded.duration_ms == 1000


def test_a_pause_counts_but_a_timestamp_jump_does_not_stretch_the_call(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    records = []
    for k in range(50):  # 1 s, then 4 s on hold (no packets, the clock runs on), then 1 s
        records.append((t0 + 0.02 * k, ip_udp(rtp(8, k, 160 * k, 1, b"\xd5" * 160), A, ENGINE_A)))
        records.append(
            (t0 + 5 + 0.02 * k, ip_udp(rtp(8, 50 + k, 40000 + 160 * k, 1, b"\xd5" * 160), A, ENGINE_A))
        )
    for k in range(50):  # 1 s, then the sender's timestamps leap by an hour while packets keep coming
        ts = 160 * k + (3600 * 8000 if k >= 25 else 0)
        records.append((t0 + 0.02 * k, ip_udp(rtp(0, k, ts, 2, b"\xff" * 160), A, ("10.0.0.9", 30002))))
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap(sorted(records)))
    streams = {s.ssrc: s for s in summarise(path).streams}
    assert streams[1].duration_ms == 6000
    assert streams[2].duration_ms == 1000
    assert to_wav(path, tmp_path / "x.wav").duration_ms == 6000


@settings(max_examples=60, deadline=None)
@given(
    seq0=st.integers(0, 0xFFFF),
    ts0=st.integers(0, 0xFFFFFFFF),
    n=st.integers(2, 300),
    drop_seed=st.integers(0, 2**32),
    drop_rate=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_counts_losses_and_duration_across_wraps(
    seq0: int, ts0: int, n: int, drop_seed: int, drop_rate: float
) -> None:
    rng = random.Random(drop_seed)
    kept = [k for k in range(n) if rng.random() >= drop_rate] or [0]
    t0 = 1_800_000_000.0
    records = [
        (
            t0 + 0.02 * k + rng.uniform(0, 0.015),
            ip_udp(rtp(0, seq0 + k, ts0 + 160 * k, 42, bytes(160)), A, ENGINE_A),
        )
        for k in kept
    ]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.pcap"
        path.write_bytes(pcap(records))
        (stream,) = summarise(path).streams
    span = kept[-1] - kept[0] + 1
    assert stream.packets == len(kept)
    assert stream.lost == span - len(kept)
    assert stream.duration_ms == span * 20


# --- a live rtpengine --------------------------------------------------------------------------------


def bencode(x: Any) -> bytes:
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, str):
        x = x.encode()
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, list):
        return b"l" + b"".join(bencode(i) for i in x) + b"e"
    if isinstance(x, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(x.items())) + b"e"
    raise TypeError(type(x))


def bdecode(b: bytes, i: int = 0) -> tuple[Any, int]:
    c = b[i : i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1 : j]), j + 1
    if c in (b"l", b"d"):
        i += 1
        items: list[Any] = []
        while b[i : i + 1] != b"e":
            v, i = bdecode(b, i)
            items.append(v)
        if c == b"l":
            return items, i + 1
        return {items[k].decode(): items[k + 1] for k in range(0, len(items), 2)}, i + 1
    j = b.index(b":", i)
    n = int(b[i:j])
    return b[j + 1 : j + 1 + n], j + 1 + n


class Ng:
    """rtpengine's NG control protocol over UDP: ``cookie bencode(dict)``."""

    def __init__(self, port: int) -> None:
        self.addr = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(2.0)

    def __call__(self, command: str, **args: Any) -> dict[str, Any]:
        cookie = os.urandom(6).hex().encode()
        self.sock.sendto(cookie + b" " + bencode({"command": command, **args}), self.addr)
        reply = self.sock.recv(65535)
        assert reply.startswith(cookie + b" "), reply
        result: dict[str, Any] = bdecode(reply[len(cookie) + 1 :])[0]
        assert result["result"] in (b"ok", b"pong"), result
        return result

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def running_rtpengine(spool: Path) -> Iterator[Ng]:
    proc = subprocess.Popen(
        [
            *("rtpengine", "--config-file=none", "--table=-1", "--foreground", "--log-stderr"),
            *("--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{NG_PORT}"),
            *(
                f"--port-min={RTP_PORT_MIN}",
                f"--port-max={RTP_PORT_MAX}",
                "--delete-delay=0",
                "--timeout=86400",
            ),
            *(f"--recording-dir={spool}", "--recording-method=pcap"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = threading.Event()
    log: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if "Startup complete" in line:
                started.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    ng = Ng(NG_PORT)
    try:
        if not started.wait(10):
            raise RuntimeError("rtpengine did not start:\n" + "".join(log[-20:]))
        ng("ping")
        yield ng
    finally:
        ng.close()
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
        if proc.stderr is not None:
            proc.stderr.close()


def g711_encode(samples: npt.NDArray[np.float64], decode: Any) -> bytes:
    """The code whose decoded value is nearest to each sample (test helper; the gateway only decodes)."""
    table = decode(bytes(range(256))).astype(np.int32)
    return bytes(np.abs(table[None, :] - samples.astype(np.int32)[:, None]).argmin(axis=1).astype(np.uint8))


def sdp(port: int) -> str:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=ptime:20\r\na=sendrecv\r\n"
    )


def media_port(sdp_body: bytes) -> int:
    (line,) = [ln for ln in sdp_body.decode().splitlines() if ln.startswith("m=audio")]
    return int(line.split()[1])


def record_call(ng: Ng, spool: Path, call_id: str) -> tuple[Path, dict[str, Any]]:
    """One recorded call through rtpengine (see the module docstring); (its pcap, rtpengine's totals)."""
    t = np.arange(8000) / 8000
    caller_audio = g711_encode(12000 * np.sin(2 * np.pi * 440 * t), decode_ulaw)  # 1 s
    callee_audio = g711_encode(12000 * np.sin(2 * np.pi * 660 * t[:6400]), decode_alaw)  # 0.8 s
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as callee,
    ):
        caller.bind(("127.0.0.1", 0))
        callee.bind(("127.0.0.1", 0))
        common = {"replace": ["origin", "session-connection"], "ICE": "remove"}
        offer = ng("offer", **{"call-id": call_id, "from-tag": "caller", "record call": "yes"}, **common,
                   sdp=sdp(caller.getsockname()[1]))  # fmt: skip
        answer = ng("answer", **{"call-id": call_id, "from-tag": "caller", "to-tag": "callee"}, **common,
                    sdp=sdp(callee.getsockname()[1]))  # fmt: skip
        to_engine_from_caller = ("127.0.0.1", media_port(answer["sdp"]))
        to_engine_from_callee = ("127.0.0.1", media_port(offer["sdp"]))
        sent = 0
        start = time.monotonic()
        for k in range(50):  # real time: one packet per party every 20 ms
            payload = caller_audio[160 * k : 160 * k + 160]
            caller.sendto(rtp(0, 65530 + k, 0xFFFFE000 + 160 * k, CALLER_SSRC, payload, marker=k == 0),
                          to_engine_from_caller)  # fmt: skip
            sent += 1
            if k < 40 and k != 20:
                payload = callee_audio[160 * k : 160 * k + 160]
                callee.sendto(rtp(8, 1000 + k, 5000 + 160 * k, CALLEE_SSRC, payload, marker=k == 0),
                              to_engine_from_callee)  # fmt: skip
                sent += 1
            time.sleep(max(0.0, start + 0.02 * (k + 1) - time.monotonic()))
        # rtpengine handles media on other threads than commands: wait (bounded) until it counted them all.
        deadline = time.monotonic() + 5
        while (totals := ng("query", **{"call-id": call_id})["totals"])["RTP"]["packets"] < sent:
            assert time.monotonic() < deadline, totals
            time.sleep(0.02)
        ng("delete", **{"call-id": call_id})
    (pcap_path,) = (spool / "pcaps").glob(f"{call_id}-*.pcap")
    return pcap_path, totals


@needs_rtpengine
def test_a_live_rtpengine_recording_agrees_with_rtpengine_counters(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    with running_rtpengine(spool) as ng:
        pcap_path, totals = record_call(ng, spool, "live-call")
    summary = summarise(pcap_path, out_dir=tmp_path / "kept")
    check_fixture_call(summary)
    assert sum(s.packets for s in summary.streams) == totals["RTP"]["packets"]
    # rtpengine counts RTP bytes with the 12-byte header.
    assert sum(s.payload_bytes + 12 * s.packets for s in summary.streams) == totals["RTP"]["bytes"]
    decoded = to_wav(summary.path, tmp_path / "live.wav")
    _, _, frames = read_wav(decoded.path)
    assert abs(len(frames) - summary.duration_ms * 8) <= 160
    assert abs(dominant_hz(frames[:, 0]) - 440) < 5
    assert abs(dominant_hz(frames[:, 1]) - 660) < 5


if __name__ == "__main__":  # regenerate the fixture
    with tempfile.TemporaryDirectory() as d, running_rtpengine(Path(d)) as ng:
        recorded, _ = record_call(ng, Path(d), "fixture-call")
        FIXTURE.parent.mkdir(exist_ok=True)
        shutil.copy(recorded, FIXTURE)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)", file=sys.stderr)
