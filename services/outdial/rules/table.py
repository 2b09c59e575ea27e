"""The law as versioned data: ``rules/data/*.yaml``, one file per jurisdiction (``us.yaml``) or US state
(``us-fl.yaml``), validated against this schema when first read and cached for the process.

Every row carries its ``source`` (statute or regulation and section), ``effective_from`` and optionally
``effective_until`` (exclusive), and ``uncertain: true`` with a ``note`` where the source is not verified.
An uncertain row is enforced like any other: a rule not yet verified is never silently relaxed.

Pure: the only input is this package's own data files, read through :mod:`importlib.resources`; the
parser (:func:`parse_tables`) takes the texts, so a test can hand it a malformed file.

:func:`rules_in_force` answers "which rules bind a call to ``state`` in ``jurisdiction`` on day ``at``":
the jurisdiction-wide rows and the state's rows in force that day. Where both set a figure, the readers
(``windows.py``, ``caps.py``, ``law.py``) apply the stricter one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from importlib import resources
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "MESSAGE_ELEMENTS",
    "MESSAGE_PLACEHOLDERS",
    "WEEKDAYS",
    "AbandonQuietRow",
    "AbandonmentRow",
    "AmdFalsePositivesRow",
    "CallCapRow",
    "CallingWindowRow",
    "ConnectLimitRow",
    "ConsentRow",
    "HolidayBanRow",
    "JurisdictionTable",
    "MessageContentRow",
    "MinRingRow",
    "RecordingConsentRow",
    "RegistryFreshnessRow",
    "RetentionRow",
    "RevocationWordsRow",
    "Row",
    "RuleSet",
    "RulesDataError",
    "Tables",
    "call_type_tokens",
    "load_tables",
    "parse_tables",
    "rules_in_force",
]

#: ISO weekday (1 = Monday) of each key of a calling window's ``hours``.
WEEKDAYS: dict[str, int] = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}
_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")

Hours = tuple[time, time]
#: The words a consent row's ``call_type`` is made of, by dimension: how the call is placed, what for, the
#: line it reaches, and whether the number is on the national do-not-call registry. A row applies to a call
#: that has every one of its words (``autodialled_telemarketing_wireless``: an autodialled telemarketing call
#: to a wireless number, prerecorded or not).
CALL_TYPE_WORDS: dict[str, tuple[str, ...]] = {
    "method": ("autodialled", "prerecorded", "manual"),
    "purpose": ("telemarketing", "informational"),
    "line": ("wireless", "landline"),
    "registry": ("registered_number",),
}
#: The established business relationship's bases (16 CFR 310.2(q); 47 CFR 64.1200(f)(5)).
EBR_BASES = ("purchase", "inquiry")
_R = TypeVar("_R")
ConsentKind = Literal[
    "prior_express_written_consent",
    "prior_express_consent",
    "established_business_relationship",
    "campaign_opt_in",
]


class RulesDataError(ValueError):
    """A rules file that does not hold to the schema: the message names the file, the row and the field."""

    def __init__(self, file: str, row: str, field: str, problem: str) -> None:
        where = file + (f", row {row}" if row else "") + (f", field {field}" if field else "")
        super().__init__(f"rules data {where}: {problem}")
        self.file = file
        self.row = row
        self.field = field
        self.problem = problem


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_.-]*$")
    source: str
    effective_from: date
    effective_until: date | None = None
    uncertain: bool = False
    note: str = ""

    @field_validator("source")
    @classmethod
    def _source_named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a rule needs its source (statute or regulation and section)")
        return v.strip()

    @model_validator(mode="after")
    def _dates_and_doubt(self) -> _Row:
        if self.effective_until is not None and self.effective_until <= self.effective_from:
            raise ValueError("effective_until must be after effective_from")
        if self.uncertain and not self.note.strip():
            raise ValueError("an uncertain rule needs a note saying what is to be verified")
        return self

    def in_force(self, day: date) -> bool:
        return self.effective_from <= day and (self.effective_until is None or day < self.effective_until)

    def topic(self) -> str:
        """What the row decides: two rows with one topic in one file may not be in force on the same day."""
        return self.kind  # type: ignore[attr-defined,no-any-return]

    def value(self) -> str:
        """The row's figures, in words (``outdial rules show``, docs/compliance.md)."""
        raise NotImplementedError


