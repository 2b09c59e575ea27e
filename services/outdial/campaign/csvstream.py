"""Streaming CSV for lead files: bytes in, records out, memory bounded by one batch and one record.

- UTF-8 with or without BOM (an incremental decoder, so a multi-byte character may straddle chunks);
- delimiter sniffed from the header line among ``,`` ``;`` tab ``|`` (the one that splits it most,
  quotes respected);
- LF or CRLF; quoted fields with embedded newlines: a record is complete when its quote count is even
  (RFC 4180 doubles quotes inside quoted fields, so the parity rule is exact);
- a physical line longer than ``max_line`` (or a record that never closes its quote within that size)
  and a file larger than ``max_bytes`` are errors, as is anything that is not UTF-8 text.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator

DELIMITERS = (",", ";", "\t", "|")


class MalformedFile(ValueError):
    """The file cannot be read as a CSV lead file; the message says what is wrong."""

    error_id = "malformed_file"


class LineTooLong(MalformedFile):
    """A physical line (or a quoted record) is longer than the limit."""

    error_id = "line_too_long"


class FileTooLarge(MalformedFile):
    """The file is larger than the limit."""

    error_id = "file_too_large"


def sniff_delimiter(header: str) -> str:
    counts = dict.fromkeys(DELIMITERS, 0)
    in_quote = False
    for ch in header:
        if ch == '"':
            in_quote = not in_quote
        elif not in_quote and ch in counts:
            counts[ch] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


class CsvStream:
    """Feed bytes with :meth:`feed`, then :meth:`finish`; each returns the complete records so far (the
    header first). Records are lists of strings; the physical line number where each starts is kept in
    :attr:`record_lines` for the records of the last call."""

    def __init__(self, *, max_bytes: int, max_line: int) -> None:
        self.max_bytes = max_bytes
        self.max_line = max_line
        self.total_bytes = 0
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
        # The bytes after the last newline: a newline byte is never inside a UTF-8 sequence, so only whole
        # lines are decoded. Bounded by max_line, and each byte is copied a bounded number of times
        # whatever the chunk sizes (tiny chunks of a long line cost linear time, not quadratic).
        self._raw = bytearray()
        self._decoded = 0  # bytes handed to the decoder so far (for error offsets)
        self._pending: list[str] = []  # lines of an unfinished (quoted) record
        self._pending_size = 0
        self._pending_quotes = 0
        self.delimiter: str | None = None
        self.line_no = 0  # physical lines consumed

    def _decode(self, data: bytes | bytearray, final: bool) -> str:
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise MalformedFile(
                f"the file is not UTF-8 text (invalid byte near offset {self._decoded + exc.start})"
            ) from None
        self._decoded += len(data)
        if "\x00" in text:
            raise MalformedFile("the file is not text (it contains NUL bytes)")
        return text

    def feed(self, data: bytes) -> list[list[str]]:
        self.total_bytes += len(data)
        if self.total_bytes > self.max_bytes:
            raise FileTooLarge(f"the file is larger than the limit of {self.max_bytes} bytes")
        start = len(self._raw)
        self._raw += data
        cut = self._raw.rfind(b"\n", start)
        if cut < 0:
            if len(self._raw) > self.max_line:
                raise LineTooLong(f"line {self.line_no + 1} is longer than {self.max_line} bytes")
            return []
        block = self._raw[: cut + 1]
        del self._raw[: cut + 1]
        lines = self._decode(block, False).split("\n")
        lines.pop()  # "" after the block's last newline
        if len(self._raw) > self.max_line:
            raise LineTooLong(f"line {self.line_no + len(lines) + 1} is longer than {self.max_line} bytes")
        return self._records(lines)

    def finish(self) -> list[list[str]]:
        text = self._decode(self._raw, True)
        self._raw = bytearray()
        lines = [text] if text else []
        out = self._records(lines)
        if self._pending:
            raise MalformedFile(
                f"a quoted field opened on line {self.line_no - len(self._pending) + 1} never closes"
            )
        return out

    def _records(self, lines: list[str]) -> list[list[str]]:
        if not self._pending and lines and not any('"' in line for line in lines):
            # The common case: no quotes in the whole chunk, every line is a record.
            longest = max(map(len, lines))
            if longest > self.max_line:
                at = next(i for i, line in enumerate(lines) if len(line) > self.max_line)
                raise LineTooLong(f"line {self.line_no + at + 1} is longer than {self.max_line} bytes")
            self.line_no += len(lines)
            return self._parse(lines)
        complete: list[str] = []
        for line in lines:
            self.line_no += 1
            if len(line) > self.max_line:
                raise LineTooLong(f"line {self.line_no} is longer than {self.max_line} bytes")
            q = line.count('"')
            if self._pending:
                self._pending.append(line)
                self._pending_size += len(line)
                self._pending_quotes += q
                if self._pending_size > self.max_line:
                    raise LineTooLong(
                        f"the record starting on line {self.line_no - len(self._pending) + 1} is longer than "
                        f"{self.max_line} bytes (an unclosed quote?)"
                    )
                if self._pending_quotes % 2 == 0:
                    complete.append("\n".join(self._pending))
                    self._pending = []
                continue
            if q % 2 == 1:
                self._pending = [line]
                self._pending_size = len(line)
                self._pending_quotes = q
                continue
            complete.append(line)
        return self._parse(complete)

    def _parse(self, records: list[str]) -> list[list[str]]:
        if not records:
            return []
        if self.delimiter is None:
            # The header decides the delimiter; blank lines before it are skipped.
            while records and not records[0].strip():
                records.pop(0)
            if not records:
                return []
            self.delimiter = sniff_delimiter(records[0])
        # CRLF: the CR stays at the end of each record's text; strip it (quoted fields keep inner CRs).
        cleaned = [r[:-1] if r.endswith("\r") else r for r in records]
        try:
            return list(csv.reader(cleaned, delimiter=self.delimiter, quotechar='"', strict=False))
        except csv.Error as exc:
            raise MalformedFile(f"CSV syntax error near line {self.line_no}: {exc}") from None


def iter_records(data: bytes, *, chunk: int = 65536, max_line: int = 1 << 20) -> Iterator[list[str]]:
    """Convenience for tests and the benchmark: all records of an in-memory file."""
    s = CsvStream(max_bytes=len(data) + 1, max_line=max_line)
    for i in range(0, len(data), chunk):
        yield from s.feed(data[i : i + chunk])
    yield from s.finish()
