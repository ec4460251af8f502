"""Named policies -> profiles. The simulator, the CLI and the scheduler daemon all use these.

Faithful FGD-artifact policies (``random``, ``dotprod``, ``gpuclustering``, ``gpupacking``,
``bestfit``, ``fgd``) use kube-scheduler's integer scores with random tie-breaking, as the artifact
does. ``xpupool`` is our policy (see :mod:`xpupool.plugins.fgd`), plus load-aware scoring that is
neutral until the node agent reports utilisation.
"""

from __future__ import annotations

import numpy as np

import xpupool.plugins  # noqa: F401  (registers plugins)
from xpupool.core.frag import TargetWorkload
from xpupool.core.framework import Profile, Scheduler

FGD_BASELINES = ("random", "dotprod", "gpuclustering", "gpupacking", "bestfit", "fgd")
GENERIC = ("binpack", "spread")
OURS = ("xpupool",)
POLICIES = FGD_BASELINES + GENERIC + OURS
NEEDS_TARGET = frozenset({"fgd", "xpupool"})


def build_profile(
    policy: str,
    *,
    rng: np.random.Generator,
    target: TargetWorkload | None = None,
    demand_target: TargetWorkload | None = None,
) -> Profile:
    """A profile for ``policy``. ``target`` is FGD's popularity-weighted typical-pod workload;
    ``demand_target`` the demand-weighted one used by ``xpupool`` (falls back to ``target``)."""
    if policy in NEEDS_TARGET and target is None:
        raise ValueError(f"policy {policy!r} needs a target workload (typical pods)")
    if policy == "random":
        return Profile.from_names("random", scores=["random"], args={"random": {"rng": rng}}, integer_scores=True)
    if policy == "fgd":
        return Profile.from_names("fgd", scores=["fgd"], args={"fgd": {"target": target}}, integer_scores=True,
                                  first_on_tie=True)
    if policy == "xpupool":
        return Profile.from_names(
            "xpupool",
            scores={"xpupool-host": 1.0, "loadaware": 0.0001},
            args={"xpupool-host": {"target": target}},
            first_on_tie=True,
        )
    if policy in FGD_BASELINES:
        return Profile.from_names(policy, scores=[policy], integer_scores=True, first_on_tie=True)
    if policy in GENERIC:
        return Profile.from_names(policy, scores=[policy])
    raise KeyError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")


def build_scheduler(
    policy: str,
    *,
    seed: int = 0,
    target: TargetWorkload | None = None,
    demand_target: TargetWorkload | None = None,
) -> Scheduler:
    rng = np.random.default_rng(seed)
    return Scheduler(build_profile(policy, rng=rng, target=target, demand_target=demand_target), rng=rng)
