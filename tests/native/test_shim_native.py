"""libxpushim driven from Python regions, against the TEST DOUBLES (mock-validated, CPU only).

The fake ``libcuda.so.1`` / ``libnvidia-ml.so.1`` in ``native/testdoubles`` are not drivers: they
keep a per-process memory budget and a simulated GPU timeline (a kernel's duration in microseconds
is its gridDimX). These tests prove the contract between the agent's Python writer and the C shim
(quota, crash reconciliation, live resize, NVML view through the real ``pynvml`` client); they do
not prove enforcement on a GPU (see ``bench/gpu``). The full C suite, including the ASan/UBSan
build, is ``make -C native test``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpupool.agent import shim_region as sr

pytestmark = pytest.mark.native

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
BUILD = NATIVE / "build"
MIB = 1024 * 1024
UUID0 = "GPU-00000000-1111-2222-3333-444444444440"


@pytest.fixture(scope="session")
def build() -> Path:
    """Build the shim, test doubles and test programs if needed (make is incremental)."""
    subprocess.run(
        ["make", "-s", "-C", str(NATIVE), f"PYTHON={sys.executable}", "all"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return BUILD


def _env(build: Path, region: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_PRELOAD"] = str(build / "libxpushim.so")
    env["LD_LIBRARY_PATH"] = str(build / "testdoubles")
    env["XPUSHIM_LOG"] = "0"
    env.pop(sr.ENV_REGION, None)
    if region is not None:
        env[sr.ENV_REGION] = str(region)
    return env


def _t_cuda(build: Path, region: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(build / "tests" / "t_cuda"), *args],
        env=_env(build, region),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _create(path: Path, **kw: int | str) -> sr.ShimRegion:
    cfg = sr.DeviceConfig(
        uuid=str(kw.get("uuid", "")),
        mem_limit_bytes=int(kw.get("mem_mib", 0)) * MIB,
        share_request_bp=int(kw.get("req", 0)),
        share_limit_bp=int(kw.get("lim", 0)),
    )
    return sr.ShimRegion.create(path, [cfg], container_key=7)


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _hold(build: Path, region: Path, nbytes: int, procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [str(build / "tests" / "t_cuda"), "hold", str(nbytes)],
        env=_env(build, region),
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(p)
    assert p.stdout is not None
    assert p.stdout.readline().startswith("READY")
    return p


def test_limiter_arithmetic_on_a_simulated_clock(build: Path) -> None:
    out = subprocess.run([str(build / "tests" / "test_limiter")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout
    assert "all passed" in out.stdout
    # the simulated single-tenant runs hit every target within one point
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("single")]
    assert len(lines) == 15
    for ln in lines:
        target = float(ln.split()[2].rstrip("%"))
        got = float(ln.split()[-1].rstrip("%"))
        assert abs(got - target) < 1.0, ln


def test_python_region_drives_the_c_quota(build: Path, tmp_path: Path) -> None:
    reg = _create(tmp_path / "r", mem_mib=1024)
    out = _t_cuda(build, tmp_path / "r", "basic")
    assert out.returncode == 0, out.stdout + out.stderr
    snap = reg.snapshot()
    d = snap.devices[0]
    assert d.mem_used_bytes == 0, "everything the program allocated was released"
    assert d.mem_peak_bytes >= 768 * MIB  # the VMM step held 768 MiB at its peak
    assert d.oom_events == 4  # refused: cuMemAlloc, managed, 3D array, VMM (each over quota)
    assert snap.processes == ()  # the exited process gave its slot back
    reg.close()


def test_two_processes_share_one_quota_and_kill9_is_reclaimed(
    build: Path, tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    reg = _create(tmp_path / "r", mem_mib=1024)
    holder = _hold(build, tmp_path / "r", 600 * MIB, holders)
    snap = reg.snapshot()
    assert snap.devices[0].mem_used_bytes == 600 * MIB
    assert [(p.pid, p.mem_used_bytes[0]) for p in snap.processes] == [(holder.pid, 600 * MIB)]
    assert _t_cuda(build, tmp_path / "r", "try", str(500 * MIB)).stdout.strip() == "rc 2"  # OUT_OF_MEMORY
    assert _t_cuda(build, tmp_path / "r", "try", str(400 * MIB)).returncode == 0
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert reg.snapshot().devices[0].mem_used_bytes == 600 * MIB  # nobody reaped yet
    assert _t_cuda(build, tmp_path / "r", "try", str(900 * MIB)).returncode == 0
    d = reg.snapshot().devices[0]
    assert d.reaped_bytes == 600 * MIB and d.mem_used_bytes == 0
    reg.close()


def test_live_resize_from_python_changes_the_share_of_a_running_program(build: Path, tmp_path: Path) -> None:
    reg = _create(tmp_path / "r", req=2000, lim=2000)
    p = subprocess.Popen(
        [str(build / "tests" / "t_cuda"), "launch", "4", "1000"],
        env=_env(build, tmp_path / "r"),
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.2)
    reg.update(0, share_request_bp=6000, share_limit_bp=6000)
    out, _ = p.communicate(timeout=30)
    per_second = {int(ln.split()[1]): float(ln.split()[3]) for ln in out.splitlines() if ln.startswith("second")}
    assert 17 <= per_second[1] <= 23, out
    assert 55 <= per_second[3] <= 65, out
    d = reg.snapshot().devices[0]
    assert d.effective_share_bp == 6000 and d.throttle_ns > 0 and d.gpu_time_ns > 0
    reg.close()


def test_real_pynvml_sees_the_slice(build: Path, tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    reg = _create(tmp_path / "r", mem_mib=2048, uuid=UUID0)
    holder = _hold(build, tmp_path / "r", 300 * MIB, holders)
    script = textwrap.dedent(
        """
        import json, pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        m = pynvml.nvmlDeviceGetMemoryInfo(h)
        m2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        other = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(1))
        print(json.dumps({"total": m.total, "used": m.used, "total2": m2.total, "used2": m2.used,
                          "pids": [p.pid for p in procs], "mem": [p.usedGpuMemory for p in procs],
                          "other_total": other.total}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=_env(build, tmp_path / "r"), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["total"] == got["total2"] == 2048 * MIB
    assert got["used"] == got["used2"] == 300 * MIB
    assert got["pids"] == [holder.pid] and got["mem"] == [300 * MIB]  # other tenants' pids hidden
    assert got["other_total"] == 80 * 1024 * MIB  # a card outside this container is not virtualised
    reg.close()


def test_get_proc_address_substitution_and_flags(build: Path, tmp_path: Path) -> None:
    _create(tmp_path / "r", mem_mib=1024).close()
    out = _t_cuda(build, tmp_path / "r", "procaddr")
    assert out.returncode == 0 and "procaddr ok" in out.stdout, out.stdout


def test_unmanaged_process_is_pass_through(build: Path) -> None:
    env = _env(build, None)
    out = subprocess.run(
        [str(build / "tests" / "t_cuda"), "try", str(8192 * MIB)], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, "no region: the fake's own 16 GiB budget is the only limit"


def test_collector_reads_a_live_shim(build: Path, tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    from prometheus_client import CollectorRegistry

    reg = _create(tmp_path / "r", mem_mib=1024)
    _hold(build, tmp_path / "r", 256 * MIB, holders)
    registry = CollectorRegistry()
    registry.register(sr.ShimRegionCollector(lambda: [sr.SliceRef("s1", str(tmp_path / "r"))]))
    assert registry.get_sample_value("xpupool_vxpu_memory_used_bytes", {"slice": "s1", "device": "0"}) == 256 * MIB
    assert registry.get_sample_value("xpupool_vxpu_processes", {"slice": "s1"}) == 1.0
    reg.close()


def test_real_pynvml_process_lists_show_only_the_container(
    build: Path, tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    """Graphics, MPS, detail and utilisation lists pass through NVML: filtered to the container's
    processes by the agent-owned host pid table, container pids shown; used memory includes the
    per-process reserve (issue 10 §6, §8)."""
    cfg = sr.DeviceConfig(uuid=UUID0, mem_limit_bytes=2048 * MIB, process_reserve_bytes=100 * MIB)
    reg = sr.ShimRegion.create(tmp_path / "r", [cfg], container_key=7)
    h1 = _hold(build, tmp_path / "r", 300 * MIB, holders)
    h2 = _hold(build, tmp_path / "r", 200 * MIB, holders)
    reg.set_host_pid(h1.pid, 7001)  # what the agent resolves from the host's pid namespace
    reg.set_host_pid(h2.pid, 7002)
    script = textwrap.dedent(
        """
        import json, pynvml as n
        n.nvmlInit()
        h = n.nvmlDeviceGetHandleByIndex(0)
        g = n.nvmlDeviceGetGraphicsRunningProcesses(h)
        m = n.nvmlDeviceGetMPSComputeRunningProcesses(h)
        c = n.nvmlDeviceGetComputeRunningProcesses(h)
        dg = n.nvmlDeviceGetRunningProcessDetailList(h, n.nvmlProcessDetailList_v1, n.NVML_PROCESS_MODE_GRAPHICS)
        u = n.nvmlDeviceGetProcessUtilization(h, 0)
        mem = n.nvmlDeviceGetMemoryInfo(h)
        print(json.dumps({"graphics": [(p.pid, p.usedGpuMemory) for p in g], "mps": [p.pid for p in m],
                          "compute": sorted((p.pid, p.usedGpuMemory) for p in c), "detail": [p.pid for p in dg],
                          "util": [(s.pid, s.smUtil) for s in u], "used": mem.used}))
        """
    )
    env = _env(build, tmp_path / "r")
    env.update(
        FAKE_NVML_GRAPHICS_PIDS="1004:512,7001:64", FAKE_NVML_MPS_PIDS="1005:256,7002:32",
        FAKE_NVML_UTIL_PIDS="1001:40,7001:30",
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["graphics"] == [[h1.pid, 64 * MIB]]  # the neighbour's 1004 is hidden
    assert got["mps"] == [h2.pid] and got["detail"] == [h1.pid] and got["util"] == [[h1.pid, 30]]
    assert got["compute"] == sorted([[h1.pid, 400 * MIB], [h2.pid, 300 * MIB]])  # reserves included
    assert got["used"] == 700 * MIB
    reg.close()


def test_gpu_suite_driver_probes_run_on_the_test_double(build: Path, tmp_path: Path) -> None:
    """The bench/gpu driver-API probes (pool release at sync, release-after-map) against the fake
    libcuda TEST DOUBLE: keeps the GPU suite's ctypes code honest between GPU runs. Not a GPU result."""
    worker = ROOT / "bench" / "gpu" / "worker.py"
    _create(tmp_path / "r", mem_mib=1024).close()
    env = _env(build, tmp_path / "r")

    def probe(*args: str) -> dict[str, object]:
        out = subprocess.run([sys.executable, str(worker), *args], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
        return result

    assert probe("drv_pool", "600")["alloc_after_release_rc"] == 0
    vmm = probe("drv_vmm", "800", "3")
    assert vmm["created"] == 1, vmm  # the mapped 800 MiB stays charged after cuMemRelease


def test_agent_resolves_host_pids_even_in_a_pid_namespace(
    build: Path, tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    """The agent fills each region's host-pid table (what NVML filtering trusts) from /proc: a
    process in its container's own pid namespace (pid 1 there) is found by NSpid, start time and its
    mapping of its region's usage file; entries of processes that ended are dropped."""
    from xpupool.agent.regions import record_host_pids

    root = tmp_path / "regions"
    regions = {}
    for name in ("pod-a-000000000001", "pod-b-000000000002"):  # one pid namespace per container
        (root / name).mkdir(parents=True)
        cfg = sr.DeviceConfig(mem_limit_bytes=1024 * MIB)
        regions[name] = sr.ShimRegion.create(root / name / "region", [cfg], container_key=7)
    path_a, path_b = root / "pod-a-000000000001" / "region", root / "pod-b-000000000002" / "region"
    plain = _hold(build, path_a, 100 * MIB, holders)
    ns = None
    if os.geteuid() == 0 and shutil.which("unshare"):
        ns = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", str(build / "tests" / "t_cuda"), "hold", str(100 * MIB)],
            env=_env(build, path_b), stdout=subprocess.PIPE, text=True,
        )
        holders.append(ns)
        assert ns.stdout is not None and ns.stdout.readline().startswith("READY")
    assert record_host_pids(region_root=root) == (2 if ns else 1)
    assert regions["pod-a-000000000001"].host_pids() == {plain.pid: plain.pid}  # the agent's own pid view
    if ns is not None:
        table = regions["pod-b-000000000002"].host_pids()
        assert list(table) == [1] and table[1] != ns.pid  # pid 1 inside; unshare's child on the host
        status = Path(f"/proc/{table[1]}/status").read_text()
        assert next(ln for ln in status.splitlines() if ln.startswith("NSpid:")).split()[-1] == "1"
    assert record_host_pids(region_root=root) == 0  # in step: nothing to change, no /proc scan
    plain.kill()
    plain.wait()
    _t_cuda(build, path_a, "try", str(MIB))  # a registration reaps the dead process's slot
    assert record_host_pids(region_root=root) == 1
    assert regions["pod-a-000000000001"].host_pids() == {}
    for reg in regions.values():
        reg.close()
