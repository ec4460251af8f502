"""What every part of the daemon shares: the API, settings, clock, events, and the write gate.

Contract: every API write goes through a task started by :meth:`Runtime.spawn` and checks
:meth:`Runtime.may_write` first (false once stopping, or once the leader elector's renewals have
failed for the renew deadline: fencing). :meth:`Runtime.wake` asks the loop for a cycle now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from xpupool.kube.events import EventRecorder
from xpupool.kube.lease import LeaderElector
from xpupool.kube.scheduler.config import MonotonicClock, SchedulerConfig
from xpupool.kube.transport import Transport


class Runtime:
    """Shared services of one scheduler replica (no scheduling state lives here)."""

    def __init__(
        self,
        transport: Transport,
        *,
        config: SchedulerConfig,
        clock: MonotonicClock,
        elector: LeaderElector | None,
        identity: str,
    ) -> None:
        self.transport = transport
        self.config = config
        self.clock = clock
        self.elector = elector
        self.identity = identity
        self.events = EventRecorder(transport, clock=clock, instance=identity)
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.wake_event = asyncio.Event()

    def may_write(self) -> bool:
        return not self.stopping and (self.elector is None or self.elector.is_leader())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def wake(self) -> None:
        self.wake_event.set()
