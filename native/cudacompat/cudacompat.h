/*
 * cudacompat: what NVIDIA's CUDA runtime (libcudart) needs from a libcuda.so.1, independent of
 * where the real work goes.
 *
 * Used by two libcuda replacements:
 *   - the fake libcuda TEST DOUBLE (native/testdoubles), so the real libcudart.so.12/.13 from
 *     NVIDIA's wheels runs on a CPU-only machine;
 *   - the remoting client (native/remote), which replaces libcuda.so.1 in a pod and forwards the
 *     real work to a GPU elsewhere.
 * Each plugs in a driver backend (struct cudacompat_backend) and exports two thin entry points:
 *
 *   CUresult cuGetProcAddress_v2(const char *s, void **p, int v, cuuint64_t f,
 *                                CUdriverProcAddressQueryResult *st)
 *       { return cudacompat_get_proc_address(s, p, v, f, st); }
 *   CUresult cuGetExportTable(const void **t, const CUuuid *id)
 *       { return cudacompat_get_export_table(t, id); }
 *
 * (plus cuGetProcAddress, the 4-argument pre-12.0 ABI, with st = NULL), and tells cudacompat when a
 * context dies (cudacompat_context_destroyed) so the runtime's context-local state is released.
 *
 * What the runtime asks, as observed with the real libcudart 12.4.127, 12.9.79 and 13.5.37 on the
 * fake driver (every slot call logged, gdb on the callers; details and what is guessed:
 * docs/cudart-compat.md):
 *
 * 1. cuGetProcAddress_v2(symbol, &fn, cudaVersion, flags, &status): ~420 base names, each at the
 *    exact CUDA version of the signature the runtime wants (cuStreamGetCaptureInfo at 10010, 11030
 *    and 12030), flags 0 (default = legacy stream) or 2 (per-thread default stream: the _ptds/_ptsz
 *    export). cudacompat maps (symbol, version, flags) to the exported name with a table generated
 *    at build time from NVIDIA's cudaTypedefs.h (gen_procaddr.py) and asks the backend for that
 *    exact export. Status: SUCCESS; VERSION_NOT_SUFFICIENT when the symbol exists only in newer
 *    versions than asked; SYMBOL_NOT_FOUND otherwise (the runtime tolerates missing entries until
 *    they are used).
 *
 * 2. cuGetExportTable(&table, uuid): private tables of function pointers. Tables whose slot 0 is
 *    their size in bytes are marked [size]; the runtime checks the size before using a slot.
 *      f8cff951-2146-8b4e-b9e2-fb469e7c0dd9  DIAGNOSTICS [size]: slot 1 = vprintf-style logger
 *            (component, level, fmt, va_list) the 13.x runtime uses for start-up failures
 *            ("Insufficient driver: %d < %d"); slot 2 called through a size check, no-op.
 *      6bd5fb6c-5bf4-e74a-8987-d93912fd9df9  CUDART_INTERFACE [size]: slot 2 = primary context of a
 *            device (retain); slots 1, 6, 8 = load a module from a fatbin wrapper / header (the
 *            __cudaRegisterFatBinary path); slot 7 = notification, no-op; slot 9 = launch.
 *      a094798c-2e74-2e74-93f2-0800200c0a66  TOOLS_RUNTIME_CALLBACK_HOOKS [size]: slots 2 and 6 hand
 *            the runtime zeroed buffers it keeps tool-callback state in.
 *      42d85a81-23f6-cb47-8298-f6e78a3aecdc  TOOLS_TLS [size]: requested, no slot called.
 *      c693336e-1121-df11-a8c3-68f355d89593  CONTEXT_LOCAL_STORAGE (no size word): slot 0 = insert
 *            (ctx, key, value, dtor), slot 1 = remove (ctx, key), slot 2 = get (&value, ctx, key);
 *            ctx NULL = the calling thread's current context. The dtor runs when the context dies.
 *      263e8860-7cd2-6143-92f6-bbd5006dfa7e  CONTEXT_WRAPPER [size]: slot 2 = unwrap a context
 *            (ctx, &is_wrapped, &unwrapped) -> not wrapped; slot 3 = a capability query (no
 *            arguments used) whose answer 1 switches on a runtime feature: answered 0.
 *      d4082055-bde6-704b-8d34-ba123c66e1f2  INTEGRITY [size]: slot 1 = the runtime's driver
 *            handshake (runtime version, unix time, &out128): fixed answers for version % 10 == 0
 *            and 1, an HMAC-MD2 over driver/runtime versions, pid, thread, table addresses, time and
 *            every device's UUID and PCI location for % 10 == 2. A wrong answer makes every runtime
 *            call fail with cudaErrorSoftwareValidityNotEstablished (103, "integrity checks failed").
 *    Any other slot of these tables traps: it is counted, reported through the backend's trace
 *    hook, and returns CUDA_ERROR_NOT_SUPPORTED; an unknown UUID returns CUDA_ERROR_INVALID_VALUE.
 *
 * Thread safety: every entry point may be called from any thread at any time after
 * cudacompat_install(); the context-local store is guarded by one mutex that no callback is
 * called under.
 */
