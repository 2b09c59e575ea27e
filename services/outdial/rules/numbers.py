"""Phone numbers: parse, validate for the campaign's jurisdiction, type, and place in time zones.

Pure functions over Google's libphonenumber metadata (the ``phonenumbers`` port) plus the ``zipcodes``
(USPS ZIP -> IANA zone) and ``us`` (state -> zones) data packages. No I/O.

Sources: the US calling-hours rule (47 CFR 64.1200(c)(1), 16 CFR 310.4(c)) applies in the *called
person's* local time; the number's area code is only a presumption, refined by the address. When the
number and the address disagree, or the number spans several zones, every candidate zone is returned so
that :func:`outdial.rules.windows.check_window` takes the intersection (the most restrictive window).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
import us
import zipcodes
from phonenumbers import PhoneNumberType, timezone
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

from outdial.rules.law import JURISDICTION_REGION, JURISDICTIONS

__all__ = [
    "JURISDICTION_REGIONS",
    "NumberError",
    "ParsedNumber",
    "area_code_state",
    "jurisdiction_regions",
    "normalise_state",
    "number_zones",
    "parse_number",
    "parse_number_fast",
    "refine_zones",
    "timezones_for",
]

#: Regions whose numbers a campaign of that jurisdiction may call.
JURISDICTION_REGIONS: dict[str, tuple[str, ...]] = {j: (r,) for j, r in JURISDICTION_REGION.items()}

_TYPE_NAMES: dict[int, str] = {
    PhoneNumberType.FIXED_LINE: "fixed_line",
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
    PhoneNumberType.UNKNOWN: "unknown",
}

#: Number types an outbound campaign never dials: they reach no person (or cost the callee / us money).
REJECTED_TYPES: frozenset[str] = frozenset(
    {"toll_free", "premium_rate", "shared_cost", "personal_number", "pager", "voicemail"}
)

_UNKNOWN_ZONE = "Etc/Unknown"


class NumberError(ValueError):
    """A number that cannot be called. ``reason`` is a stable code, ``detail`` is for humans."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ParsedNumber:
    e164: str
    region: str
    number_type: str
    timezones: tuple[str, ...]


def jurisdiction_regions(jurisdiction: str) -> tuple[str, ...]:
    try:
        return JURISDICTION_REGIONS[jurisdiction.upper()]
    except KeyError:
        raise ValueError(
            f"unknown jurisdiction {jurisdiction!r} (expected one of {', '.join(JURISDICTIONS)})"
        ) from None


def parse_number(raw: str, default_region: str = "US", jurisdiction: str = "US") -> ParsedNumber:
    """Parse ``raw`` (national format read in ``default_region``) and check it may be called in
    ``jurisdiction``. Raises :class:`NumberError` with a stable ``reason``."""
    regions = jurisdiction_regions(jurisdiction)
    text = (raw or "").strip()
    if not text:
        raise NumberError("empty", "no number")
    try:
        num = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise NumberError("not_a_number", str(exc)) from None
    if not any(phonenumbers.is_valid_number_for_region(num, r) for r in regions):
        if phonenumbers.is_valid_number(num):
            other = phonenumbers.region_code_for_number(num) or "?"
            raise NumberError(
                "wrong_country", f"number belongs to {other}, campaign calls {'/'.join(regions)}"
            )
        raise NumberError("invalid_number", "not a valid number for " + "/".join(regions))
    ntype = _TYPE_NAMES.get(phonenumbers.number_type(num), "unknown")
    if ntype in REJECTED_TYPES:
        raise NumberError(ntype, f"{ntype.replace('_', ' ')} numbers are not dialled")
    e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    region = phonenumbers.region_code_for_number(num) or regions[0]
    return ParsedNumber(e164=e164, region=region, number_type=ntype, timezones=_number_zones(e164))


@functools.lru_cache(maxsize=65536)
def _number_zones(e164: str) -> tuple[str, ...]:
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return ()
    zones = timezone.time_zones_for_number(num)
    return tuple(sorted(z for z in zones if z != _UNKNOWN_ZONE))


@functools.lru_cache(maxsize=65536)
def _zip_zone(zip_code: str) -> str | None:
    z = zip_code.strip()[:5]
    if len(z) != 5 or not z.isdigit():
        return None
    try:
        found = zipcodes.matching(z)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        return None
    for rec in found:
        tz = rec.get("timezone")
        if isinstance(tz, str) and tz:
            return tz
    return None


def normalise_state(state: str | None) -> str | None:
    """A US state / Canadian province code ("FL") from a code or name, else None."""
    if not state or not state.strip():
        return None
    s = state.strip()
    found = us.states.lookup(s)
    if found is not None:
        return str(found.abbr)
    up = s.upper()
    if up in _CA_PROVINCE_ZONES:
        return up
    return None


