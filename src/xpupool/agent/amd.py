"""AMD discovery: the ``amdsmi`` Python library when importable, else ``amd-smi ... --json``.

Both paths produce the same per-card dict shape consumed by :func:`devices_from_amd_smi`, which is
pure and tested on recorded ``amd-smi list/static/metric --json`` outputs
(``tests/agent/fixtures/amd-smi-*.json``). amd-smi's JSON changed between ROCm releases: values
appear either as plain numbers or as ``{"value": N, "unit": "MB"}``, unavailable values as
``"N/A"``, and newer releases wrap the card list as ``{"gpu_data": [...]}``; all are accepted.

Identity is the amd-smi UUID (falls back to the PCI BDF); ``index`` is the amd-smi GPU index used
in ``HIP_VISIBLE_DEVICES``. Containers get ``/dev/kfd`` plus the card's ``/dev/dri/renderD<N>``
(``render_minor`` when reported, else ``128 + index``, the kernel's default numbering).

The ``amdsmi`` library path (:func:`_records_from_library`) has not been run on AMD hardware yet
(no AMD machine in CI); the CLI-parsing path is what the tests cover.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from xpupool.agent._command import Runner, subprocess_runner
from xpupool.agent.discovery import DeviceInfo, Discovery
from xpupool.core.model import Vendor

BACKEND_NAME = "amd"
_UNIT_TO_MIB = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "MIB": 1.0, "GB": 1024.0, "GIB": 1024.0}


def _cards(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, dict) and "gpu_data" in doc:
        doc = doc["gpu_data"]
    if isinstance(doc, dict):
        doc = [doc]
    return [c for c in doc if isinstance(c, dict)] if isinstance(doc, list) else []


def _value(raw: Any) -> float | None:
    """A number from ``5``, ``"5"``, ``{"value": 5, "unit": ...}``; ``None`` for ``"N/A"``."""
    if isinstance(raw, dict):
        raw = raw.get("value")
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int | float):
        return float(raw)
    try:
        return float(str(raw).strip().rstrip("%").split()[0])
    except (ValueError, IndexError):
        return None


def _mib(raw: Any, default_unit: str = "MB") -> int | None:
    number = _value(raw)
    if number is None:
        return None
    unit = str(raw.get("unit", default_unit)).upper() if isinstance(raw, dict) else default_unit
    return int(number * _UNIT_TO_MIB.get(unit, 1.0))


def _get(card: Mapping[str, Any], *path: str) -> Any:
    node: Any = card
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def devices_from_amd_smi(list_doc: Any, static_doc: Any, metric_doc: Any | None) -> tuple[list[DeviceInfo], list[str]]:
    """Join ``amd-smi list``, ``static`` and ``metric`` JSON by GPU index into devices (pure)."""
    problems: list[str] = []
    listed = {int(c["gpu"]): c for c in _cards(list_doc) if "gpu" in c}
    static = {int(c["gpu"]): c for c in _cards(static_doc) if "gpu" in c}
    metric = {int(c["gpu"]): c for c in _cards(metric_doc)} if metric_doc is not None else {}
    devices: list[DeviceInfo] = []
    for index in sorted(set(listed) | set(static)):
        ident = listed.get(index, {})
        info = static.get(index, {})
        live = metric.get(index, {})
        bdf = str(ident.get("bdf") or _get(info, "bus", "bdf") or "")
        uuid = str(ident.get("uuid") or "")
        if uuid.upper() in ("", "N/A"):
            uuid = f"amd-{bdf.lower()}" if bdf else f"amd-index-{index}"
        model = str(_get(info, "asic", "market_name") or "unknown")
        total = _mib(_get(info, "vram", "size"))
        if total is None:
            total = _mib(_get(live, "mem_usage", "total_vram"))
        used = _mib(_get(live, "mem_usage", "used_vram"))
        util = _value(_get(live, "usage", "gfx_activity"))
        temp = _value(_get(live, "temperature", "hotspot"))
        if temp is None:
            temp = _value(_get(live, "temperature", "edge"))
        power = _value(_get(live, "power", "socket_power"))
        numa = _value(_get(info, "numa", "node"))
        render = _value(ident.get("render_minor")) if "render_minor" in ident else None
        render_minor = int(render) if render is not None else 128 + index
        healthy = bool(total)
        reason = "" if healthy else "amd-smi reports no VRAM size"
        if not healthy:
            problems.append(f"GPU {index} ({uuid}): {reason}")
        devices.append(
            DeviceInfo(
                uuid=uuid,
                index=index,
                vendor=Vendor.AMD,
                model=_model(model),
                memory_mib=total or 0,
                healthy=healthy,
                health_reason=reason,
                memory_used_mib=used,
                utilization_pct=None if util is None else int(util),
                temperature_c=None if temp is None else int(temp),
                power_w=power,
                numa_node=None if numa is None else int(numa),
                topology_group=0 if numa is None else int(numa),
                device_paths=("/dev/kfd", f"/dev/dri/renderD{render_minor}"),
            )
        )
    if not devices:
        problems.append("amd-smi listed no GPU")
    return devices, problems


def _model(market_name: str) -> str:
    """``"AMD Instinct MI300X"`` -> ``"MI300X"``."""
    text = market_name.strip()
    for prefix in ("AMD ", "Instinct ", "Radeon "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return "-".join(text.split()) or "unknown"


def _records_from_library(
    amdsmi: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Build list/static/metric records from the ``amdsmi`` library (not yet run on hardware)."""
    listed: list[dict[str, Any]] = []
    static: list[dict[str, Any]] = []
    metric: list[dict[str, Any]] = []
    for index, handle in enumerate(amdsmi.amdsmi_get_processor_handles()):
        listed.append(
            {
                "gpu": index,
                "uuid": amdsmi.amdsmi_get_gpu_device_uuid(handle),
                "bdf": amdsmi.amdsmi_get_gpu_device_bdf(handle),
            }
        )
        asic = amdsmi.amdsmi_get_gpu_asic_info(handle)
        vram = amdsmi.amdsmi_get_gpu_vram_usage(handle)  # {"vram_total": MB, "vram_used": MB}
        activity = amdsmi.amdsmi_get_gpu_activity(handle)  # {"gfx_activity": %, ...}
        static.append(
            {
                "gpu": index,
                "asic": {"market_name": asic.get("market_name")},
                "vram": {"size": {"value": vram.get("vram_total"), "unit": "MB"}},
            }
        )
        metric.append(
            {
                "gpu": index,
                "usage": {"gfx_activity": activity.get("gfx_activity")},
                "mem_usage": {"used_vram": {"value": vram.get("vram_used"), "unit": "MB"}},
            }
        )
    return listed, static, metric


