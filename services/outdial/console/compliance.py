"""Pure helpers of the compliance pages: the audit log's filters from a query string, its CSV, and a DNC list's
freshness against the registry-freshness row of the rules table (never a figure written here)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from outdial.core.csvsafe import csv_safe
from outdial.core.jurisdictions import jurisdiction_from_pb
from outdial.rules.table import RegistryFreshnessRow, rules_in_force
from outdial.v1 import dnc_pb2

__all__ = ["AUDIT_COLUMNS", "AuditFilter", "audit_csv_rows", "freshness", "parse_audit_filter"]

AUDIT_COLUMNS = (
    "seq",
    "at",
    "actor",
    "action",
    "number",
    "campaign_id",
    "call_id",
    "result",
    "reason",
    "details",
)
_TEXT = re.compile(r"^[\w.:@+ -]{0,128}$")


@dataclass(frozen=True)
class AuditFilter:
    values: dict[str, str]
    errors: dict[str, str]
    request: dnc_pb2.QueryAuditRequest


def _when(text: str) -> datetime:
    """An ISO date or date-time; a naive one is UTC."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_audit_filter(params: Mapping[str, str], page_size: int = 100) -> AuditFilter:
    """The audit page's filters (number, campaign, actor, action, result, since, until, page), each checked,
    as a QueryAudit request; errors name the field."""
    keys = ("number", "campaign", "actor", "action", "result", "since", "until", "page")
    values = {k: str(params.get(k, "")).strip() for k in keys}
    errors: dict[str, str] = {}
    req = dnc_pb2.QueryAuditRequest(page_size=page_size)
    for key, attr in (
        ("number", "number"),
        ("campaign", "campaign_id"),
        ("actor", "actor"),
        ("action", "action"),
        ("result", "result"),
    ):
        if values[key]:
            if not _TEXT.match(values[key]):
                errors[key] = "letters, digits and . : @ + - only (at most 128)"
            else:
                setattr(req, attr, values[key])
    for key in ("since", "until"):
        if values[key]:
            try:
                ts = Timestamp()
                ts.FromDatetime(_when(values[key]).astimezone(UTC))
                getattr(req, key).CopyFrom(ts)
            except ValueError:
                errors[key] = "a date or date-time such as 2026-12-01 or 2026-12-01T09:30+00:00"
    if values["page"]:
        req.page_token = values["page"][:512]
    return AuditFilter(values, errors, req)


def audit_csv_rows(records: Iterable[dnc_pb2.AuditRecord]) -> str:
    """Audit records as CSV text (no header), every text cell neutralised against spreadsheet formulas."""
    buf = io.StringIO()
    w = csv.writer(buf)
    for r in records:
        at = r.at.ToDatetime(tzinfo=UTC).isoformat() if r.HasField("at") else ""
        w.writerow(
            [
                r.seq,
                at,
                *(
                    csv_safe(x)
                    for x in (
                        r.actor,
                        r.action,
                        r.number,
                        r.campaign_id,
                        r.call_id,
                        r.result,
                        r.reason,
                        r.details_json,
                    )
                ),
            ]
        )
    return buf.getvalue()


def freshness(lst: dnc_pb2.DncList, today: date) -> tuple[str, str]:
    """("fresh" | "stale" | "missing" | "", explanation) of a registry copy against the rules table's
    registry-freshness row in force today for its jurisdiction; ("", "") for lists without such a rule."""
    jurisdiction = jurisdiction_from_pb(lst.jurisdiction)
    if lst.kind != dnc_pb2.LIST_KIND_NATIONAL or not jurisdiction:
        return "", ""
    try:
        # The national registry's rows (national_dnc, national_dncl, tps): a jurisdiction has one registry.
        limits = rules_in_force(jurisdiction, None, today).of(RegistryFreshnessRow)
    except ValueError:
        return "", ""
    if not limits:
        return "", ""
    row = min(limits, key=lambda r: r.max_age_days)
    if not lst.HasField("registry_date"):
        return "missing", f"no registry download recorded ({row.source}: at most {row.max_age_days} days old)"
    age = (today - lst.registry_date.ToDatetime(tzinfo=UTC).date()).days
    status = "fresh" if age <= row.max_age_days else "stale"
    return status, f"{age} days old; at most {row.max_age_days} ({row.source})"
