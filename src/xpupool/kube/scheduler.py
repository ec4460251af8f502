"""The xpupool scheduler daemon: places ``spec.schedulerName: xpupool`` pods with the pure core.

Data flow::

    Informer(pods, all namespaces) --+--> ledger accounting (every pod holding resources)
    Informer(nodes) -----------------+--> ClusterState rebuild (node set or capacity changed)
    Informer(XPUQueues, if the CRD) -+--> queue specs
                                     |
             cycle (event loop, no await inside): pending pods -> core run_cycle (DRF across
             queues, quota gates, priority, FIFO, gangs all-or-nothing, Scheduler.place; it
             reserves on the ledger) -> "assume" each placement -> spawn bind task;
             unschedulable pods -> core plan_preemption -> delete victims (placed once gone)
                                     |
    bind task: POST pods/binding carrying the ``xpupool.io/allocation`` annotation (the apiserver
    writes annotation and nodeName in ONE etcd write) -> watch confirms -> assumption dropped

Ledger invariants:
  * every non-terminal pod with ``spec.nodeName`` holds its resources (ours from the allocation
    annotation, other schedulers' pods - e.g. kube-scheduler's whole-GPU pods - on the first
    free cards of their node, because the kubelet, not we, picked their cards);
  * an assumed pod holds its resources from reserve until the bind fails or the pod is gone;
  * a restart rebuilds the ledger from the apiserver alone: nothing is kept locally. Because the
    annotation is written atomically with the binding, a crash can never leave an annotation
    that disagrees with the node (with ``annotate_before_bind`` the annotation is written first
    and a restarted scheduler completes those binds from the annotation).

Fencing: with a :class:`~xpupool.kube.lease.LeaderElector`, every API write is preceded by an
``is_leader()`` check, which turns false as soon as renewals have failed for the renew deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from xpupool.core.cluster import BoolArray, ClusterState
from xpupool.core.framework import FitContext, Scheduler
from xpupool.core.model import WHOLE_CARD_MILLI, Allocation, Node, Request
from xpupool.core.queues import (
    CycleResult,
    PodGroup,
    PreemptionPlan,
    QueueBook,
    QueueSpec,
    Resources,
    Running,
    plan_preemption,
    run_cycle,
)
from xpupool.core.request import LABEL_POD_GROUP, ParseResult
from xpupool.core.status import Code
from xpupool.kube.binder import Binder, BindOutcome
from xpupool.kube.events import EventRecorder
from xpupool.kube.informer import DELETED, Informer
from xpupool.kube.lease import LeaderElector
from xpupool.kube.metrics import METRICS
from xpupool.kube.objects import (
    ANN_ALLOCATION,
    ANN_POD_GROUP_MIN,
    SCHEDULER_NAME,
    decode_allocation,
    encode_allocation,
    node_model,
    node_schedulable,
    node_utilization,
    pod_is_terminal,
    pod_key,
    pod_request,
)
from xpupool.kube.queues import XPUQUEUES, queue_spec
from xpupool.kube.transport import NODES, PODS, ApiError, JsonDict, Transport, TransportError

log = logging.getLogger(__name__)


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
    preemption: bool = True
    max_preemptions_per_cycle: int = 4
    #: write the allocation annotation with a PATCH before binding (two writes) instead of on
    #: the Binding itself (one atomic write, the default)
    annotate_before_bind: bool = False
    #: read queue specs from XPUQueue objects (when the CRD is installed)
    queue_crd: bool = True


@dataclass(eq=False)
class _Assumed:
    """A reservation whose bind is in flight or awaiting the watch's confirmation."""

    node: str
    uid: str
    deadline_s: float
    bound: bool = False


@dataclass
class _Backoff:
    attempts: int = 0
    not_before_s: float = 0.0


class _SchedulableFilter:
    """Core filter plugin: removes cordoned/tainted/NotReady nodes (mask kept by the daemon)."""

    name = "kube-node-schedulable"
    reason = "are cordoned, tainted NoSchedule or not ready"

    def __init__(self) -> None:
        self.mask: BoolArray = np.zeros(0, dtype=bool)

    def filter(self, state: ClusterState, ctx: FitContext) -> BoolArray:
        return self.mask


