"""Lead rows: find the columns of a header, normalise one row into a lead (numbers in E.164 with their time
zones) or rejects. Pure; the upload pipeline (upload.py) streams rows through it."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from outdial.core.csvsafe import csv_safe
from outdial.rules.numbers import NumberError, ParsedNumber, normalise_state, parse_number, refine_zones

_NON_ALNUM = re.compile(r"[^a-z0-9]+")

ALIASES: dict[str, tuple[str, ...]] = {
    "first_name": ("firstname", "first", "givenname", "fname", "forename", "name"),
    "last_name": ("lastname", "last", "surname", "familyname", "lname"),
    "zip": ("zip", "zipcode", "postalcode", "postcode", "postal", "zip5", "postalzip"),
    "state": ("state", "province", "stateprovince", "st", "provincestate", "statecode"),
    "timezone": ("timezone", "tz", "timezonename", "olsontimezone"),
}
LEAD_FIELDS = ("first_name", "last_name", "zip", "state", "timezone")


def norm_header(h: str) -> str:
    return _NON_ALNUM.sub("", h.strip().lower())


def _is_phone_header(header: str) -> bool:
    """Phone-like header: a word tel/phone/telephone/mobile/cell/msisdn (any case and spacing), or glued
    forms such as "HomePhone", "cellphone", "phone2"; "number" alone too, but not "Account Number"."""
    n = norm_header(header)
    if n in ("number", "tel", "msisdn") or re.fullmatch(r"(tel|number|phone)\d*", n):
        return True
    words = re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", header).lower())
    if any(w in ("tel", "phone", "telephone", "mobile", "cell", "msisdn", "cellphone", "fax") for w in words):
        return "fax" not in words
    return any(w in n for w in ("phone", "mobile", "cell", "telephone"))


class MappingError(ValueError):
    pass


@dataclass(frozen=True)
class Columns:
    header: tuple[str, ...]
    phones: tuple[int, ...]  # indexes of the phone columns, in priority order
    fields: dict[str, int]  # lead field -> index
    custom: tuple[int, ...]  # every other column, kept as custom fields


def find_columns(header: Sequence[str], mapping: Mapping[str, str] | None = None) -> Columns:
    """Columns by explicit ``mapping`` (lead field -> header text; keys "phone", "phone2"… are phone
    columns), else by common header names in any case and spacing."""
    hdr = tuple(h.strip() for h in header)
    normed = [norm_header(h) for h in hdr]
    by_norm: dict[str, int] = {}
    for i, n in enumerate(normed):
        by_norm.setdefault(n, i)
    phones: list[int] = []
    fields: dict[str, int] = {}
    mapping = dict(mapping or {})
    for key, col in mapping.items():
        k = key.strip().lower()
        idx = hdr.index(col.strip()) if col.strip() in hdr else by_norm.get(norm_header(col))
        if idx is None:
            raise MappingError(f"mapping {key}={col!r}: no column {col!r} in the header ({', '.join(hdr)})")
        if k.startswith("phone"):
            phones.append(idx)
        elif k in LEAD_FIELDS:
            fields[k] = idx
        else:
            raise MappingError(f"mapping {key}: unknown lead field (phone, phoneN, {', '.join(LEAD_FIELDS)})")
    if not any(k.strip().lower().startswith("phone") for k in mapping):
        phones = [i for i, h in enumerate(hdr) if h and _is_phone_header(h)]
    for f, names in ALIASES.items():
        if f in fields:
            continue
        for name in names:
            if name in by_norm and by_norm[name] not in phones and by_norm[name] not in fields.values():
                fields[f] = by_norm[name]
                break
    if not phones:
        raise MappingError(
            'no phone column: name one phone/telephone/mobile/cell or map it with phone="<header>" '
            f"(header: {', '.join(hdr)})"
        )
    used = set(phones) | set(fields.values())
    custom = tuple(i for i in range(len(hdr)) if i not in used and hdr[i])
    return Columns(hdr, tuple(dict.fromkeys(phones)), fields, custom)


@dataclass
class Reject:
    row_number: int
    field: str
    raw_value: str
    reason: str
    detail: str


@dataclass
class LeadRow:
    row_number: int
    first_name: str
    last_name: str
    zip: str
    state: str
    fields: dict[str, str]
    numbers: list[tuple[str, str, tuple[str, ...]]]  # (e164, number_type, timezones)
    rejects: list[Reject] = field(default_factory=list)


Parser = Callable[[str, str, str], ParsedNumber]


def _cell(row: Sequence[str], i: int | None) -> str:
    if i is None or i >= len(row):
        return ""
    return row[i].strip()


# Pure lookups repeated on every row of a file: cached.
_state_code = functools.lru_cache(maxsize=4096)(normalise_state)


@functools.lru_cache(maxsize=1024)
def _valid_zone(name: str) -> str | None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return name


def normalise_row(
    row_number: int,
    row: Sequence[str],
    cols: Columns,
    *,
    default_region: str,
    jurisdiction: str,
    parser: Parser = parse_number,
) -> LeadRow:
    """One CSV record -> a lead with its valid numbers (deduplicated within the row) and its rejects."""
    f = cols.fields
    zip_code = _cell(row, f.get("zip"))
    raw_state = _cell(row, f.get("state"))
    state = _state_code(raw_state) or "" if raw_state else ""
    tz_col = _cell(row, f.get("timezone"))
    lead = LeadRow(
        row_number=row_number,
        first_name=_cell(row, f.get("first_name")),
        last_name=_cell(row, f.get("last_name")),
        zip=zip_code,
        state=state,
        fields={cols.header[i]: row[i] for i in cols.custom if i < len(row) and row[i] != ""},
        numbers=[],
    )
    seen: set[str] = set()
    blanks = 0
    for i in cols.phones:
        raw = row[i] if i < len(row) else ""
        if not raw.strip():
            blanks += 1
            continue
        try:
            p = parser(raw, default_region, jurisdiction)
        except NumberError as exc:
            lead.rejects.append(Reject(row_number, cols.header[i], raw, exc.reason, exc.detail))
            continue
        if p.e164 in seen:
            continue
        seen.add(p.e164)
        zones = (
            refine_zones(p.timezones, zip_code or None, state or None) if (zip_code or state) else p.timezones
        )
        if tz_col:
            tz = _valid_zone(tz_col)
            if tz is not None:
                zones = (tz,) if tz in zones else tuple(sorted({*zones, tz}))
        lead.numbers.append((p.e164, p.number_type, zones))
    if not lead.numbers and not lead.rejects:
        lead.rejects.append(
            Reject(row_number, cols.header[cols.phones[0]], "", "empty", "no phone number in the row")
        )
    return lead


def neutralise_formula(value: str) -> str:
    """Text a spreadsheet would run as a formula is neutralised (see :func:`outdial.core.csvsafe.csv_safe`)."""
    return csv_safe(value)
