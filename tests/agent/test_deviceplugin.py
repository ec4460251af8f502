"""The device plugin against a kubelet-protocol peer over real unix sockets.

The fake kubelet (``fake_kubelet.py``) serves ``kubelet.sock``, dials the plugin back on
registration and keeps a ``ListAndWatch`` stream; the pod side is a fake apiserver on loopback
HTTP, so the Allocate path exercises the same HTTP calls as in a cluster.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from xpupool._generated.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from xpupool.agent.allocation import ANN_ALLOCATION, PodSlice, RuntimePaths, slot_id
from xpupool.agent.cdi import CdiSpecDir, qualified_name
from xpupool.agent.deviceplugin import DevicePluginServer, VxpuDevicePlugin
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.kubeapi import KubeApi
from xpupool.agent.nvidia import NvmlSample, device_from_sample
from xpupool.agent.pairing import Pairing
from xpupool.agent.podresources import HolderIndex, KubeletPodResources
from xpupool.agent.regions import ShimRegionWriter
from xpupool.core.model import Allocation
from xpupool.core.status import Status
from xpupool.kube.objects import encode_allocation

from .fake_apiserver import FakeApiServer, vxpu_container
from .fake_kubelet import ContainerStartError, FakeKubelet

NODE = "gpu-1"
GIB = 1024**3
UUIDS = ("GPU-1f8e4a6c-0000-4c1e-9b61-2b1d1a6f0001", "GPU-1f8e4a6c-0000-4c1e-9b61-2b1d1a6f0002")


def h100s(*, healthy: tuple[bool, bool] = (True, True)) -> list[DeviceInfo]:
    cards = []
    for i, uuid in enumerate(UUIDS):
        sample = NvmlSample(
            index=i,
            uuid=uuid,
            name="NVIDIA H100 80GB HBM3",
            memory_total_bytes=80 * GIB,
            memory_reserved_bytes=0,
            memory_used_bytes=0,
            gpu_util_pct=0,
            minor_number=i,
            temperature_c=30,
            power_mw=70_000,
            numa_node=i,
            error="" if healthy[i] else "NVML: GPU is lost",
        )
        cards.append(device_from_sample(sample))
    return cards


def allocation(cards: list[int], share_milli: int, memory: list[int], node: str = NODE) -> str:
    return json.dumps(
        {
            "node": node,
            "device_node": node,
            "cards": cards,
            "share_milli": share_milli,
            "device_memory_mib": memory,
        }
    )


class RecordingRegionWriter:
    """The real region writer, recording its calls; ``status`` set to an error makes it refuse."""

    def __init__(self, root: Path, status: Status | None = None) -> None:
        self.real = ShimRegionWriter(region_root=root / "regions", card_host_dir=root / "cards")
        self.status = status or Status.success()
        self.calls: list[tuple[Path, str, list[str]]] = []

    def write(self, *, path: Path, pod: PodSlice, cards: Sequence[DeviceInfo]) -> Status:
        self.calls.append((path, pod.key, [c.uuid for c in cards]))
        return self.real.write(path=path, pod=pod, cards=cards) if self.status.ok else self.status


class Harness:
    """Plugin + pairing against the fake kubelet (registration, device manager, PodResources and a
    CDI-applying runtime stand-in) and the fake apiserver."""

    def __init__(self, short_dir: Path, kube: KubeApi, writer: RecordingRegionWriter | None = None) -> None:
        self.dir = short_dir / "dp"
        self.dir.mkdir()
        self.regions = short_dir / "regions"
        self.cdi = short_dir / "cdi"
        self.writer = writer or RecordingRegionWriter(short_dir)
        self.kubelet = FakeKubelet(self.dir, cdi_dir=self.cdi)
        self.holders = HolderIndex(KubeletPodResources(self.kubelet.podresources_socket), kube, node=NODE)
        paths = RuntimePaths(region_host_root=str(self.regions), card_host_dir=str(short_dir / "cards"))
        self.pairing = Pairing(
            node=NODE,
            holders=self.holders,
            pods=kube,
            specs=CdiSpecDir(self.cdi),
            devices=lambda: self.plugin.cards(),
            paths=paths,
            region_writer=self.writer,
        )
        self.plugin = VxpuDevicePlugin(node=NODE, slots_per_card=4, pre_start=self.pairing, paths=paths)
        self.server = DevicePluginServer(self.plugin, plugin_dir=self.dir, poll_s=0.02, retry_s=0.05)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self, devices: list[DeviceInfo]) -> None:
        await self.plugin.update_devices(devices)
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

    def stub(self) -> api_pb2_grpc.DevicePluginStub:
        return self.kubelet.plugin_stub(self.server.socket_path.name)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``predicate``: the kubelet's Register returns before the plugin records the outcome."""
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


