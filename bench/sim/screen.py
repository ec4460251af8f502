"""Screen xpupool-host configurations quickly (unallocated % at 100 % arrival).

    .venv/bin/python bench/sim/screen.py --variants default,multigpu50 --seeds 42-44 \
        --config '{"weights": "demand"}' --config '{"weights": "popularity"}' [--jobs 2] [--fgd]

Each config is the ``xpupool-host`` plugin's keyword arguments (``target`` is the trace's
popularity-weighted typical pods); ``"_first_on_tie": false`` turns the profile's node-order
tie-break off (on by default, as in the ``xpupool`` profile). ``--fgd`` adds our FGD for
reference. Not the product path: the final numbers come from ``xpupool simulate``
(bench/sim/all_variants.sh).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

import xpupool.sim.replay as replay_mod
from xpupool.core.frag import TargetWorkload
from xpupool.core.framework import Profile, Scheduler
from xpupool.sim.openb import default_nodes_file, load_nodes, load_pods, pods_file

ORIGINAL_BUILD = getattr(replay_mod, "build_scheduler")  # noqa: B009


def run_one(variant: str, seed: int, config: str) -> tuple[str, int, str, float, float]:
    nodes = load_nodes(default_nodes_file())
    pods = load_pods(pods_file(variant))
    models = sorted({d.model for n in nodes for d in n.devices})
    target = TargetWorkload.from_requests(pods, models)
    policy = "fgd"
    setattr(replay_mod, "build_scheduler", ORIGINAL_BUILD)  # noqa: B010  (workers are reused)
    if config != "fgd":
        args: dict[str, Any] = json.loads(config)
        policy = "xpupool"

        def build(policy: str, *, seed: int = 0, target: TargetWorkload | None = None) -> Scheduler:
            rng = np.random.default_rng(seed)
            plugin_args = {k: v for k, v in args.items() if not k.startswith("_")}
            prof = Profile.from_names("xp", scores={"xpupool-host": 1.0},
                                      args={"xpupool-host": {"target": target, **plugin_args}},
                                      first_on_tie=bool(args.get("_first_on_tie", True)))
            return Scheduler(prof, rng=rng)

        setattr(replay_mod, "build_scheduler", build)  # noqa: B010
    run = replay_mod.replay(nodes, pods, policy=policy, seed=seed, target=target,
                            time_decisions=True, perf_counter=time.perf_counter)
    p99 = float(np.percentile(run.decision_s, 99) * 1000)
    return variant, seed, config, run.unallocated_at(100), p99


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="default")
    ap.add_argument("--seeds", default="42-44")
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--fgd", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    lo, _, hi = a.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    configs = (["fgd"] if a.fgd else []) + (a.config or ["{}"])
    work = [(v, s, c) for v in a.variants.split(",") for c in configs for s in seeds]
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        results = list(pool.map(run_one, *zip(*work, strict=True)))
    for v in a.variants.split(","):
        for c in configs:
            vals = [r[3] for r in results if r[0] == v and r[2] == c]
            p99 = max(r[4] for r in results if r[0] == v and r[2] == c)
            print(f"{v:12s} {np.mean(vals):6.3f} ±{np.std(vals, ddof=1) if len(vals) > 1 else 0:5.2f} "
                  f"p99<= {p99:5.2f}ms  {' '.join(f'{x:.2f}' for x in vals)}  {c}", flush=True)


if __name__ == "__main__":
    main()
