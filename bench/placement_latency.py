"""Benchmark: placement decision latency of each policy at 1213 and 10k nodes (not a test).

Replays the openb ``default`` trace (seed 42) for the first ``--pods`` pods of the tuned stream on
the real 1213-node cluster and on a 10k-node cluster made of repeated openb nodes, timing every
``Scheduler.schedule`` call. BestFit runs side by side as the baseline for the ratio.

    .venv/bin/python bench/placement_latency.py --pods 4000 --json out/latency.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from xpupool.core.cluster import ClusterState
from xpupool.core.frag import TargetWorkload
from xpupool.plugins.profiles import build_scheduler
from xpupool.sim.openb import default_nodes_file, load_nodes, load_pods, pods_file
from xpupool.sim.replay import tune_workload


def scaled_nodes(target: int) -> list:
    base = load_nodes(default_nodes_file())
    out = []
    i = 0
    while len(out) < target:
        node = base[i % len(base)]
        out.append(replace(node, name=f"{node.name}-{i // len(base)}"))
        i += 1
    return out


def measure(nodes: list, pods: list, policy: str, n_pods: int) -> dict[str, float]:
    state = ClusterState(nodes)
    models = state.models
    target = TargetWorkload.from_requests(pods, models)
    cap = int(state.card_exists.sum()) * 1000
    stream = tune_workload(pods, cap, 42)
    # scale the stream up with the cluster so the load level matches the 1213-node replay
    while len(stream) < n_pods:
        stream += [replace(p, name=f"{p.name}-x{len(stream)}") for p in stream[: n_pods - len(stream)]]
    sched = build_scheduler(policy, seed=42, target=target)
    times = []
    for pod in stream[:n_pods]:
        t0 = time.perf_counter()
        sched.schedule(state, pod)
        times.append(time.perf_counter() - t0)
    arr = np.array(times) * 1000
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "mean_ms": float(arr.mean()), "pods": n_pods}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=4000)
    ap.add_argument("--policies", default="bestfit,fgd,xpupool")
    ap.add_argument("--sizes", default="1213,10000")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pods = load_pods(pods_file("default"))
    results: dict[str, dict[str, dict[str, float]]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        nodes = scaled_nodes(size)
        results[str(size)] = {}
        for policy in args.policies.split(","):
            r = measure(nodes, pods, policy, args.pods if size <= 1213 else args.pods * 2)
            results[str(size)][policy] = r
            base = results[str(size)].get("bestfit")
            ratio = f" ({r['p99_ms'] / base['p99_ms']:.1f}x bestfit p99)" if base and policy != "bestfit" else ""
            print(f"nodes={size:>6} {policy:>8}: p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms{ratio}",
                  flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
