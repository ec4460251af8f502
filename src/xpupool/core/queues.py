"""One scheduling cycle over queues: ordering, quota gates, preemption and gangs.

The queue tree, its quota arithmetic and reclaim rules live in :mod:`xpupool.core.quota`; which
queue a pod may use in :mod:`xpupool.core.queue_access`. One cycle (:func:`run_cycle`)::

    order pods: hierarchical DRF (per level from the top: queue priority, then the lowest
                weighted dominant share), then pod priority, then arrival (FIFO)
                -- gang members travel together
    for each pod / gang:
        quota gate: limits are hard caps at every level; above its guarantee a queue borrows
                    what its parent has left (QueueBook.gate); with per-model quota the pod is
                    steered to the models its queue still has room on
        place:      Scheduler.place (same code as the simulator); the exact charge (device
                    memory, card model) is gated again and the placement undone if it fails
        otherwise:  preemption -- evict the fewest, lowest-priority victims that make the pod
                    fit on one node (own queue: lower priority; other queues: only pods of
                    branches above their guarantee, when the preemptor stays within its own:
                    QueueBook.may_reclaim); never evict unless the what-if shows the pod fits
        gang:       all members reserved in one Statement, or none

Everything is pure: time comes from the injected clock, nothing is bound here; the adapter
(Kubernetes scheduler daemon or simulator) binds the returned allocations and deletes victims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from xpupool.core.cluster import ClusterState
from xpupool.core.disruption import NO_BUDGETS, DisruptionBudgets
from xpupool.core.framework import Scheduler
from xpupool.core.model import Allocation, Request
from xpupool.core.quota import UNLIMITED, Limits, QueueBook, QueueSpec, Resources, usage_of
from xpupool.core.statement import Statement
from xpupool.core.status import Code, Status

__all__ = [
    "UNLIMITED",
    "CycleResult",
    "Limits",
    "PodGroup",
    "PreemptionPlan",
    "QueueBook",
    "QueueSpec",
    "Resources",
    "Running",
    "order_pending",
    "plan_preemption",
    "run_cycle",
]


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


def order_pending(pending: Sequence[Request], book: QueueBook, arrival_s: Mapping[str, float]) -> list[Request]:
    """Hierarchical DRF across queues (:meth:`QueueBook.order_key`: per level, queue priority
    first, then the lowest weighted dominant share), then pod priority (high first), then
    arrival (FIFO)."""
    keys = {name: book.order_key(name) for name in {book.spec(r.queue).name for r in pending}}
    return sorted(
        pending,
        key=lambda r: (keys[book.spec(r.queue).name], -r.priority, arrival_s.get(r.name, 0.0), r.name),
    )


def charge_placed(book: QueueBook, state: ClusterState, request: Request, allocation: Allocation,
                  sign: int = 1) -> None:
    """Charge (or with ``sign`` -1 refund) a placed pod's exact usage to its queue path."""
    book.charge(request, usage_of(state, request, allocation), sign)


def admit(book: QueueBook, state: ClusterState, request: Request) -> tuple[Request, Status]:
    """The quota gate before placement. Returns the request to place (its allowed models
    narrowed to those its queue has per-model quota left on) and Success, or WAIT."""
    gate = book.gate(request)
    if not gate.ok:
        return request, gate
    models, status = book.allowed_models(request, state.models)
    if not status.ok:
        return request, status
    if models is not None and tuple(models) != request.models:
        request = replace(request, models=tuple(models))
    return request, Status.success()


@dataclass(frozen=True, slots=True)
class PreemptionPlan:
    node: str
    victims: tuple[str, ...]
    allocation: Allocation


