"""Filter plugins beyond the built-in resource fit."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from xpupool.core.cluster import BoolArray, ClusterState
from xpupool.core.framework import REGISTRY, FitContext


class NodeLabelFilter:
    """Keeps nodes whose labels contain every ``selector`` pair (a pool or node-pool selector)."""

    name = "node-labels"
    reason = "do not match the pool's node labels"

    def __init__(self, *, selector: Mapping[str, str] | None = None) -> None:
        self.selector = dict(selector or {})

    def filter(self, state: ClusterState, ctx: FitContext) -> BoolArray:
        if not self.selector:
            return np.ones(state.num_nodes, dtype=bool)
        return np.array(
            [all(node.labels.get(k) == v for k, v in self.selector.items()) for node in state.nodes], dtype=bool
        )


class HealthyCardsFilter:
    """Drops GPU nodes whose cards are all unhealthy for pods that ask for cards."""

    name = "healthy-cards"
    reason = "have only unhealthy cards"

    def filter(self, state: ClusterState, ctx: FitContext) -> BoolArray:
        if ctx.request.count == 0:
            return np.ones(state.num_nodes, dtype=bool)
        return np.asarray((state.card_exists & state.card_healthy).any(axis=1) | ~state.has_cards)


REGISTRY.register("node-labels")(NodeLabelFilter)
REGISTRY.register("healthy-cards")(HealthyCardsFilter)