# Canadian provinces and territories (``us`` covers only the US). Zones from the IANA tz database.
_CA_PROVINCE_ZONES: dict[str, tuple[str, ...]] = {
    "AB": ("America/Edmonton",),
    "BC": ("America/Vancouver", "America/Edmonton", "America/Creston"),
    "MB": ("America/Winnipeg",),
    "NB": ("America/Moncton",),
    "NL": ("America/St_Johns", "America/Goose_Bay"),
    "NS": ("America/Halifax",),
    "NT": ("America/Yellowknife",),
    "NU": ("America/Iqaluit", "America/Rankin_Inlet", "America/Cambridge_Bay"),
    "ON": ("America/Toronto", "America/Winnipeg"),
    "PE": ("America/Halifax",),
    "QC": ("America/Toronto", "America/Blanc-Sablon"),
    "SK": ("America/Regina",),
    "YT": ("America/Whitehorse",),
}


@functools.lru_cache(maxsize=1024)
def _state_zones(state: str) -> tuple[str, ...]:
    code = normalise_state(state)
    if code is None:
        return ()
    if code in _CA_PROVINCE_ZONES:
        return _CA_PROVINCE_ZONES[code]
    found = us.states.lookup(code)
    if found is None or not found.time_zones:
        return ()
    return tuple(str(z) for z in found.time_zones)


def timezones_for(e164: str, zip_code: str | None = None, state: str | None = None) -> tuple[str, ...]:
    """Candidate IANA zones of the person behind ``e164``.

    The number gives the first candidates. A valid ZIP (else the state) narrows them when it is one of
    them; when the address and the number disagree, every candidate from both is kept so the calling
    window is their intersection. An empty tuple means "unknown": callers must fail closed.
    """
    return refine_zones(_number_zones(e164), zip_code, state)


def refine_zones(
    number_zones: tuple[str, ...], zip_code: str | None = None, state: str | None = None
) -> tuple[str, ...]:
    """:func:`timezones_for` given the number's own zones (``ParsedNumber.timezones``). These are the zones
    stored with a lead at upload; at call time :func:`outdial.rules.place.place_of` keeps them and adds every
    other candidate (all the area code's zones, the address's), so the window is never wider than this."""
    address_zones: tuple[str, ...] = ()
    if zip_code:
        zz = _zip_zone(zip_code)
        if zz is not None:
            address_zones = (zz,)
    if not address_zones and state:
        address_zones = _state_zones(state)
    if not address_zones:
        return number_zones
    if not number_zones:
        return tuple(sorted(set(address_zones)))
    return _combine(number_zones, address_zones)


@functools.lru_cache(maxsize=4096)
def _combine(number_zones: tuple[str, ...], address_zones: tuple[str, ...]) -> tuple[str, ...]:
    common = set(address_zones) & set(number_zones)
    if common:
        # The address picks among the number's candidates (or overlaps a multi-zone state).
        return tuple(sorted(common))
    return tuple(sorted(set(address_zones) | set(number_zones)))


# ------------------------------------------------------------------------------------------- fast path
#
# ``parse_number`` costs ~30-50 us per number, most of it in ``phonenumbers.parse`` (generic extraction
# and normalisation) and in finding the region of a NANP number among 25 regions. Lead files are
# overwhelmingly US numbers written in a handful of shapes. For exactly those shapes the outcome of
# ``phonenumbers.parse(raw, "US")`` is known without running it - country code 1 and the ten digits as the
# national number - and for a number valid for the US, region_code_for_number() is "US" (the US comes
# first among NANP regions) so its type is the US metadata's type of those digits. Time zones of a
# geographical NANP number depend only on its first 7 E.164 digits (the longest "1…" prefix in
# phonenumbers' tz data is 7 digits), so they are cached by that prefix. Anything else - other shapes,
# other regions, invalid, unusual types - goes to ``parse_number``. tests/unit/test_rules_numbers.py proves
# with hypothesis that both give identical answers.

_SIMPLE_US = re.compile(r"\s*(?:\+?1[ .\-]?)?\(?([2-9]\d\d)\)?[ .\-]?(\d{3})[ .\-]?(\d{4})\s*")
_US_META = phonenumbers.PhoneMetadata.metadata_for_region("US")
_GEO_TYPES = {
    PhoneNumberType.FIXED_LINE: "fixed_line",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
}
_NANP_TZ_PREFIX = max(len(k) for k in TIMEZONE_DATA if k.startswith("1"))
assert _NANP_TZ_PREFIX <= TIMEZONE_LONGEST_PREFIX


def _applies(desc: phonenumbers.PhoneNumberDesc | None, length: int) -> bool:
    """Whether ``_is_number_matching_desc`` would look at ``desc``'s pattern for a number of ``length``
    digits (it answers False without a pattern, or when the possible lengths exclude it)."""
    if desc is None or not desc.national_number_pattern:
        return False
    return not desc.possible_length or length in desc.possible_length


