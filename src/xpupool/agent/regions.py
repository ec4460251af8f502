"""Per-container shim regions written at ``Allocate`` time, and their garbage collection.

:class:`ShimRegionWriter` implements the device plugin's ``RegionWriter``: for the container's
slice it writes the container region (layout and writer in :mod:`xpupool.agent.shim_region`) with
one device entry per allocated card, in the order of the visible devices:

* ``mem_limit_bytes`` = the scheduler's ``device_memory_mib`` for that card,
* ``share_request_bp`` = ``share_limit_bp`` = ``share_milli * 10`` (basis points of one card;
  burst above the request is not granted yet),
* ``card_path`` = the card region as the container sees it (``/run/xpupool/cards/<uuid>``,
  host ``<host_root>/cards/<uuid>``, created here when missing) and ``card_slot`` = the lowest
  tenant slot of that card not used by another live container region on this node.

The limits therefore come from the node agent, not from the container's environment (a process
started by ``su`` or ``ssh`` without the env still finds the region at the shim's default path).

Idempotent: if a valid region already exists at the path (the kubelet repeated ``Allocate``) it
is kept. Expected failures (a card without free tenant slot, an unwritable host directory) are
returned as a Status and fail the ``Allocate`` (fail closed).

:func:`collect_garbage` removes region directories of pods that no longer exist on the node and
releases their tenant slots; directories younger than ``grace_s`` are kept (the pod list may
predate a very recent ``Allocate``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path, PurePosixPath

from xpupool.agent.allocation import PendingPod
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.shim_region import MAX_TENANTS, CardRegion, DeviceConfig, RegionError, ShimRegion
from xpupool.core.status import Status

log = logging.getLogger(__name__)

MIB = 1 << 20
CARD_CONTAINER_DIR = "/run/xpupool/cards"
REGION_FILE = "region"


def card_file_name(uuid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", uuid)


def container_key(region_dir_name: str) -> int:
    """A positive 63-bit id of the container, stable for its region directory."""
    digest = hashlib.sha256(region_dir_name.encode()).digest()
    return (int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)) or 1


def _region_files(region_root: Path) -> list[Path]:
    return sorted(p for p in region_root.glob(f"*/{REGION_FILE}") if p.is_file())


def used_tenant_slots(region_root: Path, uuid: str, *, exclude: Path | None = None) -> set[int]:
    """Tenant slots of card ``uuid`` named by the container regions under ``region_root``."""
    used: set[int] = set()
    for path in _region_files(region_root):
        if exclude is not None and path == exclude:
            continue
        try:
            with ShimRegion.open(path) as region:
                view = region.view
                for i in range(view.hdr.ndevices):
                    if view.dev[i].uuid.decode(errors="replace") == uuid:
                        used.add(int(view.dev[i].card_slot))
        except (RegionError, OSError, ValueError):
            log.warning("unreadable container region %s ignored while assigning tenant slots", path)
    return used


class ShimRegionWriter:
    """``RegionWriter`` over :mod:`xpupool.agent.shim_region` (see the module docstring)."""

    def __init__(self, *, region_root: Path, card_host_dir: Path, card_container_dir: str = CARD_CONTAINER_DIR) -> None:
        self._regions = Path(region_root)
        self._cards = Path(card_host_dir)
        self._card_container_dir = card_container_dir

    def write(self, *, path: Path, pod: PendingPod, cards: Sequence[DeviceInfo]) -> Status:
        if path.exists():
            try:
                ShimRegion.open(path).close()
                return Status.success()  # a repeated Allocate: keep what the shims already use
            except (RegionError, OSError, ValueError) as exc:
                log.warning("replacing broken region %s: %s", path, exc)
        alloc = pod.allocation
        if len(cards) != len(alloc.cards) or len(alloc.device_memory_mib) != len(cards):
            return Status.error(f"{pod.key}: allocation names {len(alloc.cards)} cards, {len(cards)} known")
        try:
            self._cards.mkdir(parents=True, exist_ok=True)
            configs = []
            for ordinal, (card, memory_mib) in enumerate(zip(cards, alloc.device_memory_mib, strict=True)):
                name = card_file_name(card.uuid)
                card_path = self._cards / name
                if not card_path.exists():
                    CardRegion.create(card_path, card.uuid).close()
                free = sorted(set(range(MAX_TENANTS)) - used_tenant_slots(self._regions, card.uuid, exclude=path))
                if not free:
                    return Status.error(f"{pod.key}: card {card.uuid} has no free tenant slot ({MAX_TENANTS} in use)")
                configs.append(
                    DeviceConfig(
                        uuid=card.uuid,
                        ordinal=ordinal,
                        mem_limit_bytes=memory_mib * MIB,
                        share_request_bp=alloc.share_milli * 10,
                        share_limit_bp=alloc.share_milli * 10,
                        card_path=str(PurePosixPath(self._card_container_dir) / name),
                        card_slot=free[0],
                    )
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            ShimRegion.create(path, configs, container_key=container_key(path.parent.name)).close()
        except (OSError, ValueError, RegionError) as exc:
            return Status.error(f"{pod.key}: cannot write the shim region {path}: {exc}")
        return Status.success()


def pod_uid_of(region_dir_name: str) -> str:
    """Region directories are named ``<pod uid>-<12 hex digest>``."""
    return region_dir_name.rsplit("-", 1)[0]


def collect_garbage(
    *,
    region_root: Path,
    card_host_dir: Path,
    live_pod_uids: Collection[str],
    grace_s: float = 300.0,
    now: Callable[[], float] = time.time,
) -> list[str]:
    """Remove region directories of pods not in ``live_pod_uids`` (older than ``grace_s``) and
    release their tenant slots. Returns the removed directory names."""
    removed: list[str] = []
    if not region_root.is_dir():
        return removed
    for directory in sorted(p for p in region_root.iterdir() if p.is_dir()):
        if pod_uid_of(directory.name) in live_pod_uids:
            continue
        try:
            if now() - directory.stat().st_mtime < grace_s:
                continue
        except FileNotFoundError:
            continue
        region_path = directory / REGION_FILE
        with contextlib.suppress(RegionError, OSError, ValueError), ShimRegion.open(region_path) as region:
            view = region.view
            for i in range(view.hdr.ndevices):
                uuid = view.dev[i].uuid.decode(errors="replace")
                card_path = card_host_dir / card_file_name(uuid)
                with contextlib.suppress(RegionError, OSError, ValueError):
                    card = CardRegion(card_path)
                    try:
                        card.release_tenant(int(view.dev[i].card_slot))
                    finally:
                        card.close()
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory.name)
    return removed
