from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outdial.campaign import retries
from outdial.campaign.csvstream import CsvStream, MalformedFile, iter_records, sniff_delimiter
from outdial.campaign.leads import MappingError, find_columns, neutralise_formula, normalise_row

_cell = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\r"), max_size=12
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(_cell, min_size=3, max_size=3), min_size=1, max_size=20),
    st.sampled_from([",", ";", "\t", "|"]),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
    st.integers(min_value=1, max_value=64),
)
def test_stream_matches_csv_module_for_any_chunking(
    rows: list[list[str]], delim: str, eol: str, bom: bool, chunk: int
) -> None:
    header = ["phone", "first name", "notes"]
    out = io.StringIO()
    csv.writer(out, delimiter=delim, lineterminator=eol, quoting=csv.QUOTE_ALL).writerows([header, *rows])
    data = (("\ufeff" if bom else "") + out.getvalue()).encode()
    got = [r for r in iter_records(data, chunk=chunk) if r]
    want = [r for r in csv.reader(io.StringIO(out.getvalue(), newline=""), delimiter=delim) if r]
    assert got == want


def test_sniff_and_limits() -> None:
    assert sniff_delimiter('"a;b",c,d') == ","
    assert sniff_delimiter("a;b;c") == ";"
    assert sniff_delimiter("a\tb") == "\t"
    assert sniff_delimiter("phone") == ","
    s = CsvStream(max_bytes=10, max_line=100)
    with pytest.raises(MalformedFile, match="limit"):
        s.feed(b"x" * 11)
    s = CsvStream(max_bytes=1000, max_line=8)
    with pytest.raises(MalformedFile, match="line 2"):
        s.feed(b"phone\n123456789012\n")
    s = CsvStream(max_bytes=1000, max_line=100)
    with pytest.raises(MalformedFile, match="UTF-8"):
        s.feed(b"phone\n\xc3\x28\n")


def test_columns_by_alias_and_mapping() -> None:
    cols = find_columns(["First Name", " PHONE number", "Mobile", "Zip Code", "State", "Score", "Time Zone"])
    assert cols.phones == (1, 2)
    assert cols.fields == {"first_name": 0, "zip": 3, "state": 4, "timezone": 6}
    assert cols.custom == (5,)
    cols = find_columns(
        ["Given", "Contact", "Alt"], {"phone": "Contact", "phone2": "alt", "first_name": "Given"}
    )
    assert cols.phones == (1, 2) and cols.fields["first_name"] == 0
    with pytest.raises(MappingError, match="no column"):
        find_columns(["a"], {"phone": "b"})
    with pytest.raises(MappingError, match="no phone column"):
        find_columns(["Account Number", "Name"])


def test_normalise_row() -> None:
    cols = find_columns(["name", "phone", "cell", "zip", "state", "tz", "x"])
    lead = normalise_row(
        7,
        ["Ann", "(212) 555-0101", "212.555.0101", "90012", "California", "", "v"],
        cols,
        default_region="US",
        jurisdiction="US",
    )
    assert lead.first_name == "Ann" and lead.state == "CA" and lead.fields == {"x": "v"}
    assert lead.numbers == [
        ("+12125550101", "fixed_line_or_mobile", ("America/Los_Angeles", "America/New_York"))
    ]
    bad = normalise_row(
        8, ["Bo", "800-555-0100", "", "", "", "", ""], cols, default_region="US", jurisdiction="US"
    )
    assert not bad.numbers and [(r.row_number, r.field, r.reason) for r in bad.rejects] == [
        (8, "phone", "toll_free")
    ]
    empty = normalise_row(9, ["Cy"], cols, default_region="US", jurisdiction="US")
    assert [r.reason for r in empty.rejects] == ["empty"]
    tz = normalise_row(
        10,
        ["D", "2125550101", "", "", "", "America/Chicago", ""],
        cols,
        default_region="US",
        jurisdiction="US",
    )
    assert tz.numbers[0][2] == ("America/Chicago", "America/New_York")


@pytest.mark.parametrize(
    ("v", "out"),
    [
        ("=1+2", "'=1+2"),
        ("+1+1", "'+1+1"),
        ("+12125550100", "+12125550100"),
        ("-x", "'-x"),
        ("@a", "'@a"),
        ("\tx", "'\tx"),
        ("ok", "ok"),
        ("", ""),
    ],
)
def test_formula_neutralised(v: str, out: str) -> None:
    assert neutralise_formula(v) == out


def test_retry_rules() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rules = [
        {"outcome": "no_answer", "delay_s": 3600, "max_attempts": 2},
        {"outcome": "fax", "delay_s": 0, "max_attempts": 0},
    ]
    kw = {"rules": rules, "max_attempts_per_lead": 0, "now": now}
    assert retries.after_outcome("no_answer", outcome_count=1, attempts_total=1, **kw) == retries.LeadUpdate(  # type: ignore[arg-type]
        "retry", "", now + timedelta(hours=1)
    )
    assert (
        retries.after_outcome("no_answer", outcome_count=2, attempts_total=2, **kw).final_reason
        == "exhausted"
    )  # type: ignore[arg-type]
    assert retries.after_outcome("fax", outcome_count=1, attempts_total=1, **kw).final_reason == "fax"  # type: ignore[arg-type]
    assert (
        retries.after_outcome("connected", outcome_count=1, attempts_total=1, **kw).final_reason
        == "connected"
    )  # type: ignore[arg-type]
    capped = retries.after_outcome(
        "no_answer", outcome_count=1, attempts_total=3, rules=rules, max_attempts_per_lead=3, now=now
    )
    assert capped.final_reason == "exhausted"
    assert retries.after_disposition("callback", None, now).status == "callback"
    assert retries.after_disposition("do_not_call", None, now).final_reason == "dnc"
    assert retries.after_disposition("sale", None, now) == retries.LeadUpdate("final", "sale", None)
