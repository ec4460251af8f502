/*
 * Entry points answered on the client: versions, error strings, the session's device (from
 * WELCOME), per-thread contexts, pinned host memory (the tenant's own RAM), stream properties,
 * function names and parameter layouts. No round trip.
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client.h"
#include "xpur_custom_wire.h"

#undef cuGetProcAddress

/* ------------------------------------------------------------------ versions and errors */

CUresult xpur_l_cuDriverGetVersion(int *v)
{
    if (!v)
        return CUDA_ERROR_INVALID_VALUE;
    /* the server's driver once connected: the client may not promise more than it has */
    *v = xpur_ready() == CUDA_SUCCESS && xpur_device()->driver_version ? xpur_device()->driver_version : CUDA_VERSION;
    return CUDA_SUCCESS;
}

static const struct {
    CUresult code;
    const char *name, *text;
} k_errors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "success"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid value"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "not initialized"},
    {CUDA_ERROR_DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED", "deinitialized"},
    {CUDA_ERROR_PROFILER_DISABLED, "CUDA_ERROR_PROFILER_DISABLED", "profiler disabled"},
    {CUDA_ERROR_PROFILER_NOT_INITIALIZED, "CUDA_ERROR_PROFILER_NOT_INITIALIZED", "profiler not initialized"},
    {CUDA_ERROR_PROFILER_ALREADY_STARTED, "CUDA_ERROR_PROFILER_ALREADY_STARTED", "profiler already started"},
    {CUDA_ERROR_PROFILER_ALREADY_STOPPED, "CUDA_ERROR_PROFILER_ALREADY_STOPPED", "profiler already stopped"},
    {CUDA_ERROR_STUB_LIBRARY, "CUDA_ERROR_STUB_LIBRARY", "stub library"},
    {CUDA_ERROR_DEVICE_UNAVAILABLE, "CUDA_ERROR_DEVICE_UNAVAILABLE", "device unavailable"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no device"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device"},
    {CUDA_ERROR_DEVICE_NOT_LICENSED, "CUDA_ERROR_DEVICE_NOT_LICENSED", "device not licensed"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "invalid image"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid context"},
    {CUDA_ERROR_CONTEXT_ALREADY_CURRENT, "CUDA_ERROR_CONTEXT_ALREADY_CURRENT", "context already current"},
    {CUDA_ERROR_MAP_FAILED, "CUDA_ERROR_MAP_FAILED", "map failed"},
    {CUDA_ERROR_UNMAP_FAILED, "CUDA_ERROR_UNMAP_FAILED", "unmap failed"},
    {CUDA_ERROR_ARRAY_IS_MAPPED, "CUDA_ERROR_ARRAY_IS_MAPPED", "array is mapped"},
    {CUDA_ERROR_ALREADY_MAPPED, "CUDA_ERROR_ALREADY_MAPPED", "already mapped"},
    {CUDA_ERROR_NO_BINARY_FOR_GPU, "CUDA_ERROR_NO_BINARY_FOR_GPU", "no binary for gpu"},
    {CUDA_ERROR_ALREADY_ACQUIRED, "CUDA_ERROR_ALREADY_ACQUIRED", "already acquired"},
    {CUDA_ERROR_NOT_MAPPED, "CUDA_ERROR_NOT_MAPPED", "not mapped"},
    {CUDA_ERROR_NOT_MAPPED_AS_ARRAY, "CUDA_ERROR_NOT_MAPPED_AS_ARRAY", "not mapped as array"},
    {CUDA_ERROR_NOT_MAPPED_AS_POINTER, "CUDA_ERROR_NOT_MAPPED_AS_POINTER", "not mapped as pointer"},
    {CUDA_ERROR_ECC_UNCORRECTABLE, "CUDA_ERROR_ECC_UNCORRECTABLE", "ecc uncorrectable"},
    {CUDA_ERROR_UNSUPPORTED_LIMIT, "CUDA_ERROR_UNSUPPORTED_LIMIT", "unsupported limit"},
    {CUDA_ERROR_CONTEXT_ALREADY_IN_USE, "CUDA_ERROR_CONTEXT_ALREADY_IN_USE", "context already in use"},
    {CUDA_ERROR_PEER_ACCESS_UNSUPPORTED, "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED", "peer access unsupported"},
    {CUDA_ERROR_INVALID_PTX, "CUDA_ERROR_INVALID_PTX", "invalid ptx"},
    {CUDA_ERROR_INVALID_GRAPHICS_CONTEXT, "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT", "invalid graphics context"},
    {CUDA_ERROR_NVLINK_UNCORRECTABLE, "CUDA_ERROR_NVLINK_UNCORRECTABLE", "nvlink uncorrectable"},
    {CUDA_ERROR_JIT_COMPILER_NOT_FOUND, "CUDA_ERROR_JIT_COMPILER_NOT_FOUND", "jit compiler not found"},
    {CUDA_ERROR_UNSUPPORTED_PTX_VERSION, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", "unsupported ptx version"},
    {CUDA_ERROR_JIT_COMPILATION_DISABLED, "CUDA_ERROR_JIT_COMPILATION_DISABLED", "jit compilation disabled"},
    {CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY, "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY", "unsupported exec affinity"},
    {CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC, "CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC", "unsupported devside sync"},
    {CUDA_ERROR_CONTAINED, "CUDA_ERROR_CONTAINED", "contained"},
    {CUDA_ERROR_INVALID_SOURCE, "CUDA_ERROR_INVALID_SOURCE", "invalid source"},
    {CUDA_ERROR_FILE_NOT_FOUND, "CUDA_ERROR_FILE_NOT_FOUND", "file not found"},
    {CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND, "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND", "shared object symbol not found"},
    {CUDA_ERROR_SHARED_OBJECT_INIT_FAILED, "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED", "shared object init failed"},
    {CUDA_ERROR_OPERATING_SYSTEM, "CUDA_ERROR_OPERATING_SYSTEM", "operating system"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid handle"},
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE", "illegal state"},
    {CUDA_ERROR_LOSSY_QUERY, "CUDA_ERROR_LOSSY_QUERY", "lossy query"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "not ready"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "illegal address"},
    {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "launch out of resources"},
    {CUDA_ERROR_LAUNCH_TIMEOUT, "CUDA_ERROR_LAUNCH_TIMEOUT", "launch timeout"},
    {CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING, "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING", "launch incompatible texturing"},
    {CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED, "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED", "peer access already enabled"},
    {CUDA_ERROR_PEER_ACCESS_NOT_ENABLED, "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED", "peer access not enabled"},
    {CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE, "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE", "primary context active"},
    {CUDA_ERROR_CONTEXT_IS_DESTROYED, "CUDA_ERROR_CONTEXT_IS_DESTROYED", "context is destroyed"},
    {CUDA_ERROR_ASSERT, "CUDA_ERROR_ASSERT", "assert"},
    {CUDA_ERROR_TOO_MANY_PEERS, "CUDA_ERROR_TOO_MANY_PEERS", "too many peers"},
    {CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", "host memory already registered"},
    {CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED", "host memory not registered"},
    {CUDA_ERROR_HARDWARE_STACK_ERROR, "CUDA_ERROR_HARDWARE_STACK_ERROR", "hardware stack error"},
    {CUDA_ERROR_ILLEGAL_INSTRUCTION, "CUDA_ERROR_ILLEGAL_INSTRUCTION", "illegal instruction"},
    {CUDA_ERROR_MISALIGNED_ADDRESS, "CUDA_ERROR_MISALIGNED_ADDRESS", "misaligned address"},
    {CUDA_ERROR_INVALID_ADDRESS_SPACE, "CUDA_ERROR_INVALID_ADDRESS_SPACE", "invalid address space"},
    {CUDA_ERROR_INVALID_PC, "CUDA_ERROR_INVALID_PC", "invalid pc"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "launch failed"},
    {CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE, "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE", "cooperative launch too large"},
    {CUDA_ERROR_TENSOR_MEMORY_LEAK, "CUDA_ERROR_TENSOR_MEMORY_LEAK", "tensor memory leak"},
    {CUDA_ERROR_NOT_PERMITTED, "CUDA_ERROR_NOT_PERMITTED", "not permitted"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "not supported"},
    {CUDA_ERROR_SYSTEM_NOT_READY, "CUDA_ERROR_SYSTEM_NOT_READY", "system not ready"},
    {CUDA_ERROR_SYSTEM_DRIVER_MISMATCH, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", "system driver mismatch"},
    {CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", "compat not supported on device"},
    {CUDA_ERROR_MPS_CONNECTION_FAILED, "CUDA_ERROR_MPS_CONNECTION_FAILED", "mps connection failed"},
    {CUDA_ERROR_MPS_RPC_FAILURE, "CUDA_ERROR_MPS_RPC_FAILURE", "mps rpc failure"},
    {CUDA_ERROR_MPS_SERVER_NOT_READY, "CUDA_ERROR_MPS_SERVER_NOT_READY", "mps server not ready"},
    {CUDA_ERROR_MPS_MAX_CLIENTS_REACHED, "CUDA_ERROR_MPS_MAX_CLIENTS_REACHED", "mps max clients reached"},
    {CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED, "CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED", "mps max connections reached"},
    {CUDA_ERROR_MPS_CLIENT_TERMINATED, "CUDA_ERROR_MPS_CLIENT_TERMINATED", "mps client terminated"},
    {CUDA_ERROR_CDP_NOT_SUPPORTED, "CUDA_ERROR_CDP_NOT_SUPPORTED", "cdp not supported"},
    {CUDA_ERROR_CDP_VERSION_MISMATCH, "CUDA_ERROR_CDP_VERSION_MISMATCH", "cdp version mismatch"},
    {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", "stream capture unsupported"},
    {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", "stream capture invalidated"},
    {CUDA_ERROR_STREAM_CAPTURE_MERGE, "CUDA_ERROR_STREAM_CAPTURE_MERGE", "stream capture merge"},
    {CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED", "stream capture unmatched"},
    {CUDA_ERROR_STREAM_CAPTURE_UNJOINED, "CUDA_ERROR_STREAM_CAPTURE_UNJOINED", "stream capture unjoined"},
    {CUDA_ERROR_STREAM_CAPTURE_ISOLATION, "CUDA_ERROR_STREAM_CAPTURE_ISOLATION", "stream capture isolation"},
    {CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT", "stream capture implicit"},
    {CUDA_ERROR_CAPTURED_EVENT, "CUDA_ERROR_CAPTURED_EVENT", "captured event"},
    {CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD", "stream capture wrong thread"},
    {CUDA_ERROR_TIMEOUT, "CUDA_ERROR_TIMEOUT", "timeout"},
    {CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE, "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE", "graph exec update failure"},
    {CUDA_ERROR_EXTERNAL_DEVICE, "CUDA_ERROR_EXTERNAL_DEVICE", "external device"},
    {CUDA_ERROR_INVALID_CLUSTER_SIZE, "CUDA_ERROR_INVALID_CLUSTER_SIZE", "invalid cluster size"},
    {CUDA_ERROR_FUNCTION_NOT_LOADED, "CUDA_ERROR_FUNCTION_NOT_LOADED", "function not loaded"},
    {CUDA_ERROR_INVALID_RESOURCE_TYPE, "CUDA_ERROR_INVALID_RESOURCE_TYPE", "invalid resource type"},
    {CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION, "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION", "invalid resource configuration"},
    {CUDA_ERROR_KEY_ROTATION, "CUDA_ERROR_KEY_ROTATION", "key rotation"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown"},
};

static int error_index(CUresult e)
{
    for (size_t i = 0; i < sizeof k_errors / sizeof k_errors[0]; i++)
        if (k_errors[i].code == e)
            return (int)i;
    return -1;
}

CUresult xpur_l_cuGetErrorString(CUresult e, const char **s)
{
    int i = error_index(e);
    if (!s)
        return CUDA_ERROR_INVALID_VALUE;
    *s = i < 0 ? NULL : k_errors[i].text;
    return i < 0 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult xpur_l_cuGetErrorName(CUresult e, const char **s)
{
    int i = error_index(e);
    if (!s)
        return CUDA_ERROR_INVALID_VALUE;
    *s = i < 0 ? NULL : k_errors[i].name;
    return i < 0 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult xpur_l_cuProfilerStart(void) { return xpur_ready(); }
CUresult xpur_l_cuProfilerStop(void) { return xpur_ready(); }

/* ------------------------------------------------------------------ symbol resolution
 * Exact exported names only, until the shared cudacompat module answers cudart's versioned
 * (name, cudaVersion, flags) queries for both the test double and this client. */

static void *symbol(const char *name)
{
    for (unsigned i = 0; i < xpur_symbol_count; i++)
        if (strcmp(xpur_symbols[i].name, name) == 0)
            return xpur_symbols[i].fn;
    return NULL;
}

CUresult xpur_l_cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *st)
{
    (void)ver;
    (void)flags;
    if (!sym || !pfn)
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = symbol(sym);
    if (st)
        *st = *pfn ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return *pfn ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

CUresult xpur_l_cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags)
{
    return xpur_l_cuGetProcAddress_v2(sym, pfn, ver, flags, NULL);
}

CUresult xpur_l_cuGetExportTable(const void **table, const CUuuid *id)
{
    (void)id;
    if (table)
        *table = NULL;
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* ------------------------------------------------------------------ the device */

#define DEV_CHECK(dev)                                                                             \
    do {                                                                                           \
        CUresult rc_ = xpur_dev_in(dev);                                                           \
        if (rc_)                                                                                   \
            return rc_;                                                                            \
    } while (0)

CUresult xpur_l_cuDeviceGetCount(int *n)
{
    if (!n)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = xpur_ready();
    *n = rc == CUDA_SUCCESS ? 1 : 0;
    return rc;
}

CUresult xpur_l_cuDeviceGet(CUdevice *d, int ordinal)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    if (!d)
        return CUDA_ERROR_INVALID_VALUE;
    if (ordinal != 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuDeviceGetName(char *name, int len, CUdevice dev)
{
    DEV_CHECK(dev);
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    const char *n = xpur_device()->name[0] ? xpur_device()->name : "xpupool remote vXPU";
    strncpy(name, n, (size_t)len - 1);
    name[len - 1] = 0;
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuDeviceGetUuid_v2(CUuuid *u, CUdevice dev)
{
    DEV_CHECK(dev);
    if (!u)
        return CUDA_ERROR_INVALID_VALUE;
    memcpy(u->bytes, xpur_device()->uuid, 16);
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuDeviceGetUuid(CUuuid *u, CUdevice dev) { return xpur_l_cuDeviceGetUuid_v2(u, dev); }

CUresult xpur_l_cuDeviceTotalMem_v2(size_t *b, CUdevice dev)
{
    DEV_CHECK(dev);
    if (!b)
        return CUDA_ERROR_INVALID_VALUE;
    *b = xpur_device()->total_mem; /* the slice's quota, as the worker's shim reports it */
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuDeviceGetAttribute(int *pi, CUdevice_attribute a, CUdevice dev)
{
    DEV_CHECK(dev);
    if (!pi || a <= 0 || a >= CU_DEVICE_ATTRIBUTE_MAX || !xpur_device()->attr_known[a])
        return CUDA_ERROR_INVALID_VALUE;
    *pi = xpur_device()->attr[a];
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuDeviceComputeCapability(int *major, int *minor, CUdevice dev)
{
    DEV_CHECK(dev);
    if (!major || !minor)
        return CUDA_ERROR_INVALID_VALUE;
    *major = xpur_device()->attr[CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR];
    *minor = xpur_device()->attr[CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR];
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuDeviceGetProperties(CUdevprop *p, CUdevice dev)
{
    DEV_CHECK(dev);
    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    const int *a = xpur_device()->attr;
    memset(p, 0, sizeof *p);
    p->maxThreadsPerBlock = a[CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK];
    p->maxThreadsDim[0] = a[CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X];
    p->maxThreadsDim[1] = a[CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y];
    p->maxThreadsDim[2] = a[CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z];
    p->maxGridSize[0] = a[CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X];
    p->maxGridSize[1] = a[CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y];
    p->maxGridSize[2] = a[CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z];
    p->sharedMemPerBlock = a[CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK];
    p->totalConstantMemory = a[CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY];
    p->SIMDWidth = a[CU_DEVICE_ATTRIBUTE_WARP_SIZE];
    p->memPitch = a[CU_DEVICE_ATTRIBUTE_MAX_PITCH];
    p->regsPerBlock = a[CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK];
    p->clockRate = a[CU_DEVICE_ATTRIBUTE_CLOCK_RATE];
    p->textureAlign = a[CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT];
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuDeviceGetPCIBusId(char *id, int len, CUdevice dev)
{
    DEV_CHECK(dev);
    if (!id || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    strncpy(id, xpur_device()->pci, (size_t)len - 1);
    id[len - 1] = 0;
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuDeviceGetByPCIBusId(CUdevice *dev, const char *id)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    if (!dev || !id)
        return CUDA_ERROR_INVALID_VALUE;
    if (strcasecmp(id, xpur_device()->pci) != 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *dev = 0;
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuDeviceCanAccessPeer(int *can, CUdevice dev, CUdevice peer)
{
    DEV_CHECK(dev);
    if (!can)
        return CUDA_ERROR_INVALID_VALUE;
    if (peer != 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *can = 0;
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuDeviceGetP2PAttribute(int *value, CUdevice_P2PAttribute attrib, CUdevice src, CUdevice dst)
{
    (void)attrib;
    DEV_CHECK(src);
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    if (dst != 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *value = 0;
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ contexts (per thread) */

#define CTX_STACK 32
static _Thread_local uint64_t t_stack[CTX_STACK];
static _Thread_local int t_depth;

static CUresult ctx_id(CUcontext ctx, uint64_t *id) { return xpur_handle_in(XPUR_H_CTX, (uint64_t)(uintptr_t)ctx, id); }

CUresult xpur_l_cuCtxGetCurrent(CUcontext *pctx)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = (CUcontext)(uintptr_t)xpur_ctx_current();
    return CUDA_SUCCESS;
}

CUresult xpur_c_cuCtxSetCurrent(unsigned xo, CUcontext ctx)
{
    (void)xo;
    uint64_t id;
    CUresult rc = xpur_ready();
    if (rc || (rc = ctx_id(ctx, &id)))
        return rc;
    xpur_ctx_set_current(id); /* sent to the server lazily, before this thread's next call */
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuCtxPushCurrent_v2(CUcontext ctx)
{
    uint64_t id;
    CUresult rc = xpur_ready();
    if (rc || (rc = ctx_id(ctx, &id)))
        return rc;
    if (!id)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (t_depth == CTX_STACK)
        return CUDA_ERROR_OUT_OF_MEMORY;
    t_stack[t_depth++] = xpur_ctx_current();
    xpur_ctx_set_current(id);
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuCtxPopCurrent_v2(CUcontext *pctx)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    uint64_t cur = xpur_ctx_current();
    if (!cur)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (pctx)
        *pctx = (CUcontext)(uintptr_t)cur;
    xpur_ctx_set_current(t_depth ? t_stack[--t_depth] : 0);
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuCtxGetDevice(CUdevice *d)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    if (!d)
        return CUDA_ERROR_INVALID_VALUE;
    if (!xpur_ctx_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    *d = 0;
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuCtxGetApiVersion(CUcontext ctx, unsigned int *v)
{
    uint64_t id;
    CUresult rc = xpur_ready();
    if (rc || (rc = ctx_id(ctx, &id)))
        return rc;
    if (!v)
        return CUDA_ERROR_INVALID_VALUE;
    if (!id && !xpur_ctx_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    *v = 3020;
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuCtxGetId(CUcontext ctx, unsigned long long *out)
{
    uint64_t id;
    CUresult rc = xpur_ready();
    if (rc || (rc = ctx_id(ctx, &id)))
        return rc;
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    if (!id)
        id = xpur_ctx_current();
    if (!id)
        return CUDA_ERROR_INVALID_CONTEXT;
    *out = id & XPUR_H_COUNTER_MASK;
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuCtxGetStreamPriorityRange(int *least, int *greatest)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    if (!xpur_ctx_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    if (least)
        *least = xpur_device()->prio_least;
    if (greatest)
        *greatest = xpur_device()->prio_greatest;
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ host memory (client RAM) */

struct hrange {
    uintptr_t base;
    size_t n;
    unsigned flags;
    int owned;
};
static pthread_mutex_t g_host_mu = PTHREAD_MUTEX_INITIALIZER;
static struct hrange *g_host;
static size_t g_nhost, g_host_cap;

int xpur_host_add(void *p, size_t n, unsigned flags, int owned)
{
    pthread_mutex_lock(&g_host_mu);
    if (g_nhost == g_host_cap) {
        size_t cap = g_host_cap ? 2 * g_host_cap : 64;
        struct hrange *v = realloc(g_host, cap * sizeof *v);
        if (!v) {
            pthread_mutex_unlock(&g_host_mu);
            return -1;
        }
        g_host = v;
        g_host_cap = cap;
    }
    g_host[g_nhost++] = (struct hrange){(uintptr_t)p, n, flags, owned};
    pthread_mutex_unlock(&g_host_mu);
    return 0;
}

int xpur_host_find(const void *p, void **base, size_t *n, unsigned *flags, int *owned)
{
    uintptr_t a = (uintptr_t)p;
    int found = 0;
    pthread_mutex_lock(&g_host_mu);
    for (size_t i = 0; i < g_nhost; i++)
        if (a >= g_host[i].base && a - g_host[i].base < (g_host[i].n ? g_host[i].n : 1)) {
            if (base)
                *base = (void *)g_host[i].base;
            if (n)
                *n = g_host[i].n;
            if (flags)
                *flags = g_host[i].flags;
            if (owned)
                *owned = g_host[i].owned;
            found = 1;
            break;
        }
    pthread_mutex_unlock(&g_host_mu);
    return found;
}

int xpur_host_del(void *p)
{
    int found = 0;
    pthread_mutex_lock(&g_host_mu);
    for (size_t i = 0; i < g_nhost; i++)
        if (g_host[i].base == (uintptr_t)p) {
            g_host[i] = g_host[--g_nhost];
            found = 1;
            break;
        }
    pthread_mutex_unlock(&g_host_mu);
    return found;
}

CUresult xpur_l_cuMemHostAlloc(void **pp, size_t n, unsigned int flags)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    if (!pp)
        return CUDA_ERROR_INVALID_VALUE;
    if (!xpur_ctx_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    void *p = NULL;
    if (posix_memalign(&p, 4096, n ? n : 1))
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (xpur_host_add(p, n, flags, 1)) {
        free(p);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *pp = p;
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuMemAllocHost_v2(void **pp, size_t n) { return xpur_l_cuMemHostAlloc(pp, n, 0); }

CUresult xpur_l_cuMemFreeHost(void *p)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    void *base;
    int owned = 0;
    if (!xpur_host_find(p, &base, NULL, NULL, &owned) || base != p || !owned)
        return CUDA_ERROR_INVALID_VALUE;
    xpur_host_del(p);
    free(p);
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuMemHostGetFlags(unsigned int *flags, void *p)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    if (!flags || !xpur_host_find(p, NULL, NULL, flags, NULL))
        return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuMemHostRegister_v2(void *p, size_t n, unsigned int flags)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    if (!p || !n)
        return CUDA_ERROR_INVALID_VALUE;
    if (xpur_host_find(p, NULL, NULL, NULL, NULL))
        return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    return xpur_host_add(p, n, flags, 0) ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_SUCCESS;
}

CUresult xpur_l_cuMemHostUnregister(void *p)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    void *base;
    int owned = 1;
    if (!xpur_host_find(p, &base, NULL, NULL, &owned) || base != p || owned)
        return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
    xpur_host_del(p);
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ device ranges (client view) */

struct drange {
    uint64_t base, end;
};
static pthread_mutex_t g_dev_mu = PTHREAD_MUTEX_INITIALIZER;
static struct drange *g_dev;
static size_t g_ndev, g_dev_cap;

/* Reserve the device range's pages in this process (PROT_NONE, never replacing a mapping), as a
 * CUDA driver's unified address space would: the client's own memory can then never take an
 * address that names device memory, so unified copies classify pointers correctly. Never unmapped. */
static void shadow(uint64_t p, uint64_t n)
{
    uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), lo = p & ~(pg - 1), hi = (p + n + pg - 1) & ~(pg - 1);
    if (!n || hi <= lo || hi > (1ull << 47))
        return;
    void *m = mmap((void *)(uintptr_t)lo, hi - lo, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE |
                   MAP_FIXED_NOREPLACE, -1, 0);
    if (m == MAP_FAILED) {
        if (errno != EEXIST)
            return;
        /* already mapped: ours (a neighbour's shadow) or the client's own memory; nothing to do */
        return;
    }
    if ((uint64_t)(uintptr_t)m != lo) /* an old kernel ignored the hint: give it back */
        munmap(m, hi - lo);
}

void xpur_dev_add(uint64_t p, uint64_t n)
{
    if (!n || p + n < p)
        return;
    shadow(p, n);
    pthread_mutex_lock(&g_dev_mu);
    if (g_ndev == g_dev_cap) {
        size_t cap = g_dev_cap ? 2 * g_dev_cap : 64;
        struct drange *v = realloc(g_dev, cap * sizeof *v);
        if (!v) {
            pthread_mutex_unlock(&g_dev_mu);
            return;
        }
        g_dev = v;
        g_dev_cap = cap;
    }
    size_t i = g_ndev;
    while (i && g_dev[i - 1].base > p) {
        g_dev[i] = g_dev[i - 1];
        i--;
    }
    g_dev[i] = (struct drange){p, p + n};
    g_ndev++;
    pthread_mutex_unlock(&g_dev_mu);
}

void xpur_dev_del(uint64_t p)
{
    pthread_mutex_lock(&g_dev_mu);
    for (size_t i = 0; i < g_ndev; i++)
        if (g_dev[i].base == p) {
            memmove(&g_dev[i], &g_dev[i + 1], (g_ndev - i - 1) * sizeof *g_dev);
            g_ndev--;
            break;
        }
    pthread_mutex_unlock(&g_dev_mu);
}

int xpur_dev_known(uint64_t p)
{
    int found = 0;
    pthread_mutex_lock(&g_dev_mu);
    size_t lo = 0, hi = g_ndev;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g_dev[mid].base <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t k = lo; k-- > 0 && !found;) {
        if (p >= g_dev[k].base && p < g_dev[k].end)
            found = 1;
        if (g_dev[k].end <= p && lo - k > 8)
            break;
    }
    pthread_mutex_unlock(&g_dev_mu);
    return found;
}

void xpur_hook_cuMemAlloc_v2(unsigned xo, CUdeviceptr *dptr, size_t n) { (void)xo; xpur_dev_add(*dptr, n); }
void xpur_hook_cuMemFree_v2(unsigned xo, CUdeviceptr p) { (void)xo; xpur_dev_del(p); }
void xpur_hook_cuMemAllocAsync(unsigned xo, CUdeviceptr *dptr, size_t n, CUstream s)
{
    (void)xo;
    (void)s;
    xpur_dev_add(*dptr, n);
}
void xpur_hook_cuMemAllocFromPoolAsync(unsigned xo, CUdeviceptr *dptr, size_t n, CUmemoryPool pool, CUstream s)
{
    (void)xo;
    (void)pool;
    (void)s;
    xpur_dev_add(*dptr, n);
}
void xpur_hook_cuMemFreeAsync(unsigned xo, CUdeviceptr p, CUstream s)
{
    (void)xo;
    (void)s;
    xpur_dev_del(p);
}
void xpur_hook_cuMemAddressReserve(unsigned xo, CUdeviceptr *ptr, size_t size, size_t align, CUdeviceptr addr,
                                   unsigned long long flags)
{
    (void)xo;
    (void)align;
    (void)addr;
    (void)flags;
    shadow(*ptr, size); /* mapped pieces become device ranges in cuMemMap */
}
void xpur_hook_cuMemAddressFree(unsigned xo, CUdeviceptr ptr, size_t size)
{
    (void)xo;
    (void)ptr;
    (void)size;
}
void xpur_hook_cuMemMap(unsigned xo, CUdeviceptr ptr, size_t size, size_t off, CUmemGenericAllocationHandle h,
                        unsigned long long flags)
{
    (void)xo;
    (void)off;
    (void)h;
    (void)flags;
    xpur_dev_add(ptr, size);
}
void xpur_hook_cuMemUnmap(unsigned xo, CUdeviceptr ptr, size_t size)
{
    (void)xo;
    (void)size;
    xpur_dev_del(ptr);
}
void xpur_hook_cuModuleGetGlobal_v2(unsigned xo, CUdeviceptr *dptr, size_t *bytes, CUmodule m, const char *name)
{
    (void)xo;
    (void)m;
    (void)name;
    xpur_dev_add(*dptr, *bytes);
}
void xpur_hook_cuLibraryGetGlobal(unsigned xo, CUdeviceptr *dptr, size_t *bytes, CUlibrary l, const char *name)
{
    (void)xo;
    (void)l;
    (void)name;
    xpur_dev_add(*dptr, *bytes);
}

/* ------------------------------------------------------------------ streams (properties kept here) */

static pthread_mutex_t g_obj_mu = PTHREAD_MUTEX_INITIALIZER;
static struct xpur_hmap g_streams; /* id -> flags | (uint32 priority) << 32 */
static struct xpur_hmap g_funcs;   /* id -> struct xpur_func_info * */

static void stream_put(CUstream s, unsigned flags, int prio)
{
    pthread_mutex_lock(&g_obj_mu);
    xpur_hmap_put(&g_streams, (uint64_t)(uintptr_t)s, (uint64_t)flags | ((uint64_t)(uint32_t)prio << 32));
    pthread_mutex_unlock(&g_obj_mu);
}

void xpur_hook_cuStreamCreate(unsigned xo, CUstream *s, unsigned int flags) { (void)xo; stream_put(*s, flags, 0); }
void xpur_hook_cuStreamCreateWithPriority(unsigned xo, CUstream *s, unsigned int flags, int prio)
{
    (void)xo;
    /* clamp as the driver does, within [greatest, least] */
    const struct xpur_device *d = xpur_device();
    if (prio < d->prio_greatest)
        prio = d->prio_greatest;
    if (prio > d->prio_least)
        prio = d->prio_least;
    stream_put(*s, flags, prio);
}
void xpur_hook_cuStreamDestroy_v2(unsigned xo, CUstream s)
{
    (void)xo;
    pthread_mutex_lock(&g_obj_mu);
    xpur_hmap_del(&g_streams, (uint64_t)(uintptr_t)s, NULL);
    pthread_mutex_unlock(&g_obj_mu);
}

static CUresult stream_props(CUstream s, unsigned *flags, int *prio)
{
    CUresult rc = xpur_ready();
    uint64_t id, v = 0;
    if (rc || (rc = xpur_handle_in(XPUR_H_STREAM, (uint64_t)(uintptr_t)s, &id)))
        return rc;
    if (xpur_h_is_special(id)) {
        if (flags)
            *flags = 0;
        if (prio)
            *prio = 0;
        return CUDA_SUCCESS;
    }
    pthread_mutex_lock(&g_obj_mu);
    int found = xpur_hmap_get(&g_streams, id, &v) == 0;
    pthread_mutex_unlock(&g_obj_mu);
    if (!found)
        return CUDA_ERROR_INVALID_HANDLE;
    if (flags)
        *flags = (unsigned)(v & 0xffffffffu);
    if (prio)
        *prio = (int)(int32_t)(v >> 32);
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuStreamGetPriority(CUstream s, int *prio)
{
    return prio ? stream_props(s, NULL, prio) : CUDA_ERROR_INVALID_VALUE;
}
CUresult xpur_l_cuStreamGetFlags(CUstream s, unsigned int *flags)
{
    return flags ? stream_props(s, flags, NULL) : CUDA_ERROR_INVALID_VALUE;
}
CUresult xpur_l_cuStreamGetCtx(CUstream s, CUcontext *pctx)
{
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = stream_props(s, NULL, NULL);
    if (rc)
        return rc;
    if (!xpur_ctx_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    *pctx = (CUcontext)(uintptr_t)xpur_ctx_current(); /* one context in practice: the primary one */
    return CUDA_SUCCESS;
}
CUresult xpur_l_cuStreamGetDevice(CUstream s, CUdevice *d)
{
    if (!d)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = stream_props(s, NULL, NULL);
    if (!rc)
        *d = 0;
    return rc;
}

CUresult xpur_l_cuModuleGetLoadingMode(CUmoduleLoadingMode *mode)
{
    if (!mode)
        return CUDA_ERROR_INVALID_VALUE;
    *mode = CU_MODULE_EAGER_LOADING; /* the server's driver decides; images are sent whole */
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ functions and kernels */

void xpur_func_put(uint64_t id, struct xpur_func_info *info)
{
    pthread_mutex_lock(&g_obj_mu);
    uint64_t old = 0;
    if (xpur_hmap_get(&g_funcs, id, &old) == 0) { /* the server de-duplicates: same id, same function */
        struct xpur_func_info *o = (struct xpur_func_info *)(uintptr_t)old;
        free(info->off);
        free(info);
        (void)o;
    } else if (xpur_hmap_put(&g_funcs, id, (uint64_t)(uintptr_t)info)) {
        free(info->off);
        free(info);
    }
    pthread_mutex_unlock(&g_obj_mu);
}

const struct xpur_func_info *xpur_func_get(uint64_t id)
{
    uint64_t v = 0;
    pthread_mutex_lock(&g_obj_mu);
    int found = xpur_hmap_get(&g_funcs, id, &v) == 0;
    pthread_mutex_unlock(&g_obj_mu);
    return found ? (const struct xpur_func_info *)(uintptr_t)v : NULL;
}

static CUresult func_name(uint64_t value, unsigned kind, const char **name)
{
    uint64_t id;
    CUresult rc = xpur_ready();
    if (rc || (rc = xpur_handle_in(kind, value, &id)))
        return rc;
    if (!name)
        return CUDA_ERROR_INVALID_VALUE;
    const struct xpur_func_info *f = xpur_func_get(id);
    if (!f)
        return CUDA_ERROR_INVALID_HANDLE;
    *name = f->name;
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuFuncGetName(const char **name, CUfunction f) { return func_name((uint64_t)(uintptr_t)f, XPUR_H_FUNC, name); }
CUresult xpur_l_cuKernelGetName(const char **name, CUkernel k) { return func_name((uint64_t)(uintptr_t)k, XPUR_H_KERNEL, name); }

static CUresult param_info(uint64_t value, unsigned kind, size_t i, size_t *off, size_t *size)
{
    uint64_t id;
    CUresult rc = xpur_ready();
    if (rc || (rc = xpur_handle_in(kind, value, &id)))
        return rc;
    const struct xpur_func_info *f = xpur_func_get(id);
    if (!f)
        return CUDA_ERROR_INVALID_HANDLE;
    if (f->n == XPUR_PARAMS_UNKNOWN)
        return CUDA_ERROR_NOT_SUPPORTED;
    if (i >= f->n)
        return CUDA_ERROR_INVALID_VALUE;
    if (off)
        *off = f->off[i];
    if (size)
        *size = f->size[i];
    return CUDA_SUCCESS;
}

CUresult xpur_l_cuFuncGetParamInfo(CUfunction f, size_t i, size_t *off, size_t *size)
{
    return param_info((uint64_t)(uintptr_t)f, XPUR_H_FUNC, i, off, size);
}
CUresult xpur_l_cuKernelGetParamInfo(CUkernel k, size_t i, size_t *off, size_t *size)
{
    return param_info((uint64_t)(uintptr_t)k, XPUR_H_KERNEL, i, off, size);
}
