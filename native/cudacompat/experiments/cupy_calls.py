"""CuPy on the fake libcuda TEST DOUBLE (an experiment, not a test: see run_library_experiments.sh).

CuPy compiles its kernels with NVRTC on the host, loads them with cuModuleLoadData and launches them;
on the double the launches are recorded, never computed, while copies carry real data. Under
libxpushim (XPUSHIM_REGION set) an allocation beyond the slice must raise OutOfMemoryError.
"""

from __future__ import annotations

import ctypes
import os

import cupy as cp

cuda = ctypes.CDLL("libcuda.so.1")
cuda.fake_cuda_calls.restype = ctypes.c_long

print("devices", cp.cuda.runtime.getDeviceCount())
b = cp.asarray([1.0, 2.0, 3.0], dtype=cp.float32)
print("asarray -> get (real data through the double):", b.get().tolist())
a = cp.arange(1 << 20, dtype=cp.float32)
c = a * 2 + 1
cp.cuda.Device(0).synchronize()
print("elementwise kernels launched (not computed):", c.shape)
if os.environ.get("XPUSHIM_REGION"):
    free_b, total_b = cp.cuda.runtime.memGetInfo()
    print("memGetInfo under the shim: total", total_b >> 20, "MiB")
    try:
        cp.empty(total_b, dtype=cp.uint8)
        print("allocation beyond the quota: NOT refused")
    except cp.cuda.memory.OutOfMemoryError:
        print("allocation beyond the quota: OutOfMemoryError")
for name in ("cuModuleLoadData", "cuModuleGetFunction", "cuLaunchKernel", "cuMemAlloc_v2", "cuMemcpyHtoDAsync_v2",
             "cuMemcpyDtoHAsync_v2", "cuMemFree_v2"):
    print(f"calls {name} {cuda.fake_cuda_calls(name.encode())}")
