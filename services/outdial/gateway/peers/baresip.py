"""baresip 1.0 as an independent agent softphone: a headless configuration (loopback only, an 8 kHz tone
as its microphone, what it hears dumped to WAV, auto-answer, the ctrl_tcp control socket), started as a
child process whose output is kept in a log file, and read back to tell whether it registered.

baresip has no command that sends DTMF in 1.0: test an agent's key press with SIPp (agent_phone_star.xml).
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import signal
import struct
import subprocess
import time
import wave
from pathlib import Path
from types import TracebackType
from typing import Self

# "agent1@127.0.0.1: {0/UDP/v4} 200 OK  [1 binding]" (printed on each successful REGISTER)
_REGISTERED = re.compile(r"\{\d+/UDP/v4\} 200 OK")
_REG_FAILED = re.compile(r"reg: .*(failed|\b4\d\d\b|\b5\d\d\b)|\{\d+/UDP/v4\} [45]\d\d ")


class BaresipError(RuntimeError):
    """baresip could not start or did not do what was asked in time."""


def baresip_binary() -> str | None:
    return shutil.which("baresip")


def write_tone(path: Path, seconds: float = 60.0, hz: float = 440.0, rate: int = 8000) -> Path:
    """A mono 16-bit WAV sine at ``rate`` Hz (baresip's aufile wants the codec's rate: 8 kHz for G.711)."""
    frames = bytearray()
    for n in range(int(seconds * rate)):
        frames += struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * n / rate)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return path


class Baresip:
    """One headless baresip with one account ``sip:ACCOUNT_USER@REGISTRAR``.

    ``registrar`` ``"127.0.0.1:PORT"`` registers there with digest ``password``; None: no registration
    (``regint=0``). Calls are answered automatically. ``tone_wav`` (8 kHz mono) is what it sends (a 440 Hz
    tone is written when None); ``capture_wav``: after :meth:`stop`, what it heard in its last call (the
    sndfile module's decoded dump) is copied there. ``ctrl_port`` is ctrl_tcp's port (default listen+1).
    """

    def __init__(
        self,
        account_user: str,
        password: str,
        registrar: str | None,
        listen_port: int,
        workdir: Path,
        tone_wav: Path | None = None,
        capture_wav: Path | None = None,
        *,
        ctrl_port: int | None = None,
        ip: str = "127.0.0.1",
        rtp_ports: tuple[int, int] | None = None,
        register_interval_s: int = 3600,
        binary: str | None = None,
    ) -> None:
        self.account_user = account_user
        self.password = password
        self.registrar = registrar
        self.listen_port = listen_port
        self.workdir = Path(workdir)
        self.tone_wav = tone_wav
        self.capture_wav = capture_wav
        self.ctrl_port = ctrl_port if ctrl_port is not None else listen_port + 1
        self.ip = ip
        self.rtp_ports = rtp_ports
        self.register_interval_s = register_interval_s
        self._binary = binary
        self.log_file = self.workdir / "baresip.log"
        self.capture_dir = self.workdir / "capture"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def aor(self) -> str:
        host = self.registrar or f"{self.ip}:{self.listen_port}"
        return f"sip:{self.account_user}@{host}"

    def write_config(self) -> Path:
        """Writes ``config`` and ``accounts`` into the work directory (returned): loopback only, no sound
        card, no console UI."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.capture_dir.mkdir(exist_ok=True)
        tone = self.tone_wav or write_tone(self.workdir / "tone.wav")
        lines = [
            "poll_method epoll",
            f"sip_listen {self.ip}:{self.listen_port}",
            f"net_interface {self.ip}",
            "call_local_timeout 120",
            "call_max_calls 4",
            f"audio_source aufile,{tone}",
            "audio_player aubridge,outdial-none",
            "audio_alert aubridge,outdial-none",
            "audio_level no",
            "rtcp_mux no",
            "jitter_buffer_delay 5-10",
            "module_path /usr/lib/baresip/modules",
            "module g711.so",
            "module aufile.so",
            "module aubridge.so",
            "module sndfile.so",
            f"snd_path {self.capture_dir}",
            "module_tmp uuid.so",
            "module_tmp account.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen {self.ip}:{self.ctrl_port}",
        ]
        if self.rtp_ports is not None:
            lines.append(f"rtp_ports {self.rtp_ports[0]}-{self.rtp_ports[1]}")
        (self.workdir / "config").write_text("\n".join(lines) + "\n")
        params = ["answermode=auto", "audio_codecs=PCMA,PCMU"]
        if self.registrar is None:
            params.append("regint=0")
        else:
            params += [f"auth_pass={self.password}", f"regint={self.register_interval_s}"]
        (self.workdir / "accounts").write_text(f"<{self.aor}>;" + ";".join(params) + "\n")
        return self.workdir

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, ready_timeout: float = 10.0) -> Self:
        """Writes the configuration, starts baresip, returns once it logged its modules and is running."""
        binary = self._binary or baresip_binary()
        if binary is None:
            raise BaresipError("baresip is not installed (Debian: apt-get install baresip)")
        if self._proc is not None:
            raise BaresipError("already started")
        self.write_config()
        with open(self.log_file, "wb") as log:
            self._proc = subprocess.Popen(
                [binary, "-f", str(self.workdir), "-v"],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout
        while "ctrl_tcp: TCP socket on" not in self.log() and "baresip is ready" not in self.log():
            if self._proc.poll() is not None:
                raise BaresipError(f"baresip exited with {self._proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise BaresipError(f"baresip did not become ready:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        return self

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM (baresip un-registers and exits), SIGKILL after ``grace`` s; reaped. Copies the capture."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
        code = self._proc.wait()
        if self.capture_wav is not None:
            heard = self.captures()
            if heard:
                shutil.copyfile(heard[-1], self.capture_wav)
        return code

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what it did --------------------------------------------------------------------------------
    def log(self) -> str:
        if not self.log_file.exists():
            return ""
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def registered(self) -> bool:
        """Whether a REGISTER of this account got 200 OK."""
        return bool(_REGISTERED.search(self.log()))

    def registration_failed(self) -> bool:
        return bool(_REG_FAILED.search(self.log()))

    def wait_registered(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.registered():
                return True
            if not self.running:
                return False
            time.sleep(0.05)
        return self.registered()

    def captures(self) -> list[Path]:
        """WAV dumps of what it heard (decoded), oldest first."""
        return sorted(self.capture_dir.glob("dump-*-dec.wav"), key=lambda p: p.stat().st_mtime)
