"""Pairing on the real node: every container receives exactly its own pod's slice.

Real parts: kubelet + containerd 2.x (CDI on) + runc, the xpupool node agent (host process,
emulated cards: no GPU here) registering its device plugin with the real kubelet and asking its
real PodResources API, the xpupool scheduler binding pods through the node's apiserver. Each
container prints the configuration it received (environment and the inode of the shim region
it mounted); the test compares it with the pod's own allocation and with the region the agent
wrote for that pod on the host.

Also here: the scheduler never binds what the kubelet would refuse (slots per card), never binds
to a node whose agent does not serve ``xpupool.io/vxpu``, and kubelet or agent restarts lose no
pairing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpupool.agent.shim_region import ShimRegion
from xpupool.kube.testing_node import DEVICE_PLUGIN_DIR, NodeCluster
from xpupool.kube.transport import PODS, AiohttpTransport, JsonDict

from .pods import pod_log
from .pods import vxpu_pod as scheduled_vxpu_pod
from .whole_gpu_plugin import WholeGpuPlugin
from .xpupool_node import SLOTS_PER_CARD, XpupoolNode

pytestmark = pytest.mark.e2e_node


@pytest.fixture(scope="module")
def xpupool_node(node_cluster: NodeCluster) -> Iterator[XpupoolNode]:
    """The agent and the scheduler on the real node, ready when the kubelet advertises the slots."""
    node = XpupoolNode(node_cluster)
    node.start()
    try:
        asyncio.run(node.wait_allocatable(2 * SLOTS_PER_CARD))
        yield node
    finally:
        node.stop()


CONFIG_LINE = re.compile(r"^XPUPOOL-CONFIG (?P<json>\{.*\})$", re.M)
INODE_LINE = re.compile(r"^\s*(?P<inode>\d+) \S+ .*/run/xpupool/shim/region$", re.M)
#: What the workload prints: the environment the runtime gave it and the region it mounted.
PRINT_CONFIG = (
    'echo "XPUPOOL-CONFIG {\\"pod\\":\\"$XPUPOOL_POD\\",\\"container\\":\\"$XPUPOOL_CONTAINER\\",'
    '\\"visible\\":\\"$XPUPOOL_EMULATED_VISIBLE_DEVICES\\",\\"uuids\\":\\"$XPUPOOL_CARD_UUIDS\\",'
    '\\"memory_mib\\":\\"$XPUPOOL_MEMORY_LIMIT_MIB\\",\\"core_pct\\":\\"$XPUPOOL_CORE_LIMIT_PCT\\",'
    '\\"region_env\\":\\"$XPUSHIM_REGION\\"}"; ls -lid /run/xpupool/shim/region'
)


def vxpu_pod(name: str, image: str, *, core_pct: int, memory_mib: int, script: str = PRINT_CONFIG) -> JsonDict:
    return scheduled_vxpu_pod(name, image, core_pct=core_pct, memory_mib=memory_mib, command=["/bin/sh", "-c", script])


async def wait_all(
    transport: AiohttpTransport, namespace: str, names: list[str], phases: tuple[str, ...], timeout_s: float = 180.0
) -> dict[str, JsonDict]:
    deadline = time.monotonic() + timeout_s
    pods: dict[str, JsonDict] = {}
    while time.monotonic() < deadline:
        listed = await transport.list(PODS, namespace=namespace)
        pods = {p["metadata"]["name"]: p for p in listed.items if p["metadata"]["name"] in names}
        if len(pods) == len(names) and all(p.get("status", {}).get("phase") in phases for p in pods.values()):
            return pods
        await asyncio.sleep(0.5)
    late = {
        n: (p.get("status") or {}).get("phase")
        for n, p in pods.items()
        if p.get("status", {}).get("phase") not in phases
    }
    raise AssertionError(f"pods not {phases} after {timeout_s:.0f} s: {late}")


def received(log: str) -> tuple[dict[str, str], int]:
    """The configuration a container printed and the inode of the region it mounted."""
    config = CONFIG_LINE.search(log)
    inode = INODE_LINE.search(log)
    assert config is not None and inode is not None, log
    return json.loads(config["json"]), int(inode["inode"])


def host_region(node: XpupoolNode, pod: JsonDict) -> Path:
    (region,) = node.region_root.glob(f"{pod['metadata']['uid']}-*/region")
    return region


def check_own_slice(node: XpupoolNode, pod: JsonDict, log: str, *, core_pct: int, memory_mib: int) -> None:
    """The container received its own pod's allocation, and mounted its own pod's region."""
    got, inode = received(log)
    allocation = json.loads(pod["metadata"]["annotations"]["xpupool.io/allocation"])
    key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
    assert got["pod"] == key and got["container"] == "main"
    assert got["visible"] == ",".join(str(c) for c in allocation["cards"])
    assert got["uuids"] == ",".join(f"EMU-{node.cluster.node_name}-{c}" for c in allocation["cards"])
    assert (got["memory_mib"], got["core_pct"]) == (str(memory_mib), str(core_pct))
    assert allocation["memoryMiB"] == [memory_mib] and allocation["shareMilli"] == core_pct * 10
    assert got["region_env"] == "/run/xpupool/shim/region"
    region = host_region(node, pod)
    assert os.stat(region).st_ino == inode, "the container mounted another container's region"
    with ShimRegion.open(region) as shim:
        entry = shim.config.dev[0]
        assert entry.uuid.decode() == got["uuids"]
        assert (entry.mem_limit >> 20, entry.share_request_bp) == (memory_mib, core_pct * 100)


HOLD = PRINT_CONFIG + "; exec sleep 3600"  # print, then keep the slice (and its region) alive


async def running_with_own_slice(
    node: XpupoolNode, transport: AiohttpTransport, namespace: str, name: str, *, core_pct: int, memory_mib: int
) -> JsonDict:
    """Wait until pod ``name`` (running ``HOLD``) runs and printed its configuration; check it."""
    pod = (await wait_all(transport, namespace, [name], ("Running", "Failed", "Succeeded")))[name]
    assert pod["status"]["phase"] == "Running", pod["status"]
    (log,) = await logs_with_config(node, namespace, [name])
    check_own_slice(node, pod, log, core_pct=core_pct, memory_mib=memory_mib)
    return pod


async def logs_with_config(node: XpupoolNode, namespace: str, names: list[str], timeout_s: float = 60.0) -> list[str]:
    """Each container's log once it printed its configuration."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = await asyncio.gather(*(asyncio.to_thread(node.log, namespace, n) for n in names))
        if all(CONFIG_LINE.search(log) and INODE_LINE.search(log) for log in logs) or time.monotonic() > deadline:
            return list(logs)
        await asyncio.sleep(0.5)


