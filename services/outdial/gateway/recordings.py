"""The recordings the gateway keeps: rtpengine's per-call pcap files, summarised and decoded.

rtpengine with ``--recording-method=pcap`` writes one classic libpcap file per call
(``DIR/pcaps/<call-id>-<random>.pcap``; a metadata text file with the SDPs goes to ``DIR/metadata``). Its
link type is raw IP (``--recording-format=raw``, the default; ``eth`` prepends a zeroed 14-byte Ethernet
header, also read here); each record is one RTP or RTCP packet *as rtpengine received it*: an IPv4 or IPv6
header and a UDP header that rtpengine makes up (source: the party, destination: rtpengine's port), the
packet's arrival time, then the RTP packet unchanged. Media that rtpengine itself plays (``play media``)
is not in the file (measured with rtpengine 10.5).

Parsed with the stdlib :mod:`struct`: the format is a 24-byte file header and a 16-byte record header,
and the one maintained parser on PyPI (``dpkt``, last release 2022) would add a dependency to save ~30
lines. G.711 is decoded with a 256-entry table in numpy (already a dependency): ``audioop`` is deprecated
in 3.11 and gone in 3.13, and ``audioop-lts`` exists only for 3.13+.

:func:`summarise` and :func:`to_wav` read files synchronously: call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import shutil
import struct
import tempfile
import wave
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from outdial.core.errors import OutdialError

__all__ = [
    "DecodedRecording",
    "RecordingError",
    "RecordingSummary",
    "RtpStream",
    "decode_alaw",
    "decode_ulaw",
    "summarise",
    "to_wav",
]

#: Clock rates of the static RTP payload types (RFC 3551, table 4). Other types are dynamic: their clock
#: is only in the SDP, so their streams are timed by arrival instead.
STATIC_CLOCK_RATES: Final[dict[int, int]] = {
    0: 8000, 3: 8000, 4: 8000, 5: 8000, 6: 16000, 7: 8000, 8: 8000, 9: 8000, 10: 44100, 11: 44100,
    12: 8000, 13: 8000, 14: 90000, 15: 8000, 16: 11025, 17: 22050, 18: 8000,
}  # fmt: skip
PCMU: Final = 0
PCMA: Final = 8
WAV_RATE: Final = 8000
# A stream whose RTP clock drifts from its arrival times by more than this is re-anchored on arrival
# (a timestamp jump: a new talk spurt after hold, a source switch, a broken sender).
_MAX_SKEW_S: Final = 1.0

_LINKTYPE_RAW: Final = frozenset({101, 12, 14})  # LINKTYPE_RAW, and DLT_RAW's values on some systems
_LINKTYPE_ETHERNET: Final = 1
_MAGIC: Final[dict[bytes, tuple[str, float]]] = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


class RecordingError(OutdialError):
    """A file that is not a pcap rtpengine could have written (INTERNAL: the gateway made it)."""

    default_id = "recording_unreadable"


@dataclass(frozen=True, slots=True)
class RtpStream:
    ssrc: int
    src: str  # "ip:port" of the sender (the party)
    dst: str  # "ip:port" that received it (rtpengine's port for that party)
    payload_type: int  # the type most of its packets carry (a stream may also carry RFC 4733 events)
    packets: int
    payload_bytes: int  # RTP payload, without headers and padding
    lost: int  # expected from the sequence numbers, minus received (never below 0)
    duration_ms: int
    first_packet_at: float  # arrival time of its first packet (seconds since the epoch)
    packets_by_payload_type: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class RecordingSummary:
    path: Path  # the pcap as kept
    duration_ms: int  # of the longest stream
    sha256: str  # of the pcap file at ``path``
    streams: tuple[RtpStream, ...]
    started_at: float | None  # arrival time of the first RTP packet; None when there is none
    other_packets: int = 0  # RTCP and anything that is not RTP


@dataclass(frozen=True, slots=True)
class DecodedRecording:
    path: Path
    duration_ms: int
    channels: int
    sha256: str  # of the WAV file
    skipped_ssrcs: tuple[int, ...] = field(default=())  # streams not in G.711 (not decoded)


def summarise(pcap_path: Path, out_dir: Path | None = None) -> RecordingSummary:
    """Summarise one rtpengine pcap; with ``out_dir``, first move it there (atomically) to keep it.

    The SHA-256 and the streams are of the same bytes: the file is read once, as kept.
    """
    kept = _keep(pcap_path, out_dir) if out_dir is not None else pcap_path
    hasher = hashlib.sha256()
    groups: dict[tuple[int, str], _StreamBuilder] = {}
    other = 0
    with kept.open("rb") as f:
        for pkt in _read_packets(f, hasher):
            if pkt is None:
                other += 1
                continue
            builder = groups.get((pkt.ssrc, pkt.dst))
            if builder is None:
                builder = groups[pkt.ssrc, pkt.dst] = _StreamBuilder(pkt)
            builder.add(pkt, keep_payload=False)
        hasher.update(f.read())  # a truncated last record: still part of the file as kept
    t0 = min((b.first.time for b in groups.values()), default=None)
    streams = tuple(b.summary(t0) for b in groups.values()) if t0 is not None else ()
    return RecordingSummary(
        path=kept,
        duration_ms=max((s.duration_ms for s in streams), default=0),
        sha256=hasher.hexdigest(),
        streams=streams,
        started_at=t0,
        other_packets=other,
    )


def to_wav(
    pcap_path: Path, wav_path: Path, *, mode: Literal["stereo", "mixed"] = "stereo"
) -> DecodedRecording:
    """Decode the G.711 (PCMU/PCMA) streams of a pcap into an 8 kHz 16-bit WAV.

    Streams are grouped by direction (sender address and receiving port), in order of their first
    packet: in ``stereo`` the first direction (usually the party that spoke first) is the left channel and
    every other direction is mixed into the right; ``mixed`` sums them all into one channel. Each packet is
    placed by its RTP timestamp, streams are aligned by arrival time, and lost packets are silence.
    Written to a temporary file and renamed, so ``wav_path`` is always whole.
    """
    groups: dict[tuple[int, str], _StreamBuilder] = {}
    with pcap_path.open("rb") as f:
        for pkt in _read_packets(f, None):
            if pkt is None:
                continue
            builder = groups.get((pkt.ssrc, pkt.dst))
            if builder is None:
                builder = groups[pkt.ssrc, pkt.dst] = _StreamBuilder(pkt)
            builder.add(pkt, keep_payload=True)
    decodable = [b for b in groups.values() if b.dominant_pt() in (PCMU, PCMA)]
    skipped = tuple(b.first.ssrc for b in groups.values() if b not in decodable)
    n_channels = 2 if mode == "stereo" else 1
    t0 = min((b.first.time for b in decodable), default=0.0)
    directions: list[tuple[str, str]] = []
    tracks: list[tuple[int, int, npt.NDArray[np.int16]]] = []  # (channel, start sample, samples)
    for b in sorted(decodable, key=lambda b: b.first.time):
        direction = (b.first.src, b.first.dst)
        if direction not in directions:
            directions.append(direction)
        channel = min(directions.index(direction), n_channels - 1)
        start, samples = b.decode(t0)
        tracks.append((channel, start, samples))
    length = max((start + len(s) for _, start, s in tracks), default=0)
    mix = np.zeros((length, n_channels), dtype=np.int32)
    for channel, start, samples in tracks:
        mix[start : start + len(samples), channel] += samples
    pcm = np.clip(mix, -32768, 32767).astype("<i2")
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=wav_path.parent, prefix=".part-", suffix=".wav")
    os.close(fd)
    try:
        with wave.open(tmp_name, "wb") as w:
            w.setnchannels(n_channels)
            w.setsampwidth(2)
            w.setframerate(WAV_RATE)
            w.writeframes(pcm.tobytes())
        os.replace(tmp_name, wav_path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    with wav_path.open("rb") as wf:
        sha = hashlib.file_digest(wf, "sha256").hexdigest()
    return DecodedRecording(
        path=wav_path,
        duration_ms=length * 1000 // WAV_RATE,
        channels=n_channels,
        sha256=sha,
        skipped_ssrcs=skipped,
    )


# --- G.711 (ITU-T G.711, tables 1a/2a) ---------------------------------------------------------------


def _ulaw_table() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


_ULAW: Final = _ulaw_table()
_ALAW: Final = _alaw_table()


def decode_ulaw(data: bytes) -> npt.NDArray[np.int16]:
    """µ-law (PCMU) bytes to 16-bit linear samples."""
    return _ULAW[np.frombuffer(data, dtype=np.uint8)]


def decode_alaw(data: bytes) -> npt.NDArray[np.int16]:
    """A-law (PCMA) bytes to 16-bit linear samples."""
    return _ALAW[np.frombuffer(data, dtype=np.uint8)]


# --- pcap and RTP ------------------------------------------------------------------------------------


class _Rtp(NamedTuple):
    time: float
    src: str
    dst: str
    ssrc: int
    payload_type: int
    seq: int
    timestamp: int
    payload: bytes


def _read_packets(f: IO[bytes], hasher: hashlib._Hash | None) -> Iterator[_Rtp | None]:
    """The RTP packets of a pcap in file order (None for a record that is not RTP)."""

    def read(n: int) -> bytes:
        data = f.read(n)
        if hasher is not None:
            hasher.update(data)
        return data

    header = read(24)
    if len(header) < 24 or header[:4] not in _MAGIC:
        raise RecordingError(f"{getattr(f, 'name', '?')}: not a pcap file (bad magic)")
    order, tick = _MAGIC[header[:4]]
    linktype = struct.unpack(order + "I", header[20:24])[0] & 0x0FFFFFFF
    if linktype in _LINKTYPE_RAW:
        skip = 0
    elif linktype == _LINKTYPE_ETHERNET:
        skip = 14
    else:
        raise RecordingError(
            f"{getattr(f, 'name', '?')}: pcap link type {linktype} is not raw IP or Ethernet"
        )
    record = struct.Struct(order + "IIII")
    while True:
        rec = read(16)
        if len(rec) < 16:
            return
        ts_sec, ts_frac, caplen, _ = record.unpack(rec)
        data = read(caplen)
        if len(data) < caplen:
            return  # the file ends inside a record (rtpengine still writing, or killed)
        yield _parse_ip_udp_rtp(ts_sec + ts_frac * tick, data[skip:])


def _parse_ip_udp_rtp(time: float, ip: bytes) -> _Rtp | None:
    if len(ip) < 1:
        return None
    version = ip[0] >> 4
    if version == 4 and len(ip) >= 20 and ip[9] == 17:
        ihl = (ip[0] & 0x0F) * 4
        src_ip, dst_ip = _ipv4(ip[12:16]), _ipv4(ip[16:20])
        udp = ip[ihl:]
    elif version == 6 and len(ip) >= 40 and ip[6] == 17:
        src_ip, dst_ip = _ipv6(ip[8:24]), _ipv6(ip[24:40])
        udp = ip[40:]
    else:
        return None
    if len(udp) < 8:
        return None
    sport, dport = struct.unpack("!HH", udp[:4])
    rtp = udp[8:]
    if len(rtp) < 12 or rtp[0] >> 6 != 2 or 72 <= (rtp[1] & 0x7F) <= 76:  # not RTP v2, or RTCP
        return None
    payload_type = rtp[1] & 0x7F
    seq, timestamp, ssrc = struct.unpack("!HII", rtp[2:12])
    start = 12 + 4 * (rtp[0] & 0x0F)  # CSRCs
    if rtp[0] & 0x10:  # header extension
        if len(rtp) < start + 4:
            return None
        start += 4 + 4 * struct.unpack("!H", rtp[start + 2 : start + 4])[0]
    end = len(rtp)
    if rtp[0] & 0x20 and end > start:  # padding: the last byte counts it
        end -= rtp[-1]
    if end < start:
        return None
    return _Rtp(
        time, f"{src_ip}:{sport}", f"{dst_ip}:{dport}", ssrc, payload_type, seq, timestamp, rtp[start:end]
    )


def _ipv4(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def _ipv6(b: bytes) -> str:
    import ipaddress

    return f"[{ipaddress.IPv6Address(b)}]"


class _StreamBuilder:
    """One SSRC's packets: counts as they come, payloads when decoding."""

    def __init__(self, first: _Rtp) -> None:
        self.first = first
        self.packets = 0
        self.payload_bytes = 0
        self.pts: Counter[int] = Counter()
        self.seqs: set[int] = set()
        self._last_seq = first.seq
        self._ext_seq = first.seq
        self.times: list[float] = []
        self.timestamps: list[int] = []  # unwrapped
        self._last_ts = first.timestamp
        self._ext_ts = first.timestamp
        self.ts_pts: list[int] = []
        self.payload_lens: list[int] = []
        self.payloads: list[bytes] = []

    def add(self, pkt: _Rtp, *, keep_payload: bool) -> None:
        self.packets += 1
        self.payload_bytes += len(pkt.payload)
        self.pts[pkt.payload_type] += 1
        self._ext_seq += _delta(pkt.seq, self._last_seq, 16)
        self._last_seq = pkt.seq
        self.seqs.add(self._ext_seq)
        self._ext_ts += _delta(pkt.timestamp, self._last_ts, 32)
        self._last_ts = pkt.timestamp
        self.times.append(pkt.time)
        self.timestamps.append(self._ext_ts)
        self.ts_pts.append(pkt.payload_type)
        self.payload_lens.append(len(pkt.payload))
        if keep_payload:
            self.payloads.append(pkt.payload)

    def dominant_pt(self) -> int:
        return self.pts.most_common(1)[0][0]

    def summary(self, t0: float) -> RtpStream:
        start, end, rate = self._extent(t0)
        expected = max(self.seqs) - min(self.seqs) + 1
        return RtpStream(
            ssrc=self.first.ssrc,
            src=self.first.src,
            dst=self.first.dst,
            payload_type=self.dominant_pt(),
            packets=self.packets,
            payload_bytes=self.payload_bytes,
            lost=max(0, expected - len(self.seqs)),
            duration_ms=round((end - start) * 1000 / rate),
            first_packet_at=self.first.time,
            packets_by_payload_type=tuple(sorted(self.pts.items())),
        )

    def decode(self, t0: float) -> tuple[int, npt.NDArray[np.int16]]:
        """(start sample relative to ``t0``, samples) of a G.711 stream, 8 kHz."""
        pt = self.dominant_pt()
        table = _ULAW if pt == PCMU else _ALAW
        positions = self._positions(t0, WAV_RATE)
        idx = [i for i, p in enumerate(self.ts_pts) if p == pt]
        if not idx:
            return 0, np.zeros(0, dtype=np.int16)
        start = min(positions[i] for i in idx)
        end = max(positions[i] + len(self.payloads[i]) for i in idx)
        out = np.zeros(end - start, dtype=np.int16)
        for i in idx:
            samples = table[np.frombuffer(self.payloads[i], dtype=np.uint8)]
            at = positions[i] - start
            out[at : at + len(samples)] = samples
        return start, out

    def _extent(self, t0: float) -> tuple[int, int, int]:
        """(first sample, end sample, clock rate) of the stream's audio on its own clock."""
        pt = self.dominant_pt()
        rate = STATIC_CLOCK_RATES.get(pt)
        idx = [i for i, p in enumerate(self.ts_pts) if p == pt]
        if rate is None:  # dynamic type: clock unknown here, time it by arrival (in µs)
            rate = 1_000_000
            pos = [round((self.times[i] - t0) * rate) for i in idx]
        else:
            all_pos = self._positions(t0, rate)
            pos = [all_pos[i] for i in idx]
        last_at = max(range(len(pos)), key=pos.__getitem__)
        if pt in (PCMU, PCMA):  # one byte per sample: the last packet's own length
            last = self.payload_lens[idx[last_at]]
        else:  # the usual packet time (ptime)
            steps = sorted(b - a for a, b in itertools.pairwise(pos) if b > a)
            last = steps[len(steps) // 2] if steps else 0
        return min(pos), pos[last_at] + last, rate

    def _positions(self, t0: float, rate: int) -> list[int]:
        """Each packet's first sample on a timeline starting at ``t0``, from its RTP timestamp; re-anchored
        on its arrival time whenever the two drift apart by more than ``_MAX_SKEW_S``."""
        out: list[int] = []
        anchor: int | None = None
        for time, ts in zip(self.times, self.timestamps, strict=True):
            arrival = round((time - t0) * rate)
            if anchor is None or abs(anchor + ts - arrival) > _MAX_SKEW_S * rate:
                anchor = arrival - ts
            out.append(anchor + ts)
        return out


def _delta(new: int, old: int, bits: int) -> int:
    """``new - old`` on a wrapping counter of ``bits`` bits (RFC 3550 A.1)."""
    d = (new - old) & ((1 << bits) - 1)
    return d - (1 << bits) if d >= 1 << (bits - 1) else d


def _keep(pcap_path: Path, out_dir: Path) -> Path:
    """Move ``pcap_path`` into ``out_dir`` so that the name there always holds a whole file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / pcap_path.name
    if target == pcap_path:
        return target
    try:
        os.replace(pcap_path, target)  # same file system: atomic
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".part-", suffix=".pcap")
        try:
            with os.fdopen(fd, "wb") as dst, pcap_path.open("rb") as src:
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp_name, target)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        pcap_path.unlink()
    return target
