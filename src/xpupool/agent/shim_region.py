"""Node-agent side of the shim's shared regions (layout: ``native/include/xpushim_layout.def``).

The layout has ONE definition; :mod:`xpupool._generated.shim_layout` is generated from it
(``python -m xpupool.agent.layoutgen``) and ``tests/agent/test_shim_region.py`` checks both the
generation and every offset against the C compiler. This module adds the agent's operations.

Who may write what is part of the layout (see the definition file):

* **Container region** = a directory with ``config`` and ``usage``. The agent alone writes
  ``config`` (root, mode 0644, mounted read-only into the container): UUIDs, memory quota,
  per-process reserve, compute request/limit in basis points, priority, card directory and tenant
  slot, and the host pids of the container's processes. Live changes are in-place seqlock writes
  on ``header.generation`` (odd while writing), picked up by running shims within about one limiter
  refresh (1 ms). Every shim process of the container writes ``usage`` (mode 0666, the only
  read-write mount): process slots, charges, counters, limiter state.
* **Card region** = a directory per physical card with ``policy`` (agent-only, read-only to
  containers: owner key, request, limit and priority of every tenant slot, the arbitration inputs)
  and ``tenant-00`` .. ``tenant-31`` (each tenant's own demand and measurements; the container
  sees the directory read-only with only its own file bind-mounted read-write).

Readers reject unknown magic, versions and sizes (``RegionError``). What a tenant can still do by
bypassing the in-process shim is documented in ``docs/isolation.md``.

``ShimRegionCollector`` exports per-slice usage to Prometheus: granted vs used memory, granted vs
measured compute share, GPU time, throttle time, launches, OOM refusals. Labels are bounded
(slice id and device UUID, no pod names).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from xpupool._generated import shim_layout as L

LAYOUT_VERSION = L.XPU_LAYOUT_VERSION
MAX_DEVICES = L.XPU_MAX_DEVICES
MAX_SLOTS = L.XPU_MAX_SLOTS
MAX_TENANTS = L.XPU_MAX_TENANTS
UUID_LEN = L.XPU_UUID_LEN
PATH_LEN = L.XPU_PATH_LEN
SHARE_FULL_BP = L.XPU_SHARE_FULL
ENV_REGION = L.XPUSHIM_ENV_REGION
DEFAULT_REGION_PATH = L.XPUSHIM_DEFAULT_REGION_PATH
CONFIG_FILE = L.XPU_CONFIG_FILE
USAGE_FILE = L.XPU_USAGE_FILE
POLICY_FILE = L.XPU_POLICY_FILE
POLICY_FAIL_OPEN_ON_BROKEN = L.XPU_POLICY_FAIL_OPEN_ON_BROKEN
SLOT_FREE, SLOT_ACTIVE, SLOT_REAPING = L.XPU_SLOT_FREE, L.XPU_SLOT_ACTIVE, L.XPU_SLOT_REAPING

#: File modes: what the agent owns is read-only to everyone else; what shims write is shared.
AGENT_FILE_MODE = 0o644
SHARED_FILE_MODE = 0o666
DIR_MODE = 0o755


def tenant_file(slot: int) -> str:
    """File name of tenant ``slot`` in a card region directory."""
    return f"{L.XPU_TENANT_FILE_PREFIX}{slot:02d}"


class RegionError(ValueError):
    """A region that this reader must not use (wrong magic, version or size, missing file)."""


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """What the agent grants one device of a container. Shares are basis points of one card.

    ``card_dir`` is the card region directory as the container sees it; ``process_reserve_bytes``
    is charged once per process using the device (``xpupool.core.memory_reserve``).
    """

    uuid: str = ""
    ordinal: int = 0
    mem_limit_bytes: int = 0
    process_reserve_bytes: int = 0
    share_request_bp: int = 0
    share_limit_bp: int = 0
    priority: int = 0
    period_us: int = 0
    card_dir: str = ""
    card_slot: int = 0


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    index: int
    uuid: str
    mem_limit_bytes: int
    process_reserve_bytes: int
    mem_used_bytes: int
    mem_peak_bytes: int
    oom_events: int
    accounting_errors: int
    reaped_bytes: int
    share_request_bp: int
    share_limit_bp: int
    priority: int
    effective_share_bp: int
    measured_share_bp: int
    gpu_time_ns: int
    throttle_ns: int
    launches: int
    throttled_launches: int


@dataclass(frozen=True, slots=True)
class ProcessSlot:
    index: int
    pid: int
    host_pid: int
    start_time: int
    mem_used_bytes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RegionSnapshot:
    generation: int
    container_key: int
    devices: tuple[DeviceUsage, ...]
    processes: tuple[ProcessSlot, ...]


def _check_share(name: str, value: int) -> None:
    if not 0 <= value <= SHARE_FULL_BP:
        raise ValueError(f"{name} must be within 0..{SHARE_FULL_BP} basis points, got {value}")


def _encode(text: str, size: int, what: str) -> bytes:
    raw = text.encode()
    if len(raw) >= size:
        raise ValueError(f"{what} longer than {size - 1} bytes")
    return raw


class _Mapped:
    """An mmap'd file with a ctypes view; closes cleanly (views are dropped before the map)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError as exc:
            raise RegionError(f"{path}: missing") from exc
        try:
            st = os.fstat(fd)
            if st.st_size < size:
                raise RegionError(f"{path}: {st.st_size} bytes, need at least {size}")
            self._mm: mmap.mmap | None = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED)
        finally:
            os.close(fd)

    @property
    def mm(self) -> mmap.mmap:
        if self._mm is None:
            raise ValueError("region is closed")
        return self._mm

    def close(self) -> None:
        if self._mm is not None:
            # a caller may still hold a ctypes view: then the map goes when the last view does
            with contextlib.suppress(BufferError):
                self._mm.close()
            self._mm = None


