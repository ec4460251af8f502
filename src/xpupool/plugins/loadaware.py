"""Load-aware scoring from live per-card utilisation (reported by the node agent).

Score 100 for idle cards, 0 for saturated ones; nodes with unknown utilisation score 50 so the
plugin is neutral until measurements arrive. For one-card shares the hint is the least-busy card.
"""

from __future__ import annotations

import numpy as np

from xpupool.core.cluster import BoolArray, ClusterState
from xpupool.core.framework import REGISTRY, FitContext, ScoreResult


class LoadAwareScore:
    name = "loadaware"
    node_local = True

    def uniform_score(self, state: ClusterState) -> float | None:
        """Every node scores 50 (neutral, no hint) until some card's utilisation is known."""
        return None if state.utilization_known else 50.0

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        util = state.card_utilization
        known = ~np.isnan(util) & ctx.card_fit
        if not known.any():
            return ScoreResult(np.full(state.num_nodes, 50.0))
        filled = np.where(known, util, 0.0)
        counts = known.sum(axis=1)
        mean = np.divide(filled.sum(axis=1), counts, out=np.full(state.num_nodes, 0.5), where=counts > 0)
        hint = None
        if ctx.request.count == 1:
            hint = np.argmin(np.where(ctx.card_fit, np.nan_to_num(util, nan=0.5), np.inf), axis=1).astype(np.int64)
        return ScoreResult(100 * (1 - mean), hint)


REGISTRY.register("loadaware")(LoadAwareScore)
