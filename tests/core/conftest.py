"""Fixtures of the core tests."""

from __future__ import annotations

import pytest
from pools import cpu_node, gpu_node

from xpupool.core.model import Node, Vendor


@pytest.fixture
def small_pool() -> list[Node]:
    return [gpu_node("g0"), gpu_node("g1", 4, model="A100", mib=40960, groups=1), cpu_node("c0"),
            gpu_node("npu0", 8, model="Ascend910B", vendor=Vendor.ASCEND, mib=65536, rack="r2")]
