"""The list part of the dial-time gate (pure: no I/O).

Given the lists, which of them hold each number (from the Redis index), entry details for the small lists
and the consents each number has, decide for each number: allowed, or blocked with *every* reason.
The gate fails closed: a number that cannot be read, a registry that is missing or older than its legal
age, a line type that no current wireless list tells, or any dependency failure (handled by the caller
with :func:`unavailable`) blocks the dial.

The figures and requirements are the rules table's (``rules/data/*.yaml``): the registries' freshness
(``registry_freshness`` rows, one per list kind) and the consent each call type needs (``consent`` rows,
decided by :mod:`outdial.rules.consent`). A hit on the national registry or the wireless list is not a
reason by itself: it makes the call a call to a registered number or to a wireless number, and the rows
binding that call say which consent opens it. Nothing opens a company-specific opt-out (internal, campaign
and state lists).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from outdial.rules import law
from outdial.rules.consent import Call, ConsentLike, Requirement, evaluate
from outdial.rules.table import ConsentRow, RegistryFreshnessRow, RuleSet

#: Lists that are bulk copies (one bitmap each, no per-entry details looked up at check time).
BULK_KINDS = frozenset({"national", "wireless"})
KIND_CODES = {
    "internal": "dnc.internal",
    "campaign": "dnc.campaign",
    "national": "dnc.national",
    "state": "dnc.state",
    "wireless": "wireless.no_consent",
}


@dataclass(frozen=True)
class ListInfo:
    id: str
    kind: str
    name: str = ""
    jurisdiction: str = ""
    state: str = ""
    campaign_id: str = ""
    registry_date: datetime | None = None


@dataclass(frozen=True)
class Reason:
    code: str
    list_id: str = ""
    list_kind: str = ""
    since: datetime | None = None
    expires_at: datetime | None = None
    detail: str = ""


@dataclass
class Decision:
    number: str
    allowed: bool
    reasons: list[Reason] = field(default_factory=list)
    #: The Reassigned Numbers Database check of the consent relied on (dnc/rnd.py), for the audit record.
    rnd: dict[str, Any] | None = None
    #: The call type, the number's line type and each consent requirement with the consent that met it.
    consent: dict[str, Any] | None = None
    #: What the lists decision used (lists consulted, hits, registry copy and its age limit), for the audit record.
    inputs: dict[str, Any] | None = None


@dataclass(frozen=True)
class EntryInfo:
    added_at: datetime
    expires_at: datetime | None


def list_id_for(kind: str, *, campaign_id: str = "", state: str = "", jurisdiction: str = "") -> str:
    if kind == "internal":
        return "internal"
    if kind == "campaign":
        if not campaign_id:
            raise ValueError("a campaign list needs campaign_id")
        return f"campaign:{campaign_id}"
    if kind == "national":
        return f"national:{jurisdiction or 'US'}"
    if kind == "state":
        if not state:
            raise ValueError("a state list needs state")
        return f"state:{jurisdiction or 'US'}-{state.upper()}"
    if kind == "wireless":
        return f"wireless:{jurisdiction or 'US'}"
    raise ValueError(f"unknown list kind {kind!r}")


def applicable(lists: Iterable[ListInfo], campaign_id: str, jurisdiction: str) -> list[ListInfo]:
    """Lists a number must be checked against for a campaign in a jurisdiction."""
    out = []
    for li in lists:
        if (
            li.kind == "internal"
            or (li.kind == "campaign" and campaign_id and li.campaign_id == campaign_id)
            or (li.kind in ("national", "state", "wireless") and li.jurisdiction == jurisdiction)
        ):
            out.append(li)
    return out


def registry_reason(
    lists: Iterable[ListInfo],
    jurisdiction: str,
    now: datetime,
    *,
    require: bool,
    max_age_days: int | None = None,
) -> Reason | None:
    """Why no number of ``jurisdiction`` may be dialled now because of its national registry copy. Its
    maximum age is the jurisdiction's ``registry_freshness`` row in force on ``now``
    (:func:`outdial.rules.law.registry_max_age_days`), tightened by ``max_age_days`` when that is lower."""
    national = [li for li in lists if li.kind == "national" and li.jurisdiction == jurisdiction]
    if not jurisdiction:
        return None
    if not national or national[0].registry_date is None:
        if not require:
            return None
        return Reason(
            "registry.missing",
            f"national:{jurisdiction}",
            "national",
            detail=f"no national DNC registry copy for {jurisdiction} has been imported "
            "(import one, or set OUTDIAL_DNC_REQUIRE_REGISTRY=false where none applies)",
        )
    li = national[0]
    assert li.registry_date is not None
    age = now - li.registry_date
    limits = [d for d in (law.registry_max_age_days(jurisdiction, now), max_age_days) if d is not None]
    if not limits:
        return None
    max_age_days = min(limits)
    if age > timedelta(days=max_age_days):
        return Reason(
            "registry.stale",
            li.id,
            "national",
            since=li.registry_date,
            detail=f"the {jurisdiction} registry copy was downloaded {li.registry_date.date().isoformat()}, "
            f"{age.days} days ago; it may be at most {max_age_days} days old",
        )
    return None


def max_age_days(rules: RuleSet, list_kind: str, own: int | None = None) -> int | None:
    """The strictest ``registry_freshness`` row in force for ``list_kind``, and the operator's own limit
    (which may only be stricter); None when neither sets one."""
    ages = [r.max_age_days for r in rules.of(RegistryFreshnessRow) if r.list_kind == list_kind]
    if own is not None:
        ages.append(own)
    return min(ages) if ages else None


@dataclass(frozen=True)
class LineType:
    """What the wireless list says of a number: ``wireless``, ``landline`` or None (not known, ``detail``
    says why)."""

    line: str | None
    detail: str = ""
    list_id: str = ""
    since: datetime | None = None


def line_type(
    lists: Iterable[ListInfo], hits: Iterable[str], jurisdiction: str, now: datetime, max_age: int | None
) -> LineType:
    """A number on the wireless list is wireless (however old the list). One not on it is a landline only
    when the list is no older than ``max_age`` days (the ``registry_freshness`` row of the wireless list):
    otherwise its line type is not known."""
    wl = [li for li in lists if li.kind == "wireless" and li.jurisdiction == jurisdiction]
    lid = wl[0].id if wl else f"wireless:{jurisdiction}"
    if any(h.startswith("wireless:") for h in hits):
        return LineType("wireless", list_id=lid, since=wl[0].registry_date if wl else None)
    if not wl or wl[0].registry_date is None:
        return LineType(
            None,
            f"no wireless and ported-number list for {jurisdiction} has been imported, so the line type is "
            "not known",
            lid,
        )
    li = wl[0]
    assert li.registry_date is not None
    if max_age is None:
        return LineType(None, f"no rule says how old the {jurisdiction} wireless list may be", lid)
    age = now - li.registry_date
    if age > timedelta(days=max_age):
        return LineType(
            None,
            f"the {jurisdiction} wireless and ported-number list was downloaded "
            f"{li.registry_date.date().isoformat()}, {age.days} days ago; it may be at most {max_age} days "
            "old to tell a landline",
            lid,
            li.registry_date,
        )
    return LineType("landline", list_id=lid, since=li.registry_date)


def _kinds(req: Requirement) -> str:
    return " or ".join(req.row.requires_any)


def consent_reasons(
    rows: Sequence[ConsentRow],
    call: Call,
    consents: Sequence[ConsentLike],
    now: datetime,
    line: LineType,
    national: ListInfo | None,
) -> tuple[list[Reason], dict[str, Any]]:
    """The reasons the consent rows binding ``call`` give against it (none when each is met), and the
    details the audit keeps (call type, line type, each requirement and the consent that met it)."""
    reqs = evaluate(rows, call, consents, now)
    reasons: list[Reason] = []
    for req in reqs:
        if req.met_by is not None:
            continue
        t = req.row.tokens()
        need = f"a {req.row.call_type} call needs {_kinds(req)} ({req.row.source})"
        lapsed = ("; " + "; ".join(req.lapsed)) if req.lapsed else ""
        if "registered_number" in t:
            r = Reason(
                "dnc.national",
                national.id if national else "",
                "national",
                since=national.registry_date if national else None,
                detail=f"registered on the national do-not-call registry: {need}{lapsed}",
            )
        elif req.by_unknown_line:
            r = Reason(
                "line_type.unknown",
                line.list_id,
                "wireless",
                since=line.since,
                detail=f"{line.detail}: "
                f"dial it only with the consent a wireless number needs ({need}), after importing a "
                f"current wireless list, or in preview mode{lapsed}",
            )
        elif "wireless" in t:
            r = Reason(
                "wireless.no_consent",
                line.list_id,
                "wireless",
                since=line.since,
                detail=f"a wireless number: {need}{lapsed}",
            )
        else:
            r = Reason("consent.required", detail=f"{need}{lapsed}")
        if all(x.code != r.code for x in reasons):
            reasons.append(r)
    reasons.sort(key=lambda r: r.code)
    details = {
        "call": {
            "methods": sorted(call.methods),
            "purpose": call.purpose,
            "line": call.line or "unknown",
            "registered": call.registered,
        },
        "requirements": [
            {
                "rule": q.row.id,
                "call_type": q.row.call_type,
                "requires_any": list(q.row.requires_any),
                "by_unknown_line": q.by_unknown_line,
                "met_by_consent_id": q.met_by.id if q.met_by is not None else None,
                "met_by_kind": q.met_by.kind if q.met_by is not None else None,
            }
            for q in reqs
        ],
    }
    return reasons, details


def decide(
    number: str,
    lists: Sequence[ListInfo],
    hits: Iterable[str],
    entries: Mapping[tuple[str, str], EntryInfo],
    now: datetime,
    registry: Reason | None,
    rnd: Reason | None = None,
    consent: Sequence[Reason] = (),
) -> Decision:
    """One number: ``hits`` are ids of lists whose index holds it; ``entries`` details of small-list hits;
    ``consent`` the reasons the consent rows give (:func:`consent_reasons`: bulk-list hits count only
    through them); ``rnd`` why a consent cannot be relied on (a Reassigned Numbers Database answer), kept
    beside the consent reasons it causes."""
    by_id = {li.id: li for li in lists}
    reasons: list[Reason] = []
    if registry is not None:
        reasons.append(registry)
    if rnd is not None:
        reasons.append(rnd)
    for list_id in sorted(set(hits)):
        li = by_id.get(list_id)
        if li is None or li.kind in BULK_KINDS:
            continue
        info = entries.get((list_id, number))
        if info is None:
            # The index says yes and PostgreSQL has no current entry: removed a moment ago, or the index
            # is ahead of us. When in doubt, do not dial.
            reasons.append(Reason(KIND_CODES[li.kind], li.id, li.kind, detail="listed in the lookup index"))
            continue
        if info.expires_at is not None and info.expires_at <= now:
            continue
        reasons.append(
            Reason(
                KIND_CODES[li.kind],
                li.id,
                li.kind,
                since=info.added_at,
                expires_at=info.expires_at,
                detail=f"on the {li.kind} do-not-call list {li.id}",
            )
        )
    reasons += consent
    return Decision(number, not reasons, reasons)


def unavailable(numbers: Iterable[str], detail: str) -> list[Decision]:
    """Every number blocked: the gate could not answer."""
    return [
        Decision(
            n, False, [Reason("compliance.unavailable", detail=f"compliance check unavailable: {detail}")]
        )
        for n in numbers
    ]


def invalid(number: str, detail: str) -> Decision:
    return Decision(number, False, [Reason("number.invalid", detail=detail)])
