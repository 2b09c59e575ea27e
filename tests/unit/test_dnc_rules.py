"""Pure DNC code: the audit hash chain, the gate's decisions, number normalisation."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outdial.dnc import gate
from outdial.dnc.audit import GENESIS, AuditEntry, ChainVerifier, chain
from outdial.dnc.numbers import InvalidNumber, normalise, registry_line, split
from outdial.dnc.rnd import ConsentInfo
from outdial.rules.consent import AUTODIALLED, Call
from outdial.rules.table import ConsentRow, rules_in_force

AT = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
texts = st.text(max_size=12)
entries = st.lists(
    st.builds(
        AuditEntry,
        actor=texts,
        action=st.sampled_from(["check", "add", "remove"]),
        number=texts,
        result=texts,
        reason=texts,
    ),
    min_size=1,
    max_size=12,
)


def verify(records: list) -> ChainVerifier:  # type: ignore[type-arg]
    v = ChainVerifier()
    for r in records:
        if not v.feed(r):
            break
    return v


@given(entries)
def test_an_untouched_chain_verifies(es: list[AuditEntry]) -> None:
    recs = chain(0, GENESIS, AT, es)
    res = verify(recs).finish(recs[-1].seq, recs[-1].hash)
    assert res.ok and res.checked == len(es)


@given(entries, st.data())
def test_any_change_is_found_at_its_record(es: list[AuditEntry], data: st.DataObject) -> None:
    recs = chain(0, GENESIS, AT, es)
    i = data.draw(st.integers(0, len(recs) - 1))
    field = data.draw(st.sampled_from(["actor", "result", "reason", "number", "at"]))
    old = getattr(recs[i], field)
    new = old + timedelta(microseconds=1) if field == "at" else old + "x"
    recs[i] = dataclasses.replace(recs[i], **{field: new})
    res = verify(recs).finish(len(recs), chain(0, GENESIS, AT, es)[-1].hash)
    assert not res.ok and res.first_bad_seq == i + 1


def test_removed_and_reordered_records_are_found() -> None:
    recs = chain(0, GENESIS, AT, [AuditEntry("a", "add", f"n{i}") for i in range(5)])
    res = verify([*recs[:2], *recs[3:]]).finish(5, recs[-1].hash)
    assert (res.ok, res.first_bad_seq) == (False, 3)
    swapped = [recs[0], dataclasses.replace(recs[2], seq=2), dataclasses.replace(recs[1], seq=3), *recs[3:]]
    res = verify(swapped).finish(5, recs[-1].hash)
    assert (res.ok, res.first_bad_seq) == (False, 2)
    res = verify(recs[:4]).finish(5, recs[-1].hash)
    assert (res.ok, res.first_bad_seq) == (False, 5)


NOW = datetime(2026, 3, 1, tzinfo=UTC)
LISTS = [
    gate.ListInfo("internal", "internal"),
    gate.ListInfo("campaign:c1", "campaign", campaign_id="c1"),
    gate.ListInfo("national:US", "national", jurisdiction="US", registry_date=NOW - timedelta(days=3)),
    gate.ListInfo("wireless:US", "wireless", jurisdiction="US"),
    gate.ListInfo("national:UK", "national", jurisdiction="UK", registry_date=NOW - timedelta(days=32)),
]


def test_applicable_lists() -> None:
    ids = [li.id for li in gate.applicable(LISTS, "c1", "US")]
    assert ids == ["internal", "campaign:c1", "national:US", "wireless:US"]
    assert [li.id for li in gate.applicable(LISTS, "", "UK")] == ["internal", "national:UK"]


def test_registry_age_and_absence() -> None:
    assert gate.registry_reason(LISTS, "US", NOW, require=True, max_age_days=31) is None
    stale = gate.registry_reason(LISTS, "UK", NOW, require=True, max_age_days=31)
    assert stale is not None and stale.code == "registry.stale" and "32 days ago" in stale.detail
    missing = gate.registry_reason(LISTS, "CA", NOW, require=True, max_age_days=31)
    assert missing is not None and missing.code == "registry.missing"
    assert gate.registry_reason(LISTS, "CA", NOW, require=False, max_age_days=31) is None


def _consent_reasons(hits: list[str], consents: list[ConsentInfo]) -> list[gate.Reason]:
    rows = rules_in_force("US", None, NOW).of(ConsentRow)
    lt = gate.line_type(LISTS, hits, "US", NOW, 15)
    c = Call(AUTODIALLED, "telemarketing", lt.line, "national:US" in hits, "c1")
    return gate.consent_reasons(rows, c, consents, NOW, lt, LISTS[2])[0]


def test_every_reason_is_reported_and_consent_does_not_override_opt_out() -> None:
    e = "+12025550123"
    entries = {("internal", e): gate.EntryInfo(NOW - timedelta(days=1), None)}
    hits = ["internal", "national:US", "wireless:US"]
    d = gate.decide(e, LISTS, hits, entries, NOW, None, consent=_consent_reasons(hits, []))
    assert [r.code for r in d.reasons] == ["dnc.internal", "dnc.national", "wireless.no_consent"]
    pewc = ConsentInfo(1, "", "prior_express_written_consent", NOW - timedelta(days=5), True)
    d = gate.decide(e, LISTS, hits, entries, NOW, None, consent=_consent_reasons(hits, [pewc]))
    assert [r.code for r in d.reasons] == ["dnc.internal"]
    hits = ["national:US", "wireless:US"]
    assert gate.decide(e, LISTS, hits, {}, NOW, None, consent=_consent_reasons(hits, [pewc])).allowed


def test_expired_entries_and_index_only_hits() -> None:
    e = "+12025550123"
    expired = {("campaign:c1", e): gate.EntryInfo(NOW - timedelta(days=9), NOW - timedelta(days=1))}
    assert gate.decide(e, LISTS, ["campaign:c1"], expired, NOW, None).allowed
    # the index says listed but PostgreSQL has no entry: do not dial
    assert not gate.decide(e, LISTS, ["campaign:c1"], {}, NOW, None).allowed


def test_unavailable_blocks_everything() -> None:
    ds = gate.unavailable(["+1", "+2"], "Redis is unreachable")
    assert all(not d.allowed and d.reasons[0].code == "compliance.unavailable" for d in ds)


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+12025550123", "+12025550123"),
        ("(202) 555-0123", "+12025550123"),
        ("1-202-555-0123", "+12025550123"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+18005550199", "+18005550199"),
    ],
)
def test_normalise(raw: str, e164: str) -> None:
    assert normalise(raw) == e164


@pytest.mark.parametrize("raw", ["", "12", "+10005550123", "hello", "+1202555012"])
def test_normalise_rejects(raw: str) -> None:
    with pytest.raises(InvalidNumber):
        normalise(raw)


def test_registry_lines_and_split() -> None:
    assert registry_line("2025550123", "US") == "+12025550123"
    assert registry_line("1025550123", "US") is None
    assert registry_line("020 7946 0958", "UK") == "+442079460958"
    assert split("+12025550123") == ("1202", 5550123)
    assert split("+442079460958") == ("44207", 9460958)


@given(st.integers(2, 9), st.integers(0, 99), st.integers(2, 9), st.integers(0, 999_999))
def test_nanp_fast_path_matches_libphonenumber_shape(a: int, b: int, c: int, d: int) -> None:
    digits = f"{a}{b:02d}{c}{d:06d}"
    assert normalise(digits) == "+1" + digits
    prefix, offset = split("+1" + digits)
    assert int(prefix + f"{offset:07d}") == int("1" + digits)


def test_jurisdiction_by_number() -> None:
    from outdial.dnc.numbers import jurisdiction_of

    assert [
        jurisdiction_of(n) for n in ("+14165550123", "+12025550123", "+442079460958", "+33142685300")
    ] == [
        "CA",
        "US",
        "UK",
        "",
    ]
