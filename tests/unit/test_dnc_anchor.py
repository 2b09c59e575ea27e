"""Signed audit checkpoints and what the verifier makes of them (pure: no database)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from outdial.dnc import anchor
from outdial.dnc.anchor import CheckpointError, parse, sequence_problem, sign, verify_signature
from outdial.dnc.audit import (
    GENESIS,
    Anchor,
    AuditEntry,
    AuditRecord,
    ChainVerifier,
    chain,
    micros,
    record_hash,
)
from outdial.dnc.sinks import FileSink, open_sink

KEY = Ed25519PrivateKey.generate()
AT = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_a_checkpoint_round_trips_and_only_its_key_verifies_it() -> None:
    cp = sign(KEY, 42, "a" * 64, AT, AT + timedelta(seconds=1))
    back = parse(cp.to_json())
    assert back == cp and back.at == AT
    verify_signature(back, [KEY.public_key()])
    other = Ed25519PrivateKey.generate()
    with pytest.raises(CheckpointError, match="not a trusted public key"):
        verify_signature(back, [other.public_key()])
    # rotation: any of several trusted keys, chosen by key id
    verify_signature(back, [other.public_key(), KEY.public_key()])
    for field, value in (("seq", 43), ("hash", "b" * 64), ("at_us", cp.at_us + 1), ("signed_at_us", 1)):
        forged = dataclasses.replace(cp, **{field: value})
        with pytest.raises(CheckpointError, match="signature does not verify"):
            verify_signature(forged, [KEY.public_key()])
    # a key id claimed by a key that did not sign
    forged = sign(other, 42, "a" * 64, AT, AT)
    with pytest.raises(CheckpointError, match="signature does not verify"):
        verify_signature(dataclasses.replace(forged, key_id=cp.key_id), [KEY.public_key()])


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"v": 2}', "field v"),
        ('{"v": 1, "seq": -1, "hash": "' + "a" * 64 + '"}', "field seq"),
        ('{"v": 1, "seq": 1, "hash": "xyz"}', "field hash"),
        ('{"v": 1, "seq": 1, "hash": "' + "a" * 64 + '", "at_us": true}', "field at_us"),
        ('{"v": 1, "seq": 1, "hash": "' + "a" * 64 + '", "at_us": 1, "signed_at_us": 2}', "field key_id"),
    ],
)
def test_bad_checkpoint_files_name_the_field(text: str, words: str) -> None:
    with pytest.raises(CheckpointError, match=words):
        parse(text)


def test_keys_load_from_pem_and_refuse_other_kinds() -> None:
    assert anchor.key_id(anchor.load_private_key(anchor.private_pem(KEY)).public_key()) == anchor.key_id(
        anchor.load_public_key(anchor.public_pem(KEY.public_key()))
    )
    with pytest.raises(CheckpointError, match="PEM"):
        anchor.load_public_key(b"nonsense")


def test_checkpoints_among_themselves() -> None:
    a = sign(KEY, 10, "a" * 64, AT, AT + timedelta(seconds=1))
    b = sign(KEY, 20, "b" * 64, AT + timedelta(seconds=2), AT + timedelta(seconds=3))
    assert sequence_problem([b, a]) is None
    back = sign(KEY, 30, "c" * 64, AT + timedelta(seconds=4), AT)  # signed before its record's time
    assert sequence_problem([a, back]) == (
        30,
        "the checkpoint of record 30 is signed before the record's time",
    )
    earlier = sign(KEY, 30, "c" * 64, AT - timedelta(seconds=9), AT + timedelta(seconds=9))
    problem = sequence_problem([a, b, earlier])
    assert problem is not None and problem[0] == 30 and "time went backwards" in problem[1]
    fork = sign(KEY, 20, "d" * 64, AT + timedelta(seconds=2), AT + timedelta(seconds=5))
    problem = sequence_problem([a, b, fork])
    assert problem is not None and problem[0] == 20 and "forked" in problem[1]


def _chain(n: int) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    prev, at = GENESIS, AT
    for i in range(n):  # one second apart, as separate appends would be
        (r,) = chain(i, prev, at + timedelta(seconds=i), [AuditEntry("a", "check", f"+1202555{i:04d}")])
        out.append(r)
        prev = r.hash
    return out


def _walk(records: list[AuditRecord], anchors: dict[int, Anchor], head: AuditRecord | None = None):  # type: ignore[no-untyped-def]
    v = ChainVerifier(anchors=anchors)
    for r in records:
        if not v.feed(r):
            break
    h = head or records[-1]
    return v.finish(h.seq, h.hash)


def _anchor(r: AuditRecord) -> Anchor:
    return Anchor(r.seq, r.hash, micros(r.at), r.at + timedelta(seconds=1))


def _recompute(records: list[AuditRecord], start: int) -> list[AuditRecord]:
    """The owner's rewrite: every hash from index ``start`` recomputed, so the chain links again."""
    out = list(records[:start])
    prev = out[-1].hash if out else GENESIS
    for r in records[start:]:
        h = record_hash(r.seq, r.at, r, prev)
        out.append(dataclasses.replace(r, prev_hash=prev, hash=h))
        prev = h
    return out


