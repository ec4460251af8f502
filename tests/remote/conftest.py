"""Fixtures for the remoting tests: the native build and a daemon on the fake libcuda TEST DOUBLE."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from xpupool.remote import daemon as d
from xpupool.remote.testing import LocalRig, build_native, local_rig


@pytest.fixture(scope="session")
def native_build() -> Path:
    build_native()
    return d.native_dir()


@pytest.fixture
def rig(native_build: Path, tmp_path: Path) -> Iterator[LocalRig]:
    with local_rig(tmp_path / "state") as r:
        yield r
