"""Reassigned Numbers Database (RND) results: the import file's parser and the gate's rule (pure: no I/O).

The FCC's Reassigned Numbers Database answers, for a US number and a date, whether the number has been
permanently disconnected since that date: *yes*, *no* or *no data* (providers report disconnections to it
monthly, 47 CFR 64.1200(l)). A caller that made such a query and got "no" is not liable for a call that
reaches a reassigned number on the earlier subscriber's prior express consent when the database answered
wrongly: the safe harbor of 47 CFR 64.1200(m) (FCC 18-177, Second Report and Order, CG Docket 17-59). The
caller bears the burden of proving the query, so each check's inputs go to the audit log.

The rule applied here (docs/compliance-rnd.md):

- a consent is **reassigned** (cannot be relied on) when a "yes" answer shows a permanent disconnect on or
  after the day the consent was obtained: the reported disconnect date, or, when the RND gave none, any
  time up to the import of the answer (the disconnect happened between the queried date and the query, and
  a consent obtained before the import may predate it);
- a consent is **covered** (the safe harbor can be claimed) by a "no" answer whose queried date is on or
  before the consent's day, imported on or after that day (the query ran after the consent was obtained);
- otherwise it is **not covered**: no RND answer speaks for it. The RND is a safe harbor, not a duty, so
  such a consent is still relied on (and the audit says no safe harbor applies) unless the operator sets
  ``OUTDIAL_DNC_RND_REQUIRED=true``.

Only numbers that rely on consent (a hit on the national registry or the wireless list, overridden by
consent) are assessed: the RND changes nothing for a number that needs no consent.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from outdial.dnc.gate import Reason
from outdial.dnc.numbers import InvalidNumber, normalise

ANSWERS = {"yes": "yes", "y": "yes", "no": "no", "n": "no", "no_data": "no_data", "no data": "no_data"}
COLUMNS = ("number", "queried_date", "answer", "disconnect_date")
#: Rejects returned in the response (all are counted).
MAX_REJECTS = 1000
#: RND answers per number kept in an audit record's details (newest queried date first).
MAX_RESULTS_IN_DETAILS = 10
_US_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")


class MalformedFile(ValueError):
    """The file as a whole cannot be read (nothing of it is imported)."""


@dataclass(frozen=True)
class RndRow:
    number: str
    queried_date: date
    answer: str
    disconnect_date: date | None


@dataclass(frozen=True)
class RndReject:
    row: int
    field: str
    reason: str
    value: str


@dataclass
class Parsed:
    rows: list[RndRow] = field(default_factory=list)
    rejects: list[RndReject] = field(default_factory=list)
    data_rows: int = 0


def parse_date(s: str) -> date:
    """YYYY-MM-DD (ISO) or MM/DD/YYYY (as the RND's own downloads write dates)."""
    s = s.strip()
    m = _US_DATE.match(s)
    if m:
        return date(int(m.group(3)), int(m.group(1)), int(m.group(2)))
    return date.fromisoformat(s)


def parse_csv(data: bytes, today: date) -> Parsed:
    """Rows of an RND results file: ``number,queried_date,answer[,disconnect_date]``, an optional header
    line naming the columns. A row with a bad value is rejected (row number, field, reason); a file that is
    not UTF-8 CSV of three or four columns raises :class:`MalformedFile` naming the first bad row."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedFile(f"the file is not UTF-8 text (byte {exc.start})") from exc
    out = Parsed()
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for cols in reader:
            row_no = reader.line_num
            if not cols or all(not c.strip() for c in cols):
                continue
            if row_no == 1 and cols[0].strip().lower() == "number":
                names = [c.strip().lower() for c in cols]
                if tuple(names) != COLUMNS[: len(names)] or len(names) < 3:
                    raise MalformedFile(
                        f"row 1: the header must be {','.join(COLUMNS)} (disconnect_date may be left out), "
                        f"not {','.join(names)}"
                    )
                continue
            if len(cols) not in (3, 4):
                raise MalformedFile(
                    f"row {row_no}: {len(cols)} columns; each row is number,queried_date,answer"
                    "[,disconnect_date]"
                )
            out.data_rows += 1
            row = _row(row_no, cols, today, out.rejects)
            if row is not None:
                out.rows.append(row)
    except csv.Error as exc:
        raise MalformedFile(f"row {reader.line_num}: not valid CSV ({exc})") from exc
    if out.data_rows == 0:
        raise MalformedFile("the file holds no rows")
    return out


def _row(row_no: int, cols: list[str], today: date, rejects: list[RndReject]) -> RndRow | None:
    raw_number, raw_queried, raw_answer = (c.strip() for c in cols[:3])
    raw_disc = cols[3].strip() if len(cols) == 4 else ""

    def reject(fld: str, reason: str, value: str) -> None:
        rejects.append(RndReject(row_no, fld, reason, value[:64]))

    n_before = len(rejects)
    number = ""
    try:
        number = normalise(raw_number, "US")
        if not number.startswith("+1"):
            reject("number", "the RND holds US (NANP) numbers only", raw_number)
    except InvalidNumber:
        reject("number", "not a valid US phone number", raw_number)
    queried: date | None = None
    try:
        queried = parse_date(raw_queried)
        if queried > today:
            reject("queried_date", "in the future", raw_queried)
    except ValueError:
        reject("queried_date", "not a date (YYYY-MM-DD or MM/DD/YYYY)", raw_queried)
    answer = ANSWERS.get(raw_answer.lower())
    if answer is None:
        reject("answer", "must be yes, no or no_data", raw_answer)
    disc: date | None = None
    if raw_disc:
        try:
            disc = parse_date(raw_disc)
        except ValueError:
            reject("disconnect_date", "not a date (YYYY-MM-DD or MM/DD/YYYY)", raw_disc)
        else:
            if disc > today:
                reject("disconnect_date", "in the future", raw_disc)
            elif answer is not None and answer != "yes":
                reject(
                    "disconnect_date", f"a disconnect date goes with the answer yes, not {answer}", raw_disc
                )
            elif queried is not None and disc < queried:
                reject(
                    "disconnect_date",
                    "before the queried date (yes means disconnected on or after the queried date)",
                    raw_disc,
                )
    if len(rejects) > n_before or queried is None or answer is None:
        return None
    return RndRow(number, queried, answer, disc)


# ------------------------------------------------------------------ the gate's rule


@dataclass(frozen=True)
class ConsentInfo:
    id: int
    campaign_id: str
    kind: str
    #: When the person gave it (``obtained_at``); consents recorded before that field existed use the time
    #: they were recorded (``granted_at``) and say so (``obtained_at_recorded`` False).
    obtained_at: datetime
    obtained_at_recorded: bool
    #: An established business relationship's basis (purchase, inquiry), "" for other kinds.
    ebr_basis: str = ""


@dataclass(frozen=True)
class StoredResult:
    import_id: int
    queried_date: date
    answer: str
    disconnect_date: date | None
    imported_at: datetime


@dataclass
class Assessment:
    #: The consent the dial may rely on (None: none may be relied on).
    relied_on: ConsentInfo | None
    #: Why the consent cannot be relied on (None when one can).
    reason: Reason | None
    details: dict[str, Any]
    #: Every consent the dial may rely on (the consent rules pick among them): the covered ones, or, unless
    #: an RND answer is required, every one not reassigned.
    usable: list[ConsentInfo] = field(default_factory=list)


def _day(dt: datetime) -> date:
    return dt.astimezone(UTC).date()


def consent_status(c: ConsentInfo, results: list[StoredResult]) -> tuple[str, StoredResult | None]:
    """("reassigned" | "covered" | "not_covered", the answer that decided it)."""
    day = _day(c.obtained_at)
    for r in results:
        if r.answer != "yes":
            continue
        last = r.disconnect_date if r.disconnect_date is not None else _day(r.imported_at)
        if day <= last:
            return "reassigned", r
    for r in results:
        if r.answer == "no" and r.queried_date <= day <= _day(r.imported_at):
            return "covered", r
    return "not_covered", None


def _result_dict(r: StoredResult) -> dict[str, Any]:
    return {
        "import_id": r.import_id,
        "queried_date": r.queried_date.isoformat(),
        "answer": r.answer,
        "disconnect_date": r.disconnect_date.isoformat() if r.disconnect_date else None,
        "imported_at": r.imported_at.isoformat(),
    }


def assess(consents: list[ConsentInfo], results: list[StoredResult], *, required: bool) -> Assessment:
    """Which of a number's active consents the dial may rely on, given its RND answers (any order)."""
    results = sorted(results, key=lambda r: (r.queried_date, r.imported_at), reverse=True)
    statuses = [(c, *consent_status(c, results)) for c in sorted(consents, key=lambda c: c.id)]
    covered = [c for c, s, _ in statuses if s == "covered"]
    usable = [c for c, s, _ in statuses if s != "reassigned"]
    relied: ConsentInfo | None = None
    reason: Reason | None = None
    if covered:
        relied, outcome = covered[-1], "safe_harbor"
    elif usable and not required:
        relied, outcome = usable[-1], "no_safe_harbor"
    elif usable:
        outcome = "not_checked"
        reason = Reason(
            "rnd.unchecked",
            detail="no Reassigned Numbers Database answer covers the consent: query the RND with the date the "
            "consent was obtained and import the result (OUTDIAL_DNC_RND_REQUIRED is on)",
        )
    else:
        outcome = "reassigned"
        last = max(
            (r.disconnect_date or _day(r.imported_at) for r in results if r.answer == "yes"), default=None
        )
        reason = Reason(
            "rnd.reassigned",
            detail="the Reassigned Numbers Database reports a permanent disconnect"
            + (f" ({last.isoformat()})" if last else "")
            + " on or after the day every consent for this number was obtained: the consent may be from "
            "the number's previous subscriber",
        )
    details: dict[str, Any] = {
        "outcome": outcome,
        "relied_on_consent_id": relied.id if relied else None,
        "consents": [
            {
                "id": c.id,
                "campaign_id": c.campaign_id,
                "kind": c.kind,
                "obtained_at": c.obtained_at.isoformat(),
                "obtained_at_recorded": c.obtained_at_recorded,
                "status": s,
                "decided_by_import_id": r.import_id if r else None,
            }
            for c, s, r in statuses
        ],
        "results": [_result_dict(r) for r in results[:MAX_RESULTS_IN_DETAILS]],
        "results_total": len(results),
    }
    return Assessment(relied, reason, details, covered if required else usable)
