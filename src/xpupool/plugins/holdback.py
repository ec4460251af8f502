"""Hold-back of share pods that would strand a dead remnant in a nearly full pool (filter ``xpupool-holdback``).

A one-card share of ``milli`` placed on a card with ``free`` milli leaves ``r = free - milli``. A
remnant with ``tight < r < dead`` is *dead*: too large to call the card well packed, too small for
all but the rarest shares (``dead`` = the share size below which only ``dead_quantile`` of the
target workload's share pods lie; on openb 220 milli, so the 190 milli next to a 0.81-card pod is
dead). While the pool is nearly full, the filter keeps only nodes with a card the pod fits without
leaving a dead remnant; when there is none, the pod is left unschedulable with a reason that says
why (a pending pod in Kubernetes, retried later). "Nearly full" is one of two triggers:

* ``whole_free_pct`` (per card model): the model's free whole cards are at most this % of its
  cards (whole cards are what a held pod saves; only scarce ones are worth saving, so the pod may
  still take a whole card of a model that nobody else is short of);
* ``theta_pct``: the pool's GPU allocation is at least this % of capacity.

Why: near saturation a whole card is worth more to the next whole-card pod than 0.81 of it to
this one (the exact offline optimum of the FGD replay turns ~240 such pods away). Measured in
docs/simulation.md ("Hold-back"): a pod that is held counts as unallocated. Off unless a
trigger is set.
"""

from __future__ import annotations

import numpy as np

from xpupool.core.cluster import BoolArray, ClusterState
from xpupool.core.frag import TargetWorkload
from xpupool.core.framework import REGISTRY, FitContext
from xpupool.core.model import WHOLE_CARD_MILLI

NEVER = 101.0


def dead_remnant_milli(target: TargetWorkload, quantile: float) -> int:
    """Share size below which only ``quantile`` of the target's share pods lie (by popularity)."""
    shares = (target.count == 1) & (target.milli > 0) & (target.milli < WHOLE_CARD_MILLI)
    if not shares.any():
        return 0
    order = np.argsort(target.milli[shares], kind="stable")
    milli = target.milli[shares][order]
    cum = np.cumsum(target.p[shares][order]) / target.p[shares].sum()
    return int(milli[int(np.searchsorted(cum, quantile, side="right"))]) if cum[-1] > quantile else int(milli[-1])


class HoldBackFilter:
    """Keeps nodes where a share pod leaves no dead remnant, once the pool is nearly full.

    ``whole_card_waste_only``: hold only pods whose remnant on a whole card is dead (openb: the
    0.81-card pods), never re-route smaller shares.
    """

    name = "xpupool-holdback"
    reason = "would leave a card remnant too small for other pods while the pool is nearly full (held back)"

    def __init__(self, *, target: TargetWorkload, theta_pct: float = NEVER, whole_free_pct: float = -1.0,
                 tight_milli: int = 100, dead_quantile: float = 0.05, whole_card_waste_only: bool = True) -> None:
        self.theta_pct = theta_pct
        self.whole_free_pct = whole_free_pct
        self.tight_milli = tight_milli
        self.dead_milli = dead_remnant_milli(target, dead_quantile)
        self.whole_card_waste_only = whole_card_waste_only

    def dead(self, remnant: np.ndarray | int) -> np.ndarray:
        """Which remnants (milli) are dead."""
        return np.asarray((remnant > self.tight_milli) & (remnant < self.dead_milli))

    def candidate(self, ctx: FitContext) -> bool:
        """A share this filter may hold (with ``whole_card_waste_only``: dead remnant on a whole card)."""
        r = ctx.request
        if (self.theta_pct > 100 and self.whole_free_pct < 0) or not r.is_sharing:
            return False
        return not self.whole_card_waste_only or bool(self.dead(WHOLE_CARD_MILLI - r.share_milli))

    def protected(self, state: ClusterState) -> BoolArray:
        """Per card: is it worth saving (its model's whole cards are scarce, or the pool is past theta)?"""
        exists = state.card_exists
        if self.theta_pct <= 100:
            cards = int(exists.sum())
            free = int(state.card_free_milli[exists].sum())
            if cards and 100 * (cards * WHOLE_CARD_MILLI - free) >= self.theta_pct * cards * WHOLE_CARD_MILLI:
                return exists.copy()
        if self.whole_free_pct < 0:
            return np.zeros_like(exists)
        models = len(state.models)
        model = np.where(exists, state.card_model, models)
        whole = exists & state.card_healthy & (state.card_free_milli >= WHOLE_CARD_MILLI)
        total = np.bincount(model[exists], minlength=models + 1)
        free_whole = np.bincount(model[whole], minlength=models + 1)
        scarce = 100 * free_whole <= self.whole_free_pct * total
        scarce[models] = False
        return np.asarray(scarce[model] & exists)

    def filter(self, state: ClusterState, ctx: FitContext) -> BoolArray:
        if not self.candidate(ctx):
            return np.ones(state.num_nodes, dtype=bool)
        remnant = state.card_free_milli - ctx.request.share_milli
        held = self.dead(remnant) & self.protected(state)
        return np.asarray((ctx.card_fit & ~held).any(axis=1))


REGISTRY.register("xpupool-holdback")(HoldBackFilter)
