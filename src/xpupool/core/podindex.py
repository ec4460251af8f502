"""Which pods run where, by labels: the counts inter-pod affinity and topology spread need.

Kept by :class:`~xpupool.core.cluster.ClusterState` in step with its ledger (every reserve adds
the pod on its node, every release removes it), so a what-if inside a
:class:`~xpupool.core.statement.Statement` sees the same counts the real placement will.

A *query* is a conjunction of ``(label selector, namespaces)`` pairs; its answer is a per-node
count of pods matching all of them. The first ask scans the pods once; afterwards the answer is
kept current on every add and remove (``watched``), so asking again costs nothing. At most
``max_watched`` queries are kept (least recently asked dropped first).

The index also keeps, per distinct required anti-affinity term of the pods it holds, the nodes of
those pods (``anti_terms``): kube-scheduler refuses a node when an *existing* pod's anti-affinity
matches the incoming pod (the symmetric rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from xpupool.core.constraints import LabelSelector, PodAffinityTerm

IntArray = npt.NDArray[np.int64]

#: One conjunct: pods matching ``selector`` in ``namespaces`` (None: any namespace).
Clause = tuple[LabelSelector, frozenset[str] | None]
Query = tuple[Clause, ...]


@dataclass(frozen=True, slots=True)
class IndexedPod:
    node: int
    namespace: str
    labels: Mapping[str, str]
    anti_terms: tuple[PodAffinityTerm, ...]


def _matches(query: Query, namespace: str, labels: Mapping[str, str]) -> bool:
    for selector, namespaces in query:
        if namespaces is not None and namespace not in namespaces:
            return False
        if not selector.matches(labels):
            return False
    return True


class PodIndex:
    """Pods per node by labels, with incrementally maintained per-node counts for queries."""

    def __init__(self, num_nodes: int, *, max_watched: int = 256) -> None:
        self.num_nodes = num_nodes
        self.max_watched = max_watched
        self.pods: dict[str, IndexedPod] = {}
        self.watched: dict[Query, IntArray] = {}
        #: (existing pod's anti-affinity term, that pod's namespace) -> per-node pod count
        self.anti_terms: dict[tuple[PodAffinityTerm, str], IntArray] = {}

    def copy(self) -> PodIndex:
        clone = PodIndex(self.num_nodes, max_watched=self.max_watched)
        clone.pods = dict(self.pods)
        clone.watched = {k: v.copy() for k, v in self.watched.items()}
        clone.anti_terms = {k: v.copy() for k, v in self.anti_terms.items()}
        return clone

    def add(
        self,
        name: str,
        node: int,
        namespace: str,
        labels: Mapping[str, str],
        anti_terms: tuple[PodAffinityTerm, ...] = (),
    ) -> None:
        """Record ``name`` on ``node`` (idempotent per name: a second add replaces the first)."""
        if name in self.pods:
            self.remove(name)
        pod = IndexedPod(node, namespace, labels, anti_terms)
        self.pods[name] = pod
        self._count(pod, +1)

    def remove(self, name: str) -> None:
        """Forget ``name`` (no-op when unknown)."""
        pod = self.pods.pop(name, None)
        if pod is not None:
            self._count(pod, -1)

    def _count(self, pod: IndexedPod, sign: int) -> None:
        for query, counts in self.watched.items():
            if _matches(query, pod.namespace, pod.labels):
                counts[pod.node] += sign
        for term in pod.anti_terms:
            key = (term, pod.namespace)
            held = self.anti_terms.get(key)
            if held is None:
                held = self.anti_terms[key] = np.zeros(self.num_nodes, dtype=np.int64)
            held[pod.node] += sign
            if sign < 0 and not held.any():
                del self.anti_terms[key]

    def counts(self, query: Query) -> IntArray:
        """Per-node number of pods matching every clause of ``query``. Read-only view: callers
        must not modify it."""
        counts = self.watched.pop(query, None)
        if counts is None:
            counts = np.zeros(self.num_nodes, dtype=np.int64)
            for pod in self.pods.values():
                if _matches(query, pod.namespace, pod.labels):
                    counts[pod.node] += 1
            if len(self.watched) >= self.max_watched:
                self.watched.pop(next(iter(self.watched)))
        self.watched[query] = counts  # most recently asked last
        return counts
