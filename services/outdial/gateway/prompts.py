"""The audio files the gateway plays: text rendered by espeak-ng, or recordings an operator uploaded.

Every prompt ends up as an 8 kHz mono 16-bit PCM WAV in one cache directory: G.711 is 8 kHz, so
rtpengine's ``play media`` only re-encodes sample by sample, and the files are small and predictable.

- :meth:`PromptCache.render` speaks ``text`` with ``espeak-ng`` (the text goes in on stdin, never through a
  shell or argv) and converts it with ``sox``. The file is named by the SHA-256 of (text, voice, rate,
  :data:`RENDERER_VERSION`): a second render is a file lookup. It is written to a temporary file in the
  same directory and renamed over the final name, so two processes rendering the same text at once both
  end with one whole file; in one process, concurrent renders of the same text share one subprocess run.
- :meth:`PromptCache.use_recording` converts an uploaded recording (anything ``sox`` reads: WAV, MP3 with
  ``libsox-fmt-mp3``, FLAC, …) into the cache, named by the SHA-256 of its content.

Durations come from the WAV header (stdlib :mod:`wave`); :attr:`Prompt.sha256` is the hash of the file
that is played, so an audit record can name exactly what a customer heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import tempfile
import wave
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from outdial.core.errors import InvalidArgument, OutdialError
from outdial.rules.law import JURISDICTIONS

__all__ = [
    "DEFAULT_VOICE",
    "RENDERER_VERSION",
    "SAMPLE_RATE",
    "VOICE_OVERRIDES",
    "Prompt",
    "PromptCache",
    "PromptError",
    "RenderError",
    "voice_for",
]

#: Bumped whenever the command lines below change what is produced: old cache entries are then ignored.
RENDERER_VERSION: Final = "espeak-ng+sox/8k-s16-mono/1"
SAMPLE_RATE: Final = 8000
#: The voice of a jurisdiction of ``outdial.rules.law`` that is not North American English.
VOICE_OVERRIDES: Final[Mapping[str, str]] = {"UK": "en-gb"}
DEFAULT_VOICE: Final = "en-us"

MAX_TEXT_CHARS: Final = 2000
_VOICE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+\-]{0,39}")
_SUBPROCESS_TIMEOUT_S: Final = 60.0
# sox: only failures on stderr, guard against clipping, no dither (the same input gives the same bytes, so
# the SHA-256 is stable); output 8 kHz, one channel (sox averages the input's channels), 16-bit signed PCM.
_SOX_GLOBAL: Final = ("-V1", "-G", "-D")
_SOX_OUT: Final = ("-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer")


class PromptError(InvalidArgument):
    """A prompt that cannot be made from what was given (empty text, unknown voice, a file that is not audio)."""

    default_id = "invalid_prompt"


class RenderError(OutdialError):
    """espeak-ng or sox is missing, failed or hung on input that should have worked (INTERNAL)."""

    default_id = "prompt_render_failed"


@dataclass(frozen=True, slots=True)
class Prompt:
    path: Path
    duration_ms: int
    sha256: str  # of the WAV file at ``path``


def voice_for(jurisdiction: str) -> str:
    """The espeak-ng voice for a jurisdiction of ``outdial.rules.law``: en-gb for the UK, else en-us."""
    if jurisdiction not in JURISDICTIONS:
        raise PromptError(
            f"no voice for jurisdiction {jurisdiction!r}; known: {', '.join(JURISDICTIONS)}",
            field="jurisdiction",
        )
    return VOICE_OVERRIDES.get(jurisdiction, DEFAULT_VOICE)


class PromptCache:
    """Renders and caches prompts in ``directory`` (created if missing)."""

    def __init__(self, directory: Path, voice: str = DEFAULT_VOICE, rate_wpm: int = 160) -> None:
        _check_voice(voice)
        _check_rate(rate_wpm)
        self.directory = directory
        self.voice = voice
        self.rate_wpm = rate_wpm
        self._inflight: dict[Path, asyncio.Task[Prompt]] = {}

    async def render(self, text: str, *, voice: str | None = None, rate_wpm: int | None = None) -> Prompt:
        """The prompt speaking ``text`` (the cache's voice and rate unless given)."""
        voice = self.voice if voice is None else voice
        rate = self.rate_wpm if rate_wpm is None else rate_wpm
        _check_voice(voice)
        _check_rate(rate)
        if not text.strip():
            raise PromptError("the prompt text is empty", field="text")
        if len(text) > MAX_TEXT_CHARS:
            raise PromptError(f"the prompt text is over {MAX_TEXT_CHARS} characters", field="text")
        key = _sha256_hex(
            json.dumps(
                {"text": text, "voice": voice, "rate": rate, "renderer": RENDERER_VERSION}, sort_keys=True
            ).encode()
        )
        target = self.directory / f"tts-{key}.wav"

        async def make(tmp: Path) -> None:
            with _temp_path(self.directory, ".espeak.wav") as spoken:
                await _run(
                    ["espeak-ng", "-v", voice, "-s", str(rate), "-b", "1", "--stdin", "-w", str(spoken)],
                    stdin=text.encode("utf-8"),
                    what="espeak-ng",
                )
                await _run(["sox", *_SOX_GLOBAL, str(spoken), *_SOX_OUT, str(tmp)], what="sox")

        return await self._once(target, make)

    async def use_recording(self, path: Path) -> Prompt:
        """The prompt playing an operator-uploaded recording, converted to 8 kHz mono into the cache."""
        if not path.is_file():
            raise PromptError(f"{path}: no such file (or not a regular file)", field="path", file=str(path))
        try:
            content_sha = await asyncio.to_thread(_file_sha256, path)
        except OSError as exc:
            raise PromptError(
                f"{path}: cannot be read ({exc.strerror or exc})", field="path", file=str(path)
            ) from None
        if path.stat().st_size == 0:
            raise PromptError(f"{path}: the file is empty", field="path", file=str(path))
        key = _sha256_hex(f"upload:{content_sha}:{RENDERER_VERSION}".encode())
        target = self.directory / f"upload-{key}.wav"

        async def make(tmp: Path) -> None:
            code, stderr = await _exec(["sox", *_SOX_GLOBAL, str(path), *_SOX_OUT, str(tmp)], what="sox")
            if code != 0:
                raise PromptError(
                    f"{path}: not audio that sox can read ({_sox_reason(stderr, path)})",
                    field="path",
                    file=str(path),
                )
            converted = _cached(tmp)
            if converted is None or converted.duration_ms <= 0:
                raise PromptError(f"{path}: contains no audio", field="path", file=str(path))

        return await self._once(target, make)

    async def aclose(self) -> None:
        """Cancel renders still running (at shutdown) and wait for their subprocesses to be reaped."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _once(self, target: Path, make: Callable[[Path], Awaitable[None]]) -> Prompt:
        cached = _cached(target)
        if cached is not None:
            return cached
        task = self._inflight.get(target)
        if task is None:
            task = asyncio.create_task(self._produce(target, make))
            self._inflight[target] = task
            task.add_done_callback(lambda t: self._forget(target, t))
        # A caller that gives up does not cancel the render the others wait for.
        return await asyncio.shield(task)

    def _forget(self, target: Path, task: asyncio.Task[Prompt]) -> None:
        if self._inflight.get(target) is task:
            del self._inflight[target]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have left

    async def _produce(self, target: Path, make: Callable[[Path], Awaitable[None]]) -> Prompt:
        self.directory.mkdir(parents=True, exist_ok=True)
        with _temp_path(self.directory, ".wav") as tmp:
            await make(tmp)
            # A file the player cannot read never takes the final name.
            if _cached(tmp) is None:
                raise RenderError(f"{tmp}: the renderer wrote no 8 kHz mono 16-bit WAV")
            os.replace(tmp, target)
        prompt = _cached(target)
        if prompt is None:  # replaced meanwhile by a broken file: not by this code
            raise RenderError(f"{target}: not readable as WAV after writing it")
        return prompt


def _check_voice(voice: str) -> None:
    if not _VOICE_RE.fullmatch(voice):
        raise PromptError(f"invalid voice name {voice!r}", field="voice")


def _check_rate(rate_wpm: int) -> None:
    if not 80 <= rate_wpm <= 450:
        raise PromptError(f"speaking rate {rate_wpm} wpm is outside 80..450", field="rate_wpm")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _cached(target: Path) -> Prompt | None:
    """The prompt at ``target`` when it is a whole 8 kHz mono 16-bit WAV, else None (render it again)."""
    try:
        with wave.open(str(target), "rb") as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
                return None
            duration_ms = (w.getnframes() * 1000) // SAMPLE_RATE
        sha = _file_sha256(target)
    except (OSError, EOFError, wave.Error):
        return None
    return Prompt(path=target, duration_ms=duration_ms, sha256=sha)


@contextlib.contextmanager
def _temp_path(directory: Path, suffix: str) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(dir=directory, prefix=".part-", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


async def _exec(argv: list[str], *, what: str, stdin: bytes | None = None) -> tuple[int, str]:
    """Run ``argv`` (no shell); (exit code, stderr). Killed and reaped if the caller is cancelled."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise RenderError(f"{what} is not installed (no {argv[0]!r} on PATH)") from None
    try:
        async with asyncio.timeout(_SUBPROCESS_TIMEOUT_S):
            _, err = await proc.communicate(stdin)
    except BaseException as exc:  # cancelled or timed out: leave no process behind
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if isinstance(exc, TimeoutError):
            raise RenderError(f"{what} did not finish within {_SUBPROCESS_TIMEOUT_S:.0f} s") from None
        raise
    assert proc.returncode is not None
    return proc.returncode, err.decode("utf-8", "replace").strip()


async def _run(argv: list[str], *, what: str, stdin: bytes | None = None) -> None:
    code, stderr = await _exec(argv, what=what, stdin=stdin)
    if code != 0:
        if what == "espeak-ng" and "voice does not exist" in stderr:
            raise PromptError(f"espeak-ng has no voice {argv[2]!r}", field="voice")
        raise RenderError(f"{what} exited with {code}: {stderr[-300:]}")


def _sox_reason(stderr: str, path: Path) -> str:
    """sox's FAIL line without its boilerplate ("sox FAIL formats: can't open input file `x': ")."""
    lines = [ln for ln in stderr.splitlines() if "FAIL" in ln] or stderr.splitlines() or ["unknown error"]
    reason = lines[-1].split(": ", 1)[-1]
    reason = reason.replace(f"can't open input file `{path}'", "").strip(" :")
    return reason or "unrecognised or corrupt audio data"
