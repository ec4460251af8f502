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

import grpc
import pytest

from xpupool._generated.deviceplugin.v1beta1 import api_pb2
from xpupool.agent.allocation import ANN_ALLOCATED, ANN_ALLOCATION, PendingPod, RuntimePaths, slot_id
from xpupool.agent.deviceplugin import ApiAllocationResolver, DevicePluginServer, VxpuDevicePlugin
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.kubeapi import KubeApi
from xpupool.agent.nvidia import NvmlSample, device_from_sample
from xpupool.core.model import Allocation
from xpupool.core.status import Status
from xpupool.kube.objects import encode_allocation

from .fake_apiserver import FakeApiServer
from .fake_kubelet import FakeKubelet

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
    """A RegionWriter that records calls (the real one lives with the shim region layout)."""

    def __init__(self, status: Status) -> None:
        self.status = status
        self.calls: list[tuple[Path, str, list[str]]] = []

    def write(self, *, path: Path, pod: PendingPod, cards: Sequence[DeviceInfo]) -> Status:
        self.calls.append((path, pod.key, [c.uuid for c in cards]))
        return self.status


class Harness:
    def __init__(self, short_dir: Path, kube: KubeApi, writer: RecordingRegionWriter | None = None) -> None:
        self.dir = short_dir / "dp"
        self.dir.mkdir()
        self.regions = short_dir / "regions"
        self.plugin = VxpuDevicePlugin(
            node=NODE,
            slots_per_card=4,
            resolver=ApiAllocationResolver(kube, node=NODE),
            paths=RuntimePaths(region_host_root=str(self.regions)),
            region_writer=writer,
        )
        self.server = DevicePluginServer(self.plugin, plugin_dir=self.dir, poll_s=0.02, retry_s=0.05)
        self.kubelet = FakeKubelet(self.dir)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self, devices: list[DeviceInfo]) -> None:
        await self.plugin.update_devices(devices)
        await self.kubelet.start()
        self.task = asyncio.create_task(self.server.run(self.stop))
        await asyncio.wait_for(self.kubelet.registered.wait(), 5)

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)
        await self.kubelet.stop()

    def stub(self) -> object:
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
    assert reg.options.get_preferred_allocation_available
    assert harness.kubelet.options[0].get_preferred_allocation_available
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


