"""Signed checkpoints of the audit chain (pure: no I/O).

A checkpoint says "record ``seq`` of the DNC audit log had hash ``hash`` and time ``at_us``", signed at
``signed_at_us`` with an Ed25519 key that is not in the database. The DNC service writes one every N
records or T seconds to a sink outside PostgreSQL (``outdial.dnc.sinks``). Whoever can rewrite the database
(the owner can disable the trigger, rewrite a record, recompute every later hash and move the head) cannot
sign: ``outdial dnc verify`` compares the log with every checkpoint and names the first record that
disagrees. Only records after the newest checkpoint are unprotected (at most N records or T seconds).

Serialised form (one JSON object; ``sig`` is base64 of the Ed25519 signature over :func:`payload`)::

    {"v":1,"seq":42,"hash":"…","at_us":…,"signed_at_us":…,"key_id":"…","sig":"…"}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from outdial.dnc.audit import micros

VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose signature does not verify."""


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of SHA-256 of its raw 32 bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError("the audit signing key must be an Ed25519 key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError("the audit public key must be an Ed25519 key")
    return key


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at_us: int
    signed_at_us: int
    key_id: str
    sig: str

    @property
    def at(self) -> datetime:
        return from_micros(self.at_us)

    @property
    def signed_at(self) -> datetime:
        return from_micros(self.signed_at_us)

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": VERSION,
                "seq": self.seq,
                "hash": self.hash,
                "at_us": self.at_us,
                "signed_at_us": self.signed_at_us,
                "key_id": self.key_id,
                "sig": self.sig,
            },
            sort_keys=True,
            separators=(",", ":"),
        )


def payload(seq: int, hash_: str, at_us: int, signed_at_us: int, kid: str) -> bytes:
    """The signed bytes: canonical JSON of everything but the signature."""
    body = {
        "v": VERSION,
        "seq": seq,
        "hash": hash_,
        "at_us": at_us,
        "signed_at_us": signed_at_us,
        "key_id": kid,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(key: Ed25519PrivateKey, seq: int, hash_: str, at: datetime, signed_at: datetime) -> Checkpoint:
    kid = key_id(key.public_key())
    at_us, signed_us = micros(at), micros(signed_at)
    sig = key.sign(payload(seq, hash_, at_us, signed_us, kid))
    return Checkpoint(seq, hash_, at_us, signed_us, kid, base64.b64encode(sig).decode())


def _int(d: dict[str, Any], name: str) -> int:
    v = d.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise CheckpointError(f"field {name} must be a non-negative integer")
    return v


def _str(d: dict[str, Any], name: str) -> str:
    v = d.get(name)
    if not isinstance(v, str) or not v:
        raise CheckpointError(f"field {name} must be a non-empty string")
    return v


def parse(text: str | bytes) -> Checkpoint:
    """A checkpoint from its JSON form (structure only: :func:`verify_signature` checks the signature)."""
    try:
        d = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"not JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise CheckpointError("not a JSON object")
    if d.get("v") != VERSION:
        raise CheckpointError(f"field v must be {VERSION}")
    h = _str(d, "hash")
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise CheckpointError("field hash must be 64 lower-case hex digits")
    return Checkpoint(
        _int(d, "seq"), h, _int(d, "at_us"), _int(d, "signed_at_us"), _str(d, "key_id"), _str(d, "sig")
    )


def verify_signature(cp: Checkpoint, keys: Iterable[Ed25519PublicKey]) -> None:
    """Raise :class:`CheckpointError` unless one of ``keys`` (chosen by key id) signed ``cp``."""
    by_id = {key_id(k): k for k in keys}
    key = by_id.get(cp.key_id)
    if key is None:
        raise CheckpointError(f"signed by key {cp.key_id}, which is not a trusted public key")
    try:
        sig = base64.b64decode(cp.sig, validate=True)
        key.verify(sig, payload(cp.seq, cp.hash, cp.at_us, cp.signed_at_us, cp.key_id))
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise CheckpointError(f"checkpoint of record {cp.seq}: the signature does not verify") from exc


def sequence_problem(checkpoints: Sequence[Checkpoint]) -> tuple[int, str] | None:
    """Checkpoints among themselves (sorted by seq, then signing time): time never goes backwards, and two
    checkpoints of one record agree. Returns (record, problem) for the first that does not fit."""
    ordered = sorted(checkpoints, key=lambda c: (c.seq, c.signed_at_us))
    for c in ordered:
        if c.signed_at_us < c.at_us:
            return c.seq, f"the checkpoint of record {c.seq} is signed before the record's time"
    for a, b in itertools.pairwise(ordered):
        if a.seq == b.seq and (a.hash != b.hash or a.at_us != b.at_us):
            return b.seq, f"two signed checkpoints of record {b.seq} disagree (the log was forked)"
        if b.signed_at_us < a.signed_at_us or b.at_us < a.at_us:
            return b.seq, (
                f"the checkpoint of record {b.seq} is dated before the one of record {a.seq}: time went backwards"
            )
    return None
