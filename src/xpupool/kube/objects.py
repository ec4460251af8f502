"""Translation between Kubernetes objects (JSON dicts) and :mod:`xpupool.core` values.

* :func:`pod_request` - a Pod -> core :class:`~xpupool.core.model.Request` (containers summed,
  init containers as the max, like kube-scheduler), via :func:`xpupool.core.request.parse_request`;
* :func:`node_model` - a Node -> core :class:`~xpupool.core.model.Node`. Cards come from the
  node annotation ``xpupool.io/inventory`` that the node agent publishes (``schemaVersion: 1``,
  format in docs/components.md; parsed here, not imported from the agent, per the layer rule) or,
  without it, from whole-card extended resources in ``status.allocatable`` (``nvidia.com/gpu: 8``)
  with the GPU-feature-discovery labels ``nvidia.com/gpu.product`` / ``nvidia.com/gpu.memory``
  (MiB); :func:`node_utilization` reads the agent's ``xpupool.io/utilization`` samples;
* the allocation annotation ``xpupool.io/allocation`` (:func:`encode_allocation`,
  :func:`decode_allocation`): the scheduler writes it on the pod BEFORE binding; it is the
  durable record from which a restarted scheduler rebuilds its ledger.

Annotation format (version 1, compact JSON)::

    {"v": 1, "node": "n1", "deviceNode": "n1", "cards": [0, 3], "shareMilli": 1000,
     "memoryMiB": [81920, 81920], "remoteMbps": 0}
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from xpupool.core.constraints import labels_of
from xpupool.core.model import Allocation, Device, Node, Request, Vendor
from xpupool.core.request import (
    DOMAIN,
    OUR_RESOURCES,
    WHOLE_CARD_RESOURCES,
    ParseResult,
    QuantityError,
    parse_quantity,
    parse_request,
)
from xpupool.kube.pod_constraints import node_taints, pod_constraints
from xpupool.kube.transport import JsonDict

ANN_ALLOCATION = f"{DOMAIN}/allocation"
ANN_INVENTORY = f"{DOMAIN}/inventory"
ANN_UTILIZATION = f"{DOMAIN}/utilization"
INVENTORY_SCHEMA = 1
ANN_POD_GROUP_MIN = f"{DOMAIN}/pod-group-min-member"
SCHEDULER_NAME = "xpupool"
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"
LABEL_GPU_MEMORY = "nvidia.com/gpu.memory"
DEFAULT_CARD_MEMORY_MIB = 81920

_CARD_RESOURCES = frozenset(WHOLE_CARD_RESOURCES) | OUR_RESOURCES


def pod_key(pod: JsonDict) -> str:
    meta = pod["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def _qty(raw: Any, unit: float = 1.0) -> int:
    try:
        return int(parse_quantity(raw) / unit + 0.999999)
    except QuantityError:
        return 0


def pod_request(pod: JsonDict) -> ParseResult:
    """The pod's request. Card resources come from limits (falling back to requests); CPU and
    memory from requests; labels and placement constraints from metadata and spec
    (:mod:`xpupool.kube.pod_constraints`). Never raises: problems are in ``ParseResult.errors``."""
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    resources: dict[str, float] = {}
    raw_resources: dict[str, str | int | float] = {}
    cpu_milli = 0
    memory_mib = 0
    for c in spec.get("containers") or []:
        res = c.get("resources") or {}
        limits = res.get("limits") or {}
        requests = res.get("requests") or {}
        for name in set(limits) | set(requests):
            if name in _CARD_RESOURCES or name.startswith(f"{DOMAIN}/"):
                raw: str | int | float = limits.get(name, requests.get(name, 0))
                try:
                    value = parse_quantity(raw)
                except QuantityError:
                    raw_resources[name] = raw  # let parse_request explain it
                    continue
                if name in (f"{DOMAIN}/vxpu-core", f"{DOMAIN}/vxpu-memory-percent", f"{DOMAIN}/vxpu-memory"):
                    resources[name] = max(resources.get(name, 0.0), value)  # per-card values
                else:
                    resources[name] = resources.get(name, 0.0) + value
        cpu_milli += _qty(requests.get("cpu", 0), 0.001)
        memory_mib += _qty(requests.get("memory", 0), 2**20)
    for c in spec.get("initContainers") or []:
        requests = (c.get("resources") or {}).get("requests") or {}
        cpu_milli = max(cpu_milli, _qty(requests.get("cpu", 0), 0.001))
        memory_mib = max(memory_mib, _qty(requests.get("memory", 0), 2**20))
    merged: dict[str, str | int | float] = {k: (int(v) if v == int(v) else v) for k, v in resources.items()}
    merged.update(raw_resources)
    parsed = parse_request(
        name=pod_key(pod),
        resources=merged,
        annotations=meta.get("annotations") or {},
        labels=meta.get("labels") or {},
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        priority=int(spec.get("priority") or 0),
        namespace=str(meta.get("namespace", "default")),
    )
    constraints, problems = pod_constraints(pod)
    if parsed.request is None or problems:
        return ParseResult(None, parsed.errors + problems)
    labels = labels_of({str(k): str(v) for k, v in (meta.get("labels") or {}).items()})
    return ParseResult(replace(parsed.request, labels=labels, constraints=constraints))


def pod_presence(pod: JsonDict) -> Request:
    """What a pod whose request cannot be parsed still holds and shows (another scheduler's pod,
    say): its name, namespace, labels, CPU/memory and the constraints that could be read, so it
    counts for inter-pod affinity and topology spread."""
    meta = pod.get("metadata") or {}
    cpu_milli = memory_mib = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        requests = (c.get("resources") or {}).get("requests") or {}
        cpu_milli += _qty(requests.get("cpu", 0), 0.001)
        memory_mib += _qty(requests.get("memory", 0), 2**20)
    constraints, _ = pod_constraints(pod)
    return Request(
        name=pod_key(pod),
        namespace=str(meta.get("namespace", "default")),
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        labels=labels_of({str(k): str(v) for k, v in (meta.get("labels") or {}).items()}),
        constraints=constraints,
    )


def node_model(node: JsonDict) -> Node:
    """The node as the core sees it (see the module docstring for where cards come from)."""
    meta = node.get("metadata") or {}
    status = node.get("status") or {}
    alloc: Mapping[str, Any] = status.get("allocatable") or status.get("capacity") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    devices: list[Device] = []
    inventory = _inventory(meta.get("annotations") or {})
    if inventory is not None:
        try:
            for d in inventory.get("devices") or []:
                devices.append(
                    Device(
                        index=int(d["index"]),
                        vendor=Vendor(d["vendor"]),
                        model=str(d.get("model", "")),
                        memory_mib=int(d["memoryMiB"]),
                        topology_group=int(d.get("topologyGroup", 0)),
                        healthy=bool(d.get("healthy", True)),
                    )
                )
        except (ValueError, KeyError, TypeError):
            devices = []  # unreadable inventory: treat as no cards rather than guess
    else:
        for name, (vendor, model) in WHOLE_CARD_RESOURCES.items():
            if name not in alloc:
                continue
            count = _qty(alloc[name])
            if count <= 0:
                continue
            product = labels.get(LABEL_GPU_PRODUCT, model or vendor.value) if vendor is Vendor.NVIDIA else model
            memory = _qty(labels.get(LABEL_GPU_MEMORY, DEFAULT_CARD_MEMORY_MIB))
            devices.extend(_card(len(devices) + i, vendor, product or vendor.value, memory) for i in range(count))
    devices.sort(key=lambda d: d.index)
    taints, unschedulable = node_taints(node)
    return Node(
        name=str(meta.get("name")),
        cpu_milli=_qty(alloc.get("cpu", 0), 0.001),
        memory_mib=_qty(alloc.get("memory", 0), 2**20),
        devices=tuple(devices),
        labels=dict(labels),
        taints=taints,
        unschedulable=unschedulable,
    )


@functools.lru_cache(maxsize=4096)
def _card(index: int, vendor: Vendor, model: str, memory_mib: int) -> Device:
    """Whole cards advertised as extended resources are alike: one frozen Device per kind, shared
    by every node (5,000 nodes x 16 cards would otherwise be 80,000 objects per rebuild)."""
    return Device(index=index, vendor=vendor, model=model, memory_mib=memory_mib)


def _inventory(annotations: Mapping[str, str]) -> JsonDict | None:
    raw = annotations.get(ANN_INVENTORY)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != INVENTORY_SCHEMA:
        return None  # unknown schema: ignore rather than misread (the agent documents this rule)
    return doc


def node_utilization(node: JsonDict) -> list[float] | None:
    """Per-card utilisation 0..1 in card-index order from ``xpupool.io/utilization``, or None.

    Samples of another inventory generation than the published one are ignored (cards may have
    changed in between)."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    inventory = _inventory(annotations)
    raw = annotations.get(ANN_UTILIZATION)
    if inventory is None or not raw:
        return None
    try:
        doc = json.loads(raw)
        if doc.get("schemaVersion") != 1 or doc.get("inventoryGeneration") != inventory.get("generation"):
            return None
        cards = doc.get("cards") or {}
        out: list[float] = []
        for d in sorted(inventory.get("devices") or [], key=lambda d: int(d["index"])):
            pct = (cards.get(d.get("uuid")) or {}).get("utilizationPct")
            out.append(float("nan") if pct is None else float(pct) / 100)
        return out
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def encode_allocation(allocation: Allocation) -> str:
    return json.dumps(
        {
            "v": 1,
            "node": allocation.node,
            "deviceNode": allocation.device_node,
            "cards": list(allocation.cards),
            "shareMilli": allocation.share_milli,
            "memoryMiB": list(allocation.device_memory_mib),
            "remoteMbps": allocation.remote_mbps,
        },
        separators=(",", ":"),
    )


def decode_allocation(pod: JsonDict) -> Allocation | None:
    """The allocation recorded on ``pod``, or None (absent or unreadable)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANN_ALLOCATION)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
        return Allocation(
            pod=pod_key(pod),
            node=str(doc["node"]),
            device_node=str(doc.get("deviceNode") or doc["node"]),
            cards=tuple(int(c) for c in doc["cards"]),
            share_milli=int(doc["shareMilli"]),
            device_memory_mib=tuple(int(m) for m in doc["memoryMiB"]),
            remote_mbps=int(doc.get("remoteMbps", 0)),
        )
    except (ValueError, KeyError, TypeError):
        return None


def pod_is_terminal(pod: JsonDict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def is_our_pod(pod: JsonDict) -> bool:
    return (pod.get("spec") or {}).get("schedulerName") == SCHEDULER_NAME
