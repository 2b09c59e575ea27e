"""Phone numbers never reach a log line whole: messages, tracebacks, reprs, tel:/sip: URIs, JSON and plain text.

Each record goes through a real ``logging`` handler configured by ``outdial.core.logging.configure``, so what
is checked is the text an operator (or a log shipper) would read.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outdial.core import logging as odlog
from outdial.core.logging import log_fields, mask_text

NUMBER = "+14155550100"
DIGITS = "4155550100"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # URIs: the user part of tel:, sip: and sips: (any case), with or without +, with separators.
        ("tel:+14155550100", "tel:+*******0100"),
        ("TEL:+1-415-555-0100", "TEL:+*-***-***-0100"),
        ("sip:+14155550100@carrier.example", "sip:+*******0100@carrier.example"),
        ("<sip:4155550100@10.0.0.1:5060;user=phone>", "<sip:******0100@10.0.0.1:5060;user=phone>"),
        ("sips:+442071838750@trunk", "sips:+********8750@trunk"),
        ("sip:1001@pbx", "sip:1001@pbx"),  # a 4-digit extension shows nothing more than the mask would
        # Separators people write.
        ("(415) 555-0100", "(***) ***-0100"),
        ("415-555-0100", "***-***-0100"),
        ("415.555.0100", "***.***.0100"),
        ("+1.415.555.0100", "+*.***.***.0100"),
        ("+44 20 7183 8750", "+** ** **** 8750"),
        ("calling +1 212 555 0100 now", "calling +* *** *** 0100 now"),
        # Bare national numbers, end of a sentence, lists, Redis keys, reprs.
        ("4155550100", "******0100"),
        ("14155550100", "*******0100"),
        ("02071838750", "*******8750"),
        ("Called +14155550100.", "Called +*******0100."),
        ("+14155550100,+14155550101", "+*******0100,+*******0101"),
        ("dnc:num:+14155550100", "dnc:num:+*******0100"),
        (
            "number:4155550100 lead-14155550100 /calls/4155550100",
            "number:******0100 lead-*******0100 /calls/******0100",
        ),
        (
            "uuid 123e4567-e89b-12d3-a456-426614174000 ts:1764552327 port:50051",
            "uuid 123e4567-e89b-12d3-a456-426614174000 ts:1764552327 port:50051",
        ),
        ("Lead(id=42, number='+14155550100')", "Lead(id=42, number='+*******0100')"),
        ("{'phone': '+14155550100'}", "{'phone': '+*******0100'}"),
        # Left alone: timestamps, dates, times, addresses, ports, floats, UUIDs, ids, epoch seconds/ms.
        ("listening on 127.0.0.1:50051 since 2026-11-23", "listening on 127.0.0.1:50051 since 2026-11-23"),
        ("2026-12-01 01:25:27,123 INFO", "2026-12-01 01:25:27,123 INFO"),
        ("2026-12-01T01:25:27.123+00:00", "2026-12-01T01:25:27.123+00:00"),
        ("due 23-11-2026", "due 23-11-2026"),
        ("id 550e8400-e29b-41d4-a716-446655440000", "id 550e8400-e29b-41d4-a716-446655440000"),
        ("took 12.345678 s", "took 12.345678 s"),
        ("peer 192.168.100.200", "peer 192.168.100.200"),
        ("lead 12345678 retried", "lead 12345678 retried"),
        ("at 1764552327 (1764552327123 ms)", "at 1764552327 (1764552327123 ms)"),
        ("request id 3f9a0c1d2e4b5a67", "request id 3f9a0c1d2e4b5a67"),
    ],
)
def test_mask_text(text: str, expected: str) -> None:
    assert mask_text(text) == expected


_SEPARATED = st.sampled_from(
    [
        "+1{a}{b}{c}",
        "+1 {a} {b} {c}",
        "+1-{a}-{b}-{c}",
        "({a}) {b}-{c}",
        "{a}-{b}-{c}",
        "{a}.{b}.{c}",
        "{a}{b}{c}",
        "1{a}{b}{c}",
        "tel:+1{a}{b}{c}",
        "sip:+1{a}{b}{c}@carrier",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    form=_SEPARATED,
    area=st.integers(200, 999),
    exchange=st.integers(200, 999),
    line=st.integers(0, 9999),
    before=st.sampled_from(["", " ", "number=", "'", '"', "(", "[", ": ", "=> ", "<"]),
    after=st.sampled_from(["", " ", ".", ",", ";", "'", ")", "]", "\n", " now", "@carrier"]),
)
def test_no_more_than_four_digits_of_a_number_show(
    form: str, area: int, exchange: int, line: int, before: str, after: str
) -> None:
    a, b, c = f"{area:03d}", f"{exchange:03d}", f"{line:04d}"
    out = mask_text(f"x {before}{form.format(a=a, b=b, c=c)}{after} y")
    # exactly the last four digits stay (for support), nothing else of the number, country code included
    assert "".join(ch for ch in out if ch.isdigit()) == c, out


# ------------------------------------------------------------------------------------------- formatters


@dataclass
class Lead:
    id: int
    number: str


class DialError(Exception):
    pass


@contextlib.contextmanager
def _configured(as_json: bool) -> Iterator[io.StringIO]:
    """The root logger as ``configure`` sets it up (JSON or plain text), writing into a buffer."""
    buf = io.StringIO()
    root = logging.getLogger()
    level = root.level
    with contextlib.redirect_stdout(buf):
        odlog.configure("dnc", "INFO", as_json=as_json)
    try:
        yield buf
    finally:
        for h in list(root.handlers):
            if getattr(h, "_outdial", False):
                root.removeHandler(h)
        root.setLevel(level)


@pytest.fixture(params=[True, False], ids=["json", "text"])
def captured(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    with _configured(request.param) as buf:
        yield buf


def _raise_with_number() -> None:
    lead = Lead(7, NUMBER)
    try:
        raise DialError(f"carrier refused {lead.number} (sip:{lead.number}@carrier)")
    except DialError as exc:
        raise RuntimeError(f"dialling {lead!r} failed") from exc


def test_every_formatter_masks_messages_reprs_and_tracebacks(captured: io.StringIO) -> None:
    log = logging.getLogger("outdial.test")
    log.info("offer %s to agent 12 at 2026-12-01", Lead(7, NUMBER))
    try:
        _raise_with_number()
    except RuntimeError:
        log.exception("call to tel:%s failed", NUMBER)
    log.warning("stack", stack_info=True, extra=log_fields(number=NUMBER, note=f"dialled {NUMBER}"))
    out = captured.getvalue()
    assert DIGITS not in out and "555" not in out, out
    assert "Traceback" in out and "DialError: carrier refused +*******0100" in out
    assert "tel:+*******0100" in out and "sip:+*******0100@carrier" in out
    assert "Lead(id=7, number='+*******0100')" in out
    assert "agent 12 at 2026-12-01" in out


def test_json_fields_stay_json() -> None:
    with _configured(as_json=True) as buf:
        try:
            _raise_with_number()
        except RuntimeError:
            logging.getLogger("outdial.test").exception("failed", extra=log_fields(phone=NUMBER, attempts=3))
    doc = json.loads(buf.getvalue().splitlines()[-1])
    assert doc["phone"] == "+*******0100" and doc["attempts"] == 3
    assert "+*******0100" in doc["exc"] and DIGITS not in doc["exc"]


def test_cached_traceback_text_is_masked_for_other_handlers() -> None:
    """logging caches the formatted traceback on the record (exc_text): a second handler, or a formatter that
    is not ours, reads the masked text."""
    try:
        _raise_with_number()
    except RuntimeError as exc:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "boom", None, (type(exc), exc, None))
    text = odlog.TextFormatter().format(record)
    assert DIGITS not in text and DIGITS not in (record.exc_text or "")
    assert DIGITS not in logging.Formatter().format(record)
