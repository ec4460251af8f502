"""One scheduling cycle: pending pods -> core ``run_cycle`` -> bind / preempt / explain.

Synchronous: no other coroutine runs while it decides. Ordering (DRF across queues, priority,
FIFO), quota gates, gangs and placement are the core's :func:`~xpupool.core.queues.run_cycle`,
the same code the simulator runs. The adapter adds what needs the API: binding the placements
(:mod:`.binding`), preemption as "evict now, place when the victims are gone"
(:mod:`.preemption`), and the explanation of why a pod waits (Event + ``PodScheduled``
condition).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from dataclasses import dataclass

import numpy as np

from xpupool.core.model import Allocation, Request
from xpupool.core.queues import CycleResult, PodGroup, QueueBook, order_pending, run_cycle
from xpupool.core.request import LABEL_POD_GROUP
from xpupool.core.status import Code
from xpupool.kube.metrics import METRICS
from xpupool.kube.objects import ANN_POD_GROUP_MIN, pod_key
from xpupool.kube.scheduler.binding import Bindings
from xpupool.kube.scheduler.cache import SchedulerCache
from xpupool.kube.scheduler.policy import Policy
from xpupool.kube.scheduler.preemption import Preemptor, nominated_node
from xpupool.kube.scheduler.queueing import QueueSource
from xpupool.kube.scheduler.runtime import Runtime
from xpupool.kube.transport import PODS, ApiError, JsonDict, TransportError

log = logging.getLogger(__name__)

GANG = "gang:"  # backoff key prefix of a whole gang
GATED_MESSAGE = "Scheduling is blocked due to non-empty scheduling gates"


@dataclass
class Outcome:
    """Per-cycle counters (for tests and logs)."""

    placed: int = 0
    unschedulable: int = 0
    preemptions: int = 0


class Cycle:
    """Runs cycles over the cache with the policy; counts them in ``count``."""

    def __init__(
        self,
        runtime: Runtime,
        cache: SchedulerCache,
        *,
        policy: Policy,
        bindings: Bindings,
        preemptor: Preemptor,
        queues: QueueSource,
    ) -> None:
        self.runtime = runtime
        self.cache = cache
        self.policy = policy
        self.bindings = bindings
        self.preemptor = preemptor
        self.queues = queues
        self.count = 0
        self._status_sem = asyncio.Semaphore(8)

    def _pending_requests(self, now: float) -> tuple[list[Request], dict[str, PodGroup]]:
        """Pending pods out of backoff, as core requests; gangs as a whole (one group backoff)."""
        cache = self.cache
        requests: list[Request] = []
        group_min: dict[str, int] = {}
        for key, pod in cache.pending.items():
            parsed = cache.request_of(pod)
            request = parsed.request
            backoff_key = key
            if request is not None and request.pod_group:
                backoff_key = GANG + request.pod_group
            b = cache.backoff.get(backoff_key)
            if b is not None and now < b.not_before_s:
                continue
            if request is None:
                note = "xpupool cannot schedule this pod: " + "; ".join(parsed.errors)
                self.runtime.events.pod_event(pod, reason="FailedScheduling", warning=True, note=note)
                self._mark_unschedulable(pod, note)
                cache.delay(key)
                METRICS.placements.labels("invalid").inc()
                continue
            if request.constraints.gates:
                # kube-scheduler's wording; no event, no backoff: removing a gate is a pod update
                self._mark_unschedulable(pod, GATED_MESSAGE, reason="SchedulingGated")
                continue
            cache.arrival.setdefault(key, now)
            if request.pod_group:
                wanted = _gang_min(pod)
                if wanted:
                    group_min[request.pod_group] = max(group_min.get(request.pod_group, 0), wanted)
            requests.append(request)
        return requests, {g: PodGroup(g, n) for g, n in group_min.items()}

    def run(self) -> Outcome:
        """One scheduling cycle (see the module docstring)."""
        start = time.perf_counter()
        out = Outcome()
        cache, policy = self.cache, self.policy
        config = self.runtime.config
        if cache.nodes_dirty:
            cache.rebuild()
            policy.refresh(cache.state, cache.known_requests(), now_s=self.runtime.clock.now_s())
        now = self.runtime.clock.now_s()
        if policy.stale(now):
            policy.refresh(cache.state, cache.known_requests(), now_s=now)
        self.bindings.expire(now)
        requests, groups = self._pending_requests(now)
        if requests and self.runtime.may_write():
            running = cache.running()  # preemption candidates
            book = self.queues.book(cache.state, cache.charged(), requests)
            if 0 < config.max_pods_per_cycle < len(requests):
                requests = self._first(requests, book, config.max_pods_per_cycle)
                self.runtime.wake()  # the rest in the next cycle, once these binds are on their way
            by_name = {r.name: r for r in requests}
            # Preemptors whose victims are gone go first, on the node they were nominated to, so
            # the room they evicted for is not taken by a pod that happens to sort earlier.
            ready = self.preemptor.ready(set(by_name))
            result = CycleResult()
            for key in sorted(ready, key=lambda k: -by_name[k].priority):
                allocation = self._place_nominated(cache.pending[key], by_name[key], book)
                if allocation is not None:
                    result.placed.append(allocation)
            done = {a.pod for a in result.placed}
            for batch in (
                [r for r in requests if r.name in ready and r.name not in done],
                [r for r in requests if r.name not in ready],
            ):
                if not batch:
                    continue
                part = run_cycle(
                    cache.state,
                    policy.core,
                    book,
                    batch,
                    running=running,
                    groups=groups,
                    arrival_s=cache.arrival,
                    now_s=now,
                    preemption=False,
                )
                result.placed.extend(part.placed)
                result.pending.update(part.pending)
            for allocation in result.placed:
                self.bindings.assume(cache.pending[allocation.pod], allocation, by_name[allocation.pod])
                out.placed += 1
            preemptions_left = config.max_preemptions_per_cycle if config.preemption else 0
            delayed_groups: set[str] = set()
            for key, status in result.pending.items():
                pod = cache.pending.get(key)
                if pod is None:
                    continue
                out.unschedulable += 1
                METRICS.placements.labels("unschedulable").inc()
                request = by_name[key]
                if (
                    preemptions_left > 0
                    and not request.pod_group
                    and status.code is Code.UNSCHEDULABLE
                    and self.preemptor.preempt(pod, request, running, book, policy.core)
                ):
                    preemptions_left -= 1
                    out.preemptions += 1
                    continue
                if preemptions_left > 0 and key not in cache.preempting:
                    self.preemptor.clear_nomination(pod)  # no room on the nominated node, no new plan
                if request.pod_group:
                    if GANG + request.pod_group not in delayed_groups:
                        delayed_groups.add(GANG + request.pod_group)
                        cache.delay(GANG + request.pod_group)
                else:
                    cache.delay(key)
                if key not in cache.preempting:
                    note = status.message()
                    if status.plugin not in ("gang", "quota"):
                        note = f"0/{cache.state.num_nodes} nodes available: {note}"
                    why_not = self.preemptor.why_not.pop(key, "")
                    if why_not:
                        note += f"; preemption: {why_not}"
                    self.runtime.events.pod_event(pod, reason="FailedScheduling", warning=True, note=note)
                    self._mark_unschedulable(pod, note)
        METRICS.pending_pods.set(len(cache.pending))
        METRICS.cycle_latency.observe(time.perf_counter() - start)
        self.count += 1
        return out

    def _first(self, requests: list[Request], book: QueueBook, limit: int) -> list[Request]:
        """The first ``limit`` requests in the core's queue order, completed with every pending
        member of a gang that made the cut (gangs are decided whole)."""
        ordered = order_pending(requests, book, self.cache.arrival)
        chosen = ordered[:limit]
        gangs = {r.pod_group for r in chosen if r.pod_group}
        if gangs:
            names = {r.name for r in chosen}
            chosen += [r for r in ordered[limit:] if r.pod_group in gangs and r.name not in names]
        return chosen

    def _place_nominated(self, pod: JsonDict, request: Request, book: QueueBook) -> Allocation | None:
        """Reserve ``request`` on its nominated node when it fits there now (quota permitting)."""
        node = self.cache.state.node_index.get(nominated_node(pod))
        if node is None or not book.gate(request).ok:
            return None
        state = self.cache.state
        only = np.zeros(state.num_nodes, dtype=bool)
        only[node] = True
        placed = self.policy.core.place_local(state, request, restrict=only)
        if placed.allocation is None or not state.reserve(placed.allocation, request).ok:
            return None
        book.charge(request)
        return placed.allocation

    def _mark_unschedulable(self, pod: JsonDict, message: str, *, reason: str = "Unschedulable") -> None:
        """Set ``PodScheduled=False/<reason>`` (what kube-scheduler does; the cluster autoscaler
        and ``kubectl get pods`` read it; ``SchedulingGated`` for gated pods). Skipped when the
        pod already says so."""
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == reason
                and cond.get("message") == message
            ):
                return
        meta = pod["metadata"]
        patch = {
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": reason,
                        "message": message[:2048],
                        "lastTransitionTime": _now_rfc3339(),
                    }
                ]
            }
        }
        runtime = self.runtime

        async def write() -> None:
            if not runtime.may_write():
                return
            async with self._status_sem:
                try:
                    await runtime.transport.patch(
                        PODS,
                        meta["name"],
                        patch,
                        namespace=meta["namespace"],
                        patch_type="strategic",
                        subresource="status",
                    )
                except (ApiError, TransportError) as exc:
                    log.debug("PodScheduled condition on %s: %s", pod_key(pod), exc)

        runtime.spawn(write())


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gang_min(pod: JsonDict) -> int:
    meta = pod.get("metadata") or {}
    if not (meta.get("labels") or {}).get(LABEL_POD_GROUP):
        return 0
    try:
        return int((meta.get("annotations") or {}).get(ANN_POD_GROUP_MIN, "0"))
    except ValueError:
        return 0
