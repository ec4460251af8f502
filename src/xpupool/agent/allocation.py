"""From the scheduler's allocation to one container's runtime wiring (pure functions).

Hand-off contract (scheduler -> node): before binding, the scheduler writes the pod annotation
``xpupool.io/allocation``::

    {"node": "gpu-3", "device_node": "gpu-3", "cards": [0, 2], "share_milli": 1000,
     "device_memory_mib": [81079, 81079]}

``cards`` are card indexes on ``device_node`` (the inventory's ``index``), ``device_memory_mib`` is
one entry per card. The kubelet then calls the device plugin's ``Allocate`` with slot IDs it picked
by count (it never sees the scheduler's choice and does not say which pod it serves), so the
plugin finds the pod with :func:`choose_pod`:

1. a pod on this node whose ``xpupool.io/allocated`` claim names exactly these slot IDs (a repeated
   ``Allocate`` for the same container is answered the same way: idempotent);
2. else an unclaimed pod whose allocation has as many cards as slot IDs were given, preferring the
   one whose cards are exactly the cards of the slot IDs (``GetPreferredAllocation`` steers the
   kubelet towards that), then the oldest (creation time, then namespace/name);

and claims it by writing ``xpupool.io/allocated`` with the pod's resourceVersion (optimistic
concurrency; a 409 means re-list and choose again). The wiring always follows the *scheduler's*
cards, never the kubelet's slot IDs: slots are only capacity accounting.

Limitations (documented in docs/components.md): one vXPU-requesting container per pod; two
unclaimed pods with the same card count and no cards hint are told apart only by age (the kubelet
admits pods in creation order). The planned replacement is an NRI hook that sees the pod UID.

Wiring (environment, mounts, device nodes) per container, for an allocation of cards C:

* ``LD_PRELOAD`` = the shim inside the container, ``XPUPOOL_SHIM_REGION`` (and ``XPUSHIM_REGION``,
  the name the C shim reads) = the per-container shared region file
  (``/run/xpupool/shim/region``, the shim's default path, in a per-container host directory),
  ``XPUPOOL_MEMORY_LIMIT_MIB`` = per-card limits, comma-separated in the order of the visible
  devices, ``XPUPOOL_CORE_LIMIT_PCT`` = compute share in percent;
* NVIDIA: ``CUDA_VISIBLE_DEVICES`` and ``NVIDIA_VISIBLE_DEVICES`` = card UUIDs (never positions);
  Ascend: ``ASCEND_VISIBLE_DEVICES`` = logical device ids; AMD: ``HIP_VISIBLE_DEVICES`` = 0..n-1
  (only the allocated render nodes are in the container, so HIP numbers them from 0);
  emulated: ``XPUPOOL_EMULATED_VISIBLE_DEVICES`` = card indexes;
* device nodes of the allocated cards plus the vendor's control nodes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from xpupool.agent.discovery import DeviceInfo
from xpupool.core.model import WHOLE_CARD_MILLI, Allocation, Vendor
from xpupool.core.request import DOMAIN

ANN_ALLOCATION = f"{DOMAIN}/allocation"
ANN_ALLOCATED = f"{DOMAIN}/allocated"
SLOT_SEPARATOR = "::"


def slot_id(uuid: str, slot: int) -> str:
    return f"{uuid}{SLOT_SEPARATOR}{slot}"


def card_of_slot(device_id: str) -> str:
    """The card UUID of a slot ID (``"<uuid>::<slot>"``)."""
    return device_id.rsplit(SLOT_SEPARATOR, 1)[0]


@dataclass(frozen=True, slots=True)
class AllocationParse:
    allocation: Allocation | None
    errors: tuple[str, ...] = ()


def parse_allocation(text: str | None, *, pod: str) -> AllocationParse:
    """Decode an ``xpupool.io/allocation`` annotation; every problem becomes a message."""
    if not text:
        return AllocationParse(None, (f"pod {pod} has no {ANN_ALLOCATION} annotation",))
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        return AllocationParse(None, (f"{ANN_ALLOCATION} of {pod} is not JSON: {exc}",))
    if not isinstance(raw, dict):
        return AllocationParse(None, (f"{ANN_ALLOCATION} of {pod} is not a JSON object",))
    errors: list[str] = []
    if "v" in raw:
        # The scheduler's versioned camelCase form (xpupool.kube.objects.encode_allocation).
        if raw["v"] != 1:
            return AllocationParse(None, (f"{ANN_ALLOCATION} of {pod}: unknown version {raw['v']!r}",))
        raw = {
            "node": raw.get("node"),
            "device_node": raw.get("deviceNode") or raw.get("node"),
            "cards": raw.get("cards"),
            "share_milli": raw.get("shareMilli"),
            "device_memory_mib": raw.get("memoryMiB"),
            "remote_mbps": raw.get("remoteMbps", 0),
        }
    node, device_node = raw.get("node"), raw.get("device_node") or raw.get("node")
    cards, share, memory = raw.get("cards"), raw.get("share_milli"), raw.get("device_memory_mib")
    if not isinstance(node, str) or not node:
        errors.append("node must be a non-empty string")
    if not isinstance(device_node, str) or not device_node:
        errors.append("device_node must be a non-empty string")
    if not isinstance(cards, list) or not cards or not all(isinstance(c, int) and c >= 0 for c in cards):
        errors.append("cards must be a non-empty list of card indexes")
    elif len(set(cards)) != len(cards):
        errors.append("cards must not repeat a card")
    if not isinstance(share, int) or not 1 <= share <= WHOLE_CARD_MILLI:
        errors.append(f"share_milli must be 1..{WHOLE_CARD_MILLI}")
    if not isinstance(memory, list) or not all(isinstance(m, int) and m > 0 for m in memory):
        errors.append("device_memory_mib must be a list of positive MiB values")
    elif isinstance(cards, list) and len(memory) != len(cards):
        errors.append("device_memory_mib needs one entry per card")
    if errors:
        return AllocationParse(None, tuple(f"{ANN_ALLOCATION} of {pod}: {e}" for e in errors))
    assert isinstance(node, str) and isinstance(device_node, str) and isinstance(share, int)
    assert isinstance(cards, list) and isinstance(memory, list)
    return AllocationParse(
        Allocation(
            pod=pod,
            node=node,
            device_node=device_node,
            cards=tuple(cards),
            share_milli=share,
            device_memory_mib=tuple(memory),
        )
    )


@dataclass(frozen=True, slots=True)
class PendingPod:
    """A pod bound to this node that carries an allocation (``claimed_ids`` empty: not claimed yet)."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    created: str
    allocation: Allocation
    claimed_ids: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pending_pods(pods: Iterable[Mapping[str, Any]], *, node: str) -> tuple[list[PendingPod], list[str]]:
    """Pods from a pod list that are ours on ``node`` (not finished), plus problems found."""
    found: list[PendingPod] = []
    problems: list[str] = []
    for pod in pods:
        meta = pod.get("metadata", {})
        annotations = meta.get("annotations") or {}
        if ANN_ALLOCATION not in annotations:
            continue
        if pod.get("spec", {}).get("nodeName") != node:
            continue
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        parsed = parse_allocation(annotations[ANN_ALLOCATION], pod=key)
        if parsed.allocation is None:
            problems.extend(parsed.errors)
            continue
        claimed: frozenset[str] = frozenset()
        if annotations.get(ANN_ALLOCATED):
            try:
                claimed = frozenset(json.loads(annotations[ANN_ALLOCATED]).get("deviceIDs", []))
            except (json.JSONDecodeError, AttributeError):
                problems.append(f"{ANN_ALLOCATED} of {key} is not valid JSON; treating the pod as claimed")
                claimed = frozenset({"<unreadable>"})
        found.append(
            PendingPod(
                namespace=meta.get("namespace", ""),
                name=meta.get("name", ""),
                uid=meta.get("uid", ""),
                resource_version=str(meta.get("resourceVersion", "")),
                created=str(meta.get("creationTimestamp", "")),
                allocation=parsed.allocation,
                claimed_ids=claimed,
            )
        )
    return found, problems


