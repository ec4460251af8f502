"""Device memory a process uses that no allocation call shows: the per-process reserve.

A CUDA context, the modules it loads, per-thread local memory and the device heap take device
memory outside ``cuMemAlloc`` and friends. The shim cannot see those allocations, so it charges a
fixed reserve to the slice once per process and device (when the process first creates a context or
allocates there); the slice's memory quota covers them, and neighbours stay safe as long as a
process's real overhead stays within the reserve. The scheduler applies the same rule: a slice must
hold more than one reserve, or no process could start in it.

This module is the one definition of that rule: the scheduler (:func:`xpupool.core.request.
validate_against_pool`) and the node agent (which writes the value into each container region for
the shim) both call :func:`process_reserve_mib`.

Defaults are from published figures, to verify on each card type [gpu-todo]: a CUDA >= 11.7 context
with lazy module loading (the PyTorch default) takes about 300-400 MiB on current data-centre GPUs
(PyTorch issues #107667 and #109888); eager loading (``CUDA_MODULE_LOADING=EAGER``, CUDA < 11.7)
took more than 1 GiB. 512 MiB covers the lazy case with room for local memory and the default 8 MiB
device heap; ``bench/gpu`` measures the real figure (NVML per-process usage against the region).
"""

from __future__ import annotations

from xpupool.core.model import Vendor

#: MiB charged per process and device, by vendor [gpu-todo: verify per card type].
DEFAULT_PROCESS_RESERVE_MIB: dict[Vendor, int] = {
    Vendor.NVIDIA: 512,
    Vendor.AMD: 512,  # HIP context, code objects, scratch [gpu-todo: ROCm]
    Vendor.ASCEND: 512,  # ACL context, kernel binaries [gpu-todo: NPU]
    Vendor.EMULATED: 0,  # no device memory behind it
}


def process_reserve_mib(vendor: Vendor, model: str = "") -> int:
    """Device memory (MiB) charged to a slice for each process that uses one of its cards.

    ``model`` is accepted so per-model figures can refine the rule without changing callers.
    """
    del model  # one figure per vendor until measured per card type
    return DEFAULT_PROCESS_RESERVE_MIB.get(vendor, 0)
