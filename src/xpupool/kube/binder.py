"""Binding pods: raw ``pods/binding`` POSTs with bounded concurrency and a client-side QPS cap.

Outcomes are values (:class:`BindOutcome`), not exceptions:
  * ``BOUND``     - the server accepted the binding, or a 409 re-read shows the pod already on
                    *our* node (a retried bind whose first answer was lost);
  * ``CONFLICT``  - the pod is bound to another node (another scheduler won) - unreserve;
  * ``GONE``      - the pod was deleted (404) or re-created under the same name (UID mismatch);
  * ``ERROR``     - transport failure or other server error - unreserve, retry later.

Annotations passed to :meth:`Binder.bind` are written by the apiserver in the same etcd write
as ``spec.nodeName`` (the Binding subresource copies ``metadata.annotations`` onto the pod), so
the allocation record and the bound node can never disagree.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass

from xpupool.kube.metrics import METRICS
from xpupool.kube.transport import PODS, ApiError, Transport, TransportError


class BindOutcome(enum.Enum):
    BOUND = "bound"
    CONFLICT = "conflict"
    GONE = "gone"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class BindResult:
    outcome: BindOutcome
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is BindOutcome.BOUND


class TokenBucket:
    """Client-side rate limit: ``qps`` tokens per second, bursts up to ``burst``."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.qps)


class Binder:
    """Binds pods; at most ``concurrency`` requests in flight, at most ``qps`` per second."""

    def __init__(self, transport: Transport, *, concurrency: int = 64, qps: float | None = None) -> None:
        self.transport = transport
        self._sem = asyncio.Semaphore(concurrency)
        self._bucket = TokenBucket(qps, max(1, int(qps))) if qps else None

    async def bind(
        self,
        namespace: str,
        name: str,
        node: str,
        *,
        uid: str | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> BindResult:
        """Bind ``namespace/name`` to ``node``; ``annotations`` land atomically with the binding."""
        async with self._sem:
            if self._bucket is not None:
                await self._bucket.take()
            start = time.perf_counter()
            try:
                await self.transport.bind(namespace, name, node, uid=uid, annotations=annotations)
                result = BindResult(BindOutcome.BOUND)
            except ApiError as exc:
                result = await self._after_error(exc, namespace, name, node, uid)
            except TransportError as exc:
                result = BindResult(BindOutcome.ERROR, str(exc))
            METRICS.bind_latency.observe(time.perf_counter() - start)
        METRICS.bind_total.labels(result.outcome.value).inc()
        return result

    async def _after_error(self, exc: ApiError, namespace: str, name: str, node: str, uid: str | None) -> BindResult:
        if exc.status == 404:
            return BindResult(BindOutcome.GONE, exc.message)
        if exc.status != 409:
            return BindResult(BindOutcome.ERROR, str(exc))
        # 409: "already assigned to node X" or a UID precondition failure. Re-read to decide.
        try:
            pod = await self.transport.get(PODS, name, namespace=namespace)
        except ApiError as again:
            if again.status == 404:
                return BindResult(BindOutcome.GONE, again.message)
            return BindResult(BindOutcome.ERROR, str(again))
        except TransportError as again:
            return BindResult(BindOutcome.ERROR, str(again))
        if uid and pod.get("metadata", {}).get("uid") != uid:
            return BindResult(BindOutcome.GONE, "pod was re-created")
        bound_to = (pod.get("spec") or {}).get("nodeName") or ""
        if bound_to == node:
            return BindResult(BindOutcome.BOUND, "already bound to this node")
        return BindResult(BindOutcome.CONFLICT, f"bound to {bound_to or '?'}: {exc.message}")