@dataclass
class _Outcome:
    """Per-cycle counters (for tests and logs)."""

    placed: int = 0
    unschedulable: int = 0
    preemptions: int = 0


class KubeScheduler:
    """One scheduler replica. ``run()`` until cancelled; call ``stop()`` for a graceful end."""

    def __init__(
        self,
        transport: Transport,
        *,
        scheduler: Scheduler,
        scheduler_factory: Callable[[ClusterState, list[Request]], Scheduler] | None = None,
        target_refresh_s: float = 300.0,
        config: SchedulerConfig | None = None,
        clock: MonotonicClock | None = None,
        elector: LeaderElector | None = None,
        identity: str = "",
    ) -> None:
        self.transport = transport
        self.core = scheduler
        #: rebuilds the policy from the live cluster (node models + the pods seen so far), so the
        #: fragmentation-aware policies learn the typical pods of this cluster
        self.scheduler_factory = scheduler_factory
        self.target_refresh_s = target_refresh_s
        self._target_built_s: float | None = None
        self.config = config or SchedulerConfig()
        self.clock = clock or MonotonicClock()
        self.elector = elector
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self.pods = Informer(transport, PODS)
        self.nodes = Informer(transport, NODES, label_selector=self.config.node_label_selector)
        self.queues: Informer | None = None  # XPUQueues, when the CRD is installed
        self.binder = Binder(transport, concurrency=self.config.bind_concurrency, qps=self.config.bind_qps)
        self.events = EventRecorder(transport, clock=self.clock, instance=self.identity)
        self._filter = _SchedulableFilter()
        self.core.profile.filters.insert(0, self._filter)
        self.state = ClusterState([])
        self.accounted: dict[str, tuple[Allocation, Request]] = {}
        self.assumed: dict[str, _Assumed] = {}
        self.pending: dict[str, JsonDict] = {}
        self.backoff: dict[str, _Backoff] = {}
        self.preempting: dict[str, set[str]] = {}
        self._requests: dict[str, tuple[str, ParseResult]] = {}
        self._arrival: dict[str, float] = {}
        #: queue name -> spec; unknown queues get defaults (weight 1, no quota, unlimited)
        self.queue_specs: dict[str, QueueSpec] = {}
        self._nodes_dirty = True
        self._wake = asyncio.Event()
        self._status_sem = asyncio.Semaphore(8)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.cycles = 0
        self.pods.add_handler(self._on_pod)
        self.nodes.add_handler(self._on_node)

    # ------------------------------------------------------------------ informer handlers
    def _ours(self, pod: JsonDict) -> bool:
        return (pod.get("spec") or {}).get("schedulerName") == self.config.scheduler_name

    def _on_node(self, etype: str, old: JsonDict | None, new: JsonDict | None) -> None:
        # Heartbeats and utilisation samples change no capacity: no rebuild, no wake-up.
        if (
            old is not None
            and new is not None
            and node_model(old) == node_model(new)
            and node_schedulable(old) == node_schedulable(new)
        ):
            self._apply_utilization(new)
            return
        self._nodes_dirty = True
        self._wake.set()

    def _apply_utilization(self, node: JsonDict) -> None:
        name = node["metadata"]["name"]
        if self._nodes_dirty or name not in self.state.node_index:
            return
        values = node_utilization(node)
        if values is not None:
            self.state.set_utilization(name, values)

    def _on_pod(self, etype: str, old: JsonDict | None, new: JsonDict | None) -> None:
        obj = new if new is not None else old
        assert obj is not None
        key = pod_key(obj)
        if etype == DELETED or new is None or pod_is_terminal(new):
            if key in self.accounted:
                self.backoff.clear()  # capacity freed: every waiting pod may fit now
            self._forget(key)
            self._wake.set()
            return
        node = (new.get("spec") or {}).get("nodeName") or ""
        assumed = self.assumed.get(key)
        if assumed is not None:
            if not node:
                return  # our bind is in flight
            if node == assumed.node:
                del self.assumed[key]  # confirmed
                METRICS.assumed_pods.set(len(self.assumed))
                return
            # bound elsewhere (another scheduler won): account what really happened
            self._release(key)
            del self.assumed[key]
        if node:
            self.pending.pop(key, None)
            if key not in self.accounted and not self._nodes_dirty:
                self._account_bound(new)  # when dirty, the rebuild accounts every bound pod
            return
        if not self._ours(new):
            return
        if key in self.accounted:
            return  # annotated-before-bind, bind being completed
        if decode_allocation(new) is not None and self.config.annotate_before_bind:
            if not self._nodes_dirty:
                self._account_annotated_unbound(new)
            return
        if (new.get("metadata") or {}).get("deletionTimestamp"):
            self.pending.pop(key, None)
            return
        self.pending[key] = new
        self._wake.set()

    def request_of(self, pod: JsonDict) -> ParseResult:
        """``pod_request`` memoised by (key, resourceVersion); gang names namespaced ("ns/group")."""
        key = pod_key(pod)
        rv = str(pod["metadata"].get("resourceVersion", ""))
        hit = self._requests.get(key)
        if hit is not None and hit[0] == rv:
            return hit[1]
        parsed = pod_request(pod)
        if parsed.request is not None and parsed.request.pod_group:
            # the same label in two namespaces is two gangs
            request = parsed.request
            parsed = ParseResult(replace(request, pod_group=f"{request.namespace}/{request.pod_group}"))
        self._requests[key] = (rv, parsed)
        return parsed

    # ------------------------------------------------------------------ ledger
    def _release(self, key: str) -> None:
        if self.accounted.pop(key, None) is not None:
            self.state.release(key)

    def _forget(self, key: str) -> None:
        self._release(key)
        self._requests.pop(key, None)
        self._arrival.pop(key, None)
        self.pending.pop(key, None)
        self.backoff.pop(key, None)
        self.preempting.pop(key, None)
        if self.assumed.pop(key, None) is not None:
            METRICS.assumed_pods.set(len(self.assumed))

    def _reserve(self, allocation: Allocation, request: Request) -> bool:
        status = self.state.reserve(allocation, request)
        if status.ok:
            self.accounted[allocation.pod] = (allocation, request)
            return True
        log.warning("cannot account %s on %s: %s", allocation.pod, allocation.node, status.message())
        return False

    def _account_bound(self, pod: JsonDict) -> None:
        key = pod_key(pod)
        node = pod["spec"]["nodeName"]
        if node not in self.state.node_index:
            return  # a node we do not manage
        parsed = self.request_of(pod)
        request = parsed.request or Request(name=key)
        allocation = decode_allocation(pod)
        if allocation is not None and allocation.node == node and self._ours(pod):
            self._reserve(allocation, request)
            return
        # Not placed by us: host resources, plus cards chosen first-free (the kubelet picked them).
        self._reserve(self._phantom(key, node, request), request)

    def _phantom(self, key: str, node: str, request: Request) -> Allocation:
        idx = self.state.node_index.get(node)
        cards: list[int] = []
        memory: list[int] = []
        if idx is not None and request.count > 0:
            ctx = FitContext.build(self.state, request)
            slots = np.nonzero(ctx.card_fit[idx])[0][: request.count]
            cards = [int(self.state.card_index[idx, s]) for s in slots]
            memory = [int(ctx.device_memory[idx, s]) for s in slots]
        return Allocation(
            pod=key,
            node=node,
            device_node=node,
            cards=tuple(cards),
            share_milli=request.share_milli,
            device_memory_mib=tuple(memory),
        )

    def _account_annotated_unbound(self, pod: JsonDict) -> None:
        """A previous leader annotated (annotate_before_bind) but did not bind: finish its bind."""
        allocation = decode_allocation(pod)
        parsed = self.request_of(pod)
        if allocation is None or parsed.request is None:
            return
        key = pod_key(pod)
        if not self._reserve(allocation, parsed.request):
            # the annotated place is gone (node removed, capacity taken): place the pod afresh
            if not (pod.get("metadata") or {}).get("deletionTimestamp"):
                self.pending[key] = pod
            return
        self.pending.pop(key, None)
        assumed = _Assumed(allocation.node, pod["metadata"]["uid"], self.clock.now_s() + self.config.assume_ttl_s)
        self.assumed[key] = assumed
        self._spawn(self._bind(pod, allocation, assumed, annotate=False))

    def _rebuild(self) -> None:
        """New ClusterState from the node informer; replay every accounted pod."""
        nodes: list[Node] = []
        mask: list[bool] = []
        for obj in sorted(self.nodes.store.values(), key=lambda n: n["metadata"]["name"]):
            nodes.append(node_model(obj))
            mask.append(node_schedulable(obj))
        self.state = ClusterState(nodes)
        self._filter.mask = np.array(mask, dtype=bool)
        self._refresh_policy()
        self._nodes_dirty = False
        for obj in self.nodes.store.values():
            self._apply_utilization(obj)
        old = self.accounted
        self.accounted = {}
        for key, (allocation, request) in old.items():
            if not self._reserve(allocation, request):
                self.assumed.pop(key, None)
        for pod in self.pods.store.values():
            key = pod_key(pod)
            if key in self.accounted or pod_is_terminal(pod):
                continue
            if (pod.get("spec") or {}).get("nodeName"):
                self._account_bound(pod)
        self._nodes_dirty = False
        if self.config.annotate_before_bind:
            for pod in list(self.pods.store.values()):
                if (
                    pod_key(pod) not in self.accounted
                    and self._ours(pod)
                    and not pod_is_terminal(pod)
                    and not (pod.get("spec") or {}).get("nodeName")
                    and decode_allocation(pod) is not None
                ):
                    self._account_annotated_unbound(pod)

    def _refresh_policy(self) -> None:
        """Rebuild the core scheduler from the factory (typical pods = requests seen so far)."""
        if self.scheduler_factory is None:
            return
        population = [parsed.request for _, parsed in self._requests.values() if parsed.request is not None]
        self.core = self.scheduler_factory(self.state, population)
        if self._filter not in self.core.profile.filters:
            self.core.profile.filters.insert(0, self._filter)
        self._target_built_s = self.clock.now_s()

    # ------------------------------------------------------------------ writes
    def _may_write(self) -> bool:
        return not self._stopping and (self.elector is None or self.elector.is_leader())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _undo(self, key: str, assumed: _Assumed, *, requeue: bool) -> None:
        if self.assumed.get(key) is not assumed:
            return  # the watch already settled it
        del self.assumed[key]
        METRICS.assumed_pods.set(len(self.assumed))
        self._release(key)
        pod = self.pods.store.get(key)
        if requeue and pod is not None and not (pod.get("spec") or {}).get("nodeName"):
            self.pending[key] = pod
            self._delay(key)
            self._wake.set()

    def _delay(self, key: str) -> None:
        b = self.backoff.setdefault(key, _Backoff())
        b.attempts += 1
        low, high = self.config.retry_backoff_s
        b.not_before_s = self.clock.now_s() + min(high, low * 2 ** min(b.attempts - 1, 10))

    async def _bind(self, pod: JsonDict, allocation: Allocation, assumed: _Assumed, *, annotate: bool) -> None:
        meta = pod["metadata"]
        key = pod_key(pod)
        annotation = {ANN_ALLOCATION: encode_allocation(allocation)}
        if not self._may_write():
            self._undo(key, assumed, requeue=True)
            return
        if annotate and self.config.annotate_before_bind:
            try:
                await self.transport.patch(
                    PODS,
                    meta["name"],
                    {"metadata": {"uid": meta["uid"], "annotations": annotation}},
                    namespace=meta["namespace"],
                )
            except (ApiError, TransportError) as exc:
                log.info("annotate %s failed: %s", key, exc)
                self._undo(key, assumed, requeue=True)
                return
            if not self._may_write():
                return  # fenced after annotating: the next leader completes the bind
        result = await self.binder.bind(
            meta["namespace"],
            meta["name"],
            allocation.node,
            uid=meta["uid"],
            annotations=None if self.config.annotate_before_bind else annotation,
        )
        if result.outcome is BindOutcome.BOUND:
            assumed.bound = True
            self.backoff.pop(key, None)
            self.events.pod_event(pod, reason="Scheduled", note=_describe(allocation))
            return
        log.info("bind %s -> %s: %s %s", key, allocation.node, result.outcome.value, result.message)
        self._undo(key, assumed, requeue=result.outcome is BindOutcome.ERROR)

    async def _verify(self, key: str, assumed: _Assumed) -> None:
        """An assumption outlived its TTL: ask the apiserver what really happened."""
        namespace, name = key.split("/", 1)
        try:
            pod = await self.transport.get(PODS, name, namespace=namespace)
        except ApiError as exc:
            if exc.status == 404:
                self._undo(key, assumed, requeue=False)
            return
        except TransportError:
            assumed.deadline_s = self.clock.now_s() + self.config.assume_ttl_s
            return
        node = (pod.get("spec") or {}).get("nodeName")
        if node == assumed.node and self.assumed.get(key) is assumed:
            del self.assumed[key]
        elif not node and not assumed.bound:
            assumed.deadline_s = self.clock.now_s() + self.config.assume_ttl_s  # bind still in flight
        else:
            self._undo(key, assumed, requeue=not node)

    # ------------------------------------------------------------------ cycle
    def _queue_book(self, ours: dict[str, Running], pending: Sequence[Request]) -> QueueBook:
        """Queues charged with our running pods. Specs come from XPUQueue objects; a queue named
        by a pod but not declared gets weight 1, no guarantee, no limit and is **not reclaimable**
        (without declared guarantees there is nothing to reclaim: an idle queue must not preempt
        other queues' pods just because their usage exceeds a zero quota)."""
        capacity = Resources(
            int(self.state.cpu_capacity.sum()),
            int(self.state.memory_capacity.sum()),
            int(self.state.card_exists.sum()) * WHOLE_CARD_MILLI,
        )
        specs = dict(self.queue_specs)
        for request in [*(r.request for r in ours.values()), *pending]:
            if request.queue not in specs:
                specs[request.queue] = QueueSpec(request.queue, reclaimable=False)
        specs.setdefault("default", QueueSpec("default", reclaimable=False))
        book = QueueBook(specs.values(), capacity)
        for run in ours.values():
            book.charge(run.request)
        return book

    def _running(self) -> dict[str, Running]:
        """Our pods holding resources that may be preemption victims (bound, not terminating)."""
        out: dict[str, Running] = {}
        doomed = set().union(*self.preempting.values()) if self.preempting else set()
        for key, (allocation, request) in self.accounted.items():
            if key in self.assumed or key in doomed:
                continue
            pod = self.pods.store.get(key)
            if pod is None or not self._ours(pod) or (pod.get("metadata") or {}).get("deletionTimestamp"):
                continue
            out[key] = Running(request, allocation, self._arrival.get(key, 0.0))
        return out

    def _pending_requests(self, now: float) -> tuple[list[Request], dict[str, PodGroup]]:
        """Pending pods out of backoff, as core requests; gangs as a whole (one group backoff)."""
        requests: list[Request] = []
        group_min: dict[str, int] = {}
        for key, pod in self.pending.items():
            parsed = self.request_of(pod)
            request = parsed.request
            backoff_key = key
            if request is not None and request.pod_group:
                backoff_key = _GANG + request.pod_group
            b = self.backoff.get(backoff_key)
            if b is not None and now < b.not_before_s:
                continue
            if request is None:
                self.events.pod_event(
                    pod,
                    reason="FailedScheduling",
                    warning=True,
                    note="invalid accelerator request: " + "; ".join(parsed.errors),
                )
                self._delay(key)
                METRICS.placements.labels("invalid").inc()
                continue
            self._arrival.setdefault(key, now)
            if request.pod_group:
                wanted = _gang_min(pod)
                if wanted:
                    group_min[request.pod_group] = max(group_min.get(request.pod_group, 0), wanted)
            requests.append(request)
        return requests, {g: PodGroup(g, n) for g, n in group_min.items()}

    def cycle(self) -> _Outcome:
        """One scheduling cycle. Synchronous: no other coroutine runs while it decides.

        Ordering (DRF across queues, priority, FIFO), quota gates, gangs and placement are the
        core's :func:`~xpupool.core.queues.run_cycle`, the same code the simulator runs. The
        adapter adds what needs the API: binding the placements, and preemption as "evict now,
        place when the victims are gone" (victims keep their resources until the watch reports
        them deleted, so a preemptor never shares a card with a still-running victim).
        """
        start = time.perf_counter()
        out = _Outcome()
        if self._nodes_dirty:
            self._rebuild()
        now = self.clock.now_s()
        if self._target_built_s is not None and now - self._target_built_s > self.target_refresh_s:
            self._refresh_policy()
        for key, assumed in list(self.assumed.items()):
            if now > assumed.deadline_s:
                assumed.deadline_s = now + self.config.assume_ttl_s
                self._spawn(self._verify(key, assumed))
        requests, groups = self._pending_requests(now)
        if requests and self._may_write():
            running = self._running()
            book = self._queue_book(running, requests)
            by_name = {r.name: r for r in requests}
            # Preemptors whose victims are gone go first, in a pass of their own, so the room
            # they evicted for is not taken by a pod that happens to sort earlier (there is no
            # nominated-node reservation; this closes the common case).
            ready = {
                key
                for key, victims in self.preempting.items()
                if key in by_name and not any(v in self.pods.store for v in victims)
            }
            result = CycleResult()
            for batch in ([r for r in requests if r.name in ready], [r for r in requests if r.name not in ready]):
                if not batch:
                    continue
                part = run_cycle(
                    self.state,
                    self.core,
                    book,
                    batch,
                    running=running,
                    groups=groups,
                    arrival_s=self._arrival,
                    now_s=now,
                    preemption=False,
                )
                result.placed.extend(part.placed)
                result.pending.update(part.pending)
            for allocation in result.placed:
                self._assume(self.pending[allocation.pod], allocation, by_name[allocation.pod])
                out.placed += 1
            preemptions_left = self.config.max_preemptions_per_cycle if self.config.preemption else 0
            delayed_groups: set[str] = set()
            for key, status in result.pending.items():
                pod = self.pending.get(key)
                if pod is None:
                    continue
                out.unschedulable += 1
                METRICS.placements.labels("unschedulable").inc()
                request = by_name[key]
                if (
                    preemptions_left > 0
                    and not request.pod_group
                    and status.code is Code.UNSCHEDULABLE
                    and self._preempt(pod, request, running, book)
                ):
                    preemptions_left -= 1
                    out.preemptions += 1
                    continue
                if request.pod_group:
                    if _GANG + request.pod_group not in delayed_groups:
                        delayed_groups.add(_GANG + request.pod_group)
                        self._delay(_GANG + request.pod_group)
                else:
                    self._delay(key)
                if key not in self.preempting:
                    note = status.message()
                    if status.plugin not in ("gang", "quota"):
                        note = f"0/{self.state.num_nodes} nodes available: {note}"
                    self.events.pod_event(pod, reason="FailedScheduling", warning=True, note=note)
                    self._mark_unschedulable(pod, note)
        METRICS.pending_pods.set(len(self.pending))
        METRICS.cycle_latency.observe(time.perf_counter() - start)
        self.cycles += 1
        return out

    def _mark_unschedulable(self, pod: JsonDict, message: str) -> None:
        """Set ``PodScheduled=False/Unschedulable`` (what kube-scheduler does; the cluster
        autoscaler and ``kubectl get pods`` read it). Skipped when the pod already says so."""
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("message") == message:
                return
        meta = pod["metadata"]
        patch = {
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": message[:2048],
                        "lastTransitionTime": _now_rfc3339(),
                    }
                ]
            }
        }

        async def write() -> None:
            if not self._may_write():
                return
            async with self._status_sem:
                try:
                    await self.transport.patch(
                        PODS,
                        meta["name"],
                        patch,
                        namespace=meta["namespace"],
                        patch_type="strategic",
                        subresource="status",
                    )
                except (ApiError, TransportError) as exc:
                    log.debug("PodScheduled condition on %s: %s", pod_key(pod), exc)

        self._spawn(write())

    def _assume(self, pod: JsonDict, allocation: Allocation, request: Request) -> None:
        """Record a placement the core already reserved on ``state``, then bind it."""
        key = pod_key(pod)
        self.accounted[key] = (allocation, request)
        self.pending.pop(key, None)
        self.preempting.pop(key, None)
        deadline = self.clock.now_s() + self.config.assume_ttl_s
        assumed = _Assumed(allocation.node, pod["metadata"]["uid"], deadline)
        self.assumed[key] = assumed
        METRICS.assumed_pods.set(len(self.assumed))
        METRICS.placements.labels("placed").inc()
        self._spawn(self._bind(pod, allocation, assumed, annotate=True))

    def _preempt(self, pod: JsonDict, request: Request, running: dict[str, Running], book: QueueBook) -> bool:
        """Plan with the core (:func:`~xpupool.core.queues.plan_preemption`), then evict.

        True when the pod is waiting for victims (planned now or earlier and still terminating).
        """
        key = pod_key(pod)
        waiting = self.preempting.get(key)
        if waiting and any(v in self.pods.store for v in waiting):
            return True
        groups: dict[str, list[str]] = defaultdict(list)
        for name, run in running.items():
            if run.request.pod_group:
                groups[run.request.pod_group].append(name)
        plan = plan_preemption(self.state, self.core, request, running, book, groups)
        if not isinstance(plan, PreemptionPlan):
            return False
        self.preempting[key] = set(plan.victims)
        for vkey in plan.victims:
            running.pop(vkey, None)  # never planned twice, by another preemptor in this cycle
            vpod = self.pods.store[vkey]
            self.events.pod_event(
                vpod,
                reason="Preempted",
                warning=True,
                action="Preempting",
                note=f"preempted by {key} (priority {request.priority}) on {plan.node}",
            )
            self._spawn(self._evict(vpod))
        self.events.pod_event(
            pod,
            reason="Preempting",
            action="Preempting",
            note=f"evicting {len(plan.victims)} pod(s) on {plan.node}: {', '.join(plan.victims)}",
        )
        METRICS.preemptions.inc(len(plan.victims))
        return True

    async def _evict(self, pod: JsonDict) -> None:
        if not self._may_write():
            return
        meta = pod["metadata"]
        try:
            await self.transport.delete(PODS, meta["name"], namespace=meta["namespace"], uid=meta["uid"])
        except (ApiError, TransportError) as exc:
            log.info("evict %s: %s", pod_key(pod), exc)

    # ------------------------------------------------------------------ lifecycle
    async def wait_synced(self) -> None:
        waits = [self.pods.synced.wait(), self.nodes.synced.wait()]
        if self.queues is not None:
            waits.append(self.queues.synced.wait())
        await asyncio.gather(*waits)

    def _on_queue(self, etype: str, old: JsonDict | None, new: JsonDict | None) -> None:
        if new is None:
            assert old is not None
            self.queue_specs.pop(str(old["metadata"]["name"]), None)
        else:
            spec, warnings = queue_spec(new)
            for warning in warnings:
                log.warning("%s", warning)
            self.queue_specs[spec.name] = spec
        self.backoff.clear()  # a quota change may let waiting pods in
        self._wake.set()

    async def _start_queue_informer(self) -> asyncio.Task[None] | None:
        """Watch XPUQueues when the CRD is installed; without it every queue gets defaults."""
        if not self.config.queue_crd:
            return None
        while True:
            try:
                await self.transport.list(XPUQUEUES, limit=1)
                break
            except ApiError as exc:
                if exc.status == 404:
                    log.info("XPUQueue CRD not installed: queues get default specs")
                    return None
                if exc.status == 403:
                    log.warning("no permission to list XPUQueues: queues get default specs (%s)", exc)
                    return None
                log.warning("probing XPUQueue CRD: %s", exc)
            except TransportError as exc:
                log.warning("probing XPUQueue CRD: %s", exc)
            await asyncio.sleep(1.0)
        self.queues = Informer(self.transport, XPUQUEUES)
        self.queues.add_handler(self._on_queue)
        return asyncio.create_task(self.queues.run())

    async def run(self) -> None:
        """Informers (always, standby replicas keep them warm), then lead, then cycle."""
        informers = [asyncio.create_task(self.pods.run()), asyncio.create_task(self.nodes.run())]
        renew: asyncio.Task[None] | None = None
        try:
            queue_task = await self._start_queue_informer()
            if queue_task is not None:
                informers.append(queue_task)
            await self.wait_synced()
            while not self._stopping:
                if self.elector is not None and not self.elector.is_leader():
                    if renew is not None:
                        renew.cancel()
                    await self.elector.acquire()
                    renew = asyncio.create_task(self.elector.keep_renewing())
                    self._nodes_dirty = True  # start from the apiserver's truth
                self.cycle()
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._next_wait())
                # let a burst of watch events land before deciding (batching)
                await asyncio.sleep(0.005)
        finally:
            for t in informers:
                t.cancel()
            if renew is not None:
                renew.cancel()
            await asyncio.gather(*informers, return_exceptions=True)

    def _next_wait(self) -> float:
        now = self.clock.now_s()
        wait = self.config.idle_cycle_s
        for key in self.pending:
            b = self.backoff.get(key)
            wait = min(wait, max(0.0, (b.not_before_s if b else now) - now))
        return max(wait, 0.01)

    async def stop(self, *, grace_s: float = 5.0) -> None:
        """Stop writing, give in-flight binds and queued events ``grace_s``, release the Lease."""
        self._stopping = True
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.events.flush(), timeout=grace_s)
        if self.elector is not None:
            await self.elector.release()


