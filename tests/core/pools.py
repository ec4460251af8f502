"""Small hand-made nodes and requests for the core tests (imported by name: ``from pools import ...``)."""

from __future__ import annotations

from xpupool.core.model import Device, Node, Request, Vendor


def gpu_node(name: str, cards: int = 8, *, model: str = "H100", vendor: Vendor = Vendor.NVIDIA,
             mib: int = 81920, cpu: int = 64_000, rack: str = "r1", groups: int = 2) -> Node:
    per_group = max(cards // groups, 1)
    devices = tuple(Device(i, vendor, model, mib, topology_group=i // per_group) for i in range(cards))
    return Node(name, cpu, 512 * 1024, devices, {"rack": rack, "zone": "z1"}, 25_000)


def cpu_node(name: str, *, rack: str = "r1") -> Node:
    return Node(name, 64_000, 256 * 1024, (), {"rack": rack, "zone": "z1"})


def share(name: str, pct: int, *, cpu: int = 1000, mem_mib: int = 0, **kw: object) -> Request:
    return Request(name=name, cpu_milli=cpu, memory_mib=1024, count=1, share_milli=pct * 10,
                   device_memory_mib=mem_mib, **kw)  # type: ignore[arg-type]


def whole(name: str, cards: int, *, cpu: int = 4000, **kw: object) -> Request:
    return Request(name=name, cpu_milli=cpu, memory_mib=4096, count=cards, share_milli=1000, exclusive=True,
                   **kw)  # type: ignore[arg-type]


