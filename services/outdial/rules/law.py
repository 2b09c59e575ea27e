"""The law a dialer obeys on every call, each figure once, with its source. Pure; no I/O.

The legal figures come from the rules table (``rules/data/*.yaml``, :mod:`outdial.rules.table`): changing one
is a data change. The module-level names below are the rules in force on the day the process started (a
service restarts to pick up a rule that takes effect later); code that is given a date asks
:func:`outdial.rules.table.rules_in_force`. Every service, the simulator and the benchmarks read these names;
nothing else in the code base writes the figures down (import-linter and
``tests/unit/test_law_in_one_place.py`` keep it so). What remains written here is outdial's policy, not law
(the short-window guard, the message-start margin, the opt-out key).

Sources:
- US: 47 CFR 64.1200 (FCC), the Telemarketing Sales Rule 16 CFR 310.4 (FTC).
- UK: Ofcom, "Revised statement of policy on the persistent misuse of an electronic communications network
  or service" (2016), A1.47–A1.60 (abandoned and silent calls).
- CA: CRTC Unsolicited Telecommunications Rules, Part III (Telemarketing Rules) and Part IV (ADAD Rules);
  the abandonment cap and its window should be checked against the current rules before relied on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from outdial.rules.table import (
    AbandonmentRow,
    AbandonQuietRow,
    ConnectLimitRow,
    MinRingRow,
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
    "ring_time",
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
    """What the recorded message on an abandoned call says, and nothing else.

    US (47 CFR 64.1200(a)(7)(i)(A)): the seller's name, that the call was for telemarketing purposes, a
    telephone number to make a do-not-call request, and an automated opt-out key. UK (Ofcom A1.54): the
    company and a free or basic-rate number, no marketing content.
    """

    text: str
    seller: str
    callback_number: str
    opt_out_key: str = OPT_OUT_KEY


def abandon_message(seller: str, callback_number: str, *, jurisdiction: str = "US") -> AbandonMessage:
    """The message for one campaign. ``seller`` and ``callback_number`` are required: the law names them."""
    seller = seller.strip()
    callback_number = callback_number.strip()
    if not seller:
        raise ValueError("the abandonment message needs the seller's name")
    if not callback_number:
        raise ValueError("the abandonment message needs a callback number for do-not-call requests")
    spoken = " ".join(callback_number.lstrip("+"))
    if jurisdiction.upper() == "UK":
        text = (
            f"This call was from {seller}. To ask not to be called again, press {OPT_OUT_KEY}, "
            f"or call {spoken}."
        )
    else:
        text = (
            f"This is {seller} with a telemarketing call. To not be called again, press {OPT_OUT_KEY}, "
            f"or call {spoken}."
        )
    return AbandonMessage(text, seller, callback_number)


def agentless_refusal(jurisdiction: str, *, informational: bool, consent_checked: bool = False) -> str:
    """Why an agentless (prerecorded-message) campaign may not run, or "" when it may.

    A prerecorded telemarketing call needs the called person's prior express written consent, to any number
    (47 CFR 64.1200(a)(2), (a)(3)); the UK forbids automated marketing calls without prior consent (PECR
    reg. 19); Canada forbids ADAD solicitation without express consent (CRTC UTR Part IV). Outdial has no
    per-call consent check yet (``consent_checked`` is that hook, always False today), so it fails closed:
    only a message the campaign declares informational runs. Informational prerecorded calls to wireless
    numbers still need prior express consent; the dial-time gate's wireless list enforces that.
    """
    if informational:
        return ""
    if consent_checked:
        return ""
    j = (jurisdiction or DEFAULT_JURISDICTION).upper()
    return (
        f"{j}: a prerecorded telemarketing message needs each person's prior express written consent, "
        "and outdial has no consent check yet; only informational agentless campaigns can run"
    )


def agentless_message(body: str, seller: str, callback_number: str) -> str:
    """The text an agentless call plays to a person: who calls first, then the message, then a number to
    call and the opt-out key (47 CFR 64.1200(b)(1) identity at the beginning, (b)(2) a telephone number,
    (b)(3) the automated opt-out of every prerecorded call that could be telemarketing; outdial offers it on
    every agentless call)."""
    seller = seller.strip()
    callback_number = callback_number.strip()
    body = body.strip()
    if not seller or not callback_number or not body:
        raise ValueError("an agentless message needs the caller's name, a callback number and a body")
    spoken = " ".join(callback_number.lstrip("+"))
    return f"This is {seller}. {body} To not be called again, press {OPT_OUT_KEY}, or call {spoken}."
