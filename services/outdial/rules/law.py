"""The law a dialer obeys on every call, each figure once, with its source. Pure; no I/O.

The legal figures and the messages' wording come from the rules table (``rules/data/*.yaml``,
:mod:`outdial.rules.table`): changing one is a data change. The module-level names below are the rules in
force on the day the process started (a service restarts to pick up a rule that takes effect later); code that
is given a date asks :func:`outdial.rules.table.rules_in_force`. Every service, the simulator and the
benchmarks read these names; nothing in the code base, this module included, writes the figures down
(``tests/unit/test_law_in_one_place.py`` keeps it so). What remains written here is outdial's policy, not law
(the short-window guard, the message-start margin, the opt-out key).

Sources:
- US: 47 CFR 64.1200 (FCC), the Telemarketing Sales Rule 16 CFR 310.4 (FTC).
- UK: Ofcom, "Revised statement of policy on the persistent misuse of an electronic communications network
  or service" (2016), A1.47–A1.60 (abandoned and silent calls).
- CA: CRTC Unsolicited Telecommunications Rules, Part III (Telemarketing Rules) and Part IV (ADAD Rules);
  the abandonment cap and its window should be checked against the current rules before relied on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

from outdial.rules.table import (
    AbandonmentRow,
    AbandonQuietRow,
    AmdFalsePositivesRow,
    ConnectLimitRow,
    ConsentRow,
    MessageContentRow,
    MinRingRow,
    RegistryFreshnessRow,
    load_tables,
)

__all__ = [
    "ABANDON_POLICIES",
    "CONNECT_LIMIT_MS",
    "CONNECT_LIMIT_S",
    "DEFAULT_JURISDICTION",
    "HIGHEST_ABANDON_CAP",
    "JURISDICTIONS",
    "JURISDICTION_REGION",
    "MIN_RING_S",
    "OPT_OUT_KEY",
    "REGION_JURISDICTION",
    "SHORT_WINDOW_CAP",
    "SHORT_WINDOW_S",
    "UK_ABANDON_QUIET",
    "AbandonMessage",
    "AbandonPolicy",
    "abandon_message",
    "abandon_policy",
    "agentless_message",
    "agentless_refusal",
    "amd_estimate_refusal",
    "amd_rule",
    "message_row",
    "opt_out_confirmation",
    "registry_max_age_days",
    "ring_time",
    "with_amd_false_positives",
]

_TABLES = load_tables()
#: The day whose rules the module-level figures hold (UTC).
LOADED_ON = datetime.now(UTC).date()

#: The jurisdictions outdial knows (one rules file each), in proto enum order (``common.proto``
#: ``Jurisdiction``; each file's ``wire_value``).
JURISDICTIONS: tuple[str, ...] = _TABLES.jurisdictions()
DEFAULT_JURISDICTION = "US"
#: The phone-number region (ISO 3166 / libphonenumber) whose numbers a jurisdiction's campaigns dial.
JURISDICTION_REGION: dict[str, str] = {j: _TABLES.table(j).region or j for j in JURISDICTIONS}
#: The jurisdiction whose campaigns dial a region's numbers (the inverse of :data:`JURISDICTION_REGION`).
REGION_JURISDICTION: dict[str, str] = {r: j for j, r in JURISDICTION_REGION.items()}


_R = TypeVar("_R")
#: The call type of a prerecorded telemarketing call in the rules table's ``consent`` rows.
_PRERECORDED_TM = "prerecorded_telemarketing"


def _rows(kind: type[_R]) -> list[_R]:
    """Every jurisdiction's jurisdiction-wide rows of ``kind`` in force today."""
    return [r for j in JURISDICTIONS for r in _TABLES.in_force(j, None, LOADED_ON).of(kind)]


def _one(kind: type[_R], j: str) -> _R:
    rows: list[_R] = _TABLES.in_force(j, None, LOADED_ON).of(kind)
    if not rows:
        raise RuntimeError(f"rules data: {j} has no {kind.__name__} in force on {LOADED_ON}")
    return rows[0]


