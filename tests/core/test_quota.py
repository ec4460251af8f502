"""The queue tree: guarantees and limits down the tree, borrowing, lending, reclaim, per-model and
vxpu-memory quota, fair share per level — examples first, then properties over random trees."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import event, given, settings
from hypothesis import strategies as st
from pools import gpu_node, share, whole

from xpupool.core.cluster import ClusterState
from xpupool.core.model import Request
from xpupool.core.queues import Running, run_cycle
from xpupool.core.quota import (
    CPU,
    XPU,
    Limits,
    QueueBook,
    QueueSpec,
    Resources,
    cluster_capacity,
    model_dim,
    usage_of,
)
from xpupool.core.status import Code
from xpupool.plugins.profiles import build_scheduler

CARDS8 = Resources(10**6, 10**7, 8000)


def cards(n: float) -> Resources:
    return Resources(xpu_milli=int(n * 1000))


def cap(n: float) -> Limits:
    return Limits({XPU: int(n * 1000)})


# ---------------------------------------------------------------------------------- examples
def test_a_child_never_takes_its_parent_above_the_parent_limit() -> None:
    """The child's own limit is 8, its parent's 3: the parent's limit wins."""
    book = QueueBook([QueueSpec("org", limit=cap(3)), QueueSpec("team", parent="org", limit=cap(8))], CARDS8)
    for i in range(3):
        pod = whole(f"p{i}", 1, queue="team")
        assert book.gate(pod).ok
        book.charge(pod)
    status = book.gate(whole("p3", 1, queue="team"))
    assert status.code is Code.WAIT and "queue org would exceed its limit" in status.message()


def test_usage_is_conserved_up_the_tree() -> None:
    book = QueueBook([QueueSpec("org"), QueueSpec("a", parent="org"), QueueSpec("b", parent="org")], CARDS8)
    book.charge(whole("x", 2, queue="a"))
    book.charge(share("y", 30, queue="b"))
    assert book.usage["org"] == book.usage["a"] + book.usage["b"]
    book.charge(whole("x", 2, queue="a"), sign=-1)
    assert book.usage["org"] == book.usage["b"]


def test_borrowing_from_a_sibling_stays_inside_the_parent() -> None:
    """Under ``org`` (limit 4) ``a`` may borrow ``b``'s idle guarantee, but not beyond org's 4."""
    book = QueueBook([QueueSpec("org", quota=cards(4), limit=cap(4)),
                      QueueSpec("a", parent="org", quota=cards(2)),
                      QueueSpec("b", parent="org", quota=cards(2)),
                      QueueSpec("other", quota=cards(4))], CARDS8)
    for i in range(4):
        assert book.gate(whole(f"a{i}", 1, queue="a")).ok, i
        book.charge(whole(f"a{i}", 1, queue="a"))
    assert not book.gate(whole("a4", 1, queue="a")).ok  # other's idle cards are outside org's limit


def test_a_queue_that_does_not_lend_keeps_its_idle_guarantee() -> None:
    book = QueueBook([QueueSpec("a", quota=cards(2)), QueueSpec("b", quota=cards(6), lending=False)], cards(8))
    book.charge(whole("a0", 2, queue="a"))
    status = book.gate(whole("a1", 1, queue="a"))
    assert status.code is Code.WAIT and "nothing left to borrow under the cluster" in status.message()
    lend = QueueBook([QueueSpec("a", quota=cards(2)), QueueSpec("b", quota=cards(6))], cards(8))
    lend.charge(whole("a0", 2, queue="a"))
    assert lend.gate(whole("a1", 1, queue="a")).ok


def test_no_borrowing_means_the_guarantee_is_the_ceiling() -> None:
    book = QueueBook([QueueSpec("a", quota=cards(1), borrowing=False)], CARDS8)
    book.charge(whole("a0", 1, queue="a"))
    assert "does not borrow" in book.gate(whole("a1", 1, queue="a")).message()


