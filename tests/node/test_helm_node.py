"""`helm install`, `helm upgrade`, `helm uninstall` of the chart on the real node.

One narrative test (the phases depend on each other):

1. install with the image built from deploy/image/Containerfile (imported into the node's
   containerd, ``pullPolicy: Never``): the agent DaemonSet runs on the node, its device plugin
   registers with the real kubelet (``xpupool.io/vxpu`` appears in the Node's allocatable), the
   shim lands on the host; the scheduler and the webhook run as pods; the apiserver reaches the
   webhook (a vXPU pod is mutated to ``schedulerName: xpupool``) and the xpupool scheduler binds
   it to the node, where it runs;
2. upgrade with a changed value (``agent.slotsPerCard``): the DaemonSet rolls and the kubelet
   advertises the new slot count;
3. uninstall: nothing is left but what docs/operator-guide.md names (``LEFTOVER_*``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from xpupool.kube.testing import fake_pod
from xpupool.kube.testing_images import BuiltImage
from xpupool.kube.testing_node import NodeCluster
from xpupool.kube.transport import NODES, PODS, AiohttpTransport, Resource

from .pods import wait_pod

pytestmark = pytest.mark.e2e_node

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "xpupool"
RELEASE = "xpupool"
NAMESPACE = "xpupool-system"
AGENT_PODS = "app.kubernetes.io/component=agent"
EMULATED_CARDS = 4  # the chart's default agent.emulated.cards
DAEMONSETS = Resource("apps", "v1", "daemonsets", True, "DaemonSet")
DEPLOYMENTS = Resource("apps", "v1", "deployments", True, "Deployment")
SECRETS = Resource("", "v1", "secrets", True, "Secret")
LEASES = Resource("coordination.k8s.io", "v1", "leases", True, "Lease")
NAMESPACED_KINDS = (
    SECRETS,
    LEASES,
    DAEMONSETS,
    DEPLOYMENTS,
    Resource("", "v1", "services", True, "Service"),
    Resource("", "v1", "serviceaccounts", True, "ServiceAccount"),
    Resource("", "v1", "configmaps", True, "ConfigMap"),
    Resource("rbac.authorization.k8s.io", "v1", "roles", True, "Role"),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", True, "RoleBinding"),
    Resource("policy", "v1", "poddisruptionbudgets", True, "PodDisruptionBudget"),
)
#: Made in every namespace by the controller-manager, not by the chart.
NOT_OURS = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}
WEBHOOKS = Resource("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", False, "")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", False, "")

#: What `helm uninstall` leaves, as docs/operator-guide.md ("Uninstall") lists it.
LEFTOVER_OBJECTS = {("Secret", f"{RELEASE}-webhook-tls"), ("Lease", f"{RELEASE}-scheduler")}
#: Helm never deletes what it installed from the chart's crds/ directory.
LEFTOVER_CRDS = {yaml.safe_load(f.read_text())["metadata"]["name"] for f in (CHART / "crds").glob("*.yaml")}
LEFTOVER_NODE_ANNOTATIONS = {"xpupool.io/inventory", "xpupool.io/utilization"}
#: Top-level directories under agent.hostRoot: the shim copy, per-card and per-container state.
LEFTOVER_HOST_DIRS = {"shim", "cards", "regions"}


def helm_binary() -> str:
    done = subprocess.run(
        ["bash", str(ROOT / "hack" / "helm" / "install.sh"), "--path"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail("helm is not built: run `make helm` (hack/helm/install.sh)")
    return done.stdout.strip().splitlines()[-1]


def node_values(node: NodeCluster, host_root: Path) -> list[str]:
    """The chart values every install on this test node needs: imported images (no registry), and
    the agent's host paths under the node's temp root (its kubelet root and containerd's CDI dir)."""
    return [
        f"--set=agent.hostRoot={host_root}",
        "--set=image.pullPolicy=Never",
        f"--set=agent.kubeletPodResourcesDir={node.pod_resources_socket.parent}",
        f"--set=agent.cdiSpecDir={node.cdi_spec_dir}",
    ]


def helm(node: NodeCluster, *args: str, timeout_s: float = 420.0) -> str:
    cmd = [helm_binary(), f"--kubeconfig={node.control_plane.kubeconfig}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout_s)
    if done.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
            f"--- kubelet:\n{node.log_tail('kubelet', 30)}"
        )
    return done.stdout


async def eventually(probe: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 120.0) -> Any:
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` and the last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(1.0)
    raise AssertionError(f"{what}: not true after {timeout_s:.0f} s (last: {last!r})")


async def names(transport: AiohttpTransport, resource: Resource, namespace: str | None = None) -> set[str]:
    listed = await transport.list(resource, namespace=namespace)
    return {item["metadata"]["name"] for item in listed.items}


async def allocatable_slots(transport: AiohttpTransport, node: NodeCluster) -> int:
    live = await transport.get(NODES, node.node_name)
    return int(live["status"].get("allocatable", {}).get("xpupool.io/vxpu", "0"))


async def test_helm_install_upgrade_uninstall_on_the_real_node(
    node_cluster: NodeCluster,
    node_transport: AiohttpTransport,
    node_namespace: str,
    xpupool_image: str,
    xpupool_image_archive: BuiltImage,
    busybox_image: str,
) -> None:
    host_root = node_cluster.host_root / "var-lib-xpupool"
    values = ["--set=agent.backends={emulated}", *node_values(node_cluster, host_root)]  # no GPU: emulated cards
    try:
        # ---- 1. install ----------------------------------------------------------------
        t0 = time.monotonic()
        helm(
            node_cluster,
            "install",
            RELEASE,
            str(CHART),
            "-n",
            NAMESPACE,
            "--create-namespace",
            *values,
            "--wait",
            "--timeout=5m",
        )
        install_s = time.monotonic() - t0
        # `helm --wait` does not wait for a 1-node DaemonSet (maxUnavailable 1): the agent's
        # readiness probe (10 s period) says when it serves.
        async def agent_ready() -> bool:
            ds = await node_transport.get(DAEMONSETS, f"{RELEASE}-agent", namespace=NAMESPACE)
            return bool(ds["status"].get("numberReady") == 1)

        await eventually(agent_ready, "the agent DaemonSet pod is ready on the node")
        agents = await node_transport.list(
            PODS, namespace=NAMESPACE, label_selector="app.kubernetes.io/component=agent"
        )
        (agent,) = agents.items
        assert agent["spec"]["nodeName"] == node_cluster.node_name
        assert agent["spec"]["containers"][0]["image"] == xpupool_image
        # The device plugin registered with the real kubelet: capacity = cards x slots.
        await eventually(
            lambda: _equals(allocatable_slots(node_transport, node_cluster), EMULATED_CARDS * 10),
            "kubelet advertises xpupool.io/vxpu = 4 cards x 10 slots",
        )
        node = await node_transport.get(NODES, node_cluster.node_name)
        inventory = json.loads(node["metadata"]["annotations"]["xpupool.io/inventory"])
        assert len(inventory["devices"]) == EMULATED_CARDS
        # The init container installed the image's shim on the host.
        installed = (host_root / "shim" / "libxpushim.so").read_bytes()
        from xpupool.kube.testing_oci import read_file

        assert installed == read_file(xpupool_image_archive.archive, "/opt/xpupool/lib/libxpushim.so")
        for deployment in ("scheduler", "webhook"):
            live = await node_transport.get(DEPLOYMENTS, f"{RELEASE}-{deployment}", namespace=NAMESPACE)
            assert live["status"].get("availableReplicas") == live["spec"]["replicas"], (deployment, live["status"])
        hook = await node_transport.get(WEBHOOKS, RELEASE)
        assert base64.b64decode(hook["webhooks"][0]["clientConfig"]["caBundle"]).startswith(b"-----BEGIN CERTIFICATE")

        # The apiserver calls the webhook (by endpoint) and the xpupool scheduler binds the pod.
        pod = fake_pod(node_namespace, "vxpu", scheduler="default-scheduler", vxpu=1, core_pct=30, memory_mib=2048)
        pod["spec"]["containers"][0].update(
            {"image": busybox_image, "imagePullPolicy": "Never", "command": ["/bin/sleep", "3600"]}
        )
        created = await node_transport.create(PODS, pod, namespace=node_namespace)
        assert created["spec"]["schedulerName"] == "xpupool", "the webhook did not mutate the pod"
        running = await wait_pod(node_transport, node_namespace, "vxpu", ("Running",), timeout_s=120)
        assert running["spec"]["nodeName"] == node_cluster.node_name
        await node_transport.delete(PODS, "vxpu", namespace=node_namespace, grace_period_s=0)

        # ---- 2. upgrade with a changed value -------------------------------------------
        old_agent_uid = agent["metadata"]["uid"]
        helm(
            node_cluster,
            "upgrade",
            RELEASE,
            str(CHART),
            "-n",
            NAMESPACE,
            *values,
            "--set=agent.slotsPerCard=5",
            "--wait",
            "--timeout=5m",
        )
        await eventually(
            lambda: _equals(allocatable_slots(node_transport, node_cluster), EMULATED_CARDS * 5),
            "after the upgrade the kubelet advertises 4 cards x 5 slots",
        )
        agents = await node_transport.list(
            PODS, namespace=NAMESPACE, label_selector="app.kubernetes.io/component=agent"
        )
        (agent,) = [p for p in agents.items if not p["metadata"].get("deletionTimestamp")]
        assert agent["metadata"]["uid"] != old_agent_uid
        env = {e["name"]: e.get("value") for e in agent["spec"]["containers"][0]["env"]}
        assert env["XPUPOOL_SLOTS_PER_CARD"] == "5"
        print(f"helm install on the real node: {install_s:.1f} s")
    finally:
        # ---- 3. uninstall ------------------------------------------------------------------
        helm(node_cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout=3m")

    # Pods go (graceful deletion on the real kubelet), then only the documented leftovers stay.
    async def no_pods() -> bool:
        return not (await node_transport.list(PODS, namespace=NAMESPACE)).items

    await eventually(no_pods, "release pods terminated")
    leftovers: set[tuple[str, str]] = set()
    for resource in NAMESPACED_KINDS:
        for name in await names(node_transport, resource, NAMESPACE):
            if (resource.kind, name) not in NOT_OURS:
                leftovers.add((resource.kind, name))
    assert leftovers == LEFTOVER_OBJECTS
    assert not {n for n in await names(node_transport, WEBHOOKS) if n.startswith(RELEASE)}
    assert LEFTOVER_CRDS and {n for n in await names(node_transport, CRDS) if n.endswith("xpupool.io")} >= LEFTOVER_CRDS
    node = await node_transport.get(NODES, node_cluster.node_name)
    ours = {k for k in node["metadata"].get("annotations", {}) if k.startswith("xpupool.io/")}
    assert ours <= LEFTOVER_NODE_ANNOTATIONS, ours
    top_dirs = {p.relative_to(host_root).parts[0] for p in host_root.rglob("*") if p.is_file()}
    assert "shim" in top_dirs and top_dirs <= LEFTOVER_HOST_DIRS, top_dirs
    # The kubelet keeps the resource at 0 for its 5-minute endpoint grace period (documented).
    await eventually(
        lambda: _equals(allocatable_slots(node_transport, node_cluster), 0),
        "after uninstall the kubelet advertises no xpupool.io/vxpu",
    )
    sockets = {p.name for p in node_cluster.device_plugin_dir.glob("xpupool*")}
    assert not sockets, f"the agent left its device-plugin socket: {sockets}"


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
