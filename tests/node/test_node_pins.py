"""The node harness and hack/node/build.sh agree on the pinned containerd (drift check), and the
node's Kubernetes binaries come from the same pinned module as the control plane."""

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
