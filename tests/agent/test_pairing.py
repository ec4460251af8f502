"""Pairing: every container receives exactly its own pod's slice (CDI + PreStartContainer + the
kubelet's PodResources record), against the fake kubelet over real unix sockets.

The fake kubelet (``fake_kubelet.py``) behaves like the kubelet's device manager where pairing
depends on it: IDs picked by count on any card, ``Allocate`` per container, the record kept for
``PodResources.List`` (with its rate limit), ``PreStartContainer`` before each container start,
then a CDI-applying runtime stand-in. Regions are written by the real ``ShimRegionWriter`` and read
back with the layout the C shim reads. The same properties are proven on a real kubelet +
containerd in ``tests/node/test_pairing*.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from xpupool.agent.allocation import ANN_ALLOCATION, RuntimePaths, slot_id
from xpupool.agent.cdi import CdiSpecDir, device_name, runtime_support, spec_document
from xpupool.agent.daemon import Agent, AgentSettings
from xpupool.agent.deviceplugin import DevicePluginServer, VxpuDevicePlugin
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.inventory import ANN_INVENTORY, parse_inventory
from xpupool.agent.kubeapi import KubeApi
from xpupool.agent.pairing import Pairing, SliceIndex, foreign_held_cards
from xpupool.agent.podresources import ContainerDevices, HolderIndex, HolderSnapshot, KubeletPodResources
from xpupool.agent.regions import ShimRegionWriter
from xpupool.agent.shim_region import ShimRegion
from xpupool.core.model import Allocation, Vendor
from xpupool.kube.objects import encode_allocation

from .fake_apiserver import FakeApiServer, vxpu_container
from .fake_kubelet import ContainerStartError, FakeKubelet

NODE = "gpu-7"
MIB = 1 << 20


def cards(count: int = 2) -> list[DeviceInfo]:
    return [
        DeviceInfo(uuid=f"GPU-{i:04d}", index=i, vendor=Vendor.NVIDIA, model="H100", memory_mib=81920)
        for i in range(count)
    ]


def bind(
    apiserver: FakeApiServer,
    name: str,
    allocation: list[tuple[int, int]],
    share_milli: int,
    containers: list[dict[str, Any]] | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    """A pod the scheduler bound to NODE; ``allocation`` = [(card, memory MiB)]."""
    encoded = encode_allocation(
        Allocation(
            pod=f"ns/{name}",
            node=NODE,
            device_node=NODE,
            cards=tuple(c for c, _ in allocation),
            share_milli=share_milli,
            device_memory_mib=tuple(m for _, m in allocation),
        )
    )
    return apiserver.add_pod(
        "ns",
        name,
        node=NODE,
        uid=uid or f"uid-{name}",
        created="2026-12-01T00:00:00Z",
        annotations={ANN_ALLOCATION: encoded},
        containers=containers or [vxpu_container("main", len(allocation))],
    )


class Node:
    """Plugin + pairing (real region writer) + fake kubelet; ``clock`` drives garbage collection."""

    def __init__(self, root: Path, kube: KubeApi, *, slots: int, card_count: int = 2) -> None:
        self.root = root
        self.kube = kube
        self.slots = slots
        self.devices = cards(card_count)
        self.kubelet = FakeKubelet(root / "dp", cdi_dir=root / "cdi")
        self.now = time.time()
        self.paths = RuntimePaths(region_host_root=str(root / "regions"), card_host_dir=str(root / "cards"))
        self.holders = HolderIndex(KubeletPodResources(self.kubelet.podresources_socket), kube, node=NODE)
        self.pairing = self.new_pairing()
        self.plugin = VxpuDevicePlugin(node=NODE, slots_per_card=slots, pre_start=self.pairing, paths=self.paths)
        self.server = DevicePluginServer(self.plugin, plugin_dir=root / "dp", poll_s=0.02, retry_s=0.05)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def new_pairing(self) -> Pairing:
        """What a restarted agent builds: no memory of earlier containers."""
        return Pairing(
            node=NODE,
            holders=self.holders,
            pods=self.kube,
            specs=CdiSpecDir(self.root / "cdi"),
            devices=lambda: {d.index: d for d in self.devices},
            paths=self.paths,
            region_writer=ShimRegionWriter(region_root=self.root / "regions", card_host_dir=self.root / "cards"),
            index=SliceIndex(),
            wall_clock=lambda: self.now,
        )

    async def start(self) -> None:
        (self.root / "dp").mkdir()
        await self.plugin.update_devices(self.devices)
        await self.kubelet.start()
        self.task = asyncio.create_task(self.server.run(self.stop))
        await asyncio.wait_for(self.kubelet.registered.wait(), 5)
        await self.kubelet.next_list(0)

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)
        await self.holders.close()
        await self.kubelet.stop()


@pytest.fixture
async def node_factory(short_dir: Path, kube: KubeApi) -> AsyncIterator[Callable[..., Node]]:
    made: list[Node] = []

    def make(**kwargs: Any) -> Node:
        made.append(Node(short_dir, kube, **kwargs))
        return made[-1]

    yield make
    for n in made:
        await n.close()


def region_limits(mounts: dict[str, tuple[str, bool]]) -> list[tuple[str, int, int]]:
    """(card uuid, memory limit MiB, share bp) per device, as the C shim reads the region."""
    with ShimRegion.open(Path(mounts["/run/xpupool/shim"][0]) / "region") as region:
        view = region.config  # the agent-owned, read-only part
        return [
            (view.dev[i].uuid.decode(), view.dev[i].mem_limit // MIB, view.dev[i].share_request_bp)
            for i in range(view.hdr.ndevices)
        ]


async def test_twenty_pods_started_at_once_each_get_their_own_slice(
    node_factory: Callable[..., Node], apiserver: FakeApiServer
) -> None:
    """20 fractional pods, different shares and memory, bound to two cards; the kubelet admits them
    in a shuffled order, picks slot IDs by count on any card, and starts all containers at once.
    Every container receives its own pod's card, share and memory (env and shim region), and the
    kubelet's PodResources is asked far fewer than 20 times (callers share a List)."""
    node = node_factory(slots=16)
    apiserver.add_node(NODE)
    await node.start()
    node.kubelet.podresources.burst = 10  # the kubelet's limiter: more than 10 at once is refused
    wanted = {f"p{i:02d}": (i % 2, 1024 + 256 * i, 50 + 40 * i) for i in range(20)}
    pods = [bind(apiserver, name, [(card, memory)], share) for name, (card, memory, share) in wanted.items()]
    random.Random(3).shuffle(pods)
    for pod in pods:
        await node.kubelet.admit(pod)
    started = await asyncio.gather(*(node.kubelet.start_container("ns", name, "main") for name in wanted))
    for name, made in zip(wanted, started, strict=True):
        card, memory, share = wanted[name]
        assert made.env["XPUPOOL_POD"] == f"ns/{name}"
        assert made.env["CUDA_VISIBLE_DEVICES"] == f"GPU-{card:04d}"
        assert made.env["XPUPOOL_MEMORY_LIMIT_MIB"] == str(memory)
        assert region_limits(made.mounts) == [(f"GPU-{card:04d}", memory, share * 10)]
    assert node.kubelet.podresources.list_calls == 0
    assert node.kubelet.podresources.calls < 3 * 20
    assert len(list((node.root / "cdi").glob("*.json"))) == 20


