"""Prometheus exporter of the node agent (``prometheus_client`` collector on an aiohttp endpoint).

A custom collector renders the *latest* snapshot on each scrape, so a card that disappears stops
being exported at once (no stale gauges). Labels are bounded: one series per card of this node
(``uuid``, ``index``, ``vendor``, ``model``), no pod names.

Endpoints: ``GET /metrics`` (text exposition format), ``GET /healthz`` (200 once a discovery ran).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from xpupool.agent.discovery import DeviceInfo


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