def test_pods_run_in_leaf_queues_only() -> None:
    book = QueueBook([QueueSpec("org"), QueueSpec("a", parent="org")], CARDS8)
    assert book.gate(whole("p", 1, queue="org")).code is Code.UNSCHEDULABLE_AND_UNRESOLVABLE


def test_a_broken_tree_is_read_safely_and_reported() -> None:
    book = QueueBook([QueueSpec("a", parent="ghost"), QueueSpec("x", parent="y"), QueueSpec("y", parent="x"),
                      QueueSpec("c1", parent="a", quota=cards(3)), QueueSpec("c2", parent="a", quota=cards(3))],
                     cards(4))
    text = "\n".join(book.problems)
    assert "parent 'ghost' does not exist" in text and "loops back" in text
    # a declares no guarantee, so it pools its children's 3 + 3 cards: more than the cluster's 4
    assert "guarantees of the children of the cluster add up to more than it has" in text
    assert book.guarantee["a"].xpu_milli == 6000
    assert book.path("c1") == ["c1", "a"]
    assert all(book.path(n)[-1] in book.children[""] for n in book.queues)


def test_guarantee_is_reclaimed_from_a_borrowing_sibling_by_preemption() -> None:
    """``a`` borrows ``b``'s lent guarantee; when ``b`` wants it back, one of a's pods is preempted."""
    state = ClusterState([gpu_node("g0", 4)])
    sched = build_scheduler("binpack")
    specs = [QueueSpec("org"), QueueSpec("a", parent="org", quota=cards(2)),
             QueueSpec("b", parent="org", quota=cards(2))]
    book = QueueBook(specs, cluster_capacity(state))
    borrowers = [whole(f"a{i}", 1, queue="a") for i in range(4)]
    first = run_cycle(state, sched, book, borrowers)
    assert len(first.placed) == 4
    running = {a.pod: Running(next(p for p in borrowers if p.name == a.pod), a) for a in first.placed}
    second = run_cycle(state, sched, book, [whole("b0", 1, queue="b")], running=running)
    assert len(second.preempted) == 1 and [a.pod for a in second.placed] == ["b0"]
    assert book.usage["a"].xpu_milli == 3000 and book.usage["org"].xpu_milli == 4000


def test_without_reclaim_guarantee_a_queue_waits_instead_of_preempting() -> None:
    state = ClusterState([gpu_node("g0", 2)])
    sched = build_scheduler("binpack")
    book = QueueBook([QueueSpec("a", quota=cards(1)), QueueSpec("b", quota=cards(1), reclaim_guarantee=False)],
                     cluster_capacity(state))
    first = run_cycle(state, sched, book, [whole("a0", 1, queue="a"), whole("a1", 1, queue="a")])
    running = {a.pod: Running(whole(a.pod, 1, queue="a"), a) for a in first.placed}
    second = run_cycle(state, sched, book, [whole("b0", 1, queue="b")], running=running)
    assert second.preempted == [] and "b0" in second.pending


def test_a_pod_within_its_guarantee_does_not_preempt_pods_that_are_within_theirs() -> None:
    state = ClusterState([gpu_node("g0", 2)])
    sched = build_scheduler("binpack")
    book = QueueBook([QueueSpec("a", quota=cards(1)), QueueSpec("b", quota=cards(1)), QueueSpec("c")],
                     cluster_capacity(state))
    first = run_cycle(state, sched, book, [whole("a0", 1, queue="a"), whole("b0", 1, queue="b")])
    running = {a.pod: Running(whole(a.pod, 1, queue=a.pod[0]), a) for a in first.placed}
    second = run_cycle(state, sched, book, [whole("c0", 1, queue="c", priority=100)], running=running)
    assert second.preempted == []


