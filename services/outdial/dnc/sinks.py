"""Where signed audit checkpoints are kept, outside PostgreSQL, named by URL (``OUTDIAL_DNC_CHECKPOINT_URL``).

``file:///var/lib/outdial/checkpoints``: a directory, one file per checkpoint named by its record
(``00000000000000000042.json``). A file is created once and never replaced (written aside, then hard-linked
into place, which fails when the name exists), so a checkpoint cannot be overwritten through the sink.

Another store (an object store with write-once retention, say) is one more class with the three methods of
:class:`CheckpointSink` and a scheme in :func:`open_sink`: one object per checkpoint, keyed the same way,
``latest`` the greatest key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from outdial.dnc.anchor import Checkpoint, CheckpointError, parse


class CheckpointSink(Protocol):
    url: str

    async def put(self, cp: Checkpoint) -> bool:
        """Store ``cp``; False when a checkpoint of that record is already there (it is left alone)."""
        ...

    async def latest(self) -> Checkpoint | None:
        """The checkpoint of the greatest record (structure checked, signature not)."""
        ...

    async def entries(self) -> list[tuple[str, bytes]]:
        """Every stored checkpoint as (name, raw bytes), in record order."""
        ...


def _name(seq: int) -> str:
    return f"{seq:020d}.json"


class FileSink:
    def __init__(self, directory: Path, url: str) -> None:
        self.directory = directory
        self.url = url

    def _put(self, cp: Checkpoint) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / _name(cp.seq)
        if final.exists():
            return False
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(cp.to_json() + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, final)  # atomic, and refuses to replace an existing checkpoint
            except FileExistsError:
                return False
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(n for n in os.listdir(self.directory) if n.endswith(".json") and not n.startswith("."))

    def _latest(self) -> Checkpoint | None:
        for name in reversed(self._names()):
            try:
                return parse((self.directory / name).read_bytes())
            except CheckpointError:
                continue  # a damaged file is verify's to report; the newest readable one is the latest
        return None

    def _entries(self) -> list[tuple[str, bytes]]:
        return [(n, (self.directory / n).read_bytes()) for n in self._names()]

    async def put(self, cp: Checkpoint) -> bool:
        return await asyncio.to_thread(self._put, cp)

    async def latest(self) -> Checkpoint | None:
        return await asyncio.to_thread(self._latest)

    async def entries(self) -> list[tuple[str, bytes]]:
        return await asyncio.to_thread(self._entries)


def open_sink(url: str) -> CheckpointSink:
    """The sink a URL names; ValueError (naming the setting) for anything else."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"checkpoint URL {url!r}: a file URL names a local directory (file:///path)")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"checkpoint URL {url!r}: the directory must be an absolute path")
        return FileSink(Path(path), url)
    raise ValueError(
        f"checkpoint URL {url!r} (OUTDIAL_DNC_CHECKPOINT_URL / --checkpoints): unsupported scheme "
        f"{parts.scheme or '(none)'!r}; file:///directory is implemented"
    )
