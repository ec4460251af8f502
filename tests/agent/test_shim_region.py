"""The agent's view of the shim regions: one layout definition, config writes, usage reads, metrics.

The layout has one definition (``native/include/xpushim_layout.def``): the Python mirror is
generated from it (checked byte for byte here) and every offset and size is compared with what the
C compiler lays out (``native/tools/region_layout.c``, built from the same file). Behaviour of the
C shim on these regions is tested in ``tests/native``.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from xpupool._generated import shim_layout as L
from xpupool.agent import layoutgen
from xpupool.agent import shim_region as sr

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def test_generated_mirror_is_what_the_definition_generates() -> None:
    fresh = layoutgen.render(layoutgen.DEFINITION.read_text())
    assert layoutgen.OUTPUT.read_text() == fresh, "run: python -m xpupool.agent.layoutgen"


def test_layout_matches_the_c_compiler(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build native/tools/region_layout.c")
    exe = tmp_path / "region_layout"
    subprocess.run(
        [
            cc,
            "-std=c11",
            "-Wall",
            "-Werror",
            f"-I{ROOT / 'native' / 'include'}",
            str(ROOT / "native" / "tools" / "region_layout.c"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    c_side = {k: tuple(v) for k, v in json.loads(subprocess.check_output([str(exe)])).items()}
    py_side = sr.layout()
    assert set(c_side) == set(py_side), sorted(set(c_side) ^ set(py_side))
    mismatched = {k: (c_side[k], py_side[k]) for k in c_side if c_side[k] != py_side[k]}
    assert mismatched == {}
    for name, (_cls, size) in L.STRUCTS.items():
        assert c_side[f"sizeof.{name}"] == (0, size)


def test_the_definition_parser_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unexpected line"):
        layoutgen.parse("XPU_STRUCT(a, 8)\nint x;\nXPU_END(a)\n")
    with pytest.raises(ValueError, match="not closed"):
        layoutgen.parse("XPU_STRUCT(a, 8)\nXPU_FIELD(u64, x)\n")


def _region(tmp_path: Path, **kw: int) -> sr.ShimRegion:
    cfg = sr.DeviceConfig(
        uuid="GPU-00000000-1111-2222-3333-444444444440",
        mem_limit_bytes=kw.get("mem", 1024 * MIB),
        process_reserve_bytes=kw.get("reserve", 300 * MIB),
        share_request_bp=kw.get("req", 3000),
        share_limit_bp=kw.get("lim", 8000),
        priority=kw.get("prio", 1),
        card_dir=str(tmp_path / "card"),
        card_slot=3,
    )
    return sr.ShimRegion.create(tmp_path / "region", [cfg, sr.DeviceConfig(ordinal=1)], container_key=42)


def test_create_then_open_round_trips_the_config(tmp_path: Path) -> None:
    _region(tmp_path).close()
    with sr.ShimRegion.open(tmp_path / "region") as reg:
        snap = reg.snapshot()
        assert reg.generation == 2 and snap.generation == 2
        assert snap.container_key == 42
        assert len(snap.devices) == 2 and snap.processes == ()
        d0 = snap.devices[0]
        assert d0.uuid.endswith("4440") and d0.mem_limit_bytes == 1024 * MIB and d0.process_reserve_bytes == 300 * MIB
        assert (d0.share_request_bp, d0.share_limit_bp, d0.priority) == (3000, 8000, 1)
        assert reg.config.dev[0].card_dir.decode() == str(tmp_path / "card")
        assert reg.config.dev[0].card_slot == 3
        assert snap.devices[1].mem_limit_bytes == 0  # no quota on the second device
    region = tmp_path / "region"
    assert (region / "config").stat().st_size == ctypes.sizeof(L.Config)
    assert (region / "usage").stat().st_size == ctypes.sizeof(L.Usage)


def test_agent_owned_files_are_read_only_to_others(tmp_path: Path) -> None:
    _region(tmp_path).close()
    card = sr.CardRegion.create(tmp_path / "card", "GPU-x")
    card.close()
    files = [*(tmp_path / "region").iterdir(), *(tmp_path / "card").iterdir()]
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert mode["config"] == 0o644 and mode["policy"] == 0o644
    assert mode["usage"] == 0o666 and mode["tenant-00"] == 0o666 and mode["tenant-31"] == 0o666
    assert stat.S_IMODE((tmp_path / "region").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card", "region"]  # no temp directory left


@pytest.mark.parametrize(
    ("file", "patch", "message"),
    [
        ("config", lambda b: b.__setitem__(slice(0, 8), b"NOTMAGIC"), "bad magic"),
        ("usage", lambda b: b.__setitem__(slice(0, 8), b"NOTMAGIC"), "bad magic"),
        ("config", lambda b: b.__setitem__(slice(8, 12), (7).to_bytes(4, "little")), "version 7"),
        ("config", lambda b: b.__setitem__(slice(36, 40), (999).to_bytes(4, "little")), "layout"),
        ("config", lambda b: b.__setitem__(slice(0, len(b)), b[:100]), "need at least"),
    ],
)
def test_readers_reject_unknown_layouts(tmp_path: Path, file: str, patch: object, message: str) -> None:
    _region(tmp_path).close()
    path = tmp_path / "region" / file
    raw = bytearray(path.read_bytes())
    assert callable(patch)
    patch(raw)
    path.write_bytes(bytes(raw))
    with pytest.raises(sr.RegionError, match=message):
        sr.ShimRegion.open(tmp_path / "region")


def test_missing_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(sr.RegionError, match="missing"):
        sr.ShimRegion.open(tmp_path / "empty")


def test_live_resize_is_a_seqlock_write(tmp_path: Path) -> None:
    with _region(tmp_path) as reg:
        gen = reg.update(0, mem_limit_bytes=2048 * MIB, share_request_bp=5000, share_limit_bp=5000, priority=7)
        assert gen == 4 and gen % 2 == 0
        d = reg.snapshot().devices[0]
        assert (d.mem_limit_bytes, d.share_request_bp, d.share_limit_bp, d.priority) == (2048 * MIB, 5000, 5000, 7)
        # a writer that died mid-update left an odd generation: the next write completes it
        reg.config.hdr.generation = 5
        assert reg.update(0, priority=1) == 8
        with pytest.raises(ValueError, match="basis points"):
            reg.update(0, share_request_bp=10001)
        with pytest.raises(ValueError, match=">= share_request_bp"):
            reg.update(0, share_request_bp=6000, share_limit_bp=4000)
        with pytest.raises(IndexError):
            reg.update(5, priority=1)
        assert reg.generation == 8  # refused updates did not touch the seqlock


def test_snapshot_reads_what_the_shims_wrote(tmp_path: Path) -> None:
    with _region(tmp_path) as reg:
        u = reg.usage
        u.dev[0].mem_used = 700 * MIB
        u.dev[0].oom_events = 3
        u.dev[0].gpu_time_ns = 1_500_000_000
        u.dev[0].throttle_ns = 250_000_000
        u.dev[0].effective_share_bp = 5000
        u.slot[4].state = sr.SLOT_ACTIVE
        u.slot[4].pid = 77
        u.slot[4].mem_used[0] = 700 * MIB
        u.slot[9].state = sr.SLOT_FREE
        u.slot[9].pid = 78
        reg.set_host_pid(77, 123456)
        snap = reg.snapshot()
        assert snap.devices[0].mem_used_bytes == 700 * MIB and snap.devices[0].oom_events == 3
        assert snap.processes == (sr.ProcessSlot(4, 77, 123456, 0, (700 * MIB, 0)),)
        assert reg.host_pids() == {77: 123456}
        reg.set_host_pid(77, 0)
        assert reg.host_pids() == {}


def test_collector_exports_granted_versus_used(tmp_path: Path) -> None:
    reg = _region(tmp_path)
    now = [100.0]
    refs = [sr.SliceRef("slice-a", str(tmp_path / "region")), sr.SliceRef("gone", str(tmp_path / "missing"))]
    collector = sr.ShimRegionCollector(lambda: refs, clock=lambda: now[0])
    registry = CollectorRegistry()
    registry.register(collector)
    u = reg.usage
    u.dev[0].mem_used = 300 * MIB
    u.dev[0].gpu_time_ns = 10_000_000_000
    u.dev[0].throttle_ns = 2_000_000_000
    u.dev[0].effective_share_bp = 5000
    u.dev[0].measured_share_bp = 2900
    labels = {"slice": "slice-a", "device": "GPU-00000000-1111-2222-3333-444444444440"}

    def val(name: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert val("xpupool_vxpu_memory_granted_bytes") == 1024 * MIB
    assert val("xpupool_vxpu_memory_used_bytes") == 300 * MIB
    assert val("xpupool_vxpu_share_granted_ratio") == pytest.approx(0.30)
    assert val("xpupool_vxpu_share_limit_ratio") == pytest.approx(0.80)
    assert val("xpupool_vxpu_share_effective_ratio") == pytest.approx(0.50)
    assert val("xpupool_vxpu_share_measured_ratio") == pytest.approx(0.29)
    assert val("xpupool_vxpu_gpu_time_seconds_total") == pytest.approx(10.0)
    assert val("xpupool_vxpu_throttle_seconds_total") == pytest.approx(2.0)
    assert val("xpupool_vxpu_share_measured_scrape_ratio") is None  # needs two scrapes
    assert collector.read_errors >= 1  # the missing region is skipped, not fatal
    now[0] += 2.0
    u.dev[0].gpu_time_ns += 600_000_000  # 0.6 s of GPU time in 2 s
    assert val("xpupool_vxpu_share_measured_scrape_ratio") == pytest.approx(0.30)
    assert registry.get_sample_value("xpupool_vxpu_processes", {"slice": "slice-a"}) == 0.0
    reg.close()


def test_card_policy_and_tenant_files(tmp_path: Path) -> None:
    card = sr.CardRegion.create(tmp_path / "card", "GPU-x")
    assert card.tenants() == () and card.free_slots() == list(range(sr.MAX_TENANTS))
    card.assign_tenant(2, owner_key=42, request_bp=3000, limit_bp=6000, priority=1)
    assert card.policy.hdr.generation == 4
    (t,) = card.tenants()
    assert (t.slot, t.owner_key, t.request_bp, t.limit_bp, t.priority) == (2, 42, 3000, 6000, 1)
    assert 2 not in card.free_slots()
    # what the owner's shims publish counts; a file that names another owner does not
    tenant = card._tv[2]
    tenant.owner_key, tenant.effective_bp, tenant.last_demand_ns = 42, 5000, 123
    assert card.tenants()[0].effective_bp == 5000
    tenant.owner_key = 7
    assert card.tenants()[0].effective_bp == 0 and card.tenants()[0].last_demand_ns == 0
    card.update_tenant(2, request_bp=4000, limit_bp=4000)
    assert card.tenants()[0].request_bp == 4000
    del tenant
    card.release_tenant(2)
    assert card.tenants() == () and 2 in card.free_slots()
    card.close()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "policy").write_bytes(b"\0" * ctypes.sizeof(L.CardPolicy))
    with pytest.raises(sr.RegionError, match="not a card region"):
        sr.CardRegion(tmp_path / "bad")


def test_create_validates_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="devices"):
        sr.ShimRegion.create(tmp_path / "r", [], container_key=1)
    with pytest.raises(ValueError, match="container_key"):
        sr.ShimRegion.create(tmp_path / "r", [sr.DeviceConfig()], container_key=0)
    with pytest.raises(ValueError, match="uuid"):
        sr.ShimRegion.create(tmp_path / "r", [sr.DeviceConfig(uuid="x" * 64)], container_key=1)
    assert not (tmp_path / "r").exists()
