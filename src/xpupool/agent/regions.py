"""Per-container shim regions written at ``Allocate`` time, the mounts that expose them, and GC.

:class:`ShimRegionWriter` implements the device plugin's ``RegionWriter``: for the container's
slice it writes the container region DIRECTORY (layout and writer in
:mod:`xpupool.agent.shim_region`) with one device entry per allocated card, in the order of the
visible devices:

* ``mem_limit_bytes`` = the scheduler's ``device_memory_mib`` for that card,
* ``process_reserve_bytes`` = :func:`xpupool.core.memory_reserve.process_reserve_mib` of the card
  (the same rule the scheduler applies),
* ``share_request_bp`` = ``share_limit_bp`` = ``share_milli * 10`` (basis points of one card;
  burst above the request is not granted yet),
* ``card_dir`` = the card region directory as the container sees it
  (``/run/xpupool/cards/<card>``, host ``<card_host_dir>/<card>``, created here when missing) and
  ``card_slot`` = the lowest tenant slot the card's policy leaves free; the agent records the
  container as that slot's owner (with its request, limit and priority) in the card policy.

Files the agent owns (``config``, ``policy``) are root-owned and mode 0644; the files shims write
(``usage``, ``tenant-NN``) are 0666. :func:`container_shim_wiring` returns the mounts that make
the agent-owned part read-only inside the container and leave only the container's own files
writable (the layout contract the CDI spec and ``Allocate`` use).

Idempotent: if a valid region already exists at the path (the kubelet repeated ``Allocate``) it
is kept. Expected failures (a card without free tenant slot, an unwritable host directory) are
returned as a Status and fail the ``Allocate`` (fail closed).

:func:`collect_garbage` removes region directories of pods that no longer exist on the node and
releases their tenant slots; directories younger than ``grace_s`` are kept (the pod list may
predate a very recent ``Allocate``).

:func:`record_host_pids` keeps each region's host-pid table (agent-owned, in ``config``) in step
with the processes its shims registered: the shim knows only container pids, NVML reports host
pids, and the shim shows a container only the NVML entries of its own processes through this
table.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from xpupool.agent.allocation import PodSlice, RuntimePaths
from xpupool.agent.cdi import Mount
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.shim_region import (
    ENV_REGION,
    USAGE_FILE,
    CardRegion,
    DeviceConfig,
    RegionError,
    ShimRegion,
    tenant_file,
)
from xpupool.core.memory_reserve import process_reserve_mib
from xpupool.core.status import Status

log = logging.getLogger(__name__)

MIB = 1 << 20
CARD_CONTAINER_DIR = "/run/xpupool/cards"
REGION_FILE = "region"  # the container region directory inside the per-container host directory


def card_file_name(uuid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", uuid)


def container_key(region_dir_name: str) -> int:
    """A positive 63-bit id of the container, stable for its region directory."""
    digest = hashlib.sha256(region_dir_name.encode()).digest()
    return (int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)) or 1


def _open_card(card_dir: Path, uuid: str) -> CardRegion:
    if not (card_dir / "policy").exists():
        card_dir.parent.mkdir(parents=True, exist_ok=True)
        return CardRegion.create(card_dir, uuid)
    return CardRegion(card_dir)


class ShimRegionWriter:
    """``RegionWriter`` over :mod:`xpupool.agent.shim_region` (see the module docstring)."""

    def __init__(self, *, region_root: Path, card_host_dir: Path, card_container_dir: str = CARD_CONTAINER_DIR) -> None:
        self._regions = Path(region_root)
        self._cards = Path(card_host_dir)
        self._card_container_dir = card_container_dir

    def write(self, *, path: Path, pod: PodSlice, cards: Sequence[DeviceInfo]) -> Status:
        """Write the container region directory ``path`` (``<per-container dir>/region``)."""
        if path.exists():
            try:
                ShimRegion.open(path).close()
                return Status.success()  # a repeated Allocate: keep what the shims already use
            except (RegionError, OSError, ValueError) as exc:
                log.warning("replacing broken region %s: %s", path, exc)
        alloc = pod.allocation
        if len(cards) != len(alloc.cards) or len(alloc.device_memory_mib) != len(cards):
            return Status.error(f"{pod.key}: allocation names {len(alloc.cards)} cards, {len(cards)} known")
        key = container_key(path.parent.name)
        share_bp = alloc.share_milli * 10
        assigned: list[tuple[CardRegion, int]] = []
        try:
            self._cards.mkdir(parents=True, exist_ok=True)
            configs = []
            for ordinal, (card, memory_mib) in enumerate(zip(cards, alloc.device_memory_mib, strict=True)):
                name = card_file_name(card.uuid)
                region = _open_card(self._cards / name, card.uuid)
                mine = [t.slot for t in region.tenants() if t.owner_key == key]
                free = mine or region.free_slots()
                if not free:
                    region.close()
                    return Status.error(f"{pod.key}: card {card.uuid} has no free tenant slot (all in use)")
                region.assign_tenant(free[0], owner_key=key, request_bp=share_bp, limit_bp=share_bp)
                assigned.append((region, free[0]))
                configs.append(
                    DeviceConfig(
                        uuid=card.uuid,
                        ordinal=ordinal,
                        mem_limit_bytes=memory_mib * MIB,
                        process_reserve_bytes=process_reserve_mib(card.vendor, card.model) * MIB,
                        share_request_bp=share_bp,
                        share_limit_bp=share_bp,
                        card_dir=str(PurePosixPath(self._card_container_dir) / name),
                        card_slot=free[0],
                    )
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            ShimRegion.create(path, configs, container_key=key).close()
        except (OSError, ValueError, RegionError) as exc:
            for region, slot in assigned:  # nothing half-assigned stays behind
                with contextlib.suppress(OSError, ValueError, IndexError):
                    region.release_tenant(slot)
            return Status.error(f"{pod.key}: cannot write the shim region {path}: {exc}")
        finally:
            for region, _ in assigned:
                region.close()
        return Status.success()


@dataclass(frozen=True, slots=True)
class ShimWiring:
    """What a container needs for the shim: mounts (parents before the files mounted over them)
    and environment. ``status`` says why it is empty when the region cannot be read."""

    mounts: tuple[Mount, ...] = ()
    envs: dict[str, str] = field(default_factory=dict)
    status: Status = field(default_factory=Status.success)


def container_shim_wiring(*, region_dir: Path, paths: RuntimePaths) -> ShimWiring:
    """Mounts and env exposing the container region directory ``region_dir`` (host path,
    ``<per-container dir>/region``, written by :class:`ShimRegionWriter`) to its container.

    Layout contract (``docs/isolation.md``, "Shared files and mounts"):

    * the shim library directory, read-only;
    * the per-container host directory at ``paths.region_container_dir`` READ-ONLY (the agent-owned
      ``config``: limits, shares, priority, reserve, card slot, host pids), with only the
      region's ``usage`` file bind-mounted READ-WRITE over its entry;
    * for every card of the region, its card directory READ-ONLY (the agent-owned ``policy`` and
      every tenant's file, for arbitration), with only this container's ``tenant-NN`` file
      bind-mounted READ-WRITE over its entry;
    * ``LD_PRELOAD`` = the shim, ``XPUSHIM_REGION`` = the region directory as the container sees it.

    The card slots come from the written config, so the mounts always match what the shim reads.
    """
    container_region = PurePosixPath(paths.region_container_dir) / paths.region_file
    mounts = [
        Mount(paths.shim_container_dir, paths.shim_host_dir, True),
        Mount(paths.region_container_dir, str(region_dir.parent), True),
        Mount(str(container_region / USAGE_FILE), str(region_dir / USAGE_FILE), False),
    ]
    try:
        with ShimRegion.open(region_dir) as region:
            cfg = region.config
            devices = [
                (cfg.dev[i].card_dir.decode(errors="replace"), int(cfg.dev[i].card_slot))
                for i in range(cfg.hdr.ndevices)
            ]
    except (RegionError, OSError, ValueError) as exc:
        return ShimWiring(status=Status.error(f"cannot read the shim region {region_dir}: {exc}"))
    seen: set[str] = set()
    for card_dir, slot in devices:
        if not card_dir or card_dir in seen:
            continue
        seen.add(card_dir)
        name = PurePosixPath(card_dir).name
        host = Path(paths.card_host_dir) / name
        mounts.append(Mount(card_dir, str(host), True))
        mounts.append(Mount(str(PurePosixPath(card_dir) / tenant_file(slot)), str(host / tenant_file(slot)), False))
    envs = {
        "LD_PRELOAD": str(PurePosixPath(paths.shim_container_dir) / paths.shim_library),
        ENV_REGION: str(container_region),
    }
    return ShimWiring(mounts=tuple(mounts), envs=envs)


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
    for directory in sorted(p for p in region_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if pod_uid_of(directory.name) in live_pod_uids:
            continue
        try:
            if now() - directory.stat().st_mtime < grace_s:
                continue
        except FileNotFoundError:
            continue
        with contextlib.suppress(RegionError, OSError, ValueError), ShimRegion.open(directory / REGION_FILE) as region:
            cfg = region.config
            key = int(cfg.hdr.container_key)
            for i in range(cfg.hdr.ndevices):
                card_path = card_host_dir / card_file_name(cfg.dev[i].uuid.decode(errors="replace"))
                with contextlib.suppress(RegionError, OSError, ValueError, IndexError):
                    card = CardRegion(card_path)
                    try:
                        slot = int(cfg.dev[i].card_slot)
                        if int(card.policy.tenant[slot].owner_key) == key:  # not reassigned meanwhile
                            card.release_tenant(slot)
                    finally:
                        card.close()
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory.name)
    return removed



def _proc_start_time(proc: Path) -> int:
    """Field 22 of ``<proc>/stat`` (clock ticks since boot), 0 if unreadable."""
    try:
        raw = (proc / "stat").read_text()
    except OSError:
        return 0
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else 0


def _innermost_pid(proc: Path) -> int:
    """The pid a process has in its own (innermost) pid namespace, from ``NSpid``; 0 if unknown."""
    try:
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return 0


def _maps_file(proc: Path, dev: int, ino: int) -> bool:
    """Whether the process maps the file ``(dev, ino)`` (its shim mapped the region's usage)."""
    want = f"{os.major(dev):02x}:{os.minor(dev):02x} {ino} "
    try:
        with open(proc / "maps") as f:
            return any(want in line for line in f)
    except OSError:
        return False


def record_host_pids(*, region_root: Path, proc_root: Path = Path("/proc")) -> int:
    """Bring every region's host-pid table in step with its registered processes; returns how many
    entries changed. Needs the host's pid view (the agent runs with ``hostPID``).

    A container process is identified on the host by its innermost pid (``NSpid``), its start time
    and its mapping of the region's own ``usage`` file (device and inode), so processes of other
    containers with the same container pid never match. ``/proc`` is only scanned when some
    registered process has no valid entry yet.
    """
    changed = 0
    pending: list[tuple[ShimRegion, int, int, dict[int, int]]] = []  # region, dev, ino, unresolved pid -> start
    try:
        dirs = sorted(p / REGION_FILE for p in region_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return 0
    try:
        for path in dirs:
            try:
                st = os.stat(path / USAGE_FILE)
                region = ShimRegion.open(path)
            except (RegionError, OSError, ValueError):
                continue
            snap = region.snapshot()
            wanted = {p.pid: p.start_time for p in snap.processes if p.pid > 0}
            unresolved: dict[int, int] = {}
            for pid, host in region.host_pids().items():
                host_proc = proc_root / str(host)
                if pid not in wanted or _proc_start_time(host_proc) != wanted[pid] or not _maps_file(
                    host_proc, st.st_dev, st.st_ino
                ):
                    region.set_host_pid(pid, 0)  # the process is gone, or the pid was reused
                    changed += 1
            known = region.host_pids()
            unresolved = {pid: start for pid, start in wanted.items() if pid not in known}
            if unresolved:
                pending.append((region, st.st_dev, st.st_ino, unresolved))
            else:
                region.close()
        if not pending:
            return changed
        inner_wanted = {pid for *_, unresolved in pending for pid in unresolved}
        for entry in proc_root.iterdir():
            if not entry.name.isdigit():
                continue
            inner = _innermost_pid(entry)
            if inner not in inner_wanted:
                continue
            start = _proc_start_time(entry)
            for region, dev, ino, unresolved in pending:
                if unresolved.get(inner) == start and _maps_file(entry, dev, ino):
                    region.set_host_pid(inner, int(entry.name), start)
                    del unresolved[inner]
                    changed += 1
                    break
        return changed
    finally:
        for region, *_ in pending:
            region.close()
