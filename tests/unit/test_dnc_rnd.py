"""The Reassigned Numbers Database file parser and the gate's rule (outdial/dnc/rnd.py): pure, no I/O."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outdial.dnc.rnd import ConsentInfo, MalformedFile, StoredResult, assess, consent_status, parse_csv

TODAY = date(2026, 12, 1)


def at(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, 12, tzinfo=UTC)


def consent(i: int, d: date, recorded: bool = True) -> ConsentInfo:
    return ConsentInfo(i, "", "prior_express_written_consent", at(d), recorded)


def result(q: date, answer: str, disc: date | None = None, imported: date | None = None) -> StoredResult:
    return StoredResult(7, q, answer, disc, at(imported or TODAY))


def test_rows_with_bad_values_are_named_by_row_and_field() -> None:
    data = (
        b"number,queried_date,answer,disconnect_date\n"
        b"2025550101,2024-01-10,yes,2024-06-01\n"  # row 2: fine
        b"+12025550102,01/10/2024,No,\n"  # row 3: fine (US date, any case)
        b"12345,2024-01-10,no,\n"  # row 4: number
        b"2025550104,2024-13-01,no,\n"  # row 5: queried_date
        b"2025550105,2024-01-10,maybe,\n"  # row 6: answer
        b"2025550106,2024-01-10,no,2024-02-01\n"  # row 7: a date with "no"
        b"2025550107,2024-05-10,yes,2024-02-01\n"  # row 8: disconnect before the queried date
        b"\n"
        b"2025550108,2027-01-10,no_data\n"  # row 10: future, three columns
        b"+442079460000,2024-01-10,no\n"  # row 11: not a US number
    )
    p = parse_csv(data, TODAY)
    assert p.data_rows == 9
    assert [(r.number, r.answer, r.disconnect_date) for r in p.rows] == [
        ("+12025550101", "yes", date(2024, 6, 1)),
        ("+12025550102", "no", None),
    ]
    assert [(r.row, r.field) for r in p.rejects] == [
        (4, "number"),
        (5, "queried_date"),
        (6, "answer"),
        (7, "disconnect_date"),
        (8, "disconnect_date"),
        (10, "queried_date"),
        (11, "number"),
    ]
    assert all(r.reason for r in p.rejects)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"2025550101,2024-01-10\n", "row 1: 2 columns"),
        (b"2025550101,2024-01-10,no,\n2025550102,2024-01-10,no,,extra\n", "row 2: 5 columns"),
        (b"number,date,answer\n2025550101,2024-01-10,no\n", "row 1: the header"),
        (b"\xff\xfe2025550101,2024-01-10,no\n", "not UTF-8"),
        (b"number,queried_date,answer\n\n", "no rows"),
        (b'2025550101,"2024-01-10,no\n', "row"),
    ],
)
def test_a_malformed_file_is_refused_whole(data: bytes, words: str) -> None:
    with pytest.raises(MalformedFile, match=words):
        parse_csv(data, TODAY)


def test_consent_before_a_reported_disconnect_is_reassigned_after_it_is_not() -> None:
    yes = result(date(2024, 1, 1), "yes", date(2024, 6, 1), imported=date(2024, 7, 1))
    assert consent_status(consent(1, date(2024, 3, 1)), [yes])[0] == "reassigned"
    assert consent_status(consent(1, date(2024, 6, 1)), [yes])[0] == "reassigned"  # the same day: may predate
    assert consent_status(consent(1, date(2024, 6, 2)), [yes])[0] == "not_covered"
    # "yes" without a date: the disconnect lies between the queried date and the import
    undated = result(date(2024, 1, 1), "yes", None, imported=date(2024, 7, 1))
    assert consent_status(consent(1, date(2024, 6, 20)), [undated])[0] == "reassigned"
    assert consent_status(consent(1, date(2024, 7, 2)), [undated])[0] == "not_covered"


def test_no_covers_a_consent_only_from_its_queried_date_to_the_query() -> None:
    no = result(date(2024, 3, 1), "no", imported=date(2024, 4, 1))
    assert consent_status(consent(1, date(2024, 3, 1)), [no])[0] == "covered"
    assert consent_status(consent(1, date(2024, 2, 28)), [no])[0] == "not_covered"  # before the queried date
    assert consent_status(consent(1, date(2024, 4, 2)), [no])[0] == "not_covered"  # after the query
    assert (
        consent_status(consent(1, date(2024, 3, 5)), [result(date(2024, 3, 1), "no_data")])[0]
        == "not_covered"
    )


def test_assess_relies_on_a_covered_consent_and_fails_closed_only_when_required() -> None:
    no = result(date(2024, 3, 1), "no", imported=date(2024, 4, 1))
    yes = result(date(2024, 1, 1), "yes", date(2024, 2, 1), imported=date(2024, 4, 1))
    a = assess([consent(1, date(2024, 1, 15)), consent(2, date(2024, 3, 10))], [no, yes], required=True)
    assert a.relied_on is not None and a.relied_on.id == 2 and a.reason is None
    assert a.details["outcome"] == "safe_harbor"
    assert [c["status"] for c in a.details["consents"]] == ["reassigned", "covered"]
    assert a.details["results"][0] == {
        "import_id": 7,
        "queried_date": "2024-03-01",
        "answer": "no",
        "disconnect_date": None,
        "imported_at": at(date(2024, 4, 1)).isoformat(),
    }
    lone = assess([consent(1, date(2024, 1, 15))], [yes], required=False)
    assert lone.relied_on is None and lone.reason is not None and lone.reason.code == "rnd.reassigned"
    unchecked = [consent(3, date(2025, 1, 1))]
    assert assess(unchecked, [], required=False).relied_on is not None
    assert assess(unchecked, [], required=False).details["outcome"] == "no_safe_harbor"
    strict = assess(unchecked, [], required=True)
    assert strict.relied_on is None and strict.reason is not None and strict.reason.code == "rnd.unchecked"


@settings(max_examples=200, deadline=None)
@given(
    consent_day=st.dates(date(2021, 1, 1), date(2026, 11, 1)),
    queried=st.dates(date(2021, 1, 1), date(2026, 11, 1)),
    gap=st.integers(0, 400),
)
def test_a_consent_on_or_before_a_reported_disconnect_is_never_relied_on(
    consent_day: date, queried: date, gap: int
) -> None:
    disc = queried + timedelta(days=gap)
    yes = result(queried, "yes", disc, imported=disc + timedelta(days=1))
    no = result(min(queried, consent_day), "no", imported=consent_day)  # a "no" that also claims to cover
    a = assess([consent(1, consent_day)], [yes, no], required=False)
    if consent_day <= disc:
        assert a.relied_on is None and a.reason is not None and a.reason.code == "rnd.reassigned"
    else:
        assert a.relied_on is not None
