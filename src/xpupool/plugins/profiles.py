"""Named policies -> profiles. The simulator, the CLI and the scheduler daemon all use these.

Faithful FGD-artifact policies (``random``, ``dotprod``, ``gpuclustering``, ``gpupacking``,
``bestfit``, ``fgd``) use kube-scheduler's integer scores with ties broken by node order, which is
what reproduces the artifact's published results (``random`` draws its scores). ``xpupool`` is
our policy (see :mod:`xpupool.plugins.xpupool_policy`), plus load-aware scoring that is
neutral until the node agent reports utilisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import xpupool.plugins  # noqa: F401  (registers plugins)
from xpupool.core.frag import TargetWorkload
from xpupool.core.framework import Profile, Scheduler
from xpupool.core.model import Request

FGD_BASELINES = ("random", "dotprod", "gpuclustering", "gpupacking", "bestfit", "fgd")
GENERIC = ("binpack", "spread")
OURS = ("xpupool", "xpupool-holdback")
POLICIES = FGD_BASELINES + GENERIC + OURS
NEEDS_TARGET = frozenset({"fgd", "xpupool", "xpupool-holdback"})
#: ``xpupool-holdback``: xpupool plus the hold-back filter (a 0.81-card share waits rather than strand
#: 190 milli on a whole card once at most this % of its model's cards are still whole). Per-model
#: trigger, not pool allocation (``theta_pct`` 85 lost to FGD on multigpu20). Measured, opt-in, not
#: the default: docs/simulation.md "Hold-back".
HOLD_BACK_WHOLE_FREE_PCT = 12.0


def build_profile(
    policy: str,
    *,
    rng: np.random.Generator,
    target: TargetWorkload | None = None,
) -> Profile:
    """A profile for ``policy``. ``target`` is the typical-pod workload (FGD's popularity weights)
    that ``fgd`` and ``xpupool`` need."""
    if policy in NEEDS_TARGET and target is None:
        raise ValueError(f"policy {policy!r} needs a target workload (typical pods)")
    if policy == "random":
        return Profile.from_names("random", scores=["random"], args={"random": {"rng": rng}}, integer_scores=True)
    if policy == "fgd":
        return Profile.from_names("fgd", scores=["fgd"], args={"fgd": {"target": target}}, integer_scores=True,
                                  first_on_tie=True)
    if policy in ("xpupool", "xpupool-holdback"):
        hold = policy == "xpupool-holdback"
        return Profile.from_names(
            policy,
            scores={"xpupool-host": 1.0, "loadaware": 0.0001},
            filters=["xpupool-holdback"] if hold else [],
            args={"xpupool-host": {"target": target},
                  "xpupool-holdback": {"target": target, "whole_free_pct": HOLD_BACK_WHOLE_FREE_PCT}},
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
) -> Scheduler:
    rng = np.random.default_rng(seed)
    return Scheduler(build_profile(policy, rng=rng, target=target), rng=rng)


def prior_requests() -> list[Request]:
    """A generic pod population for a cluster that has shown too few pods yet: the share sizes and
    whole-card counts most common in the openb trace (a 0.5/0.25 share, 1, 2, 4, 8 cards)."""
    shapes = [(1, 500, 30), (1, 250, 20), (1, 1000, 35), (2, 1000, 6), (4, 1000, 5), (8, 1000, 4)]
    out: list[Request] = []
    for count, milli, weight in shapes:
        out += [Request(name=f"prior-{count}x{milli}-{i}", count=count, share_milli=milli,
                        exclusive=milli >= 1000) for i in range(weight)]
    return out


def build_scheduler_for(policy: str, *, models: Sequence[str], population: Sequence[Request],
                        seed: int = 0, min_population: int = 50) -> Scheduler:
    """A scheduler for a live cluster: policies that need typical pods (``fgd``, ``xpupool``) learn
    them from ``population`` (the pods seen so far), topped up with :func:`prior_requests` while
    fewer than ``min_population`` pods are known. Other policies ignore the population."""
    if policy not in NEEDS_TARGET:
        return build_scheduler(policy, seed=seed)
    pods = list(population)
    if len(pods) < min_population:
        pods += prior_requests()
    return build_scheduler(policy, seed=seed, target=TargetWorkload.from_requests(pods, models))
