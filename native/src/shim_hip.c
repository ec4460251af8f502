/*
 * xpushim AMD HIP backend (libamdhip64.so, loaded at run time).
 *
 * No ROCm headers are used: prototypes are declared by us from the public HIP reference
 * [amd-todo: verify on a ROCm host]. Stream-ordered allocations are charged per request
 * here (charged at hipMallocAsync, released at hipFreeAsync). hipGetProcAddress answers
 * are substituted like cuGetProcAddress. Devices are matched by ordinal (hipGetDevice).
 */
#define _GNU_SOURCE
#include "shim_core.h"

#include <dlfcn.h>
#include <pthread.h>
#include <string.h>

typedef int hipError_t;
typedef void *hipStream_t;
typedef void *hipEvent_t;
typedef void *hipFunction_t;
typedef void *hipGraphExec_t;
typedef struct { uint32_t x, y, z; } dim3;
#define hipSuccess 0
#define hipErrorOutOfMemory 2
#define hipErrorNotReady 600
#define hipErrorNotSupported 801

XPU_EXPORT hipError_t hipMalloc(void **p, size_t size);
XPU_EXPORT hipError_t hipExtMallocWithFlags(void **p, size_t size, unsigned int flags);
XPU_EXPORT hipError_t hipMallocManaged(void **p, size_t size, unsigned int flags);
XPU_EXPORT hipError_t hipMallocAsync(void **p, size_t size, hipStream_t s);
XPU_EXPORT hipError_t hipFree(void *p);
XPU_EXPORT hipError_t hipFreeAsync(void *p, hipStream_t s);
XPU_EXPORT hipError_t hipMemGetInfo(size_t *free_b, size_t *total_b);
XPU_EXPORT hipError_t hipDeviceTotalMem(size_t *bytes, int dev);
XPU_EXPORT hipError_t hipLaunchKernel(const void *fn, dim3 grid, dim3 block, void **args, size_t shm, hipStream_t s);
XPU_EXPORT hipError_t hipModuleLaunchKernel(hipFunction_t f, unsigned int gx, unsigned int gy, unsigned int gz,
                                            unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm,
                                            hipStream_t s, void **params, void **extra);
XPU_EXPORT hipError_t hipGraphLaunch(hipGraphExec_t e, hipStream_t s);
XPU_EXPORT hipError_t hipGetProcAddress(const char *symbol, void **pfn, int hipVersion, uint64_t flags,
                                        int *status);
hipError_t hipGetDevice(int *dev);
hipError_t hipEventCreate(hipEvent_t *ev);
hipError_t hipEventRecord(hipEvent_t ev, hipStream_t s);
hipError_t hipEventQuery(hipEvent_t ev);
hipError_t hipEventSynchronize(hipEvent_t ev);
hipError_t hipEventElapsedTime(float *ms, hipEvent_t a, hipEvent_t b);

#define HIP_HOOKED(X) X(hipMalloc) X(hipExtMallocWithFlags) X(hipMallocManaged) X(hipMallocAsync) X(hipFree) \
    X(hipFreeAsync) X(hipMemGetInfo) X(hipDeviceTotalMem) X(hipLaunchKernel) X(hipModuleLaunchKernel)          \
    X(hipGraphLaunch) X(hipGetProcAddress)
#define HIP_INTERNAL(X) X(hipGetDevice) X(hipEventCreate) X(hipEventRecord) X(hipEventQuery) \
    X(hipEventSynchronize) X(hipEventElapsedTime)

#define DECL(n) static void *R_##n;
HIP_HOOKED(DECL)
HIP_INTERNAL(DECL)

