"""Preemption on a real apiserver: Eviction API, PodDisruptionBudgets, nominated node.

The daemon runs in-process. No kube-controller-manager runs here, so the test writes each
PodDisruptionBudget's status itself (standing in for the disruption controller) and marks the
running pods Ready (standing in for their kubelet); the apiserver's Eviction API enforces the
budget from that status and records every eviction of a Ready pod in it, which is how the test
sees that victims left through the Eviction API and not by DELETE. ``FakeKubelet`` finishes
graceful deletions after a delay, so victims stay Terminating for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from xpupool.kube.scheduler import KubeScheduler, SchedulerConfig
from xpupool.kube.scheduler.preemption import PDBS
from xpupool.kube.testing import FakeKubelet, create_all, fake_node, fake_pod
from xpupool.kube.transport import NODES, PODS, PRIORITY_CLASSES, AiohttpTransport, ApiError, JsonDict
from xpupool.plugins.profiles import build_scheduler

pytestmark = pytest.mark.e2e_apiserver


async def until(probe: Callable[[], object], what: str, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        got = probe()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.1)


@pytest.fixture
async def cluster(transport: AiohttpTransport, namespace: str) -> AsyncIterator[tuple[KubeScheduler, str]]:
    for name, value in ((f"low-{namespace}", 10), (f"high-{namespace}", 1000)):
        await transport.create(PRIORITY_CLASSES, {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                                  "metadata": {"name": name}, "value": value})
    pool = {"xpupool.test/pool": namespace}
    await create_all(transport, NODES, [fake_node(f"{namespace}-n{i}", cards=1, labels=pool) for i in range(2)])
    config = SchedulerConfig(scheduler_name=f"xpupool-{namespace}", retry_backoff_s=(0.2, 1.0),
                             node_label_selector=f"xpupool.test/pool={namespace}")
    sched = KubeScheduler(transport, scheduler=build_scheduler("binpack", seed=1), config=config)
    kubelet = FakeKubelet(transport, delay_s=2.0)
    tasks = [asyncio.create_task(sched.run()), asyncio.create_task(kubelet.run())]
    yield sched, namespace
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await sched.stop()


def pod(namespace: str, name: str, sched: KubeScheduler, priority: str, app: str) -> JsonDict:
    return fake_pod(namespace, name, scheduler=sched.config.scheduler_name, vxpu=1,
                    priority_class=f"{priority}-{namespace}", labels={"app": app})


async def get(transport: AiohttpTransport, namespace: str, name: str) -> JsonDict | None:
    try:
        return await transport.get(PODS, name, namespace=namespace)
    except ApiError as exc:
        assert exc.status == 404
        return None


async def set_budget(transport: AiohttpTransport, namespace: str, allowed: int) -> None:
    """What the disruption controller would write (it does not run here)."""
    pdb = await transport.get(PDBS, "db", namespace=namespace)
    status = {"disruptionsAllowed": allowed, "currentHealthy": 1, "desiredHealthy": 1 - allowed, "expectedPods": 1,
              "observedGeneration": pdb["metadata"]["generation"]}
    await transport.patch(PDBS, "db", {"status": status}, namespace=namespace, subresource="status")


async def test_preemption_evicts_around_a_disruption_budget_and_holds_the_nominated_node(
    transport: AiohttpTransport, cluster: tuple[KubeScheduler, str]
) -> None:
    sched, ns = cluster
    await transport.create(PDBS, {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                                  "metadata": {"name": "db", "namespace": ns},
                                  "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "db"}}}},
                           namespace=ns)
    await set_budget(transport, ns, 0)
    await create_all(transport, PODS, [pod(ns, "db-0", sched, "low", "db"), pod(ns, "web-0", sched, "low", "web")])
    await until(lambda: all(k in sched.accounted and k not in sched.assumed for k in (f"{ns}/db-0", f"{ns}/web-0")),
                "low-priority pods bound")
    for name in ("db-0", "web-0"):  # Running and Ready, as their kubelet would report
        await transport.patch(PODS, name, {"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}]}}, namespace=ns, patch_type="strategic", subresource="status")
    web_node = sched.accounted[f"{ns}/web-0"][0].node
    db_node = sched.accounted[f"{ns}/db-0"][0].node

    # 1. the db pod is protected by its budget: the preemptor evicts the web pod instead, is
    #    nominated to its node while the victim terminates, then binds there
    await transport.create(PODS, pod(ns, "vip", sched, "high", "vip"))

    async def nominated_while_victim_terminates() -> bool:
        vip, web = await get(transport, ns, "vip"), await get(transport, ns, "web-0")
        return bool(vip and vip["status"].get("nominatedNodeName") == web_node and web
                    and web["metadata"].get("deletionTimestamp") and not vip["spec"].get("nodeName"))

    await until(nominated_while_victim_terminates, "vip nominated to the web node while web-0 terminates")
    await until(lambda: _bound_to(transport, ns, "vip", web_node), "vip bound on its nominated node")
    assert await get(transport, ns, "web-0") is None
    assert (await get(transport, ns, "db-0")) is not None

    # 2. the only pod left to evict is protected: nothing is evicted, the reason says why
    await transport.create(PODS, pod(ns, "vip2", sched, "high", "vip"))

    async def explained() -> bool:
        vip2 = await get(transport, ns, "vip2")
        conds = [c for c in (vip2 or {}).get("status", {}).get("conditions", []) if c["type"] == "PodScheduled"]
        return bool(conds and "protected by a PodDisruptionBudget" in conds[0].get("message", ""))

    await until(explained, "vip2 pending with the budget as the reason")
    await asyncio.sleep(1.0)
    db = await get(transport, ns, "db-0")
    assert db is not None and not db["metadata"].get("deletionTimestamp")

    # 3. the budget allows one disruption: the db pod now leaves through the Eviction API, which
    #    records it in the budget's status (a DELETE would not)
    await set_budget(transport, ns, 1)
    await until(lambda: _bound_to(transport, ns, "vip2", db_node), "vip2 bound after db-0 evicted", timeout_s=40)
    pdb = await transport.get(PDBS, "db", namespace=ns)
    assert "db-0" in (pdb["status"].get("disruptedPods") or {}) and pdb["status"]["disruptionsAllowed"] == 0


async def _bound_to(transport: AiohttpTransport, namespace: str, name: str, node: str) -> bool:
    got = await get(transport, namespace, name)
    return bool(got and node and got["spec"].get("nodeName") == node)
