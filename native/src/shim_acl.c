/*
 * xpushim Ascend backend (ACL runtime layer, libascendcl.so, loaded at run time).
 *
 * No CANN headers are available: the prototypes below are declared by us from the public
 * ACL reference and must be re-checked against each supported CANN release on an NPU
 * host [npu-todo]. Devices are matched by ordinal (aclrtGetDevice); region device uuids
 * are not used for Ascend yet.
 * Same quota (reserve-then-allocate on the container region) and the same limiter
 * (events around batches of launches) as the CUDA backend.
 */
#define _GNU_SOURCE
#include "shim_core.h"

#include <dlfcn.h>
#include <pthread.h>

typedef int aclError;
typedef void *aclrtStream;
typedef void *aclrtEvent;
typedef void *aclrtFuncHandle;
typedef int aclrtMemMallocPolicy;
typedef int aclrtMemAttr;
typedef int aclrtEventRecordedStatus;
#define ACL_SUCCESS 0
#define ACL_ERROR_RT_MEMORY_ALLOCATION 207001
#define ACL_ERROR_FEATURE_UNSUPPORTED 200006
#define ACL_EVENT_RECORDED_STATUS_COMPLETE 1

XPU_EXPORT aclError aclrtMalloc(void **p, size_t size, aclrtMemMallocPolicy policy);
XPU_EXPORT aclError aclrtMallocCached(void **p, size_t size, aclrtMemMallocPolicy policy);
XPU_EXPORT aclError aclrtMallocAlign32(void **p, size_t size, aclrtMemMallocPolicy policy);
XPU_EXPORT aclError aclrtFree(void *p);
XPU_EXPORT aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_b, size_t *total_b);
XPU_EXPORT aclError aclrtLaunchKernel(aclrtFuncHandle fn, uint32_t blockDim, const void *args, size_t argsSize,
                                      aclrtStream stream);
aclError aclrtGetDevice(int32_t *dev);
aclError aclrtCreateEvent(aclrtEvent *ev);
aclError aclrtRecordEvent(aclrtEvent ev, aclrtStream s);
aclError aclrtQueryEventStatus(aclrtEvent ev, aclrtEventRecordedStatus *st);
aclError aclrtSynchronizeEvent(aclrtEvent ev);
aclError aclrtEventElapsedTime(float *ms, aclrtEvent start, aclrtEvent end);

#define ACL_HOOKED(X) X(aclrtMalloc) X(aclrtMallocCached) X(aclrtMallocAlign32) X(aclrtFree) \
    X(aclrtGetMemInfo) X(aclrtLaunchKernel)
#define ACL_INTERNAL(X) X(aclrtGetDevice) X(aclrtCreateEvent) X(aclrtRecordEvent) X(aclrtQueryEventStatus) \
    X(aclrtSynchronizeEvent) X(aclrtEventElapsedTime)

#define DECL(n) static void *R_##n;
ACL_HOOKED(DECL)
ACL_INTERNAL(DECL)

