"""Fragmentation gradient descent (FGD) and xpupool's own fragmentation policy.

``fgd``: among feasible nodes prefer the smallest increase of the node's fragmentation ``F_n``
(see :mod:`xpupool.core.frag`) after hypothetically placing the pod; for a one-card share also
pick the card with the smallest increase. Score ``sigmoid(-dF / 1000) * 100`` as in the paper.

``xpupool-frag`` (the first version of our policy; the ``xpupool`` profile now uses the host-aware
``xpupool-host`` of :mod:`xpupool.plugins.xpupool_policy`, see docs/simulation.md): the same
gradient, but (1) typical pods weighted by the cards they ask (protects the capacity big pods
need), (2) continuous scores instead of kube-scheduler's integer truncation, which in FGD turns
many different gradients into random ties, and (3) a packing tie-breaker (least GPU then CPU
left), so equally-fragmenting choices fill used nodes first and keep whole nodes free.
"""

from __future__ import annotations

import numpy as np

from xpupool.core.cluster import BoolArray, ClusterState, FloatArray, IntArray
from xpupool.core.frag import FragmentCache, TargetWorkload, best_card_per_node, share_candidates
from xpupool.core.framework import REGISTRY, FitContext, ScoreResult
from xpupool.core.model import WHOLE_CARD_MILLI


def _sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(x, -500, 500)))
    return out


class FragmentGradient:
    """Shared machinery: per-node F after the hypothetical placement, best card per node."""

    def __init__(self, target: TargetWorkload) -> None:
        self.cache = FragmentCache(target)

    def after(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> tuple[FloatArray, IntArray]:
        """F_n before minus after (``-inf`` where infeasible) and the best card slot per node."""
        self.cache.refresh(state)
        r = ctx.request
        n = state.num_nodes
        gain = np.full(n, -np.inf)
        hint = np.full(n, -1, dtype=np.int64)
        if r.count == 1 and r.share_milli < WHOLE_CARD_MILLI and not r.exclusive:
            nodes, slots = share_candidates(ctx.card_fit, state.card_free_milli, feasible)
            if len(nodes) == 0:
                return gain, hint
            f_after = self.cache.after_share(state, nodes, slots, r.cpu_milli, r.share_milli)
            return best_card_per_node(nodes, slots, self.cache.f[nodes] - f_after, n)
        idx = np.nonzero(feasible)[0]
        if len(idx):
            f_after = self.cache.after_whole(state, idx, r.cpu_milli, r.count)
            gain[idx] = self.cache.f[idx] - f_after
        return gain, hint


class FGDScore:
    name = "fgd"
    node_local = True

    def __init__(self, *, target: TargetWorkload) -> None:
        self.gradient = FragmentGradient(target)

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        gain, hint = self.gradient.after(state, ctx, feasible)
        scores = np.where(np.isfinite(gain), _sigmoid(np.nan_to_num(gain, neginf=-1e9) / 1000) * 100, 0.0)
        return ScoreResult(scores, hint)


class XpupoolFragScore:
    """Demand-weighted fragmentation gradient with a packing tie-breaker (continuous, 0..100)."""

    name = "xpupool-frag"
    node_local = True

    def __init__(self, *, target: TargetWorkload, packing_weight: float = 0.02) -> None:
        self.gradient = FragmentGradient(target)
        self.packing_weight = packing_weight

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        gain, hint = self.gradient.after(state, ctx, feasible)
        r = ctx.request
        gpu_left = (state.card_free_milli.sum(axis=1) - r.count * r.share_milli) / 8000
        cpu_left = (state.cpu_free - r.cpu_milli) / 128_000
        packing = 1 - np.clip(0.5 * gpu_left + 0.5 * cpu_left, 0, 1)
        base = _sigmoid(np.nan_to_num(gain, neginf=-1e9) / 1000)
        scores = np.where(np.isfinite(gain), (base + self.packing_weight * packing) / (1 + self.packing_weight),
                          0.0) * 100
        return ScoreResult(scores, hint)


REGISTRY.register("fgd")(FGDScore)
REGISTRY.register("xpupool-frag")(XpupoolFragScore)
