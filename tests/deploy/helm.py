"""Locating the pinned helm binary and rendering the chart (shared by the deploy tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "xpupool"
INSTALL = ROOT / "hack" / "helm" / "install.sh"


def helm_binary() -> str:
    """The helm that ``hack/helm/install.sh`` built. Missing helm FAILS (never skips): the chart
    must be linted in CI; run ``bash hack/helm/install.sh`` (``make test`` does) to build it."""
    done = subprocess.run(["bash", str(INSTALL), "--path"], capture_output=True, text=True, check=False)
    path = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not path:
        pytest.fail(
            f"helm is not installed at {path or '?'}: run `bash hack/helm/install.sh` (builds the pinned "
            "helm from the Go module proxy into the xpupool cache)"
        )
    return path


def helm(*args: str) -> str:
    done = subprocess.run([helm_binary(), *args], capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def render(*set_args: str, namespace: str = "xpupool-system", release: str = "rel") -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for s in set_args:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args)) if d]
