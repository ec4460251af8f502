"""``KubeScheduler``: one scheduler replica wiring informers, cache, policy, cycle and binds.

Lifecycle: informers start at once (standby replicas keep them warm), then the replica waits for
their first list, takes the Lease (with a :class:`~xpupool.kube.lease.LeaderElector`), and runs
cycles until cancelled: after every cycle it sleeps until an event wakes it, a pending pod leaves
its backoff, or ``idle_cycle_s`` passes. ``stop()`` ends gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from xpupool.core.cluster import ClusterState
from xpupool.core.framework import Scheduler
from xpupool.core.model import Allocation, Request
from xpupool.kube.informer import Informer
from xpupool.kube.lease import LeaderElector
from xpupool.kube.scheduler.binding import Bindings
from xpupool.kube.scheduler.cache import Assumed, SchedulerCache
from xpupool.kube.scheduler.config import MonotonicClock, SchedulerConfig
from xpupool.kube.scheduler.cycle import Cycle, Outcome
from xpupool.kube.scheduler.policy import Policy, PolicyFactory
from xpupool.kube.scheduler.preemption import Preemptor
from xpupool.kube.scheduler.queueing import QueueSource
from xpupool.kube.scheduler.runtime import Runtime
from xpupool.kube.transport import NODES, PODS, JsonDict, Transport


class KubeScheduler:
    """One scheduler replica. ``run()`` until cancelled; call ``stop()`` for a graceful end."""

    def __init__(
        self,
        transport: Transport,
        *,
        scheduler: Scheduler,
        scheduler_factory: PolicyFactory | None = None,
        target_refresh_s: float = 300.0,
        config: SchedulerConfig | None = None,
        clock: MonotonicClock | None = None,
        elector: LeaderElector | None = None,
        identity: str = "",
    ) -> None:
        config = config or SchedulerConfig()
        self.runtime = Runtime(
            transport,
            config=config,
            clock=clock or MonotonicClock(),
            elector=elector,
            identity=identity or f"{socket.gethostname()}-{os.getpid()}",
        )
        self.pods = Informer(transport, PODS)
        self.nodes = Informer(transport, NODES, label_selector=config.node_label_selector)
        self.cache = SchedulerCache(self.runtime, pods=self.pods, nodes=self.nodes)
        self.policy = Policy(scheduler, factory=scheduler_factory, target_refresh_s=target_refresh_s)
        self.bindings = Bindings(self.runtime, self.cache)
        self.preemptor = Preemptor(self.runtime, self.cache)
        self.queues = QueueSource(self.runtime, self.cache)
        self._cycle = Cycle(
            self.runtime,
            self.cache,
            policy=self.policy,
            bindings=self.bindings,
            preemptor=self.preemptor,
            queues=self.queues,
        )

    # ------------------------------------------------------------------ read-only façade
    @property
    def transport(self) -> Transport:
        return self.runtime.transport

    @property
    def config(self) -> SchedulerConfig:
        return self.runtime.config

    @property
    def elector(self) -> LeaderElector | None:
        return self.runtime.elector

    @property
    def identity(self) -> str:
        return self.runtime.identity

    @property
    def core(self) -> Scheduler:
        """The placement policy in use now."""
        return self.policy.core

    @property
    def state(self) -> ClusterState:
        """The ledger."""
        return self.cache.state

    @property
    def accounted(self) -> dict[str, tuple[Allocation, Request]]:
        return self.cache.accounted

    @property
    def assumed(self) -> dict[str, Assumed]:
        return self.cache.assumed

    @property
    def pending(self) -> dict[str, JsonDict]:
        return self.cache.pending

    @property
    def cycles(self) -> int:
        return self._cycle.count

    @property
    def _tasks(self) -> set[asyncio.Task[None]]:
        return self.runtime.tasks

    # ------------------------------------------------------------------ lifecycle
    def cycle(self) -> Outcome:
        """One scheduling cycle (:meth:`~xpupool.kube.scheduler.cycle.Cycle.run`)."""
        return self._cycle.run()

    async def wait_synced(self) -> None:
        waits = [self.pods.synced.wait(), self.nodes.synced.wait()]
        for extra in (self.queues.informer, self.preemptor.pdbs):
            if extra is not None:
                waits.append(extra.synced.wait())
        await asyncio.gather(*waits)

    async def run(self) -> None:
        """Informers (always, standby replicas keep them warm), then lead, then cycle."""
        informers = [asyncio.create_task(self.pods.run()), asyncio.create_task(self.nodes.run())]
        renew: asyncio.Task[None] | None = None
        runtime = self.runtime
        try:
            for started in (await self.queues.start(), await self.preemptor.start()):
                if started is not None:
                    informers.append(started)
            await self.wait_synced()
            while not runtime.stopping:
                if runtime.elector is not None and not runtime.elector.is_leader():
                    if renew is not None:
                        renew.cancel()
                    await runtime.elector.acquire()
                    renew = asyncio.create_task(runtime.elector.keep_renewing())
                    self.cache.nodes_dirty = True  # start from the apiserver's truth
                runtime.wake_event.clear()  # before: the cycle itself may ask for another one
                self.cycle()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        runtime.wake_event.wait(), timeout=self.cache.next_wait_s(runtime.config.idle_cycle_s)
                    )
                # let a burst of watch events land before deciding (batching)
                await asyncio.sleep(0.005)
        finally:
            for t in informers:
                t.cancel()
            if renew is not None:
                renew.cancel()
            await asyncio.gather(*informers, return_exceptions=True)

    async def stop(self, *, grace_s: float = 5.0) -> None:
        """Stop writing, give in-flight binds and queued events ``grace_s``, release the Lease."""
        runtime = self.runtime
        runtime.stopping = True
        pending = [t for t in runtime.tasks if not t.done()]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(runtime.events.flush(), timeout=grace_s)
        if runtime.elector is not None:
            await runtime.elector.release()
