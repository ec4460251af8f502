"""A CUDA driver-API program against the remoting client and a daemon whose backend is the fake
libcuda TEST DOUBLE (device memory is host memory). CPU-tested: proves the wire, validation,
batching, deferred errors and data integrity end to end; proves nothing about a GPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xpupool.agent import shim_region as sr
from xpupool.remote import daemon as d
from xpupool.remote.testing import FAKE_CARD_UUID, LocalRig

pytestmark = pytest.mark.native
MIB = 1024 * 1024


def _driver(rig: LocalRig, token: str, *args: str, endpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(d.native_dir() / "remote" / "tests" / "t_remote_driver"), *args],
                          env=rig.client_env(token, endpoint=endpoint), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("transport", ["tcp+tls", "unix"])
def test_driver_program_moves_verified_data_and_validates_everything(rig: LocalRig, transport: str) -> None:
    """64 MiB round trips, memsets, streams, events, pinned memory, deferred errors, foreign handles."""
    rig.grant("alloc-1")
    endpoint = rig.daemon.unix_endpoint if transport == "unix" else None
    run = _driver(rig, rig.token("alloc-1"), "basic", endpoint=endpoint)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "driver ok" in run.stdout
    assert rig.metric("xpupool_remote_api_calls_total", api="cuMemcpyHtoD_v2") >= 1
    assert rig.metric("xpupool_remote_api_calls_total", api="cuMemsetD8Async") >= 1


def test_the_slice_quota_is_enforced_by_libxpushim_in_the_worker(rig: LocalRig, tmp_path: Path) -> None:
    """The worker runs with libxpushim: the remote tenant sees and is held to its slice."""
    region = tmp_path / "region"
    sr.ShimRegion.create(region, [sr.DeviceConfig(uuid=FAKE_CARD_UUID, mem_limit_bytes=256 * MIB)],
                         container_key=42).close()
    rig.grant("alloc-q", region=region)
    token = rig.token("alloc-q")
    assert _driver(rig, token, "alloc", "128").returncode == 0
    over = _driver(rig, token, "alloc", "512")
    assert over.returncode == 2 and "alloc 2" in over.stdout  # CUDA_ERROR_OUT_OF_MEMORY from the shim


def test_a_session_reports_per_api_calls_bytes_and_rtt(rig: LocalRig) -> None:
    rig.grant("alloc-m")
    run = _driver(rig, rig.token("alloc-m"), "rtt", "2000")
    assert run.returncode == 0, run.stderr
    assert "rtt_us p50" in run.stdout
    assert rig.metric("xpupool_remote_api_calls_total", api="cuCtxSynchronize") >= 2000
    assert rig.metric("xpupool_remote_connections_total", result="admitted") == 1
