"""The node agent process: discovery loop + inventory publisher + device plugin + exporter.

Every ``interval_s``: run the configured backends (in a worker thread), merge their cards, feed
the device plugin (which streams a ListAndWatch update only on change), ask the kubelet which
cards other device plugins hold (coexistence), publish the inventory on the Node (idempotent) and
refresh the exporter snapshot; every ``gc_interval_s`` remove the CDI specs and shim regions of
containers that are gone. Transport errors are logged and retried on the next tick. What a running
container uses (its region, its CDI spec) lives on the host, written before the container was
created, so an agent restart loses no allocation; everything else is derived again from the
hardware, the kubelet and the apiserver.

At start the agent reads its Node's ``containerRuntimeVersion``: a runtime that cannot inject CDI
devices is refused (:func:`xpupool.agent.cdi.runtime_support`): the device plugin is not
registered, so the node never advertises ``xpupool.io/vxpu`` and the scheduler binds nothing there,
and the reason is published with the inventory errors. ``XPUPOOL_ASSUME_CDI=true`` overrides the
check for a runtime the agent does not know.

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
from xpupool.agent.cdi import DEFAULT_SPEC_DIR, CdiSpecDir, RuntimeSupport, runtime_support
from xpupool.agent.deviceplugin import (
    DEFAULT_SOCKET,
    DEVICE_PLUGIN_DIR,
    HEALTHY,
    DevicePluginServer,
    VxpuDevicePlugin,
)
from xpupool.agent.discovery import Backend, DeviceInfo, Discovery, make_backend
from xpupool.agent.kubeapi import KubeApi, NodeApi, PodApi
from xpupool.agent.metrics import (
    AgentCollector,
    AgentSnapshot,
    OwnerLabelledCollector,
    PairedOwners,
    QueueLabels,
    metrics_app,
)
from xpupool.agent.pairing import Pairing, RegionWriter, SliceIndex, foreign_held_cards
from xpupool.agent.podresources import DEFAULT_SOCKET as PODRESOURCES_SOCKET
from xpupool.agent.podresources import DeviceHolders, HolderIndex, KubeletPodResources
from xpupool.agent.publisher import InventoryPublisher
from xpupool.agent.regions import ShimRegionWriter
from xpupool.agent.shim_region import MAX_TENANTS, ShimRegionCollector, SliceRef
from xpupool.core.request import RES_VXPU
from xpupool.remote.agent_role import RemoteRole, RemoteSettings
from xpupool.remote.served import TokenReviewer

log = logging.getLogger(__name__)


class AgentSettings(BaseModel):
    """Agent configuration; :meth:`from_env` reads ``XPUPOOL_*`` variables."""

    model_config = ConfigDict(extra="forbid")
    node_name: str = Field(min_length=1)
    backends: list[str] = Field(default_factory=lambda: ["nvidia"])
    emulated_config: str = "/etc/xpupool/emulated.yaml"
    # At most the shim's tenant table per card: the kubelet must never admit a container the
    # shim could not seat (the scheduler reads the same number from the inventory).
    slots_per_card: int = Field(default=10, ge=1, le=MAX_TENANTS)
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
    shim_regions: bool = True  # write per-container shim regions at PreStart (limits owned by the agent)
    gc_interval_s: float = Field(default=60.0, gt=0)
    # A region or CDI spec younger than this is never collected (the lists it is checked against
    # may predate it).
    gc_grace_s: float = Field(default=120.0, ge=0)
    podresources_socket: str = str(PODRESOURCES_SOCKET)
    cdi_spec_dir: str = str(DEFAULT_SPEC_DIR)
    assume_cdi: bool = False  # serve even when the runtime is not known to inject CDI devices

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
            "XPUPOOL_GC_GRACE_S": "gc_grace_s",
            "XPUPOOL_REGION_HOST_ROOT": "region_host_root",
            "XPUPOOL_PODRESOURCES_SOCKET": "podresources_socket",
            "XPUPOOL_CDI_SPEC_DIR": "cdi_spec_dir",
            "XPUPOOL_ASSUME_CDI": "assume_cdi",
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


class RefuseEveryToken:
    """A :class:`TokenReviewer` that authenticates nobody (a node serving remote vXPUs needs a real one)."""

    async def review(self, token: str, *, audience: str) -> dict[str, Any]:
        return {"authenticated": False}


class Agent:
    """One agent: wire with fakes in tests, with :class:`KubeApi` in production."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        node_api: NodeApi,
        pod_api: PodApi,
        backends: Sequence[Backend],
        holders: DeviceHolders | None = None,
        region_writer: RegionWriter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        remote: RemoteSettings | None = None,
        token_reviewer: TokenReviewer | None = None,
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
        self._node_api = node_api
        self._pod_api = pod_api
        self._monotonic = monotonic
        #: queue label of each pod with a slice (the slice's pod itself comes from self.slices)
        self.queues = QueueLabels()
        self._last_gc_s: float | None = None
        self._own_holders = holders is None
        self.holders: DeviceHolders = holders or HolderIndex(
            KubeletPodResources(Path(settings.podresources_socket)), pod_api, node=settings.node_name
        )
        self.runtime: RuntimeSupport | None = None
        self.held_cards: dict[str, tuple[str, ...]] = {}
        self.slices = SliceIndex()
        self.plugin: VxpuDevicePlugin
        # remote vXPUs served from this node's cards and/or used by its containers
        self.remote: RemoteRole | None = None
        if remote is not None and remote.enabled:
            self.remote = RemoteRole(
                remote,
                node=settings.node_name,
                nodes=node_api,
                pods=pod_api,
                reviewer=token_reviewer or RefuseEveryToken(),
                cards=lambda: self.plugin.cards(),
                region_root=Path(settings.region_host_root),
                region_writer=region_writer,
            )
        self.pairing = Pairing(
            node=settings.node_name,
            holders=self.holders,
            pods=pod_api,
            specs=CdiSpecDir(Path(settings.cdi_spec_dir)),
            devices=lambda: self.plugin.cards(),
            paths=paths,
            region_writer=region_writer,
            index=self.slices,
            remote=self.remote.client if self.remote is not None else None,
        )
        self.plugin = VxpuDevicePlugin(
            node=settings.node_name,
            slots_per_card=settings.slots_per_card,
            pre_start=self.pairing,
            paths=paths,
            remote_slots=self.remote.settings.slots if self.remote is not None else 0,
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
        owners = PairedOwners(self.slices, self.queues)
        return OwnerLabelledCollector(ShimRegionCollector(self._slice_refs), owners, node=self.settings.node_name)

    async def refresh_owners(self) -> None:
        """Re-list this node's pods when a slice of a pod whose queue is not known yet appeared
        (see :class:`~xpupool.agent.metrics.QueueLabels`)."""
        uids = [o.pod_uid for o in self.slices.owners().values()]
        if self.queues.needs_refresh(uids):
            self.queues.update(await self._pod_api.list_pods_on_node(self.settings.node_name))

    def discover(self) -> list[Discovery]:
        return [backend.discover() for backend in self._backends]

    async def collect_garbage(self) -> list[str]:
        """Remove shim regions of pods gone from this node (see :func:`regions.collect_garbage`)."""
        pods = await self._pod_api.list_pods_on_node(self.settings.node_name)
        self.queues.update(pods)
        live = {
            str((p.get("metadata") or {}).get("uid", ""))
            for p in pods
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        }
        if self.remote is not None:  # regions of slices served to pods on other nodes
            live |= self.remote.live_uids()
        return await asyncio.to_thread(
            regions.collect_garbage,
            region_root=Path(self.settings.region_host_root),
            card_host_dir=Path(self.settings.card_host_dir),
            live_pod_uids=live,
            grace_s=self.settings.gc_grace_s,
        )

    async def check_runtime(self) -> RuntimeSupport | None:
        """Judge the container runtime from the Node's status (once; ``None`` while unreadable)."""
        if self.runtime is None:
            try:
                node = await self._node_api.get_node(self.settings.node_name)
            except Exception as exc:  # transport: retried next tick
                log.warning("cannot read Node %s to check its container runtime: %s", self.settings.node_name, exc)
                return None
            version = str(((node.get("status") or {}).get("nodeInfo") or {}).get("containerRuntimeVersion", ""))
            self.runtime = runtime_support(version)
            if self.runtime.supported:
                log.info("container runtime: %s", self.runtime.reason)
            elif self.settings.assume_cdi:
                log.warning("%s; serving anyway (XPUPOOL_ASSUME_CDI)", self.runtime.reason)
            else:
                log.error("not serving xpupool.io/vxpu: %s", self.runtime.reason)
        return self.runtime

    @property
    def serves(self) -> bool:
        """Whether the device plugin may run (the runtime was judged and can inject CDI devices)."""
        return self.runtime is not None and (self.runtime.supported or self.settings.assume_cdi)

    async def collect_cdi_specs(self) -> list[str]:
        """Remove CDI specs of containers the kubelet no longer lists (see :class:`Pairing`)."""
        return await self.pairing.collect_garbage(grace_s=self.settings.gc_grace_s)

    async def _held(self, devices: Sequence[DeviceInfo]) -> list[str]:
        """Refresh :attr:`held_cards` from the kubelet; problems for the inventory errors."""
        try:
            snapshot = await self.holders.snapshot()
        except Exception as exc:  # transport: keep the last answer, retried next tick
            return [f"cannot read the kubelet's PodResources (cards held by other plugins unknown): {exc}"]
        held, unmatched = foreign_held_cards(snapshot, devices)
        self.held_cards = {h.uuid: h.holders for h in held}
        return unmatched

    async def kubelet_serving(self) -> tuple[bool, str]:
        """Whether the kubelet admits xpupool.io/vxpu pods now, and why not: our device plugin is
        registered and connected, and the kubelet lists every healthy slot as allocatable
        (PodResources ``GetAllocatableResources``: its admission view, ahead of Node status)."""
        if self.runtime is None:
            return False, "container runtime not judged yet"
        if not self.serves:
            return False, self.runtime.reason
        if not self.settings.device_plugin:
            return False, "the device plugin is disabled (XPUPOOL_DEVICE_PLUGIN=false)"
        if not self.server.registered:
            return False, "the device plugin is not registered with the kubelet (yet)"
        healthy = {ident for ident, health, _ in self.plugin.advertised() if health == HEALTHY}
        if not healthy:
            return False, "no healthy card"
        try:
            allocatable = await self.holders.allocatable(RES_VXPU)
        except Exception as exc:  # transport: not serving until the kubelet answers
            return False, f"cannot ask the kubelet what it can allocate: {exc}"
        if not healthy <= allocatable:
            return False, f"the kubelet lists {len(healthy & allocatable)} of {len(healthy)} slots as allocatable"
        return True, ""

    async def tick(self, *, stopping: bool = False) -> None:
        """One round: judge the runtime (until known), discover, update the device plugin, learn
        cards held by other plugins and whether the kubelet serves us, publish, refresh metrics,
        and every ``gc_interval_s`` remove the CDI specs and shim regions of containers that are
        gone. ``stopping``: publish the node as not serving (the agent is shutting down)."""
        await self.check_runtime()
        now = self._monotonic()
        if not stopping and (self._last_gc_s is None or now - self._last_gc_s >= self.settings.gc_interval_s):
            self._last_gc_s = now
            for what, collect in (("shim regions", self.collect_garbage), ("CDI specs", self.collect_cdi_specs)):
                try:
                    removed = await collect()
                except Exception as exc:  # transport: retried next interval
                    log.warning("garbage collection of %s failed: %s", what, exc)
                else:
                    if removed:
                        log.info("removed %s of finished containers: %s", what, removed)
        try:  # host pids of the containers' processes, for the shim's NVML lists
            await asyncio.to_thread(regions.record_host_pids, region_root=Path(self.settings.region_host_root))
        except Exception as exc:  # never fatal: the lists stay empty until the next tick
            log.warning("recording host pids of shim processes failed: %s", exc)
        try:
            await self.refresh_owners()
        except Exception as exc:  # transport: slices keep an empty queue label until the next tick
            log.warning("listing pods for the slices' queue labels failed: %s", exc)
        devices, errors = merge_discoveries(await asyncio.to_thread(self.discover))
        await self.plugin.update_devices(devices)
        if self.remote is not None:
            try:
                await self.remote.tick()
            except Exception as exc:  # transport: retried next tick
                log.warning("remote vXPU upkeep failed (retrying next tick): %s", exc)
        errors.extend(await self._held(devices))
        serving, why = (False, "the agent is stopping") if stopping else await self.kubelet_serving()
        if not serving:
            errors.append(f"{RES_VXPU} not served: {why}")
        snap = self.snapshot
        snap.devices, snap.discovery_errors = devices, len(errors)
        snap.discoveries += 1
        snap.registrations = self.server.registrations
        try:
            outcome = await self.publisher.publish(devices, errors, held=self.held_cards, serving=serving)
        except Exception as exc:  # transport: retried next tick
            snap.publish_failures += 1
            log.warning("publishing the inventory failed (retrying next tick): %s", exc)
            return
        snap.inventory_generation = outcome.inventory.generation
        if outcome.inventory_patched:
            log.info(
                "published inventory generation %d (%d cards, serving %s%s)",
                outcome.inventory.generation,
                len(devices),
                serving,
                "" if serving else f": {why}",
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: tick every ``interval_s``, and at once when the kubelet connection
        changes (registration, a kubelet gone or back). On the way out the node is published as
        not serving *before* the device plugin stops, so the scheduler stops binding first."""
        tasks: list[asyncio.Task[None]] = []
        server_stop = asyncio.Event()
        wake = asyncio.Event()
        self.server.on_change = self.plugin.on_watch_change = wake.set
        remote_collectors = self.remote.collectors() if self.remote is not None else []
        runner = web.AppRunner(metrics_app(self.collector, self.slice_collector(), *remote_collectors))
        await runner.setup()
        site = web.TCPSite(runner, self.settings.metrics_host, self.settings.metrics_port)
        await site.start()
        issuer = await self.remote.start_issuer() if self.remote is not None else None
        try:
            while not stop.is_set():
                wake.clear()
                await self.tick()
                if self.settings.device_plugin and not tasks and self.serves:
                    tasks.append(asyncio.create_task(self.server.run(server_stop), name="device-plugin"))
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
                await asyncio.wait(waits, timeout=self.settings.interval_s, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waits:
                    waiter.cancel()
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.tick(stopping=True), timeout=5.0)
            server_stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()
            if issuer is not None:
                await issuer.cleanup()
            if self._own_holders and isinstance(self.holders, HolderIndex):
                await self.holders.close()


async def main_async(settings: AgentSettings) -> None:
    api = KubeApi.from_env()
    agent = Agent(settings, node_api=api, pod_api=api, backends=settings.make_backends(),
                  remote=RemoteSettings.from_env(os.environ), token_reviewer=api)
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
