"""Which pods fail before 100 % arrival, and why (one variant, policies x seeds).

    .venv/bin/python bench/sim/failures.py --variant default --policy fgd,xpupool --seeds 42-44

Classes: cpu (no GPU), share (<1 card), 1gpu, Ngpu. Reasons for a failed GPU pod:
``no-gpu``  no node has the cards (model + capacity) at all;
``cpu``     some node has the cards but every such node lacks the CPU (memory fits);
``mem``     ... lacks memory; ``cpu+mem`` both.
Reports failed GPU demand (% of capacity) by class x reason, counted up to arrival <= X.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from xpupool.core.cluster import ClusterState
from xpupool.core.frag import TargetWorkload
from xpupool.core.framework import FitContext
from xpupool.core.model import Request
from xpupool.plugins.profiles import build_scheduler
from xpupool.sim.mixes import load_workload
from xpupool.sim.openb import default_nodes_file, load_nodes
from xpupool.sim.replay import tune_workload


def klass(r: Request) -> str:
    count, milli = r.count, r.share_milli
    if count == 0:
        return "cpu"
    if milli < 1000:
        return "share"
    return f"{count}gpu"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="default", help="a variant or a held-out mix (xpupool.sim.mixes)")
    ap.add_argument("--policy", default="fgd")
    ap.add_argument("--seeds", default="42-44")
    ap.add_argument("--upto", type=float, default=100.0)
    a = ap.parse_args()
    lo, _, hi = a.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    nodes = load_nodes(default_nodes_file())
    pods = load_workload(a.variant)
    models = sorted({d.model for n in nodes for d in n.devices})
    target = TargetWorkload.from_requests(pods, models)
    for policy in a.policy.split(","):
        table: dict[tuple[str, str], float] = defaultdict(float)
        first_fail: dict[str, list[float]] = defaultdict(list)
        for seed in seeds:
            state = ClusterState(nodes)
            cap = int(state.card_exists.sum()) * 1000
            sched = build_scheduler(policy, seed=seed, target=target)
            arrived = 0
            seen: set[str] = set()
            for pod in tune_workload(pods, cap, seed):
                arrived += pod.gpu_milli_total
                x = 100 * arrived / cap
                if x > a.upto:
                    break
                res = sched.schedule(state, pod)
                if res.status.ok or pod.count == 0:
                    continue
                ctx = FitContext.build(state, pod)
                g = ctx.cards_ok & ctx.model_ok & state.has_cards
                cpu_ok = state.cpu_free >= pod.cpu_milli
                mem_ok = state.memory_free >= pod.memory_mib
                if not g.any():
                    why = "no-gpu"
                elif not (g & cpu_ok).any() and not (g & mem_ok).any():
                    why = "cpu+mem"
                elif not (g & cpu_ok).any():
                    why = "cpu"
                else:
                    why = "mem"
                k = klass(pod)
                table[(k, why)] += 100 * pod.gpu_milli_total / cap / len(seeds)
                if k not in seen:
                    seen.add(k)
                    first_fail[k].append(x)
        print(f"== {policy} {a.variant} seeds {a.seeds}: failed GPU demand % of capacity up to {a.upto}%")
        total = sum(table.values())
        for (k, why), v in sorted(table.items(), key=lambda kv: -kv[1]):
            print(f"  {k:6s} {why:8s} {v:6.3f}")
        print(f"  total {total:.3f}")
        for k, xs in sorted(first_fail.items()):
            print(f"  first failure of {k}: arrival {np.mean(xs):.1f}% (n={len(xs)})")


if __name__ == "__main__":
    main()
