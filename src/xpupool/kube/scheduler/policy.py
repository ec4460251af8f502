"""The placement policy the cycle and preemption call, rebuilt from the live cluster.

With a factory, the policy is rebuilt whenever the node set changes and every
``target_refresh_s``, from the cluster's card models and the pods seen so far, so the
fragmentation-aware policies learn this cluster's typical pods. Node taints, cordons and the
pods' own constraints are the core framework's (:mod:`xpupool.core.constraint_masks`), so every
policy honours them.
"""

from __future__ import annotations

from collections.abc import Callable

from xpupool.core.cluster import ClusterState
from xpupool.core.framework import Scheduler
from xpupool.core.model import Request

PolicyFactory = Callable[[ClusterState, list[Request]], Scheduler]


class Policy:
    """Holds the core :class:`~xpupool.core.framework.Scheduler` (``core``)."""

    def __init__(
        self,
        core: Scheduler,
        *,
        factory: PolicyFactory | None,
        target_refresh_s: float,
    ) -> None:
        self.core = core
        self.factory = factory
        self.target_refresh_s = target_refresh_s
        self.built_s: float | None = None

    def refresh(self, state: ClusterState, population: list[Request], *, now_s: float) -> None:
        """Rebuild the core scheduler from the factory (typical pods = ``population``)."""
        if self.factory is None:
            return
        self.core = self.factory(state, population)
        self.built_s = now_s

    def stale(self, now_s: float) -> bool:
        return self.built_s is not None and now_s - self.built_s > self.target_refresh_s
