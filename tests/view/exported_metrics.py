"""The metric names xpupool's processes export, collected by running their collectors (not a list).

Each exporter is built the way its process builds it - the agent's card collector and its
owner-labelled per-slice shim collector over a real region file, the scheduler's ``KubeMetrics``,
the webhook's collector, the view service's pool collector over a real snapshot - and asked for
its families. Sample names follow the exposition rules: a counter ``x`` is scraped as
``x_total``, a histogram as ``x_bucket``/``x_sum``/``x_count``.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.metrics import AgentCollector, AgentSnapshot, OwnerLabelledCollector, PairedOwners, QueueLabels
from xpupool.agent.pairing import SliceIndex
from xpupool.agent.shim_region import DeviceConfig, ShimRegion, ShimRegionCollector, SliceRef
from xpupool.core.model import Vendor
from xpupool.kube.metrics import KubeMetrics
from xpupool.kube.testing import fake_node
from xpupool.kube.webhook import WebhookStats
from xpupool.kube.webhook_metrics import LatencyHistogram, WebhookCollector
from xpupool.remote.daemon import Control
from xpupool.remote.metrics import DaemonMetricsCollector
from xpupool.view.build import build_snapshot
from xpupool.view.metrics import PoolCollector

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", ""),
            "gauge": ("",), "info": ("_info",), "unknown": ("",)}


def _families(collectors: Iterable[Collector]) -> list[Metric]:
    return [family for c in collectors for family in c.collect()]


def exported_families() -> list[Metric]:
    with tempfile.TemporaryDirectory() as tmp:
        region = Path(tmp) / "uid-1-0123456789ab" / "region"
        region.parent.mkdir()
        ShimRegion.create(region, [DeviceConfig(ordinal=0, uuid="GPU-0", mem_limit_bytes=1 << 30,
                                                share_request_bp=3000, share_limit_bp=3000)], container_key=1).close()
        device = DeviceInfo(uuid="GPU-0", index=0, vendor=Vendor.NVIDIA, model="H100", memory_mib=81920,
                            utilization_pct=1, memory_used_mib=1, temperature_c=40, power_w=100)
        snapshot = build_snapshot(nodes=[fake_node("n1")], pods=[], now=dt.datetime.now(dt.UTC))
        return _families([
            AgentCollector(AgentSnapshot(node="n1", devices=[device])),
            OwnerLabelledCollector(ShimRegionCollector(lambda: [SliceRef(region.parent.name, str(region))]),
                                   PairedOwners(SliceIndex(), QueueLabels()), node="n1"),
            KubeMetrics().registry,  # the scheduler daemon's registry
            WebhookCollector(WebhookStats(), LatencyHistogram(), lambda: []),
            PoolCollector(lambda: snapshot),
            # a GPU node's agent over a daemon that does not answer: only the up gauge (the daemon's
            # own families are checked against the running daemon in tests/remote/test_daemon_metrics.py)
            DaemonMetricsCollector(Control(Path(tmp) / "no-daemon.sock", timeout_s=0.1), node="n1"),
        ])


def exported_sample_names() -> set[str]:
    names = set()
    for family in exported_families():
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


_NAME = re.compile(r"\b(xpupool_[a-zA-Z0-9_]+|up)\b")


def metric_names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (ours are all ``xpupool_*``; ``up`` is Prometheus')."""
    return {m for m in _NAME.findall(re.sub(r'"[^"]*"', '""', expr))}
