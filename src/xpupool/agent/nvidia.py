"""NVIDIA discovery through NVML (``nvidia-ml-py``, imported lazily as ``pynvml``).

The NVML calls are confined to :func:`sample_device`, which turns one handle into a plain
:class:`NvmlSample`; :func:`device_from_sample` maps a sample to a :class:`DeviceInfo` and is pure,
so it is tested on recorded values without a GPU. Cards whose queries fail are reported unhealthy
with the NVML error, keyed by UUID when it could be read.

Schedulable memory is ``total - reserved`` (NVML ``nvmlMemory_v2``; the driver keeps a few hundred
MiB that no process can allocate, the KAI #2212 OOM class); v1 memory info (no ``reserved``) is
used as is when v2 is not supported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xpupool.agent.discovery import DeviceInfo, Discovery
from xpupool.core.model import Vendor

BACKEND_NAME = "nvidia"
MIB = 1024 * 1024
#: Device nodes every NVIDIA container needs besides ``/dev/nvidia<minor>``.
CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


@dataclass(frozen=True, slots=True)
class NvmlSample:
    """Raw values read from NVML for one card (bytes, percent, milliwatts, as NVML gives them)."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_reserved_bytes: int
    memory_used_bytes: int
    gpu_util_pct: int | None
    minor_number: int | None
    temperature_c: int | None
    power_mw: int | None
    numa_node: int | None
    error: str = ""


def device_from_sample(sample: NvmlSample) -> DeviceInfo:
    """Map one NVML sample to a :class:`DeviceInfo` (pure)."""
    total_mib = max(0, (sample.memory_total_bytes - sample.memory_reserved_bytes) // MIB)
    paths: tuple[str, ...] = ()
    if sample.minor_number is not None:
        paths = (f"/dev/nvidia{sample.minor_number}", *CONTROL_DEVICES)
    healthy = not sample.error and total_mib > 0
    reason = sample.error or ("" if total_mib > 0 else "NVML reports no memory")
    return DeviceInfo(
        uuid=sample.uuid or f"nvidia-index-{sample.index}",
        index=sample.index,
        vendor=Vendor.NVIDIA,
        model=_short_model(sample.name),
        memory_mib=total_mib,
        healthy=healthy,
        health_reason=reason,
        memory_used_mib=sample.memory_used_bytes // MIB if not sample.error else None,
        utilization_pct=sample.gpu_util_pct,
        temperature_c=sample.temperature_c,
        power_w=None if sample.power_mw is None else sample.power_mw / 1000.0,
        numa_node=sample.numa_node,
        topology_group=sample.numa_node or 0,
        device_paths=paths,
    )


def _short_model(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"H100-80GB-HBM3"`` (the model label users write)."""
    text = name.strip()
    for prefix in ("NVIDIA ", "Tesla ", "GeForce "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return "-".join(text.split()) or "unknown"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sample_device(nvml: Any, index: int) -> NvmlSample:
    """Read one card through the pynvml module ``nvml``; NVML errors become ``error``."""
    uuid = ""
    name = ""
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        name = _text(nvml.nvmlDeviceGetName(handle))
        reserved = 0
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
            reserved = int(getattr(mem, "reserved", 0))
        except (TypeError, AttributeError, nvml.NVMLError):
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        util: int | None
        try:
            util = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nvml.NVMLError:
            util = None
        minor = _optional(nvml, nvml.nvmlDeviceGetMinorNumber, handle)
        temp = _optional(nvml, nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
        power = _optional(nvml, nvml.nvmlDeviceGetPowerUsage, handle)
        numa_fn = getattr(nvml, "nvmlDeviceGetNumaNodeId", None)
        numa = _optional(nvml, numa_fn, handle) if numa_fn else None
        return NvmlSample(
            index,
            uuid,
            name,
            int(mem.total),
            reserved,
            int(mem.used),
            util,
            minor,
            temp,
            power,
            numa if numa is None or numa >= 0 else None,
        )
    except nvml.NVMLError as exc:
        return NvmlSample(index, uuid, name, 0, 0, 0, None, None, None, None, None, error=f"NVML: {exc}")


def _optional(nvml: Any, fn: Any, *args: Any) -> int | None:
    try:
        return int(fn(*args))
    except nvml.NVMLError:
        return None


class NvidiaBackend:
    """Discovery over NVML. ``nvml`` is the pynvml module (tests may pass a fake NVML module)."""

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml
        self._initialised = False

    @property
    def vendor(self) -> Vendor:
        return Vendor.NVIDIA

    def _load(self) -> tuple[Any | None, str]:
        if self._nvml is None:
            try:
                import pynvml  # nvidia-ml-py
            except ImportError as exc:
                return None, f"nvidia-ml-py not installed: {exc}"
            self._nvml = pynvml
        nvml = self._nvml
        if not self._initialised:
            try:
                nvml.nvmlInit()
            except nvml.NVMLError as exc:
                return None, f"NVML init failed (no driver or libnvidia-ml.so.1?): {exc}"
            self._initialised = True
        return nvml, ""

    def discover(self) -> Discovery:
        nvml, error = self._load()
        if nvml is None:
            return Discovery(Vendor.NVIDIA, (), (error,))
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            return Discovery(Vendor.NVIDIA, (), (f"NVML device count failed: {exc}",))
        devices = tuple(device_from_sample(sample_device(nvml, i)) for i in range(count))
        errors = tuple(f"card {d.index} ({d.uuid}): {d.health_reason}" for d in devices if not d.healthy)
        return Discovery(Vendor.NVIDIA, devices, errors)

    def close(self) -> None:
        if self._initialised and self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._initialised = False


def make(options: Mapping[str, Any]) -> NvidiaBackend:
    return NvidiaBackend(options.get("nvml"))
