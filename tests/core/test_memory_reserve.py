"""The per-process reserve rule the scheduler and the shim share (``xpupool.core.memory_reserve``)."""

from __future__ import annotations

from xpupool.core.memory_reserve import process_reserve_mib
from xpupool.core.model import Device, Node, Vendor
from xpupool.core.request import parse_request, validate_against_pool


def _pool(vendor: Vendor = Vendor.NVIDIA) -> list[Node]:
    return [Node("a", 64000, 262144, tuple(Device(i, vendor, "H100", 81920) for i in range(2)))]


def test_a_slice_must_hold_more_than_one_process_reserve() -> None:
    reserve = process_reserve_mib(Vendor.NVIDIA)
    assert reserve > 0
    tiny = parse_request(name="p", resources={"xpupool.io/vxpu": 1, "xpupool.io/vxpu-memory": reserve}).request
    assert tiny is not None
    (error,) = validate_against_pool(tiny, _pool())
    assert "per-process reserve" in error
    ok = parse_request(name="p", resources={"xpupool.io/vxpu": 1, "xpupool.io/vxpu-memory": reserve + 1}).request
    assert ok is not None and validate_against_pool(ok, _pool()) == ()


def test_percent_slices_are_checked_on_the_cards_they_would_get() -> None:
    # 1 % of an 80 GiB card is 819 MiB: above the NVIDIA reserve
    one_pct = parse_request(name="p", resources={"xpupool.io/vxpu": 1, "xpupool.io/vxpu-core": 1}).request
    assert one_pct is not None and validate_against_pool(one_pct, _pool()) == ()
    small = [Node("a", 64000, 262144, (Device(0, Vendor.NVIDIA, "T4", 15360),))]
    assert validate_against_pool(one_pct, small) != ()  # 153 MiB of a 15 GiB card


def test_emulated_cards_have_no_reserve() -> None:
    assert process_reserve_mib(Vendor.EMULATED) == 0
    r = parse_request(name="p", resources={"xpupool.io/vxpu": 1, "xpupool.io/vxpu-memory": 1}).request
    assert r is not None and validate_against_pool(r, _pool(Vendor.EMULATED)) == ()
