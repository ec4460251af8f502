"""FGD fragmentation: hand-computed examples and incremental == full recomputation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pools import gpu_node, share, whole

from xpupool.core.cluster import ClusterState
from xpupool.core.frag import FragmentCache, TargetWorkload, fragment, node_models, share_candidates
from xpupool.core.model import Request


def _tw() -> TargetWorkload:
    # half the pods ask 0.5 of a card, half a whole card; equal popularity
    pods = [share("s", 50, cpu=1000)] * 5 + [whole("w", 1, cpu=1000)] * 5
    return TargetWorkload.from_requests(pods, ["H100"], coverage=1.0)


def test_fragment_of_a_node_matches_the_definition() -> None:
    tw = _tw()
    # one node, two cards: 300 and 1000 milli free
    f, _ = fragment(tw, cpu_free=np.array([8000]), card_free=np.array([[300, 1000]]), model=np.array([0]))
    # 0.5-pod fits: fragment = cards with < 500 free = 300; whole pod fits: cards < 1000 = 300
    assert f[0] == 300


def test_node_that_cannot_fit_a_pod_counts_all_idle_as_fragment() -> None:
    tw = _tw()
    f, _ = fragment(tw, cpu_free=np.array([500]), card_free=np.array([[300, 1000]]), model=np.array([0]))
    assert f[0] == 1300  # no CPU left for either typical pod


def test_cpu_only_typical_pods_see_every_idle_card_as_fragment() -> None:
    pods = [Request(name="c", cpu_milli=1000)] * 2 + [whole("w", 1, cpu=1000)] * 2
    tw = TargetWorkload.from_requests(pods, ["H100"], coverage=1.0)
    f, _ = fragment(tw, cpu_free=np.array([8000]), card_free=np.array([[1000, 1000]]), model=np.array([0]))
    assert f[0] == 0.5 * 2000


def test_demand_weighting_favours_large_pods() -> None:
    pods = [share("s", 10)] * 9 + [whole("w", 8)]
    pop = TargetWorkload.from_requests(pods, ["H100"], coverage=1.0)
    dem = TargetWorkload.from_requests(pods, ["H100"], coverage=1.0, weights="demand")
    big = int(np.argmax(pop.count))
    assert dem.p[big] > 0.85 > 0.2 > pop.p[big]


@settings(max_examples=40, deadline=None)
@given(frees=st.lists(st.lists(st.sampled_from([0, 100, 250, 500, 700, 1000]), min_size=4, max_size=4),
                      min_size=3, max_size=6),
       ask=st.sampled_from([100, 300, 500, 900]), cpu=st.integers(0, 4000))
def test_incremental_share_gradient_equals_full_recomputation(frees: list[list[int]], ask: int, cpu: int) -> None:
    tw = _tw()
    state = ClusterState([gpu_node(f"n{i}", 4) for i in range(len(frees))])
    state.card_free_milli[:] = np.array(frees)
    cache = FragmentCache(tw)
    cache.refresh(state)
    req = share("x", ask // 10, cpu=cpu)
    fit = state.card_fit(req)
    nodes, slots = share_candidates(fit, state.card_free_milli, np.ones(state.num_nodes, dtype=bool))
    fast = cache.after_share(state, nodes, slots, cpu, ask)
    for k, (n, s) in enumerate(zip(nodes, slots, strict=True)):
        free = state.card_free_milli[[n]].copy()
        free[0, s] -= ask
        slow, _ = fragment(tw, cpu_free=state.cpu_free[[n]] - cpu, card_free=free, model=node_models(state)[[n]])
        assert np.isclose(slow[0], fast[k])
