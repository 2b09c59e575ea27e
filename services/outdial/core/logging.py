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

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PHONE = re.compile(r"(?<![\w.:/])\+?\d[\d\- ()]{5,}\d(?![\w.:])")


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
    """Mask every phone-number-like run in free text."""

    def _mask(m: re.Match[str]) -> str:
        raw = m.group(0)
        if sum(c.isdigit() for c in raw) < 7 or _DATE.fullmatch(raw.strip()):
            return raw
        return mask_number(raw)

    return _PHONE.sub(_mask, text)


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
                doc[k] = mask_number(v) if k in ("number", "phone") and isinstance(v, str) else v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


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
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def log_fields(**fields: Any) -> dict[str, Any]:
    """``log.info("msg", extra=log_fields(number=n))``."""
    return {"fields": fields}
