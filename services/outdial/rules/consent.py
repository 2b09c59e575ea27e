"""Which consent a call needs, and whether a person's consents give it (pure: no I/O, clock passed in).

The requirements are the rules table's ``consent`` rows (:mod:`outdial.rules.table`): a row binds every call
that has all the words of its ``call_type`` (how it is placed, what for, the line it reaches, whether the
number is on the national registry), and such a call needs one consent of a kind the row accepts. A call
bound by several rows needs each of them satisfied (an autodialled telemarketing call to a registered
wireless number needs prior express written consent twice over; an established business relationship opens
the registry but never the autodialled wireless call).

A line type that is not known (no current wireless and ported-number list) binds the call by the rows of
*either* line type: it is treated as the stricter, and the reason says that a fresh list would settle it
(fail closed, 47 U.S.C. 227(b)(1)(A)(iii)).

An established business relationship counts for the months its row gives for its basis, from the purchase
or inquiry it rests on (``obtained_at``); a campaign opt-in counts only for the campaign it was given to.
A consent's kind names what the person agreed to; one kind never stands in for another.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from outdial.rules.table import ConsentRow, RevocationWordsRow

__all__ = [
    "AUTODIALLED",
    "KINDS",
    "MANUAL",
    "PRERECORDED",
    "Call",
    "ConsentLike",
    "Requirement",
    "add_months",
    "applicable",
    "call_type_of",
    "evaluate",
    "methods_of",
    "revocation_match",
    "satisfies",
]

KINDS = (
    "prior_express_written_consent",
    "prior_express_consent",
    "established_business_relationship",
    "campaign_opt_in",
)
#: How a call is placed, by dial mode. An agentless call is autodialled and plays a prerecorded voice; a
#: preview call is dialled at an agent's request (agent-initiated: not autodialled).
AUTODIALLED = frozenset({"autodialled"})
PRERECORDED = frozenset({"autodialled", "prerecorded"})
MANUAL = frozenset({"manual"})
_MODE_METHODS = {
    "predictive": AUTODIALLED,
    "power": AUTODIALLED,
    "progressive": AUTODIALLED,
    "agentless": PRERECORDED,
    "preview": MANUAL,
}


def call_type_of(config: Mapping[str, Any]) -> tuple[str, str]:
    """(how, what for) a campaign's calls are: ``autodialled`` (predictive, power, progressive),
    ``prerecorded`` (agentless) or ``manual`` (preview); ``telemarketing`` unless the campaign says
    ``call_purpose: informational`` (or is an agentless campaign whose message is declared informational)."""
    mode = str(config.get("dial_mode") or "").strip().lower()
    methods = methods_of(mode)
    how = "manual" if methods == MANUAL else "prerecorded" if "prerecorded" in methods else "autodialled"
    informational = str(config.get("call_purpose") or "").lower() == "informational" or (
        mode == "agentless" and bool(config.get("message_informational"))
    )
    return how, "informational" if informational else "telemarketing"


def methods_of(dial_mode: str) -> frozenset[str]:
    """How a campaign in ``dial_mode`` places its calls (an unknown mode: autodialled and prerecorded, the
    strictest)."""
    return _MODE_METHODS.get(dial_mode.strip().lower(), PRERECORDED)


class ConsentLike(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def campaign_id(self) -> str: ...
    @property
    def obtained_at(self) -> datetime: ...
    @property
    def ebr_basis(self) -> str: ...


@dataclass(frozen=True)
class Call:
    """One call: ``methods`` (:data:`AUTODIALLED`, :data:`PRERECORDED`, :data:`MANUAL`), ``purpose``
    (telemarketing or informational), ``line`` (wireless, landline, or None: not known) and ``registered``
    (the number is on the national do-not-call registry)."""

    methods: frozenset[str]
    purpose: str
    line: str | None
    registered: bool
    campaign_id: str = ""


@dataclass
class Requirement:
    """A row binding the call; ``by_unknown_line``: it binds only because the line type is not known;
    ``met_by``: the consent that satisfies it (None: unmet)."""

    row: ConsentRow
    by_unknown_line: bool
    met_by: ConsentLike | None = None
    #: Consents of an accepted kind that do not count now (an EBR past its months, another campaign's opt-in).
    lapsed: list[str] = field(default_factory=list)


def applicable(rows: Iterable[ConsentRow], call: Call) -> list[Requirement]:
    out: list[Requirement] = []
    for row in rows:
        t = row.tokens()
        by_unknown = False
        if not t & call.methods and t & {"autodialled", "prerecorded", "manual"}:
            continue
        if "telemarketing" in t and call.purpose != "telemarketing":
            continue
        if "informational" in t and call.purpose != "informational":
            continue
        if "registered_number" in t and not call.registered:
            continue
        line = t & {"wireless", "landline"}
        if line:
            if call.line is None:
                by_unknown = True
            elif call.line not in line:
                continue
        out.append(Requirement(row, by_unknown))
    return out


def add_months(at: datetime, months: int) -> datetime:
    """``at`` plus calendar months (the last day of a shorter month when the day does not exist)."""
    m = at.month - 1 + months
    year, month = at.year + m // 12, m % 12 + 1
    return at.replace(year=year, month=month, day=min(at.day, calendar.monthrange(year, month)[1]))


def satisfies(c: ConsentLike, row: ConsentRow, campaign_id: str, at: datetime) -> tuple[bool, str]:
    """(counts, why not) for one consent against one row at ``at``."""
    if c.kind not in row.requires_any:
        return False, ""
    if c.kind == "campaign_opt_in" and (not c.campaign_id or c.campaign_id != campaign_id):
        return False, f"consent #{c.id} is an opt-in to campaign {c.campaign_id or '(none)'}"
    if c.kind == "established_business_relationship":
        months = (row.ebr_months or {}).get(c.ebr_basis)  # type: ignore[call-overload]
        if months is None:
            return False, f"consent #{c.id}: an established business relationship without its basis"
        until = add_months(c.obtained_at, months)
        if at >= until:
            return False, (
                f"consent #{c.id}: the established business relationship ({c.ebr_basis} on "
                f"{c.obtained_at.date().isoformat()}) lapsed on {until.date().isoformat()} ({months} months)"
            )
    return True, ""


def evaluate(
    rows: Iterable[ConsentRow], call: Call, consents: Sequence[ConsentLike], at: datetime
) -> list[Requirement]:
    """Every requirement binding ``call``, each with the consent that meets it (or None)."""
    reqs = applicable(rows, call)
    for req in reqs:
        for c in sorted(consents, key=lambda c: c.id, reverse=True):
            ok, why = satisfies(c, req.row, call.campaign_id, at)
            if ok:
                req.met_by = c
                break
            if why:
                req.lapsed.append(why)
    return reqs


def _tokens(text: str) -> list[str]:
    norm = "".join(ch if ch.isalnum() or ch == "'" else " " for ch in text.lower().replace("\u2019", "'"))
    return norm.split()


def revocation_match(rows: Iterable[RevocationWordsRow], body: str) -> str:
    """The revocation word or phrase a message holds (the first, in the rows' order), or "".

    A word or phrase matches as whole words anywhere in the message, in any case, whatever the punctuation
    ("Stop!", "please STOP calling me", "Do not call"). Matching anywhere rather than only a message that is
    the word alone errs towards revoking: a false match only stops calls, a missed one breaks the law."""
    toks = _tokens(body)
    for row in rows:
        for w in [*row.words, *row.phrases]:
            want = _tokens(w)
            n = len(want)
            if n and any(toks[i : i + n] == want for i in range(len(toks) - n + 1)):
                return w
    return ""