#: A live answer is abandoned unless a live agent is on the line within 2 s of the end of the person's
#: greeting (rows ``*.connect_limit``: 47 CFR 64.1200(a)(7)(i); Ofcom A1.53; CRTC ADAD Rules). One figure for
#: the dialer: the strictest of every jurisdiction's.
CONNECT_LIMIT_S: float = min(r.seconds for r in _rows(ConnectLimitRow))
CONNECT_LIMIT_MS = round(CONNECT_LIMIT_S * 1000)

#: The abandonment message must start within those same 2 s (47 CFR 64.1200(a)(7)(i)(A): "within two
#: seconds after the completed greeting"). The dialer therefore stops looking for an agent this much
#: earlier, leaving time to start the message on a real network (prompt lookup, the play command, the
#: first RTP packet: tens of ms measured over SIP; this is the margin, not the cost).
MESSAGE_START_MARGIN_S = 0.5
OFFER_DEADLINE_S = CONNECT_LIMIT_S - MESSAGE_START_MARGIN_S
OFFER_DEADLINE_MS = round(OFFER_DEADLINE_S * 1000)

#: An unanswered call rings at least this long before the dialer gives up (rows ``*.min_ring``:
#: 47 CFR 64.1200(a)(6); Ofcom A1.56). One figure for the dialer: the longest of every jurisdiction's.
MIN_RING_S: float = max(r.seconds for r in _rows(MinRingRow))

#: UK: a number whose call was abandoned is not called again within this quiet period unless a live agent
#: is guaranteed (row ``uk.abandon_quiet``: Ofcom A1.58).
UK_ABANDON_QUIET = timedelta(hours=_one(AbandonQuietRow, "UK").hours)

#: Outdial's short-window guard: no 60-minute window above 5 % even while the legal window's budget allows
#: it (policy, not law: regulators look at bursts, and customers hear them).
SHORT_WINDOW_S = 3600.0
SHORT_WINDOW_CAP = 0.05

#: The key that opts a person out on the abandonment message (the automated interactive opt-out of
#: 47 CFR 64.1200(a)(7)(i)(A) and 16 CFR 310.4(b)(1)(iv)).
OPT_OUT_KEY = "9"

#: US states whose wiretap laws require the consent of every party to record a call (the rest need one
#: party's): rows ``us-<state>.recording_consent`` (Cal. Penal Code s.632, Fla. Stat. 934.03 …). A recorded
#: campaign plays its recording notice first to everyone; a lead in one of these states is never recorded
#: without it.
ALL_PARTY_CONSENT_STATES: frozenset[str] = frozenset(
    st for st in _TABLES.states("US") if _TABLES.in_force("US", st, LOADED_ON).all_party_recording_consent()
)


def may_record(state: str, notice: str) -> bool:
    """Whether a call to a lead in US ``state`` may be recorded with this notice (played first)."""
    return bool(notice.strip()) or state.strip().upper() not in ALL_PARTY_CONSENT_STATES


@dataclass(frozen=True, slots=True)
class AbandonPolicy:
    """The abandonment cap of one jurisdiction: at most ``cap`` of live answers over ``window_s``."""

    jurisdiction: str
    cap: float
    window_s: float
    source: str
    verified: bool = True


def _policy(j: str) -> AbandonPolicy:
    row = _one(AbandonmentRow, j)
    return AbandonPolicy(j, row.cap, row.window_days * 86_400.0, row.source, not row.uncertain)


#: Each jurisdiction's abandonment cap and window (rows ``*.abandonment``): US 47 CFR 64.1200(a)(7)(i), UK
#: Ofcom A1.50 (answering-machine false positives counted in), CA CRTC ADAD Rules (window to be verified).
ABANDON_POLICIES: dict[str, AbandonPolicy] = {j: _policy(j) for j in JURISDICTIONS}


#: The highest cap of any jurisdiction: no campaign's target abandonment rate may be set above it.
HIGHEST_ABANDON_CAP = max(p.cap for p in ABANDON_POLICIES.values())


