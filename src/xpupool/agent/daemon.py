"""The node agent process: discovery loop + inventory publisher + device plugin + exporter.

Every ``interval_s``: run the configured backends (in a worker thread), merge their cards, feed
the device plugin (which streams a ListAndWatch update only on change), publish the inventory on
the Node (idempotent) and refresh the exporter snapshot. Transport errors are logged and retried
on the next tick; nothing is stored on local disk, so a restarted agent derives everything from
the hardware, its config file and the apiserver.

Settings come from the environment (the Helm chart sets them), see :class:`AgentSettings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from xpupool.agent import regions
from xpupool.agent.allocation import RuntimePaths
from xpupool.agent.deviceplugin import (
    DEFAULT_SOCKET,
    DEVICE_PLUGIN_DIR,
    ApiAllocationResolver,
    DevicePluginServer,
    RegionWriter,
    VxpuDevicePlugin,
)
from xpupool.agent.discovery import Backend, DeviceInfo, Discovery, make_backend
from xpupool.agent.kubeapi import KubeApi, NodeApi, PodApi
from xpupool.agent.metrics import AgentCollector, AgentSnapshot, OwnerLabelledCollector, PodListOwners, metrics_app
from xpupool.agent.publisher import InventoryPublisher
from xpupool.agent.regions import ShimRegionWriter
from xpupool.agent.shim_region import ShimRegionCollector, SliceRef

log = logging.getLogger(__name__)


class AgentSettings(BaseModel):
    """Agent configuration; :meth:`from_env` reads ``XPUPOOL_*`` variables."""

    model_config = ConfigDict(extra="forbid")
    node_name: str = Field(min_length=1)
    backends: list[str] = Field(default_factory=lambda: ["nvidia"])
    emulated_config: str = "/etc/xpupool/emulated.yaml"
    slots_per_card: int = Field(default=10, ge=1, le=100)
    interval_s: float = Field(default=5.0, gt=0)
    utilization_interval_s: float = Field(default=30.0, gt=0)
    plugin_dir: str = str(DEVICE_PLUGIN_DIR)
    plugin_socket: str = DEFAULT_SOCKET
    device_plugin: bool = True
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9400, ge=0, le=65535)
    shim_host_dir: str = RuntimePaths().shim_host_dir
    region_host_root: str = RuntimePaths().region_host_root
    card_host_dir: str = RuntimePaths().card_host_dir
    shim_regions: bool = True  # write per-container shim regions at Allocate (limits owned by the agent)
    gc_interval_s: float = Field(default=60.0, gt=0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentSettings:
        env = os.environ if env is None else env
        raw: dict[str, Any] = {"node_name": env.get("XPUPOOL_NODE_NAME") or env.get("NODE_NAME", "")}
        mapping = {
            "XPUPOOL_BACKENDS": "backends",
            "XPUPOOL_EMULATED_CONFIG": "emulated_config",
            "XPUPOOL_SLOTS_PER_CARD": "slots_per_card",
            "XPUPOOL_INTERVAL_S": "interval_s",
            "XPUPOOL_UTILIZATION_INTERVAL_S": "utilization_interval_s",
            "XPUPOOL_PLUGIN_DIR": "plugin_dir",
            "XPUPOOL_PLUGIN_SOCKET": "plugin_socket",
            "XPUPOOL_DEVICE_PLUGIN": "device_plugin",
            "XPUPOOL_METRICS_HOST": "metrics_host",
            "XPUPOOL_METRICS_PORT": "metrics_port",
            "XPUPOOL_SHIM_HOST_DIR": "shim_host_dir",
            "XPUPOOL_CARD_HOST_DIR": "card_host_dir",
            "XPUPOOL_SHIM_REGIONS": "shim_regions",
            "XPUPOOL_GC_INTERVAL_S": "gc_interval_s",
            "XPUPOOL_REGION_HOST_ROOT": "region_host_root",
        }
        for var, key in mapping.items():
            if var in env:
                raw[key] = [b.strip() for b in env[var].split(",") if b.strip()] if key == "backends" else env[var]
        return cls.model_validate(raw)

    def make_backends(self) -> list[Backend]:
        """Build the configured backends; an unknown name raises ``KeyError`` at start-up."""
        options = {"emulated": {"config": self.emulated_config, "node_name": self.node_name}}
        return [make_backend(name, options.get(name, {})) for name in self.backends]


def merge_discoveries(discoveries: Sequence[Discovery]) -> tuple[list[DeviceInfo], list[str]]:
    """All cards of all backends; a card index used by two backends keeps the first and reports the
    second (indexes must be unique per node: allocations name cards by index)."""
    devices: list[DeviceInfo] = []
    errors: list[str] = []
    taken: dict[int, str] = {}
    for discovery in discoveries:
        errors.extend(f"{discovery.vendor.value}: {e}" for e in discovery.errors)
        for device in discovery.devices:
            if device.index in taken:
                errors.append(
                    f"{device.vendor.value}: card index {device.index} ({device.uuid}) already used by "
                    f"{taken[device.index]}; card ignored"
                )
                continue
            taken[device.index] = device.vendor.value
            devices.append(device)
    return devices, errors


class Agent:
    """One agent: wire with fakes in tests, with :class:`KubeApi` in production."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        node_api: NodeApi,
        pod_api: PodApi,
        backends: Sequence[Backend],
        region_writer: RegionWriter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._backends = list(backends)
        self.snapshot = AgentSnapshot(node=settings.node_name)
        self.collector = AgentCollector(self.snapshot)
        self.publisher = InventoryPublisher(
            node_api,
            node=settings.node_name,
            slots_per_card=settings.slots_per_card,
            utilization_interval_s=settings.utilization_interval_s,
        )
        paths = RuntimePaths(
            shim_host_dir=settings.shim_host_dir,
            region_host_root=settings.region_host_root,
            card_host_dir=settings.card_host_dir,
        )
        if region_writer is None and settings.shim_regions:
            region_writer = ShimRegionWriter(
                region_root=Path(settings.region_host_root), card_host_dir=Path(settings.card_host_dir)
            )
        self._pod_api = pod_api
        self._monotonic = monotonic
        #: pod of each slice, for the slice series' namespace/pod/queue labels
        self.owners = PodListOwners()
        self._last_gc_s: float | None = None
        self.plugin = VxpuDevicePlugin(
            node=settings.node_name,
            slots_per_card=settings.slots_per_card,
            resolver=ApiAllocationResolver(pod_api, node=settings.node_name),
            paths=paths,
            region_writer=region_writer,
        )
        self.server = DevicePluginServer(
            self.plugin, plugin_dir=Path(settings.plugin_dir), socket_name=settings.plugin_socket
        )

    def _slice_refs(self) -> list[SliceRef]:
        root = Path(self.settings.region_host_root)
        if not root.is_dir():
            return []
        return [SliceRef(p.parent.name, str(p)) for p in sorted(root.glob(f"*/{regions.REGION_FILE}"))]

    def slice_collector(self) -> OwnerLabelledCollector:
        """Per-slice usage read from the shim regions of this node (issue 4 item 8): granted vs
        used memory, granted vs measured share, throttle time, labelled with the owning pod's
        namespace, name and queue. Slices are listed on every scrape, so ended pods stop being
        exported at once."""
        return OwnerLabelledCollector(ShimRegionCollector(self._slice_refs), self.owners, node=self.settings.node_name)

    async def refresh_owners(self) -> None:
        """Re-list this node's pods when a slice of a pod not seen yet appeared (see
        :class:`~xpupool.agent.metrics.PodListOwners`)."""
        if self.owners.needs_refresh(ref.slice_id for ref in self._slice_refs()):
            self.owners.update(await self._pod_api.list_pods_on_node(self.settings.node_name))

    def discover(self) -> list[Discovery]:
        return [backend.discover() for backend in self._backends]

    async def collect_garbage(self) -> list[str]:
        """Remove shim regions of pods gone from this node (see :func:`regions.collect_garbage`)."""
        pods = await self._pod_api.list_pods_on_node(self.settings.node_name)
        self.owners.update(pods)
        live = {
            str((p.get("metadata") or {}).get("uid", ""))
            for p in pods
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        }
        return await asyncio.to_thread(
            regions.collect_garbage,
            region_root=Path(self.settings.region_host_root),
            card_host_dir=Path(self.settings.card_host_dir),
            live_pod_uids=live,
        )

    async def tick(self) -> None:
        """One round: discover, update the device plugin, publish, refresh metrics, and every
        ``gc_interval_s`` remove the shim regions of pods that are gone."""
        now = self._monotonic()
        if self._last_gc_s is None or now - self._last_gc_s >= self.settings.gc_interval_s:
            self._last_gc_s = now
            try:
                removed = await self.collect_garbage()
            except Exception as exc:  # transport: retried next interval
                log.warning("region garbage collection failed: %s", exc)
            else:
                if removed:
                    log.info("removed shim regions of finished pods: %s", removed)
        try:
            await self.refresh_owners()
        except Exception as exc:  # transport: slices keep empty owner labels until the next tick
            log.warning("listing pods for slice owners failed: %s", exc)
        devices, errors = merge_discoveries(await asyncio.to_thread(self.discover))
        await self.plugin.update_devices(devices)
        snap = self.snapshot
        snap.devices, snap.discovery_errors = devices, len(errors)
        snap.discoveries += 1
        snap.registrations = self.server.registrations
        try:
            outcome = await self.publisher.publish(devices, errors)
        except Exception as exc:  # transport: retried next tick
            snap.publish_failures += 1
            log.warning("publishing the inventory failed (retrying next tick): %s", exc)
            return
        snap.inventory_generation = outcome.inventory.generation
        if outcome.inventory_patched:
            log.info(
                "published inventory generation %d (%d cards, %d problems)",
                outcome.inventory.generation,
                len(devices),
                len(errors),
            )

    async def run(self, stop: asyncio.Event) -> None:
        tasks = []
        if self.settings.device_plugin:
            tasks.append(asyncio.create_task(self.server.run(stop), name="device-plugin"))
        runner = web.AppRunner(metrics_app(self.collector, self.slice_collector()))
        await runner.setup()
        site = web.TCPSite(runner, self.settings.metrics_host, self.settings.metrics_port)
        await site.start()
        try:
            while not stop.is_set():
                await self.tick()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.interval_s)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()


async def main_async(settings: AgentSettings) -> None:
    api = KubeApi.in_cluster()
    agent = Agent(settings, node_api=api, pod_api=api, backends=settings.make_backends())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.run(stop)
    finally:
        await api.close()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("XPUPOOL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(main_async(AgentSettings.from_env()))
