/*
 * libnvidia-ml.so.1 for a pod whose vXPU is remote: the NVML queries applications and tools make
 * (device count, name, UUID, PCI location, memory, compute capability, driver versions), answered
 * from the remote session through this directory's libcuda.so.1. Memory is the slice: total is the
 * quota libxpushim reports on the server, used/free come from a cuMemGetInfo round trip. Anything
 * about the physical card (utilisation, clocks, other tenants' processes) is NVML_ERROR_NOT_SUPPORTED
 * or empty: a remote tenant sees its slice, never its neighbours.
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cuda.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};
typedef struct nvmlDevice_st *nvmlDevice_t;
struct nvmlDevice_st {
    int index;
};
typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

static struct nvmlDevice_st g_device = {0};
static int g_init;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static CUcontext g_ctx;

static nvmlReturn_t from_cuda(CUresult r)
{
    switch (r) {
    case CUDA_SUCCESS: return NVML_SUCCESS;
    case CUDA_ERROR_NOT_INITIALIZED: return NVML_ERROR_UNINITIALIZED;
    case CUDA_ERROR_INVALID_VALUE: return NVML_ERROR_INVALID_ARGUMENT;
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_NOT_PERMITTED: return NVML_ERROR_DRIVER_NOT_LOADED;
    case CUDA_ERROR_DEVICE_UNAVAILABLE: return NVML_ERROR_GPU_IS_LOST;
    default: return NVML_ERROR_UNKNOWN;
    }
}

#define READY()                                                                                    \
    do {                                                                                           \
        if (!g_init)                                                                               \
            return NVML_ERROR_UNINITIALIZED;                                                       \
    } while (0)
#define DEVICE(d)                                                                                  \
    do {                                                                                           \
        READY();                                                                                   \
        if ((d) != &g_device)                                                                      \
            return NVML_ERROR_INVALID_ARGUMENT;                                                    \
    } while (0)

EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    CUresult r = cuInit(0); /* connects (once) to the session's daemon */
    if (r != CUDA_SUCCESS)
        return from_cuda(r);
    pthread_mutex_lock(&g_mu);
    g_init++;
    pthread_mutex_unlock(&g_mu);
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }
EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    return nvmlInit_v2();
}

EXPORT nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&g_mu);
    int was = g_init;
    if (g_init)
        g_init--;
    pthread_mutex_unlock(&g_mu);
    return was ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t r)
{
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded (no remote vXPU session)";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost (the remote session ended)";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *s, unsigned int n)
{
    READY();
    int v = 0;
    cuDriverGetVersion(&v);
    if (!s || (unsigned)snprintf(s, n, "remote-cuda-%d.%d", v / 1000, v % 1000 / 10) >= n)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *s, unsigned int n)
{
    if (!s || (unsigned)snprintf(s, n, "12.remote") >= n)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v)
{
    READY();
    return v ? from_cuda(cuDriverGetVersion(v)) : NVML_ERROR_INVALID_ARGUMENT;
}
EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) { return nvmlSystemGetCudaDriverVersion_v2(v); }

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n)
{
    READY();
    if (!n)
        return NVML_ERROR_INVALID_ARGUMENT;
    *n = 1; /* a session is one slice of one card */
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { return nvmlDeviceGetCount_v2(n); }

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d)
{
    READY();
    if (!d || i != 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    *d = &g_device;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *d) { return nvmlDeviceGetHandleByIndex_v2(i, d); }

static void uuid_text(char *out, size_t n)
{
    CUuuid u;
    memset(&u, 0, sizeof u);
    cuDeviceGetUuid(&u, 0);
    const unsigned char *b = (const unsigned char *)u.bytes;
    snprintf(out, n, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
             b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *d)
{
    READY();
    char mine[96];
    uuid_text(mine, sizeof mine);
    if (!uuid || !d)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strcasecmp(uuid, mine) != 0)
        return NVML_ERROR_NOT_FOUND;
    *d = &g_device;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *i)
{
    DEVICE(d);
    if (!i)
        return NVML_ERROR_INVALID_ARGUMENT;
    *i = 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *s, unsigned int n)
{
    DEVICE(d);
    if (!s || !n)
        return NVML_ERROR_INVALID_ARGUMENT;
    return from_cuda(cuDeviceGetName(s, (int)n, 0));
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *s, unsigned int n)
{
    DEVICE(d);
    char u[96];
    uuid_text(u, sizeof u);
    if (!s || strlen(u) >= n)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(s, u);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor)
{
    DEVICE(d);
    if (!major || !minor)
        return NVML_ERROR_INVALID_ARGUMENT;
    return from_cuda(cuDeviceComputeCapability(major, minor, 0));
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *p)
{
    DEVICE(d);
    if (!p)
        return NVML_ERROR_INVALID_ARGUMENT;
    memset(p, 0, sizeof *p);
    CUresult r = cuDeviceGetPCIBusId(p->busId, sizeof p->busId, 0);
    snprintf(p->busIdLegacy, sizeof p->busIdLegacy, "%.15s", p->busId);
    return from_cuda(r);
}
EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t d, nvmlPciInfo_t *p) { return nvmlDeviceGetPciInfo_v3(d, p); }
EXPORT nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t d, nvmlPciInfo_t *p) { return nvmlDeviceGetPciInfo_v3(d, p); }

/* the slice's memory, measured on the server (one round trip) */
static nvmlReturn_t slice_memory(unsigned long long *total, unsigned long long *free_b)
{
    pthread_mutex_lock(&g_mu);
    CUresult r = g_ctx ? CUDA_SUCCESS : cuDevicePrimaryCtxRetain(&g_ctx, 0);
    pthread_mutex_unlock(&g_mu);
    if (r == CUDA_SUCCESS)
        r = cuCtxPushCurrent(g_ctx);
    if (r != CUDA_SUCCESS)
        return from_cuda(r);
    size_t f = 0, t = 0;
    r = cuMemGetInfo(&f, &t);
    CUcontext popped;
    cuCtxPopCurrent(&popped);
    *total = t;
    *free_b = f;
    return from_cuda(r);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m)
{
    DEVICE(d);
    if (!m)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long t = 0, f = 0;
    nvmlReturn_t r = slice_memory(&t, &f);
    m->total = t;
    m->free = f;
    m->used = t - f;
    return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m)
{
    DEVICE(d);
    if (!m)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long t = 0, f = 0;
    nvmlReturn_t r = slice_memory(&t, &f);
    m->total = t;
    m->reserved = 0;
    m->free = f;
    m->used = t - f;
    return r;
}

/* other tenants' processes are not the remote tenant's business: an empty list */
static nvmlReturn_t no_processes(nvmlDevice_t d, unsigned int *count)
{
    DEVICE(d);
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = 0;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, void *infos)
{
    (void)infos;
    return no_processes(d, c);
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, void *infos)
{
    (void)infos;
    return no_processes(d, c);
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *c, void *infos)
{
    (void)infos;
    return no_processes(d, c);
}
EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, void *u)
{
    (void)u;
    DEVICE(d);
    return NVML_ERROR_NOT_SUPPORTED;
}