def abandon_policy(jurisdiction: str | None) -> AbandonPolicy:
    """The policy of ``jurisdiction`` (US when empty); an unknown one is refused, never guessed."""
    j = (jurisdiction or DEFAULT_JURISDICTION).upper()
    try:
        return ABANDON_POLICIES[j]
    except KeyError:
        raise ValueError(
            f"unknown jurisdiction {jurisdiction!r}; known: {', '.join(JURISDICTIONS)}"
        ) from None


def ring_time(requested_s: float | None) -> float:
    """The ring time to use: the campaign's, never below the legal minimum."""
    return max(MIN_RING_S, float(requested_s or 0.0))


@dataclass(frozen=True, slots=True)
class AbandonMessage:
    """What the recorded message on an abandoned call says, and nothing else: the wording of the
    jurisdiction's ``message_content`` row for abandoned calls (``rules/data``: US 47 CFR 64.1200(a)(7)(i)(A),
    UK Ofcom A1.54, CA CRTC ADAD Rules), its placeholders filled with the campaign's seller and number."""

    text: str
    seller: str
    callback_number: str
    opt_out_key: str = OPT_OUT_KEY
    #: The rules-table row the wording came from.
    rule_id: str = ""


def message_row(jurisdiction: str | None, message: str, at: date | None = None) -> MessageContentRow:
    """The ``message_content`` row for ``message`` in force in ``jurisdiction`` on ``at`` (default: the day
    the process started). None in force: ValueError (fail closed: outdial never plays a message of its own
    wording)."""
    j = (jurisdiction or DEFAULT_JURISDICTION).upper()
    rows = [
        r for r in _TABLES.in_force(j, None, at or LOADED_ON).of(MessageContentRow) if r.message == message
    ]
    if not rows:
        raise ValueError(f"rules data: {j} has no {message} message_content row in force")
    return rows[0]


def _spoken(number: str) -> str:
    return " ".join(number.lstrip("+"))


def abandon_message(
    seller: str,
    callback_number: str,
    *,
    jurisdiction: str = "US",
    language: str = "en",
    at: date | None = None,
) -> AbandonMessage:
    """The message for one campaign. ``seller`` and ``callback_number`` are required: the law names them."""
    seller = seller.strip()
    callback_number = callback_number.strip()
    if not seller:
        raise ValueError("the abandonment message needs the seller's name")
    if not callback_number:
        raise ValueError("the abandonment message needs a callback number for do-not-call requests")
    row = message_row(jurisdiction, "abandoned", at)
    text = row.render(
        language, seller=seller, callback_number=_spoken(callback_number), opt_out_key=OPT_OUT_KEY
    )
    return AbandonMessage(text, seller, callback_number, rule_id=row.id)


def agentless_refusal(jurisdiction: str, *, informational: bool, consent_checked: bool = False) -> str:
    """Why an agentless (prerecorded-message) campaign may not run, or "" when it may.

    The consent a prerecorded telemarketing call needs is the jurisdiction's ``consent`` row for
    ``prerecorded_telemarketing`` (US 47 CFR 64.1200(a)(2), (a)(3); UK PECR reg. 19; CA CRTC UTR Part IV).
    Outdial has no per-call consent check yet (``consent_checked`` is that hook, always False today), so it
    fails closed: only a message the campaign declares informational runs. Informational prerecorded calls to
    wireless numbers still need prior express consent; the dial-time gate's wireless list enforces that.
    """
    if informational:
        return ""
    if consent_checked:
        return ""
    j = (jurisdiction or DEFAULT_JURISDICTION).upper()
    rows = [r for r in _TABLES.in_force(j, None, LOADED_ON).of(ConsentRow) if r.call_type == _PRERECORDED_TM]
    needs = " or ".join(k.replace("_", " ") for r in rows for k in r.requires_any) or "consent"
    cite = "; ".join(r.source for r in rows)
    return (
        f"{j}: a prerecorded telemarketing message needs each person's {needs}"
        + (f" ({cite})" if cite else "")
        + ", and outdial has no consent check yet; only informational agentless campaigns can run"
    )


