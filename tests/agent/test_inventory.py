"""Inventory format, generation rules and the publisher against a fake apiserver over HTTP."""

from __future__ import annotations

import json

import pytest

from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.emulated import EmulatedConfig, devices_from_config
from xpupool.agent.inventory import (
    ANN_INVENTORY,
    ANN_UTILIZATION,
    SCHEMA_VERSION,
    build_inventory,
    core_devices,
    parse_inventory,
)
from xpupool.agent.kubeapi import ApiError, KubeApi
from xpupool.agent.publisher import InventoryPublisher
from xpupool.core.model import Device, Vendor

from .fake_apiserver import FakeApiServer


def cards(count: int = 2, *, healthy: bool = True, util: int | None = None) -> list[DeviceInfo]:
    config = EmulatedConfig.model_validate(
        {
            "cards": [
                {
                    "model": "EMU-80G",
                    "memory_mib": 81920,
                    "count": count,
                    "healthy": healthy,
                    "utilization_pct": util,
                    "memory_used_mib": 0 if util is None else util * 10,
                }
            ]
        }
    )
    return devices_from_config(config, node_name="n1")


def test_generation_changes_iff_content_changes() -> None:
    first = build_inventory(node="n1", devices=cards(), errors=[], slots_per_card=10, published=None)
    assert (first.generation, first.schema_version) == (1, SCHEMA_VERSION)
    same = build_inventory(
        node="n1", devices=reversed(cards()), errors=["a problem"], slots_per_card=10, published=first
    )
    assert same.generation == 1 and same.content_hash == first.content_hash  # order and errors are not content
    sick = build_inventory(node="n1", devices=cards(healthy=False), errors=[], slots_per_card=10, published=same)
    assert sick.generation == 2
    more_slots = build_inventory(node="n1", devices=cards(healthy=False), errors=[], slots_per_card=20, published=sick)
    assert more_slots.generation == 3


def test_round_trip_and_readers_reject_unknown_versions() -> None:
    inv = build_inventory(node="n1", devices=cards(), errors=[], slots_per_card=10, published=None)
    parsed = parse_inventory(inv.to_json())
    assert parsed.inventory == inv
    doc = json.loads(inv.to_json())
    assert doc["devices"][0] == {
        "uuid": "EMU-n1-0",
        "index": 0,
        "vendor": "emulated",
        "model": "EMU-80G",
        "memoryMiB": 81920,
        "healthy": True,
        "healthReason": "",
        "topologyGroup": 0,
        "numaNode": None,
        "heldBy": [],
    }
    expected = Device(index=1, vendor=Vendor.EMULATED, model="EMU-80G", memory_mib=81920, max_tenants=10)
    assert core_devices(inv)[1] == expected
    doc["schemaVersion"] = 2
    assert "schemaVersion 2 unknown" in parse_inventory(json.dumps(doc)).error
    assert parse_inventory("{").error.startswith("inventory is not JSON")
    assert parse_inventory(None).inventory is None
    doc["schemaVersion"] = 1
    doc["generation"] = 0
    assert "generation" in parse_inventory(json.dumps(doc)).error


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_publisher_is_idempotent_and_survives_restart(apiserver: FakeApiServer, kube: KubeApi) -> None:
    """A restarted agent (new publisher, no local state) with unchanged cards patches nothing;
    a health change bumps the generation once; utilisation is rate-limited."""
    apiserver.add_node("n1", {"other.io/keep": "yes"})
    clock = Clock()
    publisher = InventoryPublisher(
        kube,
        node="n1",
        slots_per_card=10,
        utilization_interval_s=30,
        monotonic=clock,
        wall_clock=lambda: "2026-11-25T10:00:00Z",
    )
    out = await publisher.publish(cards(util=5), [])
    assert (out.inventory.generation, out.inventory_patched, out.utilization_patched) == (1, True, True)
    annotations = apiserver.nodes["n1"]["metadata"]["annotations"]
    assert annotations["other.io/keep"] == "yes"
    assert parse_inventory(annotations[ANN_INVENTORY]).inventory == out.inventory
    util = json.loads(annotations[ANN_UTILIZATION])
    assert util["cards"]["EMU-n1-0"] == {"utilizationPct": 5, "memoryUsedMiB": 50}
    assert util["inventoryGeneration"] == 1

    clock.now = 10  # utilisation changed but the interval has not passed: nothing written
    out = await publisher.publish(cards(util=60), [])
    assert (out.inventory_patched, out.utilization_patched) == (False, False)

    restarted = InventoryPublisher(kube, node="n1", slots_per_card=10, utilization_interval_s=30, monotonic=clock)
    before = len(apiserver.requests)
    restarted._last_util_s = clock.now  # the restart happens right after a utilisation write
    out = await restarted.publish(cards(util=60), [])
    assert out.inventory.generation == 1 and not out.inventory_patched
    assert [m for m, _ in apiserver.requests[before:]] == ["GET"]  # read once, no write

    out = await restarted.publish(cards(healthy=False), [])
    assert (out.inventory.generation, out.inventory_patched, out.utilization_patched) == (2, True, True)
    clock.now = 45
    out = await restarted.publish(cards(healthy=False, util=7), [])
    assert (out.inventory.generation, out.inventory_patched, out.utilization_patched) == (2, False, True)


async def test_publisher_rereads_after_api_errors(apiserver: FakeApiServer, kube: KubeApi) -> None:
    apiserver.add_node("n1")
    publisher = InventoryPublisher(kube, node="n1", slots_per_card=10)
    await publisher.publish(cards(), [])
    # Someone else (an older agent, a human) rewrote the inventory with a higher generation.
    doc = json.loads(apiserver.nodes["n1"]["metadata"]["annotations"][ANN_INVENTORY])
    doc["generation"] = 41
    doc["contentHash"] = "sha256:other"
    apiserver.nodes["n1"]["metadata"]["annotations"][ANN_INVENTORY] = json.dumps(doc)
    apiserver.fail_next.append(500)
    with pytest.raises(ApiError) as err:
        await publisher.publish(cards(2, healthy=False), [])
    assert err.value.status == 500
    out = await publisher.publish(cards(2, healthy=False), [])
    assert out.inventory.generation == 42 and out.inventory_patched


async def test_missing_node_is_an_api_error(apiserver: FakeApiServer, kube: KubeApi) -> None:
    with pytest.raises(ApiError) as err:
        await InventoryPublisher(kube, node="ghost", slots_per_card=10).publish(cards(), [])
    assert err.value.status == 404 and "node not found" in err.value.message
