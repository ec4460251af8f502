"""The real test node: kubelet + containerd 2.x + runc on cgroup v1, one per test session.

These are the node harness's own checks (what every other node test relies on): the node
registers and is Ready with the pinned versions, a pod runs in the node's cgroup tree and its log
reaches the apiserver through the kubelet, pods reach the apiserver through the ``kubernetes``
Service (kube-proxy), and the controller-manager runs DaemonSets onto the node.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from xpupool.kube.testing import PINNED
from xpupool.kube.testing_node import CGROUP_PARENT, CONTAINERD_PIN, NodeCluster
from xpupool.kube.transport import NODES, PODS, AiohttpTransport, Resource

from .pods import busybox_pod, pod_log, wait_pod

pytestmark = pytest.mark.e2e_node

DAEMONSETS = Resource("apps", "v1", "daemonsets", True, "DaemonSet")


async def test_node_registers_ready_with_pinned_versions(
    node_cluster: NodeCluster, node_transport: AiohttpTransport
) -> None:
    node = await node_transport.get(NODES, node_cluster.node_name)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == PINNED.split("_")[0].removeprefix("k8s-")
    assert info["containerRuntimeVersion"] == "containerd://" + CONTAINERD_PIN.removeprefix("containerd-v")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True", node["status"]["conditions"]
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == node_cluster.node_ip


async def test_pod_runs_in_node_cgroup_and_log_reaches_apiserver(
    node_cluster: NodeCluster, node_transport: AiohttpTransport, node_namespace: str, busybox_image: str
) -> None:
    pod = busybox_pod("hello", node_cluster, busybox_image, "echo hello-from-node; cat /proc/self/cgroup")
    await node_transport.create(PODS, pod, namespace=node_namespace)
    done = await wait_pod(node_transport, node_namespace, "hello", ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    log = pod_log(node_cluster, node_namespace, "hello")
    assert "hello-from-node" in log
    uid = done["metadata"]["uid"]
    # cgroupfs driver, cgroup v1: the container is in the pod's cgroup under the node's root.
    pids_line = next(line for line in log.splitlines() if ":pids:" in line)
    assert pids_line.split(":", 2)[2].startswith(f"/{CGROUP_PARENT}/kubepods/"), pids_line
    assert uid in pids_line


async def test_pod_reaches_apiserver_through_kubernetes_service(
    node_cluster: NodeCluster, node_transport: AiohttpTransport, node_namespace: str, busybox_image: str
) -> None:
    """In-cluster clients use KUBERNETES_SERVICE_HOST (10.0.0.1): kube-proxy must route it."""
    script = (
        'echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; nc -w 5 "$KUBERNETES_SERVICE_HOST" 443 </dev/null'
    )
    await node_transport.create(PODS, busybox_pod("svc", node_cluster, busybox_image, script), namespace=node_namespace)
    done = await wait_pod(node_transport, node_namespace, "svc", ("Succeeded", "Failed"))
    log = pod_log(node_cluster, node_namespace, "svc")
    assert done["status"]["phase"] == "Succeeded", (done["status"], log)
    assert "10.0.0.1:443" in log


async def test_daemonset_pod_runs_on_node(
    node_cluster: NodeCluster, node_transport: AiohttpTransport, node_namespace: str, busybox_image: str
) -> None:
    labels = {"app": "ds-probe"}
    ds = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "probe"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "main",
                            "image": busybox_image,
                            "imagePullPolicy": "Never",
                            "command": ["/bin/sleep", "3600"],
                        }
                    ],
                },
            },
        },
    }
    await node_transport.create(DAEMONSETS, ds, namespace=node_namespace)
    deadline = time.monotonic() + 90
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = (await node_transport.get(DAEMONSETS, "probe", namespace=node_namespace)).get("status", {})
        if status.get("numberReady") == 1:
            break
        await asyncio.sleep(0.5)
    assert status.get("numberReady") == 1, json.dumps(status)
    pods = await node_transport.list(PODS, namespace=node_namespace, label_selector="app=ds-probe")
    assert [p["spec"]["nodeName"] for p in pods.items] == [node_cluster.node_name]
