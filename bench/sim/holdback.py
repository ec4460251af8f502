"""Is holding back a share pod (the openb 0.81-card pods) worth it? Measured in two protocols.

    .venv/bin/python bench/sim/holdback.py --workloads default,mg40 --policy xpupool --seeds 42-44 \
        --theta 0,90,95 [--delta 100] [--dead 200] [--protocol fgd,pending] [--json out/holdback.json]

Hold-back rule ``H(theta, delta, dead)`` (an admission rule on top of the placement policy): a
one-card share pod is held back when the policy's chosen card would keep a remnant ``r`` with
``delta < r < dead`` milli (too big to call a tight fit, too small for any common share: the 190
milli next to a 0.81 pod), and the cluster's GPU allocation is at least ``theta`` % of capacity (a
quantity a live scheduler sees; ``theta = 0``: always). Before holding, the pod is offered the nodes
holding a card it would fill tightly (``r <= delta``); it is placed there if one exists.

Protocols (the headline metric is the same in both: unallocated GPU % at 100 % arrival, FGD's
binning; a pod not placed counts as unallocated):

* ``fgd`` (standard, FGD's): no retries. A held pod is refused for good, exactly like a pod that
  does not fit. This is the protocol every figure in docs/simulation.md uses.
* ``pending`` (variant): a held pod waits in a FIFO queue, as a pending pod would in Kubernetes,
  and is retried after every later arrival; it is placed as soon as a card it fills tightly
  (``r <= delta``) appears (e.g. a whole card that a small share has taken 100-190 milli of).
  Pods that do not fit at all still fail at once (nothing ever departs in this protocol, so room
  only shrinks and a retry could not help them).

The rule with ``theta = 101`` never holds, so the first row is the unchanged policy in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xpupool.core.cluster import ClusterState
from xpupool.core.frag import TargetWorkload
from xpupool.core.framework import FitContext, Scheduler
from xpupool.core.model import Request
from xpupool.plugins.profiles import build_scheduler
from xpupool.sim.mixes import load_workload
from xpupool.sim.openb import default_nodes_file, load_nodes
from xpupool.sim.replay import tune_workload, unallocated_at


@dataclass(frozen=True)
class HoldRule:
    theta_pct: float  # hold only while allocated >= theta % of capacity (101: never)
    delta_milli: int = 100  # remnant up to this is a tight fit: never held for it
    dead_milli: int = 200  # remnant below this is useless to common shares

    def candidate(self, pod: Request) -> bool:
        return pod.is_sharing and self.delta_milli < 1000 - pod.share_milli < self.dead_milli

    def tight_nodes(self, state: ClusterState, pod: Request) -> np.ndarray:
        left = state.card_free_milli - pod.share_milli
        return ((left >= 0) & (left <= self.delta_milli) & state.card_exists).any(axis=1)


def decide(sched: Scheduler, state: ClusterState, pod: Request, rule: HoldRule, allocated_pct: float,
           *, tight_only: bool) -> tuple[str, Any]:
    """("placed", allocation) | ("held", None) | ("failed", None). ``tight_only``: a retry, which is
    placed only on a tight card."""
    holding = rule.candidate(pod) and (tight_only or allocated_pct >= rule.theta_pct)
    if holding:
        tight = rule.tight_nodes(state, pod)
        if tight.any():
            res = sched.place_local(state, pod, FitContext.build(state, pod), restrict=tight)
            if res.status.ok and res.allocation is not None:
                slot = _slot(state, res.allocation)
                if state.card_free_milli[slot] - pod.share_milli <= rule.delta_milli:
                    return "placed", res.allocation
        if tight_only:
            return "held", None
    res = sched.place(state, pod)
    if not (res.status.ok and res.allocation is not None):
        return "failed", None
    if holding:
        left = state.card_free_milli[_slot(state, res.allocation)] - pod.share_milli
        if rule.delta_milli < left < rule.dead_milli:
            return "held", None
    return "placed", res.allocation


def _slot(state: ClusterState, alloc: Any) -> tuple[int, int]:
    node = state.node_index[alloc.device_node]
    slot = int(np.nonzero(state.card_index[node] == alloc.cards[0])[0][0])
    return node, slot


def run(nodes: list[Any], pods: list[Request], *, policy: str, seed: int, rule: HoldRule,
        protocol: str, target: TargetWorkload) -> dict[str, Any]:
    state = ClusterState(nodes)
    cap = int(state.card_exists.sum()) * 1000
    sched = build_scheduler(policy, seed=seed, target=target)
    stream = tune_workload(pods, cap, seed)
    arrived_milli = allocated_milli = 0
    arrived, allocated = np.zeros(len(stream)), np.zeros(len(stream))
    pending: list[Request] = []
    held = held_by_100 = placed_late = 0
    for i, pod in enumerate(stream):
        arrived_milli += pod.gpu_milli_total
        verdict, alloc = decide(sched, state, pod, rule, 100 * allocated_milli / cap, tight_only=False)
        if verdict == "placed":
            state.reserve(alloc, pod)
            allocated_milli += pod.gpu_milli_total
        elif verdict == "held":
            held += 1
            held_by_100 += arrived_milli <= cap
            if protocol == "pending":
                pending.append(pod)
        if protocol == "pending" and pending:
            still: list[Request] = []
            no_room: set[int] = set()  # share sizes with no tight card now (checked once per size)
            for waiting in pending:
                if waiting.share_milli in no_room or not rule.tight_nodes(state, waiting).any():
                    no_room.add(waiting.share_milli)
                    still.append(waiting)
                    continue
                verdict, alloc = decide(sched, state, waiting, rule, 100 * allocated_milli / cap, tight_only=True)
                if verdict == "placed":
                    state.reserve(alloc, waiting)
                    allocated_milli += waiting.gpu_milli_total
                    placed_late += 1
                else:
                    still.append(waiting)
            pending = still
        arrived[i] = 100 * arrived_milli / cap
        allocated[i] = 100 * allocated_milli / cap
    return {"unallocated_pct": round(unallocated_at(arrived, allocated, 100), 4),
            "held": held, "held_by_100pct": held_by_100, "placed_after_wait": placed_late}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="default")
    ap.add_argument("--policy", default="xpupool")
    ap.add_argument("--seeds", default="42-44")
    ap.add_argument("--theta", default="101,0,90,95", help="allocation %% from which to hold (101 = never)")
    ap.add_argument("--delta", type=int, default=100)
    ap.add_argument("--dead", type=int, default=200)
    ap.add_argument("--protocol", default="fgd,pending")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    lo, _, hi = a.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    nodes = load_nodes(default_nodes_file())
    models = sorted({d.model for n in nodes for d in n.devices})
    rows: list[dict[str, Any]] = []
    for workload in a.workloads.split(","):
        pods = load_workload(workload)
        target = TargetWorkload.from_requests(pods, models)
        for protocol in a.protocol.split(","):
            for theta in (float(t) for t in a.theta.split(",")):
                if theta > 100 and protocol != "fgd":
                    continue  # never holding: the same run in both protocols
                rule = HoldRule(theta, a.delta, a.dead)
                res = []
                t0 = time.perf_counter()
                for seed in seeds:
                    r = run(nodes, pods, policy=a.policy, seed=seed, rule=rule, protocol=protocol, target=target)
                    res.append(r)
                vals = [r["unallocated_pct"] for r in res]
                row = {"workload": workload, "policy": a.policy, "protocol": protocol, "theta_pct": theta,
                       "delta_milli": a.delta, "dead_milli": a.dead, "seeds": seeds,
                       "unallocated_pct": vals, "mean": round(float(np.mean(vals)), 4),
                       "sd": round(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, 4),
                       "held_by_100pct": [r["held_by_100pct"] for r in res],
                       "placed_after_wait": [r["placed_after_wait"] for r in res]}
                rows.append(row)
                print(f"{workload:10s} {protocol:8s} theta {theta:5.0f}: {row['mean']:.3f} ± {row['sd']:.2f}  "
                      f"[{' '.join(f'{v:.2f}' for v in vals)}] held<=100% {row['held_by_100pct']} "
                      f"late {row['placed_after_wait']} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
