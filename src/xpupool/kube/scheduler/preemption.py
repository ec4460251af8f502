"""Preemption: plan victims with the core, evict them, place the preemptor once they are gone.

The core's :func:`~xpupool.core.queues.plan_preemption` picks the victims (never a pod already
planned as a victim in this cycle). Victims keep their resources on the ledger until the watch
reports them deleted, so a preemptor never shares a card with a still-running victim; the cycle
places preemptors whose victims are gone in a first pass of their own.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from xpupool.core.framework import Scheduler
from xpupool.core.model import Request
from xpupool.core.queues import PreemptionPlan, QueueBook, Running, plan_preemption
from xpupool.kube.metrics import METRICS
from xpupool.kube.objects import pod_key
from xpupool.kube.scheduler.cache import SchedulerCache
from xpupool.kube.scheduler.runtime import Runtime
from xpupool.kube.transport import PODS, ApiError, JsonDict, TransportError

log = logging.getLogger(__name__)


class Preemptor:
    """Plans with the core and evicts; the victims a preemptor waits for live in the cache."""

    def __init__(self, runtime: Runtime, cache: SchedulerCache) -> None:
        self.runtime = runtime
        self.cache = cache

    def preempt(
        self, pod: JsonDict, request: Request, running: dict[str, Running], book: QueueBook, core: Scheduler
    ) -> bool:
        """Plan with the core, then evict.

        True when the pod is waiting for victims (planned now or earlier and still terminating).
        Planned victims are removed from ``running`` (never planned twice in one cycle).
        """
        cache = self.cache
        key = pod_key(pod)
        waiting = cache.preempting.get(key)
        if waiting and any(v in cache.pods.store for v in waiting):
            return True
        groups: dict[str, list[str]] = defaultdict(list)
        for name, run in running.items():
            if run.request.pod_group:
                groups[run.request.pod_group].append(name)
        plan = plan_preemption(cache.state, core, request, running, book, groups)
        if not isinstance(plan, PreemptionPlan):
            return False
        cache.preempting[key] = set(plan.victims)
        events = self.runtime.events
        for vkey in plan.victims:
            running.pop(vkey, None)  # never planned twice, by another preemptor in this cycle
            vpod = cache.pods.store[vkey]
            events.pod_event(
                vpod,
                reason="Preempted",
                warning=True,
                action="Preempting",
                note=f"preempted by {key} (priority {request.priority}) on {plan.node}",
            )
            self.runtime.spawn(self._evict(vpod))
        events.pod_event(
            pod,
            reason="Preempting",
            action="Preempting",
            note=f"evicting {len(plan.victims)} pod(s) on {plan.node}: {', '.join(plan.victims)}",
        )
        METRICS.preemptions.inc(len(plan.victims))
        return True

    def ready(self, candidates: set[str]) -> set[str]:
        """Preemptors among ``candidates`` whose victims are all gone."""
        store = self.cache.pods.store
        return {
            key
            for key, victims in self.cache.preempting.items()
            if key in candidates and not any(v in store for v in victims)
        }

    async def _evict(self, pod: JsonDict) -> None:
        if not self.runtime.may_write():
            return
        meta = pod["metadata"]
        try:
            await self.runtime.transport.delete(PODS, meta["name"], namespace=meta["namespace"], uid=meta["uid"])
        except (ApiError, TransportError) as exc:
            log.info("evict %s: %s", pod_key(pod), exc)
