"""Prometheus metrics of the admission webhook, served on a plain-HTTP port of their own.

The admission port is HTTPS with a certificate the webhook manages itself (:mod:`xpupool.kube.certs`),
which Prometheus would have to be told to trust; the metrics port carries nothing secret (counts
and latencies, no pod names), so it is plain HTTP (``XPUPOOL_WEBHOOK_METRICS_PORT``, 0 = off).

Series: ``xpupool_webhook_reviews_total{outcome}`` (mutated, refused, passed - a pod that is not
ours, dry_run, error - a body that is not an AdmissionReview), ``xpupool_webhook_review_seconds``
(histogram of the time to answer one review) and ``xpupool_webhook_pool_nodes`` (nodes known to the
pool check; absent before the first list).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from xpupool.core.model import Node
    from xpupool.kube.webhook import WebhookStats

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class LatencyHistogram:
    """Cumulative-on-export histogram of review latencies (no lock: the event loop is one thread)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds


class WebhookCollector:
    def __init__(self, stats: WebhookStats, latency: LatencyHistogram,
                 pool: Callable[[], Sequence[Node] | None]) -> None:
        self._stats = stats
        self._latency = latency
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        reviews = CounterMetricFamily("xpupool_webhook_reviews", "Admission reviews answered, by outcome",
                                      labels=["outcome"])
        for outcome, value in (("mutated", s.mutated), ("refused", s.refused),
                               ("passed", max(0, s.reviews - s.mutated - s.refused)), ("dry_run", s.dry_run),
                               ("error", s.errors)):
            reviews.add_metric([outcome], value)
        yield reviews
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, LATENCY_BUCKETS_S), "+Inf"), self._latency.counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        latency = HistogramMetricFamily("xpupool_webhook_review_seconds", "Time to answer one admission review",
                                        buckets=buckets, sum_value=self._latency.sum_s)
        yield latency
        nodes = GaugeMetricFamily("xpupool_webhook_pool_nodes", "Nodes known to the webhook's pool check")
        pool = self._pool()
        if pool is not None:
            nodes.add_metric([], len(pool))
        yield nodes


def metrics_app(collector: WebhookCollector) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
