"""PodDisruptionBudgets in preemption planning: victims the Eviction API would refuse are never planned."""

from __future__ import annotations

from pools import gpu_node, whole

from xpupool.core.cluster import ClusterState
from xpupool.core.constraints import LabelSelector, labels_of
from xpupool.core.disruption import DisruptionBudget, DisruptionBudgets
from xpupool.core.model import Allocation, Request
from xpupool.core.queues import PreemptionPlan, QueueBook, Resources, Running, plan_preemption
from xpupool.plugins.profiles import build_scheduler

CAP = Resources(10**6, 10**7, 8000)
DB = LabelSelector(labels_of({"app": "db"}))


def app(request: Request, name: str) -> Request:
    from dataclasses import replace

    return replace(request, labels=labels_of({"app": name}), namespace="prod")


def cluster(pods: list[Request]) -> tuple[ClusterState, dict[str, Running], QueueBook]:
    """Pods 0-1 on g0's two cards, pods 2-3 on g1's."""
    state = ClusterState([gpu_node("g0", 2), gpu_node("g1", 2)])
    for i, p in enumerate(pods):
        node = f"g{i // 2}"
        assert state.reserve(Allocation(p.name, node, node, (i % 2,), 1000, (81920,)), p).ok
    book = QueueBook([], CAP)
    for p in pods:
        book.charge(p)
    return state, {p.name: Running(p, state.allocations[p.name][0]) for p in pods}, book


def test_budget_rules_match_the_eviction_api() -> None:
    db1, db2, web = app(whole("db1", 1), "db"), app(whole("db2", 1), "db"), app(whole("w", 1), "web")
    budgets = DisruptionBudgets([DisruptionBudget("prod/db", "prod", DB, allowed=1)])
    assert budgets.admits([db1]) and budgets.admits([db1, web]) and not budgets.admits([db1, db2])
    assert not budgets.protected(db1) and not budgets.protected(web)
    exhausted = DisruptionBudgets([DisruptionBudget("prod/db", "prod", DB, allowed=0)])
    assert exhausted.protected(db1) and not exhausted.admits([db1])
    # a pod covered by two budgets cannot be evicted at all; a budget never crosses namespaces;
    # a missing selector covers nothing
    two = DisruptionBudgets([DisruptionBudget("prod/a", "prod", DB, 5), DisruptionBudget("prod/b", "prod", DB, 5)])
    assert two.protected(db1)
    assert not DisruptionBudgets([DisruptionBudget("dev/db", "dev", DB, 0)]).protected(db1)
    assert not DisruptionBudgets([DisruptionBudget("prod/x", "prod", None, 0)]).protected(db1)


def test_a_protected_victim_is_skipped_for_one_the_budget_allows() -> None:
    """g0 holds two low-priority db replicas, g1 one web pod and one db replica; the budget allows
    one db disruption: a 2-card preemptor cannot clear g0 (two db pods), so it takes g1."""
    pods = [app(whole("db-0", 1, priority=1), "db"), app(whole("db-1", 1, priority=1), "db"),
            app(whole("web-0", 1, priority=1), "web"), app(whole("db-2", 1, priority=1), "db")]
    state, running, book = cluster(pods)
    vip = whole("vip", 2, priority=10)
    sched = build_scheduler("binpack")
    budgets = DisruptionBudgets([DisruptionBudget("prod/db", "prod", DB, allowed=1)])
    plan = plan_preemption(state, sched, vip, running, book, budgets=budgets)
    assert isinstance(plan, PreemptionPlan)
    assert plan.node == "g1" and set(plan.victims) == {"web-0", "db-2"}
    # with no disruption left for db, no node can be cleared: no plan, and the reason says why
    blocked = DisruptionBudgets([DisruptionBudget("prod/db", "prod", DB, allowed=0)])
    refused = plan_preemption(state, sched, vip, running, book, budgets=blocked)
    assert not isinstance(refused, PreemptionPlan)
    assert "still not make room" in refused.message()
    everything = DisruptionBudgets([DisruptionBudget("prod/all", "prod", LabelSelector(), allowed=0)])
    refused = plan_preemption(state, sched, vip, running, book, budgets=everything)
    assert not isinstance(refused, PreemptionPlan) and "protected by a PodDisruptionBudget" in refused.message()
    assert len(state.allocations) == 4  # the what-ifs left the ledger unchanged