async def test_a_query_that_started_before_the_caller_is_never_shared(
    node_factory: Callable[..., Node], apiserver: FakeApiServer
) -> None:
    """Coalescing never hands a caller an answer older than its own call."""
    node = node_factory(slots=4)
    await node.start()
    late = bind(apiserver, "late", [(0, 1024)], 100)
    node.kubelet.known_pods.add(("ns", "late"))
    node.kubelet.podresources.delay_s = 0.1
    first = asyncio.create_task(node.holders.snapshot())
    while node.kubelet.podresources.calls < 1:  # the first query's Get reached the kubelet
        await asyncio.sleep(0.005)
    node.kubelet.hold("ns", "late", "main", "xpupool.io/vxpu", [slot_id("GPU-0000", 1)])
    second, third = asyncio.create_task(node.holders.snapshot()), asyncio.create_task(node.holders.snapshot())
    results: list[HolderSnapshot] = await asyncio.gather(first, second, third)
    assert [len(r.entries) for r in results] == [0, 1, 1]
    assert node.kubelet.podresources.calls == 2  # one Get per query; the second query was shared
    assert late["metadata"]["uid"] == results[1].entries[0].pod_uid


async def test_rate_limited_queries_are_retried(node_factory: Callable[..., Node], apiserver: FakeApiServer) -> None:
    node = node_factory(slots=4)
    await node.start()
    for i in range(3):
        await node.kubelet.admit(bind(apiserver, f"r{i}", [(0, 512)], 100))
    node.kubelet.podresources.burst = 1
    assert len((await node.holders.snapshot()).entries) == 3
    assert node.kubelet.podresources.calls > 3  # RESOURCE_EXHAUSTED answers were retried