@pytest.mark.parametrize("run", range(5))
async def test_twenty_pods_created_at_once_each_get_their_own_slice(
    run: int, xpupool_node: XpupoolNode, node_transport: AiohttpTransport, node_namespace: str, busybox_image: str
) -> None:
    """20 fractional pods (different shares and memory) created at once on one node; every
    container prints what it received and keeps running; each matches its own pod's allocation
    and mounts its own pod's region. Repeated 5 times (fresh pods, slot IDs reused)."""
    shapes = {f"p{run}-{i:02d}": (3 + (i * 7 + run) % 9, 1024 + 256 * i + 64 * run) for i in range(20)}
    script = HOLD
    t0 = time.monotonic()
    await asyncio.gather(
        *(
            node_transport.create(
                PODS, vxpu_pod(n, busybox_image, core_pct=c, memory_mib=m, script=script), namespace=node_namespace
            )
            for n, (c, m) in shapes.items()
        )
    )
    pods = await wait_all(node_transport, node_namespace, list(shapes), ("Running",))
    elapsed_s = time.monotonic() - t0
    logs = await logs_with_config(xpupool_node, node_namespace, list(shapes))
    for (name, (core, memory)), log in zip(shapes.items(), logs, strict=True):
        check_own_slice(xpupool_node, pods[name], log, core_pct=core, memory_mib=memory)
    xpupool_node.record("twenty_pods", {"run": run, "pods": len(shapes), "matched": len(shapes), "seconds": elapsed_s})
    await asyncio.gather(*(node_transport.delete(PODS, n, namespace=node_namespace) for n in shapes))


