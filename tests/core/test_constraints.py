"""Kubernetes placement constraints in the core: which nodes a pod may use, and which it prefers.

Every rule is checked through ``Scheduler.place`` (the path the daemon and the simulator take),
on small hand-made clusters where the right answer is obvious. The differential test against the
real kube-scheduler (tests/e2e/test_differential.py) checks the same rules on random cases.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from xpupool.core.cluster import ClusterState
from xpupool.core.constraint_masks import constraint_mask
from xpupool.core.constraints import (
    LABEL_HOSTNAME,
    LABEL_ZONE,
    Constraints,
    Effect,
    LabelSelector,
    NodeSelectorTerm,
    Operator,
    PodAffinityTerm,
    PreferredTerm,
    Requirement,
    SpreadConstraint,
    Taint,
    Toleration,
    Unsatisfiable,
    WeightedPodAffinityTerm,
    labels_of,
)
from xpupool.core.model import Allocation, Device, Node, RemotePolicy, Request, Vendor
from xpupool.core.podindex import PodIndex
from xpupool.core.status import Code
from xpupool.plugins.profiles import build_scheduler


def node(name: str, *, zone: str = "z1", cards: int = 2, taints: tuple[Taint, ...] = (),
         unschedulable: bool = False, **labels: str) -> Node:
    devices = tuple(Device(i, Vendor.NVIDIA, "H100", 81920) for i in range(cards))
    all_labels = {LABEL_HOSTNAME: name, LABEL_ZONE: zone} | {k.replace("__", "/"): v for k, v in labels.items()}
    return Node(name, 64_000, 256 * 1024, devices, all_labels, taints=taints, unschedulable=unschedulable)


NONE = Constraints()
LLM = LabelSelector(labels_of({"app": "llm"}))


def pod(name: str, constraints: Constraints = NONE, *, labels: dict[str, str] | None = None,
        namespace: str = "default", cards: int = 0, share_milli: int = 0) -> Request:
    return Request(name=name, namespace=namespace, cpu_milli=100, memory_mib=64, count=cards,
                   share_milli=share_milli, labels=labels_of(labels or {}), constraints=constraints)


def feasible(state: ClusterState, request: Request) -> set[str]:
    mask = constraint_mask(state, request) & state.host_fit(request)
    return {state.nodes[i].name for i in np.nonzero(mask)[0]}


def place(state: ClusterState, request: Request) -> str:
    result = build_scheduler("binpack").schedule(state, request)
    assert result.status.ok, result.status.message()
    assert result.allocation is not None
    return result.allocation.node


def running(state: ClusterState, name: str, where: str, labels: dict[str, str], *, namespace: str = "default",
            constraints: Constraints = NONE) -> None:
    request = pod(name, constraints, labels=labels, namespace=namespace)
    status = state.reserve(Allocation(name, where, where, (), 0, ()), request)
    assert status.ok


def req(key: str, op: str, *values: str) -> Requirement:
    return Requirement(key, Operator(op), tuple(values))


# ---------------------------------------------------------------------------- node selection
def test_node_selector_and_every_affinity_operator() -> None:
    state = ClusterState([
        node("a", pool="gpu", gen="3"), node("b", pool="gpu", gen="5"), node("c", pool="cpu"), node("d", gen="x"),
    ])
    assert feasible(state, pod("p", Constraints(node_selector=labels_of({"pool": "gpu"})))) == {"a", "b"}

    def affinity(*terms: NodeSelectorTerm) -> Constraints:
        return Constraints(required_terms=terms)

    cases = {
        ("pool", "In", ("gpu", "cpu")): {"a", "b", "c"},
        ("pool", "NotIn", ("gpu",)): {"c", "d"},  # NotIn matches nodes without the key
        ("gen", "Exists", ()): {"a", "b", "d"},
        ("gen", "DoesNotExist", ()): {"c"},
        ("gen", "Gt", ("4",)): {"b"},  # "x" is not an integer: never matches Gt/Lt
        ("gen", "Lt", ("4",)): {"a"},
    }
    for (key, op, values), expected in cases.items():
        got = feasible(state, pod("p", affinity(NodeSelectorTerm((req(key, op, *values),)))))
        assert got == expected, (key, op, values)
    # terms are ORed, expressions within a term ANDed; matchFields on metadata.name
    either = affinity(NodeSelectorTerm((req("pool", "In", "cpu"),)),
                      NodeSelectorTerm((req("gen", "Exists"), req("gen", "Lt", "4"))))
    assert feasible(state, pod("p", either)) == {"a", "c"}
    by_name = affinity(NodeSelectorTerm(match_fields=(req("metadata.name", "In", "b", "d"),)))
    assert feasible(state, pod("p", by_name)) == {"b", "d"}
    # an empty term matches no node; nodeSelector and affinity must both hold
    assert feasible(state, pod("p", affinity(NodeSelectorTerm()))) == set()
    both = Constraints(node_selector=labels_of({"pool": "gpu"}),
                       required_terms=(NodeSelectorTerm((req("gen", "Gt", "4"),)),))
    assert feasible(state, pod("p", both)) == {"b"}


def test_unschedulable_pod_is_explained_in_kube_scheduler_words() -> None:
    state = ClusterState([node("a", pool="cpu"), node("b", taints=(Taint("gpu", "yes"),))])
    result = build_scheduler("binpack").place(state, pod("p", Constraints(node_selector=labels_of({"pool": "gpu"}))))
    assert result.status.code is Code.UNSCHEDULABLE
    message = result.status.message()
    assert "1 node(s) had untolerated taint {gpu: yes}" in message
    assert "1 node(s) didn't match Pod's node affinity/selector" in message


def test_tainted_gpu_pool_is_used_by_pods_that_tolerate_it() -> None:
    """GPU pools are commonly tainted: a tainted node is not "unusable", it is reserved."""
    gpu_taint = Taint("nvidia.com/gpu", "present", Effect.NO_SCHEDULE)
    state = ClusterState([node("gpu-1", taints=(gpu_taint,)), node("plain", cards=0)])
    gpu_pod = pod("g", cards=1, share_milli=500)
    assert not build_scheduler("binpack").place(state, gpu_pod).status.ok
    tolerant = [
        Toleration("nvidia.com/gpu", "Exists"),
        Toleration("nvidia.com/gpu", "Equal", "present", "NoSchedule"),
        Toleration("", "Exists"),  # an empty key with Exists tolerates everything
        Toleration("nvidia.com/gpu", "Equal", "present"),  # empty effect matches every effect
    ]
    for toleration in tolerant:
        tolerating = pod("g", Constraints(tolerations=(toleration,)), cards=1, share_milli=500)
        assert place(state.copy(), tolerating) == "gpu-1", toleration
    not_tolerant = [
        Toleration("nvidia.com/gpu", "Equal", "absent"),
        Toleration("nvidia.com/gpu", "Exists", effect="NoExecute"),
        Toleration("other", "Exists"),
    ]
    for toleration in not_tolerant:
        assert feasible(state, pod("c", Constraints(tolerations=(toleration,)))) == {"plain"}, toleration


def test_no_execute_filters_and_prefer_no_schedule_only_scores() -> None:
    state = ClusterState([
        node("hard", taints=(Taint("k", "v", Effect.NO_EXECUTE),)),
        node("soft", taints=(Taint("k", "v", Effect.PREFER_NO_SCHEDULE),)),
        node("soft2", taints=(Taint("k", "v", Effect.PREFER_NO_SCHEDULE), Taint("j", "", Effect.PREFER_NO_SCHEDULE))),
    ])
    assert feasible(state, pod("p")) == {"soft", "soft2"}
    assert place(state, pod("p")) == "soft"  # fewer intolerable PreferNoSchedule taints wins
    assert feasible(state, pod("q", Constraints(tolerations=(Toleration("k", "Exists"),)))) == {"hard", "soft", "soft2"}


def test_cordoned_node_needs_the_unschedulable_toleration() -> None:
    state = ClusterState([node("cordoned", unschedulable=True), node("open")])
    assert feasible(state, pod("p")) == {"open"}
    cordon = Toleration("node.kubernetes.io/unschedulable", "Exists", effect="NoSchedule")
    tolerating = Constraints(tolerations=(cordon,))
    assert feasible(state, pod("p", tolerating)) == {"cordoned", "open"}
    message = build_scheduler("binpack").place(ClusterState([node("c", unschedulable=True)]), pod("p")).status.message()
    assert "1 node(s) were unschedulable" in message


def test_gated_pod_is_reported_gated_and_never_placed() -> None:
    state = ClusterState([node("a")])
    result = build_scheduler("binpack").schedule(state, pod("p", Constraints(gates=("example.com/quota",))))
    assert result.status.code is Code.GATED and result.allocation is None
    assert "example.com/quota" in result.status.message()
    assert not state.allocations


def test_preferred_node_affinity_outranks_the_packing_policy() -> None:
    state = ClusterState([node("a", disk="hdd"), node("b", disk="ssd")])
    running(state, "x", "a", {})  # binpack alone would prefer the busier node a
    prefer = Constraints(preferred_terms=(PreferredTerm(10, NodeSelectorTerm((req("disk", "In", "ssd"),))),))
    assert place(state, pod("p", prefer, cards=1, share_milli=100)) == "b"


# ---------------------------------------------------------------------------- pod terms
def replica_anti_affinity(key: str) -> Constraints:
    return Constraints(anti_affinity=(PodAffinityTerm(LabelSelector(labels_of({"app": "llm"})), key),))


def test_replicas_with_hostname_anti_affinity_take_one_node_each() -> None:
    state = ClusterState([node(f"n{i}") for i in range(3)])
    placed = {place(state, pod(f"r{i}", replica_anti_affinity(LABEL_HOSTNAME), labels={"app": "llm"}))
              for i in range(3)}
    assert placed == {"n0", "n1", "n2"}
    fourth = build_scheduler("binpack").place(state, pod("r3", replica_anti_affinity(LABEL_HOSTNAME),
                                                         labels={"app": "llm"}))
    assert not fourth.status.ok and "didn't match pod anti-affinity rules" in fourth.status.message()
    # another namespace's replicas are not counted (terms default to the pod's own namespace)
    assert place(state, pod("other", replica_anti_affinity(LABEL_HOSTNAME), labels={"app": "llm"},
                            namespace="team-b")) in {"n0", "n1", "n2"}


def test_zone_anti_affinity_and_the_symmetric_rule() -> None:
    state = ClusterState([node("a1", zone="a"), node("a2", zone="a"), node("b1", zone="b")])
    running(state, "x", "a1", {"app": "llm"})
    assert feasible(state, pod("p", replica_anti_affinity(LABEL_ZONE), labels={"app": "llm"})) == {"b1"}
    # an existing pod's anti-affinity keeps matching newcomers out of its zone, even newcomers
    # that carry no rule of their own
    running(state, "guard", "b1", {"role": "guard"}, constraints=replica_anti_affinity(LABEL_ZONE))
    assert feasible(state, pod("q", labels={"app": "llm"})) == {"a1", "a2"}
    assert feasible(state, pod("q", labels={"app": "web"})) == {"a1", "a2", "b1"}
    # nodes without the topology key are not constrained by it
    state2 = ClusterState([Node("bare", 64_000, 256 * 1024, (), {}), node("z", zone="a")])
    running(state2, "x", "z", {"app": "llm"})
    assert feasible(state2, pod("p", replica_anti_affinity(LABEL_ZONE), labels={"app": "llm"})) == {"bare"}


def test_pod_affinity_follows_its_peers_and_the_first_may_go_anywhere() -> None:
    state = ClusterState([node("a1", zone="a"), node("b1", zone="b")])
    near_cache = Constraints(affinity=(PodAffinityTerm(LabelSelector(labels_of({"app": "cache"})), LABEL_ZONE),))
    # no cache pod anywhere: a pod that is itself a cache pod may start the group ...
    assert feasible(state, pod("c0", near_cache, labels={"app": "cache"})) == {"a1", "b1"}
    # ... one that is not cannot
    assert feasible(state, pod("w", near_cache, labels={"app": "web"})) == set()
    running(state, "cache", "b1", {"app": "cache"})
    assert feasible(state, pod("w", near_cache, labels={"app": "web"})) == {"b1"}


def spread(max_skew: int, key: str = LABEL_ZONE, *, when: Unsatisfiable = Unsatisfiable.DO_NOT_SCHEDULE,
           min_domains: int = 1, honor_affinity: bool = True, honor_taints: bool = False,
           selector: LabelSelector | None = LLM) -> SpreadConstraint:
    return SpreadConstraint(max_skew, key, when, selector, min_domains, honor_affinity, honor_taints)


def test_topology_spread_max_skew_over_zones() -> None:
    state = ClusterState([node("a1", zone="a"), node("a2", zone="a"), node("b1", zone="b"), node("c1", zone="c")])
    running(state, "x1", "a1", {"app": "llm"})
    running(state, "x2", "b1", {"app": "llm"})
    one = Constraints(spread=(spread(1),))
    assert feasible(state, pod("p", one, labels={"app": "llm"})) == {"c1"}  # zone c has 0: a, b would skew 2
    assert feasible(state, pod("p", Constraints(spread=(spread(2),)), labels={"app": "llm"})) == {"a1", "a2", "b1",
                                                                                                   "c1"}
    # a pod the selector does not match adds nothing to the skew
    assert feasible(state, pod("p", one, labels={"app": "web"})) == {"a1", "a2", "b1", "c1"}
    # nodes without the topology key never qualify
    state2 = ClusterState([Node("bare", 64_000, 256 * 1024, (), {}), node("z", zone="a")])
    assert feasible(state2, pod("p", one, labels={"app": "llm"})) == {"z"}


def test_spread_min_domains_and_node_inclusion_policies() -> None:
    state = ClusterState([node("a1", zone="a", pool="x"), node("b1", zone="b", pool="y",
                                                               taints=(Taint("t", "", Effect.NO_SCHEDULE),))])
    running(state, "x1", "a1", {"app": "llm"})
    tolerate = (Toleration("t", "Exists"),)
    # two domains, min 0 (zone b): zone a already has 1 -> skew 2 > 1 on a1
    assert feasible(state, pod("p", Constraints(spread=(spread(1),), tolerations=tolerate),
                               labels={"app": "llm"})) == {"b1"}
    # minDomains 3 > 2 domains: the global minimum is taken as 0 (same answer here) ...
    many = Constraints(spread=(spread(1, min_domains=3),), tolerations=tolerate)
    assert feasible(state, pod("p", many, labels={"app": "llm"})) == {"b1"}
    # nodeAffinityPolicy Honor: only pool x's domains count -> zone a is the only domain, min 1
    pinned = Constraints(spread=(spread(1),), node_selector=labels_of({"pool": "x"}))
    assert feasible(state, pod("p", pinned, labels={"app": "llm"})) == {"a1"}
    ignore = Constraints(spread=(spread(1, honor_affinity=False),), node_selector=labels_of({"pool": "x"}))
    assert feasible(state, pod("p", ignore, labels={"app": "llm"})) == set()
    # nodeTaintsPolicy Honor: the tainted zone b does not count for a pod that does not tolerate it
    honor = Constraints(spread=(spread(1, honor_taints=True),))
    assert feasible(state, pod("p", honor, labels={"app": "llm"})) == {"a1"}


def test_spread_with_an_empty_selector_counts_nothing() -> None:
    """kube-scheduler's corner case: ``labelSelector: {}`` counts no pods, but matches the pod."""
    state = ClusterState([node("a1", zone="a"), node("b1", zone="b")])
    for i in range(3):
        running(state, f"x{i}", "a1", {"app": "llm"})
    empty = Constraints(spread=(spread(1, selector=LabelSelector()),))
    assert feasible(state, pod("p", empty, labels={"app": "llm"})) == {"a1", "b1"}