def test_a_recomputed_rewrite_passes_the_chain_but_not_the_checkpoints() -> None:
    recs = _chain(10)
    anchors = {r.seq: _anchor(r) for r in (recs[2], recs[5], recs[8])}
    res = _walk(recs, anchors)
    assert res.ok and res.anchors_checked == 3 and res.anchored_seq == 9
    rewritten = _recompute([*recs[:4], dataclasses.replace(recs[4], result="allowed"), *recs[5:]], 4)
    assert _walk(rewritten, {}).ok  # the unkeyed chain alone cannot tell
    res = _walk(rewritten, anchors)
    assert not res.ok and res.first_bad_seq == 6  # the first checkpointed record after the rewrite
    assert (
        "after record 3, the last one a checkpoint confirms" in res.problem and "hash differs" in res.problem
    )


def test_time_going_backwards_is_found_even_when_the_hashes_agree() -> None:
    recs = _chain(6)
    moved = _recompute([*recs[:3], dataclasses.replace(recs[3], at=AT - timedelta(days=1)), *recs[4:]], 3)
    res = _walk(moved, {})
    assert not res.ok and res.first_bad_seq == 4 and "time went backwards" in res.problem
    # equal times (one batch) are fine
    batch = chain(0, GENESIS, AT, [AuditEntry("a", "check", str(i)) for i in range(3)])
    assert _walk(batch, {}).ok


def test_records_removed_under_a_checkpoint_are_found() -> None:
    recs = _chain(8)
    anchors = {8: _anchor(recs[7])}
    res = _walk(recs[:5], anchors, head=recs[4])
    assert not res.ok and res.first_bad_seq == 6 and "covers record 8: records removed" in res.problem


def test_the_file_sink_keeps_one_file_per_checkpoint(tmp_path: Path) -> None:
    sink = open_sink((tmp_path / "cps").as_uri())
    assert isinstance(sink, FileSink)
    for bad, words in (
        ("s3://bucket/x", "unsupported scheme 's3'"),
        ("file://host/x", "local directory"),
        ("checkpoints", "unsupported scheme"),
    ):
        with pytest.raises(ValueError, match=words):
            open_sink(bad)
    a = sign(KEY, 3, "a" * 64, AT, AT)
    b = sign(KEY, 12, "b" * 64, AT, AT)
    assert sink._put(b) and sink._put(a) and not sink._put(a)
    assert sink._latest() == b
    assert [n for n, _ in sink._entries()] == ["00000000000000000003.json", "00000000000000000012.json"]
    assert json.loads(sink._entries()[0][1])["seq"] == 3
