"""GPU-side probes run *inside* the shim (LD_PRELOAD=libxpushim.so, XPUSHIM_REGION=...).

Started by ``bench/gpu/run_gpu_suite.py``, one probe per process; each prints one JSON object (a
probe that holds memory first prints ``{"ready": ...}``). Needs a real GPU; PyTorch for the torch
probes (CuPy optional), only the driver for the ``drv_*`` probes. NOT runnable on the CPU-only CI.

Probes:
  meminfo                      what torch / cupy / nvidia-smi report inside the slice
  fill MIB                     allocate 64 MiB tensors until OOM; report what fitted and why it stopped
  hold MIB SECS                allocate MIB and keep it for SECS seconds (prints ready + pid first)
  spin SECS CYCLES             back-to-back spin kernels (torch.cuda._sleep) for SECS seconds,
                               report kernels completed (share = kernels x kernel time / SECS)
  graph SECS CYCLES            same through a captured CUDA graph of 8 spin kernels
  mstream SECS CYCLES N        spin kernels round robin over N streams (one thread each)
  capture SECS CYCLES          torch.cuda.graph capture under a compute share: the capture must
                               succeed; then replays; torch.compile(mode="reduce-overhead") if present
  intercept                    matmul, a captured graph, an NCCL all_reduce (world size 1); the
                               shim's resolver counters (swaps, misses)
  latency SECS CYCLES          small kernels with a sync after each: p50/p99 latency
  launchbound N [STREAMS]      N tiny elementwise launches (over STREAMS streams), then one sync
  drv_pool MIB                 driver API: stream-ordered alloc + free + sync, then cuMemAlloc of
                               the same size (no false OUT_OF_MEMORY once the pool released it)
  drv_vmm MIB COUNT            driver API: COUNT x (cuMemCreate, map, cuMemRelease while mapped);
                               the real driver's free memory before/after (release-after-map)
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time


def _torch():  # type: ignore[no-untyped-def]
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(json.dumps({"error": "no CUDA device visible to torch"}))
    torch.cuda.init()
    return torch


def resolver_stats() -> dict[str, int]:
    """The shim's cuGetProcAddress counters (the preloaded shim exports them)."""
    try:
        fn = ctypes.CDLL(None).xpushim_resolver_stats
    except AttributeError:
        return {"error": "libxpushim not loaded"}  # type: ignore[dict-item]
    swaps, misses = ctypes.c_uint64(), ctypes.c_uint64()
    fn(ctypes.byref(swaps), ctypes.byref(misses))
    return {"swaps": swaps.value, "misses": misses.value}


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
        "pid": os.getpid(),
    }


