"""``outdial rules show``: the rules in force for a jurisdiction (and a US state) on a day, with their sources;
``outdial rules doc``: docs/compliance.md, generated from the rules table. No server needed: the rules table is
package data (``outdial/rules/data/*.yaml``)."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime
from typing import Any

from outdial.cli.base import command, fail, group, print_json
from outdial.core.config import Settings
from outdial.rules.law import JURISDICTIONS
from outdial.rules.table import RulesDataError, RuleSet, load_tables, rules_in_force

#: Where each kind of rule is enforced and the test that proves it (docs/compliance.md). A kind the code
#: does not enforce yet says so: the row is the law outdial knows, not a claim that it checks it.
ENFORCEMENT: dict[str, tuple[str, str]] = {
    "calling_window": (
        "rules/windows.py `legal_window`, `check_window` (campaign feeder, pacing gate)",
        "tests/unit/test_rules_windows.py; tests/unit/test_rules_table.py::test_effective_dates_switch_the_window",
    ),
    "holiday_ban": (
        "rules/windows.py `legal_window` (skips the state's public holidays)",
        "tests/unit/test_rules_table.py::test_a_holiday_ban_closes_the_state_holiday",
    ),
    "call_cap": (
        "rules/caps.py `default_max_calls_24h`, `check_attempts` (campaign feeder, pacing gate; they count per number "
        "today, per person is issue 13, point 2)",
        "tests/unit/test_rules_caps.py; tests/unit/test_rules_table.py::test_effective_dates_switch_the_cap",
    ),
    "abandonment": (
        "rules/law.py `ABANDON_POLICIES`, `abandon_policy` (campaign validation, pacing budget)",
        "tests/unit/test_rules_law.py::test_the_figures_keep_their_values",
    ),
    "connect_limit": (
        "rules/law.py `CONNECT_LIMIT_S` (pacing dialer offer deadline, agent settings)",
        "tests/unit/test_rules_law.py::test_the_figures_keep_their_values",
    ),
    "min_ring": (
        "rules/law.py `MIN_RING_S`, `ring_time` (campaign validation, pacing, telephony)",
        "tests/unit/test_rules_law.py::test_ring_time_is_never_below_the_minimum",
    ),
    "abandon_quiet": (
        "rules/law.py `UK_ABANDON_QUIET`, rules/caps.py `check_uk_abandon_rule` (feeder, pacing gate)",
        "tests/unit/test_rules_caps.py::test_uk_abandon_72h",
    ),
    "registry_freshness": ("not enforced yet (issue 13, point 4)", "none yet"),
    "message_content": (
        "rules/law.py `abandon_message`, `agentless_message` (the text is written in code; a test checks that it "
        "carries every element the row requires)",
        "tests/unit/test_rules_table.py::test_the_messages_carry_the_content_the_rules_require",
    ),
    "consent": (
        "rules/law.py `agentless_refusal` (fails closed: no consent check yet; issue 13, point 3)",
        "tests/unit/test_rules_law.py::test_agentless_runs_only_informational_until_consent_can_be_checked",
    ),
    "recording_consent": (
        "rules/law.py `ALL_PARTY_CONSENT_STATES`, `may_record` (pacing actions: no recording without a notice)",
        "tests/unit/test_rules_table.py::test_the_data_keeps_every_figure_the_code_held",
    ),
}


def register(sub: Any) -> None:
    rules = group(sub, "rules", "the law as versioned data (rules/data/*.yaml)")
    p = command(rules, "show", _show, "print the rules in force for a jurisdiction and state on a day")
    p.add_argument("--jurisdiction", default="US", help=f"one of {', '.join(JURISDICTIONS)} (default US)")
    p.add_argument(
        "--state", default="", help="a US state's two letters (its rules are added to the federal)"
    )
    p.add_argument("--at", default="", help="the day, YYYY-MM-DD (default: today, UTC)")
    command(rules, "doc", _doc, "print docs/compliance.md generated from the rules table")


def rule_dict(row: Any, file: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "rule": row.value(),
        "source": row.source,
        "effective_from": row.effective_from.isoformat(),
        "effective_until": row.effective_until.isoformat() if row.effective_until else None,
        "uncertain": row.uncertain,
        "note": row.note,
        "file": file,
        "values": row.model_dump(
            mode="json",
            exclude={"id", "kind", "source", "effective_from", "effective_until", "uncertain", "note"},
        ),
    }


def _files(rules: RuleSet) -> dict[str, str]:
    """Row id -> the file it came from."""
    tables = load_tables()
    out: dict[str, str] = {}
    for st in ("", rules.state):
        if (rules.jurisdiction, st) in tables.files:
            name, t = tables.files[(rules.jurisdiction, st)]
            out.update((r.id, name) for r in t.rules)
    return out


async def _show(args: argparse.Namespace, settings: Settings) -> int:
    try:
        day = date.fromisoformat(args.at) if args.at else datetime.now(UTC).date()
    except ValueError:
        return fail(f"--at must be a day YYYY-MM-DD, got {args.at!r}", 2)
    state = args.state.strip().upper()
    if state and len(state) != 2:
        return fail(f"--state must be a state's two letters, got {args.state!r}", 2)
    try:
        rules = rules_in_force(args.jurisdiction, state, day)
    except RulesDataError as exc:
        return fail(str(exc), 1)
    except ValueError as exc:
        return fail(f"--jurisdiction: {exc}", 2)
    files = _files(rules)
    has_own = (rules.jurisdiction, state) in load_tables().files
    if args.json:
        print_json(
            {
                "jurisdiction": rules.jurisdiction,
                "state": state,
                "at": day.isoformat(),
                "state_has_rules": has_own if state else None,
                "rules": [rule_dict(r, files[r.id]) for r in rules.rows],
            }
        )
        return 0
    # Plain lines, not a table: sources are long, and a table would fold them in a narrow terminal.
    head = f"rules in force: {rules.jurisdiction}{' ' + state if state else ''} on {day.isoformat()}"
    if state and not has_own:
        head += f" ({state} has no rules of its own: the {rules.jurisdiction} rules apply)"
    out = [head]
    for r in rules.rows:
        until = f" until {r.effective_until.isoformat()}" if r.effective_until else ""
        out += [
            "",
            f"{r.id}: {r.value()}",
            f"    source: {r.source}",
            f"    in force from {r.effective_from.isoformat()}{until} ({files[r.id]})",
        ]
        if r.uncertain:
            out.append(f"    UNCERTAIN: {r.note}")
        elif r.note:
            out.append(f"    note: {r.note}")
    print("\n".join(out))
    return 0


def compliance_doc() -> str:
    """docs/compliance.md: every rule row, its source, the code that enforces it and the test that proves it."""
    tables = load_tables()
    lines = [
        "# Compliance: each rule, its source, the code that enforces it, the test that proves it",
        "",
        "<!-- Generated from services/outdial/rules/data/*.yaml by `outdial rules doc > docs/compliance.md`;",
        "     tests/unit/test_rules_table.py fails when this file is not current. Do not edit by hand. -->",
        "",
        "The law outdial obeys lives in one place: the rules table, `services/outdial/rules/data/*.yaml`, one",
        "file per jurisdiction (`us.yaml`, `ca.yaml`, `uk.yaml`) and per US state whose law is stricter than the",
        "federal (`us-fl.yaml` …). Each row carries its source (statute or regulation and section) and the days it",
        "is in force (`effective_from`, optionally `effective_until`, exclusive). The schema",
        "(`services/outdial/rules/table.py`) is checked when the table is first read, at the start of every",
        "process, and in CI (`tests/unit/test_rules_table.py`, one test per row). A state's rows add to its",
        "jurisdiction's: where both set a figure, the stricter applies.",
        "",
        "A row marked **uncertain** has a source that is not yet verified. It is enforced like the others:",
        "an unverified rule is never silently relaxed. `outdial rules show --jurisdiction US --state FL --at",
        "2026-12-24` prints the rules in force on a day.",
        "",
        "Changing an hour or adding a state is a data change: edit or add a file, run",
        "`outdial rules doc > docs/compliance.md`, and the per-row tests cover the new row.",
        "",
        "Rules enforced outside this table, with their sources, code and tests: the Reassigned Numbers",
        "Database safe harbor (docs/compliance-rnd.md) and the abandonment message's identity, callback number",
        "and opt-out confirmation (docs/compliance-message.md).",
        "",
        "## Where each kind of rule is enforced",
        "",
        "Each row's last column names its kind; this table says where each kind is enforced and which test",
        "proves it.",
        "",
        "| kind | enforced by | proved by |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {code} | {test} |" for k, (code, test) in ENFORCEMENT.items()]
    for key in sorted(tables.files, key=lambda k: (tables.jurisdictions().index(k[0]), k[1])):
        name, t = tables.files[key]
        lines += [
            "",
            f"## {t.title} (`{name}`)",
            "",
            "| rule | what it says | source | in force | uncertain | enforced and proved as |",
            "|---|---|---|---|---|---|",
        ]
        for r in t.rules:
            until = r.effective_until.isoformat() if r.effective_until else ""
            doubt = f"yes: {r.note}" if r.uncertain else ""
            lines.append(
                f"| `{r.id}` | {r.value()} | {r.source} | {r.effective_from.isoformat()} – {until} | {doubt} "
                f"| {r.kind} |"
            )
    lines += [
        "",
        "Every row is also checked by `tests/unit/test_rules_table.py::test_each_row_is_well_formed[<id>]`",
        "(its fields valid, its effective window consistent, its source named).",
        "",
    ]
    return "\n".join(lines)


async def _doc(args: argparse.Namespace, settings: Settings) -> int:
    print(compliance_doc(), end="")
    return 0
