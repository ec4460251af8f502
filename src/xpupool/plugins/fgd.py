"""Fragmentation gradient descent (FGD, Weng et al., USENIX ATC'23) as a score plugin.

``fgd``: among feasible nodes prefer the smallest increase of the node's fragmentation ``F_n``
(see :mod:`xpupool.core.frag`) after hypothetically placing the pod; for a one-card share also
pick the card with the smallest increase. Score ``sigmoid(-dF / 1000) * 100`` as in the paper.
Our own policy, built on the same fragmentation cache, is :mod:`xpupool.plugins.xpupool_policy`.
"""

from __future__ import annotations

import numpy as np

from xpupool.core.cluster import BoolArray, ClusterState, FloatArray, IntArray
from xpupool.core.frag import FragmentCache, TargetWorkload, best_card_per_node, share_candidates
from xpupool.core.framework import REGISTRY, FitContext, ScoreResult


def _sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(x, -500, 500)))
    return out


class FGDScore:
    name = "fgd"
    node_local = True

    def __init__(self, *, target: TargetWorkload) -> None:
        self.cache = FragmentCache(target)

    def gain(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> tuple[FloatArray, IntArray]:
        """F_n before minus after (``-inf`` where infeasible) and the best card slot per node."""
        self.cache.refresh(state)
        r = ctx.request
        n = state.num_nodes
        if r.is_sharing:
            nodes, slots = share_candidates(ctx.card_fit, state.card_free_milli, feasible)
            f_after = self.cache.after_share(state, nodes, slots, r.cpu_milli, r.share_milli)
            return best_card_per_node(nodes, slots, self.cache.f[nodes] - f_after, n)
        gain = np.full(n, -np.inf)
        idx = np.nonzero(feasible)[0]
        if len(idx):
            gain[idx] = self.cache.f[idx] - self.cache.after_whole_cached(state, idx, r.cpu_milli, r.count)
        return gain, np.full(n, -1, dtype=np.int64)

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        gain, hint = self.gain(state, ctx, feasible)
        scores = np.where(np.isfinite(gain), _sigmoid(np.nan_to_num(gain, neginf=-1e9) / 1000) * 100, 0.0)
        return ScoreResult(scores, hint)


REGISTRY.register("fgd")(FGDScore)
