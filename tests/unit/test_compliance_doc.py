"""docs/compliance.md names, for every rule row, the code that enforces it and the tests that prove it
(``outdial.cli.rules``: ``ENFORCEMENT`` per kind, ``ROW_ENFORCEMENT`` per row, ``row_test``). A name that does
not exist is a false claim: every file, code symbol and test node id named there must exist."""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from outdial.cli.rules import ENFORCEMENT, ROW_ENFORCEMENT, compliance_doc, enforcement
from outdial.rules.table import load_tables

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "services" / "outdial"
_TOKEN = re.compile(r"([\w/]+\.py)|`([\w.]+)`")
_NODE = re.compile(r"^(tests/[\w/]+\.py)(?:::(\w+)(?:\[([^\]]+)\])?)?$")


def _claims() -> list[tuple[str, str, str]]:
    """(where, code, tests) for every kind, every per-row exception and every row."""
    out = [(f"kind {k}", code, test) for k, (code, test) in ENFORCEMENT.items()]
    out += [(f"row {rid}", code, test) for rid, (code, test) in ROW_ENFORCEMENT.items()]
    for _, t in load_tables().files.values():
        out += [(f"row {r.id}", *enforcement(r, t.state)) for r in t.rules]
    return out


@cache
def _defined(path: Path) -> frozenset[str]:
    """Module-level names of a Python file, and Class.method for its classes' members."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names.update(
                    f"{node.name}.{n.name}"
                    for n in node.body
                    if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                )
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)


def code_problems(code: str) -> list[str]:
    """What in a "file `symbol`, `symbol` …" text does not exist under services/outdial."""
    problems: list[str] = []
    current: Path | None = None
    for m in _TOKEN.finditer(code):
        if m[1]:
            current = PACKAGE / m[1]
            if not current.is_file():
                problems.append(f"no file services/outdial/{m[1]}")
                current = None
        elif current is not None and m[2] not in _defined(current):
            problems.append(f"{current.relative_to(PACKAGE)} defines no {m[2]}")
        elif current is None:
            problems.append(f"`{m[2]}` named before any file")
    return problems


def _param_ids(fn: Any) -> list[str]:
    ids: list[str] = []
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize":
            ids += [str(i) for i in mark.kwargs.get("ids") or []]
            if not mark.kwargs.get("ids"):
                ids += [str(v) for v in mark.args[1]]
    return ids


def node_problems(tests: str) -> list[str]:
    problems: list[str] = []
    for node in (t.strip() for t in tests.split(";")):
        m = _NODE.match(node)
        if m is None:
            problems.append(f"{node!r} is not a test file or node id")
            continue
        path = ROOT / m[1]
        if not path.is_file():
            problems.append(f"no test file {m[1]}")
            continue
        if m[2] is None:
            continue
        if m[2] not in _defined(path):
            problems.append(f"{m[1]} has no {m[2]}")
            continue
        if m[3] is not None:
            module = importlib.import_module(m[1].removesuffix(".py").replace("/", "."))
            if m[3] not in _param_ids(getattr(module, m[2])):
                problems.append(f"{m[1]}::{m[2]} has no case [{m[3]}]")
    return problems


@pytest.mark.parametrize(("where", "code", "tests"), _claims(), ids=[w for w, _, _ in _claims()])
def test_every_named_code_symbol_and_test_exists(where: str, code: str, tests: str) -> None:
    assert "`" in code or "not enforced" in code, f"{where}: names no code"
    assert not code_problems(code), f"{where}: {code_problems(code)}"
    assert not node_problems(tests), f"{where}: {node_problems(tests)}"


def test_every_row_of_the_doc_names_its_source_code_and_tests() -> None:
    doc = compliance_doc()
    for _, t in load_tables().files.values():
        for r in t.rules:
            line = next(x for x in doc.splitlines() if x.startswith(f"| `{r.id}` |"))
            code, tests = enforcement(r, t.state)
            assert r.source in line and code in line and tests in line, r.id


def test_the_checks_catch_what_does_not_exist() -> None:
    assert code_problems("rules/law.py `abandon_policy`, rules/caps.py `check_attempts`") == []
    assert code_problems("rules/law.py `no_such_thing`") == ["rules/law.py defines no no_such_thing"]
    assert code_problems("rules/nowhere.py `x`")[0] == "no file services/outdial/rules/nowhere.py"
    assert node_problems("tests/unit/test_rules_rows.py::test_the_row_is_enforced[us.min_ring]") == []
    assert node_problems("tests/unit/test_rules_rows.py::test_the_row_is_enforced[us.nothing]")
    assert node_problems("tests/unit/test_rules_law.py::test_not_there")
    assert node_problems("tests/unit/nowhere.py")
