"""Preemption: plan victims with the core, evict them through the Eviction API, hold the room.

Data flow::

    unschedulable pod --core plan_preemption(budgets from PodDisruptionBudgets)--> plan(node, victims)
        --> PATCH pods/status nominatedNodeName=node (the preemptor's claim, survives restarts)
        --> POST pods/{victim}/eviction (policy/v1; the apiserver refuses 429 when a budget would be
            violated) for every victim
        --> victims keep their resources on the ledger until the watch reports them deleted
        --> the cycle places nominated pods first, on their nominated node

Guarantees:
  * a plan is made only if the preemptor fits once its victims are gone (the core's what-if), and
    never takes a victim its PodDisruptionBudget would not let go (``status.disruptionsAllowed``,
    one budget per pod at most, as the Eviction API requires);
  * the room is not taken by others: victims hold their cards while terminating, and once they are
    gone the nominated preemptor is placed before any other pod (also after a scheduler restart,
    from ``status.nominatedNodeName``);
  * an eviction the apiserver refuses (a budget changed since we read it) abandons the plan: the
    refused victim is not planned again for ``refused_ttl_s`` and the preemptor is planned afresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from xpupool.core.disruption import NO_BUDGETS, DisruptionBudget, DisruptionBudgets
from xpupool.core.framework import Scheduler
from xpupool.core.model import Request
from xpupool.core.queues import PreemptionPlan, QueueBook, Running, plan_preemption
from xpupool.kube.informer import Informer
from xpupool.kube.metrics import METRICS
from xpupool.kube.objects import pod_key
from xpupool.kube.pod_constraints import label_selector
from xpupool.kube.scheduler.cache import SchedulerCache
from xpupool.kube.scheduler.runtime import Runtime
from xpupool.kube.transport import PODS, ApiError, JsonDict, Resource, TransportError

log = logging.getLogger(__name__)

PDBS = Resource("policy", "v1", "poddisruptionbudgets", True, "PodDisruptionBudget")


def nominated_node(pod: JsonDict) -> str:
    return str((pod.get("status") or {}).get("nominatedNodeName") or "")


def disruption_budget(pdb: JsonDict) -> DisruptionBudget:
    """A PodDisruptionBudget as the planner sees it. Until the disruption controller has observed
    the current generation, nothing may be disrupted (the Eviction API's rule too)."""
    meta = pdb.get("metadata") or {}
    status = pdb.get("status") or {}
    current = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    allowed = int(status.get("disruptionsAllowed") or 0) if current else 0
    return DisruptionBudget(
        name=f"{meta.get('namespace')}/{meta.get('name')}",
        namespace=str(meta.get("namespace") or ""),
        selector=label_selector((pdb.get("spec") or {}).get("selector"), [], "spec.selector"),
        allowed=allowed,
    )


class Preemptor:
    """Plans with the core and evicts; the victims a preemptor waits for live in the cache."""

    def __init__(self, runtime: Runtime, cache: SchedulerCache, *, refused_ttl_s: float = 30.0) -> None:
        self.runtime = runtime
        self.cache = cache
        self.refused_ttl_s = refused_ttl_s
        #: PodDisruptionBudgets (when preemption is on and we may list them)
        self.pdbs: Informer | None = None
        #: the planner's view of ``pdbs`` (rebuilt only after a budget changed)
        self._budgets: DisruptionBudgets | None = None
        #: victim key -> until when it is not planned again (the Eviction API refused it)
        self.refused: dict[str, float] = {}
        #: preemptor key -> why the last attempt found no plan (shown with the pending reason)
        self.why_not: dict[str, str] = {}

    async def start(self) -> asyncio.Task[None] | None:
        """Watch PodDisruptionBudgets. Without permission the Eviction API still enforces them
        (a refused eviction abandons the plan), we just cannot plan around them."""
        if not self.runtime.config.preemption:
            return None
        try:
            await self.runtime.transport.list(PDBS, limit=1)
        except (ApiError, TransportError) as exc:
            log.warning("cannot list PodDisruptionBudgets (%s): the Eviction API alone enforces them", exc)
            return None
        self.pdbs = Informer(self.runtime.transport, PDBS)
        self.pdbs.add_handler(self._on_pdb)
        return asyncio.create_task(self.pdbs.run())

    def _on_pdb(self, etype: str, old: JsonDict | None, new: JsonDict | None) -> None:
        self._budgets = None
        self.runtime.wake()  # a budget that grew may unblock a waiting preemptor

    def budgets(self) -> DisruptionBudgets:
        """Built once per change of the budgets, not once per unschedulable pod."""
        if self.pdbs is None:
            return NO_BUDGETS
        if self._budgets is None:
            self._budgets = DisruptionBudgets(disruption_budget(p) for p in self.pdbs.store.values())
        return self._budgets

    def preempt(
        self, pod: JsonDict, request: Request, running: dict[str, Running], book: QueueBook, core: Scheduler
    ) -> bool:
        """Plan with the core, nominate, evict.

        True when the pod is waiting for victims (planned now or earlier and still terminating).
        Planned victims are removed from ``running`` (never planned twice in one cycle).
        """
        cache = self.cache
        key = pod_key(pod)
        waiting = cache.preempting.get(key)
        if waiting and any(v in cache.pods.store for v in waiting):
            return True
        if not waiting and self._lower_priority_terminating(nominated_node(pod), request.priority):
            return True  # an earlier plan (a previous leader's?) is still being carried out there
        now = self.runtime.clock.now_s()
        self.refused = {v: until for v, until in self.refused.items() if until > now}
        candidates = {k: r for k, r in running.items() if k not in self.refused}
        groups: dict[str, list[str]] = defaultdict(list)
        for name, run in candidates.items():
            if run.request.pod_group:
                groups[run.request.pod_group].append(name)
        plan = plan_preemption(cache.state, core, request, candidates, book, groups, budgets=self.budgets())
        if not isinstance(plan, PreemptionPlan):
            self.why_not[key] = "; ".join(plan.reasons)
            return False
        self.why_not.pop(key, None)
        cache.preempting[key] = set(plan.victims)
        self.runtime.spawn(self._nominate(pod, plan.node))
        events = self.runtime.events
        for vkey in plan.victims:
            running.pop(vkey, None)  # never planned twice, by another preemptor in this cycle
            vpod = cache.pods.store[vkey]
            events.pod_event(
                vpod,
                reason="Preempted",
                warning=True,
                action="Preempting",
                note=f"evicted for {key} (priority {request.priority}) on {plan.node}",
            )
            self.runtime.spawn(self._evict(vpod, key))
        events.pod_event(
            pod,
            reason="Preempting",
            action="Preempting",
            note=f"evicting {len(plan.victims)} pod(s) on {plan.node}: {', '.join(plan.victims)}",
        )
        METRICS.preemptions.inc(len(plan.victims))
        return True

    def _lower_priority_terminating(self, node: str, priority: int) -> bool:
        """kube-scheduler's rule: a pod nominated to a node where lower-priority pods are still
        terminating does not preempt again."""
        if not node:
            return False
        for key, (allocation, victim) in self.cache.accounted.items():
            if allocation.node != node or victim.priority >= priority:
                continue
            pod = self.cache.pods.store.get(key)
            if pod is not None and (pod.get("metadata") or {}).get("deletionTimestamp"):
                return True
        return False

    def ready(self, candidates: set[str]) -> set[str]:
        """Preemptors among ``candidates`` whose victims are all gone, and pods nominated to a node
        by an earlier plan (a previous leader's, too) that no victim is pending for."""
        store = self.cache.pods.store
        ready = {
            key
            for key, victims in self.cache.preempting.items()
            if key in candidates and not any(v in store for v in victims)
        }
        for key in candidates - set(self.cache.preempting):
            pod = self.cache.pending.get(key)
            if pod is not None and nominated_node(pod):
                ready.add(key)
        return ready

    def clear_nomination(self, pod: JsonDict) -> None:
        """The nominated room is gone and no new plan exists: drop the claim."""
        if nominated_node(pod):
            self.runtime.spawn(self._nominate(pod, None))

    async def _nominate(self, pod: JsonDict, node: str | None) -> None:
        if not self.runtime.may_write():
            return
        meta = pod["metadata"]
        try:
            await self.runtime.transport.patch(
                PODS,
                meta["name"],
                {"status": {"nominatedNodeName": node}},
                namespace=meta["namespace"],
                patch_type="merge",
                subresource="status",
            )
        except (ApiError, TransportError) as exc:
            log.info("nominate %s on %s: %s", pod_key(pod), node, exc)

    async def _evict(self, pod: JsonDict, preemptor: str) -> None:
        if not self.runtime.may_write():
            return
        meta = pod["metadata"]
        key = pod_key(pod)
        try:
            await self.runtime.transport.evict(meta["namespace"], meta["name"], uid=meta["uid"])
        except ApiError as exc:
            if exc.status in (404, 409):
                return  # already gone (or replaced by a namesake): nothing left to evict
            if exc.status in (429, 500):  # a budget refused (429), or several budgets cover it (500)
                log.info("eviction of %s refused (%s): planning %s afresh", key, exc, preemptor)
                self.refused[key] = self.runtime.clock.now_s() + self.refused_ttl_s
                self.cache.preempting.pop(preemptor, None)
                METRICS.preemptions_refused.inc()
                self.runtime.wake()
                return
            log.info("evict %s: %s", key, exc)
        except TransportError as exc:
            log.info("evict %s: %s", key, exc)
