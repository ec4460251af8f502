"""FGD replay protocol on the openb trace (no time: pods arrive one by one and never leave).

Per seed: sort pods by name, shuffle with the seed, top up with resampled copies to 130 % of the
cluster's GPU capacity (or drop random pods when above), then schedule online with no retries,
no preemption and no departures. After every pod we record arrived and allocated milli-GPU.

Metric (FGD artifact): for each integer x, the allocation ratio averaged over the events whose
rounded arrived % equals x (events within +-1 when none); unallocated % = 100 - that. Fragmentation
(F of the target workload) is sampled the first time arrived % reaches each integer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from xpupool.core.cluster import ClusterState
from xpupool.core.frag import TargetWorkload, cluster_fragment
from xpupool.core.framework import Scheduler
from xpupool.core.model import Node, Request
from xpupool.plugins.profiles import build_scheduler

TOP_UP_RATIO = 1.3


@dataclass
class Placement:
    seed: int
    policy: str
    pod: str
    node: str  # "" when it failed
    cards: tuple[tuple[int, int], ...]  # (card index, milli taken)
    arrived_pct: float


@dataclass
class SeedRun:
    policy: str
    seed: int
    capacity_milli: int
    arrived_pct: np.ndarray
    allocated_pct: np.ndarray
    frag_amount_pct: dict[int, float] = field(default_factory=dict)  # x -> 100 * F / C
    frag_rate_pct: dict[int, float] = field(default_factory=dict)  # x -> 100 * F / idle
    placements: list[Placement] = field(default_factory=list)
    decision_s: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def unallocated_at(self, x: int) -> float:
        return unallocated_at(self.arrived_pct, self.allocated_pct, x)


def unallocated_at(arrived_pct: np.ndarray, allocated_pct: np.ndarray, x: int) -> float:
    """100 - mean allocation over events whose rounded arrival is ``x`` (else within +-1)."""
    rounded = np.rint(arrived_pct)
    hit = rounded == x
    if not hit.any():
        hit = np.abs(arrived_pct - x) <= 1
    if not hit.any():
        return float("nan")
    return float(100 - allocated_pct[hit].mean())


def tune_workload(pods: Sequence[Request], capacity_milli: int, seed: int,
                  ratio: float = TOP_UP_RATIO) -> list[Request]:
    """Shuffle by seed and top up (resample) or trim (random drop) to ``ratio`` x capacity."""
    rng = np.random.default_rng(seed)
    ordered = sorted(pods, key=lambda r: r.name)
    shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
    limit = ratio * capacity_milli
    total = sum(r.gpu_milli_total for r in shuffled)
    if total < limit:
        copy = 0
        while True:
            pick = ordered[int(rng.integers(len(ordered)))]
            if total + pick.gpu_milli_total > limit:
                break
            shuffled.append(replace(pick, name=f"{pick.name}-copy{copy}"))
            total += pick.gpu_milli_total
            copy += 1
    elif total > limit:
        keep = np.ones(len(shuffled), dtype=bool)
        for i in rng.permutation(len(shuffled)):
            if total <= limit:
                break
            keep[i] = False
            total -= shuffled[i].gpu_milli_total
        shuffled = [r for r, k in zip(shuffled, keep, strict=True) if k]
    return shuffled


def replay(
    nodes: Sequence[Node],
    pods: Sequence[Request],
    *,
    policy: str,
    seed: int,
    target: TargetWorkload,
    record_placements: bool = False,
    time_decisions: bool = False,
    on_pod: Callable[[], None] | None = None,
    perf_counter: Callable[[], float] | None = None,
    scheduler: Scheduler | None = None,
    stop_after_pct: float | None = None,
    sample_fragmentation: bool = True,
) -> SeedRun:
    """Replay one seed with one policy. Deterministic for a given (policy, seed). ``scheduler``
    replaces the named policy's (e.g. a plugin configuration being screened; ``policy`` then only
    labels the run). ``stop_after_pct`` ends the replay once that much has arrived (screening only
    needs x = 100, whose bin ends at 100.5 %); the arrays then hold the pods replayed so far.
    ``sample_fragmentation=False`` skips the per-x fragmentation samples."""
    state = ClusterState(nodes)
    capacity = int(state.card_exists.sum()) * 1000
    workload = tune_workload(pods, capacity, seed)
    if scheduler is None:
        scheduler = build_scheduler(policy, seed=seed, target=target)
    arrived = np.zeros(len(workload))
    allocated = np.zeros(len(workload))
    decision = np.zeros(len(workload) if time_decisions else 0)
    run = SeedRun(policy, seed, capacity, arrived, allocated)
    arrived_milli = 0
    allocated_milli = 0
    next_x = 0
    for i, pod in enumerate(workload):
        arrived_milli += pod.gpu_milli_total
        t0 = perf_counter() if (time_decisions and perf_counter) else 0.0
        result = scheduler.schedule(state, pod)
        if time_decisions and perf_counter:
            decision[i] = perf_counter() - t0
        ok = result.status.ok and result.allocation is not None
        if ok:
            allocated_milli += pod.gpu_milli_total
        arrived[i] = 100 * arrived_milli / capacity
        allocated[i] = 100 * allocated_milli / capacity
        while sample_fragmentation and arrived[i] >= next_x:
            frag = cluster_fragment(target, state)
            idle = capacity - allocated_milli
            run.frag_amount_pct[next_x] = 100 * frag / capacity
            run.frag_rate_pct[next_x] = 100 * frag / idle if idle else 0.0
            next_x += 1
        if record_placements:
            alloc = result.allocation if ok else None
            run.placements.append(Placement(
                seed, policy, pod.name, alloc.device_node if alloc else "",
                tuple((c, pod.share_milli) for c in alloc.cards) if alloc else (),
                float(arrived[i]),
            ))
        if on_pod is not None:
            on_pod()
        if stop_after_pct is not None and arrived[i] > stop_after_pct:
            run.arrived_pct, run.allocated_pct = arrived[: i + 1], allocated[: i + 1]
            decision = decision[: i + 1]
            break
    run.decision_s = decision
    return run
