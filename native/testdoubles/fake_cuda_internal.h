/*
 * TEST DOUBLE internals — shared by the files of the fake libcuda.so.1 (NOT a CUDA driver).
 *
 * fake_libcuda.c          allocators, pools, VMM, arrays, graphs, streams with their own simulated
 *                         timelines, capture, events, synchronisation (owned by the shim's tests)
 * fake_cuda_compat.c      the cudacompat backend: cuGetProcAddress/cuGetExportTable answered by
 *                         native/cudacompat, so the real libcudart runs on this double
 * fake_cuda_device.c      devices: count, attributes, name, PCI location, driver version
 * fake_cuda_context.c     primary and created contexts, the per-thread context stack
 * fake_cuda_memory.c      device memory that is real host memory: allocation registry, copies,
 *                         memsets, pinned host memory, pointer attributes
 * fake_cuda_stream.c      stream queries, host functions and callbacks
 * fake_cuda_unsupported.c entry points libraries dlsym but the double does not model (weak)
 * fake_cuda_module.c      modules, libraries, functions (recorded; kernels never compute)
 * fake_exports.c          generated at build time: every exported cu* name -> address
 */
#pragma once

#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cuda.h>
#include <stddef.h>
#include <stdint.h>

#define FAKE_EXPORT __attribute__((visibility("default")))

/* call counter shared with fake_libcuda.c (fake_cuda_calls(name) reads it) */
void fake_cuda_count(const char *name);
#define FAKE_COUNT() fake_cuda_count(__func__)

/* fake_cuda_compat.c: one line to FAKE_CUDA_TRACE, if set */
void fake_cuda_trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* fake_exports.c: the double's own export of this exact name, or NULL */
void *fake_cuda_export(const char *name);

/* fake_cuda_device.c */
#define FAKE_NDEVICES 2
int fake_cuda_driver_version(void);
int fake_cuda_valid_device(CUdevice dev);

/* fake_cuda_context.c: device of the current context; device 0 when the thread has none (the
 * driver-API tests of the shim allocate without creating a context) */
CUdevice fake_cuda_current_device(void);
int fake_cuda_valid_context(CUcontext ctx);

/* fake_cuda_memory.c: device allocations are anonymous mappings registered by range */
uint64_t fake_devmem_map(uint64_t bytes);
void fake_devmem_unmap(uint64_t base);
/* the live device allocation containing [ptr, ptr + bytes), 0 if none */
int fake_devmem_find(uint64_t ptr, uint64_t bytes, uint64_t *base, uint64_t *size);
/* pinned host memory (cuMemHostAlloc / cuMemAllocHost / cuMemHostRegister) */
void fake_hostmem_register(void *p, size_t bytes);
int fake_hostmem_unregister(void *p);
int fake_hostmem_is_pinned(const void *p, size_t bytes);

/* fake_libcuda.c (cudart-compat hooks): copies, memsets and host functions run at submission, in
 * stream order: fake_stream_order checks the handle (CUDA_ERROR_INVALID_HANDLE), refuses a
 * capturing stream (CUDA_ERROR_NOT_SUPPORTED) and waits for the stream's earlier work */
CUresult fake_stream_order(CUstream s, int per_thread);
CUresult fake_stream_flags(CUstream s, int per_thread, unsigned *flags);

/* fake_libcuda.c -> remoting's CPU reference kernels (fake_cuda_kernels.c, branch remote): called
 * for a kernel launch on a stream that is not capturing, after the capture and legacy-stream
 * rules; returns 1 when it ran the kernel (*rc set), 0 to let the double simulate it. The double's
 * own definition is weak and returns 0. */
int fake_cuda_reference_kernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                               unsigned bz, CUstream stream, int per_thread, void **params, void **extra,
                               CUresult *rc);
