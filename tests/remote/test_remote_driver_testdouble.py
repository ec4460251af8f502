"""A CUDA driver-API program against the remoting client and a daemon whose backend is the fake
libcuda TEST DOUBLE (device memory is host memory). CPU-tested: proves the wire, validation,
batching, deferred errors and data integrity end to end; proves nothing about a GPU."""

from __future__ import annotations

import subprocess
import sys
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


def test_kernel_parameters_cross_the_wire_and_a_fault_ends_only_that_session(rig: LocalRig) -> None:
    """Modules load by hash, parameter layouts come from the server, launches are fire-and-forget:
    CPU reference kernels of the test double (fake_cuda_kernels.c) compute from the parameters
    (saxpy checked element by element, fill via CU_LAUNCH_PARAM_BUFFER). A faulting kernel's sticky
    error ends that session; a kernel that kills its worker ends that session; others go on."""
    rig.grant("alloc-k")
    token = rig.token("alloc-k")
    run = _driver(rig, token, "launch")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "launch ok" in run.stdout
    crash = _driver(rig, token, "crash")
    assert crash.returncode == 0 and "after crash 46" in crash.stdout, crash.stdout + crash.stderr
    assert _driver(rig, token, "alloc", "1").returncode == 0  # the daemon and new sessions are fine
    assert rig.metric("xpupool_remote_api_calls_total", api="cuLaunchKernel") >= 6
    # each abnormal end is counted once by reason; a session that says goodbye is not an error
    assert rig.wait_idle()
    errors = {r: rig.metric("xpupool_remote_session_errors_total", reason=r)
              for r in ("sticky_error", "worker_crashed", "connection_lost", "bad_frame")}
    assert errors == {"sticky_error": 1, "worker_crashed": 1, "connection_lost": 0, "bad_frame": 0}, errors


def test_nvml_shows_the_remote_slice(rig: LocalRig, tmp_path: Path) -> None:
    """The real pynvml client over the replacement libnvidia-ml.so.1: one device, the slice's memory."""
    region = tmp_path / "region"
    sr.ShimRegion.create(region, [sr.DeviceConfig(uuid=FAKE_CARD_UUID, mem_limit_bytes=1024 * MIB)],
                         container_key=9).close()
    rig.grant("alloc-n", region=region)
    code = ("import pynvml as n; n.nvmlInit(); h = n.nvmlDeviceGetHandleByIndex(0); m = n.nvmlDeviceGetMemoryInfo(h);"
            "print(n.nvmlDeviceGetCount(), n.nvmlDeviceGetUUID(h), m.total >> 20, m.used >> 20); n.nvmlShutdown()")
    run = subprocess.run([sys.executable, "-c", code], env=rig.client_env(rig.token("alloc-n")), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    count, uuid, total_mib, used_mib = run.stdout.split()
    assert (count, uuid, total_mib) == ("1", FAKE_CARD_UUID, "1024")
    assert int(used_mib) < 1024