def _write_file(path: Path, data: bytes, mode: int) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # explicit: the umask must not decide who may write


def _publish_dir(tmp: Path, target: Path) -> None:
    """Rename a fully written temp directory into place (shims never see a half-made region)."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


class _Seqlock:
    """The agent side of a seqlock on a ``generation`` field: odd while writing."""

    def __init__(self, header: ctypes.Structure) -> None:
        self._h = header

    def __enter__(self) -> None:
        gen = int(self._h.generation)
        if gen % 2:
            gen += 1  # a previous writer died mid-update: complete its cycle
        self._h.generation = gen + 1

    def __exit__(self, *exc: object) -> None:
        self._h.generation = int(self._h.generation) + 1


class ShimRegion:
    """A container region directory. ``create`` (agent, at allocation) or ``open`` (restart, metrics)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory)
        self._c = _Mapped(self.path / CONFIG_FILE, ctypes.sizeof(L.ConfigHeader))
        try:
            self._u = _Mapped(self.path / USAGE_FILE, ctypes.sizeof(L.UsageHeader))
        except RegionError:
            self._c.close()
            raise
        cfg = L.Config.from_buffer(self._c.mm) if len(self._c.mm) >= ctypes.sizeof(L.Config) else None
        use = L.Usage.from_buffer(self._u.mm) if len(self._u.mm) >= ctypes.sizeof(L.Usage) else None
        err = _region_error(cfg, use)
        if err:
            del cfg, use  # release the buffer exports before closing the maps
            self.close()
            raise RegionError(f"{directory}: {err}")
        assert cfg is not None and use is not None
        self._cfg: L.Config | None = cfg
        self._use: L.Usage | None = use

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> Self:
        return cls(directory)

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        devices: Sequence[DeviceConfig],
        *,
        container_key: int,
        policy: int = 0,
    ) -> Self:
        """Write a fresh region directory atomically: ``config`` 0644 (agent-only), ``usage`` 0666."""
        if not devices or len(devices) > MAX_DEVICES:
            raise ValueError(f"1..{MAX_DEVICES} devices required")
        if container_key <= 0:
            raise ValueError("container_key must be a positive integer")
        target = Path(directory)
        cfg = L.Config()
        h = cfg.hdr
        h.magic = L.XPU_CONFIG_MAGIC
        h.version = LAYOUT_VERSION
        h.header_size = ctypes.sizeof(L.ConfigHeader)
        h.total_size = ctypes.sizeof(L.Config)
        h.ndevices = len(devices)
        h.device_offset = L.Config.dev.offset
        h.device_stride = ctypes.sizeof(L.DevConfig)
        h.npids = MAX_SLOTS
        h.pid_offset = L.Config.pid.offset
        h.pid_stride = ctypes.sizeof(L.PidEntry)
        h.container_key = container_key
        h.policy = policy
        for i, dc in enumerate(devices):
            _apply_config(cfg.dev[i], dc)
        h.generation = 2
        use = L.Usage()
        u = use.hdr
        u.magic = L.XPU_USAGE_MAGIC
        u.version = LAYOUT_VERSION
        u.header_size = ctypes.sizeof(L.UsageHeader)
        u.total_size = ctypes.sizeof(L.Usage)
        u.ndevices = MAX_DEVICES
        u.nslots = MAX_SLOTS
        u.device_offset = L.Usage.dev.offset
        u.device_stride = ctypes.sizeof(L.DevUsage)
        u.slot_offset = L.Usage.slot.offset
        u.slot_stride = ctypes.sizeof(L.Slot)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(mode=DIR_MODE)
        os.chmod(tmp, DIR_MODE)
        _write_file(tmp / CONFIG_FILE, bytes(cfg), AGENT_FILE_MODE)
        _write_file(tmp / USAGE_FILE, bytes(use), SHARED_FILE_MODE)
        _publish_dir(tmp, target)
        return cls(target)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._cfg = None
        self._use = None
        self._c.close()
        if hasattr(self, "_u"):
            self._u.close()

    @property
    def config(self) -> L.Config:
        """The agent-owned part (limits, shares, priority, reserve, card slot, host pids)."""
        if self._cfg is None:
            raise ValueError("region is closed")
        return self._cfg

    @property
    def usage(self) -> L.Usage:
        """What the container's shims write (slots, charges, counters)."""
        if self._use is None:
            raise ValueError("region is closed")
        return self._use

    @property
    def generation(self) -> int:
        return int(self.config.hdr.generation)

    def update(
        self,
        index: int,
        *,
        mem_limit_bytes: int | None = None,
        share_request_bp: int | None = None,
        share_limit_bp: int | None = None,
        priority: int | None = None,
    ) -> int:
        """Live resize of device ``index`` (seqlock write). Returns the new generation.

        Shrinking memory below current usage is allowed: new allocations fail until usage drops;
        nothing is killed. The card policy is updated by :meth:`CardRegion.update_tenant`.
        """
        c = self.config
        if not 0 <= index < c.hdr.ndevices:
            raise IndexError(f"device index {index} out of range")
        if share_request_bp is not None:
            _check_share("share_request_bp", share_request_bp)
        if share_limit_bp is not None:
            _check_share("share_limit_bp", share_limit_bp)
        if mem_limit_bytes is not None and mem_limit_bytes < 0:
            raise ValueError("mem_limit_bytes must be >= 0")
        req = c.dev[index].share_request_bp if share_request_bp is None else share_request_bp
        lim = c.dev[index].share_limit_bp if share_limit_bp is None else share_limit_bp
        if lim and lim < req:
            raise ValueError("share_limit_bp must be >= share_request_bp (or 0 = same as request)")
        d = c.dev[index]
        with _Seqlock(c.hdr):
            if mem_limit_bytes is not None:
                d.mem_limit = mem_limit_bytes
            if share_request_bp is not None:
                d.share_request_bp = share_request_bp
            if share_limit_bp is not None:
                d.share_limit_bp = share_limit_bp
            if priority is not None:
                d.priority = priority
        return int(c.hdr.generation)

    def set_host_pid(self, pid: int, host_pid: int, start_time: int = 0) -> None:
        """Record the host pid of container pid ``pid`` (the agent resolves it via cgroup/NSpid).

        ``host_pid == 0`` forgets the entry. The table is agent-owned: NVML filtering in the shim
        trusts it because no tenant can write it.
        """
        entries = self.config.pid
        free = None
        for e in entries:
            if e.pid == pid:
                if host_pid:
                    e.host_pid, e.start_time = host_pid, start_time
                else:
                    e.pid = e.host_pid = e.start_time = 0
                return
            if e.pid == 0 and free is None:
                free = e
        if not host_pid:
            return
        if free is None:
            raise ValueError(f"host pid table full ({MAX_SLOTS} entries)")
        free.host_pid, free.start_time = host_pid, start_time
        free.pid = pid

    def host_pids(self) -> dict[int, int]:
        """Container pid -> host pid, as recorded by the agent."""
        return {int(e.pid): int(e.host_pid) for e in self.config.pid if e.pid}

    def snapshot(self) -> RegionSnapshot:
        c, u = self.config, self.usage
        devs = []
        for i in range(c.hdr.ndevices):
            dc, du = c.dev[i], u.dev[i]
            devs.append(
                DeviceUsage(
                    index=i,
                    uuid=dc.uuid.decode(errors="replace"),
                    mem_limit_bytes=int(dc.mem_limit),
                    process_reserve_bytes=int(dc.process_reserve),
                    mem_used_bytes=int(du.mem_used),
                    mem_peak_bytes=int(du.mem_peak),
                    oom_events=int(du.oom_events),
                    accounting_errors=int(du.accounting_errors),
                    reaped_bytes=int(du.reaped_bytes),
                    share_request_bp=int(dc.share_request_bp),
                    share_limit_bp=int(dc.share_limit_bp),
                    priority=int(dc.priority),
                    effective_share_bp=int(du.effective_share_bp),
                    measured_share_bp=int(du.measured_share_bp),
                    gpu_time_ns=int(du.gpu_time_ns),
                    throttle_ns=int(du.throttle_ns),
                    launches=int(du.launches),
                    throttled_launches=int(du.throttled_launches),
                )
            )
        hosts = self.host_pids()
        procs = []
        for s in range(MAX_SLOTS):
            sl = u.slot[s]
            if sl.state != SLOT_ACTIVE:
                continue
            procs.append(
                ProcessSlot(
                    index=s,
                    pid=int(sl.pid),
                    host_pid=hosts.get(int(sl.pid), 0),
                    start_time=int(sl.start_time),
                    mem_used_bytes=tuple(int(sl.mem_used[i]) for i in range(c.hdr.ndevices)),
                )
            )
        return RegionSnapshot(int(c.hdr.generation), int(c.hdr.container_key), tuple(devs), tuple(procs))


