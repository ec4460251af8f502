/*
 * TEST DOUBLE — the fake libcuda.so.1's cudacompat backend (NOT a CUDA driver).
 *
 * cuGetProcAddress(_v2) and cuGetExportTable (fake_libcuda.c) are answered by native/cudacompat,
 * which resolves to this double's own exports (fake_exports.c, generated from the built objects,
 * never through dlsym: under libxpushim dlsym is the shim's and would hand out its wrappers).
 * FAKE_CUDA_TRACE=<file> appends one line per export-table slot call, runtime log line, trapped
 * slot and unresolved cuGetProcAddress lookup: the record of what the runtime really asks.
 */
#include "fake_cuda_internal.h"

#include "cudacompat.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static FILE *g_trace;
static pthread_mutex_t g_trace_mu = PTHREAD_MUTEX_INITIALIZER;

static void trace(const char *line)
{
    pthread_mutex_lock(&g_trace_mu);
    if (g_trace) {
        fputs(line, g_trace);
        fputc('\n', g_trace);
        fflush(g_trace);
    }
    pthread_mutex_unlock(&g_trace_mu);
}

static void *lookup(const char *name) { return fake_cuda_export(name); }

void fake_cuda_trace(const char *fmt, ...)
{
    if (!g_trace)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    trace(line);
}

FAKE_EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image);

__attribute__((constructor)) static void install(void)
{
    const char *path = getenv("FAKE_CUDA_TRACE"); /* test double: env read once */
    if (path && *path)
        g_trace = fopen(path, "a");
    const struct cudacompat_backend b = {
        .abi = CUDACOMPAT_ABI,
        .driver_version = fake_cuda_driver_version(),
        .lookup = lookup,
        .device_get_count = cuDeviceGetCount,
        .device_get_uuid = cuDeviceGetUuid,
        .device_get_attribute = cuDeviceGetAttribute,
        .primary_ctx_retain = cuDevicePrimaryCtxRetain,
        .ctx_get_current = cuCtxGetCurrent,
        .module_load_data = cuModuleLoadData,
        .launch_kernel = cuLaunchKernel,
        .trace = g_trace ? trace : NULL,
    };
    if (cudacompat_install(&b) != 0)
        abort(); /* a test double with an incomplete backend is a build bug */
}

/* test/diagnostic hooks (not CUDA): export-table slot calls and traps, for the runtime tests */
FAKE_EXPORT uint64_t fake_cuda_slot_calls(const unsigned char uuid[16], unsigned slot)
{
    CUuuid id;
    memcpy(id.bytes, uuid, 16);
    return cudacompat_slot_calls(&id, slot);
}
FAKE_EXPORT uint64_t fake_cuda_trapped_slots(void) { return cudacompat_trapped_calls(); }

/* answered locally by cudacompat (cuda.h's names and descriptions) */
FAKE_EXPORT CUresult cuGetErrorName(CUresult error, const char **str) { return cudacompat_error_name(error, str); }
FAKE_EXPORT CUresult cuGetErrorString(CUresult error, const char **str) { return cudacompat_error_string(error, str); }

/* the runtime's private tables (replaces the weak NOT_SUPPORTED answer of fake_libcuda.c) */
FAKE_EXPORT CUresult cuGetExportTable(const void **table, const CUuuid *id)
{
    return cudacompat_get_export_table(table, id);
}
