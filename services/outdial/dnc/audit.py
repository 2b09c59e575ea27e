"""The audit hash chain (pure: no I/O).

Each record's hash is ``sha256(canonical(record) + prev_hash)``, where ``canonical`` is a JSON object with
sorted keys over every field a reader relies on (seq, time in integer microseconds, actor, action, number,
campaign, call, result, reason, details). Changing any field of a record changes its hash; removing or
reordering records breaks the ``prev_hash`` link of the next one. :class:`ChainVerifier` walks the chain
and names the first record that does not fit: a broken link, a changed record, time going backwards, or a
record that disagrees with a signed checkpoint (``outdial.dnc.anchor``: what catches a database owner who
rewrote records and recomputed every later hash). Records are chained by the database itself
(``dnc_audit_append``, migration 0202), which assigns seq, time and prev_hash; :func:`chain` is the same
computation in Python, for tests and tools.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    """A record before it is chained (what the caller supplies)."""

    actor: str
    action: str
    number: str = ""
    campaign_id: str = ""
    call_id: str = ""
    result: str = ""
    reason: str = ""
    details: str = "{}"


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: datetime
    actor: str
    action: str
    number: str
    campaign_id: str
    call_id: str
    result: str
    reason: str
    details: str
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, seq: int, at: datetime, e: AuditEntry, prev_hash: str, hash: str) -> AuditRecord:
        """The record of entry ``e`` at ``seq``, chained after ``prev_hash``."""
        return cls(
            seq, at, e.actor, e.action, e.number, e.campaign_id, e.call_id, e.result, e.reason, e.details,
            prev_hash, hash,
        )  # fmt: skip


def details_json(obj: dict[str, Any] | None) -> str:
    """Canonical JSON text for a record's details (stored as text so it hashes exactly as written)."""
    return json.dumps(obj or {}, sort_keys=True, separators=(",", ":"), default=str)


def micros(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("audit times must be aware")
    delta = at.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def canonical(seq: int, at: datetime, e: AuditEntry | AuditRecord) -> bytes:
    body = {
        "seq": seq,
        "at_us": micros(at),
        "actor": e.actor,
        "action": e.action,
        "number": e.number,
        "campaign_id": e.campaign_id,
        "call_id": e.call_id,
        "result": e.result,
        "reason": e.reason,
        "details": e.details,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(seq: int, at: datetime, e: AuditEntry | AuditRecord, prev_hash: str) -> str:
    return hashlib.sha256(canonical(seq, at, e) + prev_hash.encode()).hexdigest()


def chain(head_seq: int, head_hash: str, at: datetime, entries: Iterable[AuditEntry]) -> list[AuditRecord]:
    """Chain ``entries`` after the head (seq, hash), all stamped ``at`` (truncated to microseconds)."""
    at = at.astimezone(UTC)
    out: list[AuditRecord] = []
    prev, seq = head_hash, head_seq
    for e in entries:
        seq += 1
        h = record_hash(seq, at, e, prev)
        out.append(AuditRecord.of(seq, at, e, prev, h))
        prev = h
    return out


@dataclass(frozen=True)
class Anchor:
    """What a signed checkpoint says: record ``seq`` had ``hash`` at time ``at_us``, signed at ``signed_at``."""

    seq: int
    hash: str
    at_us: int
    signed_at: datetime


@dataclass
class Verification:
    ok: bool = True
    checked: int = 0
    first_bad_seq: int = 0
    problem: str = ""
    head_hash: str = GENESIS
    last_seq: int = 0
    last_at: datetime | None = None
    # signed checkpoints compared with the log, and the newest one that matched
    anchors_checked: int = 0
    anchored_seq: int = 0
    anchored_at: datetime | None = None


class ChainVerifier:
    """Feed records in ``seq`` order (as stored); stops at the first bad one. ``anchors`` (by seq) are the
    signed checkpoints to compare the records with."""

    def __init__(
        self,
        start_seq: int = 0,
        start_hash: str = GENESIS,
        start_at: datetime | None = None,
        anchors: Mapping[int, Anchor] | None = None,
    ) -> None:
        self.result = Verification(head_hash=start_hash, last_seq=start_seq, last_at=start_at)
        self.anchors = dict(anchors or {})

    def feed(self, rec: AuditRecord) -> bool:
        """Returns False once a bad record has been found."""
        r = self.result
        if not r.ok:
            return False
        expected_seq = r.last_seq + 1
        if rec.seq != expected_seq:
            return self._bad(
                expected_seq if rec.seq > expected_seq else rec.seq,
                f"record {expected_seq} is missing (next stored record is {rec.seq})"
                if rec.seq > expected_seq
                else f"record {rec.seq} is out of order after {r.last_seq}",
            )
        if rec.prev_hash != r.head_hash:
            return self._bad(
                rec.seq, f"record {rec.seq} does not follow record {r.last_seq} (prev_hash differs)"
            )
        if record_hash(rec.seq, rec.at, rec, rec.prev_hash) != rec.hash:
            return self._bad(rec.seq, f"record {rec.seq} was changed (its contents do not match its hash)")
        if r.last_at is not None and rec.at < r.last_at:
            return self._bad(
                rec.seq,
                f"record {rec.seq} is dated {rec.at.isoformat()}, before record {r.last_seq} "
                f"({r.last_at.isoformat()}): time went backwards",
            )
        a = self.anchors.get(rec.seq)
        if a is not None:
            r.anchors_checked += 1
            if a.hash != rec.hash or a.at_us != micros(rec.at):
                after = (
                    f"after record {r.anchored_seq}, the last one a checkpoint confirms"
                    if r.anchored_seq
                    else "at or before it (no earlier checkpoint)"
                )
                return self._bad(
                    rec.seq,
                    f"record {rec.seq} disagrees with the checkpoint signed at {a.signed_at.isoformat()} "
                    f"({'its hash' if a.hash != rec.hash else 'its time'} differs): the log was rewritten "
                    f"{after}",
                )
            r.anchored_seq, r.anchored_at = rec.seq, a.signed_at
        r.checked += 1
        r.last_seq = rec.seq
        r.head_hash = rec.hash
        r.last_at = rec.at
        return True

    def finish(self, head_seq: int, head_hash: str) -> Verification:
        """Compare the end of the chain with the stored head (catches removal of the last records) and with
        checkpoints of records that are no longer there."""
        r = self.result
        if r.ok and (head_seq != r.last_seq or head_hash != r.head_hash):
            self._bad(
                r.last_seq + 1,
                f"the chain ends at record {r.last_seq} but the head says {head_seq}: records removed",
            )
        beyond = sorted(s for s in self.anchors if s > r.last_seq)
        if r.ok and beyond:
            a = self.anchors[beyond[-1]]
            self._bad(
                r.last_seq + 1,
                f"the log ends at record {r.last_seq} but a checkpoint signed at {a.signed_at.isoformat()} "
                f"covers record {a.seq}: records removed",
            )
        return r

    def _bad(self, seq: int, problem: str) -> bool:
        self.result.ok = False
        self.result.first_bad_seq = seq
        self.result.problem = problem
        return False
