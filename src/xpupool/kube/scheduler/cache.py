"""The scheduler's cache: informer events -> ledger accounting (who holds what, who waits).

Fed by the pod and node informers' handlers; read and mutated synchronously by the cycle, the
binding tasks and preemption (all on one event loop, so no locks).

Ledger invariants:
  * every non-terminal pod with ``spec.nodeName`` holds its resources (ours from the allocation
    annotation, other schedulers' pods - e.g. kube-scheduler's whole-GPU pods - on the first
    free cards of their node, because the kubelet, not we, picked their cards);
  * an assumed pod holds its resources from reserve until the bind fails or the pod is gone;
  * ``state`` free capacity == capacity - the sum of ``accounted`` allocations;
  * a restart rebuilds the ledger from the apiserver alone: nothing is kept locally. Because the
    annotation is written atomically with the binding, a crash can never leave an annotation
    that disagrees with the node (with ``annotate_before_bind`` the annotation is written first
    and a restarted scheduler completes those binds from the annotation, through
    :attr:`SchedulerCache.resume_bind`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from xpupool.core.cluster import ClusterState
from xpupool.core.framework import FitContext
from xpupool.core.model import Allocation, Request
from xpupool.core.queues import Running
from xpupool.core.request import ParseResult
from xpupool.kube.informer import DELETED, Informer
from xpupool.kube.metrics import METRICS
from xpupool.kube.objects import (
    decode_allocation,
    node_model,
    node_utilization,
    pod_is_terminal,
    pod_key,
    pod_presence,
    pod_request,
)
from xpupool.kube.scheduler.runtime import Runtime
from xpupool.kube.transport import JsonDict

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Assumed:
    """A reservation whose bind is in flight or awaiting the watch's confirmation."""

    node: str
    uid: str
    deadline_s: float
    bound: bool = False


@dataclass
class Backoff:
    attempts: int = 0
    not_before_s: float = 0.0