def _eligible_victims(preemptor: Request, running: Mapping[str, Running], book: QueueBook) -> list[Running]:
    mine = book.spec(preemptor.queue).name
    amount = Resources.of(preemptor)
    reclaimable: dict[str, bool] = {}
    out: list[Running] = []
    for run in running.values():
        victim = run.request
        theirs = book.spec(victim.queue).name
        if theirs == mine:
            if victim.priority < preemptor.priority:
                out.append(run)
            continue
        if theirs not in reclaimable:
            reclaimable[theirs] = book.may_reclaim(preemptor, amount, theirs)
        if reclaimable[theirs]:
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

    def bundle_of(run: Running) -> list[str]:
        if run.request.pod_group:
            return [m for m in groups.get(run.request.pod_group, [run.request.name]) if m in running]
        return [run.request.name]

    order = sorted(candidates, key=lambda r: (r.request.priority, r.request.gpu_milli_total, -r.started_s))
    free_fit = scheduler.place(state, preemptor)
    if free_fit.status.ok and free_fit.allocation is not None:
        # The cards are free; only quota stands in the way: reclaim borrowed pods anywhere.
        chosen: list[str] = []
        for run in order:
            fresh = [n for n in bundle_of(run) if n not in chosen]
            if not budgets.admits([running[v].request for v in chosen + fresh]):
                continue  # a PodDisruptionBudget would refuse this bundle: try the next victim
            chosen.extend(fresh)
            if _quota_allows(book, state, preemptor, free_fit.allocation, [running[n] for n in chosen]):
                return PreemptionPlan(free_fit.allocation.node, tuple(chosen), free_fit.allocation)
        return Status.unschedulable("reclaiming every eligible pod would still leave the queue over quota",
                                    plugin="preemption")
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
        chosen = []
        plan: PreemptionPlan | None = None
        for run in victims:
            fresh = [name for name in bundle_of(run) if name not in chosen]
            if not budgets.admits([running[v].request for v in chosen + fresh]):
                continue  # a PodDisruptionBudget would refuse this bundle: try the next victim
            for name in fresh:
                if statement.evict(name) is not None:
                    chosen.append(name)
            result = scheduler.place_local(state, preemptor, restrict=restrict)
            if (result.status.ok and result.allocation is not None
                    and _quota_allows(book, state, preemptor, result.allocation, [running[n] for n in chosen])):
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


def _quota_allows(book: QueueBook, state: ClusterState, preemptor: Request, allocation: Allocation,
                  victims: Sequence[Running]) -> bool:
    """The quota gate for ``preemptor`` at ``allocation`` once ``victims`` are gone (the book is
    restored before returning)."""
    refunds = [(v.request, usage_of(state, v.request, v.allocation)) for v in victims]
    for request, amount in refunds:
        book.charge(request, amount, -1)
    try:
        return book.gate(preemptor, usage_of(state, preemptor, allocation)).ok
    finally:
        for request, amount in refunds:
            book.charge(request, amount)


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
        request, status = admit(book, state, request)
        if status.ok:
            placed = scheduler.place(state, request)
            status = placed.status
            if placed.status.ok and placed.allocation is not None:
                # device memory given in percent and the card model are known only now
                status = book.gate(request, usage_of(state, request, placed.allocation))
                if status.ok:
                    status = state.reserve(placed.allocation, request)
                if status.ok:
                    charge_placed(book, state, request, placed.allocation)
                    running_now[request.name] = Running(request, placed.allocation, now_s)
                    result.placed.append(placed.allocation)
                    continue
        if preemption and status.code is Code.UNSCHEDULABLE:
            plan = plan_preemption(state, scheduler, request, running_now, book, running_groups)
            if isinstance(plan, PreemptionPlan):
                for victim in plan.victims:
                    gone = running_now.pop(victim)
                    charge_placed(book, state, gone.request, gone.allocation, -1)
                    state.release(victim)
                    result.preempted.append(victim)
                status = state.reserve(plan.allocation, request)
                if status.ok:
                    charge_placed(book, state, request, plan.allocation)
                    running_now[request.name] = Running(request, plan.allocation, now_s)
                    result.placed.append(plan.allocation)
                    continue
        result.pending[request.name] = status
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
        member, gate = admit(book, state, member)
        outcome = scheduler.place(state, member) if gate.ok else None
        if outcome is not None and outcome.status.ok and outcome.allocation is not None:
            exact = book.gate(member, usage_of(state, member, outcome.allocation))
            status = statement.reserve(outcome.allocation, member) if exact.ok else exact
            if status.ok:
                placed.append((member, outcome.allocation))
                charge_placed(book, state, member, outcome.allocation)
                continue
            failure = status
        else:
            failure = gate if not gate.ok else (outcome.status if outcome else Status.error("no outcome"))
    if len(placed) < need:
        statement.rollback()
        for member, allocation in placed:
            charge_placed(book, state, member, allocation, -1)
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