static void *g_hip;
static pthread_once_t g_hip_once = PTHREAD_ONCE_INIT;
static void hip_init(void)
{
    static const char *const names[] = {"libamdhip64.so", "libamdhip64.so.7", "libamdhip64.so.6"};
    for (size_t i = 0; i < 3 && !g_hip; i++)
        g_hip = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
#define RES(n)                                                                                     \
    if (!__atomic_load_n(&R_##n, __ATOMIC_ACQUIRE) && g_hip)                                              \
        __atomic_store_n(&R_##n, xpu_real_dlsym(g_hip, #n), __ATOMIC_RELEASE);
    HIP_HOOKED(RES)
    HIP_INTERNAL(RES)
}
static inline void *hreal(void **slot)
{
    void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (!p) {
        pthread_once(&g_hip_once, hip_init);
        p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    }
    return p;
}
#define HREAL(n) ((__typeof__(&n))hreal(&R_##n))

static int hip_dev(void)
{
    struct xpu_core *c = xpu_core();
    if (c->status != XPU_REGION_OK)
        return c->status == XPU_REGION_BROKEN && !c->fail_open_on_broken ? -2 : -1;
    if (c->region->cfg->hdr.ndevices == 1)
        return 0;
    int dev = 0;
    __typeof__(&hipGetDevice) f = HREAL(hipGetDevice);
    if (!f || f(&dev) != hipSuccess)
        return -1;
    return xpu_dev_index_by_ordinal(dev);
}

static int pre(size_t size, int *d)
{
    *d = hip_dev();
    if (*d == -2)
        return -1;
    if (*d >= 0 && xpu_mem_reserve(g_xpu.region, (unsigned)*d, size) != 0)
        return -1;
    return 0;
}
static void post(hipError_t rc, int d, void *p, size_t size)
{
    if (d < 0)
        return;
    if (rc != hipSuccess)
        xpu_mem_release(g_xpu.region, (unsigned)d, size);
    else
        xpu_track_put(XPU_K_HIP, (uint64_t)(uintptr_t)p, size, d);
}
static void unaccount(void *p)
{
    uint64_t b;
    int d;
    if (p && xpu_track_take(XPU_K_HIP, (uint64_t)(uintptr_t)p, &b, &d) && d >= 0)
        xpu_mem_release(g_xpu.region, (unsigned)d, b);
}

XPU_EXPORT hipError_t hipMalloc(void **p, size_t size)
{
    __typeof__(&hipMalloc) f = HREAL(hipMalloc);
    int d;
    if (!f)
        return hipErrorNotSupported;
    if (pre(size, &d) != 0)
        return hipErrorOutOfMemory;
    hipError_t rc = f(p, size);
    post(rc, d, rc == hipSuccess ? *p : NULL, size);
    return rc;
}
XPU_EXPORT hipError_t hipExtMallocWithFlags(void **p, size_t size, unsigned int flags)
{
    __typeof__(&hipExtMallocWithFlags) f = HREAL(hipExtMallocWithFlags);
    int d;
    if (!f)
        return hipErrorNotSupported;
    if (pre(size, &d) != 0)
        return hipErrorOutOfMemory;
    hipError_t rc = f(p, size, flags);
    post(rc, d, rc == hipSuccess ? *p : NULL, size);
    return rc;
}
XPU_EXPORT hipError_t hipMallocManaged(void **p, size_t size, unsigned int flags)
{
    __typeof__(&hipMallocManaged) f = HREAL(hipMallocManaged);
    int d;
    if (!f)
        return hipErrorNotSupported;
    if (pre(size, &d) != 0)
        return hipErrorOutOfMemory;
    hipError_t rc = f(p, size, flags);
    post(rc, d, rc == hipSuccess ? *p : NULL, size);
    return rc;
}
XPU_EXPORT hipError_t hipMallocAsync(void **p, size_t size, hipStream_t s)
{
    __typeof__(&hipMallocAsync) f = HREAL(hipMallocAsync);
    int d;
    if (!f)
        return hipErrorNotSupported;
    if (pre(size, &d) != 0)
        return hipErrorOutOfMemory;
    hipError_t rc = f(p, size, s);
    post(rc, d, rc == hipSuccess ? *p : NULL, size);
    return rc;
}
XPU_EXPORT hipError_t hipFree(void *p)
{
    __typeof__(&hipFree) f = HREAL(hipFree);
    if (!f)
        return hipErrorNotSupported;
    hipError_t rc = f(p);
    if (rc == hipSuccess)
        unaccount(p);
    return rc;
}
XPU_EXPORT hipError_t hipFreeAsync(void *p, hipStream_t s)
{
    __typeof__(&hipFreeAsync) f = HREAL(hipFreeAsync);
    if (!f)
        return hipErrorNotSupported;
    hipError_t rc = f(p, s);
    if (rc == hipSuccess)
        unaccount(p);
    return rc;
}
XPU_EXPORT hipError_t hipMemGetInfo(size_t *free_b, size_t *total_b)
{
    __typeof__(&hipMemGetInfo) f = HREAL(hipMemGetInfo);
    if (!f)
        return hipErrorNotSupported;
    hipError_t rc = f(free_b, total_b);
    int d = hip_dev();
    if (rc != hipSuccess || d < 0 || !free_b || !total_b)
        return rc;
    struct xpu_dev_cfg cfg;
    xpu_region_read_cfg(g_xpu.region, (unsigned)d, &cfg);
    if (!cfg.mem_limit)
        return rc;
    uint64_t total = cfg.mem_limit < *total_b ? cfg.mem_limit : *total_b;
    uint64_t used = atomic_load(&g_xpu.region->use->dev[d].mem_used);
    uint64_t fr = used < total ? total - used : 0;
    *total_b = (size_t)total;
    *free_b = (size_t)(fr < *free_b ? fr : *free_b);
    return rc;
}
XPU_EXPORT hipError_t hipDeviceTotalMem(size_t *bytes, int dev)
{
    __typeof__(&hipDeviceTotalMem) f = HREAL(hipDeviceTotalMem);
    if (!f)
        return hipErrorNotSupported;
    hipError_t rc = f(bytes, dev);
    struct xpu_core *c = xpu_core();
    int d = c->status == XPU_REGION_OK ? (c->region->cfg->hdr.ndevices == 1 ? 0 : xpu_dev_index_by_ordinal(dev)) : -1;
    if (rc == hipSuccess && d >= 0 && bytes) {
        struct xpu_dev_cfg cfg;
        xpu_region_read_cfg(c->region, (unsigned)d, &cfg);
        if (cfg.mem_limit && cfg.mem_limit < *bytes)
            *bytes = (size_t)cfg.mem_limit;
    }
    return rc;
}

static int h_create(void **ev)
{
    __typeof__(&hipEventCreate) f = HREAL(hipEventCreate);
    return f && f(ev) == hipSuccess ? 0 : -1;
}
static int h_record(void *ev, void *s)
{
    __typeof__(&hipEventRecord) f = HREAL(hipEventRecord);
    return f && f(ev, s) == hipSuccess ? 0 : -1;
}
static int h_query(void *ev)
{
    __typeof__(&hipEventQuery) f = HREAL(hipEventQuery);
    if (!f)
        return -1;
    hipError_t rc = f(ev);
    return rc == hipSuccess ? 0 : rc == hipErrorNotReady ? 1 : -1;
}
static int h_sync(void *ev)
{
    __typeof__(&hipEventSynchronize) f = HREAL(hipEventSynchronize);
    return f && f(ev) == hipSuccess ? 0 : -1;
}
static int h_elapsed(void *a, void *b, int64_t *ns)
{
    float ms = 0;
    __typeof__(&hipEventElapsedTime) f = HREAL(hipEventElapsedTime);
    if (!f || f(&ms, a, b) != hipSuccess)
        return -1;
    *ns = (int64_t)((double)ms * 1e6);
    return 0;
}
static const struct xpu_meter_ops HIP_OPS = {h_create, h_record, h_query, h_sync, h_elapsed, NULL, NULL, 0};

static _Thread_local uint64_t t_now; /* launch time handed from hpre to hpost */
static inline int hpre(hipStream_t s)
{
    int d = hip_dev();
    return d >= 0 && xpu_limit_before((unsigned)d, s, &HIP_OPS, &t_now) ? d : -1;
}
static inline void hpost(int d, hipStream_t s, hipError_t rc, int force)
{
    if (d >= 0)
        xpu_limit_after((unsigned)d, s, &HIP_OPS, rc == hipSuccess, force, t_now);
}

XPU_EXPORT hipError_t hipLaunchKernel(const void *fn, dim3 grid, dim3 block, void **args, size_t shm, hipStream_t s)
{
    __typeof__(&hipLaunchKernel) f = HREAL(hipLaunchKernel);
    if (!f)
        return hipErrorNotSupported;
    int d = hpre(s);
    hipError_t rc = f(fn, grid, block, args, shm, s);
    hpost(d, s, rc, 0);
    return rc;
}
XPU_EXPORT hipError_t hipModuleLaunchKernel(hipFunction_t fn, unsigned int gx, unsigned int gy, unsigned int gz,
                                            unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm,
                                            hipStream_t s, void **params, void **extra)
{
    __typeof__(&hipModuleLaunchKernel) f = HREAL(hipModuleLaunchKernel);
    if (!f)
        return hipErrorNotSupported;
    int d = hpre(s);
    hipError_t rc = f(fn, gx, gy, gz, bx, by, bz, shm, s, params, extra);
    hpost(d, s, rc, 0);
    return rc;
}
XPU_EXPORT hipError_t hipGraphLaunch(hipGraphExec_t e, hipStream_t s)
{
    __typeof__(&hipGraphLaunch) f = HREAL(hipGraphLaunch);
    if (!f)
        return hipErrorNotSupported;
    int d = hpre(s);
    hipError_t rc = f(e, s);
    hpost(d, s, rc, 1);
    return rc;
}

XPU_EXPORT hipError_t hipGetProcAddress(const char *symbol, void **pfn, int hipVersion, uint64_t flags,
                                        int *status)
{
    __typeof__(&hipGetProcAddress) f = HREAL(hipGetProcAddress);
    if (!f)
        return hipErrorNotSupported;
    hipError_t rc = f(symbol, pfn, hipVersion, flags, status);
    pthread_once(&g_hip_once, hip_init); /* complete table even if dlsym pre-filled a slot */
    if (rc == hipSuccess && pfn && *pfn)
        for (size_t i = 0; i < xpu_hip_nhooks; i++)
            if (__atomic_load_n(xpu_hip_hooks[i].real, __ATOMIC_ACQUIRE) == *pfn) {
                *pfn = xpu_hip_hooks[i].wrapper;
                break;
            }
    return rc;
}

const struct xpu_hook xpu_hip_hooks[] = {
#define HHOOK(n) {#n, (void *)n, &R_##n},
    HIP_HOOKED(HHOOK)
};
const size_t xpu_hip_nhooks = sizeof xpu_hip_hooks / sizeof xpu_hip_hooks[0];
