/*
 * The client's cudacompat backend: NVIDIA's libcudart asks a libcuda for ~420 versioned entry
 * points and a few private export tables at start-up. cudacompat (native/cudacompat, shared with
 * the fake driver) answers both; this file tells it where this library's entry points are. The
 * lookups use the generated symbol table, never dlsym, and call this library's own functions
 * (linked -Bsymbolic), so nothing preloaded can interpose them.
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "cudacompat.h"

static void *lookup(const char *name)
{
    for (unsigned i = 0; i < xpur_symbol_count; i++)
        if (strcmp(xpur_symbols[i].name, name) == 0)
            return xpur_symbols[i].fn;
    return NULL;
}

static void trace(const char *line) { xpur_log(2, "cudacompat: %s", line); }

static CUresult retain(CUcontext *ctx, CUdevice dev) { return xpur_c_cuDevicePrimaryCtxRetain(0, ctx, dev); }
static CUresult load(CUmodule *m, const void *image) { return xpur_c_cuModuleLoadData(0, m, image); }
static CUresult launch(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by,
                       unsigned int bz, unsigned int shm, CUstream s, void **params, void **extra)
{
    return xpur_c_cuLaunchKernel(0, f, gx, gy, gz, bx, by, bz, shm, s, params, extra);
}

/* driver_version: what cuDriverGetVersion reports (the server's once connected) */
void xpur_compat_install(int driver_version)
{
    const struct cudacompat_backend b = {
        .abi = CUDACOMPAT_ABI,
        .driver_version = driver_version,
        .lookup = lookup,
        .device_get_count = xpur_l_cuDeviceGetCount,
        .device_get_uuid = xpur_l_cuDeviceGetUuid,
        .device_get_attribute = xpur_l_cuDeviceGetAttribute,
        .primary_ctx_retain = retain,
        .ctx_get_current = xpur_l_cuCtxGetCurrent,
        .module_load_data = load,
        .launch_kernel = launch,
        .trace = trace,
    };
    if (cudacompat_install(&b) != 0)
        xpur_log(1, "cudacompat refused the backend table (ABI mismatch): the CUDA runtime will not start");
}

__attribute__((constructor)) static void install_default(void) { xpur_compat_install(CUDA_VERSION); }
