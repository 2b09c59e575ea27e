"""The legal figures live only in the rules table, ``services/outdial/rules/data/*.yaml`` (issue 13: "grep finds
no legal constant outside it"). A literal copy anywhere else in the code (``rules/law.py``, ``windows.py`` and
``caps.py`` included: they read the table) fails this test, naming the file and line.

What is scanned: every Python file of ``services/outdial`` (generated ``v1/`` aside) and ``bench/``, and the SQL
migrations. Comments and docstrings are not scanned: they cite the law in prose ("the UK 72-hour rule") and
run nothing. String literals are scanned (a help text or a message that says "15 s" is a copy that goes stale).

The patterns look for the shapes copies took before they moved to the table (``72 * 3600``,
``timedelta(hours=72)``, ``30 * 86400``, the jurisdiction list spelt out, a ring minimum of 15, an abandonment
cap of 0.03 / 0.05 next to the word cap, a 2 s deadline, 08:00-21:00, a registry age of 31 or 28 days, the
message's wording …). They are heuristics: a figure that matches but is not the law reads it from ``rules/``
anyway, or is listed in :data:`ALLOWED` with the reason it is not a legal figure.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "services" / "outdial"

_J = r'"(US|CA|UK)"'
#: (name, pattern); a pattern's groups named j1..j3 must be three different jurisdictions to count.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "UK 72 h rule",
        re.compile(r"\b72\s*\*\s*(3600|60\s*\*\s*60)\b|timedelta\(\s*hours\s*=\s*72\b|\b259200\b|\b72\s*h\b"),
    ),
    (
        "30-day abandonment window",
        re.compile(r"\b30\s*\*\s*(86400|24\s*\*\s*3600)\b|\b2592000\b|timedelta\(\s*days\s*=\s*30\b"),
    ),
    ("abandonment window", re.compile(r"window\w*[\"']?\s*[:=]\s*[^,\n]*\b86400\b")),
    ("rolling 24 h", re.compile(r"timedelta\(\s*hours\s*=\s*24\b")),
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
            r"|below 15\b|at least 15\b|\(>= ?15\b"
        ),
    ),
    (
        "abandonment cap",
        re.compile(
            r"(?i)(abandon|\bcap\b|_cap\b|-cap\b)[^\n]*(?<![\w.])0\.0[35]\b|(?<![\w.])0\.0[35]\b[^\n]*\bcap\b"
            r"|\b[35] ?%"
        ),
    ),
    (
        "2 s connect limit",
        re.compile(
            r"timedelta\(\s*seconds\s*=\s*2(\.0)?\s*\)|(?i:deadline)\w*[^\n]*\b2000\b|\ble\s*=\s*2000\b"
            r"|min\(\s*2\.0\b|within 2 ?s\b"
        ),
    ),
    (
        "calling hours",
        re.compile(r"\btime\(\s*(8|9|20|21)\s*[,)]|[\"'](0?8|0?9|20|21):[03]0\b|\b0?8:00\s*[-–]\s*21:00\b"),
    ),
    (
        "registry age",
        re.compile(
            r"max_age\w*\s*(:\s*[\w |]+)?=\s*(31|28)\b|timedelta\(\s*days\s*=\s*(31|28)\b|\b(31|28) days old"
        ),
    ),
    (
        "established business relationship period",
        re.compile(r"months\s*=\s*(18|3)\b|timedelta\(\s*days\s*=\s*(548|547|540|90|91)\b|\b18 months\b"),
    ),
    ("retention period", re.compile(r"years\s*=\s*5\b|\b5\s*\*\s*365\b|\b365\s*\*\s*5\b|\b1826\b")),
    (
        "message wording",
        re.compile(
            r"(?i)telemarketing call|not be called again|this call was from|this is \{|press \{|, or call \{"
        ),
    ),
)

#: (file, rule, a piece of the line): a match that is not a legal figure, with the reason.
ALLOWED: tuple[tuple[str, str, str, str], ...] = (
    (
        "rules/law.py",
        "abandonment cap",
        "SHORT_WINDOW_CAP = 0.05",
        "outdial's own short-window guard (no 60-minute window above it), policy and not law: no regulator "
        "sets it, and a campaign may only lower it",
    ),
    (
        "rules/caps.py",
        "rolling 24 h",
        "DAY = timedelta(hours=24)",
        "the one period check_attempts counts over: CallCapRow admits only period_hours 24, so a row with "
        "another period is refused when the table is loaded, not enforced over the wrong period",
    ),
    (
        "rules/table.py",
        "message wording",
        '"opt_out_confirmed": ("not be called again",)',
        "the schema's check that a confirmation template carries the element; the wording played is the row's",
    ),
    (
        "campaign/store.py",
        "rolling 24 h",
        "timedelta(hours=24)",
        "the report's fixed 24 h figure named by the wire field abandon_rate_24h; the rate over the law's "
        "window is abandon_rate_window, from the campaign's abandon_window_s",
    ),
    (
        "campaign/store.py",
        "30-day abandonment window",
        "timedelta(days=30)",
        "the report's fixed 30 d figure named by the wire field abandon_rate_30d (as above)",
    ),
)


def _scanned() -> list[Path]:
    out = [
        p for p in sorted(PACKAGE.rglob("*.py")) if not p.relative_to(PACKAGE).as_posix().startswith("v1/")
    ]
    out += sorted((ROOT / "bench").glob("*.py"))
    out += sorted((PACKAGE / "migrations").glob("*.sql"))
    return out


def code_only(text: str, sql: bool = False) -> str:
    """``text`` with its comments and docstrings blanked (line numbers kept)."""
    lines = text.splitlines()
    if sql:
        return "\n".join(re.sub(r"--.*$", "", line) for line in lines)
    blank: list[tuple[int, int, int, int]] = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            blank.append((*tok.start, *tok.end))
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            c = body[0].value
            if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.end_lineno is not None:
                blank.append((c.lineno, c.col_offset, c.end_lineno, c.end_col_offset or 0))
    for start_line, start_col, end_line, end_col in blank:
        for n in range(start_line, end_line + 1):
            line = lines[n - 1]
            a = start_col if n == start_line else 0
            b = end_col if n == end_line else len(line)
            lines[n - 1] = line[:a] + " " * (b - a) + line[b:]
    return "\n".join(lines)


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


def _allowed(rel: str, name: str, src: str) -> bool:
    return any(rel == f and name == n and piece in src for f, n, piece, _ in ALLOWED)


def test_no_legal_figure_is_written_outside_the_rules_table() -> None:
    files = _scanned()
    assert len(files) > 60, "the scan found too few files: is ROOT right?"
    found = []
    used: set[tuple[str, str, str]] = set()
    for p in files:
        rel = (
            p.relative_to(PACKAGE).as_posix() if p.is_relative_to(PACKAGE) else p.relative_to(ROOT).as_posix()
        )
        for line, name, src in copies(code_only(p.read_text(encoding="utf-8"), sql=p.suffix == ".sql")):
            if _allowed(rel, name, src):
                used.update(
                    (f, n, piece) for f, n, piece, _ in ALLOWED if (f, n) == (rel, name) and piece in src
                )
                continue
            found.append(f"{rel}:{line}: {name}: {src}")
    assert not found, (
        "legal figures written outside rules/data/*.yaml (read them from the table):\n" + "\n".join(found)
    )
    stale = [(f, n, piece) for f, n, piece, _ in ALLOWED if (f, n, piece) not in used]
    assert not stale, f"allow-list entries that no longer match anything (remove them): {stale}"


def test_every_allowance_gives_its_reason() -> None:
    for f, name, piece, reason in ALLOWED:
        assert (PACKAGE / f).exists(), f
        assert name in dict(PATTERNS), name
        assert piece and len(reason.split()) >= 8, (f, name)


def test_comments_and_docstrings_are_not_scanned_but_strings_are() -> None:
    src = (
        '"""The UK 72 h rule: timedelta(hours=72)."""\n'
        "x = 1  # no call within 72 h\n"
        "def f():\n"
        '    """Ring at least 15 s: max(15, r)."""\n'
        '    return "ring at least 15 s"\n'
    )
    code = code_only(src)
    assert [name for _, name, _ in copies(code)] == ["15 s ring minimum"]
    assert len(code.splitlines()) == len(src.splitlines())
    assert not copies(code_only("-- no call within 72 h, timedelta(hours=72)\nSELECT 1;", sql=True))


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
        'p.add_argument("--ring-timeout", type=float, help="seconds (at least 15)")',
        'p.add_argument("--ring-timeout", type=int, help="seconds (>= 15)")',
        "if not 0 <= s.short_window_cap <= 0.05:",
        'p.add_argument("--abandon-cap", type=float, default=0.03)',
        "abandon_cap=0.03,",
        'f"the US cap is 3 % of live answers"',
        "if assigned and (now - call.answer_at) <= timedelta(seconds=2.0):",
        "offer_deadline_ms: int = Field(default=2000, ge=100, le=2000)",
        "MAX_OFFER_DEADLINE_MS = 2000",
        'raise ValueError("expected one of US, CA, UK")',
        "start: time = time(8)",
        "end = time(21, 0)",
        '"start_local": cw.start_local or "08:00",',
        'start, _, end = (args.window or "08:00-21:00").partition("-")',
        "registry_max_age_days: int = 31",
        "if age > timedelta(days=31):",
        "since = now - timedelta(hours=24)",
        "ebr_purchase = relativedelta(months=18)",
        "inquiry = timedelta(days=90)",
        "keep = timedelta(days=5 * 365)",
        'text = f"This is {seller} with a telemarketing call. To not be called again, press {key}"',
        'return "Thank you. You will not be called again."',
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
        "downloaded_at=_ts(datetime.now(UTC) - timedelta(days=1)),",
        "hol = holidays.country_holidays(country, years=year)",
        '"delay_s": 4 * 3600,',
    ],
)
def test_patterns_leave_other_figures_alone(src: str) -> None:
    assert not copies(src), src
