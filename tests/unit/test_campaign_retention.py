"""Retention from the rules table (kind ``retention``): the floor per jurisdiction, a setting refused below it
naming the setting, the batched job; and the settings-version diff (core/versions.py)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

from outdial.campaign import retention
from outdial.core.config import StartupRefused
from outdial.core.versions import changes_from_json, diff
from outdial.rules.table import RetentionRow, RulesDataError, load_tables, parse_tables, rules_in_force

DATA = Path(__file__).resolve().parents[2] / "services" / "outdial" / "rules" / "data"
DAY = date(2026, 12, 1)


def _texts() -> dict[str, str]:
    return {f"rules/data/{p.name}": p.read_text(encoding="utf-8") for p in sorted(DATA.glob("*.yaml"))}


def test_us_call_records_are_kept_five_years_by_default() -> None:
    assert rules_in_force("US", "FL", DAY).retention_years() == 5
    (row,) = rules_in_force("US", None, DAY).of(RetentionRow)
    assert "64.1200(d)(6)" in row.source and "1658" in row.source
    floors = retention.legal_floors(load_tables(), DAY)
    assert floors["US"] == 5 and set(floors) == set(load_tables().jurisdictions())
    # Unset: each jurisdiction keeps its own minimum; the job asks for the smallest, the database keeps each.
    assert retention.retention_years(None, load_tables(), DAY) is None
    assert retention.years_asked(None, load_tables(), DAY) == min(floors.values())


def test_a_setting_below_the_minimum_is_refused_naming_it() -> None:
    top = max(retention.legal_floors(load_tables(), DAY).values())
    assert retention.retention_years(top + 2, load_tables(), DAY) == top + 2
    assert retention.years_asked(top + 2, load_tables(), DAY) == top + 2
    with pytest.raises(
        StartupRefused, match=r"OUTDIAL_CAMPAIGN_RETENTION_YEARS=4 is below the legal minimum"
    ):
        retention.retention_years(4, load_tables(), DAY)


def test_a_table_without_retention_refuses_to_start_and_bad_rows_are_named() -> None:
    texts = _texts()
    for name, text in list(texts.items()):
        data = yaml.safe_load(text)
        data["rules"] = [r for r in data["rules"] if r["kind"] != "retention"]
        texts[name] = yaml.safe_dump(data)
    with pytest.raises(StartupRefused, match="no call-record retention"):
        retention.legal_floors(parse_tables(texts), DAY)
    texts = _texts()
    data = yaml.safe_load(texts["rules/data/us.yaml"])
    next(r for r in data["rules"] if r["kind"] == "retention")["years"] = 0
    texts["rules/data/us.yaml"] = yaml.safe_dump(data)
    with pytest.raises(RulesDataError, match=r"us.retention.call_records.*years"):
        parse_tables(texts)


async def test_the_job_runs_batches_until_one_is_short() -> None:
    calls: list[tuple[int, bool, str, int]] = []
    sizes = iter([10, 10, 3])

    async def prune(
        years: int, dry: bool, actor: str, limit: int
    ) -> tuple[int, dict[str, int], dict[str, int]]:
        calls.append((years, dry, actor, limit))
        n = next(sizes)
        return len(calls), {"call_records": n, "dial_attempts": 0}, {"US": 5}

    out = await retention.run(prune, 5, dry_run=False, actor="compliance:c", batch=10, max_batches=10)
    assert out.run_ids == [1, 2, 3] and out.removed == {"call_records": 23, "dial_attempts": 0}
    assert calls[0] == (5, False, "compliance:c", 10)
    calls.clear()
    sizes = iter([10, 10])
    dry = await retention.run(prune, 5, dry_run=True, actor="compliance:c", batch=10, max_batches=10)
    assert dry.run_ids == [1] and calls == [(5, True, "compliance:c", 10)]


def test_settings_diff_names_each_changed_path() -> None:
    before = {"name": "A", "settings": {"cap": 3, "window": {"start": "08:00"}, "gone": 1}}
    after = {"name": "A", "settings": {"cap": 4, "window": {"start": "09:00"}, "new": [1]}}
    got = [(c.path, c.before_json, c.after_json) for c in diff(before, after)]
    assert got == [
        ("settings.cap", "3", "4"),
        ("settings.gone", "1", ""),
        ("settings.new", "", "[1]"),
        ("settings.window.start", '"08:00"', '"09:00"'),
    ]
    assert diff(after, after) == []
    assert [c.path for c in diff(None, {"a": 1})] == ["a"]
    stored = [c.as_dict() for c in diff(before, after)]
    assert changes_from_json(stored) == diff(before, after)
