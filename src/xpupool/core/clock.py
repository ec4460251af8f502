"""Injected clocks: the core never reads wall time itself."""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds. Production passes a wall clock, the simulator a virtual one."""

    def now_s(self) -> float: ...


class ManualClock:
    """A clock that moves only when told to (simulator, tests)."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = start_s

    def now_s(self) -> float:
        return self._now_s

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock never goes backwards")
        self._now_s += seconds

    def set(self, now_s: float) -> None:
        if now_s < self._now_s:
            raise ValueError("a clock never goes backwards")
        self._now_s = now_s