class CallingWindowRow(_Row):
    """When a person may be called, in their local time, per weekday (``closed``: no calls that day)."""

    kind: Literal["calling_window"]
    hours: dict[str, str]

    @field_validator("hours")
    @classmethod
    def _every_day(cls, v: dict[str, str]) -> dict[str, str]:
        if set(v) != set(WEEKDAYS):
            missing = sorted(set(WEEKDAYS) - set(v))
            extra = sorted(set(v) - set(WEEKDAYS))
            raise ValueError(f"hours needs exactly mon..sun (missing {missing}, unknown {extra})")
        for day, text in v.items():
            if text == "closed":
                continue
            m = _HOURS.match(str(text))
            if m is None:
                raise ValueError(f"hours.{day} must be HH:MM-HH:MM or closed, got {text!r}")
            if (int(m[1]), int(m[2])) >= (int(m[3]), int(m[4])):
                raise ValueError(f"hours.{day}: the end must be after the start, got {text!r}")
        return v

    def by_weekday(self) -> dict[int, Hours | None]:
        out: dict[int, Hours | None] = {}
        for day, text in self.hours.items():
            if text == "closed":
                out[WEEKDAYS[day]] = None
                continue
            start, end = text.split("-")
            h, m = end.split(":")
            out[WEEKDAYS[day]] = (time.fromisoformat(start), time.max if h == "24" else time(int(h), int(m)))
        return out

    def value(self) -> str:
        return ", ".join(f"{d} {self.hours[d]}" for d in WEEKDAYS)


class HolidayBanRow(_Row):
    """No calls on public holidays (the ``holidays`` package's calendar of the jurisdiction/state)."""

    kind: Literal["holiday_ban"]
    calendar: Literal["public"]

    def value(self) -> str:
        return "no calls on public holidays"


class CallCapRow(_Row):
    """At most ``max_calls`` calls to one person per rolling ``period_hours``."""

    kind: Literal["call_cap"]
    max_calls: int = Field(ge=0)
    #: Only a rolling 24 h period is enforced (``caps.check_attempts``); another is refused, not ignored.
    period_hours: Literal[24]
    counts: Literal["person"] = "person"

    def value(self) -> str:
        return f"at most {self.max_calls} calls per {self.counts} per rolling {self.period_hours} h"


class AbandonmentRow(_Row):
    """At most ``cap`` (a fraction) of live answers abandoned per campaign over ``window_days``."""

    kind: Literal["abandonment"]
    cap: float = Field(gt=0, le=1)
    window_days: float = Field(gt=0)

    def value(self) -> str:
        return f"at most {self.cap:.0%} of live answers per campaign over {self.window_days:g} d"


class ConnectLimitRow(_Row):
    """A live answer is abandoned unless an agent (or the message) is on the line within ``seconds``."""

    kind: Literal["connect_limit"]
    seconds: float = Field(gt=0)

    def value(self) -> str:
        return f"agent or message within {self.seconds:g} s of the greeting"


class MinRingRow(_Row):
    """An unanswered call rings at least ``seconds``."""

    kind: Literal["min_ring"]
    seconds: float = Field(gt=0)

    def value(self) -> str:
        return f"ring at least {self.seconds:g} s"


class AbandonQuietRow(_Row):
    """No call within ``hours`` of an abandoned call to that number."""

    kind: Literal["abandon_quiet"]
    hours: float = Field(gt=0)

    def value(self) -> str:
        return f"no call within {self.hours:g} h of an abandoned call"


class RegistryFreshnessRow(_Row):
    """A do-not-call ``registry`` download may be at most ``max_age_days`` old when a call is placed.
    ``list_kind`` names the DNC service's list that holds the copy (``national``: the registry of numbers not
    to call; ``wireless``: the wireless and ported-to-wireless numbers that say which line type a number is)."""

    kind: Literal["registry_freshness"]
    registry: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    list_kind: Literal["national", "wireless"] = "national"
    max_age_days: int = Field(gt=0)

    def topic(self) -> str:
        return f"{self.kind}:{self.registry}"

    def value(self) -> str:
        return f"{self.registry} no older than {self.max_age_days} d"