def choose_pod(
    pods: Sequence[PendingPod], *, device_ids: Sequence[str], cards_of_ids: frozenset[int]
) -> PendingPod | None:
    """The pod an ``Allocate`` for ``device_ids`` serves (see the module docstring for the rules)."""
    wanted = frozenset(device_ids)
    for pod in pods:
        if pod.claimed_ids == wanted:
            return pod
    candidates = [p for p in pods if not p.claimed_ids and len(p.allocation.cards) == len(device_ids)]
    if not candidates:
        return None
    candidates.sort(key=lambda p: (frozenset(p.allocation.cards) != cards_of_ids, p.created, p.key))
    return candidates[0]


def claim_annotation(device_ids: Sequence[str]) -> str:
    return json.dumps({"deviceIDs": sorted(device_ids)}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class RuntimePaths:
    """Host and container paths of the shim and the per-container shared regions."""

    shim_host_dir: str = "/var/lib/xpupool/shim"
    shim_container_dir: str = "/usr/local/xpupool/lib"
    shim_library: str = "libxpushim.so"
    region_host_root: str = "/var/lib/xpupool/regions"
    region_container_dir: str = "/run/xpupool/shim"  # native/include/xpushim_region.h default
    region_file: str = "region"
    card_host_dir: str = "/var/lib/xpupool/cards"
    card_container_dir: str = "/run/xpupool/cards"


@dataclass(frozen=True, slots=True)
class Wiring:
    """What ``Allocate`` returns for one container (maps to ``ContainerAllocateResponse``)."""

    envs: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)  # container, host, read-only
    devices: list[tuple[str, str, str]] = field(default_factory=list)  # container, host, permissions
    annotations: dict[str, str] = field(default_factory=dict)
    region_host_dir: str = ""


