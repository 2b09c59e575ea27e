"""Generated data for ``outdial demo`` and the end-to-end tests: a messy lead list across US time zones and
a DNC registry extract that overlaps it. Deterministic for a seed."""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field

# Area codes by zone (a few each), with a ZIP and state that agree with them.
AREAS: dict[str, list[tuple[str, str, str]]] = {
    "America/New_York": [("212", "10001", "NY"), ("646", "10016", "NY"), ("617", "02108", "MA")],
    "America/Chicago": [("312", "60601", "IL"), ("214", "75201", "TX"), ("612", "55401", "MN")],
    "America/Denver": [("303", "80202", "CO"), ("801", "84101", "UT")],
    "America/Phoenix": [("602", "85004", "AZ")],
    "America/Los_Angeles": [("213", "90012", "CA"), ("415", "94103", "CA"), ("206", "98101", "WA")],
    "America/Anchorage": [("907", "99501", "AK")],
    "Pacific/Honolulu": [("808", "96813", "HI")],
}

FIRST = ["Ana", "Ben", "Chloe", "Dev", "Eve", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kemi", "Liam", "Mia"]
LAST = ["Ng", "Okafor", "Patel", "Quinn", "Rossi", "Silva", "Tran", "Ueda", "Varga", "Wong", "Young", "Zed"]

# Rows that must be rejected, with the reason phonenumbers implies.
BAD_PHONES = [
    "12345",
    "not a number",
    "+1 800 555 0199",
    "+1 900 555 0142",
    "",
    "+44 20 7946 0958",
    "555-0100",
]


@dataclass
class DemoLeads:
    csv_text: str
    numbers: list[str]  # E.164 of the good, distinct leads
    by_zone: dict[str, list[str]] = field(default_factory=dict)
    bad_rows: int = 0
    duplicate_rows: int = 0


def _number(rng: random.Random, area: str) -> str:
    exchange = rng.randint(200, 999)
    while exchange % 100 == 11 or exchange == 555:
        exchange = rng.randint(200, 999)
    return f"+1{area}{exchange:03d}{rng.randint(0, 9999):04d}"


def _formats(e164: str, rng: random.Random) -> str:
    national = e164[2:]
    style = rng.randrange(4)
    if style == 0:
        return e164
    if style == 1:
        return f"({national[:3]}) {national[3:6]}-{national[6:]}"
    if style == 2:
        return f"{national[:3]}.{national[3:6]}.{national[6:]}"
    return f"1-{national[:3]}-{national[3:6]}-{national[6:]}"


def generate_leads(count: int, seed: int = 7, bad_every: int = 50, dup_every: int = 40) -> DemoLeads:
    """``count`` distinct good leads, plus bad rows and duplicate rows mixed in, as CSV text with a BOM,
    CRLF line ends, a quoted note with an embedded newline, and a semicolon delimiter."""
    rng = random.Random(seed)
    zones = list(AREAS)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(["First Name", "Last Name", "Phone Number", "Mobile", "ZIP", "State", "Notes"])
    seen: set[str] = set()
    numbers: list[str] = []
    by_zone: dict[str, list[str]] = {z: [] for z in zones}
    bad = dups = 0
    while len(numbers) < count:
        zone = zones[len(numbers) % len(zones)]
        area, zip_code, state = rng.choice(AREAS[zone])
        e164 = _number(rng, area)
        if e164 in seen:
            continue
        seen.add(e164)
        numbers.append(e164)
        by_zone[zone].append(e164)
        note = "call after lunch\nprefers email" if rng.random() < 0.05 else ""
        writer.writerow([rng.choice(FIRST), rng.choice(LAST), _formats(e164, rng), "", zip_code, state, note])
        if len(numbers) % bad_every == 0:
            writer.writerow(["Bad", "Row", BAD_PHONES[bad % len(BAD_PHONES)], "", "", "", "bad"])
            bad += 1
        if len(numbers) % dup_every == 0:
            again = rng.choice(numbers)
            writer.writerow(["Dup", "Licate", _formats(again, rng), "", "", "", "duplicate"])
            dups += 1
    return DemoLeads("\ufeff" + out.getvalue(), numbers, by_zone, bad, dups)


def registry_extract(
    numbers: list[str], fraction: float, seed: int = 11, extra: int = 1000
) -> tuple[str, list[str]]:
    """A national-registry file (one 10-digit number per line) holding ``fraction`` of ``numbers`` plus
    ``extra`` unrelated numbers; returns the text and the lead numbers it covers."""
    rng = random.Random(seed)
    covered = rng.sample(numbers, max(1, int(len(numbers) * fraction)))
    lines = [n[2:] for n in covered]
    for _ in range(extra):
        lines.append(_number(rng, rng.choice(["212", "312", "415", "305"]))[2:])
    rng.shuffle(lines)
    return "\n".join(lines) + "\n", covered