@pytest.fixture
async def harness(short_dir: Path, kube: KubeApi) -> AsyncIterator[Harness]:
    h = Harness(short_dir, kube)
    yield h
    await h.close()


async def test_serves_first_then_registers_and_streams_health(harness: Harness) -> None:
    """Registration carries our resource and socket name; the kubelet could dial back at once
    (it fetched the options inside Register), and ListAndWatch streams every slot of every card."""
    await harness.start(h100s())
    reg = harness.kubelet.registrations[0]
    assert (reg.version, reg.endpoint, reg.resource_name) == (
        "v1beta1",
        "xpupool-vxpu.sock",
        "xpupool.io/vxpu",
    )
    assert reg.options.pre_start_required and not reg.options.get_preferred_allocation_available
    assert harness.kubelet.options[0].pre_start_required
    first = await harness.kubelet.next_list(0)
    assert sorted(d.ID for d in first.devices) == sorted(slot_id(u, s) for u in UUIDS for s in range(4))
    assert {d.health for d in first.devices} == {"Healthy"}
    assert {d.topology.nodes[0].ID for d in first.devices if d.ID.startswith(UUIDS[1])} == {1}

    # Card 1 is lost: a new full list with its four slots Unhealthy.
    seen = len(harness.kubelet.lists)
    await harness.plugin.update_devices(h100s(healthy=(True, False)))
    update = await harness.kubelet.next_list(seen)
    health = {d.ID: d.health for d in update.devices}
    assert len(health) == 8
    assert [health[slot_id(UUIDS[1], s)] for s in range(4)] == ["Unhealthy"] * 4
    assert health[slot_id(UUIDS[0], 0)] == "Healthy"

    # An unchanged discovery sends nothing.
    assert await harness.plugin.update_devices(h100s(healthy=(True, False))) is False


def bind(apiserver: FakeApiServer, name: str, cards: list[int], share_milli: int, memory: list[int]) -> dict[str, Any]:
    """A pod the scheduler bound to NODE with its allocation (written as the scheduler writes it)."""
    allocation = Allocation(
        pod=f"team-a/{name}",
        node=NODE,
        device_node=NODE,
        cards=tuple(cards),
        share_milli=share_milli,
        device_memory_mib=tuple(memory),
    )
    return apiserver.add_pod(
        "team-a",
        name,
        node=NODE,
        uid=f"uid-{name}",
        created="2026-11-25T10:00:00Z",
        annotations={ANN_ALLOCATION: encode_allocation(allocation)},
        containers=[vxpu_container("main", len(cards))],
    )


