"""The slice seen from inside a container, on the real node (issue 7 §5).

The workload image is a TEST DOUBLE: ``xpu-probe`` (a CUDA driver-API + NVML program) on the FAKE
``libcuda.so.1`` / ``libnvidia-ml.so.1`` from native/testdoubles, standing in for a GPU container;
nothing here runs on a GPU. What is real: kubelet, containerd (CDI), runc, the agent's device
plugin and pairing, the shim library built by ``make native`` and preloaded into the container,
the region the agent wrote, the scheduler. The emulated card carries the test-double driver's
device UUID so that the shim matches its limits to that device (as it would to a real card's).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from xpupool.kube.testing_node import NodeCluster
from xpupool.kube.transport import PODS, AiohttpTransport, JsonDict

from .pods import vxpu_pod as scheduled_vxpu_pod
from .xpupool_node import XpupoolNode

pytestmark = pytest.mark.e2e_node

FAKE_UUID = "GPU-00000000-1111-2222-3333-444444444440"  # device 0 of the test-double libcuda/NVML
CARD_MIB = 16384  # the test-double libcuda's device memory
MIB = 1 << 20
OUT_OF_MEMORY = 2  # CUDA_ERROR_OUT_OF_MEMORY


@pytest.fixture(scope="module")
def slice_node(node_cluster: NodeCluster) -> Iterator[XpupoolNode]:
    node = XpupoolNode(
        node_cluster,
        cards=f"{{model: FAKE-16G, memory_mib: {CARD_MIB}, count: 1, uuids: [{FAKE_UUID}]}}",
        install_shim=True,
    )
    node.start()
    try:
        asyncio.run(node.wait_serving())
        yield node
    finally:
        node.stop()


def probe_pod(name: str, image: str, *, core_pct: int, memory_mib: int, args: list[str]) -> JsonDict:
    command = ["xpu-probe", *args, "--hold-s", "3600"]
    return scheduled_vxpu_pod(name, image, core_pct=core_pct, memory_mib=memory_mib, command=command, downward_env=True)


async def probe_output(node: XpupoolNode, transport: AiohttpTransport, namespace: str, name: str) -> dict[str, Any]:
    """The probe's JSON line, once the pod runs and printed it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pod = await transport.get(PODS, name, namespace=namespace)
        phase = (pod.get("status") or {}).get("phase")
        assert phase not in ("Failed", "Succeeded"), pod["status"]
        if phase == "Running":
            for line in (await asyncio.to_thread(node.log, namespace, name)).splitlines():
                if line.startswith('{"probe"'):
                    out: dict[str, Any] = json.loads(line)
                    return out
        await asyncio.sleep(0.5)
    raise AssertionError(f"{namespace}/{name} printed no probe line")


async def test_two_pods_on_one_card_each_see_their_own_slice(
    slice_node: XpupoolNode, node_transport: AiohttpTransport, node_namespace: str, workload_image: str
) -> None:
    """30 %/4 GiB and 50 %/8 GiB on the one card: each sees its own memory size through the driver
    API and NVML, filling memory stops at its own quota with OUT_OF_MEMORY, and the other pod's
    quota is untouched by it. Deleting a pod frees its slice for a new pod."""
    await slice_node.wait_idle()
    fill = ["--fill-chunk-mib", "256"]
    await node_transport.create(
        PODS, probe_pod("small", workload_image, core_pct=30, memory_mib=4096, args=fill), namespace=node_namespace
    )
    small = await probe_output(slice_node, node_transport, node_namespace, "small")
    await node_transport.create(
        PODS, probe_pod("large", workload_image, core_pct=50, memory_mib=8192, args=fill), namespace=node_namespace
    )
    large = await probe_output(slice_node, node_transport, node_namespace, "large")
    slice_node.record("slice_probe", {"small": small, "large": large})

    for out, name, mib in ((small, "small", 4096), (large, "large", 8192)):
        assert out["pod"]["name"] == name and out["env"]["XPUPOOL_POD"] == f"{node_namespace}/{name}"
        assert out["env"]["XPUPOOL_CARD_UUIDS"] == FAKE_UUID
        cuda, nvml = out["cuda"], out["nvml"]
        # Device 0 is the slice's card. (The test-double driver always shows two devices: hiding
        # the others is the job of CUDA_VISIBLE_DEVICES and the device nodes on a real card.)
        assert cuda["init"] == 0 and cuda["context_result"] == 0
        device = cuda["devices"][0]
        assert device["uuid"] == FAKE_UUID and device["total_mem_bytes"] == mib * MIB, device
        assert cuda["mem_get_info"]["total_bytes"] == mib * MIB, cuda["mem_get_info"]
        assert nvml["devices"][0]["memory_total_bytes"] == mib * MIB, nvml["devices"][0]
        # Filling stops at the pod's own quota, with OUT_OF_MEMORY returned to the program.
        assert cuda["fill"]["stop_result"] == OUT_OF_MEMORY, cuda["fill"]
        assert 0 < cuda["fill"]["allocated_mib"] <= mib, cuda["fill"]
    # The large pod filled its 8 GiB while the small pod held its whole 4 GiB: unaffected.
    assert large["cuda"]["fill"]["allocated_mib"] > small["cuda"]["fill"]["allocated_mib"] + 2048

    # The agent's metrics show each slice (series labelled by the slice = region directory, whose
    # owner pod and namespace the agent knows from the kubelet): quota, use and refusals.
    samples = await slice_node.metrics()
    for out, mib in ((small, 4096), (large, 8192)):
        (region,) = slice_node.region_root.glob(f"{out['pod']['uid']}-*")
        of_slice = {n: v for n, labels, v in samples if labels.get("slice") == region.name}
        assert of_slice["xpupool_vxpu_memory_granted_bytes"] == mib * MIB, of_slice
        assert of_slice["xpupool_vxpu_memory_used_bytes"] == out["cuda"]["fill"]["allocated_mib"] * MIB
        assert of_slice["xpupool_vxpu_oom_refusals_total"] >= 1

    # Deleting a pod frees its slice: region reclaimed, and a new pod takes the room.
    gone = await node_transport.get(PODS, "small", namespace=node_namespace)
    (region,) = slice_node.region_root.glob(f"{gone['metadata']['uid']}-*/region")
    await node_transport.delete(PODS, "small", namespace=node_namespace)
    await node_transport.create(
        PODS, probe_pod("again", workload_image, core_pct=50, memory_mib=6144, args=[]), namespace=node_namespace
    )
    again = await probe_output(slice_node, node_transport, node_namespace, "again")
    assert again["cuda"]["mem_get_info"]["total_bytes"] == 6144 * MIB
    await slice_node.wait_gone(region.parent, timeout_s=90)