#: How each element a ``message_content`` row requires shows in its ``templates``: the placeholder the code
#: fills (``{seller}`` …), or words the template itself must say. An element not listed here is refused at
#: load: a new requirement in the data needs the code to meet it before the row can be in force.
MESSAGE_ELEMENTS: dict[str, tuple[str, ...]] = {
    "seller_name": ("{seller}",),
    "company_name": ("{seller}",),
    "seller_name_first": ("{seller}",),
    "telemarketing_purpose": ("telemarketing",),
    "callback_number": ("{callback_number}",),
    "opt_out_key": ("{opt_out_key}",),
    "opt_out_confirmed": ("not be called again",),
}
#: The placeholders a template may use, per message: what the code fills in, and nothing else.
MESSAGE_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "abandoned": frozenset({"seller", "callback_number", "opt_out_key"}),
    "prerecorded": frozenset({"seller", "callback_number", "opt_out_key", "body"}),
    "opt_out_confirmation": frozenset(),
}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class MessageContentRow(_Row):
    """What a ``message`` (an abandoned call's, a prerecorded call's, the opt-out key's confirmation) must
    contain, and its wording per language (``templates``: language -> text with ``{placeholders}`` that the
    code fills; the code writes no wording of its own)."""

    kind: Literal["message_content"]
    message: Literal["abandoned", "prerecorded", "opt_out_confirmation"]
    elements: list[str] = Field(min_length=1)
    templates: dict[str, str] = Field(min_length=1)

    @model_validator(mode="after")
    def _templates_carry_the_elements(self) -> MessageContentRow:
        allowed = MESSAGE_PLACEHOLDERS[self.message]
        for element in self.elements:
            if element not in MESSAGE_ELEMENTS:
                raise ValueError(
                    f"elements: {element!r} is not an element outdial can check (known: "
                    f"{', '.join(sorted(MESSAGE_ELEMENTS))})"
                )
        for lang, text in self.templates.items():
            if not re.fullmatch(r"[a-z]{2}", lang):
                raise ValueError(f"templates: {lang!r} is not a two-letter language code")
            used = set(_PLACEHOLDER.findall(text))
            if used - allowed:
                raise ValueError(
                    f"templates.{lang}: unknown placeholder(s) {sorted(used - allowed)} for a {self.message} "
                    f"message (allowed: {sorted(allowed) or 'none'})"
                )
            if self.message == "prerecorded" and "body" not in used:
                raise ValueError(f"templates.{lang}: a prerecorded message needs {{body}}")
            for element in self.elements:
                for needed in MESSAGE_ELEMENTS[element]:
                    if needed.casefold() not in text.casefold():
                        raise ValueError(
                            f"templates.{lang}: the element {element} needs {needed!r} in the text"
                        )
            if (
                "seller_name_first" in self.elements
                and "{body}" in text
                and text.index("{seller}") > text.index("{body}")
            ):
                raise ValueError(f"templates.{lang}: seller_name_first: {{seller}} must come before {{body}}")
        return self

    def topic(self) -> str:
        return f"{self.kind}:{self.message}"

    def value(self) -> str:
        return f"{self.message} message: {', '.join(self.elements)}"

    def render(self, language: str, **values: str) -> str:
        """The template of ``language`` (English when the row has none in it) with its placeholders filled."""
        text = self.templates.get(language) or self.templates.get("en") or next(iter(self.templates.values()))
        return _PLACEHOLDER.sub(lambda m: values[m[1]], text)


def call_type_tokens(call_type: str) -> frozenset[str]:
    """The words of a consent row's ``call_type`` (:data:`CALL_TYPE_WORDS`), at most one per dimension.
    ValueError naming the word that is not known."""
    words = call_type.replace("registered_number", "registered-number").split("_")
    out: set[str] = set()
    seen: dict[str, str] = {}
    for w in (x.replace("-", "_") for x in words):
        dim = next((d for d, ws in CALL_TYPE_WORDS.items() if w in ws), None)
        if dim is None:
            known = ", ".join(x for ws in CALL_TYPE_WORDS.values() for x in ws)
            raise ValueError(f"call_type {call_type!r}: unknown word {w!r} (known: {known})")
        if dim in seen:
            raise ValueError(f"call_type {call_type!r}: {seen[dim]!r} and {w!r} are both a call's {dim}")
        seen[dim] = w
        out.add(w)
    return frozenset(out)


