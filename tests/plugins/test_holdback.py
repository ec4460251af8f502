"""The hold-back filter on hand-made pools: a 0.81-card pod is held only when the pool is nearly full
and every card it fits would keep a dead remnant; tight fits and smaller shares go through."""

from __future__ import annotations

import numpy as np

from xpupool.core.cluster import ClusterState
from xpupool.core.frag import TargetWorkload
from xpupool.core.framework import FitContext, Profile, Scheduler
from xpupool.core.model import Device, Node, Request, Vendor
from xpupool.core.status import Code
from xpupool.plugins.holdback import HoldBackFilter, dead_remnant_milli


def node(name: str, cards: int) -> Node:
    return Node(name, 64_000, 256 * 1024, tuple(Device(i, Vendor.NVIDIA, "G2", 32 * 1024) for i in range(cards)))


def share(name: str, milli: int) -> Request:
    return Request(name=name, cpu_milli=1000, memory_mib=1024, count=1, share_milli=milli)


def target() -> TargetWorkload:
    """Shares of 0.81/0.47/0.32/0.23 and whole cards, as in openb; no share below 0.2."""
    pods = ([share("a", 810)] * 4 + [share("b", 470)] * 3 + [share("c", 320)] * 2 + [share("d", 230)]
            + [Request(name="w", cpu_milli=1000, memory_mib=1024, count=1, share_milli=1000, exclusive=True)] * 5)
    return TargetWorkload.from_requests(pods, ["G2"], coverage=1.0)


def pool(used_milli: list[int]) -> ClusterState:
    """One 4-card node per entry group; ``used_milli`` sets each card's used share in order."""
    state = ClusterState([node(f"n{i}", 4) for i in range((len(used_milli) + 3) // 4)])
    for k, used in enumerate(used_milli):
        state.card_free_milli[k // 4, k % 4] -= used
    return state


def scheduler(theta_pct: float) -> Scheduler:
    tw = target()
    profile = Profile.from_names("hb", scores={"xpupool-host": 1.0}, filters=["xpupool-holdback"],
                                 args={"xpupool-host": {"target": tw},
                                       "xpupool-holdback": {"target": tw, "theta_pct": theta_pct}},
                                 first_on_tie=True)
    return Scheduler(profile, rng=np.random.default_rng(0))


def test_dead_remnant_is_the_smallest_common_share() -> None:
    assert dead_remnant_milli(target(), 0.05) == 230


def test_pod_is_held_when_the_pool_is_nearly_full_and_only_whole_cards_fit() -> None:
    # 7 of 8 cards fully used: 87.5 % allocated, one whole card left
    state = pool([1000] * 7 + [0])
    held = scheduler(85).place(state, share("p", 810))
    assert held.status.code is Code.UNSCHEDULABLE
    assert any("held back" in r for r in held.status.reasons)
    assert scheduler(90).place(state, share("p", 810)).status.ok  # below the threshold: placed


def test_tight_card_is_used_instead_of_holding() -> None:
    # 77 % allocated; the last card has 0.85 free: a 0.81 pod leaves 40 milli there, a tight fit
    state = pool([1000] * 6 + [0, 150])
    assert HoldBackFilter(target=target(), theta_pct=70).protected(state).all()
    result = scheduler(70).place(state, share("p", 810))
    assert result.status.ok and result.allocation is not None and result.allocation.cards == (3,)


def test_smaller_shares_are_never_held() -> None:
    state = pool([1000] * 7 + [0])
    assert scheduler(0).place(state, share("q", 470)).status.ok
    ctx = FitContext.build(state, share("q", 470))
    assert not HoldBackFilter(target=target(), theta_pct=0).candidate(ctx)


def test_off_by_default() -> None:
    state = pool([1000] * 7 + [0])
    ctx = FitContext.build(state, share("p", 810))
    assert HoldBackFilter(target=target()).filter(state, ctx).all()


def test_scarce_whole_cards_are_saved_per_model() -> None:
    """With the per-model trigger the pod is held only off a model whose whole cards run short:
    here G2 has 1 whole card of 8 left (12.5 %), T4 has 2 of 2, so the pod goes to a T4."""
    nodes = [node("g", 4), node("h", 4),
             Node("t", 64_000, 256 * 1024, tuple(Device(i, Vendor.NVIDIA, "T4", 16 * 1024) for i in range(2)))]
    state = ClusterState(nodes)
    state.card_free_milli[0, :] = 0
    state.card_free_milli[1, :3] = 0
    tw = target()
    filt = HoldBackFilter(target=tw, whole_free_pct=20)
    assert filt.filter(state, FitContext.build(state, share("p", 810))).tolist() == [False, False, True]
    state.card_free_milli[2, :] = 0  # the T4s are taken too: nowhere left without a dead remnant
    state.node_version[2] += 1  # (set by hand: tell the fit cache)
    assert not filt.filter(state, FitContext.build(state, share("p", 810))).any()
    assert HoldBackFilter(target=tw, whole_free_pct=10).filter(state, FitContext.build(state, share("p", 810))).any()


def test_holdback_policy_is_xpupool_plus_the_per_model_filter() -> None:
    """``xpupool-holdback`` holds a 0.81-card pod only once its model's whole cards are scarce
    (at most 12 % whole): 1 whole G2 card of 8 (12.5 %) is not scarce yet, 1 of 16 (6 %) is."""
    from xpupool.plugins.profiles import build_scheduler

    tw = target()
    plain, held = build_scheduler("xpupool", target=tw), build_scheduler("xpupool-holdback", target=tw)
    assert not plain.profile.filters
    assert [f.name for f in held.profile.filters] == ["xpupool-holdback"]
    assert held.place(pool([1000] * 7 + [0]), share("p", 810)).status.ok
    state = pool([1000] * 15 + [0])
    assert plain.place(state, share("p", 810)).status.ok
    assert held.place(state, share("p", 810)).status.code is Code.UNSCHEDULABLE
