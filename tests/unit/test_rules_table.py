"""The rules table (rules/data/*.yaml): one test per row, the schema refusing a malformed file by file, row and
field, effective dates switching the rules that windows and caps apply, ``outdial rules show`` and the
generated docs/compliance.md."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pytest
import yaml

from outdial.cli.main import main
from outdial.cli.rules import ENFORCEMENT, compliance_doc
from outdial.rules import caps, law, windows
from outdial.rules.table import (
    CallingWindowRow,
    MessageContentRow,
    RulesDataError,
    Tables,
    load_tables,
    parse_tables,
    rules_in_force,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "services" / "outdial" / "rules" / "data"
ROWS = [(name, row) for (name, t) in load_tables().files.values() for row in t.rules]


def _texts() -> dict[str, str]:
    return {f"rules/data/{p.name}": p.read_text(encoding="utf-8") for p in sorted(DATA.glob("*.yaml"))}


@pytest.mark.parametrize(("file", "row"), ROWS, ids=[r.id for _, r in ROWS])
def test_each_row_is_well_formed(file: str, row: Any) -> None:
    assert row.source.strip(), f"{file}: {row.id} names no source"
    assert row.effective_until is None or row.effective_until > row.effective_from
    assert not row.uncertain or row.note.strip(), f"{row.id}: uncertain without a note"
    assert row.value()
    assert row.kind in ENFORCEMENT, f"{row.kind} has no line in docs/compliance.md's enforcement table"
    assert row.id.startswith(Path(file).stem + "."), f"{row.id} is not named after its file {file}"
    # The row is in force on its first day and (when it ends) not on its last.
    assert row.in_force(row.effective_from)
    if row.effective_until is not None:
        assert not row.in_force(row.effective_until)
    # Re-validating the row's own data gives the same row: nothing in the file is dropped or coerced away.
    assert type(row).model_validate(row.model_dump()) == row


def test_every_file_is_loaded_and_every_jurisdiction_has_its_core_rules() -> None:
    tables = load_tables()
    assert {n for n, _ in tables.files.values()} == {f"rules/data/{p.name}" for p in DATA.glob("*.yaml")}
    assert tables.jurisdictions() == law.JURISDICTIONS
    today = law.LOADED_ON
    for j in law.JURISDICTIONS:
        rules = rules_in_force(j, None, today)
        assert rules.windows(), f"{j} has no calling window in force"
        assert [r.kind for r in rules.rows].count("abandonment") == 1


def test_the_data_keeps_every_figure_the_code_held() -> None:
    # The windows and caps of the Python constants before the table, never relaxed.
    strictest = {"FL": (8, 20), "OK": (8, 20), "MD": (8, 20), "WA": (8, 20), "CT": (9, 20)}
    for st, (a, b) in strictest.items():
        for day in range(1, 8):
            assert windows.LAW_HOURS[("US", st)][day] == (time(a), time(b))
    assert windows.LAW_HOURS[("US", "TX")][7] == (time(12), time(21))
    for st in ("MS", "AL", "LA"):
        assert windows.LAW_HOURS[("US", st)][7] is None
    assert caps.STATE_MAX_CALLS_24H == {"FL": 3, "OK": 3, "MD": 3}
    assert law.ALL_PARTY_CONSENT_STATES == {
        "CA",
        "CT",
        "DE",
        "FL",
        "IL",
        "MD",
        "MA",
        "MI",
        "MT",
        "NV",
        "NH",
        "PA",
        "WA",
    }
    assert not law.may_record("fl", "") and law.may_record("FL", "This call is recorded.")
    assert law.may_record("NY", "")


def _bad(mutate: Any, name: str = "us.yaml") -> RulesDataError:
    texts = _texts()
    data = yaml.safe_load(texts[f"rules/data/{name}"])
    mutate(data)
    texts[f"rules/data/{name}"] = yaml.safe_dump(data)
    with pytest.raises(RulesDataError) as err:
        parse_tables(texts)
    return err.value


def test_a_malformed_file_is_refused_naming_file_row_and_field() -> None:
    def late_hour(d: dict[str, Any]) -> None:
        d["rules"][0]["hours"]["sat"] = "08:00-25:00"

    e = _bad(late_hour)
    assert (e.file, e.row, e.field) == ("rules/data/us.yaml", "1 (us.calling_window)", "hours")
    assert "hours.sat must be HH:MM-HH:MM or closed" in str(e)
    assert str(e).startswith("rules data rules/data/us.yaml, row 1 (us.calling_window), field hours:")

    def no_source(d: dict[str, Any]) -> None:
        d["rules"][1]["source"] = "  "

    e = _bad(no_source, "us-fl.yaml")
    assert (e.file, e.row, e.field) == ("rules/data/us-fl.yaml", "2 (us-fl.call_cap)", "source")

    def cap_as_percent(d: dict[str, Any]) -> None:
        d["rules"][1]["cap"] = 3

    e = _bad(cap_as_percent)
    assert (e.row, e.field) == ("2 (us.abandonment)", "cap")

    def backwards(d: dict[str, Any]) -> None:
        d["rules"][0]["effective_until"] = "1990-01-01"

    e = _bad(backwards)
    assert e.row == "1 (us.calling_window)" and "effective_until must be after effective_from" in str(e)

    def doubt_without_note(d: dict[str, Any]) -> None:
        d["rules"][0]["note"] = ""

    assert "needs a note" in str(_bad(doubt_without_note, "us-ms.yaml"))

    def unknown_field(d: dict[str, Any]) -> None:
        d["rules"][0]["hour"] = "x"

    assert _bad(unknown_field).field == "hour"

    def unknown_kind(d: dict[str, Any]) -> None:
        d["rules"][0]["kind"] = "curfew"

    assert _bad(unknown_kind).row == "1 (us.calling_window)"

    def weekly_cap(d: dict[str, Any]) -> None:
        d["rules"][1]["period_hours"] = 168

    assert _bad(weekly_cap, "us-fl.yaml").field == "period_hours"


def test_tables_that_contradict_each_other_are_refused() -> None:
    texts = _texts()
    data = yaml.safe_load(texts["rules/data/us-fl.yaml"])
    twin = dict(data["rules"][0], id="us-fl.calling_window_2")
    data["rules"].append(twin)
    texts["rules/data/us-fl.yaml"] = yaml.safe_dump(data)
    with pytest.raises(
        RulesDataError, match=r"us-fl.yaml, row 4 \(us-fl.calling_window_2\), field effective_from"
    ):
        parse_tables(texts)
    texts = _texts()
    texts["rules/data/us-zz.yaml"] = texts["rules/data/us-fl.yaml"]
    with pytest.raises(
        RulesDataError, match=r"us-zz.yaml, field jurisdiction: the file of US FL is us-fl.yaml"
    ):
        parse_tables(texts)
    texts = _texts()
    texts["rules/data/us.yaml"] = "- not a mapping"
    with pytest.raises(RulesDataError, match=r"us\.yaml: a rules file is a mapping"):
        parse_tables(texts)
    texts = _texts()
    del texts["rules/data/us.yaml"]
    with pytest.raises(RulesDataError, match="no file for the jurisdiction US"):
        parse_tables(texts)


def _with_fl_change(tables_texts: dict[str, str]) -> Tables:
    """Florida's window ends on 2027-01-01; from then a (hypothetical) 9:00-20:00 window and a cap of 2."""
    data = yaml.safe_load(tables_texts["rules/data/us-fl.yaml"])
    by_id = {r["id"]: r for r in data["rules"]}
    old_window, old_cap = by_id["us-fl.calling_window"], by_id["us-fl.call_cap"]
    old_window["effective_until"] = old_cap["effective_until"] = date(2027, 1, 1)
    new_window = dict(old_window, id="us-fl.calling_window_2027", effective_from=date(2027, 1, 1))
    new_window.pop("effective_until")
    new_window["hours"] = dict.fromkeys(old_window["hours"], "09:00-20:00")
    new_cap = dict(old_cap, id="us-fl.call_cap_2027", effective_from=date(2027, 1, 1), max_calls=2)
    new_cap.pop("effective_until")
    data["rules"] += [new_window, new_cap]
    tables_texts["rules/data/us-fl.yaml"] = yaml.safe_dump(data)
    return parse_tables(tables_texts)


