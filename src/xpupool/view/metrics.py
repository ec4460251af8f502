"""Prometheus metrics of the view service: the pool as the scheduler accounts it.

The node agents export what each card and slice *uses*; only the pool-wide view knows what each
card has *allocated*, what waits and how queues stand, so those series come from here (one
replica, rendered from the latest snapshot on each scrape: no stale series).

Labels are bounded by the pool's size: ``node``/``index``/``uuid``/``model`` per card, ``queue``
per queue, ``client_node``/``device_node`` per remote pair; no pod names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from xpupool.view.model import PoolSnapshot


class PoolCollector:
    """Collector over ``snapshot()`` (None before the first snapshot: nothing exported)."""

    def __init__(self, snapshot: Callable[[], PoolSnapshot | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        card_labels = ["node", "index", "uuid", "model"]
        allocated = GaugeMetricFamily("xpupool_pool_card_allocated_ratio",
                                      "Compute allocated on the card (sum of its slices' shares, 1 = whole card)",
                                      labels=card_labels)
        allocated_mem = GaugeMetricFamily("xpupool_pool_card_allocated_memory_mib",
                                          "Device memory allocated on the card (sum of its slices' quotas)",
                                          labels=card_labels)
        slices = GaugeMetricFamily("xpupool_pool_card_slices", "Slices (pods) on the card", labels=card_labels)
        cards = GaugeMetricFamily("xpupool_pool_cards", "Cards in the pool", labels=["state"])
        pending = GaugeMetricFamily("xpupool_pool_pending_pods", "Pods waiting for xpupool", labels=["queue"])
        oldest = GaugeMetricFamily("xpupool_pool_pending_oldest_seconds",
                                   "How long the longest-waiting pending pod of the queue has waited",
                                   labels=["queue"])
        q_guar = GaugeMetricFamily("xpupool_queue_guaranteed_cards", "Cards guaranteed to the queue",
                                   labels=["queue"])
        q_limit = GaugeMetricFamily("xpupool_queue_limit_cards", "Hard cap of the queue in cards (absent: none)",
                                    labels=["queue"])
        q_used = GaugeMetricFamily("xpupool_queue_used_cards", "Cards used by the queue's running pods",
                                   labels=["queue"])
        q_borrowed = GaugeMetricFamily("xpupool_queue_borrowed_cards", "Cards used above the queue's guarantee",
                                       labels=["queue"])
        q_running = GaugeMetricFamily("xpupool_queue_running_pods", "Running pods of the queue", labels=["queue"])
        remote = GaugeMetricFamily("xpupool_pool_remote_sessions", "Remote vXPUs by client and card node",
                                   labels=["client_node", "device_node"])
        remote_errors = GaugeMetricFamily(
            "xpupool_pool_remote_session_errors",
            "Remote vXPUs that cannot work: their card node is missing or not ready, or their card unhealthy",
            labels=["client_node", "device_node", "reason"])
        agent = GaugeMetricFamily("xpupool_pool_agent_reachable",
                                  "1 when the node's agent answered the view's last scrape", labels=["node"])
        families = (allocated, allocated_mem, slices, cards, pending, oldest, q_guar, q_limit, q_used, q_borrowed,
                    q_running, remote, remote_errors, agent)
        if snap is None:
            yield from families
            return
        for node in snap.nodes:
            for card in node.cards:
                values = [node.name, str(card.index), card.uuid, card.model]
                allocated.add_metric(values, card.allocated_pct / 100)
                allocated_mem.add_metric(values, card.allocated_memory_mib)
                slices.add_metric(values, len(card.slices))
            if node.agent_reachable is not None:
                agent.add_metric([node.name], 1.0 if node.agent_reachable else 0.0)
        t = snap.totals
        cards.add_metric(["total"], t.cards)
        cards.add_metric(["healthy"], t.healthy_cards)
        cards.add_metric(["idle"], t.idle_cards)
        cards.add_metric(["allocated"], t.allocated_cards)
        cards.add_metric(["free"], t.free_cards)
        # counted here, not q.pending: a declared queue's q.pending is the scheduler's status figure
        waiting = Counter(p.queue for p in snap.pending)
        for q in snap.queues:
            pending.add_metric([q.name], waiting[q.name])
            oldest.add_metric([q.name], q.oldest_pending_s)
            q_guar.add_metric([q.name], q.guarantee.cards)
            if q.limit.cards is not None:
                q_limit.add_metric([q.name], q.limit.cards)
            q_used.add_metric([q.name], q.used.cards)
            q_borrowed.add_metric([q.name], q.borrowed.cards)
            q_running.add_metric([q.name], q.running)
        pairs = Counter((r.client_node, r.device_node) for r in snap.remote)
        broken = Counter((r.client_node, r.device_node, r.problem) for r in snap.remote if r.problem)
        for (client, device), count in sorted(pairs.items()):
            remote.add_metric([client, device], count)
        for labels, count in sorted(broken.items()):
            remote_errors.add_metric(list(labels), count)
        yield from families
