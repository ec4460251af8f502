"""Queue specs for the cycle: XPUQueue objects (when the CRD is installed) -> a charged QueueBook."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from xpupool.core.cluster import ClusterState
from xpupool.core.model import WHOLE_CARD_MILLI, Request
from xpupool.core.queues import QueueBook, QueueSpec, Resources, Running
from xpupool.kube.informer import Informer
from xpupool.kube.queues import XPUQUEUES, queue_spec
from xpupool.kube.scheduler.cache import SchedulerCache
from xpupool.kube.scheduler.runtime import Runtime
from xpupool.kube.transport import ApiError, JsonDict, TransportError

log = logging.getLogger(__name__)


class QueueSource:
    """Keeps ``specs`` (queue name -> spec) from the XPUQueue informer; builds each cycle's book."""

    def __init__(self, runtime: Runtime, cache: SchedulerCache) -> None:
        self.runtime = runtime
        self.cache = cache
        #: queue name -> spec; unknown queues get defaults (weight 1, no quota, unlimited)
        self.specs: dict[str, QueueSpec] = {}
        self.informer: Informer | None = None  # XPUQueues, when the CRD is installed

    def on_queue(self, etype: str, old: JsonDict | None, new: JsonDict | None) -> None:
        if new is None:
            assert old is not None
            self.specs.pop(str(old["metadata"]["name"]), None)
        else:
            spec, warnings = queue_spec(new)
            for warning in warnings:
                log.warning("%s", warning)
            self.specs[spec.name] = spec
        self.cache.backoff.clear()  # a quota change may let waiting pods in
        self.runtime.wake()

    async def start(self) -> asyncio.Task[None] | None:
        """Watch XPUQueues when the CRD is installed; without it every queue gets defaults."""
        if not self.runtime.config.queue_crd:
            return None
        transport = self.runtime.transport
        while True:
            try:
                await transport.list(XPUQUEUES, limit=1)
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
        self.informer = Informer(transport, XPUQUEUES)
        self.informer.add_handler(self.on_queue)
        return asyncio.create_task(self.informer.run())

    def book(self, state: ClusterState, ours: dict[str, Running], pending: Sequence[Request]) -> QueueBook:
        """Queues charged with our running pods. Specs come from XPUQueue objects; a queue named
        by a pod but not declared gets weight 1, no guarantee, no limit and is **not reclaimable**
        (without declared guarantees there is nothing to reclaim: an idle queue must not preempt
        other queues' pods just because their usage exceeds a zero quota)."""
        capacity = Resources(
            int(state.cpu_capacity.sum()),
            int(state.memory_capacity.sum()),
            int(state.card_exists.sum()) * WHOLE_CARD_MILLI,
        )
        specs = dict(self.specs)
        for request in [*(r.request for r in ours.values()), *pending]:
            if request.queue not in specs:
                specs[request.queue] = QueueSpec(request.queue, reclaimable=False)
        specs.setdefault("default", QueueSpec("default", reclaimable=False))
        book = QueueBook(specs.values(), capacity)
        for run in ours.values():
            book.charge(run.request)
        return book