def test_effective_dates_switch_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = _with_fl_change(_texts())
    before = tables.in_force("US", "FL", date(2026, 12, 31))
    after = tables.in_force("US", "fl", date(2027, 1, 1))
    assert [r.id for r in before.of(CallingWindowRow)] == ["us.calling_window", "us-fl.calling_window"]
    assert [r.id for r in after.of(CallingWindowRow)] == ["us.calling_window", "us-fl.calling_window_2027"]
    # windows.py reads the table for the day of the call.
    monkeypatch.setattr("outdial.rules.table.load_tables", lambda: tables)
    windows.legal_window.cache_clear()
    try:
        eight_thirty = {"America/New_York": time(8, 30)}
        for day, allowed in ((date(2026, 12, 31), True), (date(2027, 1, 1), False)):
            at = datetime.combine(day, eight_thirty["America/New_York"]).replace(
                tzinfo=windows.ZoneInfo("America/New_York")
            )
            d = windows.check_window(at, ("America/New_York",), windows.WindowSpec(), state="FL")
            assert d.allowed is allowed, day
        assert windows.legal_window("US", "FL", windows.WindowSpec(), date(2027, 1, 1)).start == time(9)
        assert windows.legal_window("US", "FL", windows.WindowSpec(), date(2026, 6, 1)).start == time(8)
    finally:
        windows.legal_window.cache_clear()


def test_effective_dates_switch_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = _with_fl_change(_texts())
    monkeypatch.setattr("outdial.rules.table.load_tables", lambda: tables)
    assert caps.default_max_calls_24h("US", "FL", date(2026, 12, 31)) == 3
    assert caps.default_max_calls_24h("US", "FL", date(2027, 1, 1)) == 2
    # Before Florida's act took effect, no cap.
    assert caps.default_max_calls_24h("US", "FL", date(2021, 6, 30)) is None
    assert caps.default_max_calls_24h("US", "NY", date(2027, 1, 1)) is None


