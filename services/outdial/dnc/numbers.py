"""Number normalisation for the DNC lists (pure). Everything is stored and looked up as E.164.

DNC lists must accept any number a person could ask not to be called on (toll-free or premium numbers
included), so this is deliberately more lenient than the campaign's lead validation: a number that is
*possible* for its region is accepted. Numbers already in E.164 take a fast path (the dialer sends E.164;
libphonenumber costs ~20 µs a number, too slow for batches of thousands).

Index layout helpers live here too: a number's digits minus the last 7 form its *prefix* (for NANP,
"1" + area code), the last 7 its *offset* in that prefix's 10,000,000-bit bitmap.
"""

from __future__ import annotations

import functools
import re

import phonenumbers

from outdial.rules.law import JURISDICTION_REGION, REGION_JURISDICTION

_E164 = re.compile(r"^\+[1-9]\d{7,14}$")
_NANP = re.compile(r"^\+1[2-9]\d{2}[2-9]\d{6}$")
SEGMENT = 10_000_000


class InvalidNumber(ValueError):
    pass


def normalise(raw: str, default_region: str = "US") -> str:
    """E.164 for ``raw`` or :class:`InvalidNumber`."""
    s = raw.strip()
    if s.startswith("+1"):
        if _NANP.match(s):
            return s
        raise InvalidNumber(f"not a valid North American number: {raw!r}")
    if _E164.match(s):
        return s
    digits = re.sub(r"[\s().\-]", "", s)
    if default_region in ("US", "CA") and digits.isdigit():
        if len(digits) == 11 and digits[0] == "1":
            digits = digits[1:]
        if len(digits) == 10 and _NANP.match("+1" + digits):
            return "+1" + digits
    try:
        parsed = phonenumbers.parse(s, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(f"cannot parse {raw!r}") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidNumber(f"not a possible number: {raw!r}")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not _E164.match(e164):
        raise InvalidNumber(f"not a possible number: {raw!r}")
    return e164


def jurisdiction_of(e164: str) -> str:
    """The jurisdiction whose rules apply to a number by default (US for NANP numbers outside Canada)."""
    if e164.startswith("+44"):
        return "UK"
    if e164.startswith("+1") and len(e164) == 12:
        return _nanp_jurisdiction(e164[2:5])
    return ""


@functools.lru_cache(maxsize=1024)
def _nanp_jurisdiction(npa: str) -> str:
    """NANP numbers belong to a country by area code, so one lookup per area code is enough."""
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(f"+1{npa}2220000"))
    except phonenumbers.NumberParseException:
        return "US"
    return REGION_JURISDICTION.get(region or "US", "US")


def split(e164: str) -> tuple[str, int]:
    """(prefix, offset) of a number in the bitmap layout."""
    digits = e164[1:]
    return digits[:-7], int(digits[-7:])


def registry_line(line: str, jurisdiction: str) -> str | None:
    """E.164 for one line of a registry file (10-digit NANP or a national-format UK number), else None."""
    s = line.strip()
    if not s:
        return None
    if jurisdiction in ("US", "CA") and len(s) == 10 and s.isdigit():
        e = "+1" + s
        return e if _NANP.match(e) else None
    try:
        return normalise(s, JURISDICTION_REGION.get(jurisdiction, "US"))
    except InvalidNumber:
        return None
