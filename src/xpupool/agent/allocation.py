"""From the scheduler's allocation to one container's runtime wiring (pure functions).

Hand-off contract (scheduler -> node): before binding, the scheduler writes the pod annotation
``xpupool.io/allocation``::

    {"v": 1, "node": "gpu-3", "deviceNode": "gpu-3", "cards": [0, 2], "shareMilli": 1000,
     "memoryMiB": [81079, 81079], "remoteMbps": 0}

(the older snake_case spelling is still read). ``cards`` are card indexes on ``deviceNode`` (the
inventory's ``index``), ``memoryMiB`` is one entry per card.

Which container gets what (see :mod:`xpupool.agent.pairing` for how the container is known): the
kubelet's device IDs are only capacity accounting (``"<card uuid>::<slot>"``); the wiring always
follows the *scheduler's* cards. A pod's app containers that request ``xpupool.io/vxpu`` take the
allocation's cards in ``spec.containers`` order, as many as each requests
(:func:`container_cards`): one container per card of an allocation. (A share below 100 % is for
one card, so a fractional pod has one vXPU container.) Init containers cannot use vXPUs.

Wiring of one container for its cards C (:func:`container_wiring`), applied by the runtime through
the container's CDI spec (:mod:`xpupool.agent.cdi`):

* ``XPUPOOL_MEMORY_LIMIT_MIB`` / ``XPUPOOL_CORE_LIMIT_PCT`` (informational: the shim takes its
  limits from the agent-written region, never from env), ``XPUPOOL_POD`` / ``XPUPOOL_CONTAINER``;
  ``LD_PRELOAD`` and ``XPUSHIM_REGION`` (the region directory ``/run/xpupool/shim/region``) and
  the mounts come from :func:`xpupool.agent.regions.container_shim_wiring` once the region is
  written (agent-owned files read-only, only the container's own ``usage`` and ``tenant-NN``
  files writable);
* NVIDIA: ``CUDA_VISIBLE_DEVICES`` and ``NVIDIA_VISIBLE_DEVICES`` = card UUIDs (never positions);
  Ascend: ``ASCEND_VISIBLE_DEVICES`` = logical device ids; AMD: ``HIP_VISIBLE_DEVICES`` = 0..n-1
  (only the allocated render nodes are in the container, so HIP numbers them from 0);
  emulated: ``XPUPOOL_EMULATED_VISIBLE_DEVICES`` = card indexes;
* device nodes of the allocated cards plus the vendor's control nodes.

:func:`allocate_defaults` is what ``Allocate`` itself returns besides the CDI device name: no
pod-specific value, only a fail-closed baseline that the CDI edits override (a runtime that
ignores CDI starts the container without device nodes, with ``NVIDIA_VISIBLE_DEVICES=void``, and
with a shim that finds no region and refuses every device allocation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from xpupool.agent.cdi import ContainerEdits, DeviceNode, Mount
from xpupool.agent.discovery import DeviceInfo
from xpupool.core.model import WHOLE_CARD_MILLI, Allocation, Vendor
from xpupool.core.request import DOMAIN, RES_VXPU, QuantityError, parse_quantity

ANN_ALLOCATION = f"{DOMAIN}/allocation"
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
class PodSlice:
    """What one container of a pod bound to this node receives: ``allocation`` holds only the
    cards (and their memory) of that container (see :func:`container_cards`)."""

    namespace: str
    name: str
    uid: str
    allocation: Allocation
    container: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


#: The former name, still used by ``agent/regions.py`` (owned by the shim work) for the
#: ``RegionWriter`` argument; it reads only ``allocation`` and ``key``.
PendingPod = PodSlice


@dataclass(frozen=True, slots=True)
class SliceResult:
    slice: PodSlice | None
    errors: tuple[str, ...] = ()


def vxpu_request(container: Mapping[str, Any]) -> int:
    """``xpupool.io/vxpu`` of one container spec (limits, else requests); 0 when absent or unreadable."""
    resources = container.get("resources") or {}
    raw = (resources.get("limits") or {}).get(RES_VXPU, (resources.get("requests") or {}).get(RES_VXPU, 0))
    try:
        return int(parse_quantity(raw))
    except (QuantityError, ValueError):
        return 0


def vxpu_containers(pod: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(container name, cards requested) of the app containers, in ``spec.containers`` order (the
    order their cards are taken in); containers that request no vXPU are left out. Init
    containers are not counted (the scheduler does not count them either; the webhook refuses
    vXPUs there)."""
    spec = pod.get("spec") or {}
    return [(str(c.get("name", "")), n) for c in spec.get("containers") or [] if (n := vxpu_request(c)) > 0]