class AmdBackend:
    """Discovery through ``amdsmi`` (library) or ``amd-smi`` (CLI via ``runner``)."""

    def __init__(self, runner: Runner | None = None, *, use_library: bool = True, amd_smi: str = "amd-smi") -> None:
        self._run = runner or subprocess_runner()
        self._use_library = use_library
        self._amd_smi = amd_smi

    @property
    def vendor(self) -> Vendor:
        return Vendor.AMD

    def discover(self) -> Discovery:
        if self._use_library:
            try:
                import amdsmi  # type: ignore[import-not-found]  # ROCm's Python binding
            except ImportError:
                pass
            else:
                try:
                    amdsmi.amdsmi_init()
                    try:
                        docs = _records_from_library(amdsmi)
                    finally:
                        amdsmi.amdsmi_shut_down()
                except Exception as exc:  # the library raises its own AmdSmi*Exception types
                    return Discovery(Vendor.AMD, (), (f"amdsmi library failed: {exc}",))
                devices, problems = devices_from_amd_smi(*docs)
                return Discovery(Vendor.AMD, tuple(devices), tuple(problems))
        outputs: list[Any] = []
        for sub in ("list", "static", "metric"):
            result = self._run([self._amd_smi, sub, "--json"])
            if not result.ok:
                if sub == "metric":
                    outputs.append(None)  # live metrics are optional
                    continue
                return Discovery(
                    Vendor.AMD,
                    (),
                    (f"amd-smi {sub} failed ({result.returncode}): {result.stderr.strip()[:200]}",),
                )
            try:
                outputs.append(json.loads(result.stdout))
            except json.JSONDecodeError as exc:
                return Discovery(Vendor.AMD, (), (f"amd-smi {sub} printed invalid JSON: {exc}",))
        devices, problems = devices_from_amd_smi(outputs[0], outputs[1], outputs[2])
        return Discovery(Vendor.AMD, tuple(devices), tuple(problems))


def make(options: Mapping[str, Any]) -> AmdBackend:
    return AmdBackend(
        options.get("runner"),
        use_library=bool(options.get("use_library", True)),
        amd_smi=str(options.get("amd_smi", "amd-smi")),
    )


__all__: Sequence[str] = ("AmdBackend", "devices_from_amd_smi")
