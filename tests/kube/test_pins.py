"""The control-plane helpers and hack/kube/build.sh agree on the pinned versions (drift check)."""

from __future__ import annotations

import re
from pathlib import Path

from xpupool.kube.testing import PINNED

HACK = Path(__file__).resolve().parents[2] / "hack" / "kube"


def pinned(go_mod: Path, module: str) -> str:
    for line in go_mod.read_text().splitlines():
        if "=>" in line:
            continue
        match = re.search(rf"(?:^|\s){re.escape(module)}\s+(v[0-9][^\s]*)", line)
        if match:
            return match.group(1)
    raise AssertionError(f"{module} not required in {go_mod}")


def test_pinned_versions_match_wrapper_modules() -> None:
    k8s = pinned(HACK / "k8s" / "go.mod", "k8s.io/kubernetes")
    etcd = pinned(HACK / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3")
    assert f"k8s-{k8s}_etcd-{etcd}" == PINNED


def test_every_staging_module_is_replaced_with_the_matching_version() -> None:
    text = (HACK / "k8s" / "go.mod").read_text()
    k8s = pinned(HACK / "k8s" / "go.mod", "k8s.io/kubernetes")
    staging = "v0." + k8s.removeprefix("v1.")
    replaces = re.findall(r"^\s*(k8s\.io/[\w-]+) => (k8s\.io/[\w-]+) (v\S+)$", text, flags=re.M)
    assert len(replaces) >= 31
    for left, right, version in replaces:
        assert left == right and version == staging, (left, right, version)