async def test_allocate_answers_from_the_device_ids_alone(harness: Harness, apiserver: FakeApiServer) -> None:
    """Allocate is not told which pod it serves, so it names nothing pod-specific: the CDI device
    of exactly these IDs (order does not matter) and a fail-closed baseline. It reads no pod."""
    await harness.start(h100s())
    stub = harness.stub()
    ids = [slot_id(UUIDS[1], 3), slot_id(UUIDS[0], 0)]
    response = await stub.Allocate(
        api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)])
    )
    answer = response.container_responses[0]
    assert [d.name for d in answer.cdi_devices] == [qualified_name(reversed(ids))]
    assert qualified_name(ids).startswith("xpupool.io/vxpu=v")
    assert dict(answer.envs) == {
        "LD_PRELOAD": "/usr/local/xpupool/lib/libxpushim.so",
        "XPUSHIM_REGION": "/run/xpupool/shim/region",
        "NVIDIA_VISIBLE_DEVICES": "void",
    }
    assert [(m.container_path, m.host_path, m.read_only) for m in answer.mounts] == [
        ("/usr/local/xpupool/lib", "/var/lib/xpupool/shim", True)
    ]
    assert not answer.devices and not answer.annotations
    assert not [r for r in apiserver.requests if "/pods" in r[1]]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Allocate(
            api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["GPU-not-here::0"])]
            )
        )
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "unknown device IDs" in (err.value.details() or "")


async def test_container_gets_the_slice_of_the_pod_holding_its_ids(harness: Harness, apiserver: FakeApiServer) -> None:
    """The kubelet admits pods in its own order and picks slot IDs by count, on any card; the
    container still receives its own pod's slice on the scheduler's card, through CDI."""
    older = bind(apiserver, "older", [1], 300, [24576])
    newer = bind(apiserver, "newer", [0], 500, [40960])
    await harness.start(h100s())
    await harness.kubelet.admit(newer)
    await harness.kubelet.admit(older)
    for name, card, pct, memory in (("older", 1, "30", "24576"), ("newer", 0, "50", "40960")):
        made = await harness.kubelet.start_container("team-a", name, "main")
        assert made.env["CUDA_VISIBLE_DEVICES"] == made.env["NVIDIA_VISIBLE_DEVICES"] == UUIDS[card]
        assert (made.env["XPUPOOL_CORE_LIMIT_PCT"], made.env["XPUPOOL_MEMORY_LIMIT_MIB"]) == (pct, memory)
        assert (made.env["XPUPOOL_POD"], made.env["XPUPOOL_CONTAINER"]) == (f"team-a/{name}", "main")
        assert made.env["LD_PRELOAD"] == "/usr/local/xpupool/lib/libxpushim.so"
        assert made.env["XPUSHIM_REGION"] == "/run/xpupool/shim/region"
        assert made.devices[f"/dev/nvidia{card}"] == f"/dev/nvidia{card}"
        assert f"/dev/nvidia{1 - card}" not in made.devices and "/dev/nvidiactl" in made.devices
        assert made.mounts["/usr/local/xpupool/lib"] == ("/var/lib/xpupool/shim", True)
        # The agent-owned region is read-only; only the container's own usage file is writable.
        region_host, read_only = made.mounts["/run/xpupool/shim"]
        assert read_only and Path(region_host).is_dir()
        assert made.mounts["/run/xpupool/shim/region/usage"] == (f"{region_host}/region/usage", False)
        assert Path(region_host).parent == harness.regions and Path(region_host).name.startswith(f"uid-{name}-")


async def test_refusals_reach_the_kubelet_with_the_reason(harness: Harness, apiserver: FakeApiServer) -> None:
    """PreStartContainer fails (so the container is not created) with a message that says why."""
    on_lost_card = bind(apiserver, "on-lost-card", [1], 1000, [81920])
    foreign = apiserver.add_pod(
        "team-a", "kube-scheduled", node=NODE, uid="uid-f", created="2026-11-25T10:00:00Z", annotations={}
    )
    await harness.start(h100s(healthy=(True, False)))
    await harness.kubelet.admit(on_lost_card)
    await harness.kubelet.admit(foreign)
    with pytest.raises(ContainerStartError) as err:
        await harness.kubelet.start_container("team-a", "on-lost-card", "main")
    assert "card 1" in str(err.value) and "unhealthy" in str(err.value)
    with pytest.raises(ContainerStartError) as err:
        await harness.kubelet.start_container("team-a", "kube-scheduled", "main")
    assert "no xpupool.io/allocation annotation" in str(err.value) and "schedulerName: xpupool" in str(err.value)
    # IDs the kubelet lists for nobody: refused, nothing guessed.
    with pytest.raises(grpc.aio.AioRpcError) as rpc:
        await harness.stub().PreStartContainer(
            api_pb2.PreStartContainerRequest(devices_ids=[slot_id(UUIDS[0], 3)]), timeout=5
        )
    assert rpc.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no container of the pods on this node holds" in (rpc.value.details() or "")
    assert not list(harness.cdi.glob("*.json"))