async def test_one_id_recorded_for_two_pods_is_refused_not_guessed(
    node_factory: Callable[..., Node], apiserver: FakeApiServer
) -> None:
    """The kubelet race of kubernetes/kubernetes#137534 (a List during admissions) can record one
    device ID for two pods. The IDs then cannot tell the containers apart: neither is served
    (each start fails with the reason) rather than one getting the other's slice."""
    node = node_factory(slots=4)
    await node.start()
    for name in ("a", "b"):
        bind(apiserver, name, [(0, 1024)], 100)
        node.kubelet.known_pods.add(("ns", name))
        node.kubelet.hold("ns", name, "main", "xpupool.io/vxpu", [slot_id("GPU-0000", 2)])
    prepared = await node.pairing.prepare([slot_id("GPU-0000", 2)])
    assert not prepared.status.ok
    assert "for more than one pod (ns/a, ns/b)" in prepared.status.message()
    assert "kubernetes/kubernetes#137534" in prepared.status.message()
    assert not list((node.root / "cdi").glob("*.json"))


async def test_multi_container_pod_gets_one_card_per_vxpu_container(
    node_factory: Callable[..., Node], apiserver: FakeApiServer
) -> None:
    """PodResources names the container, so a pod may have several vXPU containers: they take the
    allocation's cards in container order (sidecars first); a non-vXPU container gets nothing."""
    node = node_factory(slots=4)
    await node.start()
    pod = bind(
        apiserver,
        "multi",
        [(1, 2048), (0, 4096)],
        300,
        containers=[vxpu_container("trainer", 1), {"name": "shell", "image": "busybox"}, vxpu_container("eval", 1)],
    )
    await node.kubelet.admit(pod)
    trainer = await node.kubelet.start_container("ns", "multi", "trainer")
    evaluation = await node.kubelet.start_container("ns", "multi", "eval")
    assert (trainer.env["CUDA_VISIBLE_DEVICES"], trainer.env["XPUPOOL_CONTAINER"]) == ("GPU-0001", "trainer")
    assert (evaluation.env["CUDA_VISIBLE_DEVICES"], evaluation.env["XPUPOOL_CONTAINER"]) == ("GPU-0000", "eval")
    assert region_limits(trainer.mounts) == [("GPU-0001", 2048, 3000)]
    assert region_limits(evaluation.mounts) == [("GPU-0000", 4096, 3000)]
    assert trainer.mounts["/run/xpupool/shim"] != evaluation.mounts["/run/xpupool/shim"]


