"""A whole SIP setup on loopback for the demo, the end-to-end tests and the benchmark: rtpengine, SIPp as the
carrier (the simulated carrier's rates, ``carrier.xml``) and SIPp as the agents' phones (auto-answer, one
process answering every agent's nailed-up call), plus the environment that points the gateway, the dialer
and the agent service at them. Every process it starts is stopped by :meth:`SipRig.stop`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from outdial.gateway.peers.sipp import SippUas
from outdial.gateway.rtpengine_proc import RtpengineProcess, find_rtpengine, start_rtpengine

NEEDED = ("sipp", "espeak-ng", "sox")


def missing_binaries() -> list[str]:
    """What this machine lacks to run the SIP setup (empty: all there)."""
    out = [b for b in NEEDED if shutil.which(b) is None]
    if find_rtpengine() is None:
        out.insert(0, "rtpengine")
    return out


def free_port() -> int:
    """A port free for both UDP and TCP on loopback."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with contextlib.suppress(OSError), socket.socket() as t:
                t.bind(("127.0.0.1", port))
                return port
    raise RuntimeError("no free port on loopback")


def free_media_port() -> int:
    """A UDP port for SIPp's media: SIPp binds it and the port two above (its video RTP), so four in a row
    must be free (checked by binding them)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            base = int(u.getsockname()[1])
        if base > 65530:
            continue
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + 4):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no four free UDP ports in a row on loopback")


@dataclass
class SipRig:
    carrier_keys: dict[str, str] = field(default_factory=dict)
    rtp_ports: tuple[int, int] = (0, 0)
    cps: float = 20.0
    max_calls: int = 200
    workdir: Path | None = None
    rtp: RtpengineProcess | None = None
    carrier: SippUas | None = None
    phones: SippUas | None = None
    ports: dict[str, int] = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> dict[str, str]:
        """Start rtpengine and the SIPp peers; the environment for the gateway, pacing and agent."""
        lacking = missing_binaries()
        if lacking:
            raise RuntimeError(
                f"SIP telephony needs {', '.join(lacking)}: as root on Debian run `make setup`, or "
                "apt-get install rtpengine-daemon sip-tester baresip espeak-ng sox"
            )
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="outdial-sip-")
            self.workdir = Path(self._tmp.name)
        wd = self.workdir
        p = self.ports
        for name in ("ng", "dtmf", "sip", "carrier", "phones", "grpc"):
            p[name] = free_port()
        for name in ("carrier_media", "phones_media"):
            p[name] = free_media_port()
        lo, hi = self.rtp_ports
        if not lo:  # rtpengine takes 4 ports a call: room for every trunk call and 100 agents' legs
            size = 4 * (self.max_calls + 100)
            lo = 20000 + (p["ng"] % 8) * size
            hi = lo + size - 1
        self.rtp = start_rtpengine(
            ng_port=p["ng"], dtmf_port=p["dtmf"], port_min=lo, port_max=hi, recording_dir=wd / "recordings"
        )
        self.carrier = SippUas(
            "carrier.xml",
            port=p["carrier"],
            media_port=p["carrier_media"],
            keys=self.carrier_keys or None,
            trace_dir=wd / "carrier",
        )
        self.carrier.start()
        self.phones = SippUas(
            "agent_phone.xml", port=p["phones"], media_port=p["phones_media"], trace_dir=wd / "phones"
        )
        self.phones.start()
        return {
            "OUTDIAL_TELEPHONY": "sip",
            "OUTDIAL_GATEWAY_ADDR": f"127.0.0.1:{p['grpc']}",
            "OUTDIAL_GATEWAY_LISTEN": f"127.0.0.1:{p['grpc']}",
            "OUTDIAL_SIP_LISTEN_HOST": "127.0.0.1",
            "OUTDIAL_SIP_LISTEN_PORT": str(p["sip"]),
            "OUTDIAL_TRUNK_URI": f"sip:127.0.0.1:{p['carrier']}",
            "OUTDIAL_TRUNK_CPS": str(self.cps),
            "OUTDIAL_TRUNK_MAX_CALLS": str(self.max_calls),
            "OUTDIAL_RTPENGINE_NG": f"127.0.0.1:{p['ng']}",
            "OUTDIAL_RTPENGINE_DTMF_LISTEN": f"127.0.0.1:{p['dtmf']}",
            "OUTDIAL_PROMPTS_DIR": str(wd / "prompts"),
            "OUTDIAL_RECORDINGS_DIR": str(wd / "recordings"),
        }

    def phone_of(self, agent_id: str) -> str:
        """The contact URI of an agent's (SIPp) phone."""
        return f"sip:{agent_id}@127.0.0.1:{self.ports['phones']}"

    def stop(self) -> None:
        for peer in (self.carrier, self.phones):
            if peer is not None:
                with contextlib.suppress(Exception):
                    peer.stop()
        if self.rtp is not None:
            with contextlib.suppress(Exception):
                self.rtp.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
