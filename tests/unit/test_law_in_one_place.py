"""The legal figures are written once, in ``outdial/rules/law.py``: a literal copy anywhere else in the package
(the other ``rules/`` modules included) fails this test, naming the file and line (issue 10, point 3: "the law
in one place").

The patterns look for the shapes copies took before they moved to ``rules/law.py`` (``72 * 3600``,
``timedelta(hours=72)``, ``30 * 86400``, the jurisdiction list or map spelt out, a ring minimum of 15 compared
or maxed against, an abandonment cap of 0.03 / 0.05 next to the word cap or abandon, a 2 s / 2000 ms deadline).
They are heuristics: a figure that matches but is not the law reads it from ``rules/`` anyway (it costs one
import), rather than being exempted here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "outdial"

#: Where the law lives, and generated code.
HOME = ("rules/law.py", "v1/")

_J = r'"(US|CA|UK)"'
#: (name, pattern); a pattern's groups named j1..j3 must be three different jurisdictions to count.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "UK 72 h rule",
        re.compile(r"\b72\s*\*\s*(3600|60\s*\*\s*60)\b|timedelta\(\s*hours\s*=\s*72\b|\b259200\b"),
    ),
    ("30-day abandonment window", re.compile(r"\b30\s*\*\s*(86400|24\s*\*\s*3600)\b|\b2592000\b")),
    ("abandonment window", re.compile(r"window\w*[\"']?\s*[:=]\s*[^,\n]*\b86400\b")),
    (
        "jurisdiction list",
        re.compile(
            rf"[(\[{{]\s*{_J.replace('(', '(?P<j1>', 1)}\s*,\s*{_J.replace('(', '(?P<j2>', 1)}\s*,\s*"
            rf"{_J.replace('(', '(?P<j3>', 1)}\s*,?\s*[)\]}}]"
        ),
    ),
    (
        "jurisdiction map",
        re.compile(
            rf"{_J.replace('(', '(?P<j1>', 1)}\s*:[^,:]*,\s*{_J.replace('(', '(?P<j2>', 1)}\s*:[^,:]*,\s*"
            rf"{_J.replace('(', '(?P<j3>', 1)}\s*:"
        ),
    ),
    (
        "jurisdiction list in words",
        re.compile(r"\b(?P<j1>US|CA|UK), (?P<j2>US|CA|UK),? (and |or )?(?P<j3>US|CA|UK)\b"),
    ),
    ("region -> jurisdiction map", re.compile(r'"GB"\s*:\s*"UK"')),
    (
        "15 s ring minimum",
        re.compile(
            r"\bmax\(\s*15(\.0)?\b|(ring|secs|timeout)\w*\s*[<>]=?\s*15(\.0)?\b|MIN_RING\w*\s*(:\s*\w+\s*)?=\s*15\b"
            r"|below 15\b"
        ),
    ),
    (
        "abandonment cap",
        re.compile(
            r"(?i)(abandon|\bcap\b|_cap\b|-cap\b)[^\n]*(?<![\w.])0\.0[35]\b|(?<![\w.])0\.0[35]\b[^\n]*\bcap\b"
        ),
    ),
    (
        "2 s connect limit",
        re.compile(
            r"timedelta\(\s*seconds\s*=\s*2(\.0)?\s*\)|(?i:deadline)\w*[^\n]*\b2000\b|\ble\s*=\s*2000\b"
            r"|min\(\s*2\.0\b"
        ),
    ),
)


def _scanned() -> list[Path]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(HOME):
            continue
        out.append(path)
    return out


def copies(text: str) -> list[tuple[int, str, str]]:
    """(line, rule, line text) of every literal copy of a legal figure in ``text``."""
    found = []
    for name, pattern in PATTERNS:
        for m in pattern.finditer(text):
            js = [g for k, g in m.groupdict().items() if k.startswith("j") and g]
            if js and len(set(js)) < 3:
                continue
            line = text.count("\n", 0, m.start()) + 1
            found.append((line, name, text.splitlines()[line - 1].strip()))
    return sorted(found)


def test_no_legal_figure_is_copied_outside_rules() -> None:
    files = _scanned()
    assert len(files) > 40, "the scan found too few files: is PACKAGE right?"
    found = [
        f"services/outdial/{p.relative_to(PACKAGE).as_posix()}:{line}: {name}: {src}"
        for p in files
        for line, name, src in copies(p.read_text(encoding="utf-8"))
    ]
    assert not found, "legal figures written outside rules/law.py (read them from there):\n" + "\n".join(
        found
    )


@pytest.mark.parametrize(
    "src",
    [
        "abandoned_delay = 72 * 3600 if jurisdiction == 'UK' else 3600",
        "since = now - timedelta(hours=72)",
        '"US": (0.03, 30 * 86400),',
        'JURISDICTIONS = ("US", "CA", "UK")',
        'for j in ["UK", "US", "CA"]:',
        '_HOLIDAY_COUNTRY = {"US": "US", "CA": "CA", "UK": "GB"}',
        '_J = {\n    "US": common_pb2.JURISDICTION_US,\n    "CA": common_pb2.JURISDICTION_CA,\n    "UK": pb.UK,\n}',
        'jur = {"US": 1, "CA": 2, "UK": 3}.get(j, 1)',
        'REGION_JURISDICTION = {"US": "US", "CA": "CA", "GB": "UK"}',
        "MIN_RING_TIMEOUT_S = 15",
        "MIN_RING_S: float = 15.0",
        "ring_s = max(15.0, requested)",
        "if secs and secs < 15:",
        'raise InvalidArgument("ring timeout may not be below 15 s")',
        "if not 0 <= s.short_window_cap <= 0.05:",
        'p.add_argument("--abandon-cap", type=float, default=0.03)',
        "abandon_cap=0.03,",
        "if assigned and (now - call.answer_at) <= timedelta(seconds=2.0):",
        "offer_deadline_ms: int = Field(default=2000, ge=100, le=2000)",
        "MAX_OFFER_DEADLINE_MS = 2000",
        'raise ValueError("expected one of US, CA, UK")',
    ],
)
def test_patterns_catch_the_copies_that_were_there(src: str) -> None:
    assert copies(src), src


@pytest.mark.parametrize(
    "src",
    [
        "await redis.xreadgroup(GROUP, consumer, {stream: start}, count=200, block=2000)",
        "heartbeat_timeout_s: float = Field(default=15.0, gt=0)",
        '"do_not_call": 0.03,',
        "sim_p_failed: float = 0.03",
        "answer_delay_mean_s: float = 15.0",
        "claim_ttl_s: int = 3600",
        "if default_region in ('US', 'CA') and digits.isdigit():",
        'jurisdiction: str = "US"',
        'f"cap {b.cap:.0%} over {b.window.seconds / 86400:g} d"',
        "ring_s = ring_time(requested)",
        "if len(digits) < 15:",
    ],
)
def test_patterns_leave_other_figures_alone(src: str) -> None:
    assert not copies(src), src
