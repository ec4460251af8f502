"""Vendor parsers on recorded command outputs, and the backend registry.

The ``npu-smi`` and ``amd-smi`` fixtures in ``fixtures/`` are reconstructed from the vendors'
documentation and published sample outputs (no Ascend or AMD machine was available); they keep
the exact layout those tools print (box tables, ``{"value", "unit"}`` JSON, ``"N/A"``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from xpupool.agent._command import CommandResult
from xpupool.agent.amd import AmdBackend, devices_from_amd_smi
from xpupool.agent.ascend import AscendBackend, parse_npu_smi_info
from xpupool.agent.discovery import backend_names, make_backend
from xpupool.agent.emulated import EmulatedBackend
from xpupool.agent.nvidia import NvidiaBackend, NvmlSample, device_from_sample
from xpupool.core.model import Vendor

from .conftest import FIXTURES


def replay(outputs: dict[tuple[str, ...], CommandResult]):  # type: ignore[no-untyped-def]
    calls: list[tuple[str, ...]] = []

    def run(argv: Sequence[str]) -> CommandResult:
        calls.append(tuple(argv))
        return outputs.get(tuple(argv), CommandResult(127, "", f"{argv[0]}: not found"))

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_npu_smi_910b_training_cards() -> None:
    chips, problems = parse_npu_smi_info((FIXTURES / "npu-smi-info-910b.txt").read_text())
    assert problems == []
    assert [(c.npu_id, c.device_id, c.health, c.memory_used_mb, c.memory_total_mb) for c in chips] == [
        (0, 0, "OK", 3161, 65536),
        (1, 1, "OK", 20480, 65536),
        (2, 2, "Critical", 3160, 65536),
        (3, 3, "Warning", 61000, 65536),
    ]
    assert chips[1].aicore_pct == 12 and chips[1].power_w == 96.2 and chips[1].bus_id == "0000:c2:00.0"


def test_npu_smi_backend_maps_health_and_identity() -> None:
    text = (FIXTURES / "npu-smi-info-910b.txt").read_text()
    backend = AscendBackend(replay({("npu-smi", "info"): CommandResult(0, text)}))
    found = backend.discover()
    assert [d.healthy for d in found.devices] == [True, True, False, True]  # Warning is schedulable
    lost = found.devices[2]
    assert lost.health_reason == "npu-smi health Critical" and lost.uuid == "ascend-0000:81:00.0-chip0"
    assert found.devices[0].model == "Ascend910B3" and found.devices[0].memory_mib == 65536
    assert found.devices[3].device_paths[0] == "/dev/davinci3"
    assert any("Critical" in e for e in found.errors)


def test_npu_smi_310p_duo_has_two_chips_per_card() -> None:
    chips, problems = parse_npu_smi_info((FIXTURES / "npu-smi-info-310p.txt").read_text())
    assert problems == []
    assert [(c.npu_id, c.chip_id, c.device_id, c.memory_total_mb) for c in chips] == [
        (8, 0, 0, 44280),
        (8, 1, 1, 43693),
        (9, 0, 2, 44280),
        (9, 1, 3, 43693),
    ]
    assert chips[2].aicore_pct == 35 and chips[2].memory_used_mb == 9920 and chips[0].power_w is None


def test_npu_smi_missing_or_garbage_is_an_error_not_an_exception() -> None:
    assert AscendBackend(replay({})).discover().errors[0].startswith("npu-smi info failed (127)")
    garbage = AscendBackend(replay({("npu-smi", "info"): CommandResult(0, "dcmi module initialize failed")}))
    found = garbage.discover()
    assert found.devices == () and found.errors == ("npu-smi info printed no NPU table",)


def test_amd_smi_mi300x_joined_by_index() -> None:
    docs = [json.loads((FIXTURES / f"amd-smi-{kind}-mi300x.json").read_text()) for kind in ("list", "static", "metric")]
    devices, problems = devices_from_amd_smi(*docs)
    assert problems == []
    first, second = devices
    assert first.uuid == "a1ff74a1-0000-1000-80d1-7d1c0c3a5e2b" and first.model == "MI300X"
    assert (first.memory_mib, first.memory_used_mib, first.utilization_pct) == (196592, 150211, 87)
    assert (first.temperature_c, first.power_w) == (71, 612.0)  # edge is N/A: hotspot is used
    assert first.device_paths == ("/dev/kfd", "/dev/dri/renderD128")
    assert second.utilization_pct == 0 and second.device_paths[1] == "/dev/dri/renderD129"


def test_amd_smi_older_gpu_data_layout_and_missing_uuid() -> None:
    listed = json.loads((FIXTURES / "amd-smi-list-mi250x-gpu-data.json").read_text())
    static = json.loads((FIXTURES / "amd-smi-static-mi250x-gpu-data.json").read_text())
    devices, problems = devices_from_amd_smi(listed, static, None)
    assert problems == []
    (card,) = devices
    assert card.uuid == "amd-0000:c1:00.0"  # "N/A" UUID falls back to the PCI address
    assert (card.model, card.memory_mib, card.numa_node, card.utilization_pct) == ("MI250X", 65536, 3, None)


def test_amd_backend_cli_path_with_metric_failure() -> None:
    docs = {kind: (FIXTURES / f"amd-smi-{kind}-mi300x.json").read_text() for kind in ("list", "static")}
    run = replay(
        {
            ("amd-smi", "list", "--json"): CommandResult(0, docs["list"]),
            ("amd-smi", "static", "--json"): CommandResult(0, docs["static"]),
            ("amd-smi", "metric", "--json"): CommandResult(1, "", "metric not supported"),
        }
    )
    found = AmdBackend(run, use_library=False).discover()
    assert [d.memory_mib for d in found.devices] == [196592, 196592]
    assert all(d.utilization_pct is None for d in found.devices)
    bad = AmdBackend(replay({("amd-smi", "list", "--json"): CommandResult(0, "{not json")}), use_library=False)
    assert "invalid JSON" in bad.discover().errors[0]


def test_nvml_sample_mapping_subtracts_reserved_memory() -> None:
    """Values recorded from an H100 SXM (nvidia-smi -q): 81559 MiB total, 480 MiB reserved."""
    sample = NvmlSample(
        index=3,
        uuid="GPU-5c0e2a3b-7f6d-8e9a-1b2c-3d4e5f607182",
        name="NVIDIA H100 80GB HBM3",
        memory_total_bytes=81559 * 2**20,
        memory_reserved_bytes=480 * 2**20,
        memory_used_bytes=4 * 2**20,
        gpu_util_pct=17,
        minor_number=3,
        temperature_c=33,
        power_mw=69_612,
        numa_node=1,
    )
    device = device_from_sample(sample)
    assert (device.memory_mib, device.memory_used_mib, device.utilization_pct) == (81079, 4, 17)
    assert device.model == "H100-80GB-HBM3" and device.power_w == pytest.approx(69.612)
    assert device.device_paths[0] == "/dev/nvidia3" and device.topology_group == 1
    lost = device_from_sample(
        NvmlSample(0, "GPU-x", "", 0, 0, 0, None, None, None, None, None, error="NVML: GPU is lost")
    )
    assert not lost.healthy and lost.health_reason == "NVML: GPU is lost"


class FakeNvml:
    """Fake NVML at the pynvml library boundary (module-shaped object); not a driver emulation."""

    class NVMLError(Exception):
        pass

    nvmlMemory_v2 = 2
    NVML_TEMPERATURE_GPU = 0

    class _Mem:
        def __init__(self, total: int, used: int, reserved: int) -> None:
            self.total, self.used, self.reserved = total, used, reserved

    class _Util:
        gpu = 42

    def __init__(self, lost: set[int]) -> None:
        self.lost = lost

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-fake-{h}"

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA A100-SXM4-40GB"

    def nvmlDeviceGetMemoryInfo(self, h: int, version: int = 1) -> _Mem:
        if h in self.lost:
            raise self.NVMLError("GPU is lost")
        return self._Mem(40960 * 2**20, 2**30, 512 * 2**20 if version == 2 else 0)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> _Util:
        return self._Util()

    def nvmlDeviceGetMinorNumber(self, h: int) -> int:
        return h

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return 40

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        raise self.NVMLError("Not Supported")


def test_nvidia_backend_over_fake_nvml_keeps_lost_cards_visible() -> None:
    found = NvidiaBackend(FakeNvml(lost={1})).discover()
    ok, lost = found.devices
    assert (ok.uuid, ok.memory_mib, ok.utilization_pct, ok.power_w) == ("GPU-fake-0", 40448, 42, None)
    assert ok.model == "A100-SXM4-40GB"
    assert (lost.uuid, lost.healthy) == ("GPU-fake-1", False) and "GPU is lost" in lost.health_reason
    assert found.errors == ("card 1 (GPU-fake-1): NVML: GPU is lost",)


def test_emulated_backend_reads_yaml_each_time(tmp_path: Path) -> None:
    config = tmp_path / "emulated.yaml"
    config.write_text("cards:\n  - {model: EMU-80G, memory_mib: 81920, count: 2, topology_group: 1}\n")
    backend = make_backend("emulated", {"config": str(config), "node_name": "kw-1"})
    assert isinstance(backend, EmulatedBackend)
    first = backend.discover()
    assert [(d.uuid, d.index, d.healthy) for d in first.devices] == [
        ("EMU-kw-1-0", 0, True),
        ("EMU-kw-1-1", 1, True),
    ]
    assert first.devices[0].vendor is Vendor.EMULATED and first.errors == ()
    config.write_text("cards:\n  - {model: EMU-80G, memory_mib: 81920, count: 2, healthy: false}\n")
    assert [d.healthy for d in backend.discover().devices] == [False, False]
    config.write_text("cards:\n  - {model: EMU-80G, memory_mib: -1}\n")
    assert "memory_mib" in backend.discover().errors[0]
    assert "No such file" in make_backend("emulated", {"config": str(tmp_path / "nope.yaml")}).discover().errors[0]


def test_registry_knows_every_vendor_and_rejects_unknown_names() -> None:
    assert backend_names() == ("amd", "ascend", "emulated", "nvidia")
    with pytest.raises(KeyError, match="unknown device backend 'intel'"):
        make_backend("intel")
    for name in backend_names():
        backend = make_backend(
            name,
            {"config": "/nonexistent", "runner": replay({}), "use_library": False, "nvml": FakeNvml(set())},
        )
        assert backend.vendor.value == name