def _region_error(cfg: L.Config | None, use: L.Usage | None) -> str | None:
    if cfg is None or use is None:
        return "file too short for this layout"
    h, u = cfg.hdr, use.hdr
    if h.magic != L.XPU_CONFIG_MAGIC or u.magic != L.XPU_USAGE_MAGIC:
        return f"bad magic {h.magic:#x}/{u.magic:#x}"
    if h.version != LAYOUT_VERSION or u.version != LAYOUT_VERSION:
        return f"unsupported region version {h.version}/{u.version}"
    if (
        h.header_size < ctypes.sizeof(L.ConfigHeader)
        or h.ndevices > MAX_DEVICES
        or h.device_offset != L.Config.dev.offset
        or h.device_stride != ctypes.sizeof(L.DevConfig)
        or h.pid_offset != L.Config.pid.offset
        or h.pid_stride != ctypes.sizeof(L.PidEntry)
        or u.nslots > MAX_SLOTS
        or u.device_offset != L.Usage.dev.offset
        or u.device_stride != ctypes.sizeof(L.DevUsage)
        or u.slot_offset != L.Usage.slot.offset
        or u.slot_stride != ctypes.sizeof(L.Slot)
    ):
        return "layout fields do not match this reader"
    return None


def _apply_config(d: L.DevConfig, cfg: DeviceConfig) -> None:
    _check_share("share_request_bp", cfg.share_request_bp)
    _check_share("share_limit_bp", cfg.share_limit_bp)
    if cfg.share_limit_bp and cfg.share_limit_bp < cfg.share_request_bp:
        raise ValueError("share_limit_bp must be >= share_request_bp (or 0 = same as request)")
    if cfg.mem_limit_bytes < 0 or cfg.process_reserve_bytes < 0 or not 0 <= cfg.card_slot < MAX_TENANTS:
        raise ValueError("memory sizes must be >= 0 and card_slot within the card's tenants")
    d.uuid = _encode(cfg.uuid, UUID_LEN, "uuid")
    d.ordinal = cfg.ordinal
    d.mem_limit = cfg.mem_limit_bytes
    d.process_reserve = cfg.process_reserve_bytes
    d.share_request_bp = cfg.share_request_bp
    d.share_limit_bp = cfg.share_limit_bp
    d.priority = cfg.priority
    d.period_us = cfg.period_us
    d.card_slot = cfg.card_slot
    d.card_dir = _encode(cfg.card_dir, PATH_LEN, "card_dir")


