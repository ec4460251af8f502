"""Queues, quota with borrowing and reclaim, DRF fair share, preemption and gangs.

One scheduling cycle (:func:`run_cycle`) over the pending pods::

    order pods: queue with the lowest weighted dominant share first (DRF), then pod priority,
                then arrival (FIFO)  -- gang members travel together
    for each pod / gang:
        quota gate: the queue's limit is a hard cap; above its quota a queue may *borrow*
                    idle capacity when it allows borrowing
        place:      Scheduler.place (same code as the simulator)
        otherwise:  preemption -- evict the fewest, lowest-priority victims that make the pod
                    fit on one node (own queue: lower priority; other queues: only pods that
                    borrowed beyond their quota, when the preemptor's queue is under quota);
                    never evict unless the what-if shows the pod then fits
        gang:       all members reserved in one Statement, or none

Everything is pure: time comes from the injected clock, nothing is bound here; the adapter
(Kubernetes scheduler daemon or simulator) binds the returned allocations and deletes victims.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from xpupool.core.cluster import ClusterState
from xpupool.core.disruption import NO_BUDGETS, DisruptionBudgets
from xpupool.core.framework import Scheduler
from xpupool.core.model import Allocation, Request
from xpupool.core.statement import Statement
from xpupool.core.status import Code, Status


@dataclass(frozen=True, slots=True)
class Resources:
    """A resource vector: cpu in milli-cores, memory in MiB, accelerator compute in milli-cards."""

    cpu_milli: int = 0
    memory_mib: int = 0
    xpu_milli: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu_milli + other.cpu_milli, self.memory_mib + other.memory_mib,
                         self.xpu_milli + other.xpu_milli)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu_milli - other.cpu_milli, self.memory_mib - other.memory_mib,
                         self.xpu_milli - other.xpu_milli)

    def fits_in(self, other: Resources) -> bool:
        return (self.cpu_milli <= other.cpu_milli and self.memory_mib <= other.memory_mib
                and self.xpu_milli <= other.xpu_milli)

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.cpu_milli, self.memory_mib, self.xpu_milli)

    @staticmethod
    def of(request: Request) -> Resources:
        return Resources(request.cpu_milli, request.memory_mib, request.gpu_milli_total)


UNLIMITED = Resources(2**62, 2**62, 2**62)


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A leaf queue. ``quota`` is what it deserves; ``limit`` a hard cap; ``weight`` its share of
    what is left over; ``borrowing`` lets it use idle capacity above quota (that part can be
    reclaimed by queues under their quota when ``reclaimable``)."""

    name: str
    quota: Resources = Resources()
    limit: Resources = UNLIMITED
    weight: float = 1.0
    priority: int = 0
    borrowing: bool = True
    reclaimable: bool = True


@dataclass(frozen=True, slots=True)
class PodGroup:
    """Gang: at least ``min_member`` members are placed together or none is."""

    name: str
    min_member: int


@dataclass(frozen=True, slots=True)
class Running:
    """A pod holding an allocation (what the adapter knows about it)."""

    request: Request
    allocation: Allocation
    started_s: float = 0.0


@dataclass
class CycleResult:
    placed: list[Allocation] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    pending: dict[str, Status] = field(default_factory=dict)


class QueueBook:
    """Usage per queue and the fair-share arithmetic. Pure; caller feeds it the running pods."""

    def __init__(self, queues: Iterable[QueueSpec], capacity: Resources) -> None:
        self.queues: dict[str, QueueSpec] = {q.name: q for q in queues}
        self.queues.setdefault("default", QueueSpec("default"))
        self.capacity = capacity
        self.usage: dict[str, Resources] = {name: Resources() for name in self.queues}

    def spec(self, name: str) -> QueueSpec:
        return self.queues.get(name) or self.queues["default"]

    def charge(self, request: Request, sign: int = 1) -> None:
        name = self.spec(request.queue).name
        delta = Resources.of(request)
        self.usage[name] = self.usage[name] + delta if sign > 0 else self.usage[name] - delta

    def dominant_share(self, name: str) -> float:
        """DRF: the largest share of any resource this queue holds, divided by its weight."""
        used = self.usage.get(name, Resources())
        shares = [u / c for u, c in zip(used.as_tuple(), self.capacity.as_tuple(), strict=True) if c > 0]
        return max(shares, default=0.0) / max(self.spec(name).weight, 1e-9)

    def over_quota(self, name: str) -> bool:
        used = self.usage.get(name, Resources())
        return not used.fits_in(self.spec(name).quota)

    def gate(self, request: Request) -> Status:
        """Quota gate before placement: Success, or WAIT with the reason."""
        queue = self.spec(request.queue)
        after = self.usage[queue.name] + Resources.of(request)
        if not after.fits_in(queue.limit):
            return Status(Code.WAIT, (f"queue {queue.name} would exceed its limit",), "quota")
        if not after.fits_in(queue.quota) and not queue.borrowing:
            return Status(Code.WAIT, (f"queue {queue.name} is at its quota and does not borrow",), "quota")
        return Status.success()

    def fair_shares(self, demand: Mapping[str, Resources]) -> dict[str, Resources]:
        """Water-filling per resource: each queue gets min(quota, demand), the rest is split by
        weight among queues that still want more, capped at their demand."""
        names = list(self.queues)
        cap = np.array(self.capacity.as_tuple(), dtype=float)
        want = np.array([demand.get(n, Resources()).as_tuple() for n in names], dtype=float)
        quota = np.array([self.queues[n].quota.as_tuple() for n in names], dtype=float)
        weight = np.array([self.queues[n].weight for n in names], dtype=float)
        given = np.minimum(want, quota)
        left = np.maximum(cap - given.sum(axis=0), 0)
        for r in range(3):
            for _ in range(len(names)):
                hungry = want[:, r] - given[:, r] > 1e-9
                if not hungry.any() or left[r] <= 1e-9:
                    break
                portion = left[r] * weight * hungry / (weight * hungry).sum()
                extra = np.minimum(portion, want[:, r] - given[:, r])
                given[:, r] += extra
                left[r] -= extra.sum()
        return {n: Resources(*(int(v) for v in given[i])) for i, n in enumerate(names)}