class SchedulerCache:
    """Ledger + per-pod bookkeeping, kept current by the pod and node informers' events."""

    def __init__(self, runtime: Runtime, *, pods: Informer, nodes: Informer) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.pods = pods
        self.nodes = nodes
        self.state = ClusterState([])
        #: pod key -> what it holds on ``state``
        self.accounted: dict[str, tuple[Allocation, Request]] = {}
        self.assumed: dict[str, Assumed] = {}
        #: our unbound pods waiting for a placement
        self.pending: dict[str, JsonDict] = {}
        #: per pod (or ``GANG + group``) retry delay
        self.backoff: dict[str, Backoff] = {}
        #: preemptor key -> the victims it waits for
        self.preempting: dict[str, set[str]] = {}
        self.arrival: dict[str, float] = {}
        self._requests: dict[str, tuple[str, ParseResult]] = {}
        self.nodes_dirty = True
        #: set by the daemon: start the bind of an annotated-but-unbound pod (annotate-first mode)
        self.resume_bind: Callable[[JsonDict, Allocation, Assumed], None] | None = None
        pods.add_handler(self.on_pod)
        nodes.add_handler(self.on_node)

    # ------------------------------------------------------------------ informer handlers
    def ours(self, pod: JsonDict) -> bool:
        return (pod.get("spec") or {}).get("schedulerName") == self.config.scheduler_name

    def on_node(self, etype: str, old: JsonDict | None, new: JsonDict | None) -> None:
        # Heartbeats and utilisation samples change no capacity, labels or taints: no rebuild.
        if old is not None and new is not None and node_model(old) == node_model(new):
            self._apply_utilization(new)
            return
        self.nodes_dirty = True
        self.runtime.wake()

    def _apply_utilization(self, node: JsonDict) -> None:
        name = node["metadata"]["name"]
        if self.nodes_dirty or name not in self.state.node_index:
            return
        values = node_utilization(node)
        if values is not None:
            self.state.set_utilization(name, values)

    def on_pod(self, etype: str, old: JsonDict | None, new: JsonDict | None) -> None:
        obj = new if new is not None else old
        assert obj is not None
        key = pod_key(obj)
        if etype == DELETED or new is None or pod_is_terminal(new):
            if key in self.accounted:
                self.backoff.clear()  # capacity freed: every waiting pod may fit now
            self.forget(key)
            self.runtime.wake()
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
            self.release(key)
            del self.assumed[key]
        if node:
            self.pending.pop(key, None)
            if key not in self.accounted and not self.nodes_dirty:
                self._account_bound(new)  # when dirty, the rebuild accounts every bound pod
            return
        if not self.ours(new):
            return
        if key in self.accounted:
            return  # annotated-before-bind, bind being completed
        if decode_allocation(new) is not None and self.config.annotate_before_bind:
            if not self.nodes_dirty:
                self._account_annotated_unbound(new)
            return
        if (new.get("metadata") or {}).get("deletionTimestamp"):
            self.pending.pop(key, None)
            return
        self.pending[key] = new
        self.runtime.wake()

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

    def known_requests(self) -> list[Request]:
        """Every valid request seen so far (the population the policy learns typical pods from)."""
        return [parsed.request for _, parsed in self._requests.values() if parsed.request is not None]

    # ------------------------------------------------------------------ ledger
    def release(self, key: str) -> None:
        if self.accounted.pop(key, None) is not None:
            self.state.release(key)

    def forget(self, key: str) -> None:
        self.release(key)
        self._requests.pop(key, None)
        self.arrival.pop(key, None)
        self.pending.pop(key, None)
        self.backoff.pop(key, None)
        self.preempting.pop(key, None)
        if self.assumed.pop(key, None) is not None:
            METRICS.assumed_pods.set(len(self.assumed))

    def reserve(self, allocation: Allocation, request: Request) -> bool:
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
        request = parsed.request or pod_presence(pod)
        allocation = decode_allocation(pod)
        if allocation is not None and allocation.node == node and self.ours(pod):
            self.reserve(allocation, request)
            return
        # Not placed by us: host resources, plus cards chosen first-free (the kubelet picked them).
        self.reserve(self._phantom(key, node, request), request)

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
        if not self.reserve(allocation, parsed.request):
            # the annotated place is gone (node removed, capacity taken): place the pod afresh
            if not (pod.get("metadata") or {}).get("deletionTimestamp"):
                self.pending[key] = pod
            return
        self.pending.pop(key, None)
        deadline_s = self.runtime.clock.now_s() + self.config.assume_ttl_s
        assumed = Assumed(allocation.node, pod["metadata"]["uid"], deadline_s)
        self.assumed[key] = assumed
        assert self.resume_bind is not None, "the daemon wires resume_bind"
        self.resume_bind(pod, allocation, assumed)

    def rebuild(self) -> None:
        """New ClusterState from the node informer; replay every accounted pod."""
        nodes = [node_model(obj) for obj in sorted(self.nodes.store.values(), key=lambda n: n["metadata"]["name"])]
        self.state = ClusterState(nodes)
        self.nodes_dirty = False
        for obj in self.nodes.store.values():
            self._apply_utilization(obj)
        old = self.accounted
        self.accounted = {}
        for key, (allocation, request) in old.items():
            if not self.reserve(allocation, request):
                self.assumed.pop(key, None)
        for pod in self.pods.store.values():
            key = pod_key(pod)
            if key in self.accounted or pod_is_terminal(pod):
                continue
            if (pod.get("spec") or {}).get("nodeName"):
                self._account_bound(pod)
        if self.config.annotate_before_bind:
            for pod in list(self.pods.store.values()):
                if (
                    pod_key(pod) not in self.accounted
                    and self.ours(pod)
                    and not pod_is_terminal(pod)
                    and not (pod.get("spec") or {}).get("nodeName")
                    and decode_allocation(pod) is not None
                ):
                    self._account_annotated_unbound(pod)

    # ------------------------------------------------------------------ waiting pods
    def delay(self, key: str) -> None:
        """Back off ``key`` (a pod, or ``GANG + group``): doubles from low to high per attempt."""
        b = self.backoff.setdefault(key, Backoff())
        b.attempts += 1
        low, high = self.config.retry_backoff_s
        b.not_before_s = self.runtime.clock.now_s() + min(high, low * 2 ** min(b.attempts - 1, 10))

    def requeue(self, key: str) -> None:
        """A bind failed: the pod waits again (after a backoff) if it is still unbound."""
        pod = self.pods.store.get(key)
        if pod is not None and not (pod.get("spec") or {}).get("nodeName"):
            self.pending[key] = pod
            self.delay(key)
            self.runtime.wake()

    def next_wait_s(self, idle_s: float) -> float:
        """Seconds until the earliest pending pod leaves its backoff (at most ``idle_s``)."""
        now = self.runtime.clock.now_s()
        wait = idle_s
        for key in self.pending:
            b = self.backoff.get(key)
            wait = min(wait, max(0.0, (b.not_before_s if b else now) - now))
        return max(wait, 0.01)

    def charged(self) -> dict[str, Running]:
        """What queues are charged with: :meth:`running` plus our pods whose bind is in flight
        (an unconfirmed bind still counts against its queue's limit)."""
        out = self.running()
        for key in self.assumed:
            held = self.accounted.get(key)
            if held is not None:
                out[key] = Running(held[1], held[0], self.arrival.get(key, 0.0))
        return out

    def running(self) -> dict[str, Running]:
        """Our pods holding resources that may be preemption victims (bound, not terminating)."""
        out: dict[str, Running] = {}
        doomed = set().union(*self.preempting.values()) if self.preempting else set()
        for key, (allocation, request) in self.accounted.items():
            if key in self.assumed or key in doomed:
                continue
            pod = self.pods.store.get(key)
            if pod is None or not self.ours(pod) or (pod.get("metadata") or {}).get("deletionTimestamp"):
                continue
            out[key] = Running(request, allocation, self.arrival.get(key, 0.0))
        return out
