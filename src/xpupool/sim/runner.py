"""Run the FGD replay for many policies x seeds (in worker processes) and summarise.

Output contract (read by other tools)::

    {"policies": {NAME: {"unallocated_pct_at_100": {"mean": .., "sd": .., "per_seed": [..]},
                         "frag_rate_pct_at_100": {...}, "frag_amount_pct_at_100": {...},
                         "curve": {"x": [..], "median": [..], "p25": [..], "p75": [..]},
                         "decision_ms": {"p50": .., "p99": ..}}},
     "trace": ..., "nodes": ..., "seeds": [..], "arrival_point_pct": 100}
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xpupool.core.frag import TargetWorkload
from xpupool.sim.openb import load_nodes, load_pods
from xpupool.sim.replay import Placement, SeedRun, replay

CURVE_X = list(range(0, 131))


@dataclass(frozen=True)
class Job:
    nodes_file: str
    trace_file: str
    policy: str
    seed: int
    record_placements: bool


def _run_job(job: Job) -> SeedRun:
    nodes = load_nodes(Path(job.nodes_file))
    pods = load_pods(Path(job.trace_file))
    models = sorted({d.model for n in nodes for d in n.devices})
    target = TargetWorkload.from_requests(pods, models)
    return replay(nodes, pods, policy=job.policy, seed=job.seed, target=target,
                  record_placements=job.record_placements, time_decisions=True, perf_counter=time.perf_counter)


def run_matrix(
    *,
    nodes_file: Path,
    trace_file: Path,
    policies: Sequence[str],
    seeds: Sequence[int],
    jobs: int = 2,
    record_placements: bool = False,
    on_done: Callable[[SeedRun], None] | None = None,
) -> list[SeedRun]:
    """Every (policy, seed) replay; results in (policy, seed) order."""
    work = [Job(str(nodes_file), str(trace_file), p, s, record_placements) for p in policies for s in seeds]
    runs: list[SeedRun] = []
    if jobs <= 1:
        for job in work:
            run = _run_job(job)
            runs.append(run)
            if on_done:
                on_done(run)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_run_job, job) for job in work]
            for future in as_completed(futures):
                run = future.result()
                runs.append(run)
                if on_done:
                    on_done(run)
    order = {(p, s): i for i, (p, s) in enumerate((p, s) for p in policies for s in seeds)}
    runs.sort(key=lambda r: order[(r.policy, r.seed)])
    return runs


def _stats(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    return {"mean": round(float(arr.mean()), 4), "sd": round(float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, 4),
            "per_seed": [round(float(v), 4) for v in arr]}


def summarise(runs: Sequence[SeedRun], *, x: int = 100) -> dict[str, Any]:
    policies: dict[str, Any] = {}
    for policy in dict.fromkeys(r.policy for r in runs):
        mine = [r for r in runs if r.policy == policy]
        curves = np.array([[r.unallocated_at(cx) for cx in CURVE_X] for r in mine])
        decisions = np.concatenate([r.decision_s for r in mine]) * 1000 if mine else np.zeros(1)
        policies[policy] = {
            "unallocated_pct_at_100": _stats([r.unallocated_at(x) for r in mine]),
            "frag_amount_pct_at_100": _stats([r.frag_amount_pct.get(x, float("nan")) for r in mine]),
            "frag_rate_pct_at_100": _stats([r.frag_rate_pct.get(x, float("nan")) for r in mine]),
            "curve": {
                "x": CURVE_X,
                "median": [round(float(v), 4) for v in np.nanmedian(curves, axis=0)],
                "p25": [round(float(v), 4) for v in np.nanpercentile(curves, 25, axis=0)],
                "p75": [round(float(v), 4) for v in np.nanpercentile(curves, 75, axis=0)],
            },
            "decision_ms": {"p50": round(float(np.percentile(decisions, 50)), 4),
                            "p99": round(float(np.percentile(decisions, 99)), 4)},
        }
    return {"policies": policies, "seeds": sorted({r.seed for r in runs}), "arrival_point_pct": x}


def write_placements(runs: Sequence[SeedRun], path: Path) -> None:
    """One row per pod per (seed, policy): node ("" = failed), cards as ``idx:milli`` joined by ``;``."""
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["seed", "policy", "pod", "node", "cards", "arrived_pct"])
        for run in runs:
            for p in run.placements:
                out.writerow(_row(p))


def _row(p: Placement) -> list[object]:
    return [p.seed, p.policy, p.pod, p.node or "failed", ";".join(f"{c}:{m}" for c, m in p.cards),
            f"{p.arrived_pct:.4f}"]


# ------------------------------------------------------------------ published FGD results
PUBLISHED_NAMES = {"random": "01-Random", "dotprod": "02-DotProd", "gpuclustering": "03-GpuClustering",
                   "gpupacking": "04-GpuPacking", "bestfit": "05-BestFit", "fgd": "06-FGD"}


def published_unallocated(expected_csv: Path, variant: str, x: int = 100) -> dict[str, dict[int, float]]:
    """Per policy, per seed unallocated % at ``x`` from the FGD artifact's ``analysis_allo_discrete.csv``."""
    result: dict[str, dict[int, float]] = {}
    reverse = {v: k for k, v in PUBLISHED_NAMES.items()}
    with expected_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["workload"] != f"openb_pod_list_{variant}":
                continue
            name = reverse.get(row["sc_policy"])
            if name is None:
                continue
            result.setdefault(name, {})[int(row["seed"])] = 100 - float(row[str(x)])
    return result
