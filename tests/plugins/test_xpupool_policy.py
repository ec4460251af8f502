"""xpupool's host-aware fragmentation policy on small hand-made clusters.

Each behavioural test sets up a case where FGD (CPU checked for one copy only, memory ignored)
chooses differently from xpupool, so the test fails if the host-aware term stops working.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpupool.core.cluster import ClusterState
from xpupool.core.frag import FragmentCache, TargetWorkload, share_candidates
from xpupool.core.framework import FitContext, Profile, Scheduler
from xpupool.core.model import Device, Node, Request, Vendor
from xpupool.plugins.profiles import build_scheduler
from xpupool.plugins.xpupool_policy import HostFragment, HostTarget, XpupoolHostScore

GIB = 1024


def node(name: str, cards: int, cpu_cores: int, mem_gib: int, model: str = "G2") -> Node:
    devices = tuple(Device(i, Vendor.NVIDIA, model, 32 * GIB) for i in range(cards))
    return Node(name, cpu_cores * 1000, mem_gib * GIB, devices)


def one_card(name: str, cpu_cores: float = 12, mem_gib: int = 48) -> Request:
    return Request(name=name, cpu_milli=int(cpu_cores * 1000), memory_mib=mem_gib * GIB, count=1,
                   share_milli=1000, exclusive=True)


def part(name: str, milli: int, cpu_cores: float = 4, mem_gib: int = 8) -> Request:
    return Request(name=name, cpu_milli=int(cpu_cores * 1000), memory_mib=mem_gib * GIB, count=1,
                   share_milli=milli)


def cpu_pod(name: str, cpu_cores: float, mem_gib: int) -> Request:
    return Request(name=name, cpu_milli=int(cpu_cores * 1000), memory_mib=mem_gib * GIB)


def target(models: list[str]) -> TargetWorkload:
    """Typical pods: one-card pods with 12 cores / 48 GiB (like openb's), half-card shares, CPU-only."""
    pods = [one_card("w")] * 6 + [part("s", 500)] * 3 + [cpu_pod("c", 16, 32)]
    return TargetWorkload.from_requests(pods, models, coverage=1.0)


def scheduler(policy: str, tw: TargetWorkload) -> Scheduler:
    return build_scheduler(policy, seed=0, target=tw)


def chosen(policy: str, nodes: list[Node], pod: Request) -> str:
    state = ClusterState(nodes)
    result = scheduler(policy, target(state.models)).schedule(state, pod)
    assert result.status.ok and result.allocation is not None
    return result.allocation.node


def test_cpu_only_pod_goes_to_the_cpu_rich_node_not_the_gpu_dense_one() -> None:
    # dense: 8 cards with 12 cores / 48 GiB each (exactly what the typical one-card pod needs);
    # rich: 2 cards with 104 cores. FGD sees no change on either (one typical pod still fits) and
    # takes the first node; xpupool sees that 16 cores on `dense` strand 1.3 cards.
    nodes = [node("dense", 8, 96, 384), node("rich", 2, 104, 512, model="T4")]
    pod = cpu_pod("p", 16, 32)
    assert chosen("fgd", nodes, pod) == "dense"
    assert chosen("xpupool", nodes, pod) == "rich"


def test_memory_heavy_pod_goes_where_memory_is_not_the_bottleneck() -> None:
    # same CPU, but `tight` has 48 GiB per card and `roomy` 96 GiB per card: a 96 GiB one-card pod
    # strands a card's worth of memory on `tight`. FGD ignores memory and takes the first node.
    nodes = [node("tight", 8, 128, 384), node("roomy", 8, 128, 768)]
    pod = one_card("p", cpu_cores=12, mem_gib=96)
    assert chosen("fgd", nodes, pod) == "tight"
    assert chosen("xpupool", nodes, pod) == "roomy"


def test_cpu_heavy_gpu_pod_avoids_the_node_whose_cards_need_that_cpu() -> None:
    nodes = [node("dense", 8, 96, 384), node("rich", 4, 128, 512)]
    pod = one_card("p", cpu_cores=40, mem_gib=48)
    assert chosen("fgd", nodes, pod) == "dense"
    assert chosen("xpupool", nodes, pod) == "rich"


def test_near_equal_choices_fill_nodes_in_order_first_fit() -> None:
    # two identical empty nodes: the first is used, the second stays whole
    nodes = [node("a", 8, 96, 384), node("b", 8, 96, 384)]
    assert chosen("xpupool", nodes, one_card("p")) == "a"


def test_share_fills_the_partly_used_card_and_keeps_whole_cards() -> None:
    nodes = [node("a", 2, 96, 384)]
    state = ClusterState(nodes)
    state.card_free_milli[0, 1] = 500
    tw = target(state.models)
    sched = scheduler("xpupool", tw)
    result = sched.schedule(state, part("p", 500))
    assert result.allocation is not None and result.allocation.cards == (1,)


def test_profile_uses_the_host_aware_plugin_with_first_fit_ties() -> None:
    tw = target(["G2"])
    profile = scheduler("xpupool", tw).profile
    assert isinstance(profile.scores[0][0], XpupoolHostScore)
    assert profile.first_on_tie and not profile.integer_scores


# ------------------------------------------------------------------ incremental == full recomputation
def _full(cache: HostFragment, state: ClusterState) -> np.ndarray:
    u = cache.card_usable(state.card_free_milli, cache.model)
    return cache.frag(u, state.card_free_milli.sum(axis=1), state.cpu_free, state.memory_free)


@pytest.mark.parametrize("seed", range(8))
def test_incremental_host_fragment_equals_full_recomputation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nodes = [node(f"n{i}", 4, 64, 256, model="G2" if i % 3 else "T4") for i in range(6)]
    state = ClusterState(nodes)
    state.card_free_milli[:] = rng.choice([0, 150, 400, 500, 800, 1000], size=state.card_free_milli.shape)
    state.cpu_free[:] = rng.integers(0, 64_000, size=len(nodes))
    state.memory_free[:] = rng.integers(0, 256 * GIB, size=len(nodes))
    pods = [one_card("w"), part("s", 300), cpu_pod("c", 8, 16),
            Request(name="m", cpu_milli=8000, memory_mib=32 * GIB, count=2, share_milli=1000, exclusive=True)]
    tw = TargetWorkload.from_requests(pods * 3, state.models, coverage=1.0)
    cache = HostFragment(HostTarget(tw, weights="popularity", multi_scale=1.0))
    cache.refresh(state)
    np.testing.assert_allclose(cache.f, _full(cache, state))
    idx = np.arange(len(nodes))
    for count in (0, 1, 2):
        req = Request(name="x", cpu_milli=2000, memory_mib=4 * GIB, count=count, share_milli=1000 if count else 0,
                      exclusive=count > 0)
        after = cache.after_whole(state, idx, req.cpu_milli, req.memory_mib, count)
        for i in idx:
            full = np.nonzero(state.card_free_milli[i] >= 1000)[0]
            if len(full) < count:
                continue
            trial = state.copy()
            trial.card_free_milli[i, full[:count]] = 0
            trial.cpu_free[i] -= req.cpu_milli
            trial.memory_free[i] -= req.memory_mib
            assert after[i] == pytest.approx(_full(cache, trial)[i])
    req = part("y", 300, cpu_cores=2, mem_gib=4)
    ctx = FitContext.build(state, req)
    cand_nodes, slots = share_candidates(ctx.card_fit, state.card_free_milli, np.ones(len(nodes), dtype=bool))
    after = cache.after_share(state, cand_nodes, slots, req.cpu_milli, req.memory_mib, req.share_milli)
    for k, (i, s) in enumerate(zip(cand_nodes, slots, strict=True)):
        trial = state.copy()
        trial.card_free_milli[i, s] -= 300
        trial.cpu_free[i] -= req.cpu_milli
        trial.memory_free[i] -= req.memory_mib
        assert after[k] == pytest.approx(_full(cache, trial)[i])


def test_plugin_can_run_without_the_host_term_as_fgd_with_first_fit() -> None:
    nodes = [node("a", 8, 96, 384), node("b", 2, 104, 512, model="T4")]
    state = ClusterState(nodes)
    tw = target(state.models)
    profile = Profile.from_names("t", scores={"xpupool-host": 1.0},
                                 args={"xpupool-host": {"target": tw, "host_weight": 0.0}}, first_on_tie=True)
    result = Scheduler(profile, rng=np.random.default_rng(0)).schedule(state, cpu_pod("p", 16, 32))
    assert result.allocation is not None and result.allocation.node == "a"


@pytest.mark.parametrize("seed", range(6))
def test_cached_whole_card_gradient_equals_fgd_recomputation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nodes = [node(f"n{i}", 8, 96, 384) for i in range(10)]
    state = ClusterState(nodes)
    state.card_free_milli[:] = rng.choice([0, 190, 500, 1000, 1000], size=state.card_free_milli.shape)
    state.cpu_free[:] = rng.integers(0, 96_000, size=len(nodes))
    tw = target(state.models)
    cache = FragmentCache(tw)
    cache.refresh(state)
    full = (state.card_free_milli >= 1000).sum(axis=1)
    for count in (0, 1, 2, 4):
        idx = np.nonzero(full >= count)[0]
        np.testing.assert_allclose(cache.after_whole_cached(state, idx, 3000, count),
                                   cache.after_whole(state, idx, 3000, count))
