"""Queues against a real apiserver, the scheduler in-process: who may use a queue is the cluster
owner's decision (the scheduler re-checks every label itself: no webhook runs here, as when a
pod is created while the webhook is down), namespace default queues, and XPUQueue status written
through the status subresource."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from xpupool.kube.queues import XPUQUEUES
from xpupool.kube.scheduler import KubeScheduler, SchedulerConfig
from xpupool.kube.testing import create_all, declare_queues, fake_node, fake_pod
from xpupool.kube.transport import EVENTS, NODES, PODS, AiohttpTransport
from xpupool.plugins.profiles import build_scheduler

pytestmark = pytest.mark.e2e_apiserver


@pytest.fixture
async def daemon(transport: AiohttpTransport, namespace: str) -> AsyncIterator[KubeScheduler]:
    await declare_queues(transport, {}, namespaces=[])  # the CRD, so the scheduler enforces queues
    pool = {"xpupool.test/pool": namespace}
    await create_all(transport, NODES, [fake_node(f"{namespace}-n0", cards=4, labels=pool)])
    config = SchedulerConfig(scheduler_name=f"xpupool-{namespace}",
                             node_label_selector=f"xpupool.test/pool={namespace}", retry_backoff_s=(0.2, 0.5))
    sched = KubeScheduler(transport, scheduler=build_scheduler("binpack", seed=1), config=config)
    task = asyncio.create_task(sched.run())
    yield sched
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await sched.stop()


async def until(check: Any, what: str, timeout_s: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.1)


async def bound(transport: AiohttpTransport, namespace: str) -> set[str]:
    pods = (await transport.list(PODS, namespace=namespace)).items
    return {p["metadata"]["name"] for p in pods if p["spec"].get("nodeName")}


async def notes(transport: AiohttpTransport, namespace: str) -> list[str]:
    return [e.get("note", "") for e in (await transport.list(EVENTS, namespace=namespace)).items]


async def test_a_queue_label_the_namespace_may_not_use_is_never_trusted(
    transport: AiohttpTransport, namespace: str, daemon: KubeScheduler
) -> None:
    queue = f"closed-{namespace}"
    await declare_queues(transport, {queue: {}}, namespaces=[])  # admits no namespace
    name = f"xpupool-{namespace}"
    await create_all(transport, PODS, [fake_pod(namespace, "spoof", scheduler=name, vxpu=1, core_pct=50,
                                                labels={"xpupool.io/queue": queue})])
    texts = await until(lambda: _matching(transport, namespace, f"may not use queue '{queue}'"), "refusal event")
    assert f"namespace {namespace} may not use queue" in texts[0]
    assert "spoof" not in await bound(transport, namespace)
    # The cluster owner admits the namespace: the same pod is scheduled.
    await transport.patch(XPUQUEUES, queue, {"spec": {"namespaces": [namespace]}})
    await until(lambda: _has(transport, namespace, "spoof"), "bound after the queue admits the namespace")


async def test_unlabelled_pods_get_the_namespace_default_queue_and_status_is_written(
    transport: AiohttpTransport, namespace: str, daemon: KubeScheduler
) -> None:
    parent, leaf = f"org-{namespace}", f"team-{namespace}"
    await declare_queues(transport, {parent: {"quota": [{"resource": "xpupool.io/vxpu", "limit": 2}]}}, namespaces=[])
    await declare_queues(transport, {leaf: {"parent": parent, "defaultForNamespaces": True,
                                            "quota": [{"resource": "xpupool.io/vxpu", "guaranteed": 1}]}},
                         namespaces=[namespace])
    name = f"xpupool-{namespace}"
    pods = [fake_pod(namespace, f"p{i}", scheduler=name, vxpu=1, core_pct=100) for i in range(3)]
    await create_all(transport, PODS, pods)
    await until(lambda: _count(transport, namespace, 2), "two pods bound")
    # the leaf borrows above its guarantee of 1 card, but its parent's limit of 2 holds the third back
    await until(lambda: _matching(transport, namespace, f"nothing left to borrow under {parent}"),
                "the parent's limit holds the third pod back")
    assert len(await bound(transport, namespace)) == 2
    writer = daemon.queues.status_writer
    assert writer is not None
    await until(lambda: _written(writer), "status written")
    status = (await transport.get(XPUQUEUES, leaf))["status"]
    (core,) = [r for r in status["resources"] if r["resource"] == "xpupool.io/vxpu-core" and not r["model"]]
    assert (core["allocated"], core["borrowed"], core["pending"], core["guaranteed"]) == (200, 100, 100, 100)
    assert status["runningPods"] == 2 and status["pendingPods"] == 1
    assert status["conditions"][0]["type"] == "Valid" and status["conditions"][0]["status"] == "True"
    top = (await transport.get(XPUQUEUES, parent))["status"]
    (core,) = [r for r in top["resources"] if r["resource"] == "xpupool.io/vxpu-core" and not r["model"]]
    assert core["allocated"] == 200 and core["limit"] == 200 and top["runningPods"] == 2
    assert await writer.write_once() == 0  # unchanged: nothing rewritten


async def _written(writer: Any) -> bool:
    await writer.write_once()
    return writer.writes >= 2


async def _matching(transport: AiohttpTransport, namespace: str, text: str) -> list[str]:
    return [n for n in await notes(transport, namespace) if text in n]


async def _has(transport: AiohttpTransport, namespace: str, pod: str) -> bool:
    return pod in await bound(transport, namespace)


async def _count(transport: AiohttpTransport, namespace: str, count: int) -> bool:
    return len(await bound(transport, namespace)) >= count


