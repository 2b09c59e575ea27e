"""The Redis lookup index of the DNC lists (rebuilt from PostgreSQL, versioned, switched atomically).

Layout (chosen by measurement, see bench/dnc.py):
- bulk lists (national registries, wireless lists) are bitmaps: one key per list and number *prefix* (the
  E.164 digits minus the last 7; for NANP "1" + area code) of 10,000,000 bits (1.25 MB) covering every
  subscriber number under it. At the US registry's density (~250 M numbers over ~330 area codes, ~76 % of
  the NXX-XXXX space is unused… i.e. ~0.76 M numbers per area code) that is ~1.65 bytes per number; a
  Redis set costs ~60-70 bytes per member and intsets per NPA-NXX ~2.1 (see bench).
- small lists (internal, campaign, state) are plain sets of E.164 strings: bitmaps would cost 1.25 MB per
  prefix for a handful of numbers.
The layout follows from the list's kind, so readers need no metadata to build key names.

Versions: a rebuild writes version V+1 beside the live one, switches ``keys.dnc_index_current()`` with one
SET, then deletes the old version's keys (listed in its meta hash, no SCAN). Lookups and changes run as
Lua scripts that first check the version they built key names for is still current (else retry), so a
lookup never reads a half-built or half-deleted version.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from outdial.core import keys
from outdial.core.redis import Redis, load_lua
from outdial.dnc.gate import BULK_KINDS
from outdial.dnc.numbers import SEGMENT, split

BITMAP_BYTES = SEGMENT // 8


class IndexMissing(Exception):
    """No index version is live (never built, or Redis lost it)."""


def is_bitmap(kind: str) -> bool:
    return kind in BULK_KINDS


def shard_for(list_id: str, kind: str, e164: str) -> tuple[str, str]:
    """(shard name, member) of a number in a list."""
    if is_bitmap(kind):
        prefix, offset = split(e164)
        return f"{list_id}|{prefix}", str(offset)
    return f"{list_id}|set", e164


@dataclass
class _Ops:
    keys: list[str] = field(default_factory=list)
    where: dict[str, int] = field(default_factory=dict)
    argv: list[Any] = field(default_factory=list)

    def key(self, k: str) -> int:
        if k not in self.where:
            self.keys.append(k)
            self.where[k] = len(self.keys)
        return self.where[k]


class DncIndex:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis  # a bytes client
        self._lookup = redis.register_script(load_lua(__package__, "lookup.lua"))
        self._apply = redis.register_script(load_lua(__package__, "apply.lua"))

    async def current(self) -> int:
        v = await self.redis.get(keys.dnc_index_current())
        if v is None:
            raise IndexMissing("the DNC lookup index has not been built")
        return int(v)

    async def lookup(self, probes: Sequence[tuple[str, str, str]]) -> list[bool]:
        """``probes``: (list_id, kind, e164); answers whether each list holds each number. One Lua call."""
        if not probes:
            await self.current()
            return []
        for _ in range(5):
            version = await self.current()
            ops = _Ops(keys=[keys.dnc_index_current()])
            ops.where[keys.dnc_index_current()] = 1
            argv: list[Any] = [str(version)]
            for list_id, kind, e164 in probes:
                shard, member = shard_for(list_id, kind, e164)
                k = ops.key(keys.dnc_index(version, shard))
                argv.append(("b" if is_bitmap(kind) else "s") + str(k))
                argv.append(member)
            out = await self._lookup(keys=ops.keys, args=argv)
            if out is None:
                continue  # a rebuild switched versions between our GET and the script
            text = out.decode() if isinstance(out, bytes) else str(out)
            return [c == "1" for c in text]
        raise IndexMissing("the DNC index version kept changing")

    async def apply(self, changes: Iterable[tuple[str, str, str, bool]]) -> None:
        """``changes``: (list_id, kind, e164, present) applied to the live version at once."""
        changes = list(changes)
        if not changes:
            return
        for _ in range(5):
            version = await self.current()
            ops = _Ops()
            ops.key(keys.dnc_index_current())
            ops.key(keys.dnc_index_meta(version))
            argv: list[Any] = [str(version)]
            for list_id, kind, e164, present in changes:
                shard, member = shard_for(list_id, kind, e164)
                k = ops.key(keys.dnc_index(version, shard))
                code = ("b" if present else "c") if is_bitmap(kind) else ("a" if present else "r")
                argv += [f"{code}{k}", shard, member]
            if await self._apply(keys=ops.keys, args=argv) is not None:
                return
        raise IndexMissing("the DNC index version kept changing")

    # ------------------------------------------------------------------ building a version

    async def new_version(self) -> int:
        """A version number above the live one (epoch ms keeps it unique across rebuilds)."""
        try:
            cur = await self.current()
        except IndexMissing:
            cur = 0
        return max(cur + 1, int(time.time() * 1000))

    def bitmap_writer(self, version: int, list_id: str) -> BitmapWriter:
        return BitmapWriter(self.redis, version, list_id)

    async def write_set(self, version: int, list_id: str, numbers: Sequence[str]) -> int:
        shard = f"{list_id}|set"
        key = keys.dnc_index(version, shard)
        pipe = self.redis.pipeline(transaction=False)
        for i in range(0, len(numbers), 10_000):
            pipe.sadd(key, *numbers[i : i + 10_000])
        pipe.hset(keys.dnc_index_meta(version), f"k:{shard}", 1)
        await pipe.execute()
        return len(numbers)

    async def mark_built(self, version: int, counts: dict[str, int]) -> None:
        mapping: dict[
            bytes | bytearray | memoryview[int] | str | int | float,
            bytes | bytearray | memoryview[int] | str | int | float,
        ] = {f"count:{k}": v for k, v in counts.items()}
        mapping["built_at_ms"] = int(time.time() * 1000)
        await self.redis.hset(keys.dnc_index_meta(version), mapping=mapping)

    async def switch(self, version: int) -> int | None:
        """Make ``version`` live; returns the previous version (or None)."""
        old = await self.redis.set(keys.dnc_index_current(), str(version), get=True)
        return int(old) if old is not None else None

    async def drop(self, version: int) -> None:
        """Delete every key of a (no longer live) version."""
        meta = keys.dnc_index_meta(version)
        fields = await self.redis.hkeys(meta)
        names = [
            keys.dnc_index(version, (f.decode() if isinstance(f, bytes) else str(f))[2:])
            for f in fields
            if (f.decode() if isinstance(f, bytes) else str(f)).startswith("k:")
        ]
        for i in range(0, len(names), 500):
            await self.redis.unlink(*names[i : i + 500])
        await self.redis.unlink(meta)


class BitmapWriter:
    """Loads a bulk list into bitmaps from chunks of newline-separated E.164 digits (no "+"), sorted by
    number so that one 1.25 MB bitmap is in memory at a time (unsorted input still works: a prefix seen
    again is OR-ed into its key with BITOP). Feed it from ``COPY ... TO STDOUT``."""

    def __init__(self, redis: Redis, version: int, list_id: str) -> None:
        self.redis = redis
        self.version = version
        self.list_id = list_id
        self.count = 0
        self._prefix = -1
        self._bits = bytearray(BITMAP_BYTES)
        self._rest = b""
        self._written: set[int] = set()

    async def feed(self, chunk: bytes) -> None:
        data = self._rest + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._rest = data
            return
        self._rest = data[cut + 1 :]
        await self._numbers(data[:cut])

    async def close(self) -> int:
        await self._numbers(self._rest)
        self._rest = b""
        if self._prefix >= 0:
            await self._flush()
        return self.count

    async def _numbers(self, data: bytes) -> None:
        bits = self._bits
        prefix = self._prefix
        n_seen = 0
        for n in map(int, data.split()):
            p, o = divmod(n, SEGMENT)
            if p != prefix:
                if prefix >= 0:
                    self._bits, self._prefix = bits, prefix
                    await self._flush()
                    bits = self._bits
                prefix = p
            bits[o >> 3] |= 0x80 >> (o & 7)
            n_seen += 1
        self._bits, self._prefix = bits, prefix
        self.count += n_seen

    async def _flush(self) -> None:
        shard = f"{self.list_id}|{self._prefix}"
        key = keys.dnc_index(self.version, shard)
        pipe = self.redis.pipeline(transaction=False)
        if self._prefix in self._written:
            tmp = keys.dnc_index(self.version, f"{shard}|tmp")
            pipe.set(tmp, bytes(self._bits))
            pipe.bitop("OR", key, key, tmp)
            pipe.unlink(tmp)
        else:
            pipe.set(key, bytes(self._bits))
        pipe.hset(keys.dnc_index_meta(self.version), f"k:{shard}", 1)
        await pipe.execute()
        self._written.add(self._prefix)
        self._bits = bytearray(BITMAP_BYTES)
