"""Start and stop a userspace rtpengine process (tests, ``outdial demo``, the bench).

In production rtpengine runs beside the gateway as its own process (or container) with the same flags; this
module is for the places where we start it ourselves. The flags are those measured in
docs/telephony-notes.md:

- ``--config-file=none`` (else /etc/rtpengine/rtpengine.conf is read and more ports opened),
  ``--table=-1`` (no kernel module: userspace forwarding), ``--foreground --log-stderr``;
- ``--interface=HOST`` (the one address media is relayed on), ``--listen-ng=HOST:NG_PORT``,
  ``--port-min/--port-max`` (the RTP ports, two per stream: RTP and RTCP);
- ``--delete-delay=0`` (a deleted call frees its ports at once), ``--timeout=86400`` (agents' nailed-up legs
  are often silent: the default 60 s would close them);
- ``--recording-dir=DIR --recording-method=pcap`` (``start recording`` writes DIR/pcaps/<call-id>-<hex>.pcap,
  see ``rtpengine.Media.start_recording``);
- ``--dtmf-log-dest=HOST:DTMF_PORT`` (one JSON datagram per RFC 4733 digit, see ``rtpengine.DtmfListener``).

``start_rtpengine`` returns once the process answers the NG ``ping``; ``stop()`` sends SIGTERM, then SIGKILL
after a grace period, and reaps the process either way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from outdial.gateway.rtpengine import bdecode, bencode


def find_rtpengine() -> Path | None:
    """The ``rtpengine`` binary from PATH (Debian's ``rtpengine-daemon`` puts it in /usr/bin), else None."""
    found = shutil.which("rtpengine")
    if found:
        return Path(found)
    for cand in (Path("/usr/bin/rtpengine"), Path("/usr/sbin/rtpengine")):
        if cand.exists() and os.access(cand, os.X_OK):
            return cand
    return None


@dataclass
class RtpengineProcess:
    """An rtpengine we started. Its stderr (the whole log) goes to ``log_path``."""

    proc: subprocess.Popen[bytes]
    host: str
    ng_port: int
    dtmf_port: int
    port_min: int
    port_max: int
    recording_dir: Path
    log_path: Path
    _done: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL when it has not exited after ``grace_s``; always reaped."""
        if self._done:
            return
        self._done = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL at once (tests of "rtpengine died"), reaped."""
        self._done = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> RtpengineProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ng_ping_sync(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """One blocking NG ``ping`` (for start-up, before any event loop): True when it answered ``pong``."""
    cookie = os.urandom(6).hex().encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect((host, port))
            sock.send(cookie + b" " + bencode({"command": "ping"}))
            data = sock.recv(65535)
        except OSError:  # timeout, or ICMP port unreachable (ConnectionRefusedError)
            return False
    head, _, body = data.partition(b" ")
    if head != cookie:
        return False
    reply = bdecode(body)
    return isinstance(reply, dict) and reply.get("result") == "pong"


def start_rtpengine(
    ng_port: int,
    dtmf_port: int,
    port_min: int,
    port_max: int,
    recording_dir: Path,
    host: str = "127.0.0.1",
    *,
    binary: Path | None = None,
    log_path: Path | None = None,
    startup_timeout_s: float = 10.0,
) -> RtpengineProcess:
    """Start rtpengine and return once it answers NG ``ping`` (RuntimeError, with its log, if it does not)."""
    exe = binary or find_rtpengine()
    if exe is None:
        raise RuntimeError("no rtpengine binary: apt-get install rtpengine-daemon")
    recording_dir = recording_dir.resolve()  # rtpengine runs in it: a relative path would nest
    recording_dir.mkdir(parents=True, exist_ok=True)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"rtpengine-{ng_port}-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    args = [
        str(exe),
        "--config-file=none",
        "--table=-1",
        "--foreground",
        "--log-stderr",
        f"--interface={host}",
        f"--listen-ng={host}:{ng_port}",
        f"--port-min={port_min}",
        f"--port-max={port_max}",
        "--delete-delay=0",
        "--timeout=86400",
        f"--recording-dir={recording_dir}",
        "--recording-method=pcap",
        f"--dtmf-log-dest={host}:{dtmf_port}",
    ]
    with open(log_path, "ab") as logfile:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile, cwd=recording_dir
        )
    rp = RtpengineProcess(proc, host, ng_port, dtmf_port, port_min, port_max, recording_dir, log_path)
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            rp.stop()
            raise RuntimeError(f"rtpengine exited with code {proc.returncode}: {rp.log_text()[-2000:]}")
        if ng_ping_sync(host, ng_port):
            return rp
        time.sleep(0.05)
    rp.stop()
    raise RuntimeError(
        f"rtpengine did not answer ping within {startup_timeout_s:.0f}s: {rp.log_text()[-2000:]}"
    )
