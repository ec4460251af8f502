"""Node-agent side of the in-container shim's shared regions (``native/include/xpushim_region.h``).

The C header is the single definition of the binary layout; this module mirrors it with
``ctypes`` structures (natural alignment, no packing, like the C compiler) and
``tests/agent/test_shim_region.py`` checks every offset and size against a tiny C program
(``native/tools/region_layout.c``) compiled from that header.

Two kinds of files, both ``mmap``'d ``MAP_SHARED``:

* **Container region** — one per container and device set. The agent writes the config part of each
  device entry (UUID, memory quota, compute request/limit in basis points, priority, card region
  path and tenant slot); every shim process of the container writes the usage part and its own
  process slot. Config writes are a seqlock on ``header.generation`` (odd while writing), so a live
  resize is picked up by running workloads within about one limiter refresh (1 ms).
* **Card region** — one per physical card, shared by every container on it; shims publish demand
  there and compute their work-conserving effective share from it. The agent only creates it.

Readers reject unknown magic, versions and sizes (``RegionError``). Nothing here is a security
boundary: a tenant can write to its own region; see ``docs/isolation.md``.

``ShimRegionCollector`` exports per-slice usage to Prometheus: granted vs used memory, granted vs
measured compute share, GPU time, throttle time, launches, OOM refusals. Labels are bounded
(slice id and device UUID, no pod names).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

REGION_MAGIC = 0x3147455255505858
CARD_MAGIC = 0x3144524143555058
REGION_VERSION = 1
CARD_VERSION = 1
MAX_DEVICES = 16
MAX_SLOTS = 128
MAX_TENANTS = 32
UUID_LEN = 64
PATH_LEN = 192
SHARE_FULL_BP = 10000
ENV_REGION = "XPUSHIM_REGION"
DEFAULT_REGION_PATH = "/run/xpupool/shim/region"
POLICY_FAIL_OPEN_ON_BROKEN = 0x1
SLOT_FREE, SLOT_ACTIVE, SLOT_REAPING = 0, 1, 2

_u8, _u32, _i32, _u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64


class RegionHeader(ctypes.Structure):
    _fields_ = (
        ("magic", _u64),
        ("version", _u32),
        ("header_size", _u32),
        ("total_size", _u64),
        ("generation", _u64),
        ("ndevices", _u32),
        ("nslots", _u32),
        ("device_offset", _u32),
        ("device_stride", _u32),
        ("slot_offset", _u32),
        ("slot_stride", _u32),
        ("container_key", _u64),
        ("policy", _u32),
        ("reserved0", _u32),
        ("lock_init", _u32),
        ("reserved1", _u32),
        ("reserved2", _u64 * 3),
        ("lock", _u8 * 64),
        ("reserved3", _u64 * 11),
    )


class DeviceEntry(ctypes.Structure):
    _fields_ = (
        ("uuid", ctypes.c_char * UUID_LEN),
        ("ordinal", _u32),
        ("cfg_flags", _u32),
        ("mem_limit", _u64),
        ("share_request_bp", _u32),
        ("share_limit_bp", _u32),
        ("priority", _u32),
        ("period_us", _u32),
        ("card_slot", _u32),
        ("reserved0", _u32),
        ("card_path", ctypes.c_char * PATH_LEN),
        ("reserved1", _u64 * 3),
        ("mem_used", _u64),
        ("mem_peak", _u64),
        ("oom_events", _u64),
        ("accounting_errors", _u64),
        ("gpu_time_ns", _u64),
        ("throttle_ns", _u64),
        ("launches", _u64),
        ("throttled_launches", _u64),
        ("lim_tat_ns", _u64),
        ("last_launch_ns", _u64),
        ("effective_share_bp", _u32),
        ("measured_share_bp", _u32),
        ("reaped_bytes", _u64),
        ("reserved2", _u64 * 12),
    )


class Slot(ctypes.Structure):
    _fields_ = (
        ("state", _u32),
        ("pid", _i32),
        ("start_time", _u64),
        ("host_pid", _i32),
        ("reserved0", _u32),
        ("mem_used", _u64 * MAX_DEVICES),
        ("reserved1", _u64 * 13),
    )


class Region(ctypes.Structure):
    _fields_ = (
        ("hdr", RegionHeader),
        ("dev", DeviceEntry * MAX_DEVICES),
        ("slot", Slot * MAX_SLOTS),
    )


class CardHeader(ctypes.Structure):
    _fields_ = (
        ("magic", _u64),
        ("version", _u32),
        ("header_size", _u32),
        ("total_size", _u64),
        ("generation", _u64),
        ("ntenants", _u32),
        ("tenant_offset", _u32),
        ("tenant_stride", _u32),
        ("reserved0", _u32),
        ("uuid", ctypes.c_char * UUID_LEN),
        ("reserved1", _u64 * 2),
    )


class CardTenant(ctypes.Structure):
    _fields_ = (
        ("owner_key", _u64),
        ("request_bp", _u32),
        ("limit_bp", _u32),
        ("priority", _u32),
        ("effective_bp", _u32),
        ("last_demand_ns", _u64),
        ("gpu_time_ns", _u64),
        ("reserved", _u64 * 3),
    )


class Card(ctypes.Structure):
    _fields_ = (("hdr", CardHeader), ("tenant", CardTenant * MAX_TENANTS))


class RegionError(ValueError):
    """A region file that this reader must not use (wrong magic, version or size)."""


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """What the agent grants one device of a container. Shares are basis points of one card."""

    uuid: str = ""
    ordinal: int = 0
    mem_limit_bytes: int = 0
    share_request_bp: int = 0
    share_limit_bp: int = 0
    priority: int = 0
    period_us: int = 0
    card_path: str = ""
    card_slot: int = 0


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    index: int
    uuid: str
    mem_limit_bytes: int
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
        fd = os.open(path, os.O_RDWR)
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


class ShimRegion:
    """A container region. Use ``create`` (agent, at allocation) or ``open`` (agent restart, metrics)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._m = _Mapped(Path(path), ctypes.sizeof(Region))
        view = Region.from_buffer(self._m.mm)
        err = _region_error(view)
        if err:
            del view  # release the buffer export before closing the map
            self._m.close()
            raise RegionError(f"{path}: {err}")
        self._view: Region | None = view

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        return cls(path)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        devices: Sequence[DeviceConfig],
        *,
        container_key: int,
        policy: int = 0,
    ) -> Self:
        """Write a fresh region atomically (temp file + rename): shims never see a half-made file."""
        if not devices or len(devices) > MAX_DEVICES:
            raise ValueError(f"1..{MAX_DEVICES} devices required")
        if container_key <= 0:
            raise ValueError("container_key must be a positive integer")
        target = Path(path)
        reg = Region()
        h = reg.hdr
        h.magic = REGION_MAGIC
        h.version = REGION_VERSION
        h.header_size = ctypes.sizeof(RegionHeader)
        h.total_size = ctypes.sizeof(Region)
        h.ndevices = len(devices)
        h.nslots = MAX_SLOTS
        h.device_offset = Region.dev.offset
        h.device_stride = ctypes.sizeof(DeviceEntry)
        h.slot_offset = Region.slot.offset
        h.slot_stride = ctypes.sizeof(Slot)
        h.container_key = container_key
        h.policy = policy
        for i, cfg in enumerate(devices):
            _apply_config(reg.dev[i], cfg)
        h.generation = 2
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(bytes(reg))
        os.chmod(tmp, 0o666)  # every uid in the container maps it read-write (cooperative, see docs)
        os.replace(tmp, target)
        return cls(target)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._view = None
        self._m.close()

    @property
    def view(self) -> Region:
        if self._view is None:
            raise ValueError("region is closed")
        return self._view

    @property
    def generation(self) -> int:
        return int(self.view.hdr.generation)

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
        nothing is killed.
        """
        v = self.view
        if not 0 <= index < v.hdr.ndevices:
            raise IndexError(f"device index {index} out of range")
        if share_request_bp is not None:
            _check_share("share_request_bp", share_request_bp)
        if share_limit_bp is not None:
            _check_share("share_limit_bp", share_limit_bp)
        req = v.dev[index].share_request_bp if share_request_bp is None else share_request_bp
        lim = v.dev[index].share_limit_bp if share_limit_bp is None else share_limit_bp
        if lim and lim < req:
            raise ValueError("share_limit_bp must be >= share_request_bp (or 0 = same as request)")
        gen = int(v.hdr.generation)
        if gen % 2:
            gen += 1  # a previous writer died mid-update: complete its cycle
        v.hdr.generation = gen + 1
        d = v.dev[index]
        if mem_limit_bytes is not None:
            if mem_limit_bytes < 0:
                raise ValueError("mem_limit_bytes must be >= 0")
            d.mem_limit = mem_limit_bytes
        if share_request_bp is not None:
            d.share_request_bp = share_request_bp
        if share_limit_bp is not None:
            d.share_limit_bp = share_limit_bp
        if priority is not None:
            d.priority = priority
        v.hdr.generation = gen + 2
        return gen + 2

    def set_host_pid(self, slot: int, host_pid: int) -> None:
        """Record the host PID of a container process (the agent resolves it via cgroup/NSpid)."""
        self.view.slot[slot].host_pid = host_pid

    def snapshot(self) -> RegionSnapshot:
        v = self.view
        devs = []
        for i in range(v.hdr.ndevices):
            d = v.dev[i]
            devs.append(
                DeviceUsage(
                    index=i,
                    uuid=d.uuid.decode(errors="replace"),
                    mem_limit_bytes=int(d.mem_limit),
                    mem_used_bytes=int(d.mem_used),
                    mem_peak_bytes=int(d.mem_peak),
                    oom_events=int(d.oom_events),
                    accounting_errors=int(d.accounting_errors),
                    reaped_bytes=int(d.reaped_bytes),
                    share_request_bp=int(d.share_request_bp),
                    share_limit_bp=int(d.share_limit_bp),
                    priority=int(d.priority),
                    effective_share_bp=int(d.effective_share_bp),
                    measured_share_bp=int(d.measured_share_bp),
                    gpu_time_ns=int(d.gpu_time_ns),
                    throttle_ns=int(d.throttle_ns),
                    launches=int(d.launches),
                    throttled_launches=int(d.throttled_launches),
                )
            )
        procs = []
        for s in range(MAX_SLOTS):
            sl = v.slot[s]
            if sl.state != SLOT_ACTIVE:
                continue
            procs.append(
                ProcessSlot(
                    index=s,
                    pid=int(sl.pid),
                    host_pid=int(sl.host_pid),
                    start_time=int(sl.start_time),
                    mem_used_bytes=tuple(int(sl.mem_used[i]) for i in range(v.hdr.ndevices)),
                )
            )
        return RegionSnapshot(int(v.hdr.generation), int(v.hdr.container_key), tuple(devs), tuple(procs))


def _region_error(view: Region) -> str | None:
    h = view.hdr
    if h.magic != REGION_MAGIC:
        return f"bad magic {h.magic:#x}"
    if h.version != REGION_VERSION:
        return f"unsupported region version {h.version}"
    if (
        h.header_size < ctypes.sizeof(RegionHeader)
        or h.ndevices > MAX_DEVICES
        or h.device_offset != Region.dev.offset
        or h.device_stride != ctypes.sizeof(DeviceEntry)
        or h.slot_offset != Region.slot.offset
        or h.slot_stride != ctypes.sizeof(Slot)
    ):
        return "layout fields do not match this reader"
    return None


def _apply_config(d: DeviceEntry, cfg: DeviceConfig) -> None:
    _check_share("share_request_bp", cfg.share_request_bp)
    _check_share("share_limit_bp", cfg.share_limit_bp)
    if cfg.share_limit_bp and cfg.share_limit_bp < cfg.share_request_bp:
        raise ValueError("share_limit_bp must be >= share_request_bp (or 0 = same as request)")
    if cfg.mem_limit_bytes < 0 or not 0 <= cfg.card_slot < MAX_TENANTS:
        raise ValueError("mem_limit_bytes must be >= 0 and card_slot within the card's tenants")
    d.uuid = _encode(cfg.uuid, UUID_LEN, "uuid")
    d.ordinal = cfg.ordinal
    d.mem_limit = cfg.mem_limit_bytes
    d.share_request_bp = cfg.share_request_bp
    d.share_limit_bp = cfg.share_limit_bp
    d.priority = cfg.priority
    d.period_us = cfg.period_us
    d.card_slot = cfg.card_slot
    d.card_path = _encode(cfg.card_path, PATH_LEN, "card_path")


def _card_ok(view: Card) -> bool:
    h = view.hdr
    return bool(
        h.magic == CARD_MAGIC
        and h.version == CARD_VERSION
        and h.ntenants <= MAX_TENANTS
        and h.tenant_offset == Card.tenant.offset
        and h.tenant_stride == ctypes.sizeof(CardTenant)
    )


@dataclass(frozen=True, slots=True)
class TenantView:
    slot: int
    owner_key: int
    request_bp: int
    limit_bp: int
    priority: int
    effective_bp: int
    last_demand_ns: int
    gpu_time_ns: int


class CardRegion:
    """A per-card region: created by the agent, written by the shims of every tenant."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._m = _Mapped(Path(path), ctypes.sizeof(Card))
        view = Card.from_buffer(self._m.mm)
        if not _card_ok(view):
            del view
            self._m.close()
            raise RegionError(f"{path}: not a card region of version {CARD_VERSION}")
        self._view: Card | None = view

    @classmethod
    def create(cls, path: str | os.PathLike[str], uuid: str) -> Self:
        target = Path(path)
        card = Card()
        card.hdr.magic = CARD_MAGIC
        card.hdr.version = CARD_VERSION
        card.hdr.header_size = ctypes.sizeof(CardHeader)
        card.hdr.total_size = ctypes.sizeof(Card)
        card.hdr.ntenants = MAX_TENANTS
        card.hdr.tenant_offset = Card.tenant.offset
        card.hdr.tenant_stride = ctypes.sizeof(CardTenant)
        card.hdr.uuid = _encode(uuid, UUID_LEN, "uuid")
        card.hdr.generation = 2
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(bytes(card))
        os.chmod(tmp, 0o666)
        os.replace(tmp, target)
        return cls(target)

    def close(self) -> None:
        self._view = None
        self._m.close()

    def release_tenant(self, slot: int) -> None:
        """Free a tenant slot when its container is gone (the agent owns slot assignment)."""
        if self._view is None:
            raise ValueError("card region is closed")
        t = self._view.tenant[slot]
        t.last_demand_ns = 0
        t.owner_key = 0

    def tenants(self) -> tuple[TenantView, ...]:
        if self._view is None:
            raise ValueError("card region is closed")
        out = []
        for i in range(self._view.hdr.ntenants):
            t = self._view.tenant[i]
            if t.owner_key:
                out.append(
                    TenantView(
                        i,
                        int(t.owner_key),
                        int(t.request_bp),
                        int(t.limit_bp),
                        int(t.priority),
                        int(t.effective_bp),
                        int(t.last_demand_ns),
                        int(t.gpu_time_ns),
                    )
                )
        return tuple(out)


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
    """Offsets and sizes of this mirror, keyed like ``native/tools/region_layout.c`` prints them."""
    out: dict[str, tuple[int, int]] = {}
    structs: dict[str, type[ctypes.Structure]] = {
        "xpu_region_header": RegionHeader,
        "xpu_device_entry": DeviceEntry,
        "xpu_slot": Slot,
        "xpu_region": Region,
        "xpu_card_header": CardHeader,
        "xpu_card_tenant": CardTenant,
        "xpu_card": Card,
    }
    for name, st in structs.items():
        out[f"sizeof.{name}"] = (0, ctypes.sizeof(st))
        for entry in st._fields_:
            fname, ftype = entry[0], entry[1]
            out[f"{name}.{fname}"] = (getattr(st, fname).offset, ctypes.sizeof(ftype))
    out["const.XPU_REGION_MAGIC"] = (REGION_MAGIC, 0)
    out["const.XPU_CARD_MAGIC"] = (CARD_MAGIC, 0)
    out["const.XPU_REGION_VERSION"] = (REGION_VERSION, 0)
    out["const.XPU_CARD_VERSION"] = (CARD_VERSION, 0)
    out["const.XPU_MAX_DEVICES"] = (MAX_DEVICES, 0)
    out["const.XPU_MAX_SLOTS"] = (MAX_SLOTS, 0)
    out["const.XPU_MAX_TENANTS"] = (MAX_TENANTS, 0)
    return out
