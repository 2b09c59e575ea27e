"""Prompts: text spoken by the real espeak-ng and converted by the real sox, and uploaded recordings."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import stat
import subprocess
import wave
from pathlib import Path

import pytest

from outdial.gateway.prompts import SAMPLE_RATE, Prompt, PromptCache, PromptError, voice_for
from outdial.rules.law import JURISDICTIONS
from tests.tools import needs, unavailable

pytestmark = needs("espeak-ng", "sox")

ABANDON = (
    "Hello, this is Example Company calling. We are sorry we could not connect you to an agent. "
    "Please call us back at your convenience."
)


@pytest.fixture
def espeak_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a wrapper named espeak-ng first on PATH: it appends a line to a file, then runs the real one."""
    real = shutil.which("espeak-ng")
    assert real is not None
    bindir = tmp_path / "bin"
    bindir.mkdir()
    counter = tmp_path / "espeak-calls"
    counter.touch()
    wrapper = bindir / "espeak-ng"
    wrapper.write_text(f'#!/bin/sh\necho run >> "{counter}"\nexec "{real}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return counter


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines())


def wav_format(path: Path) -> tuple[int, int, int, int]:
    """(rate, channels, bytes per sample, frames) read from the header."""
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_render_makes_an_8k_mono_16bit_wav_whose_header_gives_the_duration(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path / "prompts")
    prompt = await cache.render(ABANDON)
    rate, channels, width, frames = wav_format(prompt.path)
    assert (rate, channels, width) == (SAMPLE_RATE, 1, 2)
    assert prompt.duration_ms == frames * 1000 // SAMPLE_RATE
    # ~20 words at 160 wpm: several seconds of speech, not a click and not a minute.
    assert 4000 < prompt.duration_ms < 15000
    assert prompt.sha256 == hashlib.sha256(prompt.path.read_bytes()).hexdigest()
    assert prompt.path.parent == tmp_path / "prompts"
    # sox reads it back as the same audio (an independent reader of the header).
    soxi = subprocess.run(["soxi", "-s", str(prompt.path)], capture_output=True, text=True, check=True)
    assert int(soxi.stdout) == frames


async def test_a_second_render_is_a_file_lookup(tmp_path: Path, espeak_calls: Path) -> None:
    cache = PromptCache(tmp_path / "prompts")
    first = await cache.render(ABANDON)
    assert runs(espeak_calls) == 1
    before = first.path.stat()
    second = await cache.render(ABANDON)
    # Another cache on the same directory (a restarted gateway) finds it too.
    third = await PromptCache(tmp_path / "prompts").render(ABANDON)
    assert runs(espeak_calls) == 1
    assert first == second == third
    after = first.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # A different voice or rate is a different prompt.
    uk = await cache.render(ABANDON, voice="en-gb")
    faster = await cache.render(ABANDON, rate_wpm=220)
    assert runs(espeak_calls) == 3
    assert len({first.path, uk.path, faster.path}) == 3
    assert faster.duration_ms < first.duration_ms