def _us_type_matcher() -> Callable[[str], int | None] | None:
    """One compiled regex that answers ``_number_type_helper(nsn, US metadata)`` for a 10-digit NSN when
    the answer is FIXED_LINE or FIXED_LINE_OR_MOBILE (None for every other answer): the same patterns,
    tried in the same order (a fullmatch of an alternation takes its first alternative that matches the
    whole string). None when the metadata does not have the shape this relies on."""
    m = _US_META
    if m is None or not _applies(m.general_desc, 10) or not _applies(m.fixed_line, 10):
        return None
    assert m.general_desc is not None and m.fixed_line is not None
    general = re.compile(m.general_desc.national_number_pattern or "")
    others = [
        d.national_number_pattern
        for d in (
            m.premium_rate,
            m.toll_free,
            m.shared_cost,
            m.voip,
            m.personal_number,
            m.pager,
            m.uan,
            m.voicemail,
        )
        if d is not None and _applies(d, 10)
    ]
    alt = "|".join(f"(?:{p})" for p in others)
    combined = re.compile(
        (f"(?P<other>{alt})|" if alt else "") + f"(?P<fixed>{m.fixed_line.national_number_pattern})"
    )
    mobile = (
        re.compile(m.mobile.national_number_pattern or "")
        if m.mobile is not None and _applies(m.mobile, 10)
        else None
    )
    same = bool(m.same_mobile_and_fixed_line_pattern)

    def answer(nsn: str) -> int | None:
        if general.fullmatch(nsn) is None:
            return None
        hit = combined.fullmatch(nsn)
        if hit is None or hit.group("fixed") is None:
            return None
        if same or (mobile is not None and mobile.fullmatch(nsn) is not None):
            return PhoneNumberType.FIXED_LINE_OR_MOBILE
        return PhoneNumberType.FIXED_LINE

    return answer


_US_GEO_TYPE = _us_type_matcher()


@functools.lru_cache(maxsize=1 << 18)
def _nanp_geo_zones(prefix7: str) -> tuple[str, ...]:
    """Zones of a valid geographical +1 number from its first 7 digits (as time_zones_for_geographical_number
    would look them up: longest prefix first)."""
    for n in range(len(prefix7), 0, -1):
        zones = TIMEZONE_DATA.get(prefix7[:n])
        if zones is not None:
            return tuple(sorted(z for z in zones if z != _UNKNOWN_ZONE))
    return ()


def parse_number_fast(raw: str, default_region: str = "US", jurisdiction: str = "US") -> ParsedNumber:
    """Same answers as :func:`parse_number`, several times faster on common US number shapes."""
    if default_region == "US" and jurisdiction == "US" and _US_GEO_TYPE is not None:
        m = _SIMPLE_US.fullmatch(raw) if raw else None
        if m is not None:
            nsn = m.group(1) + m.group(2) + m.group(3)
            ntype = _US_GEO_TYPE(nsn)
            name = _GEO_TYPES.get(ntype) if ntype is not None else None
            if name is not None:
                e164 = "+1" + nsn
                return ParsedNumber(
                    e164=e164, region="US", number_type=name, timezones=_nanp_geo_zones(e164[1:8])
                )
    return parse_number(raw, default_region, jurisdiction)


def number_zones(e164: str) -> tuple[str, ...]:
    """Every zone of a number's prefix (libphonenumber), as :func:`parse_number` gives it: by the cached
    7-digit prefix for a geographical US number (the fast path's reasoning), else by a full parse."""
    if _US_GEO_TYPE is not None and len(e164) == 12 and e164.startswith("+1") and e164[1:].isdigit():
        if _US_GEO_TYPE(e164[2:]) in _GEO_TYPES:
            return _nanp_geo_zones(e164[1:8])
    return _number_zones(e164)


@functools.lru_cache(maxsize=65536)
def area_code_state(e164: str) -> str | None:
    """The US state (or Canadian province) of a NANP number's area code, from libphonenumber's geocoding
    data. State mini-TCPA laws presume that a person with an in-state area code lives there (e.g. Fla.
    Stat. 501.059), so their rules apply on the number's state as well as the address's."""
    if not e164.startswith("+1"):
        return None
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    # Imported here: the geocoding data takes ~1 s to load, and most processes (the CLI, the services that
    # never ask for a number's state) do not need it.
    from phonenumbers import geocoder

    desc = geocoder.description_for_number(num, "en")
    if not desc:
        return None
    _, sep, code = desc.rpartition(", ")
    if sep and len(code) == 2:
        return normalise_state(code)
    # libphonenumber names Washington's area codes (206, 253, 360, 425, 564) "Washington State", and the
    # capital's (202, 771) "Washington D.C.".
    return normalise_state(_GEO_NAMES.get(desc, desc))


_GEO_NAMES = {"Washington State": "WA", "Washington D.C.": "DC"}
