"""Small helpers for tests that run pods on the real node: build, wait, read logs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from xpupool.kube.testing_node import NodeCluster
from xpupool.kube.transport import PODS, AiohttpTransport, JsonDict


def busybox_pod(name: str, node: NodeCluster, image: str, script: str, **spec: Any) -> JsonDict:
    """A one-container pod bound straight to the node (no scheduler) running ``sh -c script``."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node.node_name,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "main", "image": image, "imagePullPolicy": "Never", "command": ["/bin/sh", "-c", script]}
            ],
            **spec,
        },
    }


DOWNWARD_POD_ENV: tuple[tuple[str, str], ...] = (
    ("POD_NAME", "metadata.name"),
    ("POD_NAMESPACE", "metadata.namespace"),
    ("POD_UID", "metadata.uid"),
)


def vxpu_pod(
    name: str, image: str, *, core_pct: int, memory_mib: int, command: list[str], downward_env: bool = False
) -> JsonDict:
    """A one-container pod for the xpupool scheduler asking one vXPU of ``core_pct`` % and
    ``memory_mib``; ``downward_env`` gives it POD_NAME/POD_NAMESPACE/POD_UID (what xpu-probe reports)."""
    limits = {"xpupool.io/vxpu": "1", "xpupool.io/vxpu-core": str(core_pct), "xpupool.io/vxpu-memory": str(memory_mib)}
    container: JsonDict = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
        "resources": {"limits": limits, "requests": {"cpu": "10m", **limits}},
    }
    if downward_env:
        container["env"] = [
            {"name": env, "valueFrom": {"fieldRef": {"fieldPath": path}}} for env, path in DOWNWARD_POD_ENV
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "schedulerName": "xpupool",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


async def wait_pod(
    transport: AiohttpTransport, namespace: str, name: str, phases: tuple[str, ...], *, timeout_s: float = 90.0
) -> JsonDict:
    """Poll until the pod's phase is one of ``phases``; fail with its status otherwise."""
    deadline = time.monotonic() + timeout_s
    pod: JsonDict = {}
    while time.monotonic() < deadline:
        pod = await transport.get(PODS, name, namespace=namespace)
        if pod.get("status", {}).get("phase") in phases:
            return pod
        await asyncio.sleep(0.5)
    raise AssertionError(f"pod {namespace}/{name} not in {phases} after {timeout_s:.0f} s: {pod.get('status')}")


def pod_log(node: NodeCluster, namespace: str, name: str, container: str = "main") -> str:
    """The container's log, read the way `kubectl logs` does: apiserver -> kubelet."""
    import ssl
    import urllib.request

    cp = node.control_plane
    req = urllib.request.Request(
        f"{cp.server}/api/v1/namespaces/{namespace}/pods/{name}/log?container={container}",
        headers={"Authorization": f"Bearer {cp.token}"},
    )
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    with urllib.request.urlopen(req, context=ctx, timeout=20) as resp:
        return str(resp.read().decode())
