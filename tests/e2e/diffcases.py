"""Seeded random cases for the differential test against kube-scheduler (imported by name).

A case is a small cluster of its own (2-5 nodes with random labels, taints, cordons, CPU, memory
and whole GPUs), 0-4 pods already running there (bound directly, some with anti-affinity of their
own), and ONE probe pod with random constraints. Cases share one apiserver but cannot see each
other: every probe carries a ``nodeSelector`` on its case's label, every case has its own
namespace (selectors and terms default to the pod's namespace), and topology values are unique
per case. So each probe's answer — feasible or not — is unambiguous, and both schedulers are
asked about the same cluster.

Generated API objects are valid for the apiserver (validation rejects e.g. Gt with a non-integer).
``Case.deliberate`` names a case built to show a difference we keep on purpose (see the test).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from xpupool.kube.testing import fake_node
from xpupool.kube.transport import JsonDict

CASE_LABEL = "diff.xpupool.io/case"
PROBE_LABEL = "diff.xpupool.io/probe"
HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"
RACK = "diff.xpupool.io/rack"
TAINTS = [
    {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
    {"key": "dedicated", "value": "inference", "effect": "NoExecute"},
    {"key": "spot", "value": "true", "effect": "PreferNoSchedule"},
    {"key": "maintenance", "effect": "NoSchedule"},
]
APPS = ["llm", "web", "db"]

#: differences kept on purpose, each built into a few cases and asserted as such
NOT_READY = "node-not-ready"  # we honour Ready=False as the lifecycle controller's taint
NAMESPACE_SELECTOR = "namespace-selector"  # we refuse namespaceSelector with labels, with a message


@dataclass
class Case:
    id: str
    namespace: str
    nodes: list[JsonDict]
    existing: list[JsonDict]
    probe: JsonDict  # without schedulerName and name: see probe_pod()
    deliberate: str = ""
    features: list[str] = field(default_factory=list)


def _resources(cpu_m: int, mem_mi: int, gpus: int) -> JsonDict:
    requests: dict[str, str] = {"cpu": f"{cpu_m}m", "memory": f"{mem_mi}Mi"}
    limits: dict[str, str] = {}
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


def _pod(namespace: str, name: str, labels: dict[str, str], resources: JsonDict, **spec: Any) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "containers": [{"name": "main", "image": "registry.invalid/none:0", "resources": resources}],
            "terminationGracePeriodSeconds": 0,
            **spec,
        },
    }


def _selector(rng: random.Random) -> JsonDict:
    if rng.random() < 0.6:
        return {"matchLabels": {"app": rng.choice(APPS[:2])}}
    op = rng.choice(["In", "NotIn", "Exists"])
    expr: JsonDict = {"key": "app", "operator": op}
    if op != "Exists":
        expr["values"] = rng.sample(APPS, rng.randint(1, 2))
    return {"matchExpressions": [expr]}


def _node_requirement(rng: random.Random) -> JsonDict:
    key = rng.choice(["pool", "gen", "tier"])
    op = rng.choice(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"])
    req: JsonDict = {"key": key, "operator": op}
    if op in ("Gt", "Lt"):
        req["values"] = [str(rng.choice([0, 2, 4, 6]))]
    elif op in ("In", "NotIn"):
        req["values"] = rng.sample(["a", "b", "1", "3", "5", "x"], rng.randint(1, 3))
    return req


def _toleration(rng: random.Random, taint: JsonDict) -> JsonDict:
    form = rng.random()
    if form < 0.35:
        tol: JsonDict = {"key": taint["key"], "operator": "Exists"}
    else:
        value = taint.get("value", "") if rng.random() < 0.8 else "other"
        tol = {"key": taint["key"], "operator": "Equal", "value": value}
    if rng.random() < 0.5:
        tol["effect"] = taint["effect"] if rng.random() < 0.8 else rng.choice(["NoSchedule", "NoExecute"])
    return tol


def generate(seed: int, count: int, run: str) -> list[Case]:
    """``count`` cases from ``seed``; ``run`` keeps names apart between runs on one apiserver."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        deliberate = ""
        roll = rng.random()
        if roll < 0.015:
            deliberate = NOT_READY
        elif roll < 0.03:
            deliberate = NAMESPACE_SELECTOR
        cases.append(_case(rng, f"{run}-{i:04d}", deliberate))
    return cases


