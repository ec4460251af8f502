"""The chart's remote-vXPU wiring (rendered by the pinned helm): off by default; when on, agents get
their own-audience token and the remote settings, GPU nodes run xpu-remoted next to the agent, and
the only extra permission is TokenReview (least privilege: no Secrets, no pod writes)."""

from __future__ import annotations

from typing import Any

from deploy.helm import render  # tests/deploy: the pinned helm


def _agent(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    ds = next(d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"].endswith("-agent"))
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-agent"))
    return ds, role


def test_remote_is_off_by_default() -> None:
    ds, role = _agent(render())
    names = [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]]
    assert names == ["agent"]
    assert all(r["apiGroups"] != ["authentication.k8s.io"] for r in role["rules"])


def test_remote_wiring_when_enabled() -> None:
    ds, role = _agent(render("remote.enabled=true"))
    spec = ds["spec"]["template"]["spec"]
    agent, remoted = spec["containers"]
    assert remoted["name"] == "remoted" and "xpupool remote daemon --all-cards" in remoted["command"][2]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in agent["env"]}
    assert env["XPUPOOL_REMOTE_SLOTS"] == "16"
    assert env["XPUPOOL_REMOTE_AGENTS"] == "system:serviceaccount:xpupool-system:rel-xpupool-agent"
    assert env["XPUPOOL_REMOTE_SA_TOKEN"] == "/var/run/secrets/xpupool/remote/token"
    projected = next(v for v in spec["volumes"] if v["name"] == "remote-token")["projected"]["sources"][0]
    assert projected["serviceAccountToken"]["audience"] == "xpupool.io/remote"
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]} in role["rules"]
    verbs = {(tuple(r["apiGroups"]), tuple(r["resources"])): r["verbs"] for r in role["rules"]}
    assert (("",), ("secrets",)) not in verbs and verbs[("",), ("pods",)] == ["get", "list"]
    assert any(c["name"] == "install-remote-client" for c in spec["initContainers"])


def test_cpu_only_clusters_can_skip_the_server() -> None:
    ds, role = _agent(render("remote.enabled=true", "remote.server.enabled=false"))
    assert [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]] == ["agent"]
    assert all(r["apiGroups"] != ["authentication.k8s.io"] for r in role["rules"])