def order_pending(pending: Sequence[Request], book: QueueBook, arrival_s: Mapping[str, float]) -> list[Request]:
    """DRF across queues (lowest weighted dominant share first; queue priority first), then pod
    priority (high first), then arrival (FIFO)."""
    return sorted(
        pending,
        key=lambda r: (-book.spec(r.queue).priority, book.dominant_share(book.spec(r.queue).name),
                       -r.priority, arrival_s.get(r.name, 0.0), r.name),
    )


@dataclass(frozen=True, slots=True)
class PreemptionPlan:
    node: str
    victims: tuple[str, ...]
    allocation: Allocation


def _eligible_victims(preemptor: Request, running: Mapping[str, Running], book: QueueBook) -> list[Running]:
    mine = book.spec(preemptor.queue)
    # a queue may reclaim only up to its own quota: after placing the preemptor it must still fit
    reclaim = (book.usage[mine.name] + Resources.of(preemptor)).fits_in(mine.quota)
    out: list[Running] = []
    for run in running.values():
        victim = run.request
        vq = book.spec(victim.queue)
        if vq.name == mine.name:
            if victim.priority < preemptor.priority:
                out.append(run)
        elif reclaim and vq.reclaimable and book.over_quota(vq.name):
            out.append(run)
    return out


def plan_preemption(
    state: ClusterState,
    scheduler: Scheduler,
    preemptor: Request,
    running: Mapping[str, Running],
    book: QueueBook,
    groups: Mapping[str, Sequence[str]] | None = None,
    budgets: DisruptionBudgets = NO_BUDGETS,
) -> PreemptionPlan | Status:
    """Fewest/lowest victims on one node that let ``preemptor`` fit; never a plan that would not.

    Victims of a gang are evicted as a bundle (all running members of its group). The what-if
    runs inside a Statement that is always rolled back: ``state`` is unchanged on return.
    ``budgets`` (PodDisruptionBudgets): a plan never takes more victims than a budget allows,
    and never a pod the Eviction API would refuse (:mod:`xpupool.core.disruption`).
    """
    groups = groups or {}
    eligible = _eligible_victims(preemptor, running, book)
    candidates = [run for run in eligible if not budgets.protected(run.request)]
    if not candidates:
        why = "no lower-priority or reclaimable pods to preempt"
        if eligible:
            why = f"every lower-priority or reclaimable pod ({len(eligible)}) is protected by a PodDisruptionBudget"
        return Status.unschedulable(why, plugin="preemption")
    by_node: dict[str, list[Running]] = {}
    for run in candidates:
        by_node.setdefault(run.allocation.device_node if preemptor.count else run.allocation.node, []).append(run)
    best: tuple[tuple[int, int, int], PreemptionPlan] | None = None
    for node_name, victims in by_node.items():
        node = state.node_index[node_name]
        restrict = np.zeros(state.num_nodes, dtype=bool)
        restrict[node] = True
        victims = sorted(victims, key=lambda r: (r.request.priority, r.request.gpu_milli_total, -r.started_s))
        statement = Statement(state)
        chosen: list[str] = []
        plan: PreemptionPlan | None = None
        for run in victims:
            bundle = [run.request.name]
            if run.request.pod_group:
                bundle = [m for m in groups.get(run.request.pod_group, [run.request.name]) if m in running]
            fresh = [name for name in bundle if name not in chosen]
            if not budgets.admits([running[v].request for v in chosen + fresh]):
                continue  # a PodDisruptionBudget would refuse this bundle: try the next victim
            for name in fresh:
                if statement.evict(name) is not None:
                    chosen.append(name)
            result = scheduler.place_local(state, preemptor, restrict=restrict)
            if result.status.ok and result.allocation is not None:
                plan = PreemptionPlan(node_name, tuple(chosen), result.allocation)
                break
        statement.rollback()
        if plan is None:
            continue
        worst = max(running[v].request.priority for v in plan.victims)
        key = (len(plan.victims), worst, sum(running[v].request.gpu_milli_total for v in plan.victims))
        if best is None or key < best[0]:
            best = (key, plan)
    if best is None:
        return Status.unschedulable("preempting every eligible pod on any one node would still not make room",
                                    plugin="preemption")
    return best[1]