def container_cards(allocation: Allocation, pod: Mapping[str, Any], container: str) -> tuple[Allocation | None, str]:
    """The part of ``allocation`` that belongs to ``container`` (cards in container order)."""
    wanted = vxpu_containers(pod)
    total = sum(n for _, n in wanted)
    if total != len(allocation.cards):
        return None, (
            f"{allocation.pod}: its containers request {total} vXPU(s) but the allocation has "
            f"{len(allocation.cards)} card(s)"
        )
    start = 0
    for name, count in wanted:
        if name == container:
            cards = allocation.cards[start : start + count]
            memory = allocation.device_memory_mib[start : start + count]
            return dataclasses.replace(allocation, cards=cards, device_memory_mib=memory), ""
        start += count
    if any(c.get("name") == container for c in (pod.get("spec") or {}).get("initContainers") or []):
        return None, f"{allocation.pod}: init container {container!r} cannot use vXPUs; request them in a container"
    return None, f"{allocation.pod}: container {container!r} requests no {RES_VXPU}"


def container_slice(pod: Mapping[str, Any], *, container: str, node: str) -> SliceResult:
    """The slice of ``container`` of ``pod`` (a Pod as JSON) on ``node``; every problem explained."""
    meta = pod.get("metadata") or {}
    key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    bound = (pod.get("spec") or {}).get("nodeName")
    if bound != node:
        return SliceResult(None, (f"{key} is bound to {bound!r}, not to this node {node}",))
    parsed = parse_allocation((meta.get("annotations") or {}).get(ANN_ALLOCATION), pod=key)
    if parsed.allocation is None:
        hint = " (was it scheduled by xpupool? pods asking for xpupool.io/vxpu need schedulerName: xpupool)"
        return SliceResult(None, tuple(e + hint for e in parsed.errors))
    part, error = container_cards(parsed.allocation, pod, container)
    if part is None:
        return SliceResult(None, (error,))
    return SliceResult(
        PodSlice(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            allocation=part,
            container=container,
        )
    )


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
    """What the runtime gives one container (becomes its CDI spec, see :meth:`edits`); ``mounts``
    are added once the region is written (:func:`xpupool.agent.regions.container_shim_wiring`)."""

    envs: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)  # container, host, read-only
    devices: list[tuple[str, str, str]] = field(default_factory=list)  # container, host, permissions
    region_host_dir: str = ""

    def edits(self) -> ContainerEdits:
        return ContainerEdits(
            env=dict(self.envs),
            device_nodes=tuple(DeviceNode(path=c, host_path=h, permissions=p) for c, h, p in self.devices),
            mounts=tuple(Mount(container_path=c, host_path=h, read_only=ro) for c, h, ro in self.mounts),
        )


@dataclass(frozen=True, slots=True)
class WiringResult:
    wiring: Wiring | None
    errors: tuple[str, ...] = ()


def region_dir_name(pod_uid: str, device_ids: Sequence[str]) -> str:
    """Per-container region directory: pod UID + a digest of the container's slot IDs."""
    digest = hashlib.sha256("\n".join(sorted(device_ids)).encode()).hexdigest()[:12]
    return f"{pod_uid}-{digest}"


def allocate_defaults(paths: RuntimePaths) -> tuple[dict[str, str], list[tuple[str, str, bool]]]:
    """Env and mounts ``Allocate`` returns for every container, whatever pod it serves: the
    fail-closed baseline the container's CDI edits override (see the module docstring)."""
    envs = {
        "LD_PRELOAD": str(PurePosixPath(paths.shim_container_dir) / paths.shim_library),
        "XPUSHIM_REGION": str(PurePosixPath(paths.region_container_dir) / paths.region_file),
        "NVIDIA_VISIBLE_DEVICES": "void",
    }
    return envs, [(paths.shim_container_dir, paths.shim_host_dir, True)]


def container_wiring(
    *,
    pod: PodSlice,
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
        "XPUPOOL_MEMORY_LIMIT_MIB": ",".join(str(m) for m in alloc.device_memory_mib),
        "XPUPOOL_CORE_LIMIT_PCT": str(-(-alloc.share_milli // 10)),
        "XPUPOOL_VENDOR": vendor.value,
        "XPUPOOL_CARD_UUIDS": ",".join(c.uuid for c in cards),
        "XPUPOOL_POD": pod.key,
        "XPUPOOL_CONTAINER": pod.container,
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
    return WiringResult(Wiring(envs=envs, devices=device_nodes, region_host_dir=region_dir))
