"""GPU fragmentation as defined by FGD (Weng et al., USENIX ATC'23), vectorised.

Target workload M: the "typical pods" of a trace, distinct (cpu_milli, per-card milli, cards,
allowed models) tuples by decreasing popularity until they cover ``coverage`` of the pods, with
probabilities ``p`` renormalised over them. CPU-only pods are included.

Fragment of node n for typical pod m (milli-cards):

* m asks for no card, or m does not fit n (cpu, card model, cards)  -> all idle milli of n;
* otherwise -> idle milli of the cards whose remainder is smaller than m's per-card ask.

``F_n = sum_m p_m * frag(n, m)``. Memory does not enter F (it is checked for fit elsewhere).
Nodes are assumed to carry one card model (true of every trace we replay); a mixed node uses the
model of its first card for the fragmentation term.

``weights="demand"`` is our variant: typical pods weighted by popularity x cards asked, so the
measure protects the capacity that large pods need, not only the most frequent shape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from xpupool.core.cluster import BoolArray, ClusterState, FloatArray, IntArray
from xpupool.core.model import WHOLE_CARD_MILLI, Request


@dataclass(frozen=True)
class TargetWorkload:
    cpu_milli: IntArray  # (M,)
    milli: IntArray  # per-card ask (M,), 0 for CPU-only
    count: IntArray  # cards (M,)
    allowed: BoolArray  # (M, num_models + 1); last column = "node without cards"
    p: FloatArray  # (M,), sums to 1
    #: mean host memory (MiB) of the pods behind each typical tuple (FGD does not use it)
    memory_mib: IntArray | None = None
    #: every multi-card shape of the population, whatever the coverage: (cards, mean cpu_milli,
    #: mean memory_mib, fraction of all pods). FGD does not use it; xpupool protects k-card groups.
    multi_card: tuple[tuple[int, int, int, float], ...] = ()

    @property
    def size(self) -> int:
        return int(self.p.shape[0])

    @staticmethod
    def from_requests(
        requests: Iterable[Request],
        models: Sequence[str],
        *,
        coverage: float = 0.95,
        weights: str = "popularity",
    ) -> TargetWorkload:
        """Build M from a request population (e.g. the trace's pod list)."""
        counter: Counter[tuple[int, int, int, tuple[str, ...]]] = Counter()
        mem_sum: Counter[tuple[int, int, int, tuple[str, ...]]] = Counter()
        multi: dict[int, list[int]] = {}
        for r in requests:
            milli = r.share_milli if r.count else 0
            key = (r.cpu_milli, milli, r.count, tuple(sorted(r.models)))
            counter[key] += 1
            mem_sum[key] += r.memory_mib
            if r.count > 1:
                acc_k = multi.setdefault(r.count, [0, 0, 0])
                acc_k[0] += 1
                acc_k[1] += r.cpu_milli
                acc_k[2] += r.memory_mib
        if not counter:
            raise ValueError("target workload needs at least one request")
        total = sum(counter.values())
        chosen: list[tuple[tuple[int, int, int, tuple[str, ...]], int]] = []
        acc = 0
        for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
            chosen.append((key, n))
            acc += n
            if acc >= coverage * total:
                break
        model_id = {m: i for i, m in enumerate(models)}
        m_count = len(chosen)
        allowed = np.zeros((m_count, len(models) + 1), dtype=bool)
        cpu = np.zeros(m_count, dtype=np.int64)
        per_card = np.zeros(m_count, dtype=np.int64)
        cards = np.zeros(m_count, dtype=np.int64)
        p = np.zeros(m_count)
        for i, ((c, mi, k, spec), n) in enumerate(chosen):
            cpu[i], per_card[i], cards[i] = c, mi, k
            if spec:
                for name in spec:
                    if name in model_id:
                        allowed[i, model_id[name]] = True
            else:
                allowed[i, : len(models)] = True
            if k == 0:
                allowed[i, len(models)] = True
            p[i] = n * (max(k * mi, 100) if weights == "demand" else 1)
        p /= p.sum()
        memory = np.array([mem_sum[key] // n for key, n in chosen], dtype=np.int64)
        multi_card = tuple((k, v[1] // v[0], v[2] // v[0], v[0] / total) for k, v in sorted(multi.items()))
        return TargetWorkload(cpu, per_card, cards, allowed, p, memory, multi_card)


def node_models(state: ClusterState) -> IntArray:
    """Card model id of each node's first card; ``len(state.models)`` for nodes without cards."""
    first = state.card_model[:, 0].copy()
    first[~state.has_cards] = len(state.models)
    return first


def _phi(free: IntArray, milli: IntArray) -> IntArray:
    """Idle milli that is too small for each typical pod: ``free * (free < milli_m)``.

    ``free`` has any leading shape; the result appends the M axis.
    """
    f = free[..., None]
    return np.where(f < milli, f, 0)


def fragment(
    tw: TargetWorkload,
    *,
    cpu_free: IntArray,
    card_free: IntArray,
    model: IntArray,
) -> tuple[FloatArray, IntArray]:
    """F per node (shape ``(K,)``) and the per-typical-pod "small idle" sums ``(K, M)``.

    ``card_free`` is ``(K, G)`` with 0 in padding slots.
    """
    idle = card_free.sum(axis=1)
    small = _phi(card_free, tw.milli).sum(axis=1)  # (K, M)
    fits = _fits(tw, cpu_free, card_free.max(axis=1), (card_free >= WHOLE_CARD_MILLI).sum(axis=1), model)
    frag = np.where(fits, small, idle[:, None])
    return frag @ tw.p, small


def _fits(tw: TargetWorkload, cpu_free: IntArray, max_free: IntArray, full: IntArray, model: IntArray) -> BoolArray:
    sharing = (tw.count == 1) & (tw.milli < WHOLE_CARD_MILLI)
    gpu_ok = np.where(sharing, max_free[:, None] >= tw.milli, full[:, None] >= tw.count)
    return (cpu_free[:, None] >= tw.cpu_milli) & tw.allowed[:, model].T & gpu_ok & (tw.count > 0)


class FragmentCache:
    """Current F per node, recomputed only for nodes whose ``node_version`` changed."""

    def __init__(self, tw: TargetWorkload) -> None:
        self.tw = tw
        self._versions: IntArray | None = None
        self._state_id = -1
        self.f: FloatArray = np.zeros(0)
        self.small: IntArray = np.zeros((0, tw.size), dtype=np.int64)
        self.model: IntArray = np.zeros(0, dtype=np.int64)

    def refresh(self, state: ClusterState) -> None:
        if self._versions is None or self._state_id != id(state) or len(self._versions) != state.num_nodes:
            self.model = node_models(state)
            stale = np.arange(state.num_nodes)
            self.f = np.zeros(state.num_nodes)
            self.small = np.zeros((state.num_nodes, self.tw.size), dtype=np.int64)
            self._state_id = id(state)
        else:
            stale = np.nonzero(state.node_version != self._versions)[0]
        if len(stale):
            f, small = fragment(
                self.tw,
                cpu_free=state.cpu_free[stale],
                card_free=state.card_free_milli[stale],
                model=self.model[stale],
            )
            self.f[stale] = f
            self.small[stale] = small
        self._versions = state.node_version.copy()

    def after_whole(self, state: ClusterState, nodes: IntArray, cpu: int, count: int) -> FloatArray:
        """F of ``nodes`` after taking ``count`` whole free cards (or none) and ``cpu``, recomputed from
        the definition; the reference that :meth:`after_whole_cached` (used by the policies) is tested
        against."""
        free = state.card_free_milli[nodes].copy()
        if count:
            full = free >= WHOLE_CARD_MILLI
            taken = np.cumsum(full, axis=1) <= count
            free[full & taken] = 0
        f, _ = fragment(self.tw, cpu_free=state.cpu_free[nodes] - cpu, card_free=free, model=self.model[nodes])
        return f

    def after_whole_cached(self, state: ClusterState, nodes: IntArray, cpu: int, count: int) -> FloatArray:
        """Same result as :meth:`after_whole`, in O(nodes x M) from the cached per-pod sums.

        Taking whole free cards leaves every "small idle" sum unchanged (a full card is never
        smaller than a per-card ask, an emptied one contributes 0); only idle, the full-card count,
        the largest free card and the CPU change.
        """
        free = state.card_free_milli[nodes]
        full = (free >= WHOLE_CARD_MILLI).sum(axis=1)
        idle = free.sum(axis=1) - count * WHOLE_CARD_MILLI
        if count:
            partial_max = np.where(free < WHOLE_CARD_MILLI, free, 0).max(axis=1)
            max_free = np.where(full > count, WHOLE_CARD_MILLI, partial_max)
        else:
            max_free = free.max(axis=1)
        fits = _fits(self.tw, state.cpu_free[nodes] - cpu, max_free, full - count, self.model[nodes])
        frag = np.where(fits, self.small[nodes], idle[:, None])
        result: FloatArray = frag @ self.tw.p
        return result

    def after_share(
        self, state: ClusterState, nodes: IntArray, slots: IntArray, cpu: int, milli: int
    ) -> FloatArray:
        """F of each (node, slot) candidate after taking ``milli`` of that card and ``cpu``.

        Incremental: only the changed card's contribution and the node-level fit terms change.
        """
        tw = self.tw
        free_all = state.card_free_milli[nodes]  # (C, G)
        f_old = free_all[np.arange(len(nodes)), slots]
        f_new = f_old - milli
        small = self.small[nodes] - _phi(f_old, tw.milli) + _phi(f_new, tw.milli)
        srt = np.sort(free_all, axis=1)
        top1 = srt[:, -1]
        top2 = srt[:, -2] if srt.shape[1] > 1 else np.zeros_like(top1)
        max_excl = np.where(f_old == top1, top2, top1)
        max_free = np.maximum(max_excl, f_new)
        full = (free_all >= WHOLE_CARD_MILLI).sum(axis=1) - (f_old >= WHOLE_CARD_MILLI)
        idle = free_all.sum(axis=1) - milli
        fits = _fits(tw, state.cpu_free[nodes] - cpu, max_free, full, self.model[nodes])
        frag = np.where(fits, small, idle[:, None])
        result: FloatArray = frag @ tw.p
        return result


def share_candidates(card_fit: BoolArray, card_free: IntArray, feasible: BoolArray) -> tuple[IntArray, IntArray]:
    """(node, slot) pairs worth evaluating for a one-card share: fitting cards of feasible nodes,
    one per distinct free level on a node (cards at the same level are interchangeable)."""
    rows = np.nonzero(feasible)[0]  # work on the asked nodes only: O(asked), not O(cluster)
    levels = np.where(card_fit[rows], card_free[rows], -1)
    order = np.argsort(-levels, axis=1, kind="stable")
    sorted_levels = np.take_along_axis(levels, order, axis=1)
    first = np.ones_like(sorted_levels, dtype=bool)
    first[:, 1:] = sorted_levels[:, 1:] != sorted_levels[:, :-1]
    keep = first & (sorted_levels >= 0)
    local, pos = np.nonzero(keep)
    return rows[local].astype(np.int64), order[local, pos].astype(np.int64)


def best_card_per_node(nodes: IntArray, slots: IntArray, gain: FloatArray,
                       num_nodes: int) -> tuple[FloatArray, IntArray]:
    """Reduce (node, slot, gain) candidates to the largest gain per node and its slot.

    Nodes without a candidate get ``-inf`` and slot ``-1``. On equal gain the earlier candidate
    wins (``share_candidates`` lists the cards with most free first, FGD's order).
    """
    best_gain = np.full(num_nodes, -np.inf)
    best_slot = np.full(num_nodes, -1, dtype=np.int64)
    if len(nodes) == 0:
        return best_gain, best_slot
    order = np.lexsort((-gain, nodes))
    first = np.ones(len(order), dtype=bool)
    first[1:] = nodes[order][1:] != nodes[order][:-1]
    best = order[first]
    best_gain[nodes[best]] = gain[best]
    best_slot[nodes[best]] = slots[best]
    return best_gain, best_slot


def cluster_fragment(tw: TargetWorkload, state: ClusterState) -> float:
    """Total F of the cluster in milli-cards."""
    f, _ = fragment(tw, cpu_free=state.cpu_free, card_free=state.card_free_milli, model=node_models(state))
    return float(f.sum())