def test_schedule_anyway_spread_and_preferred_anti_affinity_only_score() -> None:
    state = ClusterState([node("a1", zone="a"), node("b1", zone="b")])
    for i in range(3):
        running(state, f"x{i}", "a1", {"app": "llm"})
    soft = Constraints(spread=(spread(1, when=Unsatisfiable.SCHEDULE_ANYWAY),))
    assert feasible(state, pod("p", soft, labels={"app": "llm"})) == {"a1", "b1"}
    assert place(state.copy(), pod("p", soft, labels={"app": "llm"})) == "b1"
    avoid = Constraints(preferred_anti_affinity=(
        WeightedPodAffinityTerm(50, PodAffinityTerm(LabelSelector(labels_of({"app": "llm"})), LABEL_HOSTNAME)),))
    assert place(state.copy(), pod("q", avoid)) == "b1"


def test_preemption_what_if_sees_pod_counts_restored() -> None:
    """The pod index follows the ledger through reserve/release, so a rolled-back what-if leaves
    the counts exactly as they were."""
    state = ClusterState([node("n0"), node("n1")])
    running(state, "x", "n0", {"app": "llm"})
    before = feasible(state, pod("p", replica_anti_affinity(LABEL_HOSTNAME), labels={"app": "llm"}))
    snapshot = state.copy()
    state.release("x")
    assert feasible(state, pod("p", replica_anti_affinity(LABEL_HOSTNAME), labels={"app": "llm"})) == {"n0", "n1"}
    running(state, "x", "n0", {"app": "llm"})
    assert feasible(state, pod("p", replica_anti_affinity(LABEL_HOSTNAME), labels={"app": "llm"})) == before
    assert feasible(snapshot, pod("p", replica_anti_affinity(LABEL_HOSTNAME), labels={"app": "llm"})) == before


