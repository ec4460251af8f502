"""The scheduler daemon in-process against a real apiserver: place, annotate, bind, explain.

Each test uses its own scheduler name and a node label, so tests sharing the apiserver never
see each other's pods or nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from xpupool.kube.objects import ANN_ALLOCATION
from xpupool.kube.scheduler import KubeScheduler, SchedulerConfig
from xpupool.kube.testing import create_all, fake_node, fake_pod
from xpupool.kube.transport import EVENTS, NODES, PODS, AiohttpTransport, JsonDict
from xpupool.plugins.profiles import build_scheduler

pytestmark = pytest.mark.e2e_apiserver


@pytest.fixture
async def daemon(transport: AiohttpTransport, namespace: str) -> AsyncIterator[KubeScheduler]:
    config = SchedulerConfig(
        scheduler_name=f"xpupool-{namespace}",
        node_label_selector=f"xpupool.test/pool={namespace}",
        retry_backoff_s=(0.2, 1.0),
    )
    sched = KubeScheduler(transport, scheduler=build_scheduler("binpack", seed=1), config=config)
    task = asyncio.create_task(sched.run())
    yield sched
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await sched.stop()


async def wait_bound(transport: AiohttpTransport, namespace: str, count: int, timeout_s: float = 30) -> list[JsonDict]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        pods = (await transport.list(PODS, namespace=namespace)).items
        bound = [p for p in pods if p["spec"].get("nodeName")]
        if len(bound) >= count:
            return bound
        assert asyncio.get_running_loop().time() < deadline, f"{len(bound)}/{count} bound"
        await asyncio.sleep(0.1)


async def test_places_fractional_pods_and_explains_pending(
    transport: AiohttpTransport, namespace: str, daemon: KubeScheduler
) -> None:
    pool = {"xpupool.test/pool": namespace}
    await create_all(
        transport,
        NODES,
        [fake_node(f"{namespace}-n{i}", cards=2, card_memory_mib=40960, labels=pool) for i in range(2)],
    )
    name = daemon.config.scheduler_name
    pods = [fake_pod(namespace, f"p{i}", scheduler=name, vxpu=1, core_pct=50, memory_mib=10240) for i in range(8)]
    pods.append(fake_pod(namespace, "too-big", scheduler=name, vxpu=1, core_pct=50, memory_mib=999999))
    await create_all(transport, PODS, pods)
    bound = await wait_bound(transport, namespace, 8)
    per_card: dict[tuple[str, int], int] = {}
    for pod in bound:
        alloc = json.loads(pod["metadata"]["annotations"][ANN_ALLOCATION])
        assert alloc["node"] == pod["spec"]["nodeName"]
        assert alloc["shareMilli"] == 500 and alloc["memoryMiB"] == [10240]
        for card in alloc["cards"]:
            per_card[(alloc["node"], card)] = per_card.get((alloc["node"], card), 0) + alloc["shareMilli"]
    assert sorted(per_card.values()) == [1000] * 4  # 8 half-cards fill the 4 cards exactly
    # the impossible pod stays pending with an Event that says why
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        events = (await transport.list(EVENTS, namespace=namespace)).items
        failed = [e for e in events if e["regarding"]["name"] == "too-big" and e["reason"] == "FailedScheduling"]
        if failed:
            break
        assert asyncio.get_running_loop().time() < deadline, "no FailedScheduling event"
        await asyncio.sleep(0.1)
    assert "0/2 nodes available" in failed[0]["note"]
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        too_big = await transport.get(PODS, "too-big", namespace=namespace)
        assert not too_big["spec"].get("nodeName")
        conds = [c for c in too_big["status"].get("conditions", []) if c["type"] == "PodScheduled"]
        if conds:
            break
        assert asyncio.get_running_loop().time() < deadline, "no PodScheduled condition"
        await asyncio.sleep(0.1)
    assert conds[0]["status"] == "False" and conds[0]["reason"] == "Unschedulable"
    assert "memory" in conds[0]["message"]


async def test_only_the_leader_binds_and_a_standby_takes_over(transport: AiohttpTransport, namespace: str) -> None:
    """Two replicas share a Lease: the standby keeps informers warm but writes nothing; when the
    leader shuts down gracefully (releasing the Lease) the standby takes over and binds."""
    from xpupool.kube.lease import LeaderElector
    from xpupool.kube.scheduler import MonotonicClock

    pool = {"xpupool.test/pool": namespace}
    await create_all(transport, NODES, [fake_node(f"{namespace}-n0", cards=4, labels=pool)])
    name = f"xpupool-{namespace}"
    replicas = []
    for identity in ("a", "b"):
        elector = LeaderElector(
            transport,
            namespace=namespace,
            name="sched",
            identity=identity,
            clock=MonotonicClock(),
            lease_duration_s=6,
            renew_deadline_s=4,
            retry_period_s=0.5,
        )
        config = SchedulerConfig(scheduler_name=name, node_label_selector=f"xpupool.test/pool={namespace}")
        sched = KubeScheduler(
            transport, scheduler=build_scheduler("binpack", seed=1), config=config, elector=elector, identity=identity
        )
        replicas.append((sched, asyncio.create_task(sched.run())))
    try:
        await transport.create(PODS, fake_pod(namespace, "first", scheduler=name, vxpu=1, core_pct=50))
        await wait_bound(transport, namespace, 1)
        leaders = [s for s, _ in replicas if s.elector is not None and s.elector.is_leader()]
        assert len(leaders) == 1
        leader = leaders[0]
        standby = next(s for s, _ in replicas if s is not leader)
        assert standby.cycles == 0 and standby.pods.has_synced  # warm, idle
        leader_task = next(t for s, t in replicas if s is leader)
        leader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leader_task
        await leader.stop()  # releases the Lease
        await transport.create(PODS, fake_pod(namespace, "second", scheduler=name, vxpu=1, core_pct=50))
        bound = await wait_bound(transport, namespace, 2, timeout_s=20)
        assert {p["metadata"]["name"] for p in bound} == {"first", "second"}
        assert standby.elector is not None and standby.elector.is_leader() and standby.cycles > 0
    finally:
        for sched, task in replicas:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await sched.stop()


async def test_metrics_count_binds(transport: AiohttpTransport, namespace: str, daemon: KubeScheduler) -> None:
    from prometheus_client import generate_latest

    from xpupool.kube.metrics import METRICS

    before = METRICS.registry.get_sample_value("xpupool_bind_total", {"outcome": "bound"}) or 0.0
    pool = {"xpupool.test/pool": namespace}
    await create_all(transport, NODES, [fake_node(f"{namespace}-n0", cards=2, labels=pool)])
    name = daemon.config.scheduler_name
    await create_all(
        transport, PODS, [fake_pod(namespace, f"m{i}", scheduler=name, vxpu=1, core_pct=25) for i in range(3)]
    )
    await wait_bound(transport, namespace, 3)
    after = METRICS.registry.get_sample_value("xpupool_bind_total", {"outcome": "bound"})
    assert after is not None and after - before >= 3
    text = generate_latest(METRICS.registry).decode()
    assert "xpupool_schedule_cycle_seconds_bucket" in text and "xpupool_informer_events_total" in text


async def test_xpuqueue_limit_is_enforced_and_raising_it_admits(transport: AiohttpTransport, namespace: str) -> None:
    """An XPUQueue (CRD from xpupool.kube.crds) caps its pods; raising the cap lets them in."""
    from xpupool.kube.queues import XPUQUEUES
    from xpupool.kube.testing import declare_queues

    queue = f"q-{namespace}"
    # queues: with the CRD installed a namespace may use only the queues that admit it
    spec = {"weight": 1, "quota": [{"resource": "xpupool.io/vxpu-core", "limit": 100}]}
    await declare_queues(transport, {queue: spec}, namespaces=[namespace])
    pool = {"xpupool.test/pool": namespace}
    await create_all(transport, NODES, [fake_node(f"{namespace}-n0", cards=4, labels=pool)])
    name = f"xpupool-{namespace}"
    config = SchedulerConfig(
        scheduler_name=name, node_label_selector=f"xpupool.test/pool={namespace}", retry_backoff_s=(0.2, 1.0)
    )
    sched = KubeScheduler(transport, scheduler=build_scheduler("binpack", seed=1), config=config)
    task = asyncio.create_task(sched.run())
    try:
        await create_all(
            transport,
            PODS,
            [
                fake_pod(namespace, f"q{i}", scheduler=name, vxpu=1, core_pct=50, labels={"xpupool.io/queue": queue})
                for i in range(3)
            ],
        )
        await wait_bound(transport, namespace, 2)
        await asyncio.sleep(1.0)
        pods = (await transport.list(PODS, namespace=namespace)).items
        assert sum(1 for p in pods if p["spec"].get("nodeName")) == 2  # the third would exceed the limit
        events = (await transport.list(EVENTS, namespace=namespace)).items
        assert any("exceed its limit" in e["note"] for e in events), [e["note"] for e in events]
        await transport.patch(
            XPUQUEUES, queue, {"spec": {"quota": [{"resource": "xpupool.io/vxpu-core", "model": "", "limit": 150}]}}
        )
        await wait_bound(transport, namespace, 3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sched.stop()


async def test_xpupool_policy_learns_typical_pods_from_the_cluster(transport: AiohttpTransport, namespace: str) -> None:
    """The production policy needs a typical-pod distribution: the daemon builds it from the pods it
    sees (topped up with a prior) and rebuilds it when nodes change; placements stay within capacity
    and the 4-card pod that arrives after the shares still finds a whole node."""
    from xpupool.plugins.profiles import build_scheduler_for

    config = SchedulerConfig(scheduler_name=f"xpupool-{namespace}",
                             node_label_selector=f"xpupool.test/pool={namespace}", retry_backoff_s=(0.2, 1.0))
    sched = KubeScheduler(
        transport,
        scheduler=build_scheduler("binpack", seed=1),
        scheduler_factory=lambda state, pods: build_scheduler_for("xpupool", models=state.models, population=pods),
        config=config,
    )
    task = asyncio.create_task(sched.run())
    try:
        pool = {"xpupool.test/pool": namespace}
        await create_all(transport, NODES, [fake_node(f"{namespace}-n{i}", cards=4, card_memory_mib=40960, labels=pool)
                                            for i in range(2)])
        name = config.scheduler_name
        shares = [fake_pod(namespace, f"s{i}", scheduler=name, vxpu=1, core_pct=25, memory_mib=4096) for i in range(8)]
        await create_all(transport, PODS, shares)
        await wait_bound(transport, namespace, 8)
        await create_all(transport, PODS, [fake_pod(namespace, "big", scheduler=name, vxpu=4)])
        bound = await wait_bound(transport, namespace, 9)
        assert sched.core.profile.name == "xpupool"
        used: dict[tuple[str, int], int] = {}
        for pod in bound:
            alloc = json.loads(pod["metadata"]["annotations"][ANN_ALLOCATION])
            for card in alloc["cards"]:
                used[(alloc["node"], card)] = used.get((alloc["node"], card), 0) + alloc["shareMilli"]
        assert max(used.values()) <= 1000
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sched.stop()


async def test_remote_vxpu_binds_the_pod_to_a_cpu_node_with_its_card_elsewhere(
    transport: AiohttpTransport, namespace: str, daemon: KubeScheduler
) -> None:
    """A pod with ``xpupool.io/remote: required`` runs on a CPU-only node; the allocation names the
    GPU node holding its vXPU (``deviceNode``), and the remote bandwidth is reserved there."""
    pool = {"xpupool.test/pool": namespace}
    await create_all(transport, NODES, [
        fake_node(f"{namespace}-gpu", cards=2, card_memory_mib=40960, labels=pool),
        fake_node(f"{namespace}-cpu", cards=0, labels=pool),
    ])
    name = daemon.config.scheduler_name
    pod = fake_pod(namespace, "notebook", scheduler=name, vxpu=1, core_pct=25, memory_mib=8192,
                   annotations={"xpupool.io/remote": "required", "xpupool.io/remote-mbps": "2000"})
    await create_all(transport, PODS, [pod])
    (bound,) = await wait_bound(transport, namespace, 1)
    alloc = json.loads(bound["metadata"]["annotations"][ANN_ALLOCATION])
    assert bound["spec"]["nodeName"] == f"{namespace}-cpu"
    assert alloc["node"] == f"{namespace}-cpu" and alloc["deviceNode"] == f"{namespace}-gpu"
    gpu = daemon.state.node_index[f"{namespace}-gpu"]
    assert int(daemon.state.bandwidth_capacity[gpu] - daemon.state.bandwidth_free[gpu]) == 2000


async def test_tainted_gpu_pool_gated_pods_and_replica_anti_affinity(
    transport: AiohttpTransport, namespace: str, daemon: KubeScheduler
) -> None:
    """A tainted GPU pool is used by pods that tolerate it (and only by them); a gated pod is
    reported ``SchedulingGated`` and never bound until its gate is removed; replicas with hostname
    anti-affinity get one node each and the surplus replica waits with a reason."""
    pool = {"xpupool.test/pool": namespace}
    taint = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    nodes = [fake_node(f"{namespace}-g{i}", cards=2, labels=pool) for i in range(2)]
    for node in nodes:
        node["spec"] = {"taints": taint}
    await create_all(transport, NODES, nodes)
    name = daemon.config.scheduler_name
    tolerate = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "llm"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    replicas = []
    for i in range(3):
        replica = fake_pod(namespace, f"llm-{i}", scheduler=name, vxpu=1, core_pct=10, labels={"app": "llm"})
        replica["spec"].update(tolerations=tolerate, affinity=anti)
        replicas.append(replica)
    intolerant = fake_pod(namespace, "intolerant", scheduler=name, vxpu=1, core_pct=10)
    gated = fake_pod(namespace, "gated", scheduler=name, vxpu=1, core_pct=10)
    gated["spec"].update(tolerations=tolerate, schedulingGates=[{"name": "example.com/approval"}])
    await create_all(transport, PODS, [*replicas, intolerant, gated])
    bound = await wait_bound(transport, namespace, 2)
    await asyncio.sleep(1.5)  # a few more cycles: nothing else may bind
    pods = {p["metadata"]["name"]: p for p in (await transport.list(PODS, namespace=namespace)).items}
    on_node = {n: p["spec"].get("nodeName") for n, p in pods.items()}
    placed = [n for n in ("llm-0", "llm-1", "llm-2") if on_node[n]]
    assert len(placed) == 2 and len({on_node[n] for n in placed}) == 2, on_node
    assert not on_node["intolerant"] and not on_node["gated"], on_node
    assert len(bound) == 2

    def condition(pod: JsonDict) -> JsonDict:
        return next(c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled")

    assert condition(pods["gated"])["reason"] == "SchedulingGated"
    assert "untolerated taint {nvidia.com/gpu: present}" in condition(pods["intolerant"])["message"]
    waiting = next(n for n in ("llm-0", "llm-1", "llm-2") if not on_node[n])
    assert "didn't match pod anti-affinity rules" in condition(pods[waiting])["message"]
    await transport.patch(PODS, "gated", {"spec": {"schedulingGates": None}}, namespace=namespace)
    bound = await wait_bound(transport, namespace, 3)
    assert "gated" in {p["metadata"]["name"] for p in bound}
