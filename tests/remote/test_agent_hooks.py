"""The node agent's hooks for remote vXPUs, against the fake kubelet over real unix sockets (the same
peer as tests/agent): a CPU-only node advertises remote slots so the kubelet admits a pod placed
remote, and PreStartContainer hands its container to the remote wiring (here a stand-in that
records the call; the real one is exercised against the real apiserver in test_kube_remote.py)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent.fake_apiserver import FakeApiServer, vxpu_container  # tests/agent: the same wire fakes
from agent.fake_kubelet import FakeKubelet

from xpupool.agent.allocation import ANN_ALLOCATION, PodSlice, RuntimePaths, Wiring
from xpupool.agent.cdi import CdiSpecDir
from xpupool.agent.deviceplugin import DevicePluginServer, VxpuDevicePlugin
from xpupool.agent.kubeapi import KubeApi
from xpupool.agent.pairing import Pairing
from xpupool.agent.podresources import KubeletPodResources
from xpupool.core.model import Allocation
from xpupool.core.status import Status
from xpupool.kube.objects import encode_allocation

CPU_NODE = "cpu-3"


class RecordingWiring:
    def __init__(self) -> None:
        self.calls: list[tuple[PodSlice, str]] = []

    async def prepare(self, part: PodSlice, region_dir: str) -> tuple[Wiring | None, Status]:
        self.calls.append((part, region_dir))
        return Wiring(envs={"XPUPOOL_REMOTE_ENDPOINT": "10.0.0.9:7070", "LD_PRELOAD": "/x/libcuda.so.1"},
                      mounts=[("/run/xpupool/remote", f"/host/{region_dir}", True)]), Status.success()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="xprh", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def kube() -> AsyncIterator[tuple[FakeApiServer, KubeApi]]:
    server = FakeApiServer()
    await server.start()
    api = KubeApi(server.url, token=server.token)
    yield server, api
    await api.close()
    await server.stop()


async def test_cpu_only_node_admits_a_remote_pod_and_wires_it_remotely(
        short_dir: Path, kube: tuple[FakeApiServer, KubeApi]) -> None:
    apiserver, api = kube
    kubelet = FakeKubelet(short_dir / "dp", cdi_dir=short_dir / "cdi")
    holders = KubeletPodResources(kubelet.podresources_socket)
    wiring = RecordingWiring()
    pairing = Pairing(node=CPU_NODE, holders=holders, pods=api, specs=CdiSpecDir(short_dir / "cdi"), devices=dict,
                      paths=RuntimePaths(region_host_root=str(short_dir / "regions")), remote=wiring)
    plugin = VxpuDevicePlugin(node=CPU_NODE, pre_start=pairing, remote_slots=4)
    server = DevicePluginServer(plugin, plugin_dir=short_dir / "dp", poll_s=0.02, retry_s=0.05)
    stop = asyncio.Event()
    (short_dir / "dp").mkdir()
    await plugin.update_devices([])  # no cards at all
    assert [ident for ident, health, _ in plugin.advertised()] == [f"remote::{i}" for i in range(4)]
    await kubelet.start()
    task = asyncio.create_task(server.run(stop))
    try:
        await asyncio.wait_for(kubelet.registered.wait(), 5)
        alloc = Allocation(pod="ns/nb", node=CPU_NODE, device_node="gpu-1", cards=(2,), share_milli=250,
                           device_memory_mib=(4096,))
        pod = apiserver.add_pod("ns", "nb", node=CPU_NODE, uid="uid-nb", created="2026-12-01T00:00:00Z",
                                annotations={ANN_ALLOCATION: encode_allocation(alloc)},
                                containers=[vxpu_container("main", 1)])
        await kubelet.next_list(0)
        await kubelet.admit(pod)
        made = await kubelet.start_container("ns", "nb", "main")
        ((part, region_dir),) = wiring.calls
        assert part.key == "ns/nb" and part.allocation.device_node == "gpu-1" and part.allocation.cards == (2,)
        assert made.env["XPUPOOL_REMOTE_ENDPOINT"] == "10.0.0.9:7070"
        assert made.mounts["/run/xpupool/remote"] == (f"/host/{region_dir}", True)
        # the client replaces the fail-closed baseline's shim preload: the slice is enforced on the GPU node
        assert made.env["LD_PRELOAD"] == "/x/libcuda.so.1"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await holders.close()
        await kubelet.stop()