@dataclass(frozen=True, slots=True)
class TenantView:
    """One tenant slot of a card: the agent's policy and what that tenant's shims publish."""

    slot: int
    owner_key: int
    request_bp: int
    limit_bp: int
    priority: int
    effective_bp: int
    last_demand_ns: int
    gpu_time_ns: int


class CardRegion:
    """A per-card region directory: ``policy`` (agent) and one ``tenant-NN`` file per slot."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory)
        self._p = _Mapped(self.path / POLICY_FILE, ctypes.sizeof(L.CardPolicy))
        pol = L.CardPolicy.from_buffer(self._p.mm)
        h = pol.hdr
        if not (
            h.magic == L.XPU_CARD_MAGIC
            and h.version == LAYOUT_VERSION
            and h.ntenants <= MAX_TENANTS
            and h.tenant_offset == L.CardPolicy.tenant.offset
            and h.tenant_stride == ctypes.sizeof(L.PolicyTenant)
        ):
            del pol, h
            self._p.close()
            raise RegionError(f"{directory}: not a card region of layout version {LAYOUT_VERSION}")
        self._pol: L.CardPolicy | None = pol
        self._t: list[_Mapped] = []
        self._tv: list[L.TenantState] = []
        try:
            for i in range(int(h.ntenants)):
                m = _Mapped(self.path / tenant_file(i), ctypes.sizeof(L.TenantState))
                self._t.append(m)
                self._tv.append(L.TenantState.from_buffer(m.mm))
        except RegionError:
            self.close()
            raise

    @classmethod
    def create(cls, directory: str | os.PathLike[str], uuid: str) -> Self:
        """Write a fresh card directory atomically: ``policy`` 0644 and 32 tenant files 0666."""
        target = Path(directory)
        pol = L.CardPolicy()
        h = pol.hdr
        h.magic = L.XPU_CARD_MAGIC
        h.version = LAYOUT_VERSION
        h.header_size = ctypes.sizeof(L.CardHeader)
        h.total_size = ctypes.sizeof(L.CardPolicy)
        h.ntenants = MAX_TENANTS
        h.tenant_offset = L.CardPolicy.tenant.offset
        h.tenant_stride = ctypes.sizeof(L.PolicyTenant)
        h.uuid = _encode(uuid, UUID_LEN, "uuid")
        h.generation = 2
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(mode=DIR_MODE)
        os.chmod(tmp, DIR_MODE)
        _write_file(tmp / POLICY_FILE, bytes(pol), AGENT_FILE_MODE)
        for i in range(MAX_TENANTS):
            _write_file(tmp / tenant_file(i), bytes(_fresh_tenant(i)), SHARED_FILE_MODE)
        _publish_dir(tmp, target)
        return cls(target)

    def close(self) -> None:
        self._pol = None
        self._tv = []
        for m in self._t:
            m.close()
        self._t = []
        self._p.close()

    @property
    def policy(self) -> L.CardPolicy:
        if self._pol is None:
            raise ValueError("card region is closed")
        return self._pol

    def free_slots(self) -> list[int]:
        """Tenant slots no container owns."""
        return [i for i in range(int(self.policy.hdr.ntenants)) if not self.policy.tenant[i].owner_key]

    def assign_tenant(self, slot: int, *, owner_key: int, request_bp: int, limit_bp: int, priority: int = 0) -> None:
        """Give ``slot`` to the container ``owner_key`` (agent, at allocation); its demand starts clean."""
        if owner_key <= 0:
            raise ValueError("owner_key must be a positive integer")
        _check_share("request_bp", request_bp)
        _check_share("limit_bp", limit_bp)
        self._reset_tenant(slot)
        t = self.policy.tenant[slot]
        with _Seqlock(self.policy.hdr):
            t.owner_key = owner_key
            t.request_bp = request_bp
            t.limit_bp = limit_bp
            t.priority = priority

    def update_tenant(
        self, slot: int, *, request_bp: int | None = None, limit_bp: int | None = None, priority: int | None = None
    ) -> None:
        """Live resize of a tenant's arbitration inputs (with :meth:`ShimRegion.update`)."""
        for name, v in (("request_bp", request_bp), ("limit_bp", limit_bp)):
            if v is not None:
                _check_share(name, v)
        t = self.policy.tenant[slot]
        with _Seqlock(self.policy.hdr):
            if request_bp is not None:
                t.request_bp = request_bp
            if limit_bp is not None:
                t.limit_bp = limit_bp
            if priority is not None:
                t.priority = priority

    def release_tenant(self, slot: int) -> None:
        """Free a tenant slot when its container is gone (the agent owns slot assignment)."""
        t = self.policy.tenant[slot]
        with _Seqlock(self.policy.hdr):
            t.owner_key = 0
            t.request_bp = t.limit_bp = t.priority = 0
        self._reset_tenant(slot)

    def _reset_tenant(self, slot: int) -> None:
        if not 0 <= slot < len(self._tv):
            raise IndexError(f"tenant slot {slot} out of range")
        ctypes.memmove(ctypes.addressof(self._tv[slot]), bytes(_fresh_tenant(slot)), ctypes.sizeof(L.TenantState))

    def tenants(self) -> tuple[TenantView, ...]:
        """Owned slots: the policy, with the demand of the owner's own file."""
        out = []
        for i in range(int(self.policy.hdr.ntenants)):
            p = self.policy.tenant[i]
            if not p.owner_key:
                continue
            t = self._tv[i]
            mine = int(t.owner_key) == int(p.owner_key)  # a file counts only for its owner
            out.append(
                TenantView(
                    i,
                    int(p.owner_key),
                    int(p.request_bp),
                    int(p.limit_bp),
                    int(p.priority),
                    int(t.effective_bp) if mine else 0,
                    int(t.last_demand_ns) if mine else 0,
                    int(t.gpu_time_ns) if mine else 0,
                )
            )
        return tuple(out)


