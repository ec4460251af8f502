"""Kubernetes Events (``events.k8s.io/v1``) that explain scheduling decisions to users.

``kubectl describe pod`` shows them. Reasons: ``Scheduled``, ``FailedScheduling`` (with the
per-node explanation from the core's :class:`~xpupool.core.status.Status`), ``Preempted``,
``Preempting``.

Writes are fire-and-forget (never on the scheduling critical path), bounded by a semaphore, and
deduplicated: the same (pod, reason, note) is written at most once per ``dedupe_s`` seconds of
the injected clock, so a pod retried every cycle does not flood the apiserver.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from xpupool.core.clock import Clock
from xpupool.kube.lease import _micro_time
from xpupool.kube.metrics import METRICS
from xpupool.kube.transport import EVENTS, ApiError, JsonDict, Transport, TransportError

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = "xpupool.io/scheduler"


class EventRecorder:
    def __init__(
        self,
        transport: Transport,
        *,
        clock: Clock,
        instance: str,
        dedupe_s: float = 60.0,
        concurrency: int = 8,
        max_backlog: int = 2000,
    ) -> None:
        self.transport = transport
        self.clock = clock
        self.instance = instance
        self.dedupe_s = dedupe_s
        self.max_backlog = max_backlog
        self._sem = asyncio.Semaphore(concurrency)
        self._last: dict[tuple[str, str, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def pod_event(
        self, pod: JsonDict, *, reason: str, note: str, warning: bool = False, action: str = "Scheduling"
    ) -> None:
        """Queue an Event about ``pod``. Returns at once; never raises."""
        meta = pod.get("metadata") or {}
        key = (f"{meta.get('namespace')}/{meta.get('name')}", reason, note)
        now = self.clock.now_s()
        last = self._last.get(key)
        if last is not None and now - last < self.dedupe_s:
            return
        if len(self._tasks) >= self.max_backlog:
            self.dropped += 1
            return
        self._last[key] = now
        if len(self._last) > 50_000:
            self._last = {k: t for k, t in self._last.items() if now - t < self.dedupe_s}
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name')}.{secrets.token_hex(8)}",
                "namespace": meta.get("namespace"),
            },
            "eventTime": _micro_time(),
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.instance,
            "action": action,
            "reason": reason,
            "note": note[:1024],
            "type": "Warning" if warning else "Normal",
            "regarding": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": meta.get("namespace"),
                "name": meta.get("name"),
                "uid": meta.get("uid"),
            },
        }
        task = asyncio.get_running_loop().create_task(self._write(body, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, body: JsonDict, reason: str) -> None:
        async with self._sem:
            try:
                await self.transport.create(EVENTS, body, namespace=body["metadata"]["namespace"])
                METRICS.events_emitted.labels(reason).inc()
            except (ApiError, TransportError) as exc:
                log.debug("event %s not written: %s", reason, exc)

    async def flush(self) -> None:
        """Wait for queued writes (tests, shutdown); cancelling the wait cancels the writes."""
        try:
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        except asyncio.CancelledError:
            for task in list(self._tasks):
                task.cancel()
            raise
