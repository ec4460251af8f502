"""Daemon settings and the production clock."""

from __future__ import annotations

import time
from dataclasses import dataclass

from xpupool.kube.objects import SCHEDULER_NAME


class MonotonicClock:
    """Wall-time :class:`~xpupool.core.clock.Clock` for production."""

    def now_s(self) -> float:
        return time.monotonic()


@dataclass
class SchedulerConfig:
    """Daemon settings (the CLI flags of ``python -m xpupool.kube.scheduler``)."""

    scheduler_name: str = SCHEDULER_NAME
    #: manage only nodes matching this label selector (None: all nodes)
    node_label_selector: str | None = None
    bind_concurrency: int = 64
    bind_qps: float | None = None
    #: a bound-but-unconfirmed pod is re-read after this long
    assume_ttl_s: float = 30.0
    #: pause between cycles when there is nothing new (a pod or node event wakes it earlier)
    idle_cycle_s: float = 1.0
    #: per pod (per gang) retry delay after a failed placement: doubles from low to high; any
    #: freed capacity (a placed pod deleted, a queue changed) clears every backoff
    retry_backoff_s: tuple[float, float] = (0.5, 30.0)
    #: decide at most this many pods per cycle (in queue order, whole gangs), so binds start
    #: while the rest are still being decided (0: no limit)
    max_pods_per_cycle: int = 256
    preemption: bool = True
    max_preemptions_per_cycle: int = 4
    #: write the allocation annotation with a PATCH before binding (two writes) instead of on
    #: the Binding itself (one atomic write, the default)
    annotate_before_bind: bool = False
    #: read queue specs from XPUQueue objects (when the CRD is installed)
    queue_crd: bool = True
