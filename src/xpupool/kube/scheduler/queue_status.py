"""XPUQueue status, written by the leading scheduler replica.

Every ``interval_s`` the writer builds the queue book from the cache (every pod of ours holding
resources, assumed ones included, charged with its exact usage under the queue it resolves to
now) plus the pending pods, and patches ``status`` of each XPUQueue whose status changed, through
the ``xpuqueues/status`` subresource (the chart grants ``patch`` on that subresource only)::

    status:
      observedGeneration: 3
      runningPods: 12            # in the queue's subtree
      pendingPods: 2
      resources:                 # per resource (and per card model where quota names one)
        - {resource: xpupool.io/vxpu-core, model: "", allocated: 650, borrowed: 250, pending: 100,
           guaranteed: 400, limit: 800, fairShare: 700}
      conditions:
        - {type: Valid, status: "True", reason: AsDeclared}    # or False + what was ignored

Units are those of the quota entries: ``vxpu-core`` percent of a card, ``vxpu-memory`` MiB, ``cpu``
and ``memory`` as quantities. ``borrowed`` = allocated above the guarantee; ``fairShare`` = the
entitlement from :meth:`~xpupool.core.quota.QueueBook.fair_shares` with demand = allocated +
pending. :func:`queue_status` is pure; the writer only adds the API calls.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from xpupool.core.model import Request
from xpupool.core.queues import QueueBook, Running
from xpupool.core.quota import CPU, DEVICE_MEMORY, MEMORY, XPU, Resources, split_dim
from xpupool.kube.queues import XPUQUEUES
from xpupool.kube.scheduler.cache import SchedulerCache
from xpupool.kube.scheduler.runtime import Runtime
from xpupool.kube.transport import ApiError, JsonDict, TransportError

if TYPE_CHECKING:
    from xpupool.kube.scheduler.queueing import QueueSource

log = logging.getLogger(__name__)

_RESOURCE = {CPU: "cpu", MEMORY: "memory", XPU: "xpupool.io/vxpu-core", DEVICE_MEMORY: "xpupool.io/vxpu-memory"}
_ORDER = ["xpupool.io/vxpu-core", "xpupool.io/vxpu-memory", "cpu", "memory"]


def quantity(dim: str, value: int) -> int | str:
    """``value`` of dimension ``dim`` in the unit the XPUQueue quota uses."""
    base, _ = split_dim(dim)
    if base == CPU:
        return f"{value}m"
    if base == MEMORY:
        return f"{value}Mi"
    if base == XPU:
        return value // 10 if value % 10 == 0 else f"{value / 10:g}"
    return value


def queue_status(
    book: QueueBook,
    name: str,
    *,
    pending: Resources,
    running_pods: int,
    pending_pods: int,
    fair_share: Resources,
    warnings: Sequence[str] = (),
    generation: int | None = None,
) -> JsonDict:
    """The ``status`` of queue ``name`` (without condition timestamps). Pure."""
    spec = book.queues[name]
    used = book.usage[name]
    guarantee = book.guarantee[name]
    dims = set(used) | set(guarantee) | set(spec.limit.dims()) | set(pending) | set(fair_share)
    rows: list[dict[str, Any]] = []
    for dim in dims:
        base, model = split_dim(dim)
        if base not in _RESOURCE:
            continue
        row: dict[str, Any] = {"resource": _RESOURCE[base], "model": model,
                               "allocated": quantity(dim, used.get(dim)),
                               "borrowed": quantity(dim, max(used.get(dim) - guarantee.get(dim), 0)),
                               "pending": quantity(dim, pending.get(dim)),
                               "guaranteed": quantity(dim, guarantee.get(dim)),
                               "fairShare": quantity(dim, fair_share.get(dim))}
        bound = spec.limit.get(dim)
        if bound is not None:
            row["limit"] = quantity(dim, bound)
        rows.append(row)
    rows.sort(key=lambda r: (_ORDER.index(r["resource"]), r["model"]))
    problems = [*warnings, *(p for p in book.problems if f"queue {name}:" in p or f"children of {name} " in p)]
    condition = {"type": "Valid", "status": "False" if problems else "True",
                 "reason": "PartlyIgnored" if problems else "AsDeclared",
                 "message": "; ".join(problems)[:32768] if problems else "every field is in effect"}
    status: JsonDict = {"resources": rows, "runningPods": running_pods, "pendingPods": pending_pods,
                        "conditions": [condition]}
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    def strip(status: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(status)
        out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                             for c in status.get("conditions") or []]
        return out

    return strip(current) == strip(wanted)


class QueueStatusWriter:
    """Writes XPUQueue status every ``interval_s`` while this replica may write (the leader)."""

    def __init__(self, runtime: Runtime, cache: SchedulerCache, source: QueueSource, *,
                 interval_s: float = 5.0) -> None:
        self.runtime = runtime
        self.cache = cache
        self.source = source
        self.interval_s = interval_s
        self.writes = 0

    def snapshot(self) -> dict[str, JsonDict]:
        """Wanted status of every declared queue (synchronous: one consistent view of the cache)."""
        cache, source = self.cache, self.source
        running: dict[str, Running] = {}
        for key, (allocation, request) in cache.accounted.items():
            pod = cache.pods.store.get(key)
            if pod is not None and cache.ours(pod):
                running[key] = Running(request, allocation)
        waiting: list[Request] = []
        for pod in cache.pending.values():
            parsed = cache.request_of(pod)
            if parsed.request is not None:
                request, refused = source.assign(pod, parsed.request)
                if refused is None:
                    waiting.append(request)
        book = source.book(cache.state, running, waiting)
        pending = {name: Resources() for name in book.queues}
        counts = {name: [0, 0] for name in book.queues}
        for request in waiting:
            for name in book.path(request.queue):
                pending[name] = pending[name] + Resources.of(request)
                counts[name][1] += 1
        for run in running.values():
            for name in book.path(run.request.queue):
                counts[name][0] += 1
        fair = book.fair_shares({n: book.usage[n] + pending[n] for n in book.queues if book.is_leaf(n)})
        catalogue = source.catalogue
        objects = source.informer.store if source.informer is not None else {}
        out: dict[str, JsonDict] = {}
        for name in catalogue.specs:
            obj = objects.get(name) or {}
            generation = (obj.get("metadata") or {}).get("generation")
            out[name] = queue_status(book, name, pending=pending[name], running_pods=counts[name][0],
                                     pending_pods=counts[name][1], fair_share=fair.get(name, Resources()),
                                     warnings=catalogue.warnings.get(name, ()),
                                     generation=int(generation) if generation is not None else None)
        return out

    async def write_once(self) -> int:
        """Patch every queue whose status differs from what the apiserver has. Returns writes."""
        if self.source.informer is None:
            return 0
        wanted = self.snapshot()
        written = 0
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for name, status in wanted.items():
            obj = self.source.informer.store.get(name)
            if obj is None:
                continue
            current = obj.get("status") or {}
            if _same(current, status):
                continue
            before = {c.get("type"): c for c in current.get("conditions") or []}
            for condition in status["conditions"]:
                old = before.get(condition["type"])
                same = old is not None and old.get("status") == condition["status"] and old.get("lastTransitionTime")
                condition["lastTransitionTime"] = old["lastTransitionTime"] if same and old else now
            if not self.runtime.may_write():
                return written
            try:
                await self.runtime.transport.patch(XPUQUEUES, name, {"status": status}, patch_type="merge",
                                                   subresource="status")
            except ApiError as exc:
                if exc.status != 404:  # deleted meanwhile: nothing to report on
                    log.warning("XPUQueue %s status: %s", name, exc)
                continue
            written += 1
        self.writes += written
        return written

    async def run(self) -> None:
        while not self.runtime.stopping:
            await asyncio.sleep(self.interval_s)
            if not self.runtime.may_write():
                continue
            try:
                await self.write_once()
            except TransportError as exc:
                log.warning("XPUQueue status: %s", exc)