class ConsentRow(_Row):
    """A ``call_type`` may be placed only with one of the consent kinds in ``requires_any``.

    ``call_type`` is made of the words of :data:`CALL_TYPE_WORDS`; the row binds every call that has all of
    them. An established business relationship counts for ``ebr_months[basis]`` months after the purchase or
    inquiry it rests on (the consent's ``obtained_at``): a row that accepts it says how long, per basis.
    ``campaign_opt_in`` counts only for the campaign it was given to."""

    kind: Literal["consent"]
    call_type: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    requires_any: list[ConsentKind] = Field(min_length=1)
    ebr_months: dict[Literal["purchase", "inquiry"], int] | None = None

    @field_validator("call_type")
    @classmethod
    def _known_words(cls, v: str) -> str:
        call_type_tokens(v)
        return v

    @field_validator("ebr_months")
    @classmethod
    def _positive(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is not None:
            for basis, months in v.items():
                if months <= 0:
                    raise ValueError(f"ebr_months.{basis} must be a positive number of months")
        return v

    @model_validator(mode="after")
    def _ebr_duration(self) -> ConsentRow:
        ebr = "established_business_relationship" in self.requires_any
        if ebr and (self.ebr_months is None or set(self.ebr_months) != set(EBR_BASES)):
            raise ValueError(
                "a row accepting established_business_relationship needs ebr_months for purchase and inquiry"
            )
        if not ebr and self.ebr_months is not None:
            raise ValueError("ebr_months belongs to a row accepting established_business_relationship")
        return self

    def tokens(self) -> frozenset[str]:
        return call_type_tokens(self.call_type)

    def topic(self) -> str:
        return f"{self.kind}:{self.call_type}"

    def value(self) -> str:
        kinds: list[str] = []
        for k in self.requires_any:
            if k == "established_business_relationship" and self.ebr_months:
                kinds.append(
                    f"{k} (" + ", ".join(f"{b} {m} months" for b, m in self.ebr_months.items()) + ")"
                )
            else:
                kinds.append(k)
        return f"{self.call_type}: {' or '.join(kinds)}"


class RevocationWordsRow(_Row):
    """A reply that holds one of ``words`` (a whole word, any case) or ``phrases`` revokes consent and asks
    not to be called again."""

    kind: Literal["revocation_words"]
    words: list[str] = Field(min_length=1)
    phrases: list[str] = Field(default_factory=list)

    @field_validator("words", "phrases")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        out = [" ".join(w.lower().split()) for w in v]
        if any(not w for w in out):
            raise ValueError("an empty word or phrase would match nothing")
        return out

    def value(self) -> str:
        return "revoked by a reply holding " + ", ".join(repr(w) for w in [*self.words, *self.phrases])


class AmdFalsePositivesRow(_Row):
    """Where answering-machine detection is used, the campaign states a reasoned estimate of its false
    positives (people it took for machines) before it dials (``estimate_required``), and the abandonment rate
    counts those estimated false positives as abandoned live answers (``counted_as_abandoned``)."""

    kind: Literal["amd_false_positives"]
    estimate_required: bool
    counted_as_abandoned: bool

    def value(self) -> str:
        parts = []
        if self.estimate_required:
            parts.append("with AMD on, a stated false-positive estimate and its basis are required")
        if self.counted_as_abandoned:
            parts.append("estimated false positives count as abandoned calls")
        return "; ".join(parts) or "no requirement"


class RecordingConsentRow(_Row):
    """Whose consent recording a call needs: ``one`` party's (the caller's suffices) or ``all`` parties'."""

    kind: Literal["recording_consent"]
    parties: Literal["one", "all"]

    def value(self) -> str:
        return "recording needs every party's consent" if self.parties == "all" else "one party's consent"


class RetentionRow(_Row):
    """Call detail records (calls, dial attempts, dispositions) are kept at least ``years``: the retention
    job removes nothing younger, and a retention setting below it is refused at start."""

    kind: Literal["retention"]
    records: Literal["call_records"]
    years: int = Field(gt=0)

    def topic(self) -> str:
        return f"{self.kind}:{self.records}"

    def value(self) -> str:
        return f"{self.records} kept at least {self.years} years"


Row = Annotated[
    CallingWindowRow
    | HolidayBanRow
    | CallCapRow
    | AbandonmentRow
    | ConnectLimitRow
    | MinRingRow
    | AbandonQuietRow
    | RegistryFreshnessRow
    | MessageContentRow
    | ConsentRow
    | RevocationWordsRow
    | AmdFalsePositivesRow
    | RecordingConsentRow
    | RetentionRow,
    Field(discriminator="kind"),
]


class JurisdictionTable(BaseModel):
    """One file: a jurisdiction's own rules (``state`` empty) or one of its states'."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jurisdiction: str = Field(pattern=r"^[A-Z]{2}$")
    state: str = Field(default="", pattern=r"^([A-Z]{2})?$")
    title: str = Field(min_length=1)
    #: Jurisdiction files only: the phone-number region its campaigns dial and its ``common.proto`` value.
    region: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    wire_value: int | None = Field(default=None, gt=0)
    rules: list[Row]

    @model_validator(mode="after")
    def _kind_of_file(self) -> JurisdictionTable:
        if self.state and (self.region is not None or self.wire_value is not None):
            raise ValueError("region and wire_value belong to the jurisdiction's file, not a state's")
        if not self.state and (self.region is None or self.wire_value is None):
            raise ValueError("a jurisdiction's file needs its region and wire_value")
        return self


@dataclass(frozen=True)
class RuleSet:
    """The rules binding a call in ``jurisdiction`` (to a person in ``state``) on day ``at``."""

    jurisdiction: str
    state: str
    at: date
    #: The jurisdiction-wide rows, then the state's, in file order.
    rows: tuple[Any, ...]

    def of(self, kind: type[_R]) -> list[_R]:
        return [r for r in self.rows if isinstance(r, kind)]

    def windows(self) -> list[dict[int, Hours | None]]:
        """Every calling window in force; a call must be inside all of them."""
        return [r.by_weekday() for r in self.of(CallingWindowRow)]

    def holiday_ban(self) -> bool:
        return bool(self.of(HolidayBanRow))

    def all_party_recording_consent(self) -> bool:
        return any(r.parties == "all" for r in self.of(RecordingConsentRow))

    def retention_years(self) -> int | None:
        """The longest call-record retention in force, or None when no rule sets one."""
        years = [r.years for r in self.of(RetentionRow) if r.records == "call_records"]
        return max(years) if years else None

    def max_calls_24h(self) -> int | None:
        """The strictest per-person cap per rolling 24 h, or None when no rule sets one."""
        caps = [r.max_calls for r in self.of(CallCapRow) if r.period_hours == 24]
        return min(caps) if caps else None


@dataclass(frozen=True)
class Tables:
    """Every file, validated, keyed by (jurisdiction, state or "")."""

    files: dict[tuple[str, str], tuple[str, JurisdictionTable]]

    def jurisdictions(self) -> tuple[str, ...]:
        """The jurisdictions, in ``common.proto`` enum order."""
        own = [t for (_, st), (_, t) in self.files.items() if not st]
        return tuple(t.jurisdiction for t in sorted(own, key=lambda t: t.wire_value or 0))

    def states(self, jurisdiction: str) -> tuple[str, ...]:
        return tuple(sorted(st for (j, st) in self.files if j == jurisdiction and st))

    def table(self, jurisdiction: str, state: str = "") -> JurisdictionTable:
        return self.files[(jurisdiction, state)][1]

    def file_name(self, jurisdiction: str, state: str = "") -> str:
        return self.files[(jurisdiction, state)][0]

    def in_force(self, jurisdiction: str, state: str | None, at: date | datetime) -> RuleSet:
        j = (jurisdiction or "").strip().upper()
        if (j, "") not in self.files:
            raise ValueError(
                f"unknown jurisdiction {jurisdiction!r}; known: {', '.join(self.jurisdictions())}"
            )
        st = (state or "").strip().upper()
        day = at.date() if isinstance(at, datetime) else at
        rows = [r for r in self.table(j).rules if r.in_force(day)]
        if st and (j, st) in self.files:
            rows += [r for r in self.table(j, st).rules if r.in_force(day)]
        return RuleSet(j, st, day, tuple(rows))


def _field(loc: tuple[int | str, ...], data: Any) -> tuple[str, str]:
    """(row, field) of a pydantic error location in a file."""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        i = loc[1]
        raw = data.get("rules") if isinstance(data, dict) else None
        rid = (
            raw[i].get("id") if isinstance(raw, list) and i < len(raw) and isinstance(raw[i], dict) else None
        )
        rest = [str(p) for p in loc[2:]]
        # A discriminated union puts the kind in the path: rules.3.calling_window.hours -> hours.
        if rest and isinstance(raw, list) and isinstance(raw[i], dict) and rest[0] == raw[i].get("kind"):
            rest = rest[1:]
        return f"{i + 1}" + (f" ({rid})" if rid else ""), ".".join(rest)
    return "", ".".join(str(p) for p in loc)


def _parse_one(name: str, text: str) -> JurisdictionTable:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesDataError(name, "", "", f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RulesDataError(name, "", "", "a rules file is a mapping (jurisdiction, title, rules)")
    try:
        return JurisdictionTable.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        row, field = _field(tuple(err["loc"]), data)
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise RulesDataError(name, row, field, f"{err['msg']}{more}") from None


def parse_tables(texts: Mapping[str, str]) -> Tables:
    """Validate every file (name -> YAML text) and the files together. Raises :class:`RulesDataError`."""
    files: dict[tuple[str, str], tuple[str, JurisdictionTable]] = {}
    ids: dict[str, str] = {}
    for name in sorted(texts):
        t = _parse_one(name, texts[name])
        expected = (t.jurisdiction + (f"-{t.state}" if t.state else "")).lower() + ".yaml"
        if name.rsplit("/", 1)[-1] != expected:
            raise RulesDataError(
                name, "", "jurisdiction", f"the file of {t.jurisdiction} {t.state} is {expected}"
            )
        files[(t.jurisdiction, t.state)] = (name, t)
        for i, r in enumerate(t.rules, 1):
            if r.id in ids:
                raise RulesDataError(name, f"{i} ({r.id})", "id", f"the id is used already in {ids[r.id]}")
            ids[r.id] = name
        _no_overlap(name, t.rules)
    for (j, st), (name, _) in files.items():
        if st and (j, "") not in files:
            raise RulesDataError(name, "", "jurisdiction", f"no file for the jurisdiction {j}")
    wire = [t.wire_value for (_, st), (_, t) in files.items() if not st]
    if len(set(wire)) != len(wire):
        raise RulesDataError("*.yaml", "", "wire_value", "two jurisdictions share a wire_value")
    return Tables(files)


def _no_overlap(name: str, rows: Iterable[Any]) -> None:
    """Two rows on one topic in one file may not be in force on the same day (which would win?)."""
    seen: dict[str, list[Any]] = {}
    for i, r in enumerate(rows, 1):
        for other in seen.get(r.topic(), []):
            a_end = r.effective_until or date.max
            b_end = other.effective_until or date.max
            if r.effective_from < b_end and other.effective_from < a_end:
                raise RulesDataError(
                    name, f"{i} ({r.id})", "effective_from", f"in force on the same days as {other.id}"
                )
        seen.setdefault(r.topic(), []).append(r)


@functools.cache
def load_tables() -> Tables:
    """This package's ``data/*.yaml``, validated once per process."""
    folder = resources.files("outdial.rules").joinpath("data")
    texts = {
        f"rules/data/{entry.name}": entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }
    return parse_tables(texts)


def rules_in_force(jurisdiction: str, state: str | None, at: date | datetime) -> RuleSet:
    """The rules binding a call in ``jurisdiction`` to a person in ``state`` on ``at`` (a day, or an aware
    instant: its date as given). Unknown jurisdiction: ValueError; a state without rules of its own: the
    jurisdiction's."""
    return load_tables().in_force(jurisdiction, state, at)
