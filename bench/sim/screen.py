"""Screen xpupool-host configurations (unallocated % at 100 % arrival) on variants and held-out mixes.

    .venv/bin/python bench/sim/screen.py --workloads default,mg40 --seeds 42-44 --fgd \
        --config '{"host_weight": 0.25}' --config '{}' [--jobs 1] [--results out/cv/results.jsonl]

A workload is a visible variant (``multigpu30``) or a held-out mix from ``xpupool.sim.mixes.HELD_OUT``
(``mg40``). Each config is the ``xpupool-host`` plugin's keyword arguments (``target`` is the
workload's typical pods); ``"_first_on_tie": false`` turns the profile's node-order tie-break off;
``"_hold": {"whole_free_pct": 10}`` adds the ``xpupool-holdback`` filter with those arguments.
``--fgd`` adds our FGD (same run, same seeds). With ``--results`` every (workload, seed, config)
result is appended as one JSON line and runs already in the file are skipped, so a long screen can
be resumed and ``bench/sim/cv.py`` can select parameters from it. Not the product path: final
numbers come from ``xpupool simulate`` (bench/sim/all_variants.sh).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from xpupool.core.frag import TargetWorkload
from xpupool.core.framework import Profile, Scheduler
from xpupool.sim.mixes import load_workload
from xpupool.sim.openb import default_nodes_file, load_nodes
from xpupool.sim.replay import replay

FGD = "fgd"
#: x = 100 bins the events with arrival in [99.5, 100.5) (+-1 if none): nothing after 101.5 % matters
STOP_AFTER_PCT = 101.5


def config_key(config: str) -> str:
    """Canonical text of a config (sorted keys) so equal configs match in the results file."""
    return FGD if config == FGD else json.dumps(json.loads(config), sort_keys=True)


def scheduler_for(config: str, *, seed: int, target: TargetWorkload) -> Scheduler | None:
    """``None`` for FGD (the replay builds the named policy), else the xpupool profile with ``config``."""
    if config == FGD:
        return None
    args: dict[str, Any] = json.loads(config)
    plugin_args = {k: v for k, v in args.items() if not k.startswith("_")}
    filters = []
    plugins: dict[str, dict[str, Any]] = {"xpupool-host": {"target": target, **plugin_args}}
    if "_hold" in args:
        filters.append("xpupool-holdback")
        plugins["xpupool-holdback"] = {"target": target, **args["_hold"]}
    prof = Profile.from_names("xp", scores={"xpupool-host": 1.0}, filters=filters, args=plugins,
                              first_on_tie=bool(args.get("_first_on_tie", True)))
    return Scheduler(prof, rng=np.random.default_rng(seed))


def run_one(workload: str, seed: int, config: str) -> dict[str, Any]:
    nodes = load_nodes(default_nodes_file())
    pods = load_workload(workload)
    models = sorted({d.model for n in nodes for d in n.devices})
    target = TargetWorkload.from_requests(pods, models)
    scheduler = scheduler_for(config, seed=seed, target=target)
    t0 = time.perf_counter()
    run = replay(nodes, pods, policy=FGD if scheduler is None else "xpupool", seed=seed, target=target,
                 time_decisions=True, perf_counter=time.perf_counter, scheduler=scheduler,
                 stop_after_pct=STOP_AFTER_PCT, sample_fragmentation=False)
    return {"workload": workload, "seed": seed, "config": config_key(config),
            "unallocated_pct": round(run.unallocated_at(100), 4),
            "p99_ms": round(float(np.percentile(run.decision_s, 99) * 1000), 3),
            "wall_s": round(time.perf_counter() - t0, 1)}


def parse_seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", "--variants", default="default")
    ap.add_argument("--seeds", default="42-44")
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--fgd", action="store_true")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--results", type=Path, help="JSON-lines file: append results, skip runs already there")
    a = ap.parse_args()
    seeds = parse_seeds(a.seeds)
    configs = [config_key(c) for c in ([FGD] if a.fgd else []) + (a.config or ["{}"])]
    workloads = a.workloads.split(",")
    done: list[dict[str, Any]] = []
    if a.results and a.results.exists():
        done = [json.loads(line) for line in a.results.read_text().splitlines() if line.strip()]
    have = {(r["workload"], r["seed"], r["config"]) for r in done}
    # seed-major: after each seed every (workload, config) has a result, so a long screen is usable early
    work = [(w, s, c) for s in seeds for w in workloads for c in configs if (w, s, c) not in have]
    results = [r for r in done if r["workload"] in workloads and r["seed"] in seeds and r["config"] in configs]

    def record(r: dict[str, Any]) -> None:
        results.append(r)
        if a.results:
            a.results.parent.mkdir(parents=True, exist_ok=True)
            with a.results.open("a") as fh:
                fh.write(json.dumps(r) + "\n")

    if a.jobs <= 1:
        for w, s, c in work:
            record(run_one(w, s, c))
    else:
        with ProcessPoolExecutor(max_workers=a.jobs) as pool:
            for r in pool.map(run_one, *zip(*work, strict=True)) if work else []:
                record(r)
    for w in workloads:
        fgd = {r["seed"]: r["unallocated_pct"] for r in results if r["workload"] == w and r["config"] == FGD}
        for c in configs:
            mine = sorted((r for r in results if r["workload"] == w and r["config"] == c), key=lambda r: r["seed"])
            vals = [r["unallocated_pct"] for r in mine]
            if not vals:
                continue
            wins = sum(1 for r in mine if r["seed"] in fgd and r["unallocated_pct"] < fgd[r["seed"]])
            vs = f"wins {wins}/{len(mine)}" if fgd and c != FGD else ""
            print(f"{w:14s} {np.mean(vals):6.3f} ±{np.std(vals, ddof=1) if len(vals) > 1 else 0:5.2f} "
                  f"p99<= {max(r['p99_ms'] for r in mine):5.2f}ms  {' '.join(f'{x:.2f}' for x in vals)}  "
                  f"{vs:9s} {c}", flush=True)


if __name__ == "__main__":
    main()
