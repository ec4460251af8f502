"""Queues for the cycle: XPUQueue and Namespace informers -> a catalogue (who may use which
queue) and each cycle's charged :class:`~xpupool.core.quota.QueueBook`.

* With the XPUQueue CRD installed (and readable) the catalogue is **enforced**: every pending pod's
  queue is decided again here with :func:`~xpupool.core.queue_access.resolve_queue` — the same
  function the admission webhook ran — so a label the webhook never checked (a pod created while
  the webhook was down, or a queue narrowed since) is never trusted; a refused pod gets a
  ``FailedScheduling`` event saying why and stays pending.
* Without the CRD every label is accepted and undeclared queues get defaults (weight 1, no
  guarantee, no limit).
* The book is charged with each running pod's exact usage (card model, device memory) under the
  queue it resolves to now.
* :class:`~xpupool.kube.scheduler.queue_status.QueueStatusWriter` writes each XPUQueue's status
  (started with the informers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

from xpupool.core.cluster import ClusterState
from xpupool.core.model import Request
from xpupool.core.queues import QueueBook, QueueSpec, Running
from xpupool.core.quota import cluster_capacity, usage_of
from xpupool.kube.informer import Informer
from xpupool.kube.queues import OPEN_CATALOGUE, XPUQUEUES, QueueCatalogue
from xpupool.kube.scheduler.cache import SchedulerCache
from xpupool.kube.scheduler.queue_status import QueueStatusWriter
from xpupool.kube.scheduler.runtime import Runtime
from xpupool.kube.transport import NAMESPACES, ApiError, JsonDict, TransportError

log = logging.getLogger(__name__)


class QueueSource:
    """Keeps the queue catalogue from the informers; resolves pods' queues; builds each cycle's book."""

    def __init__(self, runtime: Runtime, cache: SchedulerCache) -> None:
        self.runtime = runtime
        self.cache = cache
        self.informer: Informer | None = None  # XPUQueues, when the CRD is installed
        self.namespaces: Informer | None = None  # namespace labels, for namespaceSelector
        self._catalogue: QueueCatalogue = OPEN_CATALOGUE
        self._dirty = False
        self.status_writer: QueueStatusWriter | None = None

    # ------------------------------------------------------------------ catalogue
    @property
    def catalogue(self) -> QueueCatalogue:
        if self._dirty and self.informer is not None:
            self._catalogue = QueueCatalogue.build(
                self.informer.store.values(), self.namespaces.store.values() if self.namespaces else ()
            )
            self._dirty = False
            for name, warnings in self._catalogue.warnings.items():
                for warning in warnings:
                    log.warning("XPUQueue %s: %s", name, warning)
        return self._catalogue

    @property
    def specs(self) -> dict[str, QueueSpec]:
        return dict(self.catalogue.specs)

    def _changed(self, etype: str, old: JsonDict | None, new: JsonDict | None) -> None:
        self._dirty = True
        self.cache.backoff.clear()  # a queue or namespace change may let waiting pods in
        self.runtime.wake()

    def assign(self, pod: JsonDict, request: Request) -> tuple[Request, str | None]:
        """``request`` with the queue the pod may use, or a refusal message for its event."""
        meta = pod.get("metadata") or {}
        choice = self.catalogue.resolve(str(meta.get("namespace") or ""), meta.get("labels") or {})
        if choice.queue is None:
            return request, "queue: " + "; ".join(choice.status.reasons)
        return (request if request.queue == choice.queue else replace(request, queue=choice.queue)), None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> asyncio.Task[None] | None:
        """Watch XPUQueues (and namespaces) when the CRD is installed; without it every queue
        gets defaults. Returns one task running the informers and the status writer."""
        if not self.runtime.config.queue_crd:
            return None
        transport = self.runtime.transport
        while True:
            try:
                await transport.list(XPUQUEUES, limit=1)
                break
            except ApiError as exc:
                if exc.status == 404:
                    log.info("XPUQueue CRD not installed: every queue label is accepted, queues get defaults")
                    return None
                if exc.status == 403:
                    log.warning("no permission to list XPUQueues: queue labels accepted unchecked (%s)", exc)
                    return None
                log.warning("probing XPUQueue CRD: %s", exc)
            except TransportError as exc:
                log.warning("probing XPUQueue CRD: %s", exc)
            await asyncio.sleep(1.0)
        self.informer = Informer(transport, XPUQUEUES)
        self.namespaces = Informer(transport, NAMESPACES)
        self._dirty = True
        for informer in (self.informer, self.namespaces):
            informer.add_handler(self._changed)
        writer = self.status_writer = QueueStatusWriter(self.runtime, self.cache, self)
        tasks = [asyncio.create_task(self.informer.run()), asyncio.create_task(self.namespaces.run())]
        await self.namespaces.synced.wait()  # namespaceSelector needs the labels before any decision
        tasks.append(asyncio.create_task(writer.run()))

        async def together() -> None:
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()

        return asyncio.create_task(together())

    # ------------------------------------------------------------------ book
    def book(self, state: ClusterState, ours: dict[str, Running], pending: Sequence[Request]) -> QueueBook:
        """Queues charged with our running pods' exact usage (the entries of ``ours`` are updated
        to the queue each pod resolves to now). Declared specs come from XPUQueue objects; without
        the CRD a queue named by a pod gets defaults (weight 1, no guarantee, no limit: having
        nothing guaranteed, it never reclaims)."""
        catalogue = self.catalogue
        specs = dict(catalogue.specs)
        if not catalogue.enforced:
            for request in [*(r.request for r in ours.values()), *pending]:
                specs.setdefault(request.queue, QueueSpec(request.queue))
        book = QueueBook(specs.values(), cluster_capacity(state))
        for key, run in list(ours.items()):
            pod = self.cache.pods.store.get(key)
            if pod is not None:
                request, _ = self.assign(pod, run.request)
                if request is not run.request:  # charged, and refunded on preemption, under one queue
                    run = ours[key] = replace(run, request=request)
            book.charge(run.request, usage_of(state, run.request, run.allocation))
        return book
