"""Status values for expected outcomes (no exceptions for "does not fit").

Codes mirror the kube-scheduler framework so adapters can translate them to events and
conditions directly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Code(enum.Enum):
    SUCCESS = "Success"
    UNSCHEDULABLE = "Unschedulable"
    UNSCHEDULABLE_AND_UNRESOLVABLE = "UnschedulableAndUnresolvable"
    #: the pod still carries scheduling gates: not considered until they are removed
    GATED = "SchedulingGated"
    WAIT = "Wait"
    SKIP = "Skip"
    ERROR = "Error"


@dataclass(frozen=True, slots=True)
class Status:
    """Outcome of a placement step.

    ``reasons`` are human-readable lines shown to the user (pod events, CLI); ``plugin`` names
    the plugin that produced the status, empty for the framework itself.
    """

    code: Code = Code.SUCCESS
    reasons: tuple[str, ...] = field(default_factory=tuple)
    plugin: str = ""

    @property
    def ok(self) -> bool:
        return self.code is Code.SUCCESS

    @staticmethod
    def success() -> Status:
        return _SUCCESS

    @staticmethod
    def unschedulable(*reasons: str, plugin: str = "", resolvable: bool = True) -> Status:
        code = Code.UNSCHEDULABLE if resolvable else Code.UNSCHEDULABLE_AND_UNRESOLVABLE
        return Status(code, tuple(reasons), plugin)

    @staticmethod
    def gated(*gates: str) -> Status:
        return Status(Code.GATED, (f"waiting for scheduling gates: {', '.join(gates)}",), "scheduling-gates")

    @staticmethod
    def error(*reasons: str, plugin: str = "") -> Status:
        return Status(Code.ERROR, tuple(reasons), plugin)

    def message(self) -> str:
        head = self.code.value if not self.plugin else f"{self.code.value} ({self.plugin})"
        return head if not self.reasons else f"{head}: " + "; ".join(self.reasons)


_SUCCESS = Status()
