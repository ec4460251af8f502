"""The node inventory: what the agent publishes on its Node, and how readers decode it.

Format (annotation ``xpupool.io/inventory`` on the Node, JSON, ``schemaVersion`` 1)::

    {"schemaVersion": 1, "generation": 7, "node": "gpu-3", "slotsPerCard": 10,
     "contentHash": "sha256:…",
     "devices": [{"uuid": "GPU-…", "index": 0, "vendor": "nvidia", "model": "H100-80GB-HBM3",
                  "memoryMiB": 81079, "healthy": true, "healthReason": "",
                  "topologyGroup": 0, "numaNode": 0, "heldBy": []}],
     "errors": ["…discovery problems, for humans…"]}

``serving`` (default true) is false while the node's kubelet cannot admit ``xpupool.io/vxpu``
pods: the device plugin is not registered, the kubelet does not list its devices as allocatable
yet (just after an agent or kubelet restart), the agent is stopping, or the container runtime
cannot inject CDI devices. The kubelet's own ``allocatable`` lags by a node-status period; the
scheduler binds no vXPU pod to a node that is not serving.

``heldBy`` names the pods that hold the card whole through another device plugin (e.g.
``"ml/train-0 (nvidia.com/gpu)"``), as the kubelet's PodResources API records them: the scheduler
never slices such a card (coexistence with the vendor's own device plugin).

Live samples go to a second annotation, ``xpupool.io/utilization`` (schemaVersion 1), written at
most every ``utilization_interval_s``::

    {"schemaVersion": 1, "inventoryGeneration": 7, "sampledAt": "2026-11-25T10:00:00Z",
     "cards": {"GPU-…": {"utilizationPct": 35, "memoryUsedMiB": 20480}}}

Why a Node annotation and not a CRD: the scheduler already watches Nodes (one informer, no extra
CRD watch, no ordering problem between two objects), the agent needs only ``patch`` on its own
Node (no CRD install before the first agent starts), and the inventory of up to 16 cards is a
few KiB (the 256 KiB annotation budget is far away). Live utilisation is kept out of the
inventory so that sampling does not bump ``generation`` and does not wake the scheduler; the
Prometheus exporter is the high-rate path.

Generation contract: ``generation`` changes iff ``contentHash`` (devices, health, slots) changes.
The agent keeps no local state: on start it reads the published inventory from the apiserver,
keeps its generation when the content is identical (so a restart publishes nothing) and uses
``published + 1`` otherwise. Readers must ignore documents whose ``schemaVersion`` they do not
know (:func:`parse_inventory` returns an error for them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xpupool.agent.discovery import DeviceInfo
from xpupool.core.model import Device, Vendor
from xpupool.core.request import DOMAIN

ANN_INVENTORY = f"{DOMAIN}/inventory"
ANN_UTILIZATION = f"{DOMAIN}/utilization"
SCHEMA_VERSION = 1


class InventoryDevice(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)
    uuid: str = Field(min_length=1)
    index: int = Field(ge=0)
    vendor: Vendor
    model: str
    memory_mib: int = Field(validation_alias="memoryMiB", serialization_alias="memoryMiB", ge=0)
    healthy: bool
    health_reason: str = Field(default="", validation_alias="healthReason", serialization_alias="healthReason")
    topology_group: int = Field(default=0, validation_alias="topologyGroup", serialization_alias="topologyGroup", ge=0)
    numa_node: int | None = Field(default=None, validation_alias="numaNode", serialization_alias="numaNode")
    held_by: tuple[str, ...] = Field(default=(), validation_alias="heldBy", serialization_alias="heldBy")


class Inventory(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)
    schema_version: int = Field(validation_alias="schemaVersion", serialization_alias="schemaVersion")
    generation: int = Field(ge=1)
    node: str
    slots_per_card: int = Field(validation_alias="slotsPerCard", serialization_alias="slotsPerCard", ge=1)
    content_hash: str = Field(validation_alias="contentHash", serialization_alias="contentHash")
    devices: tuple[InventoryDevice, ...] = ()
    errors: tuple[str, ...] = ()
    serving: bool = True

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, mode="json"), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class InventoryParse:
    """Either an inventory or why the text is not one we can use."""

    inventory: Inventory | None
    error: str = ""


def parse_inventory(text: str | None) -> InventoryParse:
    """Decode an ``xpupool.io/inventory`` annotation value; never raises."""
    if not text:
        return InventoryParse(None, "no inventory published")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        return InventoryParse(None, f"inventory is not JSON: {exc}")
    if not isinstance(raw, dict):
        return InventoryParse(None, "inventory is not a JSON object")
    version = raw.get("schemaVersion")
    if version != SCHEMA_VERSION:
        return InventoryParse(None, f"inventory schemaVersion {version!r} unknown (this reader knows {SCHEMA_VERSION})")
    try:
        return InventoryParse(Inventory.model_validate(raw))
    except ValidationError as exc:
        return InventoryParse(
            None,
            "inventory invalid: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()),
        )


def _inventory_devices(
    devices: Iterable[DeviceInfo], held: Mapping[str, Sequence[str]] | None = None
) -> tuple[InventoryDevice, ...]:
    held = held or {}
    ordered = sorted(devices, key=lambda d: (d.vendor.value, d.index, d.uuid))
    return tuple(
        InventoryDevice(
            uuid=d.uuid,
            index=d.index,
            vendor=d.vendor,
            model=d.model,
            memory_mib=d.memory_mib,
            healthy=d.healthy,
            health_reason=d.health_reason,
            topology_group=d.topology_group,
            numa_node=d.numa_node,
            held_by=tuple(sorted(held.get(d.uuid, ()))),
        )
        for d in ordered
    )


def content_hash(devices: tuple[InventoryDevice, ...], slots_per_card: int, serving: bool = True) -> str:
    body = json.dumps(
        {
            "devices": [d.model_dump(by_alias=True, mode="json") for d in devices],
            "slotsPerCard": slots_per_card,
            **({} if serving else {"serving": False}),  # unchanged hash for serving nodes
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def build_inventory(
    *,
    node: str,
    devices: Iterable[DeviceInfo],
    errors: Iterable[str],
    slots_per_card: int,
    published: Inventory | None,
    held: Mapping[str, Sequence[str]] | None = None,
    serving: bool = True,
) -> Inventory:
    """The inventory to publish now, given what is published (``None``: nothing usable).

    Keeps ``published.generation`` when the content is unchanged, else ``published.generation + 1``
    (1 when nothing is published). ``errors`` do not count as content (they are for humans).
    ``held`` maps card UUIDs to the pods holding them through another device plugin; ``serving``
    whether the kubelet admits ``xpupool.io/vxpu`` pods now (both are content).
    """
    inv_devices = _inventory_devices(devices, held)
    digest = content_hash(inv_devices, slots_per_card, serving)
    if published is None:
        generation = 1
    elif published.content_hash == digest and published.node == node:
        generation = published.generation
    else:
        generation = published.generation + 1
    return Inventory(
        schema_version=SCHEMA_VERSION,
        generation=generation,
        node=node,
        slots_per_card=slots_per_card,
        content_hash=digest,
        devices=inv_devices,
        errors=tuple(errors),
        serving=serving,
    )


def utilization_document(*, inventory: Inventory, devices: Iterable[DeviceInfo], sampled_at: str) -> str:
    """The ``xpupool.io/utilization`` annotation value for one sample (``sampled_at`` RFC 3339)."""
    cards: dict[str, dict[str, int]] = {}
    for d in devices:
        entry: dict[str, int] = {}
        if d.utilization_pct is not None:
            entry["utilizationPct"] = d.utilization_pct
        if d.memory_used_mib is not None:
            entry["memoryUsedMiB"] = d.memory_used_mib
        cards[d.uuid] = entry
    doc = {
        "schemaVersion": SCHEMA_VERSION,
        "inventoryGeneration": inventory.generation,
        "sampledAt": sampled_at,
        "cards": cards,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def core_devices(inventory: Inventory) -> tuple[Device, ...]:
    """The inventory as :class:`xpupool.core.model.Device` values (what the scheduler builds Nodes from)."""
    return tuple(
        Device(
            index=d.index,
            vendor=d.vendor,
            model=d.model,
            memory_mib=d.memory_mib,
            topology_group=d.topology_group,
            healthy=d.healthy,
            max_tenants=inventory.slots_per_card,
            held_by=d.held_by,
        )
        for d in inventory.devices
    )


def published_inventory(annotations: Mapping[str, Any] | None) -> Inventory | None:
    """The usable inventory in a Node's annotations, or ``None``."""
    if not annotations:
        return None
    return parse_inventory(annotations.get(ANN_INVENTORY)).inventory