def test_remote_vxpu_pod_node_honours_constraints() -> None:
    gpu = node("gpu", taints=(Taint("nvidia.com/gpu", "", Effect.NO_SCHEDULE),))
    hosts = [node("cpu-a", cards=0, pool="a"), node("cpu-b", cards=0, pool="b")]
    state = ClusterState([gpu, *hosts])
    request = Request(name="r", cpu_milli=100, memory_mib=64, count=1, share_milli=300,
                      remote=RemotePolicy.REQUIRED, constraints=Constraints(node_selector=labels_of({"pool": "b"})))
    result = build_scheduler("binpack").place(state, request)
    assert result.status.ok and result.allocation is not None
    # the pod does not run on the tainted GPU node, so it needs no toleration for it
    assert (result.allocation.node, result.allocation.device_node) == ("cpu-b", "gpu")
    cordoned = ClusterState([node("gpu", unschedulable=True), *hosts])
    assert not build_scheduler("binpack").place(cordoned, request).status.ok


# ---------------------------------------------------------------------------- vectorised == scalar
KEYS = ["pool", "gen", "tier"]
VALUES = ["1", "2", "5", "x", "gpu"]
ops = st.sampled_from(list(Operator))
requirements = st.builds(
    lambda key, op, values: Requirement(key, op, tuple(values[:1]) if op in (Operator.GT, Operator.LT) else
                                        () if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) else tuple(values)),
    st.sampled_from(KEYS), ops, st.lists(st.sampled_from(VALUES), min_size=1, max_size=3),
)
terms = st.builds(NodeSelectorTerm, st.lists(requirements, max_size=3).map(tuple))
node_labels = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(node_labels, min_size=1, max_size=8), required=st.lists(terms, min_size=1, max_size=3),
       selector=node_labels)
