"""Statements: tentative reservations that commit together or roll back together.

Used for gangs (all members or none), preemption scenarios (evict victims, try the preemptor,
undo when it still would not fit) and by the scheduler daemon between reserve and bind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xpupool.core.cluster import ClusterState
from xpupool.core.model import Allocation, Request
from xpupool.core.status import Status


@dataclass
class Statement:
    """Records reserve/evict operations on ``state`` so they can be undone in reverse order.

    ``rollback`` is idempotent; ``commit`` forgets the undo log (operations stay applied).
    """

    state: ClusterState
    _log: list[tuple[str, Allocation, Request]] = field(default_factory=list)

    def reserve(self, allocation: Allocation, request: Request) -> Status:
        status = self.state.reserve(allocation, request)
        if status.ok:
            self._log.append(("reserve", allocation, request))
        return status

    def evict(self, pod: str) -> Allocation | None:
        held = self.state.allocations.get(pod)
        if held is None:
            return None
        self.state.release(pod)
        self._log.append(("evict", held[0], held[1]))
        return held[0]

    @property
    def reserved(self) -> list[Allocation]:
        return [a for op, a, _ in self._log if op == "reserve"]

    @property
    def evicted(self) -> list[Allocation]:
        return [a for op, a, _ in self._log if op == "evict"]

    def rollback(self) -> None:
        while self._log:
            op, allocation, request = self._log.pop()
            if op == "reserve":
                self.state.release(allocation.pod)
            else:
                status = self.state.reserve(allocation, request)
                assert status.ok, f"rollback could not restore {allocation.pod}: {status.message()}"

    def commit(self) -> None:
        self._log.clear()
