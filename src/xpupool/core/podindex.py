"""Which pods run where, by labels: the counts inter-pod affinity and topology spread need.

Kept by :class:`~xpupool.core.cluster.ClusterState` in step with its ledger (every reserve adds
the pod on its node, every release removes it), so a what-if inside a
:class:`~xpupool.core.statement.Statement` sees the same counts the real placement will.

A *query* is a conjunction of ``(label selector, namespaces)`` pairs; its answer is a per-node
count of pods matching all of them. The first ask scans the pods that carry the query's first
matchLabels pair (all pods only when it has none: a new service's selector costs nothing, not
O(pods)); afterwards the answer is kept current on every add and remove (``watched``), so asking
again costs nothing. At most ``max_watched`` queries are kept (least recently asked dropped first).

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


def _bucket(query: Query) -> tuple[str, str] | None:
    """A label pair every pod matching ``query`` carries (its first matchLabels pair), if any."""
    for selector, _ in query:
        if selector.match_labels:
            return selector.match_labels[0]
    return None


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
        #: pod names by each label pair they carry (where a new query's candidates are)
        self._by_label: dict[tuple[str, str], set[str]] = {}
        self.watched: dict[Query, IntArray] = {}
        #: watched queries by a label pair a pod must carry to match (None: no such pair)
        self._buckets: dict[tuple[str, str] | None, set[Query]] = {}
        #: (existing pod's anti-affinity term, that pod's namespace) -> per-node pod count
        self.anti_terms: dict[tuple[PodAffinityTerm, str], IntArray] = {}
        self._anti_version = 0
        self._matching_version = 0
        self._matching: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[PodAffinityTerm, str]]] = {}

    def copy(self) -> PodIndex:
        clone = PodIndex(self.num_nodes, max_watched=self.max_watched)
        clone.pods = dict(self.pods)
        clone._by_label = {pair: set(names) for pair, names in self._by_label.items()}
        for query, counts in self.watched.items():
            clone._watch(query, counts.copy())
        clone.anti_terms = {k: v.copy() for k, v in self.anti_terms.items()}
        return clone

    def _watch(self, query: Query, counts: IntArray) -> None:
        self.watched[query] = counts
        self._buckets.setdefault(_bucket(query), set()).add(query)

    def _unwatch(self, query: Query) -> None:
        self.watched.pop(query, None)
        bucket = self._buckets.get(_bucket(query))
        if bucket is not None:
            bucket.discard(query)

    def anti_terms_matching(
        self, namespace: str, labels: tuple[tuple[str, str], ...]
    ) -> list[tuple[PodAffinityTerm, IntArray]]:
        """Existing pods' anti-affinity terms that match a pod with ``labels`` in ``namespace``,
        with the per-node counts of their owners. Memoised per (namespace, labels) until the set
        of terms changes (replicas of one service share their labels)."""
        if self._anti_version != self._matching_version:
            self._matching.clear()
            self._matching_version = self._anti_version
        key = (namespace, labels)
        hit = self._matching.get(key)
        if hit is None:
            as_dict = dict(labels)
            hit = self._matching[key] = [
                (term, owner) for term, owner in self.anti_terms if term.matches_pod(owner, namespace, as_dict)
            ]
        return [(term, self.anti_terms[(term, owner)]) for term, owner in hit]

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
        for pair in pod.labels.items():
            self._by_label.setdefault(pair, set()).add(name)
        self._count(pod, +1)

    def remove(self, name: str) -> None:
        """Forget ``name`` (no-op when unknown)."""
        pod = self.pods.pop(name, None)
        if pod is not None:
            for pair in pod.labels.items():
                names = self._by_label[pair]
                names.discard(name)
                if not names:
                    del self._by_label[pair]
            self._count(pod, -1)

    def _count(self, pod: IndexedPod, sign: int) -> None:
        for bucket in (None, *pod.labels.items()):
            for query in self._buckets.get(bucket, ()):
                if _matches(query, pod.namespace, pod.labels):
                    self.watched[query][pod.node] += sign
        for term in pod.anti_terms:
            key = (term, pod.namespace)
            held = self.anti_terms.get(key)
            if held is None:
                held = self.anti_terms[key] = np.zeros(self.num_nodes, dtype=np.int64)
                self._anti_version += 1
            held[pod.node] += sign
            if sign < 0 and not held.any():
                del self.anti_terms[key]
                self._anti_version += 1

    def counts(self, query: Query) -> IntArray:
        """Per-node number of pods matching every clause of ``query``. Read-only view: callers
        must not modify it."""
        counts = self.watched.pop(query, None)
        if counts is None:
            counts = np.zeros(self.num_nodes, dtype=np.int64)
            bucket = _bucket(query)
            candidates = (self.pods.values() if bucket is None
                          else (self.pods[name] for name in self._by_label.get(bucket, ())))
            for pod in candidates:
                if _matches(query, pod.namespace, pod.labels):
                    counts[pod.node] += 1
            if len(self.watched) >= self.max_watched:
                self._unwatch(next(iter(self.watched)))
        self._watch(query, counts)  # most recently asked last
        return counts
