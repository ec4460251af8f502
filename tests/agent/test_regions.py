"""Shim regions written at Allocate time (through the real device plugin) and their collection.

The regions are read back with :mod:`xpupool.agent.shim_region`, whose layout is checked against
the C header by ``test_shim_region.py``: what is asserted here is what the C shim will read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xpupool.agent.allocation import PendingPod, RuntimePaths, container_wiring
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.regions import ShimRegionWriter, collect_garbage, container_key, container_shim_wiring
from xpupool.agent.shim_region import MAX_TENANTS, CardRegion, ShimRegion
from xpupool.core.memory_reserve import process_reserve_mib
from xpupool.core.model import Allocation, Vendor

UUIDS = ("GPU-aaaa-0", "GPU-aaaa-1")


def cards() -> dict[int, DeviceInfo]:
    return {
        i: DeviceInfo(
            uuid=u, index=i, vendor=Vendor.NVIDIA, model="H100", memory_mib=81920, device_paths=(f"/dev/nvidia{i}",)
        )
        for i, u in enumerate(UUIDS)
    }


def pod(uid: str, card_indexes: tuple[int, ...], share_milli: int, memory: tuple[int, ...]) -> PendingPod:
    return PendingPod(
        namespace="ns",
        name=uid,
        uid=uid,
        allocation=Allocation(
            pod=f"ns/{uid}",
            node="n1",
            device_node="n1",
            cards=card_indexes,
            share_milli=share_milli,
            device_memory_mib=memory,
        ),
    )


def write(writer: ShimRegionWriter, paths: RuntimePaths, p: PendingPod, ids: list[str]) -> Path:
    wiring = container_wiring(pod=p, node="n1", device_ids=ids, devices_by_index=cards(), paths=paths).wiring
    assert wiring is not None
    region = Path(wiring.region_host_dir) / "region"
    status = writer.write(path=region, pod=p, cards=[cards()[i] for i in p.allocation.cards])
    assert status.ok, status.message()
    return region


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ShimRegionWriter, RuntimePaths]:
    paths = RuntimePaths(region_host_root=str(tmp_path / "regions"), card_host_dir=str(tmp_path / "cards"))
    writer = ShimRegionWriter(region_root=tmp_path / "regions", card_host_dir=tmp_path / "cards")
    return writer, paths


def test_region_carries_the_schedulers_limits(setup: tuple[ShimRegionWriter, RuntimePaths]) -> None:
    writer, paths = setup
    region_path = write(writer, paths, pod("uid-1", (1, 0), 1000, (81920, 40960)), ["x::0", "y::0"])
    with ShimRegion.open(region_path) as region:
        view = region.config
        assert view.hdr.ndevices == 2 and view.hdr.container_key == container_key(region_path.parent.name)
        entries = [
            (
                view.dev[i].uuid.decode(),
                view.dev[i].ordinal,
                view.dev[i].mem_limit,
                view.dev[i].share_request_bp,
                view.dev[i].card_dir.decode(),
                view.dev[i].card_slot,
            )
            for i in range(2)
        ]
        # the per-process reserve is the core rule the scheduler applies (one definition)
        assert view.dev[0].process_reserve == process_reserve_mib(Vendor.NVIDIA, "H100") * 2**20 > 0
    assert entries == [
        ("GPU-aaaa-1", 0, 81920 << 20, 10000, "/run/xpupool/cards/GPU-aaaa-1", 0),
        ("GPU-aaaa-0", 1, 40960 << 20, 10000, "/run/xpupool/cards/GPU-aaaa-0", 0),
    ]
    # The card regions exist on the host where the container mount points, and their agent-owned
    # policy names this container as the owner of its slot with the scheduler's share.
    card = CardRegion(Path(paths.card_host_dir) / "GPU-aaaa-1")
    (tenant,) = card.tenants()
    assert (tenant.slot, tenant.owner_key, tenant.request_bp) == (0, container_key(region_path.parent.name), 10000)
    card.close()


def test_tenant_slots_are_distinct_per_card_and_reused_after_collection(
    setup: tuple[ShimRegionWriter, RuntimePaths],
) -> None:
    writer, paths = setup
    first = write(writer, paths, pod("uid-a", (0,), 300, (8192,)), ["a::0"])
    second = write(writer, paths, pod("uid-b", (0,), 500, (8192,)), ["a::1"])
    with ShimRegion.open(first) as r1, ShimRegion.open(second) as r2:
        assert (r1.config.dev[0].card_slot, r2.config.dev[0].card_slot) == (0, 1)
        assert (r1.config.dev[0].share_request_bp, r2.config.dev[0].share_request_bp) == (3000, 5000)
    # A repeated Allocate keeps the region the shims may already have mapped.
    inode = os.stat(first).st_ino
    assert write(writer, paths, pod("uid-a", (0,), 300, (8192,)), ["a::0"]) == first
    assert os.stat(first).st_ino == inode

    # Both pods own their slots in the card policy; then uid-a ends.
    card = CardRegion(Path(paths.card_host_dir) / "GPU-aaaa-0")
    assert [t.slot for t in card.tenants()] == [0, 1]
    removed = collect_garbage(
        region_root=Path(paths.region_host_root),
        card_host_dir=Path(paths.card_host_dir),
        live_pod_uids={"uid-b"},
        grace_s=0,
    )
    assert removed == [first.parent.name] and not first.parent.exists() and second.exists()
    assert [t.slot for t in card.tenants()] == [1]  # slot 0 released, uid-b keeps slot 1
    card.close()
    third = write(writer, paths, pod("uid-c", (0,), 200, (4096,)), ["a::2"])
    with ShimRegion.open(third) as r3:
        assert r3.config.dev[0].card_slot == 0


def test_young_regions_survive_collection_and_full_cards_fail_closed(
    setup: tuple[ShimRegionWriter, RuntimePaths],
) -> None:
    writer, paths = setup
    young = write(writer, paths, pod("uid-young", (1,), 100, (1024,)), ["b::0"])
    assert (
        collect_garbage(
            region_root=Path(paths.region_host_root),
            card_host_dir=Path(paths.card_host_dir),
            live_pod_uids=set(),
            grace_s=300,
        )
        == []
    )
    assert young.exists()
    for n in range(1, MAX_TENANTS):
        write(writer, paths, pod(f"uid-{n}", (1,), 10, (64,)), [f"b::{n}"])
    full = pod("uid-late", (1,), 10, (64,))
    status = writer.write(
        path=Path(paths.region_host_root) / "uid-late-000000000000" / "region", pod=full, cards=[cards()[1]]
    )
    assert not status.ok and "no free tenant slot" in status.message()


def test_wiring_mounts_agent_files_read_only_and_only_own_files_writable(
    setup: tuple[ShimRegionWriter, RuntimePaths],
) -> None:
    writer, paths = setup
    write(writer, paths, pod("uid-n", (0,), 300, (8192,)), ["n::0"])  # a neighbour takes slot 0
    region = write(writer, paths, pod("uid-w", (1, 0), 500, (8192, 8192)), ["w::0", "w::1"])
    wiring = container_shim_wiring(region_dir=region, paths=paths)
    assert wiring.status.ok
    mounts = [(m.container_path, m.host_path, m.read_only) for m in wiring.mounts]
    cards = Path(paths.card_host_dir)
    assert mounts == [
        (paths.shim_container_dir, paths.shim_host_dir, True),
        ("/run/xpupool/shim", str(region.parent), True),
        ("/run/xpupool/shim/region/usage", str(region / "usage"), False),
        ("/run/xpupool/cards/GPU-aaaa-1", str(cards / "GPU-aaaa-1"), True),
        ("/run/xpupool/cards/GPU-aaaa-1/tenant-00", str(cards / "GPU-aaaa-1" / "tenant-00"), False),
        ("/run/xpupool/cards/GPU-aaaa-0", str(cards / "GPU-aaaa-0"), True),
        ("/run/xpupool/cards/GPU-aaaa-0/tenant-01", str(cards / "GPU-aaaa-0" / "tenant-01"), False),
    ]
    writable = [m.host_path for m in wiring.mounts if not m.read_only]
    assert all(Path(p).is_file() for p in writable)  # only single files are writable, never a directory
    assert wiring.envs == {
        "LD_PRELOAD": "/usr/local/xpupool/lib/libxpushim.so",
        "XPUSHIM_REGION": "/run/xpupool/shim/region",
    }
    broken = container_shim_wiring(region_dir=region.parent / "missing", paths=paths)
    assert not broken.status.ok and broken.mounts == ()
