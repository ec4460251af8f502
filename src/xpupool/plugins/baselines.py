"""The FGD paper's baselines and two generic policies, as defined by the FGD artifact.

* ``random``        random feasible node, random fitting card.
* ``dotprod``       Tetris: minimise the dot product of the node's free vector and the pod's
                    request (CPU, GPU; normalised by 128 cores / 8 cards, per card for shares).
* ``gpuclustering`` prefer nodes whose pods all ask the same card size, then mixed nodes that
                    include it, then idle nodes, then others; less GPU left first inside a tier.
* ``gpupacking``    prefer already shared cards with least left, then nodes that need whole free
                    cards, then idle nodes.
* ``bestfit``       minimise 0.5 * cpu_left / 128 cores + 0.5 * gpu_left / 8 cards after placing.
* ``binpack`` / ``spread``  generic: fullest (emptiest) node by GPU then CPU after placing.
"""

from __future__ import annotations

import numpy as np

from xpupool.core.cluster import BoolArray, ClusterState, IntArray
from xpupool.core.framework import REGISTRY, FitContext, ScoreResult
from xpupool.core.model import WHOLE_CARD_MILLI
from xpupool.plugins.common import (
    MAX_SPEC_CPU_MILLI,
    MAX_SPEC_GPU_MILLI,
    clip_scores,
    demand_milli,
    full_cards,
    gpu_free_total,
)


class RandomScore:
    name = "random"

    def __init__(self, *, rng: np.random.Generator | None = None, seed: int = 0) -> None:
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        scores = self.rng.random(state.num_nodes) * 100
        hint = np.full(state.num_nodes, -1, dtype=np.int64)
        if ctx.request.count == 1:
            noise = np.where(ctx.card_fit, self.rng.random(ctx.card_fit.shape), -1.0)
            hint = np.argmax(noise, axis=1).astype(np.int64)
        return ScoreResult(scores, hint)


class DotProductScore:
    name = "dotprod"
    node_local = True

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        r = ctx.request
        cpu_node = state.cpu_free / MAX_SPEC_CPU_MILLI
        cpu_pod = r.cpu_milli / MAX_SPEC_CPU_MILLI
        if r.count == 1 and r.share_milli < WHOLE_CARD_MILLI:
            card_dot = cpu_node[:, None] * cpu_pod + (state.card_free_milli / 1000) * (r.share_milli / 1000)
            card_dot = np.where(ctx.card_fit, card_dot, np.inf)
            hint = np.argmin(card_dot, axis=1).astype(np.int64)
            dot = card_dot[np.arange(state.num_nodes), hint]
            dot = np.where(np.isfinite(dot), dot, 2.0)
            return ScoreResult(clip_scores((1 - dot / 2) * 100), hint)
        gpu_node = gpu_free_total(state) / MAX_SPEC_GPU_MILLI
        gpu_pod = demand_milli(ctx) / MAX_SPEC_GPU_MILLI
        dot = cpu_node * cpu_pod + gpu_node * gpu_pod
        return ScoreResult(clip_scores((1 - dot / 2) * 100))


def _affinity(count: int, share_milli: int) -> int:
    """The artifact's GPU affinity tag: every share is one class ("share"), whole-card pods by count."""
    return 0 if count == 1 and share_milli < WHOLE_CARD_MILLI else count


