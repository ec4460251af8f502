"""Binding placed pods: assume, bind (annotation on the Binding), confirm or undo.

Data flow::

    cycle placement (already reserved on the ledger) --assume--> cache.assumed[key]
        --bind task--> POST pods/binding carrying ``xpupool.io/allocation`` (the apiserver writes
        annotation and nodeName in ONE etcd write; ``annotate_before_bind``: PATCH first)
        --watch (SchedulerCache.on_pod) confirms--> assumption dropped
    failed bind -> undo: release the reservation; requeue after a backoff when worth retrying
    assumption older than ``assume_ttl_s`` -> re-read the pod from the apiserver (verify)
"""

from __future__ import annotations

import logging

from xpupool.core.model import WHOLE_CARD_MILLI, Allocation, Request
from xpupool.kube.binder import Binder, BindOutcome
from xpupool.kube.metrics import METRICS
from xpupool.kube.objects import ANN_ALLOCATION, encode_allocation, pod_key
from xpupool.kube.scheduler.cache import Assumed, SchedulerCache
from xpupool.kube.scheduler.runtime import Runtime
from xpupool.kube.transport import PODS, ApiError, JsonDict, TransportError

log = logging.getLogger(__name__)


class Bindings:
    """Starts, tracks and settles binds; every outcome leaves the ledger consistent."""

    def __init__(self, runtime: Runtime, cache: SchedulerCache) -> None:
        self.runtime = runtime
        self.cache = cache
        config = runtime.config
        self.binder = Binder(runtime.transport, concurrency=config.bind_concurrency, qps=config.bind_qps)
        cache.resume_bind = self.resume

    def assume(self, pod: JsonDict, allocation: Allocation, request: Request) -> None:
        """Record a placement the core already reserved on the cache's state, then bind it."""
        cache = self.cache
        key = pod_key(pod)
        cache.accounted[key] = (allocation, request)
        cache.pending.pop(key, None)
        cache.preempting.pop(key, None)
        deadline = self.runtime.clock.now_s() + self.runtime.config.assume_ttl_s
        assumed = Assumed(allocation.node, pod["metadata"]["uid"], deadline)
        cache.assumed[key] = assumed
        METRICS.assumed_pods.set(len(cache.assumed))
        METRICS.placements.labels("placed").inc()
        self.runtime.spawn(self._bind(pod, allocation, assumed, annotate=True))

    def resume(self, pod: JsonDict, allocation: Allocation, assumed: Assumed) -> None:
        """Bind a pod a previous leader annotated but did not bind (already assumed)."""
        self.runtime.spawn(self._bind(pod, allocation, assumed, annotate=False))

    def expire(self, now_s: float) -> None:
        """Re-read, from the apiserver, every bound assumption the watch has not confirmed within
        its TTL. A bind still queued or in flight is left to its own task, which always ends in
        bound or undone: re-reading those only adds load to an apiserver that is already slow."""
        for key, assumed in list(self.cache.assumed.items()):
            if now_s > assumed.deadline_s:
                assumed.deadline_s = now_s + self.runtime.config.assume_ttl_s
                if assumed.bound:
                    self.runtime.spawn(self._verify(key, assumed))

    def _undo(self, key: str, assumed: Assumed, *, requeue: bool) -> None:
        cache = self.cache
        if cache.assumed.get(key) is not assumed:
            return  # the watch already settled it
        del cache.assumed[key]
        METRICS.assumed_pods.set(len(cache.assumed))
        cache.release(key)
        if requeue:
            cache.requeue(key)

    async def _bind(self, pod: JsonDict, allocation: Allocation, assumed: Assumed, *, annotate: bool) -> None:
        runtime = self.runtime
        meta = pod["metadata"]
        key = pod_key(pod)
        annotation = {ANN_ALLOCATION: encode_allocation(allocation)}
        if not runtime.may_write():
            self._undo(key, assumed, requeue=True)
            return
        if annotate and runtime.config.annotate_before_bind:
            try:
                await runtime.transport.patch(
                    PODS,
                    meta["name"],
                    {"metadata": {"uid": meta["uid"], "annotations": annotation}},
                    namespace=meta["namespace"],
                )
            except (ApiError, TransportError) as exc:
                log.info("annotate %s failed: %s", key, exc)
                self._undo(key, assumed, requeue=True)
                return
            if not runtime.may_write():
                return  # fenced after annotating: the next leader completes the bind
        result = await self.binder.bind(
            meta["namespace"],
            meta["name"],
            allocation.node,
            uid=meta["uid"],
            annotations=None if runtime.config.annotate_before_bind else annotation,
        )
        if result.outcome is BindOutcome.BOUND:
            assumed.bound = True
            self.cache.backoff.pop(key, None)
            runtime.events.pod_event(pod, reason="Scheduled", note=describe(allocation))
            return
        log.info("bind %s -> %s: %s %s", key, allocation.node, result.outcome.value, result.message)
        self._undo(key, assumed, requeue=result.outcome is BindOutcome.ERROR)

    async def _verify(self, key: str, assumed: Assumed) -> None:
        """An assumption outlived its TTL: ask the apiserver what really happened."""
        namespace, name = key.split("/", 1)
        try:
            pod = await self.runtime.transport.get(PODS, name, namespace=namespace)
        except ApiError as exc:
            if exc.status == 404:
                self._undo(key, assumed, requeue=False)
            return
        except TransportError:
            assumed.deadline_s = self.runtime.clock.now_s() + self.runtime.config.assume_ttl_s
            return
        node = (pod.get("spec") or {}).get("nodeName")
        if node == assumed.node and self.cache.assumed.get(key) is assumed:
            del self.cache.assumed[key]
        elif not node and not assumed.bound:
            assumed.deadline_s = self.runtime.clock.now_s() + self.runtime.config.assume_ttl_s  # still in flight
        else:
            self._undo(key, assumed, requeue=not node)


def describe(allocation: Allocation) -> str:
    """The ``Scheduled`` event's note: where, which cards, how much."""
    share = "whole" if allocation.share_milli >= WHOLE_CARD_MILLI else f"{allocation.share_milli / 10:g}%"
    where = allocation.node if not allocation.is_remote else f"{allocation.node} (cards on {allocation.device_node})"
    return (
        f"assigned to {where}: card(s) {','.join(map(str, allocation.cards))}, {share} compute, "
        f"{'+'.join(map(str, allocation.device_memory_mib))} MiB"
    )