def _fresh_tenant(slot: int) -> L.TenantState:
    t = L.TenantState()
    t.magic = L.XPU_TENANT_MAGIC
    t.version = LAYOUT_VERSION
    t.slot = slot
    return t


# --------------------------------------------------------------------------- Prometheus


@dataclass(frozen=True, slots=True)
class SliceRef:
    """One vXPU slice to export: a bounded id (never a pod name) and its region file."""

    slice_id: str
    path: str


class ShimRegionCollector:
    """Collector over the container regions of this node.

    ``slices`` is called on every scrape, so slices that end stop being exported at once.
    The measured share is exported twice: the shim's own EWMA (gauge) and, computed here, the
    GPU-time rate between two scrapes; the raw counters are exported too, for ``rate()``.
    """

    def __init__(
        self,
        slices: Callable[[], Iterable[SliceRef]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slices = slices
        self._clock = clock
        self._last: dict[tuple[str, int], tuple[float, int]] = {}
        self.read_errors = 0

    def collect(self) -> Iterator[Metric]:
        labels = ["slice", "device"]
        families = [(kind(name, doc, labels=labels), value) for name, doc, kind, value in _SLICE_SERIES]
        share_rate = GaugeMetricFamily(
            "xpupool_vxpu_share_measured_scrape_ratio", "Measured GPU-time share between the last two scrapes",
            labels=labels,
        )
        procs = GaugeMetricFamily(
            "xpupool_vxpu_processes", "Processes of the slice holding a shim slot", labels=["slice"]
        )
        now = self._clock()
        seen: set[tuple[str, int]] = set()
        for ref in self._slices():
            try:
                with ShimRegion.open(ref.path) as reg:
                    snap = reg.snapshot()
            except (OSError, RegionError):
                self.read_errors += 1
                continue
            procs.add_metric([ref.slice_id], float(len(snap.processes)))
            for d in snap.devices:
                values = [ref.slice_id, d.uuid or str(d.index)]
                for family, value in families:
                    family.add_metric(values, value(d))
                key = (ref.slice_id, d.index)
                seen.add(key)
                prev = self._last.get(key)
                self._last[key] = (now, d.gpu_time_ns)
                if prev is not None and now > prev[0] and d.gpu_time_ns >= prev[1]:
                    share_rate.add_metric(values, (d.gpu_time_ns - prev[1]) / 1e9 / (now - prev[0]))
        for key in list(self._last):
            if key not in seen:
                del self._last[key]
        yield from (family for family, _ in families)
        yield share_rate
        yield procs


# (name, help, family type, value of one device) for every per-slice series the collector exports
_SLICE_SERIES: tuple[tuple[str, str, type[GaugeMetricFamily] | type[CounterMetricFamily],
                           Callable[[DeviceUsage], float]], ...] = (
    ("xpupool_vxpu_memory_granted_bytes", "Device memory quota of the slice (0 = none)", GaugeMetricFamily,
     lambda d: float(d.mem_limit_bytes)),
    ("xpupool_vxpu_memory_used_bytes", "Device memory charged to the slice by the shim", GaugeMetricFamily,
     lambda d: float(d.mem_used_bytes)),
    ("xpupool_vxpu_memory_peak_bytes", "Peak charged memory", GaugeMetricFamily, lambda d: float(d.mem_peak_bytes)),
    ("xpupool_vxpu_oom_refusals", "Allocations refused with OUT_OF_MEMORY by the quota", CounterMetricFamily,
     lambda d: float(d.oom_events)),
    ("xpupool_vxpu_reaped_bytes", "Charges released from processes that died", CounterMetricFamily,
     lambda d: float(d.reaped_bytes)),
    ("xpupool_vxpu_accounting_errors", "Saturated releases and failed measurements", CounterMetricFamily,
     lambda d: float(d.accounting_errors)),
    ("xpupool_vxpu_share_granted_ratio", "Guaranteed compute share (fraction of a card)", GaugeMetricFamily,
     lambda d: d.share_request_bp / SHARE_FULL_BP),
    ("xpupool_vxpu_share_limit_ratio", "Burst cap of the compute share (fraction of a card)", GaugeMetricFamily,
     lambda d: (d.share_limit_bp or d.share_request_bp) / SHARE_FULL_BP),
    ("xpupool_vxpu_share_effective_ratio", "Share the limiter applies now (request + idle capacity, capped by limit)",
     GaugeMetricFamily, lambda d: d.effective_share_bp / SHARE_FULL_BP),
    ("xpupool_vxpu_share_measured_ratio", "Measured GPU-time share, shim EWMA", GaugeMetricFamily,
     lambda d: d.measured_share_bp / SHARE_FULL_BP),
    ("xpupool_vxpu_gpu_time_seconds", "GPU busy time measured by the shim", CounterMetricFamily,
     lambda d: d.gpu_time_ns / 1e9),
    ("xpupool_vxpu_throttle_seconds", "Time launches were held back by the limiter", CounterMetricFamily,
     lambda d: d.throttle_ns / 1e9),
    ("xpupool_vxpu_launches", "Kernel/graph launches", CounterMetricFamily, lambda d: float(d.launches)),
    ("xpupool_vxpu_throttled_launches", "Launches that waited for the limiter", CounterMetricFamily,
     lambda d: float(d.throttled_launches)),
)

def layout() -> dict[str, tuple[int, int]]:
    """Offsets and sizes of the generated mirror, keyed like ``native/tools/region_layout.c`` prints them."""
    out: dict[str, tuple[int, int]] = {}
    for name, (st, _size) in L.STRUCTS.items():
        out[f"sizeof.{name}"] = (0, ctypes.sizeof(st))
        for entry in st._fields_:
            fname, ftype = entry[0], entry[1]
            out[f"{name}.{fname}"] = (getattr(st, fname).offset, ctypes.sizeof(ftype))
    return out
