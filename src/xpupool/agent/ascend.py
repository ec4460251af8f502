"""Huawei Ascend discovery by parsing ``npu-smi info`` (the DCMI command-line front end).

``npu-smi info`` prints a box table with two rows per chip::

    | NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
    | Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
    +===========================+===============+====================================================+
    | 0     910B3               | OK            | 93.6        37                0    / 0             |
    | 0                         | 0000:C1:00.0  | 0           0    / 0          3161 / 65536         |

Training cards (910/910B/910C) report device memory as ``HBM-Usage``; inference cards (310P) have
no HBM column and report it as ``Memory-Usage``; multi-chip inference cards print
``Chip  Device`` (chip id and logical device id) in the second row. :func:`parse_npu_smi_info` is
pure and tested on recorded outputs (``tests/agent/fixtures/npu-smi-*.txt``).

Identity: ``npu-smi info`` prints no UUID, so a chip is keyed by its PCI bus id
and chip id
(``ascend-0000:c1:00.0-chip0``), which is stable for a slot across reboots and driver reloads; the
logical device id is the index used in ``ASCEND_VISIBLE_DEVICES`` and ``/dev/davinci<id>``.
Health ``OK`` and ``Warning`` are schedulable; ``Alarm``, ``Critical`` and anything else are not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xpupool.agent._command import Runner, subprocess_runner
from xpupool.agent.discovery import DeviceInfo, Discovery
from xpupool.core.model import Vendor

BACKEND_NAME = "ascend"
CONTROL_DEVICES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
HEALTHY_STATES = frozenset({"OK", "WARNING"})

_USAGE = re.compile(r"(\d+)\s*/\s*(\d+)")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_BUS = re.compile(r"^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")


@dataclass(frozen=True, slots=True)
class NpuChip:
    """One chip row pair of ``npu-smi info`` (values as printed)."""

    npu_id: int
    chip_id: int
    device_id: int
    name: str
    health: str
    power_w: float | None
    temperature_c: int | None
    bus_id: str
    aicore_pct: int | None
    memory_used_mb: int | None
    memory_total_mb: int | None


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _num(text: str) -> float | None:
    return float(text) if _NUMBER.match(text) else None


def parse_npu_smi_info(text: str) -> tuple[list[NpuChip], list[str]]:
    """Parse ``npu-smi info`` output into chips plus problems (unparseable rows, no table)."""
    chips: list[NpuChip] = []
    problems: list[str] = []
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("|")]
    has_hbm = any("HBM-Usage" in ln for ln in lines)
    chip_device = any(re.search(r"\|\s*Chip\s+Device\s*\|", ln) for ln in lines)
    top: list[str] | None = None
    for line in lines:
        cells = _cells(line)
        if len(cells) != 3:
            top = None  # process table or banner
            continue
        first = cells[0].split()
        if not first or not first[0].isdigit():
            top = None  # header row
            continue
        if not _BUS.match(cells[1]):
            # "NPU Name | Health | Power Temp ..." row: starts a card; its chips follow.
            top = cells if len(first) >= 2 else None
            continue
        if top is None:
            problems.append(f"chip row without an NPU row: {line.strip()!r}")
            continue
        bottom = cells
        npu_fields, health = top[0].split(), top[1]
        try:
            npu_id = int(npu_fields[0])
            name = " ".join(npu_fields[1:])
            ids = bottom[0].split()
            chip_id = int(ids[0])
            device_id = int(ids[1]) if chip_device and len(ids) > 1 else npu_id
        except (ValueError, IndexError):
            problems.append(f"cannot parse npu-smi rows: {top!r} / {bottom!r}")
            continue
        stats = top[2].split()
        power = _num(stats[0]) if stats else None
        temp = _num(stats[1]) if len(stats) > 1 else None
        bus_id = bottom[1].strip()
        usages = _USAGE.findall(bottom[2])
        aicore_text = bottom[2].split()[0] if bottom[2].split() else ""
        aicore = _num(aicore_text)
        mem_used = mem_total = None
        if usages:
            # With an HBM column the device memory is the last pair; without it, the only pair.
            used, total = usages[-1] if has_hbm or len(usages) == 1 else usages[0]
            mem_used, mem_total = int(used), int(total)
        chips.append(
            NpuChip(
                npu_id=npu_id,
                chip_id=chip_id,
                device_id=device_id,
                name=name,
                health=health,
                power_w=power,
                temperature_c=None if temp is None else int(temp),
                bus_id=bus_id.lower(),
                aicore_pct=None if aicore is None else int(aicore),
                memory_used_mb=mem_used,
                memory_total_mb=mem_total,
            )
        )
    if not chips and not problems:
        problems.append("npu-smi info printed no NPU table")
    return chips, problems


def device_from_chip(chip: NpuChip) -> DeviceInfo:
    """Map one parsed chip to a :class:`DeviceInfo` (pure)."""
    healthy = chip.health.upper() in HEALTHY_STATES and bool(chip.memory_total_mb)
    reason = "" if healthy else (f"npu-smi health {chip.health}" if chip.memory_total_mb else "no device memory")
    return DeviceInfo(
        uuid=f"ascend-{chip.bus_id}-chip{chip.chip_id}",
        index=chip.device_id,
        vendor=Vendor.ASCEND,
        model=_model(chip.name),
        memory_mib=chip.memory_total_mb or 0,
        healthy=healthy,
        health_reason=reason,
        memory_used_mib=chip.memory_used_mb,
        utilization_pct=chip.aicore_pct,
        temperature_c=chip.temperature_c,
        power_w=chip.power_w,
        device_paths=(f"/dev/davinci{chip.device_id}", *CONTROL_DEVICES),
    )


def _model(name: str) -> str:
    """``910B3`` -> ``Ascend910B3``; ``310P3`` -> ``Ascend310P3`` (the form the request syntax uses)."""
    name = name.strip()
    return name if name.lower().startswith("ascend") else f"Ascend{name}"


class AscendBackend:
    """Discovery by running ``npu-smi info`` through ``runner``."""

    def __init__(self, runner: Runner | None = None, npu_smi: str = "npu-smi") -> None:
        self._run = runner or subprocess_runner()
        self._npu_smi = npu_smi

    @property
    def vendor(self) -> Vendor:
        return Vendor.ASCEND

    def discover(self) -> Discovery:
        result = self._run([self._npu_smi, "info"])
        if not result.ok:
            return Discovery(
                Vendor.ASCEND,
                (),
                (f"npu-smi info failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()[:200]}",),
            )
        chips, problems = parse_npu_smi_info(result.stdout)
        devices = tuple(device_from_chip(c) for c in chips)
        errors = list(problems)
        errors += [f"NPU {d.index} ({d.uuid}): {d.health_reason}" for d in devices if not d.healthy]
        return Discovery(Vendor.ASCEND, devices, tuple(errors))


def make(options: Mapping[str, Any]) -> AscendBackend:
    return AscendBackend(options.get("runner"), str(options.get("npu_smi", "npu-smi")))