def run_cycle(
    state: ClusterState,
    scheduler: Scheduler,
    book: QueueBook,
    pending: Sequence[Request],
    *,
    running: Mapping[str, Running] | None = None,
    groups: Mapping[str, PodGroup] | None = None,
    arrival_s: Mapping[str, float] | None = None,
    now_s: float = 0.0,
    preemption: bool = True,
) -> CycleResult:
    """One pass over ``pending``: reserve placements on ``state`` (callers bind them), evict victims.

    ``running`` is updated in a local copy only; ``state`` and ``book`` are mutated to reflect
    the cycle's decisions (allocations reserved, victims released).
    """
    running_now: dict[str, Running] = dict(running or {})
    groups = groups or {}
    arrival_s = arrival_s or {}
    result = CycleResult()
    members: dict[str, list[Request]] = {}
    for r in pending:
        if r.pod_group:
            members.setdefault(r.pod_group, []).append(r)
    running_groups: dict[str, list[str]] = {}
    for name, run in running_now.items():
        if run.request.pod_group:
            running_groups.setdefault(run.request.pod_group, []).append(name)
    done_groups: set[str] = set()
    for request in order_pending(pending, book, arrival_s):
        if request.pod_group:
            if request.pod_group in done_groups:
                continue
            done_groups.add(request.pod_group)
            _place_gang(state, scheduler, book, request.pod_group, members[request.pod_group],
                        groups.get(request.pod_group), len(running_groups.get(request.pod_group, [])),
                        running_now, result, now_s)
            continue
        gate = book.gate(request)
        if not gate.ok:
            result.pending[request.name] = gate
            continue
        placed = scheduler.schedule(state, request)
        if placed.status.ok and placed.allocation is not None:
            book.charge(request)
            running_now[request.name] = Running(request, placed.allocation, now_s)
            result.placed.append(placed.allocation)
            continue
        if preemption:
            plan = plan_preemption(state, scheduler, request, running_now, book, running_groups)
            if isinstance(plan, PreemptionPlan):
                for victim in plan.victims:
                    state.release(victim)
                    book.charge(running_now[victim].request, -1)
                    del running_now[victim]
                    result.preempted.append(victim)
                status = state.reserve(plan.allocation, request)
                if status.ok:
                    book.charge(request)
                    running_now[request.name] = Running(request, plan.allocation, now_s)
                    result.placed.append(plan.allocation)
                    continue
                result.pending[request.name] = status
                continue
        result.pending[request.name] = placed.status
    return result


def _place_gang(
    state: ClusterState,
    scheduler: Scheduler,
    book: QueueBook,
    group: str,
    members: list[Request],
    spec: PodGroup | None,
    already_running: int,
    running_now: dict[str, Running],
    result: CycleResult,
    now_s: float,
) -> None:
    need = max((spec.min_member if spec else len(members)) - already_running, 0)
    statement = Statement(state)
    placed: list[tuple[Request, Allocation]] = []
    failure: Status | None = None
    for member in sorted(members, key=lambda r: r.name):
        gate = book.gate(member)
        outcome = scheduler.place(state, member) if gate.ok else None
        if outcome is not None and outcome.status.ok and outcome.allocation is not None:
            status = statement.reserve(outcome.allocation, member)
            if status.ok:
                placed.append((member, outcome.allocation))
                book.charge(member)
                continue
            failure = status
        else:
            failure = gate if not gate.ok else (outcome.status if outcome else Status.error("no outcome"))
    if len(placed) < need:
        statement.rollback()
        for member, _ in placed:
            book.charge(member, -1)
        why = failure.message() if failure else "not enough members placed"
        for member in members:
            result.pending[member.name] = Status(
                Code.UNSCHEDULABLE, (f"gang {group}: {len(placed)}/{need} members fit ({why})",), "gang")
        return
    statement.commit()
    for member, allocation in placed:
        running_now[member.name] = Running(member, allocation, now_s)
        result.placed.append(allocation)
    for member in members:
        if member.name not in running_now:
            result.pending[member.name] = failure or Status.unschedulable("gang member did not fit")