async def test_the_scheduler_binds_only_what_the_kubelet_admits(
    xpupool_node: XpupoolNode, node_transport: AiohttpTransport, node_namespace: str, busybox_image: str
) -> None:
    """2 cards x SLOTS_PER_CARD slots: that many long-running 1 % pods run; one more stays pending
    with the reason (no tenant slot), instead of being refused by the kubelet."""
    await xpupool_node.wait_idle()
    capacity = 2 * SLOTS_PER_CARD
    names = [f"s{i:02d}" for i in range(capacity + 1)]
    for name in names:
        await node_transport.create(
            PODS,
            vxpu_pod(name, busybox_image, core_pct=1, memory_mib=64, script="sleep 3600"),
            namespace=node_namespace,
        )
    deadline = time.monotonic() + 180
    phases: dict[str, str] = {}
    while time.monotonic() < deadline:
        listed = await node_transport.list(PODS, namespace=node_namespace)
        phases = {p["metadata"]["name"]: (p.get("status") or {}).get("phase", "") for p in listed.items}
        if sum(1 for p in phases.values() if p == "Running") == capacity:
            break
        await asyncio.sleep(0.5)
    assert sum(1 for p in phases.values() if p == "Running") == capacity, phases
    await asyncio.sleep(3)
    listed = await node_transport.list(PODS, namespace=node_namespace)
    waiting = [p for p in listed.items if not p["spec"].get("nodeName")]
    assert len(waiting) == 1, [p["metadata"]["name"] for p in waiting]
    condition = next(c for c in waiting[0]["status"]["conditions"] if c["type"] == "PodScheduled")
    assert condition["status"] == "False" and "tenant slot" in condition["message"], condition
    refused = [p for p in listed.items if (p.get("status") or {}).get("reason") == "UnexpectedAdmissionError"]
    assert not refused, "the kubelet refused a pod the scheduler bound"


async def test_no_pod_is_bound_where_the_agent_does_not_serve(
    xpupool_node: XpupoolNode, node_transport: AiohttpTransport, node_namespace: str, busybox_image: str
) -> None:
    """The agent publishes its inventory but does not serve the device plugin: the kubelet
    advertises no xpupool.io/vxpu, a vXPU pod stays pending with that reason; once the agent
    serves again the pod is bound and runs with its slice."""
    xpupool_node.restart_agent(device_plugin=False)
    try:
        await xpupool_node.wait_not_serving()
        await node_transport.create(
            PODS, vxpu_pod("waits", busybox_image, core_pct=10, memory_mib=512, script=HOLD), namespace=node_namespace
        )
        deadline = time.monotonic() + 60
        message = ""
        while time.monotonic() < deadline and "not served by the xpupool node agent" not in message:
            pod = await node_transport.get(PODS, "waits", namespace=node_namespace)
            assert not pod["spec"].get("nodeName"), "bound to a node whose kubelet would refuse it"
            conditions = (pod.get("status") or {}).get("conditions") or []
            message = next((c.get("message", "") for c in conditions if c["type"] == "PodScheduled"), "")
            await asyncio.sleep(0.5)
        assert "not served by the xpupool node agent" in message, message
    finally:
        xpupool_node.restart_agent(device_plugin=True)
    await running_with_own_slice(xpupool_node, node_transport, node_namespace, "waits", core_pct=10, memory_mib=512)