async def test_container_restart_keeps_its_region_and_reused_ids_serve_the_new_pod(
    node_factory: Callable[..., Node], apiserver: FakeApiServer
) -> None:
    """One card with one slot: every pod gets the same slot ID. A container restart (PreStart
    again) keeps the region the shims mapped; after the pod ends, the next pod holding the same ID
    gets its own slice, never the previous pod's."""
    node = node_factory(slots=1, card_count=1)
    await node.start()
    first = bind(apiserver, "first", [(0, 1024)], 200)
    await node.kubelet.admit(first)
    made = await node.kubelet.start_container("ns", "first", "main")
    region = Path(made.mounts["/run/xpupool/shim"][0]) / "region"
    inode = os.stat(region).st_ino
    again = await node.kubelet.start_container("ns", "first", "main")
    assert again == made and os.stat(region).st_ino == inode

    node.kubelet.remove_pod("ns", "first")
    second = bind(apiserver, "second", [(0, 3072)], 700)
    await node.kubelet.admit(second)
    (held,) = node.kubelet.assignments
    assert held.ids == [slot_id("GPU-0000", 0)]  # the same ID as the first pod's
    made = await node.kubelet.start_container("ns", "second", "main")
    assert made.env["XPUPOOL_POD"] == "ns/second"
    assert region_limits(made.mounts) == [("GPU-0000", 3072, 7000)]


async def test_garbage_collection_removes_only_specs_nobody_holds(
    node_factory: Callable[..., Node], apiserver: FakeApiServer
) -> None:
    node = node_factory(slots=4)
    await node.start()
    for name in ("stays", "ends"):
        await node.kubelet.admit(bind(apiserver, name, [(0, 1024)], 100))
        await node.kubelet.start_container("ns", name, "main")
    specs = CdiSpecDir(node.root / "cdi")
    ended = device_name(next(a.ids for a in node.kubelet.assignments if a.pod == "ends"))
    node.kubelet.remove_pod("ns", "ends")
    apiserver.pods[("ns", "ends")]["status"]["phase"] = "Succeeded"
    assert await node.pairing.collect_garbage(grace_s=60) == []  # too young
    node.now += 3600
    assert await node.pairing.collect_garbage(grace_s=60) == [ended]
    assert set(specs.names()) == {device_name(node.kubelet.assignments[0].ids)}  # the held one stays


async def test_restarted_agent_and_kubelet_lose_no_pairing(
    node_factory: Callable[..., Node], apiserver: FakeApiServer
) -> None:
    """Agent restart: a fresh Pairing knows the running slices again from the kubelet's record.
    Kubelet restart: sockets deleted and recreated, allocations checkpointed; the plugin registers
    again and a container start after it is paired through the new PodResources socket."""
    node = node_factory(slots=4)
    await node.start()
    await node.kubelet.admit(bind(apiserver, "job", [(1, 8192)], 500))
    made = await node.kubelet.start_container("ns", "job", "main")
    region_dir = Path(made.mounts["/run/xpupool/shim"][0]).name

    restarted = node.new_pairing()
    assert restarted.index.owners() == {}
    await restarted.collect_garbage()
    owner = restarted.index.owner(region_dir)
    assert owner is not None and (owner.namespace, owner.pod, owner.container, owner.pod_uid) == (
        "ns",
        "job",
        "main",
        "uid-job",
    )

    registrations = len(node.kubelet.registrations)
    await node.kubelet.restart()
    await asyncio.wait_for(node.kubelet.registered.wait(), 5)
    assert len(node.kubelet.registrations) == registrations + 1
    again = await node.kubelet.start_container("ns", "job", "main")
    assert again.env == made.env and region_limits(again.mounts) == [("GPU-0001", 8192, 5000)]
    await node.kubelet.admit(bind(apiserver, "new", [(0, 1024)], 100))
    assert (await node.kubelet.start_container("ns", "new", "main")).env["XPUPOOL_POD"] == "ns/new"


async def test_a_pod_gone_from_the_apiserver_is_refused(
    node_factory: Callable[..., Node], apiserver: FakeApiServer
) -> None:
    node = node_factory(slots=4)
    await node.start()
    await node.kubelet.admit(bind(apiserver, "gone", [(0, 1024)], 100))
    del apiserver.pods[("ns", "gone")]
    with pytest.raises(ContainerStartError, match="no container of the pods on this node holds"):
        await node.kubelet.start_container("ns", "gone", "main")