async def test_allocate_wires_the_container_to_the_schedulers_slice(harness: Harness, apiserver: FakeApiServer) -> None:
    """Two pods were bound with allocations; the kubelet asks for one slot at a time. The hint
    steers it to the oldest pod's card; Allocate returns env, mounts and device nodes of the
    scheduler's card (by UUID) and claims the pod, so the next Allocate serves the other pod."""
    apiserver.add_pod(
        "team-a",
        "older",
        node=NODE,
        uid="uid-older",
        created="2026-11-25T10:00:00Z",
        annotations={ANN_ALLOCATION: allocation([1], 300, [24576])},
    )
    apiserver.add_pod(
        "team-a",
        "newer",
        node=NODE,
        uid="uid-newer",
        created="2026-11-25T10:00:05Z",
        # Written exactly as the scheduler writes it (versioned camelCase form).
        annotations={
            ANN_ALLOCATION: encode_allocation(
                Allocation(
                    pod="team-a/newer",
                    node=NODE,
                    device_node=NODE,
                    cards=(0,),
                    share_milli=500,
                    device_memory_mib=(40960,),
                )
            )
        },
    )
    apiserver.add_pod(
        "team-b",
        "elsewhere",
        node="gpu-2",
        uid="uid-x",
        created="2026-11-25T09:00:00Z",
        annotations={ANN_ALLOCATION: allocation([0], 500, [40960], node="gpu-2")},
    )
    await harness.start(h100s())
    stub = harness.stub()
    available = [slot_id(u, s) for u in UUIDS for s in range(4)]

    hint = await stub.GetPreferredAllocation(
        api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=1)
            ]
        )
    )
    chosen = list(hint.container_responses[0].deviceIDs)
    assert chosen == [slot_id(UUIDS[1], 0)]

    response = await stub.Allocate(
        api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=chosen)])
    )
    wiring = response.container_responses[0]
    assert wiring.envs["CUDA_VISIBLE_DEVICES"] == UUIDS[1]
    assert wiring.envs["NVIDIA_VISIBLE_DEVICES"] == UUIDS[1]
    assert wiring.envs["XPUPOOL_CORE_LIMIT_PCT"] == "30"
    assert wiring.envs["XPUPOOL_MEMORY_LIMIT_MIB"] == "24576"
    assert wiring.envs["LD_PRELOAD"] == "/usr/local/xpupool/lib/libxpushim.so"
    assert wiring.envs["XPUPOOL_SHIM_REGION"] == wiring.envs["XPUSHIM_REGION"] == "/run/xpupool/shim/region"
    assert next((d.container_path, d.permissions) for d in wiring.devices) == ("/dev/nvidia1", "rw")
    assert "/dev/nvidia0" not in {d.host_path for d in wiring.devices}
    assert "/dev/nvidiactl" in {d.host_path for d in wiring.devices}
    mounts = {m.container_path: (m.host_path, m.read_only) for m in wiring.mounts}
    assert mounts["/usr/local/xpupool/lib"] == ("/var/lib/xpupool/shim", True)
    region_host, read_only = mounts["/run/xpupool/shim"]
    assert not read_only and Path(region_host).is_dir()
    assert Path(region_host).parent == harness.regions and Path(region_host).name.startswith("uid-older-")
    assert wiring.annotations["xpupool.io/pod"] == "team-a/older"
    claim = json.loads(apiserver.pods[("team-a", "older")]["metadata"]["annotations"][ANN_ALLOCATED])
    assert claim == {"deviceIDs": chosen}

    # The kubelet repeats the same Allocate (e.g. after its own restart): same pod, same answer.
    again = await stub.Allocate(
        api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=chosen)])
    )
    assert dict(again.container_responses[0].envs) == dict(wiring.envs)

    # The kubelet ignores the hint and takes a slot on card 1 again: the pod left is "newer",
    # and the container is bound to the scheduler's card 0, not to the kubelet's slot.
    second = await stub.Allocate(
        api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=[slot_id(UUIDS[1], 2)])]
        )
    )
    assert second.container_responses[0].envs["CUDA_VISIBLE_DEVICES"] == UUIDS[0]
    assert second.container_responses[0].envs["XPUPOOL_CORE_LIMIT_PCT"] == "50"

    # Nobody left: the kubelet gets a clear error (it puts it on the pod as an admission failure).
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Allocate(
            api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=[slot_id(UUIDS[0], 3)])]
            )
        )
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no pod on gpu-1 has an unclaimed xpupool allocation" in (err.value.details() or "")


async def test_allocate_refuses_unhealthy_cards_and_bad_allocations(harness: Harness, apiserver: FakeApiServer) -> None:
    apiserver.add_pod(
        "ns",
        "on-lost-card",
        node=NODE,
        uid="u1",
        created="2026-11-25T10:00:00Z",
        annotations={ANN_ALLOCATION: allocation([1], 1000, [81920])},
    )
    await harness.start(h100s(healthy=(True, False)))
    stub = harness.stub()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Allocate(
            api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=[slot_id(UUIDS[0], 0)])]
            )
        )
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "card 1" in (err.value.details() or "") and "unhealthy" in (err.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Allocate(
            api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["GPU-not-here::0"])]
            )
        )
    assert "unknown device IDs" in (err.value.details() or "")


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
    apiserver.add_pod(
        "ns",
        "a",
        node=NODE,
        uid="uid-a",
        created="2026-11-25T10:00:00Z",
        annotations={ANN_ALLOCATION: allocation([1, 0], 1000, [81920, 81920])},
    )
    writer = RecordingRegionWriter(Status.success())
    h = Harness(short_dir, kube, writer)
    await h.start(h100s())
    try:
        stub = h.stub()
        ids = [slot_id(UUIDS[0], 0), slot_id(UUIDS[1], 0)]
        response = await stub.Allocate(
            api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)])
        )
        ((path, pod_key, cards),) = writer.calls
        mounts = {m.container_path: m.host_path for m in response.container_responses[0].mounts}
        assert path == Path(mounts["/run/xpupool/shim"]) / "region"
        assert (pod_key, cards) == ("ns/a", [UUIDS[1], UUIDS[0]])  # the scheduler's card order
        assert response.container_responses[0].envs["CUDA_VISIBLE_DEVICES"] == f"{UUIDS[1]},{UUIDS[0]}"

        writer.status = Status.error("region file system is read-only")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Allocate(
                api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)])
            )
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "region file system is read-only" in (err.value.details() or "")
    finally:
        await h.close()
