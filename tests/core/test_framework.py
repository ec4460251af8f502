"""The placement framework: plugins by name, filters with reasons, card choice, remote vXPUs."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from pools import cpu_node, gpu_node, share, whole

import xpupool.plugins  # noqa: F401
from xpupool.core.cluster import BoolArray, ClusterState
from xpupool.core.frag import TargetWorkload
from xpupool.core.framework import REGISTRY, FilterPlugin, FitContext, Profile, Scheduler, ScorePlugin, ScoreResult
from xpupool.core.model import RemotePolicy, Request, Vendor
from xpupool.plugins.profiles import POLICIES, build_scheduler


def test_every_registered_plugin_satisfies_its_protocol() -> None:
    target = TargetWorkload.from_requests([share("x", 50)], ["H100"])
    for name in REGISTRY.names():
        params = inspect.signature(REGISTRY._factories[name]).parameters
        args = {"target": target} if "target" in params else {}
        plugin = REGISTRY.create(name, **args)
        assert isinstance(plugin, ScorePlugin | FilterPlugin), name


def test_unknown_plugin_name_fails_when_the_profile_is_built() -> None:
    with pytest.raises(KeyError, match="unknown plugin 'nope'"):
        Profile.from_names("p", scores=["nope"])


def test_unschedulable_pod_gets_per_reason_counts(small_pool: list) -> None:
    state = ClusterState(small_pool)
    sched = build_scheduler("binpack")
    result = sched.place(state, whole("big", 9))
    assert not result.status.ok
    msg = result.status.message()
    assert "1 node(s) have no accelerator" in msg and "lack 9 card(s)" in msg


def test_vendor_and_model_selectors_are_honoured(small_pool: list) -> None:
    state = ClusterState(small_pool)
    sched = build_scheduler("spread")
    r = Request(name="npu", cpu_milli=1000, count=2, share_milli=1000, exclusive=True, vendor=Vendor.ASCEND)
    assert sched.schedule(state, r).allocation.device_node == "npu0"  # type: ignore[union-attr]
    a100 = Request(name="a", cpu_milli=1000, count=1, share_milli=300, models=("A100",))
    assert sched.schedule(state, a100).allocation.device_node == "g1"  # type: ignore[union-attr]


def test_multi_card_pod_takes_one_topology_group() -> None:
    state = ClusterState([gpu_node("g", 8, groups=2)])
    state.reserve(build_scheduler("binpack").place(state, whole("w0", 1)).allocation, whole("w0", 1))  # type: ignore[arg-type]
    result = build_scheduler("binpack").place(state, whole("w4", 4))
    assert result.allocation is not None
    groups = {int(state.card_group[0, c]) for c in result.allocation.cards}
    assert len(groups) == 1


def test_share_goes_to_the_best_fitting_card() -> None:
    state = ClusterState([gpu_node("g", 2)])
    sched = build_scheduler("binpack")
    sched.schedule(state, share("a", 60))
    placed = sched.schedule(state, share("b", 30)).allocation
    assert placed is not None and placed.cards == state.allocations["a"][0].cards


def test_remote_required_puts_the_pod_on_a_cpu_node_near_the_card() -> None:
    nodes = [gpu_node("g-r1", 2, rack="r1"), cpu_node("c-r2", rack="r2"), cpu_node("c-r1", rack="r1")]
    state = ClusterState(nodes)
    r = Request(name="nb", cpu_milli=2000, memory_mib=1024, count=1, share_milli=250,
                remote=RemotePolicy.REQUIRED, remote_mbps=5000)
    result = build_scheduler("binpack").schedule(state, r)
    assert result.status.ok and result.allocation is not None
    assert result.allocation.device_node == "g-r1" and result.allocation.node == "c-r1"
    assert int(state.bandwidth_free[0]) == 25_000 - 5000


def test_remote_allowed_is_used_only_when_local_does_not_fit() -> None:
    nodes = [gpu_node("g", 1, cpu=2000), cpu_node("c")]
    state = ClusterState(nodes)
    sched = build_scheduler("binpack")
    local = Request(name="l", cpu_milli=1000, count=1, share_milli=200, remote=RemotePolicy.ALLOWED)
    assert not sched.schedule(state, local).allocation.is_remote  # type: ignore[union-attr]
    hungry = Request(name="h", cpu_milli=8000, count=1, share_milli=200, remote=RemotePolicy.ALLOWED)
    placed = sched.schedule(state, hungry).allocation
    assert placed is not None and placed.is_remote and placed.node == "c"


def test_remote_traffic_counts_against_the_gpu_node_bandwidth() -> None:
    state = ClusterState([gpu_node("g", 8), cpu_node("c")])
    sched = build_scheduler("binpack")
    for i in range(5):
        r = Request(name=f"r{i}", cpu_milli=100, count=1, share_milli=100, remote=RemotePolicy.REQUIRED,
                    remote_mbps=6000)
        result = sched.schedule(state, r)
        assert result.status.ok == (i < 4), result.status.message()


def test_load_aware_prefers_idle_cards_when_utilisation_is_known() -> None:
    state = ClusterState([gpu_node("busy", 1), gpu_node("idle", 1)])
    state.set_utilization("busy", [0.95])
    state.set_utilization("idle", [0.05])
    sched = Scheduler(Profile.from_names("la", scores=["loadaware"]), rng=np.random.default_rng(0))
    assert sched.place(state, share("s", 10)).allocation.device_node == "idle"  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_places_a_mixed_stream_within_capacity(policy: str, small_pool: list) -> None:
    state = ClusterState(small_pool)
    pods = [share(f"s{i}", (i * 17) % 90 + 10) for i in range(30)] + [whole(f"w{i}", 1 + i % 3) for i in range(6)]
    target = TargetWorkload.from_requests(pods, state.models)
    sched = build_scheduler(policy, seed=1, target=target)
    placed = sum(1 for p in pods if sched.schedule(state, p).status.ok)
    assert placed >= 25
    assert (state.card_free_milli >= 0).all() and (state.cpu_free >= 0).all()


class _AskedEveryTime:
    """A node-local score plugin presented as not node-local: the framework then asks it about
    every feasible node at every decision, with no cache (the reference for the cached path)."""

    node_local = False

    def __init__(self, inner: ScorePlugin) -> None:
        self.inner = inner
        self.name = inner.name

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        return self.inner.score(state, ctx, feasible)


@pytest.mark.parametrize("policy", ["xpupool", "fgd", "bestfit", "gpuclustering"])
def test_scores_cached_per_node_state_place_like_scores_asked_every_time(policy: str) -> None:
    # many equal nodes (so groups are shared) in a few kinds; shapes recur, some after a long gap
    nodes = [gpu_node(f"g{i}", (1, 2, 4, 8)[i % 4], model=("H100", "A100")[i % 3 == 0],
                      cpu=(32_000, 96_000)[i % 5 == 0]) for i in range(80)] + [cpu_node(f"c{i}") for i in range(4)]
    pods: list[Request] = []
    for i in range(700):
        kind = i % 7
        if kind < 4:
            pods.append(share(f"s{i}", (25, 50, 70, 30 + (i // 70) % 5)[kind], cpu=1000 + 1000 * (i % 3)))
        elif kind < 6:
            pods.append(whole(f"w{i}", 1 + (i // 7) % 3 if kind == 4 else 1, models=("A100",) if i % 11 == 0 else ()))
        else:
            pods.append(Request(name=f"c{i}", cpu_milli=8000, memory_mib=8192))
    target = TargetWorkload.from_requests(pods, ["A100", "H100"])
    cached, reference = build_scheduler(policy, seed=3, target=target), build_scheduler(policy, seed=3, target=target)
    reference.profile.scores = [(_AskedEveryTime(p), w) for p, w in reference.profile.scores]
    state_a, state_b = ClusterState(nodes), ClusterState(nodes)
    placed = 0
    for pod in pods:
        a, b = cached.schedule(state_a, pod), reference.schedule(state_b, pod)
        assert a.allocation == b.allocation, pod.name
        placed += a.status.ok
    assert 300 < placed < len(pods)  # the stream overfills the pool: nodes end in many states