def test_cdi_spec_is_valid_for_the_oldest_runtime_we_accept() -> None:
    """cdiVersion 0.5.0 (containerd 1.7.0's CDI library): hostPath on device nodes needs >= 0.5.0,
    the device name starts with a letter, the kind is vendor/class."""
    from xpupool.agent.cdi import ContainerEdits, DeviceNode, Mount

    edits = ContainerEdits(
        env={"B": "2", "A": "1"},
        device_nodes=(DeviceNode("/dev/nvidia0", "/dev/nvidia0"),),
        mounts=(Mount("/run/xpupool/shim", "/var/lib/xpupool/regions/u-1", False),),
    )
    name = device_name(["b::1", "a::0", "a::0"])
    assert name == device_name(["a::0", "b::1"]) and name[0] == "v" and len(name) == 33
    doc = spec_document(name, edits)
    assert json.loads(json.dumps(doc)) == {
        "cdiVersion": "0.5.0",
        "kind": "xpupool.io/vxpu",
        "devices": [
            {
                "name": name,
                "containerEdits": {
                    "env": ["A=1", "B=2"],
                    "deviceNodes": [{"path": "/dev/nvidia0", "hostPath": "/dev/nvidia0", "permissions": "rw"}],
                    "mounts": [
                        {
                            "hostPath": "/var/lib/xpupool/regions/u-1",
                            "containerPath": "/run/xpupool/shim",
                            "type": "bind",
                            "options": ["rw", "nosuid", "nodev", "bind"],
                        }
                    ],
                },
            }
        ],
    }


def test_runtimes_without_cdi_are_refused_with_the_reason() -> None:
    verdicts = {
        v: runtime_support(v)
        for v in (
            "containerd://2.2.9",
            "containerd://v2.0.0",
            "containerd://1.7.24",
            "containerd://1.6.20~ds1",
            "cri-o://1.31.2",
            "cri-o://1.22.0",
            "docker://27.3.1",
            "",
        )
    }
    assert [v for v, s in verdicts.items() if s.supported] == [
        "containerd://2.2.9",
        "containerd://v2.0.0",
        "containerd://1.7.24",
        "cri-o://1.31.2",
    ]
    assert "enable_cdi = true" in verdicts["containerd://1.7.24"].reason
    assert "containerd >= 1.7 needed" in verdicts["containerd://1.6.20~ds1"].reason
    assert "does not inject CDI devices" in verdicts["docker://27.3.1"].reason


def settings(root: Path, **extra: str) -> AgentSettings:
    (root / "emulated.yaml").write_text("cards:\n  - {model: EMU-40G, memory_mib: 40960, count: 2}\n")
    return AgentSettings.from_env(
        {
            "NODE_NAME": NODE,
            "XPUPOOL_BACKENDS": "emulated",
            "XPUPOOL_EMULATED_CONFIG": str(root / "emulated.yaml"),
            "XPUPOOL_INTERVAL_S": "0.05",
            "XPUPOOL_PLUGIN_DIR": str(root / "dp"),
            "XPUPOOL_METRICS_HOST": "127.0.0.1",
            "XPUPOOL_METRICS_PORT": "0",
            "XPUPOOL_REGION_HOST_ROOT": str(root / "regions"),
            "XPUPOOL_CARD_HOST_DIR": str(root / "cards"),
            "XPUPOOL_PODRESOURCES_SOCKET": str(root / "dp" / "pod-resources" / "kubelet.sock"),
            "XPUPOOL_CDI_SPEC_DIR": str(root / "cdi"),
            **extra,
        }
    )


