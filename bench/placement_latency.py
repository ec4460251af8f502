"""Benchmark: placement decision latency of each policy at 1,213 and 10,000 nodes (not a test).

Replays the openb ``default`` trace (seed 42) for the first ``--pods`` pods of the tuned stream on
the real 1,213-node cluster and on a 10,000-node cluster made of repeated openb nodes (twice the
pods there), timing every ``Scheduler.schedule`` call (wall clock and this process's CPU time; on
a shared machine the CPU time is the steadier figure). BestFit runs side by side as the baseline
for the ratio.

``--constraints on`` dresses the same cluster and stream the way a Kubernetes GPU pool looks
(:func:`with_constraints`): every node has a zone and a hostname label and the tainted GPU pool
``nvidia.com/gpu=present:NoSchedule``, 10 % carry a PreferNoSchedule taint, 1 % are cordoned;
every pod tolerates the GPU taint and prefers three of the zones; pods restricted to card models
say so by required node affinity on the model label; a quarter of the GPU pods are replicas of
inference services (8 replicas each) with required hostname anti-affinity and a DoNotSchedule
zone spread (maxSkew 2). ``both`` (the default) runs without and with.

    .venv/bin/python bench/placement_latency.py --pods 4000 --json out/latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from xpupool.core.cluster import ClusterState
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
    labels_of,
)
from xpupool.core.frag import TargetWorkload
from xpupool.core.model import Node, Request
from xpupool.plugins.profiles import build_scheduler
from xpupool.sim.openb import default_nodes_file, load_nodes, load_pods, pods_file
from xpupool.sim.replay import tune_workload

GPU_TAINT = Taint("nvidia.com/gpu", "present", Effect.NO_SCHEDULE)
MODEL_LABEL = "xpupool.io/card-model"


def scaled_nodes(target: int) -> list[Node]:
    base = load_nodes(default_nodes_file())
    out: list[Node] = []
    i = 0
    while len(out) < target:
        node = base[i % len(base)]
        out.append(replace(node, name=f"{node.name}-{i // len(base)}"))
        i += 1
    return out


def with_constraints(nodes: list[Node], stream: list[Request], seed: int) -> tuple[list[Node], list[Request]]:
    """The same nodes and pods with the labels, taints and constraints of a Kubernetes GPU pool."""
    rng = random.Random(seed)
    dressed = []
    for i, node in enumerate(nodes):
        labels = dict(node.labels) | {LABEL_ZONE: f"z{i % 10}", LABEL_HOSTNAME: node.name}
        taints = [GPU_TAINT] if node.devices else []
        if node.devices:
            labels[MODEL_LABEL] = node.devices[0].model
        if rng.random() < 0.10:
            taints.append(Taint("spot", "true", Effect.PREFER_NO_SCHEDULE))
        dressed.append(replace(node, labels=labels, taints=tuple(taints), unschedulable=rng.random() < 0.01))
    tolerate = (Toleration("nvidia.com/gpu", "Exists", effect="NoSchedule"),)
    prefer = (PreferredTerm(5, NodeSelectorTerm((Requirement(LABEL_ZONE, Operator.IN, ("z0", "z1", "z2")),))),)
    out = []
    services = 0
    replicas_left = 0
    for pod in stream:
        constraints = Constraints(tolerations=tolerate, preferred_terms=prefer)
        pod_labels: dict[str, str] = {}
        if pod.models:
            models = NodeSelectorTerm((Requirement(MODEL_LABEL, Operator.IN, pod.models),))
            constraints = replace(constraints, required_terms=(models,))
        if pod.count and (replicas_left or rng.random() < 0.25 / 8):
            if not replicas_left:
                services, replicas_left = services + 1, 8
            replicas_left -= 1
            app = LabelSelector(labels_of({"app": f"svc-{services}"}))
            pod_labels = {"app": f"svc-{services}"}
            constraints = replace(
                constraints,
                anti_affinity=(PodAffinityTerm(app, LABEL_HOSTNAME),),
                spread=(SpreadConstraint(2, LABEL_ZONE, selector=app),),
            )
        out.append(replace(pod, labels=labels_of(pod_labels), constraints=constraints))
    return dressed, out


def measure(nodes: list[Node], pods: list[Request], policy: str, n_pods: int, constraints: bool) -> dict[str, float]:
    state = ClusterState(nodes)
    models = state.models
    target = TargetWorkload.from_requests(pods, models)
    cap = int(state.card_exists.sum()) * 1000
    stream = tune_workload(pods, cap, 42)
    # scale the stream up with the cluster so the load level matches the 1213-node replay
    while len(stream) < n_pods:
        stream += [replace(p, name=f"{p.name}-x{len(stream)}") for p in stream[: n_pods - len(stream)]]
    stream = stream[:n_pods]
    if constraints:
        nodes, stream = with_constraints(nodes, stream, 42)
        state = ClusterState(nodes)
    sched = build_scheduler(policy, seed=42, target=target)
    wall, cpu = [], []
    placed = 0
    for pod in stream:
        t0, c0 = time.perf_counter(), time.process_time()
        placed += sched.schedule(state, pod).status.ok
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    w, c = np.array(wall) * 1000, np.array(cpu) * 1000
    return {"p50_ms": float(np.percentile(w, 50)), "p99_ms": float(np.percentile(w, 99)),
            "cpu_p50_ms": float(np.percentile(c, 50)), "cpu_p99_ms": float(np.percentile(c, 99)),
            "mean_ms": float(w.mean()), "pods": n_pods, "placed": placed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=4000)
    ap.add_argument("--policies", default="bestfit,fgd,xpupool")
    ap.add_argument("--sizes", default="1213,10000")
    ap.add_argument("--constraints", choices=("off", "on", "both"), default="both")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pods = load_pods(pods_file("default"))
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.constraints]
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        nodes = scaled_nodes(size)
        for constrained in modes:
            run = f"{size}{'+constraints' if constrained else ''}"
            results[run] = {}
            for policy in args.policies.split(","):
                r = measure(nodes, pods, policy, args.pods if size <= 1213 else args.pods * 2, constrained)
                results[run][policy] = r
                base = results[run].get("bestfit")
                ratio = f" ({r['p99_ms'] / base['p99_ms']:.1f}x bestfit p99)" if base and policy != "bestfit" else ""
                print(f"nodes={run:>18} {policy:>8}: p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms{ratio}  "
                      f"| cpu p50 {r['cpu_p50_ms']:.2f} p99 {r['cpu_p99_ms']:.2f} ms | placed {int(r['placed'])}",
                      flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
