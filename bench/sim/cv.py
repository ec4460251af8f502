"""Cross-validated choice of the xpupool policy's parameters, and the held-out table.

    .venv/bin/python bench/sim/cv.py select --results out/cv/screen.jsonl --seeds 42-44
    .venv/bin/python bench/sim/cv.py table  --results out/cv/final.jsonl  --seeds 42-51 --choice out/cv/choice.json

Protocol (docs/simulation.md, "Cross-validation"):

* Folds leave one variant *family* out: ``cpu``, ``gpushare``, ``multigpu``, ``gpuspec``. A fold's
  training set is every other visible variant (``default`` is always in training); its test set is
  the held-out family's variants.
* Selection uses only the training variants, on the screening seeds: a configuration's score on a
  variant is its relative gain over FGD in the same run, ``(FGD - xpupool) / FGD`` (means over the
  seeds); the chosen configuration maximises the *worst* training-variant gain (it must beat FGD
  everywhere), ties (within 0.5 %) broken by the mean gain. ``final`` selects on all 15 visible
  variants the same way: that is the shipped default, and the held-out mixes
  (``xpupool.sim.mixes.HELD_OUT``, never seen by any selection) are reported with it.
* The table reports each held-out variant with its fold's choice and each mix with the final
  choice, on the evaluation seeds: mean ± sd, FGD in the same run, per-seed wins.

``select`` writes the choices (``--choice``, JSON: fold -> config); ``table`` renders markdown.
Both read the JSON-lines results that ``bench/sim/screen.py --results`` writes.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from xpupool.sim.mixes import FAMILIES, HELD_OUT, VISIBLE_VARIANTS, family

FGD = "fgd"
TIE = 0.005


def load(path: Path, seeds: list[int]) -> dict[tuple[str, str], dict[int, float]]:
    """(workload, config) -> seed -> unallocated %."""
    out: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            # the hold-back filter is measured on its own (bench/sim/holdback.py), not a candidate here
            if r["seed"] in seeds and "_hold" not in r["config"]:
                out[(r["workload"], r["config"])][r["seed"]] = r["unallocated_pct"]
    return out


def gain(res: dict[tuple[str, str], dict[int, float]], workload: str, config: str, seeds: list[int]) -> float | None:
    fgd, ours = res.get((workload, FGD), {}), res.get((workload, config), {})
    common = [s for s in seeds if s in fgd and s in ours]
    if len(common) < len(seeds):
        return None
    f = float(np.mean([fgd[s] for s in common]))
    return (f - float(np.mean([ours[s] for s in common]))) / f


Results = dict[tuple[str, str], dict[int, float]]


def choose(res: Results, training: list[str], seeds: list[int], *,
           verbose: bool = False) -> tuple[str, dict[str, Any]]:
    """The config with the best worst-case training gain (complete results only)."""
    configs = sorted({c for (_, c) in res if c != FGD})
    scored: list[tuple[float, float, str]] = []
    for c in configs:
        gains = [gain(res, v, c, seeds) for v in training]
        if any(g is None for g in gains):
            continue
        vals = [g for g in gains if g is not None]
        scored.append((min(vals), float(np.mean(vals)), c))
    if not scored:
        raise SystemExit("no configuration has results on every training variant")
    if verbose:
        for worst, mean, c in sorted(scored, reverse=True):
            print(f"    {c:48s} worst {worst:+.3f} mean {mean:+.3f}")
    best_min = max(s[0] for s in scored)
    near = [s for s in scored if s[0] >= best_min - TIE]
    worst, mean, config = max(near, key=lambda s: s[1])
    return config, {"worst_gain": round(worst, 4), "mean_gain": round(mean, 4), "candidates": len(scored)}


def folds() -> dict[str, tuple[list[str], list[str]]]:
    """fold name -> (training variants, held-out variants); ``final`` trains on all."""
    out = {}
    for fam in FAMILIES:
        test = [v for v in VISIBLE_VARIANTS if family(v) == fam]
        out[f"without-{fam}"] = ([v for v in VISIBLE_VARIANTS if v not in test], test)
    out["final"] = (list(VISIBLE_VARIANTS), [])
    return out


def select(a: argparse.Namespace) -> None:
    seeds = parse_seeds(a.seeds)
    res = load(a.results, seeds)
    choice: dict[str, Any] = {}
    for name, (train, test) in folds().items():
        config, info = choose(res, train, seeds, verbose=a.verbose)
        choice[name] = {"config": config, "train": train, "test": test, **info}
        print(f"{name:18s} {config}  worst train gain {info['worst_gain']:+.3f} mean {info['mean_gain']:+.3f} "
              f"({info['candidates']} candidates)")
    if a.choice:
        a.choice.parent.mkdir(parents=True, exist_ok=True)
        a.choice.write_text(json.dumps(choice, indent=1))


def row(res: dict[tuple[str, str], dict[int, float]], workload: str, config: str, seeds: list[int], how: str) -> str:
    fgd, ours = res.get((workload, FGD), {}), res.get((workload, config), {})
    common = [s for s in seeds if s in fgd and s in ours]
    if not common:
        return f"| {workload} | {how} | – | – | – | – |"
    f = np.array([fgd[s] for s in common])
    o = np.array([ours[s] for s in common])
    def sd(x):
        return (float(np.std(x, ddof=1)) if len(x) > 1 else 0.0)
    wins = int((o < f).sum())
    return (f"| {workload} | {how} | {o.mean():.2f} ± {sd(o):.2f} | {f.mean():.2f} ± {sd(f):.2f} | "
            f"{100 * (o.mean() - f.mean()) / f.mean():+.1f} % | {wins}/{len(common)} |")


def table(a: argparse.Namespace) -> None:
    seeds = parse_seeds(a.seeds)
    res = load(a.results, seeds)
    choice = json.loads(a.choice.read_text())
    print("| workload | parameters from | xpupool | FGD (same run) | vs FGD | per-seed wins |")
    print("|---|---|---|---|---|---|")
    for name, data in choice.items():
        for v in data["test"]:
            print(row(res, v, data["config"], seeds, f"fold {name}"))
    final = choice["final"]["config"]
    for mix in HELD_OUT:
        print(row(res, mix, final, seeds, "final (all visible)"))
    if a.visible:
        for v in VISIBLE_VARIANTS:
            print(row(res, v, final, seeds, "final (in training)"))


def parse_seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("select")
    s.add_argument("--results", type=Path, required=True)
    s.add_argument("--seeds", default="42-44")
    s.add_argument("--choice", type=Path)
    s.add_argument("--verbose", action="store_true", help="every candidate's worst and mean training gain")
    t = sub.add_parser("table")
    t.add_argument("--results", type=Path, required=True)
    t.add_argument("--seeds", default="42-51")
    t.add_argument("--choice", type=Path, required=True)
    t.add_argument("--visible", action="store_true", help="also list the visible variants with the final choice")
    a = ap.parse_args()
    select(a) if a.cmd == "select" else table(a)


if __name__ == "__main__":
    main()
