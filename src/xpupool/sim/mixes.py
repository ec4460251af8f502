"""Held-out openb workload mixes: pod lists blended from the published variants.

The FGD variants (``default``, ``cpuXXX``, ``gpushareXX``, ``multigpuXX``, ``gpuspecXX``) are fixed
points; a user's cluster sits somewhere between them. A *mix* is the mixture of two or more
variants' pod lists by pod proportion: variant ``v`` with weight ``w_v`` contributes a fraction
``w_v`` of the pods, each of its pods equally likely. The mix is materialised as ``size`` pods
drawn with replacement (numpy PCG64, seeded), ``size`` being the weighted mean of the variants'
list sizes; the replay then shuffles and tops it up like any variant (``sim.replay``).

Nothing here copies trace data: mixes are rebuilt from the trace files on demand (or written to a
scratch directory for ``xpupool simulate --trace``).

:data:`HELD_OUT` is the catalogue used to check that the placement policy generalises
(docs/simulation.md): blends between visible variants and the variants the trace publishes but
FGD's paper does not report (never used to tune the policy).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from xpupool.core.model import WHOLE_CARD_MILLI, Request
from xpupool.sim.openb import load_pods, pods_file

#: the variants FGD reports (the policy may be tuned on these, by cross-validation folds)
VISIBLE_VARIANTS: tuple[str, ...] = (
    "default", "cpu050", "cpu100", "cpu200", "cpu250", "gpushare40", "gpushare80", "gpushare100",
    "multigpu20", "multigpu30", "multigpu50", "gpuspec10", "gpuspec20", "gpuspec25", "gpuspec33")

#: variant family (what the variant changes relative to ``default``); ``default`` is its own family
FAMILIES: tuple[str, ...] = ("cpu", "gpushare", "multigpu", "gpuspec")


def family(variant: str) -> str:
    """``cpu200`` -> ``cpu``; ``default`` -> ``default``."""
    for name in FAMILIES:
        if variant.startswith(name):
            return name
    return variant


@dataclass(frozen=True)
class Mix:
    """A blend of variants: ``parts`` = ((variant, weight), ...), weights > 0 (normalised)."""

    name: str
    parts: tuple[tuple[str, float], ...]
    seed: int = 0

    @property
    def families(self) -> frozenset[str]:
        return frozenset(family(v) for v, _ in self.parts)

    def build(self, pod_lists: Mapping[str, Sequence[Request]] | None = None) -> list[Request]:
        """The mix's pod list. ``pod_lists`` maps variant -> pods (default: read the trace files)."""
        lists = {v: list(pod_lists[v]) if pod_lists is not None else load_pods(pods_file(v)) for v, _ in self.parts}
        return blend([(lists[v], w) for v, w in self.parts], name=self.name, seed=self.seed)


def blend(parts: Sequence[tuple[Sequence[Request], float]], *, name: str, seed: int = 0) -> list[Request]:
    """Mixture of pod lists by pod proportion (see the module docstring); deterministic per seed."""
    if not parts or any(w <= 0 or not pods for pods, w in parts):
        raise ValueError("a mix needs at least one non-empty pod list, every weight > 0")
    if len(parts) == 1:  # one variant: its own list, unchanged
        return list(parts[0][0])
    total_w = sum(w for _, w in parts)
    weights = np.array([w / total_w for _, w in parts])
    size = round(sum(wt * len(pods) for (pods, _), wt in zip(parts, weights, strict=True)))
    rng = np.random.default_rng(seed)
    which = rng.choice(len(parts), size=size, p=weights)
    out: list[Request] = []
    for i, k in enumerate(which):
        pods = parts[int(k)][0]
        pod = pods[int(rng.integers(len(pods)))]
        out.append(replace(pod, name=f"{name}-{i:05d}"))
    return out


def composition(pods: Sequence[Request]) -> dict[str, float]:
    """Shares that characterise a pod list: % of GPU demand from multi-card and from share pods,
    % of pods that are CPU-only and % of GPU pods with a model constraint."""
    demand = sum(p.gpu_milli_total for p in pods) or 1
    gpu_pods = [p for p in pods if p.count] or [pods[0]]
    return {
        "multigpu_demand_pct": 100 * sum(p.gpu_milli_total for p in pods if p.count > 1) / demand,
        "share_demand_pct": 100 * sum(p.gpu_milli_total for p in pods
                                      if p.count == 1 and p.share_milli < WHOLE_CARD_MILLI) / demand,
        "cpu_only_pods_pct": 100 * sum(1 for p in pods if not p.count) / len(pods),
        "constrained_gpu_pods_pct": 100 * sum(1 for p in gpu_pods if p.models) / len(gpu_pods),
        "gpu_demand_cards": demand / WHOLE_CARD_MILLI,
    }


def write_pod_list(pods: Sequence[Request], path: Path) -> None:
    """Write ``pods`` in the openb pod-list format (``xpupool simulate --trace PATH`` reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec"])
        for p in pods:
            out.writerow([p.name, p.cpu_milli, p.memory_mib, p.count, p.share_milli if p.count else 0,
                          "|".join(p.models)])


#: Held-out mixes (never used for tuning). Blends lie between visible variants of one family or
#: combine two families; ``released`` ones are variants the trace publishes but FGD does not report.
HELD_OUT: dict[str, Mix] = {m.name: m for m in (
    Mix("mg40", (("multigpu30", 0.5), ("multigpu50", 0.5))),
    Mix("mg35", (("multigpu30", 0.75), ("multigpu50", 0.25))),
    Mix("mg45", (("multigpu30", 0.25), ("multigpu50", 0.75))),
    Mix("mg25", (("multigpu20", 0.5), ("multigpu30", 0.5))),
    Mix("share60", (("gpushare40", 0.5), ("gpushare80", 0.5))),
    Mix("cpu150", (("cpu100", 0.5), ("cpu200", 0.5))),
    Mix("spec15", (("gpuspec10", 0.5), ("gpuspec20", 0.5))),
    Mix("mg50-share80", (("multigpu50", 0.5), ("gpushare80", 0.5))),
    Mix("mg50-spec33", (("multigpu50", 0.5), ("gpuspec33", 0.5))),
    Mix("mg30-cpu250", (("multigpu30", 0.5), ("cpu250", 0.5))),
    Mix("released-cpu0", (("cpu0", 1.0),)),
    Mix("released-cpu037", (("cpu037", 1.0),)),
    Mix("released-cpu072", (("cpu072", 1.0),)),
    Mix("released-cpu235", (("cpu235", 1.0),)),
    Mix("released-cpu300", (("cpu300", 1.0),)),
    Mix("released-gpushare20", (("gpushare20", 1.0),)),
    Mix("released-gpuspec05", (("gpuspec05", 1.0),)),
)}


def load_workload(name: str) -> list[Request]:
    """A visible variant by name (``multigpu30``) or a held-out mix (``mg40``)."""
    if name in HELD_OUT:
        return HELD_OUT[name].build()
    return load_pods(pods_file(name))