static void *g_acl;
static pthread_once_t g_acl_once = PTHREAD_ONCE_INIT;
static void acl_init(void)
{
    g_acl = dlopen("libascendcl.so", RTLD_NOW | RTLD_LOCAL);
#define RES(n)                                                                                     \
    if (!__atomic_load_n(&R_##n, __ATOMIC_ACQUIRE) && g_acl)                                              \
        __atomic_store_n(&R_##n, xpu_real_dlsym(g_acl, #n), __ATOMIC_RELEASE);
    ACL_HOOKED(RES)
    ACL_INTERNAL(RES)
}
static inline void *areal(void **slot)
{
    void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (!p) {
        pthread_once(&g_acl_once, acl_init);
        p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    }
    return p;
}
#define AREAL(n) ((__typeof__(&n))areal(&R_##n))

static int acl_dev(void)
{
    struct xpu_core *c = xpu_core();
    if (c->status != XPU_REGION_OK)
        return c->status == XPU_REGION_BROKEN && !c->fail_open_on_broken ? -2 : -1;
    if (c->region->cfg->hdr.ndevices == 1)
        return 0;
    int32_t dev = 0;
    __typeof__(&aclrtGetDevice) f = AREAL(aclrtGetDevice);
    if (!f || f(&dev) != ACL_SUCCESS)
        return -1;
    return xpu_dev_index_by_ordinal(dev);
}

static aclError acl_alloc(aclError (*f)(void **, size_t, aclrtMemMallocPolicy), void **p, size_t size,
                          aclrtMemMallocPolicy pol)
{
    if (!f)
        return ACL_ERROR_FEATURE_UNSUPPORTED;
    int d = acl_dev();
    if (d == -2)
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    if (d >= 0 && xpu_mem_reserve(g_xpu.region, (unsigned)d, size) != 0)
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    aclError rc = f(p, size, pol);
    if (d >= 0) {
        if (rc != ACL_SUCCESS)
            xpu_mem_release(g_xpu.region, (unsigned)d, size);
        else
            xpu_track_put(XPU_K_ACL, (uint64_t)(uintptr_t)*p, size, d);
    }
    return rc;
}

XPU_EXPORT aclError aclrtMalloc(void **p, size_t size, aclrtMemMallocPolicy policy)
{
    return acl_alloc(AREAL(aclrtMalloc), p, size, policy);
}
XPU_EXPORT aclError aclrtMallocCached(void **p, size_t size, aclrtMemMallocPolicy policy)
{
    return acl_alloc(AREAL(aclrtMallocCached), p, size, policy);
}
XPU_EXPORT aclError aclrtMallocAlign32(void **p, size_t size, aclrtMemMallocPolicy policy)
{
    return acl_alloc(AREAL(aclrtMallocAlign32), p, size, policy);
}

XPU_EXPORT aclError aclrtFree(void *p)
{
    __typeof__(&aclrtFree) f = AREAL(aclrtFree);
    if (!f)
        return ACL_ERROR_FEATURE_UNSUPPORTED;
    aclError rc = f(p);
    uint64_t b;
    int d;
    if (rc == ACL_SUCCESS && xpu_track_take(XPU_K_ACL, (uint64_t)(uintptr_t)p, &b, &d) && d >= 0)
        xpu_mem_release(g_xpu.region, (unsigned)d, b);
    return rc;
}

XPU_EXPORT aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_b, size_t *total_b)
{
    __typeof__(&aclrtGetMemInfo) f = AREAL(aclrtGetMemInfo);
    if (!f)
        return ACL_ERROR_FEATURE_UNSUPPORTED;
    aclError rc = f(attr, free_b, total_b);
    int d = acl_dev();
    if (rc != ACL_SUCCESS || d < 0 || !free_b || !total_b)
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

static int a_create(void **ev)
{
    __typeof__(&aclrtCreateEvent) f = AREAL(aclrtCreateEvent);
    return f && f(ev) == ACL_SUCCESS ? 0 : -1;
}
static int a_record(void *ev, void *s)
{
    __typeof__(&aclrtRecordEvent) f = AREAL(aclrtRecordEvent);
    return f && f(ev, s) == ACL_SUCCESS ? 0 : -1;
}
static int a_query(void *ev)
{
    __typeof__(&aclrtQueryEventStatus) f = AREAL(aclrtQueryEventStatus);
    aclrtEventRecordedStatus st = 0;
    if (!f || f(ev, &st) != ACL_SUCCESS)
        return -1;
    return st == ACL_EVENT_RECORDED_STATUS_COMPLETE ? 0 : 1;
}
static int a_sync(void *ev)
{
    __typeof__(&aclrtSynchronizeEvent) f = AREAL(aclrtSynchronizeEvent);
    return f && f(ev) == ACL_SUCCESS ? 0 : -1;
}
static int a_elapsed(void *a, void *b, int64_t *ns)
{
    float ms = 0;
    __typeof__(&aclrtEventElapsedTime) f = AREAL(aclrtEventElapsedTime);
    if (!f || f(&ms, a, b) != ACL_SUCCESS)
        return -1;
    *ns = (int64_t)((double)ms * 1e6);
    return 0;
}
static const struct xpu_meter_ops ACL_OPS = {a_create, a_record, a_query, a_sync, a_elapsed, NULL, NULL, 0};

XPU_EXPORT aclError aclrtLaunchKernel(aclrtFuncHandle fn, uint32_t blockDim, const void *args, size_t argsSize,
                                      aclrtStream stream)
{
    __typeof__(&aclrtLaunchKernel) f = AREAL(aclrtLaunchKernel);
    if (!f)
        return ACL_ERROR_FEATURE_UNSUPPORTED;
    int d = acl_dev();
    uint64_t now = 0;
    int lim = d >= 0 && xpu_limit_before((unsigned)d, stream, &ACL_OPS, &now);
    aclError rc = f(fn, blockDim, args, argsSize, stream);
    if (lim)
        xpu_limit_after((unsigned)d, stream, &ACL_OPS, rc == ACL_SUCCESS, 0, now);
    return rc;
}

const struct xpu_hook xpu_acl_hooks[] = {
#define AHOOK(n) {#n, (void *)n, &R_##n},
    ACL_HOOKED(AHOOK)
};
const size_t xpu_acl_nhooks = sizeof xpu_acl_hooks / sizeof xpu_acl_hooks[0];