def hold(mib: int, secs: float) -> dict[str, object]:
    torch = _torch()
    t = torch.empty(mib * 1024 * 1024, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    print(json.dumps({"ready": True, "pid": os.getpid(), "reserved_mib": torch.cuda.memory_reserved() >> 20}),
          flush=True)
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


def mstream(secs: float, cycles: int, nstreams: int) -> dict[str, object]:
    """One launching thread per stream (what a multi-stream workload looks like to the shim)."""
    torch = _torch()
    counts = [0] * nstreams
    stop = threading.Event()

    def run(i: int) -> None:
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            while not stop.is_set():
                torch.cuda._sleep(cycles)
                counts[i] += 1
                if counts[i] % 32 == 0:
                    s.synchronize()
        s.synchronize()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(nstreams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(secs)
    stop.set()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    return {"kernels": sum(counts), "per_stream": counts, "wall_s": time.perf_counter() - t0, "cycles": cycles}


def capture(secs: float, cycles: int) -> dict[str, object]:
    torch = _torch()
    out: dict[str, object] = {}
    s = torch.cuda.Stream()
    x = torch.ones(1024, 1024, device="cuda")
    torch.cuda.synchronize()
    # launches (and the shim's event work) in flight on other streams while we capture
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        for _ in range(16):
            torch.cuda._sleep(cycles)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(s), torch.cuda.graph(g, stream=s):
            for _ in range(8):
                torch.cuda._sleep(cycles)
            y = x @ x
        out["capture_ok"] = True
    except Exception as e:  # the capture being invalidated is what this checks
        out["capture_ok"] = False
        out["capture_error"] = repr(e)[:500]
        return out
    torch.cuda.synchronize()
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < secs:
        g.replay()
        n += 1
        if n % 8 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    out.update(replays=n, kernels=8 * n, wall_s=time.perf_counter() - t0, cycles=cycles, result=float(y[0, 0]))
    try:
        f = torch.compile(lambda a: (a @ a).relu(), mode="reduce-overhead")
        for _ in range(5):
            f(x)
        torch.cuda.synchronize()
        out["compile_reduce_overhead"] = "ok"
    except Exception as e:  # triton missing, or a real failure: recorded either way
        out["compile_reduce_overhead"] = repr(e)[:300]
    return out


def intercept() -> dict[str, object]:
    torch = _torch()
    out: dict[str, object] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    a = torch.randn(2048, 2048, device="cuda")
    for _ in range(10):
        b = a @ a
    torch.cuda.synchronize()
    out["matmul"] = float(b.abs().sum()) > 0
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s), torch.cuda.graph(g, stream=s):
        c = a @ a
    for _ in range(10):
        g.replay()
    torch.cuda.synchronize()
    out["graph"] = float(c.abs().sum()) > 0
    try:
        import tempfile

        import torch.distributed as dist

        with tempfile.NamedTemporaryFile() as f:
            dist.init_process_group("nccl", init_method=f"file://{f.name}", rank=0, world_size=1)
            t = torch.ones(1 << 20, device="cuda")
            dist.all_reduce(t)
            torch.cuda.synchronize()
            out["nccl_all_reduce"] = float(t[0]) == 1.0
            out["nccl_version"] = ".".join(str(v) for v in torch.cuda.nccl.version())
            dist.destroy_process_group()
    except Exception as e:
        out["nccl_all_reduce"] = repr(e)[:300]
    out["resolver"] = resolver_stats()
    return out


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


def launchbound(n: int, nstreams: int = 1) -> dict[str, object]:
    torch = _torch()
    streams = [torch.cuda.Stream() for _ in range(nstreams)]
    xs = [torch.zeros(1, device="cuda") for _ in range(nstreams)]
    for _ in range(1000):
        xs[0].add_(1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(n):
        k = i % nstreams
        with torch.cuda.stream(streams[k]):
            xs[k].add_(1)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"launches": n, "streams": nstreams, "wall_s": wall, "per_launch_us": wall / n * 1e6}


# ---------------------------------------------------------------- driver API (no torch)
MIB = 1 << 20


class _Driver:
    """The few driver entry points the drv_* probes need, found the way applications find them
    (dlopen + dlsym: the shim's wrappers answer)."""

    def __init__(self) -> None:
        self.cu = ctypes.CDLL("libcuda.so.1")
        self.check(self.cu.cuInit(0), "cuInit")
        dev, ctx = ctypes.c_int(), ctypes.c_void_p()
        self.check(self.cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
        self.check(self.cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        self.check(self.cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        self.dev = dev

    @staticmethod
    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise SystemExit(json.dumps({"error": f"{what} failed with CUresult {rc}"}))

    def free_mib(self) -> int:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.check(self.cu.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
        return free.value // MIB


def drv_pool(mib: int) -> dict[str, object]:
    d = _Driver()
    stream = ctypes.c_void_p()
    d.check(d.cu.cuStreamCreate(ctypes.byref(stream), 1), "cuStreamCreate")
    p = ctypes.c_uint64()
    out: dict[str, object] = {}
    out["alloc_async_rc"] = d.cu.cuMemAllocAsync(ctypes.byref(p), ctypes.c_size_t(mib * MIB), stream)
    out["free_async_rc"] = d.cu.cuMemFreeAsync(p, stream)
    out["sync_rc"] = d.cu.cuStreamSynchronize(stream)  # the default pool releases above its threshold (0)
    q = ctypes.c_uint64()
    rc = d.cu.cuMemAlloc_v2(ctypes.byref(q), ctypes.c_size_t(mib * MIB))
    out["alloc_after_release_rc"] = rc  # 0 expected: no false OUT_OF_MEMORY (2)
    if rc == 0:
        d.cu.cuMemFree_v2(q)
    return out


def drv_vmm(mib: int, count: int) -> dict[str, object]:
    d = _Driver()

    class Location(ctypes.Structure):
        _fields_ = (("type", ctypes.c_int), ("id", ctypes.c_int))

    class Flags(ctypes.Structure):
        _fields_ = (("compressionType", ctypes.c_ubyte), ("gpuDirectRDMACapable", ctypes.c_ubyte),
                    ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4))

    class Prop(ctypes.Structure):  # CUmemAllocationProp
        _fields_ = (("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("location", Location),
                    ("win32HandleMetaData", ctypes.c_void_p), ("allocFlags", Flags))

    prop = Prop()
    prop.type = 1  # CU_MEM_ALLOCATION_TYPE_PINNED
    prop.location.type = 1  # CU_MEM_LOCATION_TYPE_DEVICE
    prop.location.id = d.dev.value
    gran = ctypes.c_size_t()
    d.check(d.cu.cuMemGetAllocationGranularity(ctypes.byref(gran), ctypes.byref(prop), 0), "granularity")
    size = (mib * MIB + gran.value - 1) // gran.value * gran.value
    free_before = d.free_mib()
    steps = []
    for _ in range(count):
        h, va = ctypes.c_uint64(), ctypes.c_uint64()
        rc = d.cu.cuMemCreate(ctypes.byref(h), ctypes.c_size_t(size), ctypes.byref(prop), ctypes.c_ulonglong(0))
        step: dict[str, object] = {"create_rc": rc}
        if rc == 0:
            step["reserve_rc"] = d.cu.cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t(size), ctypes.c_size_t(0),
                                                          ctypes.c_uint64(0), ctypes.c_ulonglong(0))
            step["map_rc"] = d.cu.cuMemMap(va, ctypes.c_size_t(size), ctypes.c_size_t(0), h, ctypes.c_ulonglong(0))
            step["release_rc"] = d.cu.cuMemRelease(h)  # still mapped: the driver frees it at unmap
            step["free_mib_after_release"] = d.free_mib()
        steps.append(step)
    return {"size_mib": size // MIB, "free_mib_before": free_before, "steps": steps,
            "created": sum(1 for s in steps if s["create_rc"] == 0)}


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
    elif cmd == "mstream":
        res = mstream(float(argv[1]), int(argv[2]), int(argv[3]))
    elif cmd == "capture":
        res = capture(float(argv[1]), int(argv[2]))
    elif cmd == "intercept":
        res = intercept()
    elif cmd == "latency":
        res = latency(float(argv[1]), int(argv[2]))
    elif cmd == "launchbound":
        res = launchbound(int(argv[1]), int(argv[2]) if len(argv) > 2 else 1)
    elif cmd == "drv_pool":
        res = drv_pool(int(argv[1]))
    elif cmd == "drv_vmm":
        res = drv_vmm(int(argv[1]), int(argv[2]))
    else:
        raise SystemExit(f"unknown probe {cmd}")
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