def _case(rng: random.Random, case_id: str, deliberate: str) -> Case:
    namespace = f"diff-{case_id}"
    features: list[str] = []
    zones = [f"{case_id}-z{k}" for k in range(rng.randint(1, 3))]
    racks = [f"{case_id}-r{k}" for k in range(2)]
    nodes: list[JsonDict] = []
    capacity: dict[str, list[int]] = {}
    for j in range(rng.randint(2, 5)):
        name = f"d{case_id}-{j}"
        labels = {CASE_LABEL: case_id}
        if rng.random() < 0.9:
            labels[ZONE] = rng.choice(zones)
        if rng.random() < 0.5:
            labels[RACK] = rng.choice(racks)
        if rng.random() < 0.7:
            labels["pool"] = rng.choice(["a", "b"])
        if rng.random() < 0.6:
            labels["gen"] = rng.choice(["1", "3", "5", "x"])
        if rng.random() < 0.3:
            labels["tier"] = rng.choice(["a", "5"])
        cpu, mem_gi, gpus = rng.choice([2, 4, 8]), rng.choice([4, 8, 16]), rng.choice([0, 0, 1, 2])
        node = fake_node(name, cards=gpus, cpu=str(cpu), memory=f"{mem_gi}Gi", inventory="extended-resource",
                         labels=labels)
        spec: JsonDict = {}
        taints = [t for t in TAINTS if rng.random() < 0.15]
        if taints:
            spec["taints"] = taints
        if rng.random() < 0.1:
            spec["unschedulable"] = True
        if spec:
            node["spec"] = spec
        if deliberate == NOT_READY:
            node["status"]["conditions"][0].update(status="False", reason="KubeletNotReady")
            node.pop("spec", None)
        nodes.append(node)
        capacity[name] = [cpu * 1000, mem_gi * 1024, gpus]
    existing: list[JsonDict] = []
    for k in range(0 if deliberate else rng.randint(0, 6)):
        node = rng.choice(nodes)
        name = node["metadata"]["name"]
        cpu_m, mem_mi = rng.choice([250, 500, 1000]), rng.choice([256, 512, 1024])
        gpus = 1 if capacity[name][2] and rng.random() < 0.4 else 0
        free = capacity[name]
        if cpu_m > free[0] or mem_mi > free[1]:
            continue
        free[0] -= cpu_m
        free[1] -= mem_mi
        free[2] -= gpus
        labels = {"app": rng.choice(APPS[:2] * 2 + APPS)}
        if rng.random() < 0.5:
            labels["rev"] = rng.choice(["1", "2"])
        spec_extra: JsonDict = {"nodeName": name}
        if rng.random() < 0.2:
            features.append("existing-anti-affinity")
            spec_extra["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": _selector(rng), "topologyKey": rng.choice([HOSTNAME, ZONE])}]}}
        existing.append(_pod(namespace, f"run-{k}", labels, _resources(cpu_m, mem_mi, gpus), **spec_extra))
    probe = _probe(rng, case_id, nodes, features, deliberate)
    return Case(case_id, namespace, nodes, existing, probe, deliberate, features)


