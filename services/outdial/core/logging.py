"""JSON logs to stdout, configured once; context (rpc method, request id, campaign id) via contextvars."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

rpc_method: contextvars.ContextVar[str | None] = contextvars.ContextVar("rpc_method", default=None)
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
campaign_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("campaign_id", default=None)
actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("actor", default=None)

# A phone-number candidate: groups of digits with one space or dash between two (a group may open with a
# parenthesized one: "(415) 555"), an optional leading +; or the dotted North American form (415.555.0100).
# It starts right after a tel:/sip:/sips: scheme; or at a "+" that no word character precedes (a Redis key
# "dnc:num:+14155550100" too); or at a run of 7+ digits after a word and ":", "/" or "-" (a key, a path, an id
# "lead-4155550100": never a port, a time or a date part, all shorter); or where neither a word character
# nor a word-plus-joiner comes before it (the "-" of a UUID, the "." of an address or a float, the ":" of a
# port or a time, the "/" of a path). It must not run on into a word or a dotted/colon number. A date
# (2026-11-23, 23-11-2026) never starts a group. The digit count then decides (_looks_like_phone).
_DATE = r"(?:\d{4}-\d{2}-\d{2}|\d{2}-\d{2}-\d{4})(?!\d)"
_GROUP = r"(?:\(\d{1,4}\)[ -]?\d+|\d+)"  # 555, or (415) 555
_PHONE = re.compile(
    rf"""(?ix)
    (?:(?P<uri>(?<=tel:)|(?<=sip:)|(?<=sips:)) | (?<![\w+])(?=\+) | (?<=\w[:/-])(?=\d{{7}})
       | (?<![\w+])(?<!\w[.:/-]))
    (?!{_DATE})
    (?P<num>
        \+?(?:1[.])?\(?[2-9]\d{{2}}\)?\.\d{{3}}\.\d{{4}}
      | \+?{_GROUP}(?:[ -](?!{_DATE}){_GROUP})*
    )
    (?!\w|[.:/]?\d)
    """
)


def _looks_like_phone(raw: str, uri: bool) -> bool:
    digits = sum(c.isdigit() for c in raw)
    if uri:  # tel:/sip: user part: anything beyond a short extension
        return digits > 4
    if raw.startswith("+") or not raw.isdigit():  # "+..." or written with separators
        return digits >= 7
    # A bare run of digits: a 10/11-digit national number (a North American number with or without its
    # leading 1, a European national number with its trunk 0). Not a 10-digit run starting with 1 (Unix time
    # in seconds), nor shorter or longer runs (counts, ids, milliseconds since the epoch).
    return digits == 11 or (digits == 10 and raw[0] != "1")


def mask_number(number: str | None) -> str:
    """Mask a phone number except its last 4 digits: ``+12125550100`` -> ``+*******0100``."""
    if not number:
        return ""
    digits = sum(c.isdigit() for c in number)
    if digits <= 4:
        return number
    out: list[str] = []
    seen = 0
    for ch in number:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen > digits - 4 else "*")
        else:
            out.append(ch)
    return "".join(out)


def mask_text(text: str) -> str:
    """Mask every phone number in free text (messages, tracebacks, reprs, tel:/sip: URIs), keeping its last
    4 digits. Leaves dates, times, addresses, ports, floats, UUIDs and plain ids alone. When a number runs on
    into a neighbouring digit group ("+14155550100 3"), both are masked together: at most 4 digits of the
    number ever show."""
    if sum(c.isdigit() for c in text) < 5:
        return text

    def _mask(m: re.Match[str]) -> str:
        raw = m.group("num")
        return mask_number(raw) if _looks_like_phone(raw, m.group("uri") is not None) else raw

    return _PHONE.sub(_mask, text)


def _mask_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return mask_number(value) if key in ("number", "phone") else mask_text(value)
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": mask_text(record.getMessage()),
        }
        for key, var in (
            ("rpc", rpc_method),
            ("request_id", request_id),
            ("campaign_id", campaign_id),
            ("actor", actor),
        ):
            value = var.get()
            if value:
                doc[key] = value
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            for k, v in extra.items():
                doc[k] = _mask_value(k, v)
        if record.exc_info:
            doc["exc"] = mask_text(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exc"] = mask_text(record.exc_text)
        if record.stack_info:
            doc["stack"] = mask_text(self.formatStack(record.stack_info))
        return json.dumps(doc, default=lambda o: mask_text(str(o)))


class TextFormatter(logging.Formatter):
    """The plain-text format (``OUTDIAL_LOG_JSON=false``), masked like the JSON one: the whole rendered
    record, traceback and stack included, goes through :func:`mask_text`."""

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(super().format(record))

    def formatException(self, ei: Any) -> str:
        # logging caches this text on the record (record.exc_text), where another handler's formatter reads
        # it: cache the masked text, never the raw one.
        return mask_text(super().formatException(ei))


def configure(service: str, level: str = "INFO", as_json: bool = True) -> None:
    """Configure the root logger once (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_outdial", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler._outdial = True  # type: ignore[attr-defined]
    if as_json:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def log_fields(**fields: Any) -> dict[str, Any]:
    """``log.info("msg", extra=log_fields(number=n))``."""
    return {"fields": fields}