#pragma once

#include <cuda.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CUDACOMPAT_ABI 1

/* The driver a libcuda replacement forwards to. Every function pointer is required unless marked
 * optional; they are called with the semantics of the driver API function of the same name. */
struct cudacompat_backend {
    uint32_t abi;       /* CUDACOMPAT_ABI */
    int driver_version; /* what cuDriverGetVersion reports (12090, 13050, ...); the handshake uses it */
    /* the exported driver function with exactly this name ("cuMemAlloc_v2", "cuLaunchKernel_ptsz"),
     * or NULL when the backend does not implement it */
    void *(*lookup)(const char *export_name);
    CUresult (*device_get_count)(int *count);
    CUresult (*device_get_uuid)(CUuuid *uuid, CUdevice dev);
    CUresult (*device_get_attribute)(int *value, CUdevice_attribute attrib, CUdevice dev);
    CUresult (*primary_ctx_retain)(CUcontext *ctx, CUdevice dev);
    CUresult (*ctx_get_current)(CUcontext *ctx);
    /* cuModuleLoadData with a fatbin image (starts with the 0xBA55ED50 header; see
     * cudacompat_fatbin_size for its length) */
    CUresult (*module_load_data)(CUmodule *module, const void *image);
    /* cuLaunchKernel (legacy default stream semantics) */
    CUresult (*launch_kernel)(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                              unsigned int by, unsigned int bz, unsigned int shared_bytes, CUstream stream,
                              void **params, void **extra);
    /* optional: one line per event worth seeing (slot calls, runtime log lines, traps) */
    void (*trace)(const char *line);
};

/* Install the backend (copied). Call once before the runtime can reach the driver (from the
 * library constructor or cuInit); a later call replaces it. Returns 0, or -1 for a NULL/incomplete
 * table or a different ABI. */
int cudacompat_install(const struct cudacompat_backend *backend);

/* The cuGetProcAddress_v2 contract (status may be NULL: the 4-argument pre-12.0 ABI). */
CUresult cudacompat_get_proc_address(const char *symbol, void **pfn, int cuda_version, cuuint64_t flags,
                                     CUdriverProcAddressQueryResult *status);

/* The cuGetExportTable contract. */
CUresult cudacompat_get_export_table(const void **table, const CUuuid *table_id);

/* A context was destroyed or a primary context reset/released to zero: run and drop the
 * context-local destructors the runtime registered for it. Call after the context is gone from
 * the backend's point of view and with no backend lock held (the destructors call back into the
 * driver). */
void cudacompat_context_destroyed(CUcontext ctx);

/* cuGetErrorName / cuGetErrorString, answered from cuda.h's enumerators and their documentation */
CUresult cudacompat_error_name(CUresult error, const char **str);
CUresult cudacompat_error_string(CUresult error, const char **str);

/* Length in bytes of a fatbin image (header + payload), or 0 if image is not a fatbin. */
size_t cudacompat_fatbin_size(const void *image);

/* Diagnostics: how often each export table slot was called (0 for an unknown uuid/slot), and how
 * many calls hit a trap (unimplemented slot). */
uint64_t cudacompat_slot_calls(const CUuuid *table_id, unsigned slot);
uint64_t cudacompat_trapped_calls(void);

#ifdef __cplusplus
}
#endif
