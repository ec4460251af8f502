"""GPU-side probes run *inside* the shim (LD_PRELOAD=libxpushim.so, XPUSHIM_REGION=...).

Started by ``bench/gpu/run_gpu_suite.py``, one probe per process; each prints one JSON object.
Needs a real GPU and PyTorch (CuPy optional). NOT runnable on the CPU-only CI.

Probes:
  meminfo                      what torch / cupy / nvidia-smi report inside the slice
  fill MIB [--alloc-conf X]    allocate 64 MiB tensors until OOM; report what fitted
  hold MIB SECS                allocate MIB and keep it for SECS seconds
  spin SECS CYCLES             back-to-back spin kernels (torch.cuda._sleep) for SECS seconds,
                               report kernels completed (share = kernels x kernel time / SECS)
  graph SECS CYCLES            same through a captured CUDA graph of 8 spin kernels
  latency SECS CYCLES          small kernels with a sync after each: p50/p99 latency
  launchbound N                N tiny elementwise launches, then one sync: wall time (overhead)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _torch():  # type: ignore[no-untyped-def]
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(json.dumps({"error": "no CUDA device visible to torch"}))
    torch.cuda.init()
    return torch


def meminfo() -> dict[str, object]:
    torch = _torch()
    free, total = torch.cuda.mem_get_info()
    out: dict[str, object] = {"torch_free": free, "torch_total": total}
    try:
        import cupy

        f2, t2 = cupy.cuda.Device(0).mem_info
        out.update(cupy_free=f2, cupy_total=t2)
    except ImportError:
        out["cupy"] = "not installed"
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.total,memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    )
    out["nvidia_smi"] = smi.stdout.strip()
    apps = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    )
    out["nvidia_smi_apps"] = apps.stdout.strip()
    out["pid"] = os.getpid()
    return out


def fill(limit_mib: int) -> dict[str, object]:
    torch = _torch()
    chunks = []
    err = ""
    for _ in range(limit_mib // 64 + 64):
        try:
            chunks.append(torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device="cuda"))
        except torch.cuda.OutOfMemoryError as e:
            err = str(e).splitlines()[0]
            break
    got = len(chunks) * 64
    return {
        "allocated_mib": got,
        "oom": bool(err),
        "error": err,
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
        "reserved_mib": torch.cuda.memory_reserved() // (1024 * 1024),
    }


def hold(mib: int, secs: float) -> dict[str, object]:
    torch = _torch()
    t = torch.empty(mib * 1024 * 1024, dtype=torch.uint8, device="cuda")
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    time.sleep(secs)
    del t
    return {"held_mib": mib}


def spin(secs: float, cycles: int, graph: bool = False) -> dict[str, object]:
    torch = _torch()
    stream = torch.cuda.Stream()
    g = None
    per_launch = 1
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream), torch.cuda.graph(g, stream=stream):
            for _ in range(8):
                torch.cuda._sleep(cycles)
        per_launch = 8
    torch.cuda.synchronize()
    n = 0
    t0 = time.perf_counter()
    with torch.cuda.stream(stream):
        while time.perf_counter() - t0 < secs:
            if g is not None:
                g.replay()
            else:
                torch.cuda._sleep(cycles)
            n += per_launch
            if n % 64 == 0:
                stream.synchronize()  # keep the queue short so wall time ~ submission time
    stream.synchronize()
    return {"kernels": n, "wall_s": time.perf_counter() - t0, "cycles": cycles, "graph": graph}


def latency(secs: float, cycles: int) -> dict[str, object]:
    torch = _torch()
    lat = []
    t_end = time.perf_counter() + secs
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        torch.cuda._sleep(cycles)
        torch.cuda.synchronize()
        lat.append(time.perf_counter() - t)
    lat.sort()
    return {
        "n": len(lat),
        "p50_us": lat[len(lat) // 2] * 1e6,
        "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
    }


def launchbound(n: int) -> dict[str, object]:
    torch = _torch()
    x = torch.zeros(1, device="cuda")
    for _ in range(1000):
        x.add_(1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        x.add_(1)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"launches": n, "wall_s": wall, "per_launch_us": wall / n * 1e6}


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "meminfo":
        res = meminfo()
    elif cmd == "fill":
        res = fill(int(argv[1]))
    elif cmd == "hold":
        res = hold(int(argv[1]), float(argv[2]))
    elif cmd == "spin":
        res = spin(float(argv[1]), int(argv[2]))
    elif cmd == "graph":
        res = spin(float(argv[1]), int(argv[2]), graph=True)
    elif cmd == "latency":
        res = latency(float(argv[1]), int(argv[2]))
    elif cmd == "launchbound":
        res = launchbound(int(argv[1]))
    else:
        raise SystemExit(f"unknown probe {cmd}")
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
