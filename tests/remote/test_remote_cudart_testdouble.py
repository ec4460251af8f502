"""NVIDIA's real CUDA runtime (``libcudart.so.12`` from the ``nvidia-cuda-runtime-cu12`` wheel) on the
remoting client: its start-up (versioned ``cuGetProcAddress``, private export tables, the integrity
handshake) is answered by cudacompat in the client, its work goes over TLS to a daemon whose backend
is the fake libcuda TEST DOUBLE (device memory = host memory). The program is cudart's own
``native/cudacompat/tests/t_cudart.c`` (the same checks as on the double directly): device count and
properties, cudaMalloc, 64 MiB copies with data verified, memsets, streams, events, async copies into
pinned memory, threads with their own streams, cudaFree, error strings, cudaMemGetInfo, the slice's
quota, cudaDeviceReset. CPU-tested; proves nothing about a GPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xpupool.agent import shim_region as sr
from xpupool.remote import daemon as d
from xpupool.remote.testing import FAKE_CARD_UUID, LocalRig

pytestmark = pytest.mark.native
MIB = 1024 * 1024


def _cudart12() -> Path:
    import nvidia.cuda_runtime as m

    return Path(next(iter(m.__path__))) / "lib" / "libcudart.so.12"


def test_real_cudart_runs_through_the_remote_client(rig: LocalRig, tmp_path: Path) -> None:
    region = tmp_path / "region"
    sr.ShimRegion.create(region, [sr.DeviceConfig(uuid=FAKE_CARD_UUID, mem_limit_bytes=1024 * MIB)],
                         container_key=5).close()
    rig.grant("alloc-rt", region=region)
    run = subprocess.run([str(d.native_dir() / "tests" / "t_cudart"), str(_cudart12()), "1024", "1"],
                         env=rig.client_env(rig.token("alloc-rt")), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    failed = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert not failed, failed
    assert "ok   cudaDeviceReset" in run.stdout
    assert "slice's quota" in run.stdout  # totalGlobalMem is the quota libxpushim reports on the server
    assert rig.metric("xpupool_remote_api_calls_total", api="cuMemcpyHtoD_v2") >= 1
