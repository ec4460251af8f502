"""PodDisruptionBudgets as the preemption planner sees them: how many pods each may still lose.

A budget covers the pods of its namespace that its selector matches and allows ``allowed`` more
voluntary disruptions (``status.disruptionsAllowed``, as the disruption controller last computed
it). The Eviction API refuses an eviction that would exceed a budget, and refuses outright a pod
covered by more than one budget; the planner applies the same rules up front so it picks victims
the API will let go, and never plans a preemption it cannot carry out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from xpupool.core.constraints import LabelSelector
from xpupool.core.model import Request


@dataclass(frozen=True, slots=True)
class DisruptionBudget:
    """``selector`` None matches no pod (policy/v1: a null selector selects nothing); the empty
    selector matches every pod of ``namespace``."""

    name: str
    namespace: str
    selector: LabelSelector | None
    allowed: int

    def covers(self, pod: Request) -> bool:
        return (
            self.selector is not None
            and pod.namespace == self.namespace
            and self.selector.matches(dict(pod.labels))
        )


class DisruptionBudgets:
    """The budgets of a cluster; answers whether a set of victims may be evicted together."""

    def __init__(self, budgets: Iterable[DisruptionBudget] = ()) -> None:
        self.budgets = tuple(budgets)
        self._by_namespace: dict[str, list[DisruptionBudget]] = {}
        for budget in self.budgets:
            self._by_namespace.setdefault(budget.namespace, []).append(budget)

    def covering(self, pod: Request) -> list[DisruptionBudget]:
        return [b for b in self._by_namespace.get(pod.namespace, ()) if b.covers(pod)]

    def protected(self, pod: Request) -> bool:
        """True when the pod cannot be evicted at all: a budget with nothing left, or several
        budgets (the Eviction API refuses those)."""
        return not self.admits((pod,))

    def admits(self, victims: Sequence[Request]) -> bool:
        """Every budget stays within what it allows if all ``victims`` are evicted."""
        used: dict[str, int] = {}
        for victim in victims:
            budgets = self.covering(victim)
            if len(budgets) > 1:
                return False
            for budget in budgets:
                used[budget.name] = used.get(budget.name, 0) + 1
                if used[budget.name] > budget.allowed:
                    return False
        return True


NO_BUDGETS = DisruptionBudgets()
