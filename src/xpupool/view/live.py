"""A continuously updated pool snapshot for the view service (web page, SSE, Prometheus).

Data flow::

    Informer(pods) --+
    Informer(nodes) -+--> dirty --(batch 0.3 s)--> build_snapshot --> snapshot, version += 1 --> waiters
    Informer(queues)-+                                   ^
    every scrape_interval_s: AgentScraper.scrape --------+

Readers never block the informers: :attr:`snapshot` is the last built value; :meth:`wait_newer`
returns when a snapshot newer than the caller's version exists (or after ``timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable

from xpupool.kube.informer import Informer
from xpupool.kube.objects import SCHEDULER_NAME
from xpupool.kube.queues import XPUQUEUES
from xpupool.kube.transport import NODES, PODS, ApiError, JsonDict, Transport, TransportError
from xpupool.view.build import build_snapshot
from xpupool.view.model import PoolSnapshot
from xpupool.view.source import AGENT_SELECTOR, AgentScraper, agent_endpoints, agent_warnings
from xpupool.view.usage import NodeUsage

log = logging.getLogger(__name__)


class LivePool:
    """Informers + agent scrapes -> the latest :class:`PoolSnapshot`. ``run()`` until cancelled."""

    def __init__(
        self,
        transport: Transport,
        *,
        scraper: AgentScraper | None,
        scrape_interval_s: float = 10.0,
        batch_s: float = 0.3,
        scheduler_name: str = SCHEDULER_NAME,
        agent_selector: str = AGENT_SELECTOR,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._transport = transport
        self._scraper = scraper
        self._scrape_interval_s = scrape_interval_s
        self._batch_s = batch_s
        self._scheduler_name = scheduler_name
        self._agent_selector = agent_selector
        self._now = now
        self.pods = Informer(transport, PODS)
        self.nodes = Informer(transport, NODES)
        self.queues: Informer | None = None
        self._usage: dict[str, NodeUsage | None] = {}
        self._notes: list[str] = []
        self._dirty = asyncio.Event()
        self._changed = asyncio.Event()
        self.version = 0
        self.snapshot: PoolSnapshot | None = None
        for informer in (self.pods, self.nodes):
            informer.add_handler(self._on_event)

    def _on_event(self, etype: str, old: JsonDict | None, new: JsonDict | None) -> None:
        self._dirty.set()

    @property
    def ready(self) -> bool:
        return self.snapshot is not None

    def rebuild(self) -> PoolSnapshot:
        """Build from the informer stores and the last scrape; wake every waiter."""
        warnings = [*self._notes, *agent_warnings(self._scraper, self._usage)]
        self.snapshot = build_snapshot(
            nodes=list(self.nodes.store.values()),
            pods=list(self.pods.store.values()),
            queues=list(self.queues.store.values()) if self.queues is not None else [],
            usage=self._usage,
            now=self._now(),
            scheduler_name=self._scheduler_name,
            warnings=warnings,
        )
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return self.snapshot

    async def wait_newer(self, version: int, timeout_s: float) -> PoolSnapshot | None:
        """The snapshot once its version is above ``version``; None after ``timeout_s``."""
        if self.snapshot is not None and self.version > version:
            return self.snapshot
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self.snapshot if self.version > version else None

    async def _start_queue_informer(self) -> asyncio.Task[None] | None:
        try:
            await self._transport.list(XPUQUEUES, limit=1)
        except (ApiError, TransportError) as exc:
            self._notes = [f"XPUQueues not readable ({exc}): queues get default specs"]
            return None
        self.queues = Informer(self._transport, XPUQUEUES)
        self.queues.add_handler(self._on_event)
        return asyncio.create_task(self.queues.run())

    async def _scrape_loop(self) -> None:
        assert self._scraper is not None
        while True:
            agents = agent_endpoints(self.pods.store.values(), self._agent_selector)
            self._usage = await self._scraper.scrape(agents)
            self._dirty.set()
            await asyncio.sleep(self._scrape_interval_s)

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.pods.run()), asyncio.create_task(self.nodes.run())]
        try:
            queue_task = await self._start_queue_informer()
            if queue_task is not None:
                tasks.append(queue_task)
            waits = [self.pods.synced.wait(), self.nodes.synced.wait()]
            if self.queues is not None:
                waits.append(self.queues.synced.wait())
            await asyncio.gather(*waits)
            if self._scraper is not None:
                tasks.append(asyncio.create_task(self._scrape_loop()))
            self.rebuild()
            while True:
                await self._dirty.wait()
                await asyncio.sleep(self._batch_s)  # let a burst of events land in one rebuild
                self._dirty.clear()
                self.rebuild()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._scraper is not None:
                await self._scraper.close()