_GANG = "gang:"  # backoff key prefix of a whole gang


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


def _describe(allocation: Allocation) -> str:
    share = "whole" if allocation.share_milli >= WHOLE_CARD_MILLI else f"{allocation.share_milli / 10:g}%"
    where = allocation.node if not allocation.is_remote else f"{allocation.node} (cards on {allocation.device_node})"
    return (
        f"assigned to {where}: card(s) {','.join(map(str, allocation.cards))}, {share} compute, "
        f"{'+'.join(map(str, allocation.device_memory_mib))} MiB"
    )


# ---------------------------------------------------------------------- entry point
def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m xpupool.kube.scheduler", description=__doc__.split("\n")[0])
    p.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, in-cluster, ~/.kube/config")
    p.add_argument("--policy", default="xpupool", help="placement policy (xpupool.plugins.profiles)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler-name", default=SCHEDULER_NAME)
    p.add_argument("--node-selector", default=None, help="label selector of the nodes to manage")
    p.add_argument("--bind-concurrency", type=int, default=64)
    p.add_argument("--bind-qps", type=float, default=None)
    p.add_argument("--annotate-before-bind", action="store_true")
    p.add_argument("--no-preemption", action="store_true")
    p.add_argument("--leader-elect", action="store_true")
    p.add_argument("--lease-namespace", default="kube-system")
    p.add_argument("--lease-name", default="xpupool-scheduler")
    p.add_argument("--identity", default="")
    p.add_argument("--lease-duration-s", type=float, default=15.0)
    p.add_argument("--renew-deadline-s", type=float, default=10.0)
    p.add_argument("--retry-period-s", type=float, default=2.0)
    p.add_argument("--metrics-port", type=int, default=0, help="0: no metrics endpoint")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