async def test_kubelet_and_agent_restarts_lose_no_pairing(
    xpupool_node: XpupoolNode, node_transport: AiohttpTransport, node_namespace: str, busybox_image: str
) -> None:
    """A running pod keeps its slice through a kubelet restart (the plugin registers again) and an
    agent restart; a pod created after each restart starts with its own slice; deleting a pod
    frees its slice (region and CDI spec removed) and a new pod takes it."""
    loop = "while true; do " + PRINT_CONFIG + "; sleep 2; done"  # reprints: the slice is still its own
    await node_transport.create(
        PODS, vxpu_pod("long", busybox_image, core_pct=20, memory_mib=2048, script=loop), namespace=node_namespace
    )
    long = (await wait_all(node_transport, node_namespace, ["long"], ("Running",)))["long"]
    region = host_region(xpupool_node, long)
    inode = os.stat(region).st_ino

    # New pods are created right after each restart, with no waiting: the agent says when its
    # kubelet cannot admit them, so they wait for the scheduler instead of being refused.
    registrations = xpupool_node.registrations()
    xpupool_node.cluster_restart_kubelet()
    await node_transport.create(
        PODS,
        vxpu_pod("after-kubelet", busybox_image, core_pct=30, memory_mib=4096, script=HOLD),
        namespace=node_namespace,
    )
    await running_with_own_slice(
        xpupool_node, node_transport, node_namespace, "after-kubelet", core_pct=30, memory_mib=4096
    )
    await xpupool_node.wait_registrations(registrations + 1)

    xpupool_node.restart_agent(device_plugin=True)
    await node_transport.create(
        PODS,
        vxpu_pod("after-agent", busybox_image, core_pct=40, memory_mib=3072, script=HOLD),
        namespace=node_namespace,
    )
    await running_with_own_slice(
        xpupool_node, node_transport, node_namespace, "after-agent", core_pct=40, memory_mib=3072
    )

    long = await node_transport.get(PODS, "long", namespace=node_namespace)
    assert long["status"]["phase"] == "Running" and os.stat(region).st_ino == inode
    check_own_slice(xpupool_node, long, xpupool_node.log(node_namespace, "long"), core_pct=20, memory_mib=2048)

    await node_transport.delete(PODS, "long", namespace=node_namespace)
    await xpupool_node.wait_gone(region.parent, timeout_s=90)
    await xpupool_node.wait_no_spec_for(long)


async def test_deleting_a_pod_frees_its_slice_for_a_new_pod(
    xpupool_node: XpupoolNode, node_transport: AiohttpTransport, node_namespace: str, busybox_image: str
) -> None:
    """Four 50 % pods fill both cards; a fifth waits. Deleting one frees its slice: its region
    and CDI spec go, and the fifth pod runs with its own slice in the room it left."""
    await xpupool_node.wait_idle()
    for i in range(4):
        await node_transport.create(
            PODS,
            vxpu_pod(f"half-{i}", busybox_image, core_pct=50, memory_mib=1024, script=HOLD),
            namespace=node_namespace,
        )
    pods = await wait_all(node_transport, node_namespace, [f"half-{i}" for i in range(4)], ("Running",))
    await node_transport.create(
        PODS, vxpu_pod("fifth", busybox_image, core_pct=50, memory_mib=2048, script=HOLD), namespace=node_namespace
    )
    await asyncio.sleep(3)
    assert not (await node_transport.get(PODS, "fifth", namespace=node_namespace))["spec"].get("nodeName")
    gone = pods["half-0"]
    region = host_region(xpupool_node, gone)
    await node_transport.delete(PODS, "half-0", namespace=node_namespace)
    fifth = await running_with_own_slice(
        xpupool_node, node_transport, node_namespace, "fifth", core_pct=50, memory_mib=2048
    )
    freed = json.loads(gone["metadata"]["annotations"]["xpupool.io/allocation"])["cards"]
    assert json.loads(fifth["metadata"]["annotations"]["xpupool.io/allocation"])["cards"] == freed
    await xpupool_node.wait_gone(region.parent, timeout_s=90)
    await xpupool_node.wait_no_spec_for(gone)