def test_per_model_limit_steers_pods_to_other_models() -> None:
    """Queue ``a`` may hold 1 H100; its second pod lands on an A100 although H100s are free."""
    state = ClusterState([gpu_node("h", 4, model="H100"), gpu_node("a", 4, model="A100", mib=40960)])
    book = QueueBook([QueueSpec("a", limit=Limits({model_dim(XPU, "H100"): 1000}))], cluster_capacity(state))
    pods = [whole(f"p{i}", 1, queue="a") for i in range(6)]
    result = run_cycle(state, build_scheduler("binpack"), book, pods)
    models = [state.nodes[state.node_index[a.device_node]].devices[0].model for a in result.placed]
    assert models.count("H100") == 1 and models.count("A100") == 4
    assert book.usage["a"].get(model_dim(XPU, "H100")) == 1000
    assert "H100" in result.pending["p5"].message() or "A100" in result.pending["p5"].message() or \
        result.pending["p5"].code is Code.UNSCHEDULABLE


def test_vxpu_memory_quota_counts_percent_requests_exactly() -> None:
    """25 % of an 80 GiB card is 20 GiB: with a 50 GiB vxpu-memory limit only two fit."""
    state = ClusterState([gpu_node("h", 4)])
    book = QueueBook([QueueSpec("a", limit=Limits({"device_memory_mib": 50 * 1024}))], cluster_capacity(state))
    pods = [Request(name=f"p{i}", count=1, share_milli=250, device_memory_pct=25, queue="a") for i in range(3)]
    result = run_cycle(state, build_scheduler("binpack"), book, pods)
    assert len(result.placed) == 2 and book.usage["a"].device_memory_mib == 40 * 1024
    assert "vxpu-memory" in result.pending["p2"].message()
    assert len(state.allocations) == 2  # the refused placement was never reserved


def test_exact_usage_names_the_card_model() -> None:
    state = ClusterState([gpu_node("h", 2, model="H100")])
    pod = share("s", 40, queue="a")
    placed = build_scheduler("binpack").place(state, pod)
    assert placed.allocation is not None
    used = usage_of(state, pod, placed.allocation)
    assert used.get(model_dim(XPU, "H100")) == 400 and used.xpu_milli == 400 and used.get(CPU) == 1000


def test_fair_share_splits_each_level_by_weight() -> None:
    book = QueueBook([QueueSpec("x", weight=3), QueueSpec("y", weight=1),
                      QueueSpec("x1", parent="x"), QueueSpec("x2", parent="x")], cards(8))
    want = {n: cards(8) for n in ("x1", "x2", "y")}
    shares = book.fair_shares(want)
    assert shares["x"].xpu_milli == 6000 and shares["y"].xpu_milli == 2000
    assert shares["x1"].xpu_milli == shares["x2"].xpu_milli == 3000


def test_hierarchical_drf_orders_the_less_served_branch_first() -> None:
    from xpupool.core.queues import order_pending

    book = QueueBook([QueueSpec("x"), QueueSpec("y"), QueueSpec("x1", parent="x"), QueueSpec("x2", parent="x")],
                     cards(8))
    book.charge(whole("busy", 3, queue="x1"))
    book.charge(whole("b2", 1, queue="y"))
    order = [r.name for r in order_pending([whole("p1", 1, queue="x2"), whole("p2", 1, queue="y")], book, {})]
    assert order == ["p2", "p1"]  # x holds 3 cards, y 1: y's pod first although x2 itself holds none


# -------------------------------------------------------------------------------- properties
@dataclass(frozen=True)
class Tree:
    specs: list[QueueSpec]
    capacity: Resources

    @property
    def leaves(self) -> list[str]:
        parents = {s.parent for s in self.specs}
        return [s.name for s in self.specs if s.name not in parents]


