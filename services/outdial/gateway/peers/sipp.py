"""SIPp 3.6 as an independent SIP peer: launchers for the scenarios shipped in ``scenarios/``, and readers
for what SIPp wrote (the ``-trace_msg`` message log, the ``-trace_stat`` CSV, the ``-trace_logs`` log).

Every scenario documents its keys (``-key NAME VALUE``) in its header comment, one ``-key NAME DEFAULT``
line each; :func:`scenario_keys` reads those defaults, and the launchers pass every key (SIPp 3.6 has no
default for a key a scenario uses: it refuses to load the scenario).

Ports: SIPp binds the SIP port, the media port ``media_port`` and ``media_port + 2`` (video): give each
process media ports at least 4 apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

SCENARIO_DIR = Path(__file__).parent / "scenarios"
SIPP_SHARE = Path("/usr/share/sip-tester")
# RFC 4733 key presses shipped with Debian's sip-tester (payload type 101).
DTMF_PCAP_NAMES = {str(d): f"dtmf_2833_{d}.pcap" for d in range(10)} | {
    "*": "dtmf_2833_star.pcap",
    "#": "dtmf_2833_pound.pcap",
}

_KEY_LINE = re.compile(r"^\s*-key\s+(\w+)\s+(\S+)", re.MULTILINE)
_TRACE_HEAD = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$")
_COMPACT = {
    "i": "Call-ID",
    "f": "From",
    "t": "To",
    "m": "Contact",
    "v": "Via",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
}


class SippError(RuntimeError):
    """SIPp could not start (binary missing, bad scenario or key, port taken)."""


def sipp_binary() -> str | None:
    return shutil.which("sipp")


def scenario_path(scenario: str) -> Path:
    """A shipped scenario by name (``"busy"`` or ``"busy.xml"``), or any path to a scenario file."""
    path = Path(scenario)
    if path.suffix == ".xml" and path.exists():
        return path
    shipped = SCENARIO_DIR / (scenario if scenario.endswith(".xml") else f"{scenario}.xml")
    if not shipped.exists():
        raise FileNotFoundError(f"no SIPp scenario {scenario!r} in {SCENARIO_DIR}")
    return shipped


def scenario_keys(scenario: str) -> dict[str, str]:
    """The keys a scenario uses, with their defaults, from its header comment."""
    text = scenario_path(scenario).read_text(encoding="iso-8859-1")
    header = text.split("-->", 1)[0]
    return dict(_KEY_LINE.findall(header))


def dtmf_pcap(digit: str) -> str:
    """The RFC 4733 pcap of one key (``0``-``9``, ``*``, ``#``)."""
    try:
        return str(SIPP_SHARE / DTMF_PCAP_NAMES[digit])
    except KeyError:
        raise ValueError(f"no DTMF pcap for {digit!r}") from None


@dataclass(frozen=True)
class SipMessage:
    """One SIP message as SIPp logged it (``-trace_msg``): when, which way, first line, headers, body."""

    timestamp: float  # seconds since the epoch (SIPp logs local wall time)
    direction: Literal["in", "out"]
    first_line: str
    headers: dict[str, str]  # name as written (compact forms expanded); repeated headers joined with ", "
    body: str = ""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        """The request's method, or the CSeq method of a response."""
        if self.is_request:
            return self.first_line.split(" ", 1)[0]
        cseq = self.header("CSeq") or ""
        return cseq.split()[-1] if cseq.split() else ""

    @property
    def status(self) -> int | None:
        if self.is_request:
            return None
        return int(self.first_line.split()[1])

    @property
    def call_id(self) -> str:
        return self.header("Call-ID") or ""


def parse_messages(text: str) -> list[SipMessage]:
    """Parses a SIPp ``-trace_msg`` log (blocks headed by a dashed line with a timestamp)."""
    out: list[SipMessage] = []
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        head = _TRACE_HEAD.match(line)
        if head:
            blocks.append((head.group(1), []))
        elif blocks:
            blocks[-1][1].append(line)
    for stamp, lines in blocks:
        kind = next((ln for ln in lines if ln.strip()), "")
        if "message received" in kind:
            direction: Literal["in", "out"] = "in"
        elif "message sent" in kind:
            direction = "out"
        else:
            continue
        rest = lines[lines.index(kind) + 1 :]
        while rest and not rest[0].strip():
            rest = rest[1:]
        if not rest:
            continue
        headers: dict[str, str] = {}
        body_lines: list[str] = []
        in_body = False
        for ln in rest[1:]:
            if in_body:
                body_lines.append(ln)
            elif not ln.strip():
                in_body = True
            elif ln[0] in " \t" and headers:  # folded header line
                last = next(reversed(headers))
                headers[last] += " " + ln.strip()
            elif ":" in ln:
                name, _, value = ln.partition(":")
                name = _COMPACT.get(name.strip(), name.strip())
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        ts = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
        out.append(SipMessage(ts, direction, rest[0].strip(), headers, "\n".join(body_lines).strip()))
    return out


@dataclass(frozen=True)
class SippStats:
    """Cumulative counters from the last row of SIPp's ``-trace_stat`` CSV."""

    created: int
    current: int
    successful: int
    failed: int
    retransmissions: int
    dead_call_msgs: int
    out_of_call_msgs: int
    raw: dict[str, str] = field(repr=False)


def parse_stats(text: str) -> SippStats | None:
    rows = list(csv.reader(text.splitlines(), delimiter=";"))
    if len(rows) < 2:
        return None
    row = dict(zip(rows[0], rows[-1], strict=False))

    def num(name: str) -> int:
        try:
            return int(float(row.get(f"{name}(C)", "0") or 0))
        except ValueError:
            return 0

    return SippStats(
        created=int(row.get("TotalCallCreated", "0") or 0),
        current=int(row.get("CurrentCall", "0") or 0),
        successful=num("SuccessfulCall"),
        failed=num("FailedCall"),
        retransmissions=num("Retransmissions"),
        dead_call_msgs=num("DeadCallMsgs"),
        out_of_call_msgs=num("OutOfCallMsgs"),
        raw=row,
    )


def _udp_bound(port: int, proto: str = "udp") -> bool:
    """Whether some socket is bound to this UDP (or TCP) port (from /proc/net, without touching it)."""
    needle = f":{port:04X} "
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if len(parts) > 1 and (parts[1] + " ").endswith(needle):
                    return True
    return False


class _Sipp:
    """One SIPp process: its command line, its files, start / stop / wait and the readers."""

    role = "peer"

    def __init__(
        self,
        scenario: str,
        port: int,
        media_port: int,
        keys: Mapping[str, str] | None = None,
        calls: int | None = None,
        trace_dir: Path | None = None,
        *,
        ip: str = "127.0.0.1",
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        trace_messages: bool = True,
    ) -> None:
        self.scenario = scenario_path(scenario)
        self.trace_messages = trace_messages
        self.port = port
        self.media_port = media_port
        self.ip = ip
        self.calls = calls
        self.keys = scenario_keys(str(self.scenario)) | dict(keys or {})
        self.extra_args = list(extra_args)
        self._binary = binary
        self._owned_dir: str | None = None
        if trace_dir is None:
            self._owned_dir = tempfile.mkdtemp(prefix=f"sipp-{self.scenario.stem}-")
            trace_dir = Path(self._owned_dir)
        self.trace_dir = Path(trace_dir)
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{self.role}-{self.scenario.stem}-{port}"
        self.message_file = self.trace_dir / f"{stem}-messages.log"
        self.stat_file = self.trace_dir / f"{stem}-stats.csv"
        self.log_file = self.trace_dir / f"{stem}-logs.log"
        self.error_file = self.trace_dir / f"{stem}-errors.log"
        self.screen_file = self.trace_dir / f"{stem}-screen.log"
        self.stderr_file = self.trace_dir / f"{stem}-stderr.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- command line -------------------------------------------------------------------------------
    def _role_args(self) -> list[str]:
        return []

    def command(self) -> list[str]:
        binary = self._binary or sipp_binary()
        if binary is None:
            raise SippError("sipp is not installed (Debian: apt-get install sip-tester)")
        cmd = [
            binary,
            "-sf",
            str(self.scenario),
            "-i",
            self.ip,
            "-p",
            str(self.port),
            "-mi",
            self.ip,
            "-mp",
            str(self.media_port),
            "-nostdin",
            "-aa",
            "-trace_stat",
            "-stf",
            str(self.stat_file),
            "-fd",
            "1",
            "-trace_logs",
            "-log_file",
            str(self.log_file),
            "-trace_err",
            "-error_file",
            str(self.error_file),
            "-trace_screen",
            "-screen_file",
            str(self.screen_file),
        ]
        if self.trace_messages:  # every message in full: turn off for long benchmarks
            cmd += ["-trace_msg", "-message_file", str(self.message_file)]
        for name, value in self.keys.items():
            cmd += ["-key", name, value]
        if self.calls is not None:
            cmd += ["-m", str(self.calls)]
        return cmd + self._role_args() + self.extra_args

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready_timeout: float = 10.0) -> Self:
        """Starts SIPp and returns once it listens on its SIP and media ports (raises SippError if it exits
        first)."""
        if self._proc is not None:
            raise SippError("already started")
        cmd = self.command()
        with open(self.stderr_file, "wb") as err:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.trace_dir,  # -trace_counts and friends write beside the other traces
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # SIPp redraws its screen there every second
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout
        # SIPp binds its SIP port, then its media ports (a taken media port makes it exit after that).
        # SIP over TCP (``-t t1`` in extra_args): the SIP port is a TCP listener.
        sip_proto = "tcp" if any(a.startswith("t") for a in self._transport_args()) else "udp"
        while not (_udp_bound(self.port, sip_proto) and _udp_bound(self.media_port)):
            if self._proc.poll() is not None:
                raise SippError(f"sipp exited with {self._proc.returncode}: {self.failure_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise SippError(
                    f"sipp did not bind UDP {self.ip}:{self.port} and :{self.media_port}: {self.failure_text()}"
                )
            time.sleep(0.02)
        return self

    def _transport_args(self) -> list[str]:
        args = self.extra_args
        return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-t"]

    def wait(self, timeout: float | None = None) -> int:
        """Waits for SIPp to exit and returns its exit code (0: every call passed; 1: some failed;
        97: stopped by a signal or command; 99: no call; 255: fatal). Raises TimeoutError."""
        if self._proc is None:
            raise SippError("not started")
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"sipp ({self.scenario.name}) still running after {timeout} s") from None

    async def wait_async(self, timeout: float | None = None) -> int:
        """:meth:`wait` without blocking the event loop (a thread waits on the process)."""
        return await asyncio.to_thread(self.wait, timeout)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM (SIPp then writes its final statistics and closes its files), SIGKILL after ``grace``
        seconds; the process is reaped. Returns the exit code (None if never started)."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._proc.wait()

    def kill(self) -> None:
        """SIGKILL and reap (no final statistics)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        self._proc.wait()

    def soft_stop(self) -> None:
        """SIGUSR1: SIPp takes no new call and exits once the calls in progress end."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)

    def cleanup(self) -> None:
        """Stops SIPp and deletes the trace directory if this object made it."""
        self.stop()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- what SIPp wrote ----------------------------------------------------------------------------
    def messages(self) -> list[SipMessage]:
        """Every SIP message sent and received so far (SIPp flushes each one)."""
        if not self.message_file.exists():
            return []
        return parse_messages(self.message_file.read_text(encoding="utf-8", errors="replace"))

    def stats(self) -> SippStats | None:
        """Cumulative call counters: written every second and at exit (None before the first row)."""
        if not self.stat_file.exists():
            return None
        return parse_stats(self.stat_file.read_text(encoding="utf-8", errors="replace"))

    def logs(self) -> list[str]:
        """Lines the scenario wrote with ``<log>`` actions."""
        if not self.log_file.exists():
            return []
        return [ln for ln in self.log_file.read_text(encoding="utf-8").splitlines() if ln.strip()]

    def outcomes(self) -> Counter[str]:
        """Counts of ``outcome=...`` log lines (carrier.xml logs one per call)."""
        found = (re.search(r"outcome=(\w+)", ln) for ln in self.logs())
        return Counter(m.group(1) for m in found if m)

    def errors(self) -> str:
        if not self.error_file.exists():
            return ""
        return self.error_file.read_text(encoding="utf-8", errors="replace")

    def failure_text(self) -> str:
        """SIPp's stderr and error log, for assertion messages."""
        parts = []
        if self.stderr_file.exists():
            parts.append(self.stderr_file.read_text(encoding="utf-8", errors="replace").strip())
        parts.append(self.errors().strip())
        return "\n".join(p for p in parts if p)[-4000:]


