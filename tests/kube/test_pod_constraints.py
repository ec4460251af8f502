"""Pod JSON -> core constraints: every field kube-scheduler reads, and clear refusals.

Pure tests: the pods are what an apiserver returns. The scheduling semantics of the parsed values
are tested in tests/core/test_constraints.py and against kube-scheduler in tests/e2e.
"""

from __future__ import annotations

from xpupool.core.constraints import (
    Constraints,
    LabelSelector,
    NodeSelectorTerm,
    Operator,
    PodAffinityTerm,
    PreferredTerm,
    Requirement,
    SpreadConstraint,
    Toleration,
    Unsatisfiable,
    labels_of,
)
from xpupool.kube.objects import pod_presence, pod_request
from xpupool.kube.testing import fake_pod
from xpupool.kube.transport import JsonDict


def with_spec(**spec: object) -> JsonDict:
    pod = fake_pod("ns", "p", vxpu=1, core_pct=50, labels={"app": "llm", "rev": "7"})
    pod["spec"].update(spec)
    return pod


def constraints_of(pod: JsonDict) -> Constraints:
    parsed = pod_request(pod)
    assert parsed.ok and parsed.request is not None, parsed.errors
    return parsed.request.constraints


def test_plain_pod_has_no_constraints_but_keeps_its_labels() -> None:
    parsed = pod_request(with_spec())
    assert parsed.request is not None
    assert parsed.request.constraints.empty
    assert parsed.request.labels == (("app", "llm"), ("rev", "7"))


def test_node_selector_affinity_and_tolerations() -> None:
    pod = with_spec(
        nodeSelector={"pool": "gpu"},
        affinity={"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["3"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
            ]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 20, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}},
            ],
        }},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                     {"operator": "Exists"}],
        schedulingGates=[{"name": "example.com/wait"}],
    )
    c = constraints_of(pod)
    assert c.node_selector == (("pool", "gpu"),)
    assert c.required_terms == (
        NodeSelectorTerm((Requirement("gen", Operator.GT, ("3",)),)),
        NodeSelectorTerm(match_fields=(Requirement("metadata.name", Operator.IN, ("n1",)),)),
    )
    assert c.preferred_terms == (PreferredTerm(20, NodeSelectorTerm((Requirement("disk", Operator.EXISTS),))),)
    assert c.tolerations == (Toleration("nvidia.com/gpu", "Exists", "", "NoSchedule"), Toleration("", "Exists"))
    assert c.gates == ("example.com/wait",)


def test_pod_affinity_terms_merge_label_keys_and_namespaces() -> None:
    pod = with_spec(affinity={
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"app": "llm"}},
            "topologyKey": "kubernetes.io/hostname",
            "matchLabelKeys": ["rev"],
        }]},
        "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 5,
            "podAffinityTerm": {"labelSelector": {}, "topologyKey": "topology.kubernetes.io/zone",
                                "namespaceSelector": {}},
        }]},
    })
    c = constraints_of(pod)
    anti = c.anti_affinity[0]
    assert anti.topology_key == "kubernetes.io/hostname" and anti.namespace_set("ns") == frozenset({"ns"})
    assert anti.selector == LabelSelector((("app", "llm"),), (Requirement("rev", Operator.IN, ("7",)),))
    preferred = c.preferred_affinity[0]
    assert preferred.weight == 5 and preferred.term.all_namespaces and preferred.term.selector == LabelSelector()


def test_topology_spread_with_policies_and_match_label_keys() -> None:
    pod = with_spec(topologySpreadConstraints=[
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": {"app": "llm"}}, "matchLabelKeys": ["rev"], "minDomains": 3,
         "nodeAffinityPolicy": "Ignore", "nodeTaintsPolicy": "Honor"},
        {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"},
    ])
    c = constraints_of(pod)
    assert c.spread == (
        SpreadConstraint(1, "topology.kubernetes.io/zone", Unsatisfiable.DO_NOT_SCHEDULE,
                         LabelSelector(labels_of({"app": "llm", "rev": "7"})), 3, False, True),
        SpreadConstraint(2, "kubernetes.io/hostname", Unsatisfiable.SCHEDULE_ANYWAY, None, 1, True, False),
    )


def test_what_cannot_be_honoured_is_refused_with_a_message() -> None:
    bad = with_spec(affinity={"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"app": "llm"}}, "topologyKey": "kubernetes.io/hostname",
        "namespaceSelector": {"matchLabels": {"team": "a"}},
    }]}})
    parsed = pod_request(bad)
    assert parsed.request is None
    assert any("namespaceSelector with labels is not supported" in e for e in parsed.errors)
    weird = with_spec(nodeSelector={}, affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Near", "values": ["1"]}]}]}}})
    assert any("unknown operator 'Near'" in e for e in pod_request(weird).errors)


def test_another_schedulers_pod_still_counts_with_its_labels_and_anti_affinity() -> None:
    foreign = fake_pod("ns", "f", scheduler="default-scheduler", cpu="2", labels={"app": "db"})
    foreign["spec"]["containers"][0]["resources"]["limits"] = {"xpupool.io/bogus": "1"}
    foreign["spec"]["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    assert pod_request(foreign).request is None  # its card request is not ours to understand ...
    presence = pod_presence(foreign)  # ... but where it runs still matters
    assert presence.labels == (("app", "db"),) and presence.cpu_milli == 2000 and presence.count == 0
    assert presence.constraints.anti_affinity == (
        PodAffinityTerm(LabelSelector((("app", "db"),)), "kubernetes.io/hostname"),
    )