@dataclass(frozen=True, slots=True)
class WiringResult:
    wiring: Wiring | None
    errors: tuple[str, ...] = ()


def region_dir_name(pod_uid: str, device_ids: Sequence[str]) -> str:
    """Per-container region directory: pod UID + a digest of the container's slot IDs."""
    digest = hashlib.sha256("\n".join(sorted(device_ids)).encode()).hexdigest()[:12]
    return f"{pod_uid}-{digest}"


def container_wiring(
    *,
    pod: PendingPod,
    node: str,
    device_ids: Sequence[str],
    devices_by_index: Mapping[int, DeviceInfo],
    paths: RuntimePaths,
) -> WiringResult:
    """The env, mounts and device nodes binding one container to ``pod.allocation`` (pure)."""
    alloc = pod.allocation
    errors: list[str] = []
    if alloc.device_node != node:
        errors.append(
            f"{pod.key}: allocation is on {alloc.device_node}, this is {node}; remote vXPUs are "
            "wired by the remoting client, not the device plugin"
        )
    if alloc.node != node:
        errors.append(f"{pod.key}: allocation says the pod runs on {alloc.node}, but it is on {node}")
    cards: list[DeviceInfo] = []
    for index in alloc.cards:
        device = devices_by_index.get(index)
        if device is None:
            errors.append(f"{pod.key}: card {index} is not in this node's inventory")
        elif not device.healthy:
            errors.append(f"{pod.key}: card {index} ({device.uuid}) is unhealthy: {device.health_reason}")
        else:
            cards.append(device)
    vendors = {c.vendor for c in cards}
    if len(vendors) > 1:
        errors.append(f"{pod.key}: allocation mixes vendors {sorted(v.value for v in vendors)}")
    for device, memory in zip(cards, alloc.device_memory_mib, strict=False):
        if memory > device.memory_mib:
            errors.append(f"{pod.key}: {memory} MiB asked on card {device.index} which has {device.memory_mib} MiB")
    if errors:
        return WiringResult(None, tuple(errors))
    vendor = cards[0].vendor
    region_dir = str(PurePosixPath(paths.region_host_root) / region_dir_name(pod.uid, device_ids))
    envs = {
        "LD_PRELOAD": str(PurePosixPath(paths.shim_container_dir) / paths.shim_library),
        "XPUPOOL_SHIM_REGION": str(PurePosixPath(paths.region_container_dir) / paths.region_file),
        "XPUSHIM_REGION": str(PurePosixPath(paths.region_container_dir) / paths.region_file),
        "XPUPOOL_MEMORY_LIMIT_MIB": ",".join(str(m) for m in alloc.device_memory_mib),
        "XPUPOOL_CORE_LIMIT_PCT": str(-(-alloc.share_milli // 10)),
        "XPUPOOL_VENDOR": vendor.value,
        "XPUPOOL_CARD_UUIDS": ",".join(c.uuid for c in cards),
    }
    if vendor is Vendor.NVIDIA:
        envs["CUDA_VISIBLE_DEVICES"] = envs["NVIDIA_VISIBLE_DEVICES"] = ",".join(c.uuid for c in cards)
    elif vendor is Vendor.ASCEND:
        envs["ASCEND_VISIBLE_DEVICES"] = ",".join(str(c.index) for c in cards)
    elif vendor is Vendor.AMD:
        envs["HIP_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(cards)))
    else:
        envs["XPUPOOL_EMULATED_VISIBLE_DEVICES"] = ",".join(str(c.index) for c in cards)
    device_nodes: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for card in cards:
        for path in card.device_paths:
            if path not in seen:
                seen.add(path)
                device_nodes.append((path, path, "rw"))
    mounts = [
        (paths.shim_container_dir, paths.shim_host_dir, True),
        (paths.region_container_dir, region_dir, False),
        (paths.card_container_dir, paths.card_host_dir, False),
    ]
    annotations = {f"{DOMAIN}/pod": pod.key, f"{DOMAIN}/pod-uid": pod.uid}
    return WiringResult(
        Wiring(
            envs=envs,
            mounts=mounts,
            devices=device_nodes,
            annotations=annotations,
            region_host_dir=region_dir,
        )
    )
