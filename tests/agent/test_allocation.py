"""Allocation decoding, pod choice and per-vendor wiring (pure functions of the device plugin)."""

from __future__ import annotations

import dataclasses
import json

from xpupool.agent.allocation import (
    PendingPod,
    RuntimePaths,
    choose_pod,
    container_wiring,
    parse_allocation,
    pending_pods,
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


def pending(name: str, cards: tuple[int, ...], created: str, claimed: frozenset[str] = frozenset()) -> PendingPod:
    return PendingPod(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        resource_version="1",
        created=created,
        allocation=Allocation(
            pod=f"ns/{name}",
            node="n1",
            device_node="n1",
            cards=cards,
            share_milli=500,
            device_memory_mib=(1024,) * len(cards),
        ),
        claimed_ids=claimed,
    )


def test_choose_pod_prefers_claims_then_matching_cards_then_age() -> None:
    old = pending("old", (0,), "2026-01-01T00:00:00Z")
    match = pending("match", (3,), "2026-01-02T00:00:00Z")
    two = pending("two", (0, 1), "2025-01-01T00:00:00Z")
    done = pending("done", (3,), "2020-01-01T00:00:00Z", claimed=frozenset({"c3::1"}))
    pods = [old, match, two, done]
    assert choose_pod(pods, device_ids=["c3::1"], cards_of_ids=frozenset({3})) is done  # idempotent
    assert choose_pod(pods, device_ids=["c3::2"], cards_of_ids=frozenset({3})) is match
    assert choose_pod(pods, device_ids=["c5::0"], cards_of_ids=frozenset({5})) is old
    assert choose_pod(pods, device_ids=["a::0", "b::0"], cards_of_ids=frozenset({7, 8})) is two
    assert choose_pod(pods, device_ids=["a::0", "b::0", "c::0"], cards_of_ids=frozenset()) is None


def test_pending_pods_skips_finished_foreign_and_reports_broken() -> None:
    def pod(name: str, node: str, phase: str, annotation: str) -> dict[str, object]:
        return {
            "metadata": {"namespace": "ns", "name": name, "annotations": {"xpupool.io/allocation": annotation}},
            "spec": {"nodeName": node},
            "status": {"phase": phase},
        }

    good = json.dumps({"node": "n1", "cards": [0], "share_milli": 100, "device_memory_mib": [10]})
    pods, problems = pending_pods(
        [
            pod("a", "n1", "Pending", good),
            pod("b", "n2", "Pending", good),
            pod("c", "n1", "Succeeded", good),
            pod("d", "n1", "Pending", "[]"),
        ],
        node="n1",
    )
    assert [p.name for p in pods] == ["a"]
    assert problems == ["xpupool.io/allocation of ns/d is not a JSON object"]


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
    pod = pending("p", (2, 3), "t")
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

    remote = PendingPod(
        namespace="ns",
        name="r",
        uid="u",
        resource_version="1",
        created="t",
        allocation=Allocation(
            pod="ns/r", node="n1", device_node="gpu-9", cards=(0,), share_milli=1000, device_memory_mib=(1,)
        ),
    )
    errors = container_wiring(
        pod=remote, node="n1", device_ids=["x::0"], devices_by_index=emulated, paths=RuntimePaths()
    ).errors
    assert "remote vXPUs are wired by the remoting client" in errors[0]
    too_much = dataclasses.replace(
        pending("big", (0,), "t"),
        allocation=Allocation(
            pod="ns/big", node="n1", device_node="n1", cards=(0,), share_milli=1000, device_memory_mib=(70000,)
        ),
    )
    errors = container_wiring(
        pod=too_much, node="n1", device_ids=["x::0"], devices_by_index=emulated, paths=RuntimePaths()
    ).errors
    assert errors == ("ns/big: 70000 MiB asked on card 0 which has 65536 MiB",)