async def test_each_container_of_a_pod_gets_its_own_card(
    xpupool_node: XpupoolNode, node_transport: AiohttpTransport, node_namespace: str, busybox_image: str
) -> None:
    """PodResources names the container: a pod with two vXPU containers (a whole card each)
    gives each container its own card of the pod's allocation, in container order."""
    await xpupool_node.wait_idle()
    pod = vxpu_pod("pair", busybox_image, core_pct=100, memory_mib=1024, script=HOLD)
    second = json.loads(json.dumps(pod["spec"]["containers"][0]))
    second["name"] = "second"
    pod["spec"]["containers"].append(second)
    await node_transport.create(PODS, pod, namespace=node_namespace)
    running = (await wait_all(node_transport, node_namespace, ["pair"], ("Running",)))["pair"]
    cards = json.loads(running["metadata"]["annotations"]["xpupool.io/allocation"])["cards"]
    assert len(cards) == 2
    seen = []
    for container in ("main", "second"):
        deadline = time.monotonic() + 60
        log = ""
        while not CONFIG_LINE.search(log) and time.monotonic() < deadline:
            log = await asyncio.to_thread(pod_log, xpupool_node.cluster, node_namespace, "pair", container)
            await asyncio.sleep(0.5)
        got, _ = received(log)
        assert (got["pod"], got["container"]) == (f"{node_namespace}/pair", container)
        seen.append(int(got["visible"]))
    assert seen == cards


async def test_a_card_held_by_another_device_plugin_is_never_sliced(
    xpupool_node: XpupoolNode, node_transport: AiohttpTransport, node_namespace: str, busybox_image: str
) -> None:
    """Issue 9 §5 on the real node: a stand-in for the NVIDIA device plugin advertises the two
    cards as ``nvidia.com/gpu`` (their UUIDs as device IDs); kube-scheduler places a whole-GPU pod
    and the kubelet gives it one card. The agent learns which one from the kubelet, publishes it as
    held, and two 60 % vXPU pods then share nothing with it: one runs on the other card, the other
    waits."""
    await xpupool_node.wait_idle()
    node = xpupool_node.cluster.node_name
    plugin = WholeGpuPlugin(DEVICE_PLUGIN_DIR, [f"EMU-{node}-0", f"EMU-{node}-1"])
    await plugin.start()
    try:
        whole = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "whole"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "main",
                        "image": busybox_image,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sleep", "3600"],
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    }
                ],
            },
        }
        await node_transport.create(PODS, whole, namespace=node_namespace)
        await wait_all(node_transport, node_namespace, ["whole"], ("Running",))
        (held_ids,) = plugin.allocated
        held_card = int(held_ids[0].rsplit("-", 1)[1])
        deadline = time.monotonic() + 60
        held: dict[int, tuple[str, ...]] = {}
        while time.monotonic() < deadline:
            inventory = await xpupool_node.inventory()
            held = {d.index: d.held_by for d in (inventory.devices if inventory else ()) if d.held_by}
            if held:
                break
            await asyncio.sleep(0.5)
        assert held == {held_card: (f"{node_namespace}/whole (nvidia.com/gpu)",)}
        for name in ("sixty-a", "sixty-b"):
            await node_transport.create(
                PODS, vxpu_pod(name, busybox_image, core_pct=60, memory_mib=1024, script=HOLD), namespace=node_namespace
            )
        await asyncio.sleep(5)
        listed = {p["metadata"]["name"]: p for p in (await node_transport.list(PODS, namespace=node_namespace)).items}
        bound = [n for n in ("sixty-a", "sixty-b") if listed[n]["spec"].get("nodeName")]
        assert len(bound) == 1, {n: listed[n].get("status") for n in ("sixty-a", "sixty-b")}
        cards = json.loads(listed[bound[0]]["metadata"]["annotations"]["xpupool.io/allocation"])["cards"]
        assert cards == [1 - held_card]
    finally:
        await plugin.stop()


async def test_cdi_specs_on_the_node_name_only_live_containers(xpupool_node: XpupoolNode) -> None:
    """Every spec the agent keeps is for IDs a container still holds, as the kubelet itself
    lists them (after the tests above, once garbage collection had its interval and grace)."""
    assert await xpupool_node.stale_specs() == []
