"""Queues, quota, DRF, preemption and gangs — the cluster-level policy around placement."""

from __future__ import annotations

from pools import gpu_node, whole

from xpupool.core.cluster import ClusterState
from xpupool.core.model import Request
from xpupool.core.queues import (
    Limits,
    PodGroup,
    PreemptionPlan,
    QueueBook,
    QueueSpec,
    Resources,
    Running,
    plan_preemption,
    run_cycle,
)
from xpupool.core.status import Code
from xpupool.plugins.profiles import build_scheduler

CAP = Resources(10**6, 10**7, 8000)


def _running(state: ClusterState, pods: list[Request]) -> dict[str, Running]:
    return {a: Running(r, state.allocations[a][0]) for a, (_, r) in
            ((p.name, state.allocations[p.name]) for p in pods if p.name in state.allocations)}


def test_limit_is_a_hard_cap_and_quota_without_borrowing_waits() -> None:
    book = QueueBook([QueueSpec("a", quota=Resources(10**6, 10**7, 1000),
                                limit=Limits.of(Resources(10**6, 10**7, 2000))),
                      QueueSpec("b", quota=Resources(10**6, 10**7, 1000), borrowing=False)], CAP)
    state = ClusterState([gpu_node("g", 8)])
    pods = [whole(f"a{i}", 1, queue="a") for i in range(3)] + [whole(f"b{i}", 1, queue="b") for i in range(2)]
    result = run_cycle(state, build_scheduler("binpack"), book, pods)
    assert {a.pod for a in result.placed} == {"a0", "a1", "b0"}
    assert result.pending["a2"].code is Code.WAIT and "limit" in result.pending["a2"].message()
    assert "does not borrow" in result.pending["b1"].message()


def test_drf_orders_the_queue_with_the_smallest_dominant_share_first() -> None:
    book = QueueBook([QueueSpec("a"), QueueSpec("b")], CAP)
    book.charge(whole("x", 4, queue="a"))
    state = ClusterState([gpu_node("g", 1)])
    result = run_cycle(state, build_scheduler("binpack"), book, [whole("a1", 1, queue="a"), whole("b1", 1, queue="b")])
    assert [a.pod for a in result.placed] == ["b1"]


def test_fair_share_water_filling_respects_quota_weight_and_demand() -> None:
    book = QueueBook([QueueSpec("a", quota=Resources(0, 0, 2000), weight=1),
                      QueueSpec("b", quota=Resources(0, 0, 1000), weight=3),
                      QueueSpec("c", weight=1)], CAP)
    shares = book.fair_shares({"a": Resources(0, 0, 8000), "b": Resources(0, 0, 8000), "c": Resources(0, 0, 500)})
    assert shares["c"].xpu_milli == 500  # capped at its demand
    assert shares["b"].xpu_milli > shares["a"].xpu_milli > 2000
    assert sum(s.xpu_milli for s in shares.values()) <= 8000


def test_preemption_picks_the_fewest_lowest_priority_victims() -> None:
    state = ClusterState([gpu_node("g0", 2), gpu_node("g1", 2)])
    sched = build_scheduler("binpack")
    pods = [whole("low-a", 1, priority=1), whole("low-b", 1, priority=1), whole("mid", 2, priority=5)]
    for p in pods:
        assert sched.schedule(state, p).status.ok
    book = QueueBook([], CAP)
    for p in pods:
        book.charge(p)
    plan = plan_preemption(state, sched, whole("vip", 2, priority=10), _running(state, pods), book)
    assert isinstance(plan, PreemptionPlan)
    assert plan.victims == ("mid",)  # one victim beats two, even at higher priority
    assert len(state.allocations) == 3  # the what-if left the ledger unchanged


def test_no_preemption_when_the_preemptor_still_would_not_fit() -> None:
    state = ClusterState([gpu_node("g0", 2)])
    sched = build_scheduler("binpack")
    pods = [whole("low", 1, priority=1)]
    sched.schedule(state, pods[0])
    book = QueueBook([], CAP)
    plan = plan_preemption(state, sched, whole("huge", 4, priority=10), _running(state, pods), book)
    assert not isinstance(plan, PreemptionPlan) and "still not make room" in plan.message()
    assert "low" in state.allocations


def test_higher_priority_pod_preempts_in_a_cycle() -> None:
    state = ClusterState([gpu_node("g0", 2)])
    sched = build_scheduler("binpack")
    book = QueueBook([], CAP)
    first = run_cycle(state, sched, book, [whole("low", 2, priority=0)])
    running = {a.pod: Running(whole("low", 2, priority=0), a) for a in first.placed}
    second = run_cycle(state, sched, book, [whole("vip", 1, priority=100)], running=running)
    assert second.preempted == ["low"] and [a.pod for a in second.placed] == ["vip"]


def test_reclaim_takes_back_only_what_another_queue_borrowed() -> None:
    state = ClusterState([gpu_node("g0", 4)])
    sched = build_scheduler("binpack")
    book = QueueBook([QueueSpec("a", quota=Resources(10**6, 10**7, 2000)),
                      QueueSpec("b", quota=Resources(10**6, 10**7, 2000))], Resources(10**6, 10**7, 4000))
    borrowers = [whole(f"a{i}", 1, queue="a") for i in range(4)]
    first = run_cycle(state, sched, book, borrowers)
    assert len(first.placed) == 4  # queue a borrows b's idle quota
    running = {a.pod: Running(next(p for p in borrowers if p.name == a.pod), a) for a in first.placed}
    second = run_cycle(state, sched, book, [whole("b0", 1, queue="b")], running=running)
    assert len(second.preempted) == 1 and second.placed[0].pod == "b0"
    third_running = {k: v for k, v in running.items() if k not in second.preempted}
    book_a_after = book.usage["a"].xpu_milli
    assert book_a_after == 3000
    # a now holds 3000 > quota 2000 still, b holds 1000 < quota: b may reclaim once more, but a pod of
    # a's own queue with equal priority may not preempt its siblings
    third = run_cycle(state, sched, book, [whole("a9", 1, queue="a")], running=third_running)
    assert third.preempted == [] and "a9" in third.pending


def test_gang_is_all_or_nothing() -> None:
    state = ClusterState([gpu_node("g0", 4)])
    sched = build_scheduler("binpack")
    book = QueueBook([], CAP)
    gang = [whole(f"m{i}", 2, pod_group="job") for i in range(3)]  # needs 6 cards, only 4 exist
    result = run_cycle(state, sched, book, gang, groups={"job": PodGroup("job", 3)})
    assert result.placed == [] and not state.allocations
    assert "gang job: 2/3 members fit" in result.pending["m0"].message()
    ok = run_cycle(state, sched, book, gang[:2], groups={"job": PodGroup("job", 2)})
    assert sorted(a.pod for a in ok.placed) == ["m0", "m1"]


def test_gang_victims_are_evicted_as_a_bundle() -> None:
    state = ClusterState([gpu_node("g0", 2), gpu_node("g1", 2)])
    sched = build_scheduler("binpack")
    book = QueueBook([], CAP)
    gang = [whole("m0", 2, pod_group="job"), whole("m1", 2, pod_group="job")]
    placed = run_cycle(state, sched, book, gang, groups={"job": PodGroup("job", 2)})
    running = {a.pod: Running(next(g for g in gang if g.name == a.pod), a) for a in placed.placed}
    result = run_cycle(state, sched, book, [whole("vip", 1, priority=10)], running=running)
    assert sorted(result.preempted) == ["m0", "m1"]
