"""``outdial rules show``: the rules in force for a jurisdiction (and a US state) on a day, with their sources;
``outdial rules doc``: docs/compliance.md, generated from the rules table. No server needed: the rules table is
package data (``outdial/rules/data/*.yaml``)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from outdial.cli.base import command, fail, group, print_json
from outdial.cli.when import parse_day
from outdial.core.config import Settings
from outdial.rules.law import JURISDICTIONS
from outdial.rules.table import RulesDataError, RuleSet, load_tables, rules_in_force

#: Where each kind of rule is enforced and the test that proves it (docs/compliance.md). A kind the code
#: does not enforce yet says so: the row is the law outdial knows, not a claim that it checks it.
ENFORCEMENT: dict[str, tuple[str, str]] = {
    "calling_window": (
        "rules/windows.py `legal_window`, `check_window`; rules/place.py `place_of`, `check_place_window`: the "
        "windows of every applicable state (address, ZIP, area code) intersected in every candidate zone (the "
        "area code's, the address's, Arizona and Navajo time), one function for the campaign feeder "
        "(campaign/feeder.py) and the pacing gate (pacing/gate.py, deciding in rules/dialcheck.py `evaluate`, "
        "which records the states, zones, local times and hours it used)",
        "tests/unit/test_rules_windows.py; tests/unit/test_rules_place.py; tests/unit/test_rules_window_properties.py; "
        "tests/unit/test_dialcheck.py; "
        "tests/integration/test_decision_evidence.py; "
        "tests/unit/test_rules_table.py::test_effective_dates_switch_the_window",
    ),
    "holiday_ban": (
        "rules/windows.py `legal_window` (skips the state's public holidays)",
        "tests/unit/test_rules_table.py::test_a_holiday_ban_closes_the_state_holiday",
    ),
    "call_cap": (
        "rules/caps.py `default_max_calls_24h`, `check_attempts`, `person_attempt_times`; rules/place.py "
        "`legal_cap` (the smallest cap of the applicable states); core/persons.py (per person: every number of "
        "every lead linked by shared numbers, in every campaign; dials counted from PostgreSQL dial_attempts): "
        "campaign feeder and pacing gate (rules/dialcheck.py `evaluate`, which records the person's numbers, "
        "the count and each state's cap; proved by the integration test of person caps: the 4th call in 24 h "
        "to a Florida person with 3 numbers is refused by the feeder and the gate, Redis empty)",
        "tests/unit/test_rules_caps.py; tests/unit/test_rules_place.py; tests/unit/test_dialcheck.py; "
        "tests/integration/test_person_caps.py; "
        "tests/unit/test_rules_table.py::test_effective_dates_switch_the_cap",
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
        "rules/law.py `UK_ABANDON_QUIET`, rules/caps.py `check_uk_abandon_rule` (feeder; pacing gate via "
        "rules/dialcheck.py `evaluate`)",
        "tests/unit/test_rules_caps.py::test_uk_abandon_72h",
    ),
    "registry_freshness": (
        "rules/law.py `registry_max_age_days`, dnc/gate.py `registry_reason` (national lists: a stale or "
        "missing copy blocks every number), `max_age_days`, `line_type` (wireless lists: a number not on a "
        "current list has no known line type); a state list's freshness is not enforced yet",
        "tests/unit/test_rules_rows.py::test_the_registry_age_is_the_tables_and_a_setting_only_tightens_it; "
        "tests/unit/test_rules_consent.py::test_registry_freshness_comes_from_the_rules_table; "
        "tests/integration/test_dnc_consent.py::test_a_stale_or_missing_wireless_list_blocks_autodialled_calls",
    ),
    "message_content": (
        "rules/table.py `MessageContentRow` (each template carries every element, checked at load), "
        "rules/law.py `message_row`, `abandon_message`, `agentless_message`, `opt_out_confirmation` (the wording "
        "is the row's template; the code fills in the seller, the number and the key)",
        "tests/unit/test_rules_table.py::test_the_messages_carry_the_content_the_rules_require",
    ),
    "consent": (
        "rules/consent.py `evaluate` (each row binding the call type: method, purpose, line type, registry), "
        "dnc/gate.py `consent_reasons`, DNC CheckNumbers with the campaign's call type (feeder, pacing gate; "
        "preview dials are manual); rules/law.py `agentless_refusal` (an agentless telemarketing campaign does "
        "not start)",
        "tests/unit/test_rules_consent.py::test_the_decision_table; "
        "tests/integration/test_dnc_consent.py::test_the_dialers_gate_lets_a_preview_dial_reach_a_wireless_number; "
        "tests/unit/test_rules_law.py::test_agentless_runs_only_informational_until_consent_can_be_checked",
    ),
    "revocation_words": (
        "rules/consent.py `revocation_match`, DNC RecordInboundMessage / `outdial dnc inbound` (revokes every "
        "consent and lists the number internally, audited)",
        "tests/unit/test_rules_consent.py::test_revocation_words; "
        "tests/integration/test_dnc_consent.py::test_an_inbound_stop_revokes_at_once",
    ),
    "amd_false_positives": (
        "campaign/model.py `check_amd` (StartCampaign, ResumeCampaign, an update while active), rules/law.py "
        "`amd_estimate_refusal`, `with_amd_false_positives` (campaign/store.py `stats`: the reported rates; "
        "pacing/dialer.py `Dialer._window_counts`: the pacing budget), pacing/actions.py `carrier_event` "
        "(AMD off: every answer is a person's)",
        "tests/integration/test_campaign_amd.py; tests/unit/test_rules_amd.py",
    ),
    "retention": (
        "campaign/retention.py `retention_years` (refuses OUTDIAL_CAMPAIGN_RETENTION_YEARS below the minimum at start), "
        "the scheduled job `run`; the database's retention_prune keeps each jurisdiction's minimum "
        "(migrations/0118_retention.sql; the retention_policy table written by core/db.py `write_retention_policy`)",
        "tests/unit/test_campaign_retention.py; tests/integration/test_records_retention.py",
    ),
    "recording_consent": (
        "rules/law.py `ALL_PARTY_CONSENT_STATES`, `may_record` (pacing actions: no recording without a notice)",
        "tests/unit/test_rules_table.py::test_the_data_keeps_every_figure_the_code_held",
    ),
}


#: Per-row exceptions to :data:`ENFORCEMENT`: row id -> (code, test) replacing its kind's line for that row.
ROW_ENFORCEMENT: dict[str, tuple[str, str]] = {
    "us.consent.autodialled_telemarketing_wireless": (
        "rules/consent.py `evaluate`, dnc/gate.py `consent_reasons`, `line_type` (autodialled telemarketing, "
        "to a wireless number, or to one whose line type no current wireless list tells, needs prior express "
        "written consent)",
        "tests/unit/test_rules_consent.py::test_the_decision_table; "
        "tests/integration/test_dnc_consent.py::test_a_stale_or_missing_wireless_list_blocks_autodialled_calls",
    ),
    "us.consent.autodialled_informational_wireless": (
        "rules/consent.py `evaluate`, dnc/gate.py `consent_reasons` (prior express consent, written consent or "
        "an opt-in to that campaign)",
        "tests/unit/test_rules_consent.py::test_the_decision_table; "
        "tests/integration/test_dnc_consent.py::test_a_stale_or_missing_wireless_list_blocks_autodialled_calls",
    ),
    "us.consent.telemarketing_registered_number": (
        "rules/consent.py `evaluate`, `satisfies` (written consent, or an established business relationship "
        "for its row's months), dnc/gate.py `consent_reasons`; never past an opt-out",
        "tests/unit/test_rules_consent.py::test_an_ebr_never_opens_an_autodialled_wireless_call_and_lapses_after_its_months; "
        "tests/integration/test_dnc_consent.py::test_an_ebr_opens_the_registry_for_its_months_but_never_a_wireless_number",
    ),
}

#: The row-level proof: one test per row that sets up the row's own figures and checks that the enforcing
#: code applies them (``tests/unit/test_rules_rows.py``).
ROW_TEST = "tests/unit/test_rules_rows.py::test_the_row_is_enforced"
#: The kinds whose rows each get that test; for the others, only rows that :func:`row_test` names.
_ROW_TESTED_KINDS = frozenset(
    {
        "calling_window",
        "holiday_ban",
        "call_cap",
        "abandonment",
        "connect_limit",
        "min_ring",
        "recording_consent",
        "amd_false_positives",
    }
)


def row_test(row: Any, state: str) -> str | None:
    """The test node id that proves this row (of a file of ``state``, "" for a jurisdiction's) is enforced
    with its own figures, or None when only its kind's test does."""
    jurisdiction_row = not state
    if row.kind in _ROW_TESTED_KINDS:
        return f"{ROW_TEST}[{row.id}]"
    if row.kind == "abandon_quiet" and row.id.startswith("uk."):
        return f"{ROW_TEST}[{row.id}]"
    if row.kind in ("registry_freshness", "message_content") and jurisdiction_row:
        return f"{ROW_TEST}[{row.id}]"
    if row.kind == "consent" and jurisdiction_row and row.call_type == "prerecorded_telemarketing":
        return f"{ROW_TEST}[{row.id}]"
    return None


def enforcement(row: Any, state: str) -> tuple[str, str]:
    """(the code that enforces ``row``, the tests that prove it): its own test first, then its kind's."""
    code, test = ROW_ENFORCEMENT.get(row.id) or ENFORCEMENT[row.kind]
    own = row_test(row, state)
    return code, f"{own}; {test}" if own else test


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
    day = parse_day(args.at, "--at") if args.at else datetime.now(UTC).date()
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
        "and opt-out confirmation (docs/compliance-message.md). How the consent rows, the wireless list's",
        "freshness and revocation work together: docs/compliance-consent.md.",
        "",
        "Proof: every dial-time decision (lists, consent, RND, window, caps, the UK quiet period) is kept in the hash-chained",
        "audit with its inputs, among them the ids and effective dates of the rows below that decided it;",
        "`outdial why NUMBER --at T` answers rule by rule and `outdial evidence export` writes a self-verifying",
        "pack (docs/compliance-evidence.md).",
        "",
        "## Which states, which zones, who is one person",
        "",
        "The same function decides for the campaign feeder and for the pacing service's dial-time gate",
        "(`services/outdial/rules/place.py`, `place_of`):",
        "",
        "- **States.** A call is bound by the law of the lead's address state, of its ZIP's state, and of its",
        "  number's area-code state (Florida's act presumes a Florida area code is a Florida resident). All of",
        "  them apply: windows are intersected, the cap is the smallest.",
        "- **Zones.** The person may be in any zone of the number's area code (a split area code gives two), in",
        "  the ZIP's zone (without a ZIP: every zone of the state), or in a zone stored with the lead. A call must",
        "  be inside the window in every one of them (fail closed). Arizona keeps standard time all year but the",
        "  Navajo Nation observes daylight saving time: an Arizona address in Apache, Navajo or Coconino county,",
        "  or without a ZIP, gets both America/Phoenix and America/Denver.",
        "- **One person.** The state caps count calls to a person. A person is every lead linked to the dialled",
        "  number through shared numbers, in every campaign of the installation (the connected component of",
        "  leads and numbers, `services/outdial/core/persons.py`); the count is every dial in the rolling 24 h to",
        "  any of its numbers, each call once. The counts come from PostgreSQL's `dial_attempts` (written before",
        "  a call leaves), so Redis losing its data never loosens a cap; when PostgreSQL cannot answer, the gate",
        "  blocks. Linking through shared numbers can only over-count (a shared household line), never",
        "  under-count. The campaign's own `max_calls_per_number_24h` still counts per number.",
        "",
        "## Where each kind of rule is enforced",
        "",
        "Each row below names the code that enforces it and the tests that prove it: first the row's own test",
        "(`test_rules_rows.py::test_the_row_is_enforced[<row id>]`, which sets up the row's figures and checks",
        "that the enforcing code applies them), then its kind's. This table is the kind's line.",
        "`tests/unit/test_compliance_doc.py` checks that every code symbol and test named here exists.",
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
            "| rule | what it says | source | in force | uncertain | enforced by | proved by |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in t.rules:
            until = r.effective_until.isoformat() if r.effective_until else ""
            doubt = f"yes: {r.note}" if r.uncertain else ""
            code, test = enforcement(r, t.state)
            lines.append(
                f"| `{r.id}` | {r.value()} | {r.source} | {r.effective_from.isoformat()} – {until} | {doubt} "
                f"| {code} | {test} |"
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
