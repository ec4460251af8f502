"""The pool snapshot from apiserver objects (pure; the live tests cover the common path on a real
cluster): the cases a real cluster makes rare — other schedulers' whole-card pods, a broken
allocation, an invalid request, broken remote sessions, a silent agent, a queue without status."""

from __future__ import annotations

import datetime as dt
import json

from xpupool.core.model import Allocation
from xpupool.kube.objects import encode_allocation
from xpupool.kube.testing import fake_node, fake_pod
from xpupool.kube.transport import JsonDict
from xpupool.view.build import build_snapshot
from xpupool.view.usage import CardUsage, NodeUsage, SliceUsage, parse_agent_metrics

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def bound(pod: JsonDict, node: str, allocation: Allocation | None = None, phase: str = "Running") -> JsonDict:
    pod["spec"]["nodeName"] = node
    pod["status"] = {"phase": phase}
    pod["metadata"]["uid"] = pod["metadata"]["name"] + "-uid"
    if allocation is not None:
        pod["metadata"]["annotations"]["xpupool.io/allocation"] = encode_allocation(allocation)
    return pod


def alloc(pod: str, node: str, cards: tuple[int, ...], share: int, mib: int, device_node: str = "") -> Allocation:
    return Allocation(pod=f"ns/{pod}", node=node, device_node=device_node or node, cards=cards, share_milli=share,
                      device_memory_mib=(mib,) * len(cards), remote_mbps=1000 if device_node else 0)


def test_the_cases_a_real_cluster_makes_rare() -> None:
    not_ready = fake_node("gpu-b", cards=1)
    not_ready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    nodes = [fake_node("gpu-a", cards=2, card_memory_mib=40960), not_ready, fake_node("cpu", cards=0)]
    created = (NOW - dt.timedelta(seconds=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    invalid = fake_pod("ns", "bad", vxpu=1, core_pct=0)
    invalid["metadata"]["creationTimestamp"] = created
    pods = [
        bound(fake_pod("ns", "s1", vxpu=1, core_pct=30, memory_mib=4096), "gpu-a",
              alloc("s1", "gpu-a", (0,), 300, 4096)),
        bound(fake_pod("ns", "whole", scheduler="default-scheduler", whole_gpus=1), "gpu-a"),
        bound(fake_pod("ns", "ghost", vxpu=1, core_pct=10), "gpu-a", alloc("ghost", "gpu-a", (7,), 100, 1024)),
        bound(fake_pod("ns", "r1", vxpu=1, core_pct=20), "cpu", alloc("r1", "cpu", (0,), 200, 2048, "gpu-b")),
        bound(fake_pod("ns", "r2", vxpu=1, core_pct=20), "cpu", alloc("r2", "cpu", (0,), 200, 2048, "gone")),
        bound(fake_pod("ns", "done", vxpu=1, core_pct=50), "gpu-a", alloc("done", "gpu-a", (1,), 500, 1), "Succeeded"),
        invalid,
    ]
    queue = {"metadata": {"name": "q1"}, "spec": {"namespaces": ["ns"]}}
    usage = {"gpu-a": NodeUsage({"GPU-gpu-a-0": CardUsage(55.0, 9000.0)},
                                {("ns", "s1", "GPU-gpu-a-0"): SliceUsage(2048.0, 28.0)}),
             "gpu-b": None}
    snap = build_snapshot(nodes=nodes, pods=pods, queues=[queue], usage=usage, now=NOW)
    a, b = snap.node("gpu-a"), snap.node("gpu-b")
    assert a is not None and b is not None
    (s1,) = a.cards[0].slices
    assert (s1.pod, s1.share_pct, s1.memory_used_mib, s1.utilization_pct) == ("s1", 30.0, 2048.0, 28.0)
    assert (a.cards[0].utilization_pct, a.cards[0].free_pct, a.cards[0].free_memory_mib) == (55.0, 70.0, 36864)
    assert a.cards[1].slices == ()  # the Succeeded pod holds nothing
    assert [(o.pod, o.cards) for o in a.other_pods] == [("whole", 1)]  # kubelet-chosen card: counted, not drawn
    assert any("ns/ghost" in w and "card 7" in w for w in snap.warnings)
    assert (a.agent_reachable, b.agent_reachable, b.schedulable, b.ready) == (True, False, False, False)
    assert b.cards[0].utilization_pct is None  # a silent agent: no figure, not 0
    problems = {r.pod: r.problem for r in snap.remote}
    assert problems == {"r1": "device_node_not_ready", "r2": "device_node_missing"}
    (pending,) = snap.pending
    assert pending.pod == "bad" and pending.reason.startswith("invalid accelerator request") and pending.waiting_s == 90
    q1 = next(q for q in snap.queues if q.name == "q1")
    assert q1.declared and not q1.reported and any("q1: no status" in w for w in snap.warnings)
    json.dumps(snap.to_json(), allow_nan=False)  # the page's JSON.parse takes it: no NaN, no Infinity


def test_agent_metrics_are_parsed_by_the_labels_the_agent_exports() -> None:
    text = """# TYPE xpupool_card_utilization_percent gauge
xpupool_card_utilization_percent{index="0",model="H100",node="n",uuid="GPU-0",vendor="nvidia"} 41.0
# TYPE xpupool_vxpu_memory_used_bytes gauge
xpupool_vxpu_memory_used_bytes{device="GPU-0",namespace="ns",node="n",pod="p",queue="q",slice="a"} 1048576.0
xpupool_vxpu_memory_used_bytes{device="GPU-0",namespace="ns",node="n",pod="p",queue="q",slice="b"} 2097152.0
xpupool_vxpu_memory_used_bytes{device="GPU-0",namespace="",node="n",pod="",queue="",slice="c"} 9.0
# TYPE xpupool_vxpu_share_measured_ratio gauge
xpupool_vxpu_share_measured_ratio{device="GPU-0",namespace="ns",node="n",pod="p",queue="q",slice="a"} 0.25
"""
    usage = parse_agent_metrics(text)
    assert usage.cards == {"GPU-0": CardUsage(41.0, None)}
    # two containers of one pod on one card add up; a slice of no known pod is not attributed
    assert usage.slices == {("ns", "p", "GPU-0"): SliceUsage(3.0, 25.0)}


def test_live_cli_default_scheduler_name_is_the_schedulers() -> None:
    """The CLI keeps its own copy (importing kube.objects would pull aiohttp into every command)."""
    from xpupool.cli import live
    from xpupool.kube import objects

    assert live.SCHEDULER_NAME == objects.SCHEDULER_NAME
