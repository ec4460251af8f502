"""Prometheus metrics of the Kubernetes adapters (one registry, served by the scheduler daemon).

A private :class:`~prometheus_client.CollectorRegistry` keeps tests and multiple daemons in one
process independent of the global default registry. Names follow ``xpupool_<area>_<what>_<unit>``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class KubeMetrics:
    """All adapter metrics; create one per process (``METRICS``) or one per test."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.informer_events = Counter(
            "xpupool_informer_events", "Objects applied to informer stores", ["resource", "type"], registry=r
        )
        self.informer_relists = Counter(
            "xpupool_informer_relists", "Full relists (start-up and 410 Gone)", ["resource"], registry=r
        )
        self.bind_total = Counter("xpupool_bind", "Bind attempts by outcome", ["outcome"], registry=r)
        self.bind_latency = Histogram(
            "xpupool_bind_latency_seconds", "pods/binding POST latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.cycle_latency = Histogram(
            "xpupool_schedule_cycle_seconds",
            "Duration of one scheduling cycle",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.placements = Counter("xpupool_placements", "Placement decisions by outcome", ["outcome"], registry=r)
        self.pending_pods = Gauge("xpupool_pending_pods", "Pods waiting for placement", registry=r)
        self.assumed_pods = Gauge(
            "xpupool_assumed_pods", "Pods placed but not yet confirmed bound by the watch", registry=r
        )
        self.preemptions = Counter("xpupool_preemptions", "Victim pods evicted for preemption", registry=r)
        self.preemptions_refused = Counter(
            "xpupool_preemption_evictions_refused",
            "Evictions the apiserver refused (a PodDisruptionBudget); the plan was abandoned",
            registry=r,
        )
        self.is_leader = Gauge("xpupool_leader", "1 while this replica holds the Lease", registry=r)
        self.lease_transitions = Counter(
            "xpupool_lease_changes", "Times this replica gained or lost leadership", ["change"], registry=r
        )
        self.events_emitted = Counter(
            "xpupool_k8s_events", "Kubernetes Events written, by reason", ["reason"], registry=r
        )


METRICS = KubeMetrics()
