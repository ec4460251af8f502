"""Leader election on a ``coordination.k8s.io/v1`` Lease, with fencing.

Protocol (client-go compatible field use):
  * acquire: create the Lease, or take it over when the holder's record has not changed for
    ``lease_duration_s`` *as observed on our clock* (no cross-machine clock comparison);
    every write carries the Lease's ``resourceVersion`` so a racing replica gets 409 and loses;
  * renew every ``retry_period_s`` while leading;
  * **fencing**: :meth:`LeaderElector.is_leader` is true only while ``now < last successful
    renew + renew_deadline_s`` (``renew_deadline_s < lease_duration_s``), so a replica whose
    renewals fail stops scheduling and binding before any other replica may take over, even if
    its renew loop is stuck;
  * release on graceful shutdown: clear ``holderIdentity`` so a standby takes over at once.

The clock is injected (``Clock.now_s``: monotonic seconds); wall time is used only to fill the
Lease's informational timestamps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from xpupool.core.clock import Clock
from xpupool.kube.metrics import METRICS
from xpupool.kube.transport import LEASES, ApiError, JsonDict, Transport, TransportError

log = logging.getLogger(__name__)


def _micro_time(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One replica's view of one Lease. Not shared between replicas."""

    def __init__(
        self,
        transport: Transport,
        *,
        namespace: str,
        name: str,
        identity: str,
        clock: Clock,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if not 0 < retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("need 0 < retry_period_s < renew_deadline_s < lease_duration_s")
        self.transport = transport
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.clock = clock
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self._sleep = sleep
        self._renewed_at: float | None = None  # our clock, last successful acquire/renew
        self._observed_record: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._was_leader = False

    # -- queries ---------------------------------------------------------------------------
    def is_leader(self) -> bool:
        """True while our last successful renew is younger than the renew deadline (fencing)."""
        leading = self._renewed_at is not None and self.clock.now_s() < self._renewed_at + self.renew_deadline_s
        if leading != self._was_leader:
            self._was_leader = leading
            METRICS.is_leader.set(1 if leading else 0)
            METRICS.lease_transitions.labels("gained" if leading else "lost").inc()
            log.info(
                "lease %s/%s: %s is %s",
                self.namespace,
                self.name,
                self.identity,
                "leader" if leading else "no longer leader",
            )
        return leading

    # -- one attempt -----------------------------------------------------------------------
    def _body(self, old: JsonDict | None, *, transitions: int, acquire_time: str) -> JsonDict:
        now = _micro_time()
        meta: JsonDict = {"name": self.name, "namespace": self.namespace}
        if old is not None:
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.lease_duration_s)),
                "acquireTime": acquire_time or now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    async def try_acquire_or_renew(self) -> bool:
        """One attempt. True when we hold the Lease afterwards. Never raises for API outcomes."""
        start = self.clock.now_s()
        try:
            try:
                lease: JsonDict | None = await self.transport.get(LEASES, self.name, namespace=self.namespace)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                lease = None
            if lease is None:
                await self.transport.create(
                    LEASES, self._body(None, transitions=0, acquire_time=""), namespace=self.namespace
                )
                self._renewed_at = start
                return True
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            record = (
                holder,
                spec.get("renewTime"),
                spec.get("leaseTransitions"),
                lease["metadata"].get("resourceVersion"),
            )
            if record != self._observed_record:
                self._observed_record = record
                self._observed_at = start
            transitions = int(spec.get("leaseTransitions") or 0)
            if holder == self.identity:
                body = self._body(lease, transitions=transitions, acquire_time=spec.get("acquireTime") or "")
            else:
                duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
                if holder and start < self._observed_at + duration:
                    self._renewed_at = None
                    return False
                body = self._body(lease, transitions=transitions + 1, acquire_time="")
            await self.transport.replace(LEASES, self.name, body, namespace=self.namespace)
            self._renewed_at = start
            return True
        except ApiError as exc:
            if exc.status != 409:
                log.warning("lease %s: %s", self.name, exc)
            return False
        except TransportError as exc:
            log.warning("lease %s: %s", self.name, exc)
            return False

    # -- loops -----------------------------------------------------------------------------
    async def acquire(self) -> None:
        """Return once we lead."""
        while not (await self.try_acquire_or_renew() and self.is_leader()):
            await self._sleep(self.retry_period_s)

    async def keep_renewing(self) -> None:
        """Renew until a renewal has been failing past the renew deadline; then return (fenced)."""
        while True:
            await self._sleep(self.retry_period_s)
            await self.try_acquire_or_renew()
            if not self.is_leader():
                return

    async def release(self) -> None:
        """Give the Lease up (only if we still hold it); best effort."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        self.is_leader()
        try:
            lease = await self.transport.get(LEASES, self.name, namespace=self.namespace)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            spec["holderIdentity"] = None
            spec["renewTime"] = _micro_time()
            spec["leaseDurationSeconds"] = 1
            await self.transport.replace(LEASES, self.name, lease, namespace=self.namespace)
        except (ApiError, TransportError) as exc:
            log.info("lease %s release: %s", self.name, exc)