async def test_duration_grows_with_the_text(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    short = await cache.render("Please hold for the next agent.")  # 6 words
    long = await cache.render(
        "Please hold for the next agent. Your call matters to us and will be answered in the order "
        "it was received. Thank you for your patience while we connect you."
    )  # 30 words
    assert short.duration_ms > 0
    assert 2.5 < long.duration_ms / short.duration_ms < 10


async def test_concurrent_renders_of_one_text_run_espeak_once_and_leave_one_file(
    tmp_path: Path, espeak_calls: Path
) -> None:
    directory = tmp_path / "prompts"
    cache = PromptCache(directory)
    prompts = await asyncio.gather(*(cache.render(ABANDON) for _ in range(10)))
    assert runs(espeak_calls) == 1
    assert len(set(prompts)) == 1
    assert files_in(directory) == [prompts[0].path.name]


async def test_a_caller_that_gives_up_does_not_stop_the_render_others_wait_for(
    tmp_path: Path, espeak_calls: Path
) -> None:
    cache = PromptCache(tmp_path)
    quitter = asyncio.create_task(cache.render(ABANDON))
    waiter = asyncio.create_task(cache.render(ABANDON))
    await asyncio.sleep(0)  # both are waiting on the one render
    quitter.cancel()
    prompt = await waiter
    assert quitter.cancelled()
    assert runs(espeak_calls) == 1
    assert files_in(tmp_path) == sorted(["bin", "espeak-calls", prompt.path.name])
    await cache.aclose()


async def test_two_caches_on_one_directory_rendering_at_once_leave_one_whole_file(tmp_path: Path) -> None:
    """Two gateway processes share the directory: each renders, the renames leave one whole file."""
    directory = tmp_path / "prompts"
    one, two = PromptCache(directory), PromptCache(directory)
    a, b = await asyncio.gather(one.render(ABANDON), two.render(ABANDON))
    assert a == b
    assert files_in(directory) == [a.path.name]  # no temporary file left behind
    assert wav_format(a.path)[:3] == (SAMPLE_RATE, 1, 2)


async def test_text_is_spoken_never_read_as_options_or_shell(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    for text in (
        "--version",
        "-w /tmp/x.wav",
        "$(touch pwned) `touch pwned`; touch pwned",
        "Café: £5, naïve",
    ):
        prompt = await cache.render(text)
        assert prompt.duration_ms > 300, text
    assert not (tmp_path / "pwned").exists()
    assert not Path("pwned").exists()


async def test_bad_text_voice_or_rate_is_refused(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    with pytest.raises(PromptError, match="empty"):
        await cache.render("   ")
    with pytest.raises(PromptError, match="no voice"):
        await cache.render("hello", voice="xx-nosuchvoice")
    with pytest.raises(PromptError, match="invalid voice"):
        await cache.render("hello", voice="-w")
    with pytest.raises(PromptError):
        PromptCache(tmp_path, rate_wpm=5)
    assert files_in(tmp_path) == []


async def test_an_uploaded_file_that_is_not_audio_is_refused_by_name(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path / "prompts")
    text = tmp_path / "greeting.txt"
    text.write_text("this is not audio")
    fake_wav = tmp_path / "greeting.wav"
    fake_wav.write_text("this is not audio either")
    empty = tmp_path / "empty.wav"
    empty.touch()
    for path, why in ((text, "not audio"), (fake_wav, "RIFF"), (empty, "empty")):
        with pytest.raises(PromptError) as err:
            await cache.use_recording(path)
        assert str(path) in err.value.message
        assert why in err.value.message
        assert err.value.details["file"] == str(path)
    with pytest.raises(PromptError, match="no such file"):
        await cache.use_recording(tmp_path / "missing.wav")
    assert not (tmp_path / "prompts").exists() or files_in(tmp_path / "prompts") == []


async def test_an_uploaded_wav_is_converted_to_8k_mono_and_keyed_by_content(tmp_path: Path) -> None:
    upload = tmp_path / "upload.wav"
    # 2.5 s of 44.1 kHz stereo, as an operator's editor would export it.
    subprocess.run(
        ["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(upload), "synth", "2.5", "sine", "440"],
        check=True,
    )
    cache = PromptCache(tmp_path / "prompts")
    prompt = await cache.use_recording(upload)
    rate, channels, width, _ = wav_format(prompt.path)
    assert (rate, channels, width) == (SAMPLE_RATE, 1, 2)
    assert abs(prompt.duration_ms - 2500) <= 5
    # The same content under another name is the same prompt; a different file is another.
    copy = tmp_path / "same-content.wav"
    shutil.copy(upload, copy)
    assert await cache.use_recording(copy) == prompt
    other = tmp_path / "other.wav"
    subprocess.run(
        ["sox", "-n", "-r", "8000", "-c", "1", str(other), "synth", "1", "sine", "300"], check=True
    )
    assert (await cache.use_recording(other)).path != prompt.path


async def test_an_uploaded_mp3_is_converted(tmp_path: Path) -> None:
    formats = subprocess.run(["sox", "-h"], capture_output=True, text=True).stdout
    if " mp3 " not in formats:
        unavailable("sox's MP3 support (Debian libsox-fmt-mp3)")
    mp3 = tmp_path / "greeting.mp3"
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", str(mp3), "synth", "3", "sine", "440"], check=True)
    prompt = await PromptCache(tmp_path / "prompts").use_recording(mp3)
    assert wav_format(prompt.path)[:3] == (SAMPLE_RATE, 1, 2)
    assert abs(prompt.duration_ms - 3000) < 100  # MP3 frames pad the ends a little


async def test_a_damaged_cache_entry_is_rendered_again(tmp_path: Path, espeak_calls: Path) -> None:
    cache = PromptCache(tmp_path)
    prompt = await cache.render(ABANDON)
    prompt.path.write_bytes(b"RIFF....truncated")
    again = await cache.render(ABANDON)
    assert runs(espeak_calls) == 2
    assert again == Prompt(prompt.path, prompt.duration_ms, prompt.sha256)


def test_voice_for_every_jurisdiction_of_the_law() -> None:
    assert voice_for("US") == "en-us"
    assert voice_for("CA") == "en-us"
    assert voice_for("UK") == "en-gb"
    for jurisdiction in JURISDICTIONS:
        assert voice_for(jurisdiction)
    with pytest.raises(PromptError, match="no voice for jurisdiction"):
        voice_for("FR")