async def amain(argv: Sequence[str] | None = None, *, ready: Callable[[KubeScheduler], None] | None = None) -> None:
    from xpupool.kube.transport import AiohttpTransport, KubeConfig
    from xpupool.plugins.profiles import build_scheduler_for

    args = _parse(argv)

    def policy_for(state: ClusterState, pods: list[Request]) -> Scheduler:
        """The configured policy for this cluster's card models and the pods seen so far."""
        return build_scheduler_for(args.policy, models=state.models, population=pods, seed=args.seed)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transport = AiohttpTransport(KubeConfig.load(args.kubeconfig), max_connections=args.bind_concurrency + 16)
    clock = MonotonicClock()
    identity = args.identity or f"{socket.gethostname()}-{os.getpid()}"
    elector = None
    if args.leader_elect:
        elector = LeaderElector(
            transport,
            namespace=args.lease_namespace,
            name=args.lease_name,
            identity=identity,
            clock=clock,
            lease_duration_s=args.lease_duration_s,
            renew_deadline_s=args.renew_deadline_s,
            retry_period_s=args.retry_period_s,
        )
    config = SchedulerConfig(
        scheduler_name=args.scheduler_name,
        node_label_selector=args.node_selector,
        bind_concurrency=args.bind_concurrency,
        bind_qps=args.bind_qps,
        annotate_before_bind=args.annotate_before_bind,
        preemption=not args.no_preemption,
    )
    daemon = KubeScheduler(
        transport,
        scheduler=policy_for(ClusterState([]), []),
        scheduler_factory=policy_for,
        config=config,
        clock=clock,
        elector=elector,
        identity=identity,
    )
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="0.0.0.0", registry=METRICS.registry)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    if ready is not None:
        ready(daemon)
    try:
        await daemon.run()
    except asyncio.CancelledError:
        pass
    finally:
        await daemon.stop()
        await transport.close()


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(amain(argv))


if __name__ == "__main__":
    main()
