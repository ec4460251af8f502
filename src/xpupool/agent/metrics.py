"""Prometheus exporter of the node agent (``prometheus_client`` collector on an aiohttp endpoint).

A custom collector renders the *latest* snapshot on each scrape, so a card that disappears stops
being exported at once (no stale gauges). Card series are labelled ``node``, ``uuid``, ``index``,
``vendor``, ``model``.

Per-slice series (the shim collector of :mod:`xpupool.agent.shim_region`) are wrapped by
:class:`OwnerLabelledCollector`, which adds the ``namespace``, ``pod`` and ``queue`` of the pod
that owns each slice, so a dashboard can sum by queue and an alert can name the pod. These
labels stay bounded: a node holds at most its slot count of slices, and series of ended pods
vanish at the next scrape. The owner of a slice comes from a :class:`SliceOwners`:
:class:`PairedOwners` reads the pairing's exact slice index (pod and container of each region)
and the pod's queue label.

Endpoints: ``GET /metrics`` (text exposition format), ``GET /healthz`` (200 once a discovery ran).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.pairing import SliceIndex
from xpupool.core.request import LABEL_QUEUE


@dataclass
class AgentSnapshot:
    """What the agent knows now; replaced wholesale by the agent loop."""

    node: str = ""
    devices: Sequence[DeviceInfo] = ()
    inventory_generation: int = 0
    discovery_errors: int = 0
    publish_failures: int = 0
    registrations: int = 0
    discoveries: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class AgentCollector:
    def __init__(self, snapshot: AgentSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        labels = ["node", "uuid", "index", "vendor", "model"]
        util = GaugeMetricFamily(
            "xpupool_card_utilization_percent",
            "Busy time of the card, percent (vendor sample)",
            labels=labels,
        )
        used = GaugeMetricFamily("xpupool_card_memory_used_mib", "Device memory in use, MiB", labels=labels)
        total = GaugeMetricFamily("xpupool_card_memory_total_mib", "Schedulable device memory, MiB", labels=labels)
        healthy = GaugeMetricFamily("xpupool_card_healthy", "1 when the card is healthy", labels=labels)
        temp = GaugeMetricFamily("xpupool_card_temperature_celsius", "Card temperature", labels=labels)
        power = GaugeMetricFamily("xpupool_card_power_watts", "Card power draw", labels=labels)
        for d in snap.devices:
            values = [snap.node, d.uuid, str(d.index), d.vendor.value, d.model]
            total.add_metric(values, d.memory_mib)
            healthy.add_metric(values, 1.0 if d.healthy else 0.0)
            if d.utilization_pct is not None:
                util.add_metric(values, d.utilization_pct)
            if d.memory_used_mib is not None:
                used.add_metric(values, d.memory_used_mib)
            if d.temperature_c is not None:
                temp.add_metric(values, d.temperature_c)
            if d.power_w is not None:
                power.add_metric(values, d.power_w)
        yield from (util, used, total, healthy, temp, power)
        gen = GaugeMetricFamily(
            "xpupool_inventory_generation", "Generation of the published inventory", labels=["node"]
        )
        gen.add_metric([snap.node], snap.inventory_generation)
        yield gen
        errors = GaugeMetricFamily(
            "xpupool_discovery_errors", "Problems reported by the last discovery", labels=["node"]
        )
        errors.add_metric([snap.node], snap.discovery_errors)
        yield errors
        for name, doc, value in (
            ("xpupool_inventory_publish_failures", "Failed inventory publications", snap.publish_failures),
            ("xpupool_device_plugin_registrations", "Successful kubelet registrations", snap.registrations),
            ("xpupool_discoveries", "Discovery rounds run", snap.discoveries),
        ):
            counter = CounterMetricFamily(name, doc, labels=["node"])
            counter.add_metric([snap.node], value)
            yield counter


@dataclass(frozen=True, slots=True)
class OwnerLabels:
    """The owner labels of one slice's series."""

    namespace: str
    pod: str
    queue: str


class SliceOwners(Protocol):
    def owner_of(self, slice_id: str) -> OwnerLabels | None:
        """The owner of ``slice_id`` (a region directory name), or None when unknown. Called on
        every scrape for every slice: must not block or do I/O."""
        ...


class QueueLabels:
    """Pod UID -> the pod's queue (label ``xpupool.io/queue``, else ``default``), from the agent's
    lists of its node's pods. :meth:`needs_refresh` tells the agent when a pod with a slice is not
    known yet (each UID triggers at most one re-list, so a slice whose pod is gone does not make the
    agent list pods every tick)."""

    def __init__(self) -> None:
        self._by_uid: dict[str, str] = {}
        self._looked_up: set[str] = set()

    def update(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """Replace the known pods with ``pods`` (a full list of the node's pods)."""
        by_uid: dict[str, str] = {}
        for pod in pods:
            meta = pod.get("metadata") or {}
            uid = str(meta.get("uid") or "")
            if uid:
                by_uid[uid] = str((meta.get("labels") or {}).get(LABEL_QUEUE) or "default")
        self._by_uid = by_uid
        self._looked_up |= set(by_uid)

    def needs_refresh(self, pod_uids: Iterable[str]) -> bool:
        """True when a UID not yet looked up is among ``pod_uids``; marks them looked up."""
        fresh = set(pod_uids) - self._looked_up
        self._looked_up |= fresh
        return bool(fresh)

    def get(self, pod_uid: str) -> str:
        return self._by_uid.get(pod_uid, "")


class PairedOwners:
    """:class:`SliceOwners` from the pairing's exact slice index (which pod and container each
    region belongs to, :class:`~xpupool.agent.pairing.SliceIndex`) and the pods' queue labels."""

    def __init__(self, index: SliceIndex, queues: QueueLabels) -> None:
        self._index = index
        self._queues = queues

    def owner_of(self, slice_id: str) -> OwnerLabels | None:
        owner = self._index.owner(slice_id)
        if owner is None:
            return None
        return OwnerLabels(owner.namespace, owner.pod, self._queues.get(owner.pod_uid))


OWNER_LABELS = ("namespace", "pod", "queue")


class OwnerLabelledCollector:
    """Re-exports every family of ``inner`` (the per-slice shim collector) with ``node`` and the
    owner labels added to each sample that has a ``slice`` label; unknown owners get empty values,
    so every series of a family keeps the same label names."""

    def __init__(self, inner: Collector, owners: SliceOwners, *, node: str) -> None:
        self._inner = inner
        self._owners = owners
        self._node = node

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labels = dict(sample.labels)
                if "slice" in labels:
                    owner = self._owners.owner_of(labels["slice"])
                    labels.update(zip(OWNER_LABELS, (owner.namespace, owner.pod, owner.queue) if owner else ("",) * 3,
                                      strict=True))
                    labels["node"] = self._node
                out.samples.append(Sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar))
            yield out


def metrics_app(collector: AgentCollector, *extra: Collector) -> web.Application:
    """``/metrics`` over the agent's collector plus ``extra`` ones (the per-slice shim collector)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # duck-typed Collector
    for more in extra:
        registry.register(more)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = collector.snapshot.discoveries > 0
        return web.Response(status=200 if ok else 503, text="ok" if ok else "no discovery yet")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