def agentless_message(
    body: str, seller: str, callback_number: str, *, jurisdiction: str = "US", language: str = "en"
) -> str:
    """The text an agentless call plays to a person: the jurisdiction's ``prerecorded`` message row's wording
    (US 47 CFR 64.1200(b)(1)-(3): who calls first, a telephone number, the automated opt-out; outdial offers
    the opt-out on every agentless call) with the campaign's body, seller and number filled in."""
    seller = seller.strip()
    callback_number = callback_number.strip()
    body = body.strip()
    if not seller or not callback_number or not body:
        raise ValueError("an agentless message needs the caller's name, a callback number and a body")
    row = message_row(jurisdiction, "prerecorded")
    return row.render(
        language, seller=seller, body=body, callback_number=_spoken(callback_number), opt_out_key=OPT_OUT_KEY
    )


def opt_out_confirmation(jurisdiction: str | None = None, language: str = "en") -> str:
    """What a person hears after pressing the opt-out key, before the line is hung up: the jurisdiction's
    ``opt_out_confirmation`` message row (US 47 CFR 64.1200(b)(3): record the request, then disconnect)."""
    return message_row(jurisdiction, "opt_out_confirmation").render(language)


def amd_rule(jurisdiction: str | None, at: date | None = None) -> AmdFalsePositivesRow | None:
    """The jurisdiction's ``amd_false_positives`` row in force on ``at`` (default: the day the process
    started), or None when its law says nothing of answering-machine detection."""
    j = (jurisdiction or DEFAULT_JURISDICTION).upper()
    rows = _TABLES.in_force(j, None, at or LOADED_ON).of(AmdFalsePositivesRow)
    return rows[0] if rows else None


def amd_estimate_refusal(
    jurisdiction: str | None,
    *,
    amd: bool,
    false_positive_rate: float | None,
    basis: str,
    at: date | None = None,
) -> str:
    """Why a campaign with answering-machine detection ``amd`` may not start for want of its false-positive
    estimate, or "" when it may (UK: Ofcom's persistent-misuse policy, row ``uk.amd_false_positives``)."""
    row = amd_rule(jurisdiction, at)
    if not amd or row is None or not row.estimate_required:
        return ""
    j = (jurisdiction or DEFAULT_JURISDICTION).upper()
    if false_positive_rate is None:
        return (
            f"amd_false_positive_rate: a {j} campaign with answering-machine detection needs its estimated "
            f"false-positive rate and its basis ({row.source}); set amd_false_positive_rate and "
            "amd_false_positive_basis, or turn AMD off (amd = off)"
        )
    if not basis.strip():
        return (
            f"amd_false_positive_basis: a {j} campaign's AMD false-positive estimate needs its basis, how it "
            f"was measured or reasoned ({row.source})"
        )
    return ""


def with_amd_false_positives(
    jurisdiction: str | None,
    live: int,
    abandoned: int,
    machines: int,
    false_positive_rate: float | None,
    *,
    amd: bool = True,
    at: date | None = None,
) -> tuple[int, int, int]:
    """(live answers, abandoned, estimated false positives) with the AMD false positives counted in as
    abandoned live answers: ``machines`` answers classified as machines, of which the campaign estimates
    ``false_positive_rate`` were people. Rounded up (the count that keeps a campaign under its cap is never
    the optimistic one). Counted in where the jurisdiction's row says so, or wherever the campaign states an
    estimate: an estimate a campaign gives is never ignored."""
    if not amd or machines <= 0 or false_positive_rate is None:
        return live, abandoned, 0
    row = amd_rule(jurisdiction, at)
    if row is not None and not row.counted_as_abandoned:
        return live, abandoned, 0
    fp = math.ceil(machines * max(0.0, min(1.0, false_positive_rate)) - 1e-9)
    return live + fp, abandoned + fp, fp


def registry_max_age_days(jurisdiction: str, at: date | datetime | None = None) -> int | None:
    """The oldest a jurisdiction's national do-not-call registry copy may be on day ``at`` (rows
    ``*.registry_freshness`` of the jurisdiction itself; the strictest when several), or None when no row
    sets one."""
    j = (jurisdiction or DEFAULT_JURISDICTION).upper()
    ages = [
        r.max_age_days
        for r in _TABLES.in_force(j, None, at or LOADED_ON).of(RegistryFreshnessRow)
        if r.list_kind == "national"
    ]
    return min(ages) if ages else None
