"""The whole agent: emulated cards -> device plugin (fake kubelet) + inventory (fake apiserver) +
Prometheus exporter (scraped over HTTP)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from xpupool.agent.allocation import ANN_ALLOCATION
from xpupool.agent.daemon import Agent, AgentSettings, merge_discoveries
from xpupool.agent.discovery import DeviceInfo, Discovery
from xpupool.agent.inventory import ANN_INVENTORY, Inventory, parse_inventory
from xpupool.agent.kubeapi import KubeApi
from xpupool.agent.metrics import metrics_app
from xpupool.agent.shim_region import ShimRegion
from xpupool.core.model import Allocation, Vendor
from xpupool.kube.objects import encode_allocation

from .fake_apiserver import FakeApiServer
from .fake_kubelet import FakeKubelet


async def published(apiserver: FakeApiServer, wanted: Callable[[Inventory], bool]) -> Inventory:
    """The node's inventory once it satisfies ``wanted``."""
    for _ in range(500):
        raw = apiserver.nodes["kw-1"]["metadata"]["annotations"].get(ANN_INVENTORY)
        inventory = parse_inventory(raw).inventory
        if inventory is not None and wanted(inventory):
            return inventory
        await asyncio.sleep(0.01)
    raise AssertionError(f"inventory never became as wanted: {raw}")


def settings(short_dir: Path, config: Path) -> AgentSettings:
    return AgentSettings.from_env(
        {
            "NODE_NAME": "kw-1",
            "XPUPOOL_BACKENDS": "emulated",
            "XPUPOOL_EMULATED_CONFIG": str(config),
            "XPUPOOL_SLOTS_PER_CARD": "3",
            "XPUPOOL_INTERVAL_S": "0.05",
            "XPUPOOL_PLUGIN_DIR": str(short_dir),
            "XPUPOOL_METRICS_HOST": "127.0.0.1",
            "XPUPOOL_METRICS_PORT": "0",
            "XPUPOOL_REGION_HOST_ROOT": str(short_dir / "regions"),
            "XPUPOOL_CARD_HOST_DIR": str(short_dir / "cards"),
            "XPUPOOL_PODRESOURCES_SOCKET": str(short_dir / "pod-resources" / "kubelet.sock"),
            "XPUPOOL_CDI_SPEC_DIR": str(short_dir / "cdi"),
        }
    )


async def test_agent_publishes_serves_and_restarts_without_rewriting(
    short_dir: Path, apiserver: FakeApiServer, kube: KubeApi
) -> None:
    config = short_dir / "emulated.yaml"
    config.write_text("cards:\n  - {model: EMU-40G, memory_mib: 40960, count: 2, utilization_pct: 12}\n")
    apiserver.add_node("kw-1")
    kubelet = FakeKubelet(short_dir, cdi_dir=short_dir / "cdi")
    await kubelet.start()
    s = settings(short_dir, config)
    assert (s.shim_host_dir, s.slots_per_card, s.backends) == ("/var/lib/xpupool/shim", 3, ["emulated"])
    agent = Agent(s, node_api=kube, pod_api=kube, backends=s.make_backends())
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        listed = await kubelet.next_list(0)
        assert len(listed.devices) == 6 and {d.health for d in listed.devices} == {"Healthy"}
        assert agent.runtime is not None and agent.runtime.supported

        # A pod the scheduler placed on card 1 at 25 %: its container start writes its shim region.
        pod = apiserver.add_pod(
            "ns",
            "job",
            node="kw-1",
            uid="uid-job",
            created="2026-11-25T10:00:00Z",
            annotations={
                ANN_ALLOCATION: encode_allocation(
                    Allocation(
                        pod="ns/job",
                        node="kw-1",
                        device_node="kw-1",
                        cards=(1,),
                        share_milli=250,
                        device_memory_mib=(10240,),
                    )
                )
            },
        )
        await kubelet.admit(pod)
        made = await kubelet.start_container("ns", "job", "main")
        assert made.env["XPUPOOL_EMULATED_VISIBLE_DEVICES"] == "1"
        host_dir = made.mounts["/run/xpupool/shim"][0]
        with ShimRegion.open(Path(host_dir) / "region") as region:
            entry = region.config.dev[0]
            assert (entry.uuid.decode(), entry.mem_limit, entry.share_request_bp) == ("EMU-kw-1-1", 10240 << 20, 2500)
        assert (short_dir / "cards" / "EMU-kw-1-1" / "policy").is_file()
        owner = agent.slices.owner(Path(host_dir).name)
        assert owner is not None and (owner.namespace, owner.pod, owner.container) == ("ns", "job", "main")
        inv = await published(apiserver, lambda i: i.serving)
        assert [d.uuid for d in inv.devices] == ["EMU-kw-1-0", "EMU-kw-1-1"]
        serving_generation = inv.generation

        # Health change in the config: the kubelet sees Unhealthy slots; the inventory says so and
        # that the node serves no vXPU any more (no healthy card).
        seen = len(kubelet.lists)
        config.write_text("cards:\n  - {model: EMU-40G, memory_mib: 40960, count: 2, healthy: false}\n")
        update = await kubelet.next_list(seen)
        assert {d.health for d in update.devices} == {"Unhealthy"}
        sick = await published(apiserver, lambda i: not any(d.healthy for d in i.devices))
        assert not sick.serving and sick.generation > serving_generation
        assert "xpupool.io/vxpu not served: no healthy card" in sick.errors
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)

    # A new agent process (no local state) on the same node publishes nothing new.
    patches_before = sum(1 for m, p in apiserver.requests if m == "PATCH")
    again = Agent(s, node_api=kube, pod_api=kube, backends=s.make_backends())
    await again.tick()
    await again.tick()
    assert again.snapshot.inventory_generation == sick.generation
    inventory_patches = sum(1 for m, p in apiserver.requests if m == "PATCH") - patches_before
    assert inventory_patches == 1  # only the first utilisation sample of the new process
    await kubelet.stop()