def test_vectorised_node_affinity_equals_the_per_node_rule(
    labels: list[dict[str, str]], required: list[NodeSelectorTerm], selector: dict[str, str]
) -> None:
    nodes = [Node(f"n{i}", 1000, 1000, (), lab) for i, lab in enumerate(labels)]
    constraints = Constraints(node_selector=labels_of(selector), required_terms=tuple(required))
    state = ClusterState(nodes)
    expected = {n.name for n in nodes if constraints.node_matches(n.name, n.labels)}
    assert feasible(state, Request(name="p", constraints=constraints)) == expected


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["a", "b"]), st.integers(0, 3), st.booleans(),
                          st.booleans()), min_size=1, max_size=40),
       st.lists(st.integers(0, 39), max_size=15))
def test_pod_counts_for_a_selector_first_asked_late_equal_a_full_scan(
        pods: list[tuple[int, str, int, bool, bool]], removed: list[int]) -> None:
    # a query first asked after pods came and went is answered from the pods carrying its first
    # matchLabels pair: it must count exactly what scanning every pod counts
    index = PodIndex(6)
    held: dict[str, tuple[int, str, dict[str, str]]] = {}
    for i, (node, namespace, app, tier, canary) in enumerate(pods):
        labels = {"app": f"svc-{app}"} | ({"tier": "web"} if tier else {}) | ({"canary": "yes"} if canary else {})
        index.add(f"p{i}", node, namespace, labels)
        held[f"p{i}"] = (node, namespace, labels)
    for i in removed:
        index.remove(f"p{i}")
        held.pop(f"p{i}", None)
    selectors = [LabelSelector(labels_of({"app": f"svc-{app}"})) for app in range(4)] + [
        LabelSelector(labels_of({"tier": "web", "app": "svc-1"})),
        LabelSelector(match_expressions=(Requirement("canary", Operator.EXISTS),)),
        LabelSelector(labels_of({"app": "svc-2"}), (Requirement("tier", Operator.DOES_NOT_EXIST),)),
    ]
    for selector in selectors:
        for namespaces in (None, frozenset({"a"})):
            expected = np.zeros(6, dtype=np.int64)
            for node, namespace, labels in held.values():
                if (namespaces is None or namespace in namespaces) and selector.matches(labels):
                    expected[node] += 1
            np.testing.assert_array_equal(index.counts(((selector, namespaces),)), expected)
