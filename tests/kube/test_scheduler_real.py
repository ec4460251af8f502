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
    too_big = await transport.get(PODS, "too-big", namespace=namespace)
    assert not too_big["spec"].get("nodeName")