@st.composite
def trees(draw: st.DrawFn, *, consistent: bool = False) -> Tree:
    """Random trees of up to 7 queues over compute and one per-model dimension. ``consistent``:
    children's guarantees fit their parent's, the top level fits the cluster, every queue
    borrows, lends, is reclaimable and reclaims (the setting in which guarantees are promised)."""
    total = draw(st.integers(2, 10)) * 1000
    count = draw(st.integers(1, 7))
    specs: list[QueueSpec] = []
    room: dict[str, int] = {"": total}
    for i in range(count):
        parent = draw(st.sampled_from(["", *[s.name for s in specs]]))
        name = f"q{i}"
        if consistent:
            guarantee = draw(st.integers(0, room[parent] // 1000)) * 1000
            room[parent] -= guarantee
            room[name] = guarantee
            specs.append(QueueSpec(name, quota=Resources(xpu_milli=guarantee), parent=parent,
                                   weight=draw(st.integers(1, 4))))
            continue
        guarantee = draw(st.integers(0, 6)) * 1000
        limit = draw(st.one_of(st.none(), st.integers(0, 10)))
        model_limit = draw(st.one_of(st.none(), st.integers(0, 6)))
        dims = {} if limit is None else {XPU: limit * 1000}
        if model_limit is not None:
            dims[model_dim(XPU, "H100")] = model_limit * 1000
        specs.append(QueueSpec(
            name, quota=Resources(xpu_milli=guarantee), limit=Limits(dims), parent=parent,
            weight=draw(st.integers(1, 4)), borrowing=draw(st.booleans()), lending=draw(st.booleans()),
            reclaimable=draw(st.booleans()), reclaim_guarantee=draw(st.booleans()),
        ))
    return Tree(specs, Resources(xpu_milli=total, by_model={"H100": (total // 2, 0)}))


def _pod(name: str, queue: str, milli: int, model: str) -> tuple[Request, Resources]:
    request = Request(name=name, count=1, share_milli=milli, queue=queue)
    return request, Resources(xpu_milli=milli, by_model={model: (milli, 0)})


def _check_invariants(book: QueueBook, charged: dict[str, tuple[Request, Resources]]) -> None:
    total = sum((amount for _, amount in charged.values()), Resources())
    assert sum((book.usage[t] for t in book.children[""]), Resources()) == total  # conservation at the top
    for name, kids in book.children.items():
        if name and kids:
            assert book.usage[name] == sum((book.usage[k] for k in kids), Resources())  # at every level
    for name, spec in book.queues.items():
        assert not spec.limit.exceeded_by(book.usage[name]), (name, book.usage[name], spec.limit)


# (admit (else refund), leaf pick, size in tenths of a card, on an H100); mostly admissions so
# that the cluster fills up and borrowing and reclaim happen
operations = st.lists(st.tuples(st.integers(0, 9).map(bool), st.integers(0, 6), st.integers(1, 20), st.booleans()),
                      max_size=60)


@settings(max_examples=150, deadline=None)
@given(tree=trees(), ops=operations)
def test_property_usage_is_conserved_and_never_above_any_limit(tree: Tree, ops: list[tuple[bool, int, int, bool]]
                                                               ) -> None:
    book = QueueBook(tree.specs, tree.capacity)
    charged: dict[str, tuple[Request, Resources]] = {}
    for i, (admit, leaf_pick, tenths, on_h100) in enumerate(ops):
        if not admit and charged:
            name = sorted(charged)[leaf_pick % len(charged)]
            request, amount = charged.pop(name)
            book.charge(request, amount, -1)
        else:
            leaf = tree.leaves[leaf_pick % len(tree.leaves)]
            request, amount = _pod(f"p{i}", leaf, tenths * 100, "H100" if on_h100 else "A100")
            if book.gate(request, amount).ok:
                book.charge(request, amount)
                charged[request.name] = (request, amount)
        _check_invariants(book, charged)


@settings(max_examples=300, deadline=None)
@given(tree=trees(consistent=True), ops=operations, probe=st.tuples(st.integers(0, 6), st.integers(1, 10)))
def test_property_guarantees_are_always_admitted_and_reclaimable(
    tree: Tree, ops: list[tuple[bool, int, int, bool]], probe: tuple[int, int]
) -> None:
    """Whatever borrowing happened, a pod that keeps its queue path within its guarantees passes
    the gate, and free capacity plus the pods it may reclaim cover it."""
    book = QueueBook(tree.specs, tree.capacity)
    charged: dict[str, tuple[Request, Resources]] = {}
    for i, (admit, leaf_pick, tenths, _) in enumerate(ops):
        if not admit and charged:
            request, amount = charged.pop(sorted(charged)[leaf_pick % len(charged)])
            book.charge(request, amount, -1)
            continue
        request, amount = _pod(f"p{i}", tree.leaves[leaf_pick % len(tree.leaves)], tenths * 100, "H100")
        amount = Resources(xpu_milli=amount.xpu_milli)
        used = sum((a for _, a in charged.values()), Resources())
        if book.gate(request, amount).ok and (used + amount).fits_in(tree.capacity):  # the cluster is finite
            book.charge(request, amount)
            charged[request.name] = (request, amount)
    slack = [leaf for leaf in tree.leaves if book.usage[leaf].xpu_milli < book.guarantee[leaf].xpu_milli]
    leaf = slack[probe[0] % len(slack)] if slack else tree.leaves[probe[0] % len(tree.leaves)]
    room = min(book.guarantee[n].xpu_milli - book.usage[n].xpu_milli for n in book.path(leaf))
    milli = max(room, 100) if probe[1] > 5 else probe[1] * 100  # often the whole unused guarantee
    request = Request(name="probe", count=max(1, -(-milli // 1000)), share_milli=min(milli, 1000), queue=leaf)
    if milli > 1000:
        request = Request(name="probe", count=milli // 1000, share_milli=1000, queue=leaf)
    need = Resources(xpu_milli=request.gpu_milli_total)
    if not all((book.usage[n] + need).fits_in(book.queues[n].quota) for n in book.path(leaf)):
        event("probe outside its guarantee")
        return  # not within its guarantees: nothing is promised
    assert book.gate(request, need).code in (Code.SUCCESS, Code.UNSCHEDULABLE)  # never a plain WAIT
    free = tree.capacity.xpu_milli - sum(a.xpu_milli for _, a in charged.values())
    victims = sorted((n for n, (r, _) in charged.items() if book.may_reclaim(request, need, r.queue)),
                     key=lambda n: -charged[n][1].xpu_milli)
    assert free + sum(charged[n][1].xpu_milli for n in victims) >= need.xpu_milli
    for name in victims:  # reclaim, largest first, until the pod is admitted and fits
        if book.gate(request, need).ok and free >= need.xpu_milli:
            break
        event("had to reclaim")
        victim, amount = charged.pop(name)
        book.charge(victim, amount, -1)
        free += amount.xpu_milli
    assert book.gate(request, need).ok and free >= need.xpu_milli


@settings(max_examples=150, deadline=None)
@given(tree=trees(consistent=True), wants=st.lists(st.integers(0, 20), min_size=7, max_size=7))
def test_property_fair_shares_conserve_honour_guarantees_and_demand(tree: Tree, wants: list[int]) -> None:
    book = QueueBook(tree.specs, tree.capacity)
    demand = {leaf: Resources(xpu_milli=wants[i] * 500) for i, leaf in enumerate(tree.leaves)}
    shares = book.fair_shares(demand)
    tops = book.children[""]
    assert sum(shares[t].xpu_milli for t in tops) <= tree.capacity.xpu_milli
    subtree_want: dict[str, int] = {}

    def want(name: str) -> int:
        kids = book.children[name]
        subtree_want[name] = sum(want(k) for k in kids) if kids else demand.get(name, Resources()).xpu_milli
        return subtree_want[name]

    for t in tops:
        want(t)
    for name, spec in book.queues.items():
        kids = book.children[name]
        assert sum(shares[k].xpu_milli for k in kids) <= shares[name].xpu_milli + len(kids)  # int rounding
        assert shares[name].xpu_milli <= subtree_want[name]
        assert shares[name].xpu_milli >= min(spec.quota.xpu_milli, subtree_want[name]) - 1
    if sum(subtree_want[t] for t in tops) >= tree.capacity.xpu_milli:  # work-conserving when demand is there
        assert sum(shares[t].xpu_milli for t in tops) >= tree.capacity.xpu_milli - len(tops)
