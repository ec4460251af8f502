"""Drift checks: the node harness and hack/node/build.sh agree on the pinned containerd, the
node's Kubernetes binaries come from the pinned control-plane module, and the image cache key
leaves out exactly what the image build context leaves out."""

from __future__ import annotations

import re
from pathlib import Path

from xpupool.kube.testing_node import CONTAINERD_PIN, KUBE_BINARIES

HACK = Path(__file__).resolve().parents[2] / "hack"


def test_containerd_pin_matches_wrapper_module() -> None:
    text = (HACK / "node" / "containerd" / "go.mod").read_text()
    match = re.search(r"^\s*github\.com/containerd/containerd/v2 (v\S+)", text, flags=re.M)
    assert match, "containerd not required in hack/node/containerd/go.mod"
    assert f"containerd-{match.group(1)}" == CONTAINERD_PIN


def test_node_binaries_are_tools_of_the_pinned_kubernetes_module() -> None:
    text = (HACK / "kube" / "k8s" / "go.mod").read_text()
    tools = set(re.findall(r"^\s*k8s\.io/kubernetes/cmd/([\w-]+)$", text, flags=re.M))
    assert {"kubelet", "kube-controller-manager", "kube-proxy"} <= tools
    assert set(KUBE_BINARIES) - {"etcd"} <= tools


def test_image_context_excludes_match_dockerignore() -> None:
    """What the image cache key leaves out is exactly what the builder leaves out."""
    from xpupool.kube.testing_images import CONTEXT_EXCLUDES, REPO_ROOT, input_files

    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert set(CONTEXT_EXCLUDES) <= ignored
    files = input_files(("src",))
    assert "src/xpupool/kube/transport.py" in files
    assert not [f for f in files if f.startswith("src/xpupool/kube/testing")]
