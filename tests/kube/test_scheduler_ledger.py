"""Property test of the daemon's bookkeeping: any interleaving of watch events, cycles, bind
outcomes and node changes keeps the ledger equal to the sum of what it says it holds.

The apiserver is replaced at the :class:`~xpupool.kube.transport.Transport` boundary by a
scripted fake whose bind answers are drawn by hypothesis (BOUND, 409 to another node, 404,
transport error); watch events are fed to the informer handlers directly. The real-apiserver
tests cover the wire; this one covers orderings a live test cannot force.

Invariants after every step:
  * ``state`` free capacity == capacity - sum of ``accounted`` allocations (cards and hosts), never
    negative, and no card holds more than 100 % compute or its memory;
  * every assumed pod is accounted; no pod is both pending and accounted;
  * a pod the (fake) apiserver has bound is accounted on the node it is bound to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xpupool.core.model import WHOLE_CARD_MILLI
from xpupool.kube.objects import ANN_ALLOCATION
from xpupool.kube.scheduler import KubeScheduler, SchedulerConfig
from xpupool.kube.testing import fake_node, fake_pod
from xpupool.kube.transport import ApiError, JsonDict, ListResult, Resource, TransportError, WatchEvent
from xpupool.plugins.profiles import build_scheduler


class ScriptedApi:
    """Enough of the Transport Protocol for the daemon; binds answer from ``bind_script``."""

    def __init__(self, bind_script: list[str]) -> None:
        self.bind_script = bind_script
        self.pods: dict[str, JsonDict] = {}
        self.rv = 100

    def bump(self, pod: JsonDict) -> JsonDict:
        self.rv += 1
        pod["metadata"]["resourceVersion"] = str(self.rv)
        return pod

    async def bind(self, namespace: str, name: str, node: str, **kw: Any) -> JsonDict:
        await asyncio.sleep(0)
        outcome = self.bind_script.pop(0) if self.bind_script else "ok"
        key = f"{namespace}/{name}"
        pod = self.pods.get(key)
        if pod is None or outcome == "gone":
            raise ApiError(404, "NotFound", "gone")
        if outcome == "error":
            raise TransportError("reset")
        if outcome == "elsewhere" or pod["spec"].get("nodeName"):
            if not pod["spec"].get("nodeName"):
                pod["spec"]["nodeName"] = "n-foreign"
                self.bump(pod)
            await asyncio.sleep(0)  # the answer travels back while the watch may already tell
            raise ApiError(409, "Conflict", "already assigned")
        pod["spec"]["nodeName"] = node
        pod["metadata"].setdefault("annotations", {}).update(kw.get("annotations") or {})
        self.bump(pod)
        await asyncio.sleep(0)
        return {"kind": "Status", "status": "Success"}

    async def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> JsonDict:
        pod = self.pods.get(f"{namespace}/{name}")
        if pod is None:
            raise ApiError(404, "NotFound", "gone")
        return pod

    async def create(self, resource: Resource, body: JsonDict, **kw: Any) -> JsonDict:
        return body

    async def patch(self, *a: Any, **kw: Any) -> JsonDict:
        return {}

    async def delete(self, *a: Any, **kw: Any) -> JsonDict:
        return {}

    async def list(self, *a: Any, **kw: Any) -> ListResult:
        return ListResult([], "1", "")

    async def watch(self, *a: Any, **kw: Any) -> AsyncIterator[WatchEvent]:  # pragma: no cover - unused
        if False:
            yield WatchEvent("BOOKMARK", {})

    async def replace(self, *a: Any, **kw: Any) -> JsonDict:
        return {}

    async def close(self) -> None:
        return None


def check_invariants(s: KubeScheduler, api: ScriptedApi) -> None:
    st_ = s.state
    used_milli = np.zeros_like(st_.card_free_milli)
    used_mem = np.zeros_like(st_.card_memory_free)
    for key, (allocation, _request) in s.accounted.items():
        assert key not in s.pending, f"{key} both pending and accounted"
        dev = st_.node_index[allocation.device_node]
        for card, mem in zip(allocation.cards, allocation.device_memory_mib, strict=True):
            slot = int(np.nonzero(st_.card_index[dev] == card)[0][0])
            used_milli[dev, slot] += allocation.share_milli
            used_mem[dev, slot] += mem
    expected_free = np.where(st_.card_exists, WHOLE_CARD_MILLI, 0) - used_milli
    assert (st_.card_free_milli == expected_free).all(), "ledger compute != sum of accounted allocations"
    assert (st_.card_memory_free == st_.card_memory_capacity - used_mem).all(), "ledger memory drift"
    assert (st_.card_free_milli >= 0).all() and (st_.card_memory_free >= 0).all(), "over-commit"
    assert set(s.assumed) <= set(s.accounted), "assumed but not accounted"
    for key, pod in api.pods.items():
        node = pod["spec"].get("nodeName")
        if node in st_.node_index and key in s.pods.store and s.pods.store[key]["spec"].get("nodeName"):
            assert key in s.accounted and s.accounted[key][0].node == node, f"bound {key} not accounted on {node}"


SIZES = st.sampled_from([(1, 10), (1, 25), (1, 50), (1, 100), (2, 100)])
STEP = st.one_of(
    st.tuples(st.just("create"), SIZES),
    st.tuples(st.just("cycle"), st.just(None)),
    st.tuples(st.just("settle"), st.integers(1, 4)),
    st.tuples(st.just("watch"), st.integers(0, 50)),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("foreign"), st.integers(1, 2)),
    st.tuples(st.just("cordon"), st.integers(0, 2)),
)


# Interleavings a random search rarely hits, pinned: the watch reports the 409's winner before
# the bind answer arrives; a pod deleted while its bind is in flight; a node change mid-bind.
@example(steps=[("create", (1, 50)), ("cycle", None), ("settle", 2), ("watch", 0), ("settle", 4)], binds=["elsewhere"])
@example(steps=[("create", (1, 50)), ("cycle", None), ("settle", 1), ("delete", 0), ("settle", 4)], binds=["ok"])
@example(
    steps=[
        ("create", (2, 100)),
        ("create", (1, 25)),
        ("cycle", None),
        ("settle", 2),
        ("cordon", 0),
        ("settle", 4),
        ("watch", 0),
        ("watch", 1),
        ("cycle", None),
    ],
    binds=["ok", "error"],
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(STEP, min_size=5, max_size=40),
    binds=st.lists(st.sampled_from(["ok", "ok", "ok", "elsewhere", "gone", "error"]), max_size=40),
)
def test_ledger_matches_accounted_under_any_interleaving(steps: list[tuple[str, Any]], binds: list[str]) -> None:
    asyncio.run(_run(steps, binds))


async def _run(steps: list[tuple[str, Any]], binds: list[str]) -> None:
    api = ScriptedApi(list(binds))
    config = SchedulerConfig(retry_backoff_s=(0.0, 0.0), preemption=False, queue_crd=False)
    s = KubeScheduler(api, scheduler=build_scheduler("binpack", seed=0), config=config)  # type: ignore[arg-type]
    nodes = {f"n{i}": fake_node(f"n{i}", cards=2, card_memory_mib=40960) for i in range(3)}
    nodes["n-foreign"] = fake_node("n-foreign", cards=2)
    for node in nodes.values():
        node["metadata"]["resourceVersion"] = "1"
        s.nodes._apply("ADDED", node)
    made = 0
    for op, arg in steps:
        if op == "create":
            count, core = arg
            pod = fake_pod("ns", f"p{made}", vxpu=count, core_pct=core)
            pod["metadata"]["uid"] = f"uid-{made}"
            made += 1
            api.pods[f"ns/{pod['metadata']['name']}"] = api.bump(pod)
            s.pods._apply("ADDED", _copy(pod))
        elif op == "cycle":
            s.cycle()
        elif op == "settle":  # let in-flight binds advance by a few steps
            for _ in range(arg):
                await asyncio.sleep(0)
        elif op == "watch" and api.pods:
            # deliver the current server version of one pod (as the watch would)
            key = sorted(api.pods)[arg % len(api.pods)]
            s.pods._apply("MODIFIED", _copy(api.pods[key]))
        elif op == "delete" and api.pods:
            key = sorted(api.pods)[arg % len(api.pods)]
            gone = api.pods.pop(key)
            s.pods._apply("DELETED", _copy(gone))
        elif op == "foreign":
            pod = fake_pod("kube", f"f{made}", scheduler="default-scheduler", whole_gpus=arg)
            pod["metadata"]["uid"] = f"uid-{made}"
            pod["spec"]["nodeName"] = f"n{made % 3}"
            made += 1
            api.pods[f"kube/{pod['metadata']['name']}"] = api.bump(pod)
            s.pods._apply("ADDED", _copy(pod))
        elif op == "cordon":
            node = _copy(nodes[f"n{arg}"])
            node["spec"] = {"unschedulable": not node.get("spec", {}).get("unschedulable", False)}
            nodes[f"n{arg}"] = node
            s.nodes._apply("MODIFIED", _copy(node))
            s.cycle()  # a node change rebuilds the ledger at the next cycle
        check_invariants(s, api)
    for _ in range(10):
        await asyncio.sleep(0)
    check_invariants(s, api)
    for task in list(s._tasks):
        task.cancel()
    await asyncio.gather(*s._tasks, return_exceptions=True)
    for pod in api.pods.values():
        raw = (pod["metadata"].get("annotations") or {}).get(ANN_ALLOCATION)
        if pod["spec"].get("nodeName") and raw:
            assert f'"node":"{pod["spec"]["nodeName"]}"' in raw  # annotation always names the bound node


def _copy(obj: JsonDict) -> JsonDict:
    import json

    copied: JsonDict = json.loads(json.dumps(obj))
    return copied