async def test_metrics_endpoint_exports_per_card_series(
    short_dir: Path, apiserver: FakeApiServer, kube: KubeApi
) -> None:
    config = short_dir / "emulated.yaml"
    config.write_text(
        "cards:\n  - {model: EMU-40G, memory_mib: 40960, count: 2, utilization_pct: 12, memory_used_mib: 1024}\n"
    )
    apiserver.add_node("kw-1")
    s = settings(short_dir, config)
    agent = Agent(s, node_api=kube, pod_api=kube, backends=s.make_backends())
    server = TestServer(metrics_app(agent.collector), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.make_url("/healthz")) as resp:
                assert resp.status == 503  # no discovery yet
            await agent.tick()
            async with http.get(server.make_url("/healthz")) as resp:
                assert resp.status == 200
            async with http.get(server.make_url("/metrics")) as resp:
                assert resp.status == 200
                body = await resp.text()
        labels = 'index="1",model="EMU-40G",node="kw-1",uuid="EMU-kw-1-1",vendor="emulated"'
        assert f"xpupool_card_utilization_percent{{{labels}}} 12.0" in body
        assert f"xpupool_card_memory_used_mib{{{labels}}} 1024.0" in body
        assert f"xpupool_card_healthy{{{labels}}} 1.0" in body
        assert 'xpupool_inventory_generation{node="kw-1"} 1.0' in body
        assert 'xpupool_discoveries_total{node="kw-1"} 1.0' in body

        # A card that disappears stops being exported at once (no stale series).
        config.write_text("cards:\n  - {model: EMU-40G, memory_mib: 40960, count: 1}\n")
        await agent.tick()
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/metrics")) as resp:
            body = await resp.text()
        assert "EMU-kw-1-1" not in body and 'uuid="EMU-kw-1-0"' in body
    finally:
        await server.close()


def test_merge_keeps_indexes_unique() -> None:
    def card(vendor: Vendor, index: int) -> DeviceInfo:
        return DeviceInfo(uuid=f"{vendor.value}-{index}", index=index, vendor=vendor, model="m", memory_mib=1)

    devices, errors = merge_discoveries(
        [
            Discovery(Vendor.NVIDIA, (card(Vendor.NVIDIA, 0), card(Vendor.NVIDIA, 1)), ("NVML slow",)),
            Discovery(Vendor.AMD, (card(Vendor.AMD, 1), card(Vendor.AMD, 2))),
        ]
    )
    assert [d.uuid for d in devices] == ["nvidia-0", "nvidia-1", "amd-2"]
    assert errors == ["nvidia: NVML slow", "amd: card index 1 (amd-1) already used by nvidia; card ignored"]


async def test_metrics_endpoint_exports_per_slice_usage_from_shim_regions(
    short_dir: Path, apiserver: FakeApiServer, kube: KubeApi
) -> None:
    """Issue 4 item 8: the agent's /metrics reads every container region on the node."""
    from xpupool.agent.shim_region import DeviceConfig

    config = short_dir / "emulated.yaml"
    config.write_text("cards:\n  - {model: EMU-40G, memory_mib: 40960, count: 1}\n")
    apiserver.add_node("kw-1")
    s = settings(short_dir, config)
    region_dir = Path(s.region_host_root) / "pod-uid-1_main"
    region_dir.mkdir(parents=True)
    cfg = DeviceConfig(ordinal=0, uuid="EMU-kw-1-0", mem_limit_bytes=4096 * 2**20, share_request_bp=3000,
                       share_limit_bp=6000)
    with ShimRegion.create(region_dir / "region", [cfg], container_key=7) as region:
        region.usage.dev[0].mem_used = 1024 * 2**20
    agent = Agent(s, node_api=kube, pod_api=kube, backends=s.make_backends())
    server = TestServer(metrics_app(agent.collector, agent.slice_collector()), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/metrics")) as resp:
            body = await resp.text()
        # no pod with that UID on the node: the owner labels are empty (see tests/view for owners)
        labels = 'device="EMU-kw-1-0",namespace="",node="kw-1",pod="",queue="",slice="pod-uid-1_main"'
        assert f"xpupool_vxpu_memory_granted_bytes{{{labels}}} 4.294967296e+09" in body
        assert f"xpupool_vxpu_memory_used_bytes{{{labels}}} 1.073741824e+09" in body
        assert f"xpupool_vxpu_share_granted_ratio{{{labels}}} 0.3" in body
        shutil.rmtree(region_dir / "region")
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/metrics")) as resp:
            assert "pod-uid-1_main" not in await resp.text()  # ended slices vanish at once
    finally:
        await server.close()