async def test_agent_without_a_cdi_runtime_never_registers(
    short_dir: Path, apiserver: FakeApiServer, kube: KubeApi
) -> None:
    """containerd 1.6 cannot inject CDI devices: the agent does not register xpupool.io/vxpu (the
    node advertises nothing, so nothing is bound there) and publishes why."""
    apiserver.add_node(NODE, runtime="containerd://1.6.20~ds1")
    (short_dir / "dp").mkdir()
    kubelet = FakeKubelet(short_dir / "dp")
    await kubelet.start()
    s = settings(short_dir)
    agent = Agent(s, node_api=kube, pod_api=kube, backends=s.make_backends())
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        for _ in range(300):
            raw = apiserver.nodes[NODE]["metadata"]["annotations"].get(ANN_INVENTORY)
            if raw:
                break
            await asyncio.sleep(0.01)
        inventory = parse_inventory(raw).inventory
        assert inventory is not None
        reason = "xpupool.io/vxpu not served: containerd://1.6.20~ds1 cannot inject CDI"
        assert any(reason in e for e in inventory.errors)
        await asyncio.sleep(0.2)
        assert kubelet.registrations == [] and not agent.serves
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await kubelet.stop()


async def test_cards_held_by_another_device_plugin_are_published(
    short_dir: Path, apiserver: FakeApiServer, kube: KubeApi
) -> None:
    """Coexistence: a pod of the NVIDIA device plugin holds card 1 whole (the kubelet records its
    real device ID, the card UUID); the agent publishes it as held so the scheduler never slices
    it. IDs of whole-card resources that match no card are reported, not ignored."""
    apiserver.add_node(NODE)
    (short_dir / "dp").mkdir()
    kubelet = FakeKubelet(short_dir / "dp")
    await kubelet.start()
    whole_gpu = {"name": "main", "image": "cuda", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    for name, device in (("train-0", f"EMU-{NODE}-1"), ("mig-job", "MIG-5e1f")):
        apiserver.add_pod("ml", name, node=NODE, uid=f"uid-{name}", created="t", annotations={}, containers=[whole_gpu])
        kubelet.hold("ml", name, "main", "nvidia.com/gpu", [device])
    s = settings(short_dir, XPUPOOL_DEVICE_PLUGIN="false")
    agent = Agent(s, node_api=kube, pod_api=kube, backends=s.make_backends())
    try:
        await agent.tick()
        inventory = parse_inventory(apiserver.nodes[NODE]["metadata"]["annotations"][ANN_INVENTORY]).inventory
        assert inventory is not None
        assert [(d.index, d.held_by) for d in inventory.devices] == [(0, ()), (1, ("ml/train-0 (nvidia.com/gpu)",))]
        assert "nvidia.com/gpu device MIG-5e1f held by ml/mig-job matches no card" in inventory.errors
        generation = inventory.generation
        kubelet.remove_pod("ml", "train-0")
        apiserver.pods[("ml", "train-0")]["status"]["phase"] = "Succeeded"
        await agent.tick()
        inventory = parse_inventory(apiserver.nodes[NODE]["metadata"]["annotations"][ANN_INVENTORY]).inventory
        assert inventory is not None and inventory.generation == generation + 1
        assert all(d.held_by == () for d in inventory.devices)
        assert kubelet.podresources.list_calls == 0
    finally:
        if isinstance(agent.holders, HolderIndex):
            await agent.holders.close()
        await kubelet.stop()


def test_time_sliced_replicas_of_a_card_count_as_holding_it() -> None:
    snapshot = HolderSnapshot(
        (
            ContainerDevices("a", "p", "c", "nvidia.com/gpu", frozenset({"GPU-0000::3"})),
            ContainerDevices("a", "q", "c", "xpupool.io/vxpu", frozenset({"GPU-0001::0"})),
        )
    )
    held, unmatched = foreign_held_cards(snapshot, cards())
    assert [(h.index, h.holders) for h in held] == [(0, ("a/p (nvidia.com/gpu)",))] and unmatched == []


def test_slots_per_card_never_exceed_the_shims_tenant_table(short_dir: Path) -> None:
    """The kubelet must never admit a container the shim could not seat on its card."""
    from pydantic import ValidationError

    from xpupool.agent.shim_region import MAX_TENANTS

    assert settings(short_dir, XPUPOOL_SLOTS_PER_CARD=str(MAX_TENANTS)).slots_per_card == MAX_TENANTS
    with pytest.raises(ValidationError, match=f"less than or equal to {MAX_TENANTS}"):
        settings(short_dir, XPUPOOL_SLOTS_PER_CARD=str(MAX_TENANTS + 1))