class GpuClusteringScore:
    name = "gpuclustering"
    node_local = True

    def __init__(self) -> None:
        self._tags: dict[int, frozenset[int]] = {}
        self._versions: IntArray | None = None

    def _node_tags(self, state: ClusterState) -> list[frozenset[int]]:
        if self._versions is None or len(self._versions) != state.num_nodes:
            stale: list[int] = list(range(state.num_nodes))
            self._tags = {}
        else:
            stale = np.nonzero(state.node_version != self._versions)[0].tolist()
        for i in stale:
            tags = set()
            for pod in state.card_pods[i]:
                _, req = state.allocations[pod]
                tags.add(_affinity(req.count, req.share_milli))
            self._tags[i] = frozenset(tags)
        self._versions = state.node_version.copy()
        return [self._tags[i] for i in range(state.num_nodes)]

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        r = ctx.request
        if r.count == 0:
            return ScoreResult(np.zeros(state.num_nodes))
        tag = _affinity(r.count, r.share_milli)
        tags = self._node_tags(state)
        left = gpu_free_total(state)
        inner = 25 * (MAX_SPEC_GPU_MILLI - left) / MAX_SPEC_GPU_MILLI
        tier = np.zeros(state.num_nodes)
        for i in np.nonzero(feasible)[0]:
            t = tags[i]
            if tag in t:
                tier[i] = 75 if len(t) == 1 else 50
            elif not t:
                tier[i] = 25
        return ScoreResult(clip_scores(tier + inner))


class GpuPackingScore:
    name = "gpupacking"
    node_local = True

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        r = ctx.request
        n = state.num_nodes
        if r.count == 0:
            return ScoreResult(np.zeros(n))
        full = full_cards(state)
        idle_node = full == state.card_count
        scores = np.maximum(100 // 3 - full, full).astype(float)  # case 3: idle node
        free = state.card_free_milli
        fit = ctx.card_fit
        # cards used in best-fit order (least left first), as the artifact's packing does
        order = np.argsort(np.where(fit, free, 10**9), axis=1, kind="stable")
        sorted_fit = np.take_along_axis(fit, order, axis=1)
        sorted_free = np.take_along_axis(free, order, axis=1)
        used = sorted_fit & (np.cumsum(sorted_fit, axis=1) <= r.count)
        whole_used = (used & (sorted_free >= WHOLE_CARD_MILLI)).sum(axis=1)
        free_ratio = (np.where(used, sorted_free, 0) * 100 // WHOLE_CARD_MILLI).sum(axis=1)
        case2 = np.maximum(100 // 2 - whole_used, 100 // 3)
        case1 = np.maximum(100 - free_ratio // 10, 100 // 2)
        other = np.where(whole_used > 0, case2, case1)
        scores = np.where(idle_node, scores, other)
        return ScoreResult(clip_scores(scores.astype(float)))


class BestFitScore:
    name = "bestfit"
    node_local = True

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        r = ctx.request
        cpu_left = (state.cpu_free - r.cpu_milli) / MAX_SPEC_CPU_MILLI
        gpu_left = (gpu_free_total(state) - demand_milli(ctx)) / MAX_SPEC_GPU_MILLI
        return ScoreResult(clip_scores((1 - (0.5 * cpu_left + 0.5 * gpu_left)) * 100))


class BinpackScore:
    name = "binpack"
    node_local = True

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        cap = np.maximum(state.card_count * WHOLE_CARD_MILLI, 1)
        gpu_used = 1 - (gpu_free_total(state) - demand_milli(ctx)) / cap
        cpu_used = 1 - (state.cpu_free - ctx.request.cpu_milli) / np.maximum(state.cpu_capacity, 1)
        return ScoreResult(clip_scores(100 * (0.8 * gpu_used + 0.2 * cpu_used)))


class SpreadScore:
    name = "spread"
    node_local = True

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        packed = BinpackScore().score(state, ctx, feasible).scores
        r = ctx.request
        hint = None
        if r.count == 1:
            hint = np.argmax(np.where(ctx.card_fit, state.card_free_milli, -1), axis=1).astype(np.int64)
        return ScoreResult(100 - packed, hint)


REGISTRY.register("random")(RandomScore)
REGISTRY.register("dotprod")(DotProductScore)
REGISTRY.register("gpuclustering")(GpuClusteringScore)
REGISTRY.register("gpupacking")(GpuPackingScore)
REGISTRY.register("bestfit")(BestFitScore)
REGISTRY.register("binpack")(BinpackScore)
REGISTRY.register("spread")(SpreadScore)