def test_a_holiday_ban_closes_the_state_holiday() -> None:
    # Christmas 2026 is a Friday; 15:00 UTC is 9:00 in Louisiana and Texas (Central time).
    christmas = datetime(2026, 12, 25, 15, 0, tzinfo=UTC)
    chicago = ("America/Chicago",)
    la = windows.check_window(christmas, chicago, windows.WindowSpec(), state="LA")
    assert not la.allowed and la.reason == "public_holiday"
    assert la.next_open is not None and la.next_open.date() == date(2026, 12, 26)
    assert windows.check_window(christmas, chicago, windows.WindowSpec(), state="TX").allowed


#: How each element a message_content row requires is found in the text outdial plays. An element without
#: a check here fails the test: a new requirement in the data needs the code (and this check) to meet it.
_ELEMENTS: dict[str, Any] = {
    "seller_name": lambda text, seller, spoken: seller in text,
    "company_name": lambda text, seller, spoken: seller in text,
    "seller_name_first": lambda text, seller, spoken: text.startswith(f"This is {seller}."),
    "telemarketing_purpose": lambda text, seller, spoken: "telemarketing" in text,
    "callback_number": lambda text, seller, spoken: spoken in text,
    "opt_out_key": lambda text, seller, spoken: f"press {law.OPT_OUT_KEY}" in text,
    "opt_out_confirmed": lambda text, seller, spoken: "not be called again" in text,
}


def test_the_messages_carry_the_content_the_rules_require() -> None:
    seller, number, spoken = "Acme Solar", "+12125550100", "1 2 1 2 5 5 5 0 1 0 0"
    checked = 0
    for j in law.JURISDICTIONS:
        for row in rules_in_force(j, None, law.LOADED_ON).of(MessageContentRow):
            if row.message == "abandoned":
                text = law.abandon_message(seller, number, jurisdiction=j).text
            elif row.message == "prerecorded":
                text = law.agentless_message("Your order is ready.", seller, number, jurisdiction=j)
            else:
                text = law.opt_out_confirmation(j)
            for element in row.elements:
                assert element in _ELEMENTS, f"{row.id}: no check for the element {element!r}"
                assert _ELEMENTS[element](text, seller, spoken), (
                    f"{row.id}: {element!r} missing from {text!r}"
                )
                checked += 1
    assert checked >= 20


def test_rules_in_force_refuses_an_unknown_jurisdiction() -> None:
    with pytest.raises(ValueError, match="unknown jurisdiction 'FR'; known: US, CA, UK"):
        rules_in_force("FR", None, date(2026, 1, 1))
    # A state without rules of its own gets the jurisdiction's.
    ny = rules_in_force("US", "NY", date(2026, 1, 1))
    assert {r.id for r in ny.rows} == {r.id for r in load_tables().table("US").rules}


def test_rules_show_prints_the_rules_in_force_and_their_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["rules", "show", "--jurisdiction", "US", "--state", "FL", "--at", "2026-12-24", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (out["jurisdiction"], out["state"], out["at"], out["state_has_rules"]) == (
        "US",
        "FL",
        "2026-12-24",
        True,
    )
    by_id = {r["id"]: r for r in out["rules"]}
    assert by_id["us-fl.call_cap"]["source"] == "Fla. Stat. 501.059(8)(a)"
    assert by_id["us-fl.call_cap"]["values"] == {"max_calls": 3, "period_hours": 24, "counts": "person"}
    assert by_id["us-fl.calling_window"]["file"] == "rules/data/us-fl.yaml"
    assert by_id["us.abandonment"]["values"] == {"cap": 0.03, "window_days": 30.0}
    assert "us-tx.calling_window" not in by_id
    # Before Florida's act: only the federal rules.
    assert main(["rules", "show", "--state", "FL", "--at", "2021-06-30", "--json"]) == 0
    ids = {r["id"] for r in json.loads(capsys.readouterr().out)["rules"]}
    assert "us-fl.calling_window" not in ids and "us-fl.call_cap" not in ids and "us.calling_window" in ids

    assert main(["rules", "show", "--jurisdiction", "US", "--state", "FL", "--at", "2026-12-24"]) == 0
    text = capsys.readouterr().out
    assert "Fla. Stat. 501.059(8)(a)" in text and "47 CFR 64.1200(c)(1)" in text

    assert main(["rules", "show", "--jurisdiction", "FR"]) == 2
    assert "unknown jurisdiction 'FR'" in capsys.readouterr().err
    assert main(["rules", "show", "--at", "the 45th of never"]) == 2
    assert "--at 'the 45th of never' is not a date or time" in capsys.readouterr().err


def test_docs_compliance_is_current() -> None:
    doc = (ROOT / "docs" / "compliance.md").read_text(encoding="utf-8")
    assert doc == compliance_doc(), (
        "docs/compliance.md is stale: run `outdial rules doc > docs/compliance.md`"
    )
    for _, row in ROWS:
        assert f"`{row.id}`" in doc and row.source in doc
