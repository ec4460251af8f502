"""Helpers shared by score plugins (pure numpy)."""

from __future__ import annotations

import numpy as np

from xpupool.core.cluster import ClusterState, FloatArray, IntArray
from xpupool.core.framework import FitContext

#: normalisers used by the FGD artifact's baselines: 128 cores and 8 cards per node
MAX_SPEC_CPU_MILLI = 128_000
MAX_SPEC_GPU_MILLI = 8_000


def gpu_free_total(state: ClusterState) -> IntArray:
    total: IntArray = state.card_free_milli.sum(axis=1)
    return total


def demand_milli(ctx: FitContext) -> int:
    return ctx.request.count * ctx.request.share_milli


def full_cards(state: ClusterState) -> IntArray:
    count: IntArray = (state.card_free_milli >= 1000).sum(axis=1)
    return count


def clip_scores(values: FloatArray) -> FloatArray:
    return np.clip(values, 0.0, 100.0)
