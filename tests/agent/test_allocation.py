"""Allocation decoding, the container's part of a pod's allocation, per-vendor wiring (pure)."""

from __future__ import annotations

import dataclasses
import json

from xpupool.agent.allocation import (
    PodSlice,
    RuntimePaths,
    container_slice,
    container_wiring,
    parse_allocation,
)
from xpupool.agent.discovery import DeviceInfo
from xpupool.core.model import Allocation, Vendor


def test_both_allocation_spellings_decode_to_the_same_value() -> None:
    snake = {
        "node": "n1",
        "device_node": "n1",
        "cards": [0, 2],
        "share_milli": 1000,
        "device_memory_mib": [65536, 65536],
    }
    camel = {
        "v": 1,
        "node": "n1",
        "deviceNode": "n1",
        "cards": [0, 2],
        "shareMilli": 1000,
        "memoryMiB": [65536, 65536],
        "remoteMbps": 0,
    }
    a = parse_allocation(json.dumps(snake), pod="ns/p").allocation
    b = parse_allocation(json.dumps(camel), pod="ns/p").allocation
    assert (
        a
        == b
        == Allocation(
            pod="ns/p", node="n1", device_node="n1", cards=(0, 2), share_milli=1000, device_memory_mib=(65536, 65536)
        )
    )


def test_bad_allocations_explain_themselves() -> None:
    assert "is not JSON" in parse_allocation("{", pod="ns/p").errors[0]
    assert "unknown version 2" in parse_allocation('{"v": 2}', pod="ns/p").errors[0]
    errors = parse_allocation(
        json.dumps({"node": "n1", "cards": [1, 1], "share_milli": 0, "device_memory_mib": [1]}), pod="ns/p"
    ).errors
    assert [e.split(": ", 1)[1] for e in errors] == [
        "cards must not repeat a card",
        "share_milli must be 1..1000",
        "device_memory_mib needs one entry per card",
    ]


def pending(name: str, cards: tuple[int, ...]) -> PodSlice:
    return PodSlice(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        allocation=Allocation(
            pod=f"ns/{name}",
            node="n1",
            device_node="n1",
            cards=cards,
            share_milli=500,
            device_memory_mib=(1024,) * len(cards),
        ),
        container="main",
    )


def pod_json(containers: list[dict[str, object]], annotation: str | None, node: str = "n1") -> dict[str, object]:
    annotations = {"xpupool.io/allocation": annotation} if annotation is not None else {}
    return {
        "metadata": {"namespace": "ns", "name": "p", "uid": "u1", "annotations": annotations},
        "spec": {"nodeName": node, **containers_spec(containers)},
    }


def containers_spec(containers: list[dict[str, object]]) -> dict[str, object]:
    init = [c for c in containers if c.get("init")]
    app = [c for c in containers if not c.get("init")]
    strip = [{k: v for k, v in c.items() if k != "init"} for c in init]
    return {"initContainers": strip, "containers": app}


def asks(name: str, cards: int, **extra: object) -> dict[str, object]:
    return {"name": name, "resources": {"limits": {"xpupool.io/vxpu": str(cards)}}, **extra}


def test_each_vxpu_container_takes_its_cards_in_container_order() -> None:
    """App containers in spec order; containers that ask for no vXPU take none; init containers
    take none (refused); the counts must add up to the allocation's cards."""
    allocation = json.dumps(
        {"v": 1, "node": "n1", "deviceNode": "n1", "cards": [4, 2, 7], "shareMilli": 300, "memoryMiB": [10, 20, 30]}
    )
    pod = pod_json(
        [
            asks("logger", 0),
            asks("first", 1),
            asks("app", 2),
            {"name": "plain"},
            asks("sidecar", 1, init=True, restartPolicy="Always"),
        ],
        allocation,
    )
    first = container_slice(pod, container="first", node="n1").slice
    app = container_slice(pod, container="app", node="n1").slice
    assert first is not None and app is not None
    assert (first.allocation.cards, first.allocation.device_memory_mib) == ((4,), (10,))
    assert (app.allocation.cards, app.allocation.device_memory_mib) == ((2, 7), (20, 30))
    assert "init container 'sidecar' cannot use vXPUs" in container_slice(pod, container="sidecar", node="n1").errors[0]
    assert app.allocation.share_milli == 300
    assert (app.key, app.uid, app.container) == ("ns/p", "u1", "app")
    plain = container_slice(pod, container="plain", node="n1")
    assert plain.errors == ("ns/p: container 'plain' requests no xpupool.io/vxpu",)

    too_few = pod_json([asks("app", 1)], allocation)
    assert "its containers request 1 vXPU(s) but the allocation has 3 card(s)" in container_slice(
        too_few, container="app", node="n1"
    ).errors[0]
    elsewhere = container_slice(pod_json([asks("app", 3)], allocation, node="n2"), container="app", node="n1")
    assert elsewhere.errors == ("ns/p is bound to 'n2', not to this node n1",)
    unscheduled = container_slice(pod_json([asks("app", 1)], None), container="app", node="n1")
    assert "no xpupool.io/allocation annotation" in unscheduled.errors[0]
    assert "schedulerName: xpupool" in unscheduled.errors[0]
    assert "is not a JSON object" in container_slice(pod_json([asks("a", 1)], "[]"), container="a", node="n1").errors[0]