async def test_reregisters_after_kubelet_restart(harness: Harness) -> None:
    """A kubelet restart deletes every socket and recreates kubelet.sock: the plugin serves again
    and registers again, and the new kubelet gets a fresh full device list."""
    await harness.start(h100s())
    await harness.kubelet.next_list(0)
    await wait_until(lambda: harness.server.registrations == 1)
    seen = len(harness.kubelet.lists)
    await harness.kubelet.restart()
    assert not harness.server.socket_path.exists()
    await asyncio.wait_for(harness.kubelet.registered.wait(), 5)
    await wait_until(lambda: harness.server.registrations == 2)
    assert harness.server.socket_path.is_socket()
    relisted = await harness.kubelet.next_list(seen)
    assert len(relisted.devices) == 8
    assert len(harness.kubelet.registrations) == 2


async def test_refused_registration_is_reported_and_retried(short_dir: Path, kube: KubeApi) -> None:
    h = Harness(short_dir, kube)
    h.kubelet.refuse = "resource xpupool.io/vxpu already registered"
    await h.plugin.update_devices(h100s())
    await h.kubelet.start()
    h.task = asyncio.create_task(h.server.run(h.stop))
    try:
        for _ in range(200):
            if not h.server.last_status.ok and "already registered" in h.server.last_status.message():
                break
            await asyncio.sleep(0.01)
        assert "INVALID_ARGUMENT" in h.server.last_status.message()
        assert h.server.registrations == 0
        h.kubelet.refuse = ""
        await asyncio.wait_for(h.kubelet.registered.wait(), 5)
        await wait_until(lambda: h.server.last_status.ok)
        assert h.server.registrations == 1
    finally:
        await h.close()


async def test_region_is_written_before_the_container_starts_and_failure_is_fatal(
    short_dir: Path, kube: KubeApi, apiserver: FakeApiServer
) -> None:
    pod = apiserver.add_pod(
        "ns",
        "a",
        node=NODE,
        uid="uid-a",
        created="2026-11-25T10:00:00Z",
        annotations={ANN_ALLOCATION: allocation([1, 0], 1000, [81920, 81920])},
        containers=[vxpu_container("main", 2)],
    )
    writer = RecordingRegionWriter(short_dir)
    h = Harness(short_dir, kube, writer)
    await h.start(h100s())
    try:
        await h.kubelet.admit(pod)
        assert writer.calls == []  # Allocate writes nothing pod-specific
        made = await h.kubelet.start_container("ns", "a", "main")
        ((path, pod_key, cards),) = writer.calls
        assert path == Path(made.mounts["/run/xpupool/shim"][0]) / "region"
        assert (pod_key, cards) == ("ns/a", [UUIDS[1], UUIDS[0]])  # the scheduler's card order
        assert made.env["CUDA_VISIBLE_DEVICES"] == f"{UUIDS[1]},{UUIDS[0]}"

        writer.status = Status.error("region file system is read-only")
        with pytest.raises(ContainerStartError) as err:
            await h.kubelet.start_container("ns", "a", "main")
        assert "region file system is read-only" in str(err.value)
    finally:
        await h.close()
