"""Verify the DNC audit log against its signed checkpoints, and keep signing new ones.

:func:`verify_log` is what ``VerifyAudit`` runs in the service and what ``outdial dnc verify --database-url``
runs straight against PostgreSQL, with nothing but a read-only login, the checkpoints and the public key:
the same code, so that an auditor need not trust the service. :class:`Checkpointer` is the DNC service's
background task that signs a checkpoint every N records or T seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from outdial.dnc import store
from outdial.dnc.anchor import Checkpoint, CheckpointError, parse, sequence_problem, sign, verify_signature
from outdial.dnc.audit import GENESIS, Anchor, ChainVerifier, Verification
from outdial.dnc.sinks import CheckpointSink
from outdial.v1 import dnc_pb2

log = logging.getLogger("outdial.dnc.anchor")

#: Advisory lock of "signing a checkpoint" (one replica at a time signs).
CHECKPOINT_LOCK = 0x646E63_03


async def load_checkpoints(
    sink: CheckpointSink, keys: Iterable[Ed25519PublicKey]
) -> tuple[list[Checkpoint], tuple[int, str] | None]:
    """Every checkpoint of the sink whose signature verifies, or the first that does not (record, problem):
    a checkpoint nobody trusted signed is itself a sign of tampering."""
    keys = list(keys)
    out: list[Checkpoint] = []
    for name, raw in await sink.entries():
        try:
            cp = parse(raw)
            verify_signature(cp, keys)
        except CheckpointError as exc:
            seq = int(name.split(".", 1)[0]) if name.split(".", 1)[0].isdigit() else 0
            return out, (seq, f"checkpoint {name} in {sink.url}: {exc}")
        out.append(cp)
    return out, None


async def verify_log(
    conn: asyncpg.Connection,
    from_seq: int = 0,
    checkpoints: Sequence[Checkpoint] = (),
    *,
    to_seq: int | None = None,
) -> Verification:
    """Walk the chain from ``from_seq`` (in one repeatable-read snapshot) comparing it with ``checkpoints``
    (signatures already checked), then with the head. ``to_seq``: stop there (the checkpointer's walk)."""
    problem = sequence_problem(checkpoints)
    if problem is not None:
        return Verification(ok=False, first_bad_seq=problem[0], problem=problem[1])
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        start_seq, start_hash, start_at = 0, GENESIS, None
        if from_seq > 1:
            prev = await store.audit_before(conn, from_seq)
            if prev is not None:
                start_seq, start_hash, start_at = prev
        anchors = {
            c.seq: Anchor(c.seq, c.hash, c.at_us, c.signed_at) for c in checkpoints if c.seq > start_seq
        }
        v = ChainVerifier(start_seq, start_hash, start_at, anchors)
        async for rec in store.iter_audit(conn, max(from_seq, start_seq + 1)):
            if to_seq is not None and rec.seq > to_seq:
                break
            if not v.feed(rec):
                break
        head_seq, head_hash, _ = await store.audit_head(conn)
        if to_seq is not None:
            head_seq, head_hash = v.result.last_seq, v.result.head_hash
        return v.finish(head_seq, head_hash)


async def verify_with_sink(
    conn: asyncpg.Connection,
    from_seq: int,
    sink: CheckpointSink | None,
    keys: Iterable[Ed25519PublicKey],
) -> Verification:
    checkpoints: list[Checkpoint] = []
    if sink is not None:
        checkpoints, bad = await load_checkpoints(sink, keys)
        if bad is not None:
            return Verification(ok=False, first_bad_seq=bad[0], problem=bad[1])
    return await verify_log(conn, from_seq, checkpoints)


class Checkpointer:
    """Signs (seq, hash, time) of the chain's head every ``every_records`` appends (counted here: the engine
    calls :meth:`appended`) or ``every_seconds``, whichever comes first, and writes it to the sink. Before
    signing it walks the records since the previous checkpoint: a chain that does not extend what was
    already signed is never signed (it is logged as tampering)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        sink: CheckpointSink,
        key: Ed25519PrivateKey,
        every_records: int,
        every_seconds: float,
    ) -> None:
        self.pool = pool
        self.sink = sink
        self.key = key
        self.every_records = every_records
        self.every_seconds = every_seconds
        self.public_key = key.public_key()
        self._count = 0
        self._wake = asyncio.Event()
        self._latest: Checkpoint | None = None
        self._loaded = False
        self.problem = ""  # set while the chain does not extend the last checkpoint

    def appended(self, n: int) -> None:
        self._count += n
        if self._count >= self.every_records:
            self._wake.set()

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the head now if it moved since the last checkpoint; None when there was nothing to do."""
        if not self._loaded:
            self._latest = await self.sink.latest()
            self._loaded = True
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", CHECKPOINT_LOCK):
                return None  # another replica is signing
            row = await conn.fetchrow("SELECT seq, hash, at, clock_timestamp() AS now FROM dnc_audit_head")
            assert row is not None
            seq, hash_, at, now = int(row["seq"]), str(row["hash"]), row["at"], row["now"]
            last = self._latest
            if seq == 0 or at is None or (last is not None and last.seq >= seq):
                return None
            async with self.pool.acquire() as walk:
                # from the last checkpoint's own record, which must still match it
                v = await verify_log(walk, last.seq if last else 0, [last] if last else [], to_seq=seq)
            if not v.ok or v.last_seq != seq or v.head_hash != hash_:
                self.problem = v.problem or f"the chain does not reach the head (record {seq})"
                log.error("DNC audit log NOT checkpointed: %s", self.problem)
                return None
            self.problem = ""
            cp = sign(self.key, seq, hash_, at, max(now, at))
            if not await self.sink.put(cp):
                latest = await self.sink.latest()
                self._latest = latest if latest is not None and latest.seq >= seq else cp
                return None
            self._latest = cp
            log.info("DNC audit checkpoint: record %d signed (%s)", seq, self.sink.url)
            return cp

    async def run(self, ready: asyncio.Event) -> None:
        """Background: checkpoint when woken by appends or every ``every_seconds``."""
        await ready.wait()
        while True:
            self._wake.clear()
            self._count = 0
            try:
                await self.checkpoint()
            except Exception as exc:  # keep signing later: a sink or database outage is temporary
                log.warning("DNC audit checkpoint failed: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every_seconds)

    @property
    def latest(self) -> Checkpoint | None:
        return self._latest


def verification_response(v: Verification) -> dnc_pb2.VerifyAuditResponse:
    """What VerifyAudit answers, and what `outdial dnc verify --database-url` prints, for one verification."""
    resp = dnc_pb2.VerifyAuditResponse(
        ok=v.ok,
        records_checked=v.checked,
        first_bad_seq=v.first_bad_seq,
        problem=v.problem,
        head_hash=v.head_hash,
        head_seq=v.last_seq,
        checkpoints_checked=v.anchors_checked,
        anchored_seq=v.anchored_seq,
        unanchored_records=max(0, v.last_seq - v.anchored_seq) if v.ok else 0,
    )
    if v.anchored_at is not None:
        resp.anchored_at.FromDatetime(v.anchored_at)
    return resp