def card(vendor: Vendor, index: int, paths: tuple[str, ...], healthy: bool = True) -> DeviceInfo:
    return DeviceInfo(
        uuid=f"{vendor.value}-{index}",
        index=index,
        vendor=vendor,
        model="m",
        memory_mib=65536,
        healthy=healthy,
        device_paths=paths,
    )


def test_wiring_per_vendor() -> None:
    pod = pending("p", (2, 3))
    ascend = {i: card(Vendor.ASCEND, i, (f"/dev/davinci{i}", "/dev/davinci_manager")) for i in range(4)}
    wiring = container_wiring(
        pod=pod, node="n1", device_ids=["x::0", "y::0"], devices_by_index=ascend, paths=RuntimePaths()
    ).wiring
    assert wiring is not None
    assert wiring.envs["ASCEND_VISIBLE_DEVICES"] == "2,3"
    assert wiring.envs["XPUPOOL_MEMORY_LIMIT_MIB"] == "1024,1024" and wiring.envs["XPUPOOL_CORE_LIMIT_PCT"] == "50"
    assert [d[0] for d in wiring.devices] == ["/dev/davinci2", "/dev/davinci_manager", "/dev/davinci3"]

    amd = {i: card(Vendor.AMD, i, ("/dev/kfd", f"/dev/dri/renderD{128 + i}")) for i in range(4)}
    wiring = container_wiring(
        pod=pod, node="n1", device_ids=["x::0"], devices_by_index=amd, paths=RuntimePaths()
    ).wiring
    assert wiring is not None and wiring.envs["HIP_VISIBLE_DEVICES"] == "0,1"
    assert [d[0] for d in wiring.devices] == ["/dev/kfd", "/dev/dri/renderD130", "/dev/dri/renderD131"]

    emulated = {i: card(Vendor.EMULATED, i, ()) for i in range(4)}
    wiring = container_wiring(
        pod=pod, node="n1", device_ids=["x::0"], devices_by_index=emulated, paths=RuntimePaths()
    ).wiring
    assert wiring is not None and wiring.envs["XPUPOOL_EMULATED_VISIBLE_DEVICES"] == "2,3" and wiring.devices == []

    remote = PodSlice(
        namespace="ns",
        name="r",
        uid="u",
        allocation=Allocation(
            pod="ns/r", node="n1", device_node="gpu-9", cards=(0,), share_milli=1000, device_memory_mib=(1,)
        ),
    )
    errors = container_wiring(
        pod=remote, node="n1", device_ids=["x::0"], devices_by_index=emulated, paths=RuntimePaths()
    ).errors
    assert "remote vXPUs are wired by the remoting client" in errors[0]
    too_much = dataclasses.replace(
        pending("big", (0,)),
        allocation=Allocation(
            pod="ns/big", node="n1", device_node="n1", cards=(0,), share_milli=1000, device_memory_mib=(70000,)
        ),
    )
    errors = container_wiring(
        pod=too_much, node="n1", device_ids=["x::0"], devices_by_index=emulated, paths=RuntimePaths()
    ).errors
    assert errors == ("ns/big: 70000 MiB asked on card 0 which has 65536 MiB",)
