"""Translation of Kubernetes objects to core values, and the allocation annotation round trip.

Pure tests: no apiserver. Pods and nodes are the JSON an apiserver returns.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from xpupool.core.constraints import Effect, Taint
from xpupool.core.model import Allocation, Vendor
from xpupool.kube.objects import (
    ANN_ALLOCATION,
    decode_allocation,
    encode_allocation,
    node_model,
    pod_request,
)
from xpupool.kube.testing import fake_node, fake_pod


def test_fractional_pod_becomes_a_sharing_request() -> None:
    pod = fake_pod("ns", "p", vxpu=1, core_pct=30, memory_mib=8192, cpu="1500m")
    pod["spec"]["priority"] = 1000
    pod["metadata"]["labels"] = {"xpupool.io/queue": "team-a"}
    parsed = pod_request(pod)
    assert parsed.ok, parsed.errors
    req = parsed.request
    assert req is not None
    assert (req.name, req.count, req.share_milli, req.device_memory_mib) == ("ns/p", 1, 300, 8192)
    assert (req.cpu_milli, req.priority, req.queue, req.is_sharing) == (1500, 1000, "team-a", True)


def test_containers_are_summed_and_bad_requests_explained() -> None:
    pod = fake_pod("ns", "p", whole_gpus=1)
    pod["spec"]["containers"].append(json.loads(json.dumps(pod["spec"]["containers"][0])) | {"name": "side"})
    req = pod_request(pod).request
    assert req is not None and req.count == 2 and req.exclusive and req.vendor is Vendor.NVIDIA
    bad = fake_pod("ns", "q", vxpu=2, core_pct=30)  # a share below 100 % is for one card only
    parsed = pod_request(bad)
    assert not parsed.ok and any("one card" in e for e in parsed.errors)


def test_node_inventory_from_annotation_and_from_extended_resources() -> None:
    annotated = node_model(fake_node("a", cards=4, card_memory_mib=40960, model="A100"))
    assert [d.index for d in annotated.devices] == [0, 1, 2, 3]
    assert {(d.model, d.memory_mib) for d in annotated.devices} == {("A100", 40960)}
    assert annotated.cpu_milli == 64000 and annotated.memory_mib == 512 * 1024
    assert {(d.max_tenants, d.held_by) for d in annotated.devices} == {(10, ())}
    assert annotated.vxpu_slots == 40  # the kubelet's allocatable xpupool.io/vxpu
    gfd_node = fake_node("b", cards=8, card_memory_mib=81920, inventory="extended-resource")
    assert node_model(gfd_node).devices == ()  # no inventory: no guessing unless the operator opts in
    gfd = node_model(gfd_node, guess_whole_cards=True)
    assert len(gfd.devices) == 8 and gfd.devices[0].vendor is Vendor.NVIDIA and gfd.devices[0].memory_mib == 81920
    assert gfd.vxpu_slots == 0  # nothing serves xpupool.io/vxpu there


def test_held_cards_and_an_unserved_node_reach_the_core() -> None:
    node = fake_node("c", cards=2)
    doc = json.loads(node["metadata"]["annotations"]["xpupool.io/inventory"])
    doc["devices"][1]["heldBy"] = ["ml/train-0 (nvidia.com/gpu)"]
    node["metadata"]["annotations"]["xpupool.io/inventory"] = json.dumps(doc)
    del node["status"]["allocatable"]["xpupool.io/vxpu"]
    model = node_model(node)
    assert [d.held_by for d in model.devices] == [(), ("ml/train-0 (nvidia.com/gpu)",)]
    assert model.vxpu_slots == 0


def test_node_taints_cordon_and_readiness_reach_the_core() -> None:
    """Taints and cordons are data for the core's filters (a tainted GPU pool stays usable by
    pods that tolerate it); Ready=False/Unknown become the lifecycle controller's taints."""
    node = fake_node("n")
    assert node_model(node).taints == () and not node_model(node).unschedulable
    assert node_model(node | {"spec": {"unschedulable": True}}).unschedulable
    tainted = node | {"spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                                          {"key": "k", "effect": "PreferNoSchedule"}]}}
    assert node_model(tainted).taints == (
        Taint("nvidia.com/gpu", "present", Effect.NO_SCHEDULE),
        Taint("k", "", Effect.PREFER_NO_SCHEDULE),
    )
    not_ready = json.loads(json.dumps(node))
    not_ready["status"]["conditions"][0]["status"] = "False"
    assert node_model(not_ready).taints == (Taint("node.kubernetes.io/not-ready", "", Effect.NO_SCHEDULE),)
    not_ready["status"]["conditions"][0]["status"] = "Unknown"
    assert node_model(not_ready).taints == (Taint("node.kubernetes.io/unreachable", "", Effect.NO_SCHEDULE),)


@given(
    cards=st.lists(st.integers(0, 15), min_size=1, max_size=8, unique=True),
    share=st.integers(1, 1000),
    memory=st.integers(0, 200_000),
    remote=st.booleans(),
)
def test_allocation_annotation_round_trip(cards: list[int], share: int, memory: int, remote: bool) -> None:
    allocation = Allocation(
        pod="ns/p",
        node="n1",
        device_node="gpu-7" if remote else "n1",
        cards=tuple(cards),
        share_milli=share,
        device_memory_mib=tuple(memory for _ in cards),
        remote_mbps=500 if remote else 0,
    )
    pod = {"metadata": {"namespace": "ns", "name": "p", "annotations": {ANN_ALLOCATION: encode_allocation(allocation)}}}
    assert decode_allocation(pod) == allocation


def test_unreadable_annotation_is_none_not_an_exception() -> None:
    for raw in ("", "{", '{"v":1}', '{"node":"n","cards":"x","shareMilli":1,"memoryMiB":[]}'):
        assert (
            decode_allocation({"metadata": {"namespace": "ns", "name": "p", "annotations": {ANN_ALLOCATION: raw}}})
            is None
        )


def test_reads_exactly_what_the_node_agent_publishes() -> None:
    """Contract with xpupool.agent.inventory: its published annotations -> our core Node."""
    from xpupool.agent.discovery import DeviceInfo
    from xpupool.agent.inventory import (
        ANN_INVENTORY,
        ANN_UTILIZATION,
        build_inventory,
        core_devices,
        utilization_document,
    )
    from xpupool.kube.objects import node_utilization

    found = [
        DeviceInfo(
            uuid=f"GPU-{i}",
            index=i,
            vendor=Vendor.NVIDIA,
            model="H100-80GB-HBM3",
            memory_mib=81079,
            healthy=i != 2,
            health_reason="" if i != 2 else "XID 79",
            utilization_pct=10 * i,
            topology_group=i // 2,
        )
        for i in (3, 0, 2, 1)
    ]
    inventory = build_inventory(node="gpu-3", devices=found, errors=(), slots_per_card=10, published=None)
    node = fake_node("gpu-3")
    node["metadata"]["annotations"] = {
        ANN_INVENTORY: inventory.to_json(),
        ANN_UTILIZATION: utilization_document(inventory=inventory, devices=found, sampled_at="2026-11-25T10:00:00Z"),
    }
    model = node_model(node)
    assert model.devices == tuple(sorted(core_devices(inventory), key=lambda d: d.index))
    assert [d.healthy for d in model.devices] == [True, True, False, True]
    assert node_utilization(node) == [0.0, 0.1, 0.2, 0.3]
    stale = json.loads(node["metadata"]["annotations"][ANN_UTILIZATION]) | {"inventoryGeneration": 99}
    node["metadata"]["annotations"][ANN_UTILIZATION] = json.dumps(stale)
    assert node_utilization(node) is None  # samples of another generation are ignored
    node["metadata"]["annotations"][ANN_INVENTORY] = json.dumps({"schemaVersion": 2, "devices": []})
    assert node_model(node).devices == ()  # unknown schema: no cards rather than a misread
