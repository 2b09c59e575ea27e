"""The list part of the dial-time gate (pure: no I/O).

Given the lists, which of them hold each number (from the Redis index), entry details for the small lists
and the numbers with consent, decide for each number: allowed, or blocked with *every* reason.
The gate fails closed: a number that cannot be read, a registry that is missing or older than its legal
age, or any dependency failure (handled by the caller with :func:`unavailable`) blocks the dial.

Sources: national registry copies may be at most 31 days old (47 CFR 64.1200(c)(2)(i)(D), CRTC UTR);
wireless numbers need prior express consent for autodialled calls (47 U.S.C. 227(b)(1)(A)(iii));
consent overrides the national registry (64.1200(c)(2)(ii)) but never a company-specific opt-out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

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
    lists: Iterable[ListInfo], jurisdiction: str, now: datetime, *, require: bool, max_age_days: int
) -> Reason | None:
    """Why no number of ``jurisdiction`` may be dialled now because of its national registry copy."""
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


def decide(
    number: str,
    lists: Sequence[ListInfo],
    hits: Iterable[str],
    entries: Mapping[tuple[str, str], EntryInfo],
    consented: bool,
    now: datetime,
    registry: Reason | None,
    rnd: Reason | None = None,
) -> Decision:
    """One number: ``hits`` are ids of lists whose index holds it; ``entries`` details of small-list hits;
    ``rnd`` why its consent cannot be relied on (a Reassigned Numbers Database answer: ``consented`` is then
    False, and the reason is kept beside the list's own)."""
    by_id = {li.id: li for li in lists}
    reasons: list[Reason] = []
    if registry is not None:
        reasons.append(registry)
    if rnd is not None:
        reasons.append(rnd)
    for list_id in sorted(set(hits)):
        li = by_id.get(list_id)
        if li is None:
            continue
        if li.kind in BULK_KINDS:
            if consented:
                continue
            detail = (
                "registered on the national do-not-call registry and no consent is recorded"
                if li.kind == "national"
                else "a wireless number: autodialled calls need the person's prior express consent"
            )
            reasons.append(Reason(KIND_CODES[li.kind], li.id, li.kind, since=li.registry_date, detail=detail))
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