class SippUas(_Sipp):
    """SIPp answering calls on ``ip:port`` with a shipped scenario (a UAS: carrier, callee, agent phone,
    registrar). ``calls``: exit after that many calls (``-m``); None runs until stopped. ``digit`` picks
    the DTMF pcap of opt_out / agent_phone_star."""

    role = "uas"

    def __init__(
        self,
        scenario: str,
        port: int,
        media_port: int,
        keys: Mapping[str, str] | None = None,
        calls: int | None = None,
        trace_dir: Path | None = None,
        *,
        digit: str | None = None,
        ip: str = "127.0.0.1",
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        trace_messages: bool = True,
    ) -> None:
        merged = dict(keys or {})
        if digit is not None:
            merged.setdefault("dtmf_pcap", dtmf_pcap(digit))
        super().__init__(
            scenario,
            port,
            media_port,
            merged,
            calls,
            trace_dir,
            ip=ip,
            binary=binary,
            extra_args=extra_args,
            trace_messages=trace_messages,
        )

    @property
    def uri_host(self) -> str:
        return f"{self.ip}:{self.port}"


class SippUac(_Sipp):
    """SIPp placing calls to ``target`` (``"127.0.0.1:5060"``) with a scenario (default ``caller``):
    ``rate`` calls per second (``-r``), at most ``limit`` at once (``-l``), ``calls`` in total (``-m``).
    ``service`` is the Request-URI user (the number called); ``auth_user``/``auth_password`` answer a 401.
    The offer's m= port is SIPp's ``media_port`` unless ``keys["sdp_port"]`` names another listener."""

    role = "uac"

    def __init__(
        self,
        target: str,
        port: int,
        media_port: int,
        scenario: str = "caller",
        keys: Mapping[str, str] | None = None,
        calls: int | None = 1,
        trace_dir: Path | None = None,
        *,
        rate: float | None = None,
        limit: int | None = None,
        service: str = "15550002",
        auth_user: str | None = None,
        auth_password: str | None = None,
        ip: str = "127.0.0.1",
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        trace_messages: bool = True,
    ) -> None:
        merged = dict(keys or {})
        if "sdp_port" in scenario_keys(scenario):
            merged.setdefault("sdp_port", str(media_port))
        super().__init__(
            scenario,
            port,
            media_port,
            merged,
            calls,
            trace_dir,
            ip=ip,
            binary=binary,
            extra_args=extra_args,
            trace_messages=trace_messages,
        )
        self.target = target
        self.rate = rate
        self.limit = limit
        self.service = service
        self.auth_user = auth_user
        self.auth_password = auth_password

    def _role_args(self) -> list[str]:
        args = ["-s", self.service]
        if self.rate is not None:
            args += ["-r", f"{self.rate:g}"]
        if self.limit is not None:
            args += ["-l", str(self.limit)]
        if self.auth_user is not None:
            args += ["-au", self.auth_user]
        if self.auth_password is not None:
            args += ["-ap", self.auth_password]
        return [*args, self.target]


def environment_ok() -> bool:
    """Whether SIPp can run here with media (the pcap player needs a raw socket: root or CAP_NET_RAW)."""
    return sipp_binary() is not None and (os.geteuid() == 0 or _has_cap_net_raw())


def _has_cap_net_raw() -> bool:
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 13))
    return False