def _probe(rng: random.Random, case_id: str, nodes: list[JsonDict], features: list[str], deliberate: str) -> JsonDict:
    labels = {"app": rng.choice(APPS[:2]), PROBE_LABEL: "true"}
    if rng.random() < 0.5:
        labels["rev"] = rng.choice(["1", "2"])
    cpu_m = rng.choice([100, 500, 1000, 2000, 3000, 6000])
    mem_mi = rng.choice([128, 512, 1024, 3072, 10240])
    gpus = rng.choice([0, 0, 0, 0, 1, 1, 2])
    spec: JsonDict = {"nodeSelector": {CASE_LABEL: case_id}}
    if deliberate == NOT_READY:
        return {"labels": labels, "resources": _resources(100, 128, 0), "spec": spec}
    if rng.random() < 0.3:
        spec["nodeSelector"]["pool"] = rng.choice(["a", "b"])
        features.append("nodeSelector")
    affinity: JsonDict = {}
    if rng.random() < 0.4:
        features.append("required-node-affinity")
        terms = []
        for _ in range(rng.randint(1, 2)):
            term: JsonDict = {"matchExpressions": [_node_requirement(rng) for _ in range(rng.randint(1, 2))]}
            if rng.random() < 0.15:
                features.append("matchFields")
                names = [n["metadata"]["name"] for n in nodes]
                term["matchFields"] = [{"key": "metadata.name", "operator": rng.choice(["In", "NotIn"]),
                                        "values": [rng.choice(names)]}]  # one value: API rule
            terms.append(term)
        affinity["nodeAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
    if rng.random() < 0.2:
        affinity.setdefault("nodeAffinity", {})["preferredDuringSchedulingIgnoredDuringExecution"] = [
            {"weight": rng.randint(1, 100), "preference": {"matchExpressions": [_node_requirement(rng)]}}]
    tolerations = [_toleration(rng, t) for t in TAINTS if rng.random() < 0.5]
    if rng.random() < 0.03:
        tolerations.append({"operator": "Exists"})
    if rng.random() < 0.08:
        tolerations.append({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        features.append("tolerations")
        spec["tolerations"] = tolerations
    if rng.random() < 0.3:
        features.append("pod-anti-affinity")
        term = {"labelSelector": _selector(rng), "topologyKey": rng.choice([HOSTNAME, ZONE, RACK])}
        if rng.random() < 0.2 and "rev" in labels:
            term["matchLabelKeys"] = ["rev"]
        affinity["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    if deliberate == NAMESPACE_SELECTOR:
        affinity["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": _selector(rng), "topologyKey": HOSTNAME,
             "namespaceSelector": {"matchLabels": {"team": "a"}}}]}
    if rng.random() < 0.15:
        features.append("pod-affinity")
        affinity["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": _selector(rng), "topologyKey": rng.choice([HOSTNAME, ZONE])}]}
    if affinity:
        spec["affinity"] = affinity
    if rng.random() < 0.35:
        features.append("topology-spread")
        spread = []
        for key in rng.sample([ZONE, HOSTNAME, RACK], rng.randint(1, 2)):
            c: JsonDict = {"maxSkew": rng.randint(1, 2), "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule",
                           "labelSelector": _selector(rng)}
            if rng.random() < 0.3:
                c["minDomains"] = rng.randint(2, 4)
            if rng.random() < 0.2:
                c["nodeAffinityPolicy"] = "Ignore"
            if rng.random() < 0.2:
                c["nodeTaintsPolicy"] = "Honor"
            if rng.random() < 0.15 and "rev" in labels:
                c["matchLabelKeys"] = ["rev"]
            spread.append(c)
        if rng.random() < 0.2:
            spread.append({"maxSkew": 1, "topologyKey": HOSTNAME if all(s["topologyKey"] != HOSTNAME for s in spread)
                           else ZONE, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": _selector(rng)})
        spec["topologySpreadConstraints"] = spread
    if rng.random() < 0.03:
        features.append("scheduling-gates")
        spec["schedulingGates"] = [{"name": "diff.xpupool.io/hold"}]
    return {"labels": labels, "resources": _resources(cpu_m, mem_mi, gpus), "spec": spec}


def probe_pod(case: Case, name: str, scheduler: str) -> JsonDict:
    body = _pod(case.namespace, name, dict(case.probe["labels"]), case.probe["resources"], **case.probe["spec"])
    body["spec"]["schedulerName"] = scheduler
    return body
