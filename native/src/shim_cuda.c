/*
 * xpushim CUDA driver API backend.
 *
 * Every hooked entry point exists under its exact exported driver name (so LD_PRELOAD
 * symbol interposition works), is returned by our dlsym() for lookups of that name, and
 * is substituted into cuGetProcAddress(_v2) answers: we forward the caller's exact
 * (symbol, cudaVersion, flags, status) to the real resolver and swap the returned
 * pointer when it equals the real address of one of the hooked exports. The driver keeps
 * choosing versions and per-thread-stream (_ptsz/_ptds) variants; we never run a ladder.
 */
#define _GNU_SOURCE
#include "shim_core.h"

/* deprecated entry points (cuLaunch, cuLaunchGrid, multi-device) are hooked on purpose */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#undef cuGetProcAddress /* cuda.h maps it to _v2; we export both ABIs */
#undef cuStreamBeginCapture /* cuda.h maps it to _v2; the 1-argument export exists too */
#undef cuGraphInstantiate   /* cuda.h maps it to ...WithFlags; the legacy export exists too */

#define DEV_PASS (-1)
#define DEV_BROKEN (-2)

/* prototypes for exports cuda.h does not declare in this configuration */
CUresult CUDAAPI cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);
CUresult CUDAAPI cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                     unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm,
                                     CUstream s, void **params, void **extra);
CUresult CUDAAPI cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params, void **extra);
CUresult CUDAAPI cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                                unsigned int bx, unsigned int by, unsigned int bz,
                                                unsigned int shm, CUstream s, void **params);
CUresult CUDAAPI cuGraphLaunch_ptsz(CUgraphExec exec, CUstream s);
CUresult CUDAAPI cuGraphUpload_ptsz(CUgraphExec exec, CUstream s);
CUresult CUDAAPI cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream s);
CUresult CUDAAPI cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream s);
CUresult CUDAAPI cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream s);
CUresult CUDAAPI cuGraphInstantiateWithParams_ptsz(CUgraphExec *e, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p);
CUresult CUDAAPI cuGraphInstantiate_v2(CUgraphExec *e, CUgraph g, CUgraphNode *err, char *log, size_t n);
CUresult CUDAAPI cuEventRecord_ptsz(CUevent ev, CUstream s);
CUresult CUDAAPI cuStreamSynchronize_ptsz(CUstream s);
CUresult CUDAAPI cuStreamBeginCapture(CUstream s);
CUresult CUDAAPI cuGraphInstantiate(CUgraphExec *e, CUgraph g, CUgraphNode *err, char *log, size_t n);
CUresult CUDAAPI cuCtxSynchronize_v2(CUcontext ctx); /* CUDA 13 */
CUresult CUDAAPI cuStreamBeginCapture_ptsz(CUstream s);
CUresult CUDAAPI cuStreamBeginCapture_v2_ptsz(CUstream s, CUstreamCaptureMode mode);
CUresult CUDAAPI cuStreamBeginCaptureToGraph_ptsz(CUstream s, CUgraph g, const CUgraphNode *deps,
                                                  const CUgraphEdgeData *data, size_t n, CUstreamCaptureMode mode);
CUresult CUDAAPI cuStreamEndCapture_ptsz(CUstream s, CUgraph *g);
CUresult CUDAAPI cuStreamIsCapturing_ptsz(CUstream s, CUstreamCaptureStatus *st);
CUresult CUDAAPI cuStreamGetCaptureInfo_v2_ptsz(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                                                const CUgraphNode **deps, size_t *n);

/* ------------------------------------------------------------------ real table */

#define HOOKED(X)                                                                                      \
    X(cuGetProcAddress) X(cuGetProcAddress_v2)                                                         \
    X(cuMemAlloc_v2) X(cuMemAllocPitch_v2) X(cuMemFree_v2) X(cuMemAllocManaged)                        \
    X(cuMemAllocAsync) X(cuMemAllocAsync_ptsz) X(cuMemAllocFromPoolAsync) X(cuMemAllocFromPoolAsync_ptsz) \
    X(cuMemFreeAsync) X(cuMemFreeAsync_ptsz) X(cuMemPoolCreate) X(cuMemPoolDestroy) X(cuMemPoolTrimTo)   \
    X(cuMemCreate) X(cuMemRelease)                                                                     \
    X(cuArrayCreate_v2) X(cuArray3DCreate_v2) X(cuArrayDestroy) X(cuMipmappedArrayCreate)              \
    X(cuMipmappedArrayDestroy)                                                                         \
    X(cuGraphAddMemAllocNode) X(cuGraphInstantiateWithFlags) X(cuGraphInstantiate_v2)                  \
    X(cuGraphInstantiateWithParams) X(cuGraphInstantiateWithParams_ptsz) X(cuGraphUpload)              \
    X(cuGraphUpload_ptsz) X(cuGraphExecDestroy) X(cuGraphDestroy) X(cuDeviceGraphMemTrim)              \
    X(cuMemGetInfo_v2) X(cuDeviceTotalMem_v2)                                                          \
    X(cuLaunchKernel) X(cuLaunchKernel_ptsz) X(cuLaunchKernelEx) X(cuLaunchKernelEx_ptsz)              \
    X(cuLaunchCooperativeKernel) X(cuLaunchCooperativeKernel_ptsz) X(cuLaunchCooperativeKernelMultiDevice) \
    X(cuLaunch) X(cuLaunchGrid) X(cuLaunchGridAsync) X(cuGraphLaunch) X(cuGraphLaunch_ptsz)            \
    X(cuStreamSynchronize) X(cuStreamSynchronize_ptsz) X(cuCtxSynchronize) X(cuEventSynchronize)      \
    X(cuStreamBeginCapture) X(cuStreamBeginCapture_ptsz) X(cuStreamBeginCapture_v2)                    \
    X(cuStreamBeginCapture_v2_ptsz) X(cuStreamBeginCaptureToGraph) X(cuStreamBeginCaptureToGraph_ptsz) \
    X(cuStreamEndCapture) X(cuStreamEndCapture_ptsz)                                                   \
    X(cuMemMap) X(cuMemUnmap) X(cuMemRetainAllocationHandle) X(cuGraphAddNode) X(cuGraphAddNode_v2)   \
    X(cuDevicePrimaryCtxRetain) X(cuCtxCreate_v2) X(cuCtxCreate_v3) X(cuCtxCreate_v4)                 \
    X(cuGraphInstantiate) X(cuCtxSynchronize_v2)

#define INTERNAL(X)                                                                                    \
    X(cuCtxGetDevice) X(cuDeviceGetUuid) X(cuDeviceGetMemPool) X(cuMemPoolGetAttribute)                \
    X(cuDeviceGetGraphMemAttribute) X(cuEventCreate) X(cuEventRecord) X(cuEventRecord_ptsz)            \
    X(cuEventQuery) X(cuEventElapsedTime) X(cuEventElapsedTime_v2)                                     \
    X(cuStreamIsCapturing) X(cuStreamIsCapturing_ptsz) X(cuStreamGetCaptureInfo_v2)                    \
    X(cuStreamGetCaptureInfo_v2_ptsz) X(cuThreadExchangeStreamCaptureMode)

#define DECL_REAL(n) static void *R_##n;
HOOKED(DECL_REAL)
INTERNAL(DECL_REAL)

static void *g_cuda;
static pthread_once_t g_cuda_once = PTHREAD_ONCE_INIT;
static _Atomic int g_single = -3; /* region device index when the container has exactly one device */
static _Atomic int g_ord_map[64];
static pthread_once_t g_ord_once = PTHREAD_ONCE_INIT;

static void resolve(void **slot, const char *name)
{
    if (!__atomic_load_n(slot, __ATOMIC_ACQUIRE) && g_cuda)
        __atomic_store_n(slot, xpu_real_dlsym(g_cuda, name), __ATOMIC_RELEASE);
}

static void cuda_init(void)
{
    struct xpu_core *c = xpu_core();
    g_cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!g_cuda)
        g_cuda = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL);
#define RESOLVE(n) resolve(&R_##n, #n);
    HOOKED(RESOLVE)
    INTERNAL(RESOLVE)
    if (c->status == XPU_REGION_OK && c->region->cfg->hdr.ndevices == 1)
        g_single = 0;
    else
        g_single = -4;
}

static inline void *real(void **slot)
{
    void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (XPU_UNLIKELY(!p)) {
        pthread_once(&g_cuda_once, cuda_init);
        p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    }
    return p;
}

#define REAL(n) ((__typeof__(&n))real(&R_##n))
#define CALL_REAL(n, ...)                                                                              \
    do {                                                                                               \
        __typeof__(&n) fp_ = REAL(n);                                                                  \
        if (!fp_)                                                                                      \
            return CUDA_ERROR_NOT_FOUND;                                                               \
        return fp_(__VA_ARGS__);                                                                       \
    } while (0)

static void ord_init(void)
{
    for (unsigned i = 0; i < 64; i++)
        atomic_store(&g_ord_map[i], -3);
}

/* region device index of a CUDA ordinal (UUID match, ordinal fallback), cached */
static int dev_of_ordinal(CUdevice ord)
{
    struct xpu_core *c = xpu_core();
    if (c->status != XPU_REGION_OK)
        return c->status == XPU_REGION_BROKEN && !c->fail_open_on_broken ? DEV_BROKEN : DEV_PASS;
    if (g_single >= 0)
        return g_single;
    pthread_once(&g_ord_once, ord_init);
    if (ord < 0 || ord >= 64)
        return DEV_PASS;
    int v = atomic_load_explicit(&g_ord_map[ord], memory_order_relaxed);
    if (v != -3)
        return v;
    int idx = xpu_dev_index_by_ordinal((int)ord);
    CUuuid u;
    __typeof__(&cuDeviceGetUuid) gu = REAL(cuDeviceGetUuid);
    if (idx < 0 && gu && gu(&u, ord) == CUDA_SUCCESS) {
        char s[XPU_UUID_LEN];
        const unsigned char *b = (const unsigned char *)u.bytes;
        snprintf(s, sizeof s,
                 "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                 b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
        idx = xpu_dev_index_by_uuid(s);
    }
    if (idx < 0)
        idx = DEV_PASS; /* a device the agent does not manage for this container */
    atomic_store_explicit(&g_ord_map[ord], idx, memory_order_relaxed);
    return idx;
}

static int cur_dev(void)
{
    struct xpu_core *c = xpu_core();
    if (c->status != XPU_REGION_OK)
        return c->status == XPU_REGION_BROKEN && !c->fail_open_on_broken ? DEV_BROKEN : DEV_PASS;
    if (g_single >= 0)
        return g_single;
    if (g_single == -3)
        pthread_once(&g_cuda_once, cuda_init);
    if (g_single >= 0)
        return g_single;
    CUdevice dev;
    __typeof__(&cuCtxGetDevice) f = REAL(cuCtxGetDevice);
    if (!f || f(&dev) != CUDA_SUCCESS)
        return DEV_PASS;
    return dev_of_ordinal(dev);
}

/* ------------------------------------------------------------------ accounting helpers */

/* reserve before the real call: 0 ok, else a CUresult to return */
static int pools_release_charges(void);
static CUgraph capture_graph_of(CUstream s, int ptsz);

static CUresult acct_reserve(int d, uint64_t bytes)
{
    if (d == DEV_PASS)
        return CUDA_SUCCESS;
    if (d == DEV_BROKEN)
        return CUDA_ERROR_OUT_OF_MEMORY; /* managed container with a broken region: fail closed */
    int rc = xpu_mem_reserve(g_xpu.region, (unsigned)d, bytes);
    /* before refusing: stream-ordered pools may have returned memory since we last looked */
    if (rc == -1 && pools_release_charges())
        rc = xpu_mem_reserve(g_xpu.region, (unsigned)d, bytes);
    if (rc == 0)
        return CUDA_SUCCESS;
    return CUDA_ERROR_OUT_OF_MEMORY;
}

static void acct_rollback(int d, uint64_t bytes)
{
    if (d >= 0)
        xpu_mem_release(g_xpu.region, (unsigned)d, bytes);
}

static void acct_track(int d, unsigned kind, uint64_t key, uint64_t bytes)
{
    if (d < 0)
        return;
    if (xpu_track_put(kind, key, bytes, d) != 0) {
        /* cannot remember it: keep the charge (fail closed), count the error */
        atomic_fetch_add(&g_xpu.region->use->dev[d].accounting_errors, 1);
    }
}

/* A free takes the allocation's entry out BEFORE the driver frees it: once freed, the driver may
 * hand the same address to another thread's allocation, whose entry must not be the one removed
 * afterwards. The entry goes back if the driver refuses; the charge goes when it succeeds. */
struct taken {
    int had, dev;
    unsigned kind;
    uint64_t key, bytes;
};
static struct taken acct_take(unsigned kind, uint64_t key)
{
    struct taken t = {0, -1, kind, key, 0};
    if (key)
        t.had = xpu_track_take(kind, key, &t.bytes, &t.dev);
    return t;
}
static CUresult acct_settle(const struct taken *t, CUresult rc)
{
    if (!t->had)
        return rc;
    if (rc != CUDA_SUCCESS)
        xpu_track_put(t->kind, t->key, t->bytes, t->dev);
    else if (t->dev >= 0)
        xpu_mem_release(g_xpu.region, (unsigned)t->dev, t->bytes);
    return rc;
}

/* ------------------------------------------------------------------ contexts
 * A context costs device memory no allocation call shows (the context itself, loaded
 * modules, local memory, the device heap): the region's per-process reserve is charged when a
 * process first creates or retains a context on a device (or first allocates there), once. */
static CUresult ctx_reserve(CUdevice dev)
{
    int d = dev_of_ordinal(dev);
    if (d == DEV_BROKEN)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (d < 0)
        return CUDA_SUCCESS;
    return xpu_mem_reserve(g_xpu.region, (unsigned)d, 0) == 0 ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
XPU_EXPORT CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    __typeof__(&cuDevicePrimaryCtxRetain) f = REAL(cuDevicePrimaryCtxRetain);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = ctx_reserve(dev);
    return rc == CUDA_SUCCESS ? f(pctx, dev) : rc;
}
XPU_EXPORT CUresult CUDAAPI cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    __typeof__(&cuCtxCreate_v2) f = REAL(cuCtxCreate_v2);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = ctx_reserve(dev);
    return rc == CUDA_SUCCESS ? f(pctx, flags, dev) : rc;
}
XPU_EXPORT CUresult CUDAAPI cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int n, unsigned int flags,
                                           CUdevice dev)
{
    __typeof__(&cuCtxCreate_v3) f = REAL(cuCtxCreate_v3);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = ctx_reserve(dev);
    return rc == CUDA_SUCCESS ? f(pctx, params, n, flags, dev) : rc;
}
XPU_EXPORT CUresult CUDAAPI cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev)
{
    __typeof__(&cuCtxCreate_v4) f = REAL(cuCtxCreate_v4);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = ctx_reserve(dev);
    return rc == CUDA_SUCCESS ? f(pctx, params, flags, dev) : rc;
}

/* ------------------------------------------------------------------ classic allocations */

XPU_EXPORT CUresult CUDAAPI cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    __typeof__(&cuMemAlloc_v2) f = REAL(cuMemAlloc_v2);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d = cur_dev();
    CUresult rc = acct_reserve(d, bytesize);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(dptr, bytesize);
    if (rc != CUDA_SUCCESS) {
        acct_rollback(d, bytesize);
        return rc;
    }
    acct_track(d, XPU_K_PTR, (uint64_t)*dptr, bytesize);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t w, size_t h,
                                               unsigned int elem)
{
    __typeof__(&cuMemAllocPitch_v2) f = REAL(cuMemAllocPitch_v2);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d = cur_dev();
    uint64_t est = (uint64_t)((w + 511u) & ~(size_t)511u) * (h ? h : 1);
    CUresult rc = acct_reserve(d, est);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(dptr, pPitch, w, h, elem);
    if (rc != CUDA_SUCCESS) {
        acct_rollback(d, est);
        return rc;
    }
    uint64_t actual = (uint64_t)*pPitch * (h ? h : 1);
    if (d >= 0 && actual != est)
        xpu_mem_adjust(g_xpu.region, (unsigned)d, (int64_t)actual - (int64_t)est);
    acct_track(d, XPU_K_PTR, (uint64_t)*dptr, actual);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    __typeof__(&cuMemAllocManaged) f = REAL(cuMemAllocManaged);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d = cur_dev(); /* counted fully against the current device: no UVM oversubscription */
    CUresult rc = acct_reserve(d, bytesize);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(dptr, bytesize, flags);
    if (rc != CUDA_SUCCESS) {
        acct_rollback(d, bytesize);
        return rc;
    }
    acct_track(d, XPU_K_PTR, (uint64_t)*dptr, bytesize);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr)
{
    __typeof__(&cuMemFree_v2) f = REAL(cuMemFree_v2);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    struct taken t = acct_take(XPU_K_PTR, (uint64_t)dptr);
    return acct_settle(&t, f(dptr));
}

/* ------------------------------------------------------------------ stream-ordered pools
 * Charge = the pool's reserved bytes (CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), reconciled
 * after every allocation and trim: memory returned with cuMemFreeAsync stays charged while
 * the pool keeps it reserved. The request itself is reserved first (quota check). */

static int pool_dev(CUmemoryPool pool, int fallback)
{
    uint64_t b;
    int d;
    if (xpu_track_get(XPU_K_POOL, (uint64_t)(uintptr_t)pool, &b, &d))
        return d;
    return fallback;
}

static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;

static _Atomic int g_pools_charged; /* some pool has been reconciled at least once */

/* brings the pool's charge to its reserved bytes; returns the change of the charge */
static int64_t pool_reconcile(CUmemoryPool pool, int d, uint64_t reserved_by_caller)
{
    if (d < 0)
        return 0;
    atomic_store_explicit(&g_pools_charged, 1, memory_order_relaxed);
    __typeof__(&cuMemPoolGetAttribute) ga = REAL(cuMemPoolGetAttribute);
    cuuint64_t now_reserved = 0;
    uint64_t before = 0;
    int dd;
    pthread_mutex_lock(&g_pool_mu); /* serialises reconciliations: deltas add up exactly */
    int ok = ga && ga(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &now_reserved) == CUDA_SUCCESS;
    xpu_track_get(XPU_K_POOL, (uint64_t)(uintptr_t)pool, &before, &dd);
    if (!ok) {
        /* no attribute: keep the request charged, remember it on the pool */
        xpu_track_add(XPU_K_POOL, (uint64_t)(uintptr_t)pool, (int64_t)reserved_by_caller, d);
        pthread_mutex_unlock(&g_pool_mu);
        return 0;
    }
    xpu_track_add(XPU_K_POOL, (uint64_t)(uintptr_t)pool, (int64_t)now_reserved - (int64_t)before, d);
    int64_t delta = (int64_t)now_reserved - (int64_t)before - (int64_t)reserved_by_caller;
    if (delta)
        xpu_mem_adjust(g_xpu.region, (unsigned)d, delta);
    pthread_mutex_unlock(&g_pool_mu);
    return (int64_t)now_reserved - (int64_t)before;
}

/* every pool we charge follows its reserved bytes again (a pool releases memory above its
 * release threshold when the application synchronises); returns 1 if a charge went down */
static int pools_release_charges(void)
{
    if (!atomic_load_explicit(&g_pools_charged, memory_order_relaxed))
        return 0;
    uint64_t keys[64];
    int devs[64], down = 0;
    size_t n = xpu_track_keys(XPU_K_POOL, keys, devs, 64);
    for (size_t i = 0; i < n; i++)
        down |= pool_reconcile((CUmemoryPool)(uintptr_t)keys[i], devs[i], 0) < 0;
    return down;
}

static void pools_reconcile_all(void)
{
    (void)pools_release_charges();
}

static CUresult quota_check(int d, uint64_t bytes, int whole_quota_only);
static void graph_mem_recorded(CUgraph g, int d, uint64_t bytes);

/* cuMemAllocAsync / FromPool on a capturing stream: an allocation node of the captured graph,
 * charged like graph memory when the graph runs; only a node larger than the quota is refused
 * now. Returns 1 when handled (rc set). */
static int capture_alloc(CUstream s, int ptsz, int d, CUdeviceptr *dptr, size_t bytesize, CUresult *rc,
                         CUresult (*call)(void *), void *ctx)
{
    CUgraph g = d >= 0 ? capture_graph_of(s, ptsz) : NULL;
    if (!g)
        return 0;
    *rc = quota_check(d, bytesize, 1);
    if (*rc == CUDA_SUCCESS)
        *rc = call(ctx);
    if (*rc == CUDA_SUCCESS)
        graph_mem_recorded(g, d, bytesize);
    (void)dptr;
    return 1;
}
struct async_args { void *f; CUdeviceptr *dptr; size_t bytes; CUmemoryPool pool; CUstream s; };
static CUresult call_alloc_async(void *a)
{
    struct async_args *x = a;
    return ((__typeof__(&cuMemAllocAsync))x->f)(x->dptr, x->bytes, x->s);
}
static CUresult call_alloc_from_pool(void *a)
{
    struct async_args *x = a;
    return ((__typeof__(&cuMemAllocFromPoolAsync))x->f)(x->dptr, x->bytes, x->pool, x->s);
}

static CUresult alloc_from_pool(__typeof__(&cuMemAllocFromPoolAsync) f, int ptsz, CUdeviceptr *dptr, size_t bytesize,
                                CUmemoryPool pool, CUstream s)
{
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d = pool_dev(pool, cur_dev());
    struct async_args a = {(void *)f, dptr, bytesize, pool, s};
    CUresult crc;
    if (capture_alloc(s, ptsz, d, dptr, bytesize, &crc, call_alloc_from_pool, &a))
        return crc;
    CUresult rc = acct_reserve(d, bytesize);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(dptr, bytesize, pool, s);
    if (rc != CUDA_SUCCESS) {
        acct_rollback(d, bytesize);
        return rc;
    }
    pool_reconcile(pool, d, bytesize);
    return rc;
}

static CUresult alloc_async(__typeof__(&cuMemAllocAsync) f, int ptsz, CUdeviceptr *dptr, size_t bytesize, CUstream s)
{
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d = cur_dev();
    struct async_args a = {(void *)f, dptr, bytesize, NULL, s};
    CUresult crc;
    if (capture_alloc(s, ptsz, d, dptr, bytesize, &crc, call_alloc_async, &a))
        return crc;
    CUmemoryPool pool = NULL;
    CUdevice dev;
    __typeof__(&cuCtxGetDevice) gd = REAL(cuCtxGetDevice);
    __typeof__(&cuDeviceGetMemPool) gp = REAL(cuDeviceGetMemPool);
    if (d >= 0 && gd && gp && gd(&dev) == CUDA_SUCCESS)
        gp(&pool, dev);
    CUresult rc = acct_reserve(d, bytesize);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(dptr, bytesize, s);
    if (rc != CUDA_SUCCESS) {
        acct_rollback(d, bytesize);
        return rc;
    }
    if (pool)
        pool_reconcile(pool, d, bytesize);
    else
        acct_track(d, XPU_K_PTR, (uint64_t)*dptr, bytesize); /* no pool handle: per request */
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream s)
{
    return alloc_async(REAL(cuMemAllocAsync), 0, dptr, bytesize, s);
}
XPU_EXPORT CUresult CUDAAPI cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream s)
{
    return alloc_async(REAL(cuMemAllocAsync_ptsz), 1, dptr, bytesize, s);
}
XPU_EXPORT CUresult CUDAAPI cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                                    CUstream s)
{
    return alloc_from_pool(REAL(cuMemAllocFromPoolAsync), 0, dptr, bytesize, pool, s);
}
XPU_EXPORT CUresult CUDAAPI cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize,
                                                         CUmemoryPool pool, CUstream s)
{
    return alloc_from_pool(REAL(cuMemAllocFromPoolAsync_ptsz), 1, dptr, bytesize, pool, s);
}

static CUresult free_async(__typeof__(&cuMemFreeAsync) f, int ptsz, CUdeviceptr dptr, CUstream s)
{
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    if (capture_graph_of(s, ptsz) != NULL) /* a free node: nothing is freed now */
        return f(dptr, s);
    /* pool memory stays charged until the pool releases it (trim / reconcile); a pointer
     * from cuMemAlloc freed here is uncharged now */
    struct taken t = acct_take(XPU_K_PTR, (uint64_t)dptr);
    return acct_settle(&t, f(dptr, s));
}
XPU_EXPORT CUresult CUDAAPI cuMemFreeAsync(CUdeviceptr dptr, CUstream s)
{
    return free_async(REAL(cuMemFreeAsync), 0, dptr, s);
}
XPU_EXPORT CUresult CUDAAPI cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream s)
{
    return free_async(REAL(cuMemFreeAsync_ptsz), 1, dptr, s);
}

XPU_EXPORT CUresult CUDAAPI cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props)
{
    __typeof__(&cuMemPoolCreate) f = REAL(cuMemPoolCreate);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(pool, props);
    if (rc == CUDA_SUCCESS && props && props->location.type == CU_MEM_LOCATION_TYPE_DEVICE) {
        int d = dev_of_ordinal(props->location.id);
        if (d >= 0)
            xpu_track_put(XPU_K_POOL, (uint64_t)(uintptr_t)*pool, 0, d);
    }
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuMemPoolTrimTo(CUmemoryPool pool, size_t keep)
{
    __typeof__(&cuMemPoolTrimTo) f = REAL(cuMemPoolTrimTo);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(pool, keep);
    uint64_t b;
    int d;
    if (rc == CUDA_SUCCESS && xpu_track_get(XPU_K_POOL, (uint64_t)(uintptr_t)pool, &b, &d))
        pool_reconcile(pool, d, 0);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuMemPoolDestroy(CUmemoryPool pool)
{
    __typeof__(&cuMemPoolDestroy) f = REAL(cuMemPoolDestroy);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    struct taken t = acct_take(XPU_K_POOL, (uint64_t)(uintptr_t)pool);
    return acct_settle(&t, f(pool));
}

/* ------------------------------------------------------------------ VMM */

XPU_EXPORT CUresult CUDAAPI cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                                        const CUmemAllocationProp *prop, unsigned long long flags)
{
    __typeof__(&cuMemCreate) f = REAL(cuMemCreate);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d = DEV_PASS;
    if (prop && prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE)
        d = dev_of_ordinal(prop->location.id); /* host / host-NUMA locations are not device memory */
    CUresult rc = acct_reserve(d, size);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(handle, size, prop, flags);
    if (rc != CUDA_SUCCESS) {
        acct_rollback(d, size);
        return rc;
    }
    if (d >= 0 && xpu_track_put_aux(XPU_K_VMM, (uint64_t)*handle, size, d, 0, 1) != 0)
        atomic_fetch_add(&g_xpu.region->use->dev[d].accounting_errors, 1); /* keep the charge */
    return rc;
}

/* The driver frees a VMM allocation when its last handle reference AND its last mapping are
 * gone (cuMemRelease of a mapped handle defers the free to cuMemUnmap): so does the charge. */
static void vmm_ref(uint64_t handle, int drefs, int dmaps)
{
    uint64_t bytes;
    int d;
    if (xpu_track_ref(XPU_K_VMM, handle, drefs, dmaps, &bytes, &d) == 1 && d >= 0)
        xpu_mem_release(g_xpu.region, (unsigned)d, bytes);
}

XPU_EXPORT CUresult CUDAAPI cuMemRelease(CUmemGenericAllocationHandle handle)
{
    __typeof__(&cuMemRelease) f = REAL(cuMemRelease);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    uint64_t bytes = 0;
    int d = -1;
    int r = xpu_track_ref(XPU_K_VMM, (uint64_t)handle, -1, 0, &bytes, &d); /* before: the handle may be reused */
    CUresult rc = f(handle);
    if (rc != CUDA_SUCCESS) { /* refused: the reference is still there */
        if (r == 1)
            xpu_track_put_aux(XPU_K_VMM, (uint64_t)handle, bytes, d, 0, 1);
        else if (r == 0)
            xpu_track_ref(XPU_K_VMM, (uint64_t)handle, 1, 0, NULL, NULL);
    } else if (r == 1 && d >= 0) {
        xpu_mem_release(g_xpu.region, (unsigned)d, bytes);
    }
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                                     unsigned long long flags)
{
    __typeof__(&cuMemMap) f = REAL(cuMemMap);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(ptr, size, offset, handle, flags);
    if (rc == CUDA_SUCCESS && xpu_track_ref(XPU_K_VMM, (uint64_t)handle, 0, 1, NULL, NULL) == 0)
        xpu_track_put_aux(XPU_K_VMAP, (uint64_t)ptr, size, -1, (uint64_t)handle, 0);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    __typeof__(&cuMemUnmap) f = REAL(cuMemUnmap);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    /* the mappings of the range (one call may unmap several) leave the table first: once
     * unmapped, the driver may map the range again for another thread */
    struct xpu_track_item maps[64];
    size_t n = xpu_track_take_range(XPU_K_VMAP, (uint64_t)ptr, (uint64_t)ptr + size, maps, 64);
    CUresult rc = f(ptr, size);
    for (size_t i = 0; i < n; i++) {
        if (rc == CUDA_SUCCESS)
            vmm_ref(maps[i].aux, 0, -1);
        else
            xpu_track_put_aux(XPU_K_VMAP, maps[i].key, maps[i].bytes, maps[i].dev, maps[i].aux, 0);
    }
    if (rc == CUDA_SUCCESS) { /* more than 64 mappings in one range */
        while ((n = xpu_track_take_range(XPU_K_VMAP, (uint64_t)ptr, (uint64_t)ptr + size, maps, 64)) > 0)
            for (size_t i = 0; i < n; i++)
                vmm_ref(maps[i].aux, 0, -1);
    }
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    __typeof__(&cuMemRetainAllocationHandle) f = REAL(cuMemRetainAllocationHandle);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(handle, addr);
    if (rc == CUDA_SUCCESS && handle)
        xpu_track_ref(XPU_K_VMM, (uint64_t)*handle, 1, 0, NULL, NULL);
    return rc;
}

/* ------------------------------------------------------------------ arrays (estimated size) */

static uint64_t fmt_bytes(CUarray_format f)
{
    switch ((int)f) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: case CU_AD_FORMAT_UNORM_INT8X1:
    case CU_AD_FORMAT_SNORM_INT8X1:
        return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16: case CU_AD_FORMAT_HALF:
    case CU_AD_FORMAT_UNORM_INT8X2: case CU_AD_FORMAT_SNORM_INT8X2: case CU_AD_FORMAT_UNORM_INT16X1:
    case CU_AD_FORMAT_SNORM_INT16X1:
        return 2;
    case CU_AD_FORMAT_UNORM_INT16X2: case CU_AD_FORMAT_SNORM_INT16X2: case CU_AD_FORMAT_UNORM_INT8X4:
    case CU_AD_FORMAT_SNORM_INT8X4:
        return 4;
    case CU_AD_FORMAT_UNORM_INT16X4: case CU_AD_FORMAT_SNORM_INT16X4:
        return 8;
    default:
        return 4; /* 32-bit formats and anything unknown (block compressed, YUV): conservative */
    }
}

static uint64_t array_bytes(size_t w, size_t h, size_t dpt, CUarray_format f, unsigned ch)
{
    uint64_t el = fmt_bytes(f);
    /* single-element multi-channel formats (e.g. UNORM_INT8X4) already include channels */
    if ((int)f >= 0xc0 && (int)f <= 0xcb)
        ch = 1;
    return (uint64_t)(w ? w : 1) * (h ? h : 1) * (dpt ? dpt : 1) * (ch ? ch : 1) * el;
}

XPU_EXPORT CUresult CUDAAPI cuArrayCreate_v2(CUarray *ph, const CUDA_ARRAY_DESCRIPTOR *desc)
{
    __typeof__(&cuArrayCreate_v2) f = REAL(cuArrayCreate_v2);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d = cur_dev();
    uint64_t b = desc ? array_bytes(desc->Width, desc->Height, 1, desc->Format, desc->NumChannels) : 0;
    CUresult rc = acct_reserve(d, b);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(ph, desc);
    if (rc != CUDA_SUCCESS) {
        acct_rollback(d, b);
        return rc;
    }
    acct_track(d, XPU_K_ARRAY, (uint64_t)(uintptr_t)*ph, b);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuArray3DCreate_v2(CUarray *ph, const CUDA_ARRAY3D_DESCRIPTOR *desc)
{
    __typeof__(&cuArray3DCreate_v2) f = REAL(cuArray3DCreate_v2);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d = cur_dev();
    uint64_t b = desc ? array_bytes(desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels) : 0;
    CUresult rc = acct_reserve(d, b);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(ph, desc);
    if (rc != CUDA_SUCCESS) {
        acct_rollback(d, b);
        return rc;
    }
    acct_track(d, XPU_K_ARRAY, (uint64_t)(uintptr_t)*ph, b);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuArrayDestroy(CUarray h)
{
    __typeof__(&cuArrayDestroy) f = REAL(cuArrayDestroy);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    struct taken t = acct_take(XPU_K_ARRAY, (uint64_t)(uintptr_t)h);
    return acct_settle(&t, f(h));
}

XPU_EXPORT CUresult CUDAAPI cuMipmappedArrayCreate(CUmipmappedArray *ph, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                                   unsigned int levels)
{
    __typeof__(&cuMipmappedArrayCreate) f = REAL(cuMipmappedArrayCreate);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d = cur_dev();
    uint64_t b = 0;
    if (desc) {
        size_t w = desc->Width, h = desc->Height, z = desc->Depth;
        for (unsigned l = 0; l < (levels ? levels : 1) && l < 32; l++) {
            b += array_bytes(w, h, z, desc->Format, desc->NumChannels);
            w = w > 1 ? w / 2 : 1;
            h = h > 1 ? h / 2 : h;
            z = z > 1 ? z / 2 : z;
        }
    }
    CUresult rc = acct_reserve(d, b);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(ph, desc, levels);
    if (rc != CUDA_SUCCESS) {
        acct_rollback(d, b);
        return rc;
    }
    acct_track(d, XPU_K_MIPMAP, (uint64_t)(uintptr_t)*ph, b);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuMipmappedArrayDestroy(CUmipmappedArray h)
{
    __typeof__(&cuMipmappedArrayDestroy) f = REAL(cuMipmappedArrayDestroy);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    struct taken t = acct_take(XPU_K_MIPMAP, (uint64_t)(uintptr_t)h);
    return acct_settle(&t, f(h));
}

/* ------------------------------------------------------------------ graph memory
 * cuGraphAddMemAllocNode: refused up front when the node alone can never fit in the quota.
 * cuGraphInstantiate*: refused when the graph's allocation nodes cannot fit.
 * The charge itself follows the device's graph-memory pool
 * (CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT), reconciled after cuGraphUpload, cuGraphLaunch
 * of executables with memory nodes, and cuDeviceGraphMemTrim. */

static _Atomic int g_have_graph_mem;
static uint64_t g_graph_charged[XPU_MAX_DEVICES];
static pthread_mutex_t g_graph_mu = PTHREAD_MUTEX_INITIALIZER;

/* whole_quota_only: refuse only what can never fit (the node alone above the quota) */
static CUresult quota_check(int d, uint64_t bytes, int whole_quota_only)
{
    if (d == DEV_BROKEN)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (d < 0 || !bytes)
        return CUDA_SUCCESS;
    struct xpu_dev_cfg cfg;
    xpu_region_read_cfg(g_xpu.region, (unsigned)d, &cfg);
    uint64_t used = whole_quota_only ? 0 : atomic_load(&g_xpu.region->use->dev[d].mem_used);
    if (cfg.mem_limit && (bytes > cfg.mem_limit || used > cfg.mem_limit - bytes)) {
        if (whole_quota_only) {
            atomic_fetch_add(&g_xpu.region->use->dev[d].oom_events, 1);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        xpu_region_reap(g_xpu.region);
        used = atomic_load(&g_xpu.region->use->dev[d].mem_used);
        if (bytes > cfg.mem_limit || used > cfg.mem_limit - bytes) {
            atomic_fetch_add(&g_xpu.region->use->dev[d].oom_events, 1);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    return CUDA_SUCCESS;
}

static void graph_mem_reconcile(int d)
{
    if (d < 0)
        return;
    __typeof__(&cuDeviceGetGraphMemAttribute) ga = REAL(cuDeviceGetGraphMemAttribute);
    __typeof__(&cuCtxGetDevice) gd = REAL(cuCtxGetDevice);
    CUdevice dev;
    cuuint64_t v = 0;
    if (!ga || !gd || gd(&dev) != CUDA_SUCCESS)
        return;
    pthread_mutex_lock(&g_graph_mu);
    if (ga(dev, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &v) == CUDA_SUCCESS) {
        int64_t delta = (int64_t)v - (int64_t)g_graph_charged[d];
        g_graph_charged[d] = v;
        if (delta)
            xpu_mem_adjust(g_xpu.region, (unsigned)d, delta);
    }
    pthread_mutex_unlock(&g_graph_mu);
}

/* an allocation node of bytes on device d was added to graph g */
static void graph_mem_recorded(CUgraph g, int d, uint64_t bytes)
{
    if (d < 0 || !bytes)
        return;
    xpu_track_add(XPU_K_GRAPH, (uint64_t)(uintptr_t)g, (int64_t)bytes, d);
    atomic_store(&g_have_graph_mem, 1);
}

static int alloc_node_dev(const CUmemPoolProps *props)
{
    return props->location.type == CU_MEM_LOCATION_TYPE_DEVICE ? dev_of_ordinal(props->location.id) : DEV_PASS;
}

XPU_EXPORT CUresult CUDAAPI cuGraphAddMemAllocNode(CUgraphNode *node, CUgraph g, const CUgraphNode *deps,
                                                   size_t ndeps, CUDA_MEM_ALLOC_NODE_PARAMS *p)
{
    __typeof__(&cuGraphAddMemAllocNode) f = REAL(cuGraphAddMemAllocNode);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d = p ? alloc_node_dev(&p->poolProps) : DEV_PASS;
    CUresult rc = quota_check(d, p ? p->bytesize : 0, 1);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(node, g, deps, ndeps, p);
    if (rc == CUDA_SUCCESS && p)
        graph_mem_recorded(g, d, p->bytesize);
    return rc;
}

/* the generic node API: memory-allocation nodes are graph memory like the above */
static CUresult add_node(CUgraph g, CUgraphNodeParams *p, CUresult (*call)(void *), void *ctx)
{
    int d = DEV_PASS;
    uint64_t bytes = 0;
    if (p && p->type == CU_GRAPH_NODE_TYPE_MEM_ALLOC) {
        d = alloc_node_dev(&p->alloc.poolProps);
        bytes = p->alloc.bytesize;
    }
    CUresult rc = quota_check(d, bytes, 1);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = call(ctx);
    if (rc == CUDA_SUCCESS)
        graph_mem_recorded(g, d, bytes);
    return rc;
}
struct node_args { void *f; CUgraphNode *node; CUgraph g; const CUgraphNode *deps; const CUgraphEdgeData *data; size_t n; CUgraphNodeParams *p; };
static CUresult call_add_node(void *a)
{
    struct node_args *x = a;
    return ((__typeof__(&cuGraphAddNode))x->f)(x->node, x->g, x->deps, x->n, x->p);
}
static CUresult call_add_node_v2(void *a)
{
    struct node_args *x = a;
    return ((__typeof__(&cuGraphAddNode_v2))x->f)(x->node, x->g, x->deps, x->data, x->n, x->p);
}
XPU_EXPORT CUresult CUDAAPI cuGraphAddNode(CUgraphNode *node, CUgraph g, const CUgraphNode *deps, size_t n,
                                           CUgraphNodeParams *p)
{
    struct node_args a = {(void *)REAL(cuGraphAddNode), node, g, deps, NULL, n, p};
    return a.f ? add_node(g, p, call_add_node, &a) : CUDA_ERROR_NOT_FOUND;
}
XPU_EXPORT CUresult CUDAAPI cuGraphAddNode_v2(CUgraphNode *node, CUgraph g, const CUgraphNode *deps,
                                              const CUgraphEdgeData *data, size_t n, CUgraphNodeParams *p)
{
    struct node_args a = {(void *)REAL(cuGraphAddNode_v2), node, g, deps, data, n, p};
    return a.f ? add_node(g, p, call_add_node_v2, &a) : CUDA_ERROR_NOT_FOUND;
}

static CUresult graph_pre(CUgraph g, int *d)
{
    uint64_t bytes = 0;
    *d = DEV_PASS;
    if (!atomic_load_explicit(&g_have_graph_mem, memory_order_relaxed))
        return CUDA_SUCCESS;
    if (!xpu_track_get(XPU_K_GRAPH, (uint64_t)(uintptr_t)g, &bytes, d))
        return CUDA_SUCCESS;
    return quota_check(*d, bytes, 0);
}

static void graph_post(CUresult rc, CUgraphExec *e, int d)
{
    if (rc == CUDA_SUCCESS && d >= 0 && e)
        xpu_track_put(XPU_K_GEXEC, (uint64_t)(uintptr_t)*e, 0, d);
}

XPU_EXPORT CUresult CUDAAPI cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long flags)
{
    __typeof__(&cuGraphInstantiateWithFlags) f = REAL(cuGraphInstantiateWithFlags);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d;
    CUresult rc = graph_pre(g, &d);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(e, g, flags);
    graph_post(rc, e, d);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuGraphInstantiate(CUgraphExec *e, CUgraph g, CUgraphNode *err, char *log, size_t n)
{
    __typeof__(&cuGraphInstantiate) f = REAL(cuGraphInstantiate);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d;
    CUresult rc = graph_pre(g, &d);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(e, g, err, log, n);
    graph_post(rc, e, d);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuGraphInstantiate_v2(CUgraphExec *e, CUgraph g, CUgraphNode *err, char *log,
                                                  size_t n)
{
    __typeof__(&cuGraphInstantiate_v2) f = REAL(cuGraphInstantiate_v2);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d;
    CUresult rc = graph_pre(g, &d);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(e, g, err, log, n);
    graph_post(rc, e, d);
    return rc;
}

static CUresult instantiate_params(__typeof__(&cuGraphInstantiateWithParams) f, CUgraphExec *e, CUgraph g,
                                   CUDA_GRAPH_INSTANTIATE_PARAMS *p)
{
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    int d;
    CUresult rc = graph_pre(g, &d);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = f(e, g, p);
    graph_post(rc, e, d);
    return rc;
}
XPU_EXPORT CUresult CUDAAPI cuGraphInstantiateWithParams(CUgraphExec *e, CUgraph g,
                                                         CUDA_GRAPH_INSTANTIATE_PARAMS *p)
{
    return instantiate_params(REAL(cuGraphInstantiateWithParams), e, g, p);
}
XPU_EXPORT CUresult CUDAAPI cuGraphInstantiateWithParams_ptsz(CUgraphExec *e, CUgraph g,
                                                              CUDA_GRAPH_INSTANTIATE_PARAMS *p)
{
    return instantiate_params(REAL(cuGraphInstantiateWithParams_ptsz), e, g, p);
}

static int gexec_dev(CUgraphExec e)
{
    uint64_t b;
    int d;
    if (!atomic_load_explicit(&g_have_graph_mem, memory_order_relaxed))
        return DEV_PASS;
    if (xpu_track_get(XPU_K_GEXEC, (uint64_t)(uintptr_t)e, &b, &d))
        return d;
    return DEV_PASS;
}

static CUresult upload(__typeof__(&cuGraphUpload) f, CUgraphExec e, CUstream s)
{
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(e, s);
    if (rc == CUDA_SUCCESS)
        graph_mem_reconcile(gexec_dev(e));
    return rc;
}
XPU_EXPORT CUresult CUDAAPI cuGraphUpload(CUgraphExec e, CUstream s) { return upload(REAL(cuGraphUpload), e, s); }
XPU_EXPORT CUresult CUDAAPI cuGraphUpload_ptsz(CUgraphExec e, CUstream s)
{
    return upload(REAL(cuGraphUpload_ptsz), e, s);
}

XPU_EXPORT CUresult CUDAAPI cuGraphExecDestroy(CUgraphExec e)
{
    __typeof__(&cuGraphExecDestroy) f = REAL(cuGraphExecDestroy);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(e);
    if (rc == CUDA_SUCCESS)
        xpu_track_take(XPU_K_GEXEC, (uint64_t)(uintptr_t)e, NULL, NULL);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuGraphDestroy(CUgraph g)
{
    __typeof__(&cuGraphDestroy) f = REAL(cuGraphDestroy);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(g);
    if (rc == CUDA_SUCCESS)
        xpu_track_take(XPU_K_GRAPH, (uint64_t)(uintptr_t)g, NULL, NULL);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuDeviceGraphMemTrim(CUdevice dev)
{
    __typeof__(&cuDeviceGraphMemTrim) f = REAL(cuDeviceGraphMemTrim);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(dev);
    if (rc == CUDA_SUCCESS && atomic_load(&g_have_graph_mem))
        graph_mem_reconcile(dev_of_ordinal(dev));
    return rc;
}

/* ------------------------------------------------------------------ memory info (virtualised) */

XPU_EXPORT CUresult CUDAAPI cuMemGetInfo_v2(size_t *free_b, size_t *total_b)
{
    __typeof__(&cuMemGetInfo_v2) f = REAL(cuMemGetInfo_v2);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(free_b, total_b);
    int d = cur_dev();
    if (rc != CUDA_SUCCESS || d < 0 || !free_b || !total_b)
        return rc;
    struct xpu_dev_cfg cfg;
    xpu_region_read_cfg(g_xpu.region, (unsigned)d, &cfg);
    if (!cfg.mem_limit)
        return rc;
    uint64_t total = cfg.mem_limit < *total_b ? cfg.mem_limit : *total_b;
    uint64_t used = atomic_load(&g_xpu.region->use->dev[d].mem_used);
    uint64_t fr = used < total ? total - used : 0;
    if (fr > *free_b)
        fr = *free_b; /* never report more than is physically free */
    *total_b = (size_t)total;
    *free_b = (size_t)fr;
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    __typeof__(&cuDeviceTotalMem_v2) f = REAL(cuDeviceTotalMem_v2);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(bytes, dev);
    int d = dev_of_ordinal(dev);
    if (rc != CUDA_SUCCESS || d < 0 || !bytes)
        return rc;
    struct xpu_dev_cfg cfg;
    xpu_region_read_cfg(g_xpu.region, (unsigned)d, &cfg);
    if (cfg.mem_limit && cfg.mem_limit < *bytes)
        *bytes = (size_t)cfg.mem_limit;
    return rc;
}

/* ------------------------------------------------------------------ launches (limiter) */

static int ev_create(void **ev)
{
    __typeof__(&cuEventCreate) f = REAL(cuEventCreate);
    return f && f((CUevent *)ev, CU_EVENT_DEFAULT) == CUDA_SUCCESS ? 0 : -1;
}
static int ev_record(void *ev, void *s)
{
    __typeof__(&cuEventRecord) f = REAL(cuEventRecord);
    return f && f((CUevent)ev, (CUstream)s) == CUDA_SUCCESS ? 0 : -1;
}
static int ev_record_ptsz(void *ev, void *s)
{
    __typeof__(&cuEventRecord_ptsz) f = REAL(cuEventRecord_ptsz);
    if (!f) /* no per-thread variant: legacy record on an explicit stream is equivalent */
        return s ? ev_record(ev, s) : -1;
    return f((CUevent)ev, (CUstream)s) == CUDA_SUCCESS ? 0 : -1;
}
static int ev_query(void *ev)
{
    __typeof__(&cuEventQuery) f = REAL(cuEventQuery);
    if (!f)
        return -1;
    CUresult rc = f((CUevent)ev);
    return rc == CUDA_SUCCESS ? 0 : rc == CUDA_ERROR_NOT_READY ? 1 : rc == CUDA_ERROR_CAPTURED_EVENT ? -2 : -1;
}
static int ev_sync(void *ev)
{
    __typeof__(&cuEventSynchronize) f = REAL(cuEventSynchronize);
    return f && f((CUevent)ev) == CUDA_SUCCESS ? 0 : -1;
}
static int ev_elapsed(void *a, void *b, int64_t *ns)
{
    float ms = 0;
    __typeof__(&cuEventElapsedTime) f = (__typeof__(&cuEventElapsedTime))real(&R_cuEventElapsedTime_v2);
    if (!f)
        f = REAL(cuEventElapsedTime);
    if (!f || f(&ms, (CUevent)a, (CUevent)b) != CUDA_SUCCESS)
        return -1;
    *ns = (int64_t)((double)ms * 1e6);
    return 0;
}
/* 1 unless the driver says the stream is not capturing (an error, e.g. the legacy stream
 * while a blocking stream captures, counts as capturing: do not touch it) */
static int capturing_with(__typeof__(&cuStreamIsCapturing) f, void *s)
{
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    if (!f)
        return 0;
    return f((CUstream)s, &st) != CUDA_SUCCESS || st != CU_STREAM_CAPTURE_STATUS_NONE;
}
static int ev_capturing(void *s) { return capturing_with(REAL(cuStreamIsCapturing), s); }
static int ev_capturing_ptsz(void *s)
{
    __typeof__(&cuStreamIsCapturing) f = REAL(cuStreamIsCapturing_ptsz);
    return capturing_with(f ? f : REAL(cuStreamIsCapturing), s);
}
/* our event queries and waits are never "unsafe calls" of a GLOBAL capture */
static void ev_exchange_mode(int relaxed, int *saved)
{
    __typeof__(&cuThreadExchangeStreamCaptureMode) f = REAL(cuThreadExchangeStreamCaptureMode);
    if (!f)
        return;
    CUstreamCaptureMode m = relaxed ? CU_STREAM_CAPTURE_MODE_RELAXED : (CUstreamCaptureMode)*saved;
    if (f(&m) == CUDA_SUCCESS && relaxed)
        *saved = (int)m;
}

static const struct xpu_meter_ops OPS_LEGACY = {ev_create, ev_record, ev_query, ev_sync, ev_elapsed,
                                                ev_capturing, ev_exchange_mode, 0};
static const struct xpu_meter_ops OPS_PTSZ = {ev_create, ev_record_ptsz, ev_query, ev_sync, ev_elapsed,
                                              ev_capturing_ptsz, ev_exchange_mode, 1};

/* returns region device index to pass to launch_post, or -1 (not limited) */
static inline int launch_pre(CUstream s, const struct xpu_meter_ops *ops, uint64_t *now)
{
    struct xpu_core *c = xpu_core();
    if (c->status != XPU_REGION_OK)
        return -1;
    int d = cur_dev();
    if (d < 0)
        return -1;
    return xpu_limit_before((unsigned)d, s, ops, now) ? d : -1;
}

static inline void launch_post(int d, CUstream s, const struct xpu_meter_ops *ops, CUresult rc, int force,
                               uint64_t now)
{
    if (d >= 0)
        xpu_limit_after((unsigned)d, s, ops, rc == CUDA_SUCCESS, force, now);
}

#define LAUNCH_BODY(fn, ops, stream, force, ...)                                                      \
    __typeof__(&fn) f = REAL(fn);                                                                      \
    if (!f)                                                                                            \
        return CUDA_ERROR_NOT_FOUND;                                                                   \
    uint64_t now_ = 0;                                                                                 \
    int d = launch_pre((stream), (ops), &now_);                                                        \
    CUresult rc = f(__VA_ARGS__);                                                                      \
    launch_post(d, (stream), (ops), rc, (force), now_);                                                \
    return rc;

XPU_EXPORT CUresult CUDAAPI cuLaunchKernel(CUfunction fn, unsigned int gx, unsigned int gy, unsigned int gz,
                                           unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm,
                                           CUstream s, void **params, void **extra)
{
    LAUNCH_BODY(cuLaunchKernel, &OPS_LEGACY, s, 0, fn, gx, gy, gz, bx, by, bz, shm, s, params, extra)
}
XPU_EXPORT CUresult CUDAAPI cuLaunchKernel_ptsz(CUfunction fn, unsigned int gx, unsigned int gy,
                                                unsigned int gz, unsigned int bx, unsigned int by,
                                                unsigned int bz, unsigned int shm, CUstream s, void **params,
                                                void **extra)
{
    LAUNCH_BODY(cuLaunchKernel_ptsz, &OPS_PTSZ, s, 0, fn, gx, gy, gz, bx, by, bz, shm, s, params, extra)
}
XPU_EXPORT CUresult CUDAAPI cuLaunchKernelEx(const CUlaunchConfig *cfg, CUfunction fn, void **params,
                                             void **extra)
{
    CUstream s = cfg ? cfg->hStream : NULL;
    LAUNCH_BODY(cuLaunchKernelEx, &OPS_LEGACY, s, 0, cfg, fn, params, extra)
}
XPU_EXPORT CUresult CUDAAPI cuLaunchKernelEx_ptsz(const CUlaunchConfig *cfg, CUfunction fn, void **params,
                                                  void **extra)
{
    CUstream s = cfg ? cfg->hStream : NULL;
    LAUNCH_BODY(cuLaunchKernelEx_ptsz, &OPS_PTSZ, s, 0, cfg, fn, params, extra)
}
XPU_EXPORT CUresult CUDAAPI cuLaunchCooperativeKernel(CUfunction fn, unsigned int gx, unsigned int gy,
                                                      unsigned int gz, unsigned int bx, unsigned int by,
                                                      unsigned int bz, unsigned int shm, CUstream s,
                                                      void **params)
{
    LAUNCH_BODY(cuLaunchCooperativeKernel, &OPS_LEGACY, s, 0, fn, gx, gy, gz, bx, by, bz, shm, s, params)
}
XPU_EXPORT CUresult CUDAAPI cuLaunchCooperativeKernel_ptsz(CUfunction fn, unsigned int gx, unsigned int gy,
                                                           unsigned int gz, unsigned int bx, unsigned int by,
                                                           unsigned int bz, unsigned int shm, CUstream s,
                                                           void **params)
{
    LAUNCH_BODY(cuLaunchCooperativeKernel_ptsz, &OPS_PTSZ, s, 0, fn, gx, gy, gz, bx, by, bz, shm, s, params)
}
XPU_EXPORT CUresult CUDAAPI cuLaunchCooperativeKernelMultiDevice(CUDA_LAUNCH_PARAMS *list, unsigned int n,
                                                                 unsigned int flags)
{
    CUstream s = (list && n) ? list[0].hStream : NULL;
    LAUNCH_BODY(cuLaunchCooperativeKernelMultiDevice, &OPS_LEGACY, s, 1, list, n, flags)
}
XPU_EXPORT CUresult CUDAAPI cuLaunch(CUfunction fn)
{
    LAUNCH_BODY(cuLaunch, &OPS_LEGACY, (CUstream)NULL, 0, fn)
}
XPU_EXPORT CUresult CUDAAPI cuLaunchGrid(CUfunction fn, int w, int h)
{
    LAUNCH_BODY(cuLaunchGrid, &OPS_LEGACY, (CUstream)NULL, 0, fn, w, h)
}
XPU_EXPORT CUresult CUDAAPI cuLaunchGridAsync(CUfunction fn, int w, int h, CUstream s)
{
    LAUNCH_BODY(cuLaunchGridAsync, &OPS_LEGACY, s, 0, fn, w, h, s)
}

static CUresult graph_launch(__typeof__(&cuGraphLaunch) f, const struct xpu_meter_ops *ops, CUgraphExec e,
                             CUstream s)
{
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    uint64_t now = 0;
    int d = launch_pre(s, ops, &now);
    CUresult rc = f(e, s);
    launch_post(d, s, ops, rc, 1, now); /* a graph is measured as one unit */
    if (rc == CUDA_SUCCESS && atomic_load_explicit(&g_have_graph_mem, memory_order_relaxed))
        graph_mem_reconcile(gexec_dev(e));
    return rc;
}
XPU_EXPORT CUresult CUDAAPI cuGraphLaunch(CUgraphExec e, CUstream s)
{
    return graph_launch(REAL(cuGraphLaunch), &OPS_LEGACY, e, s);
}
XPU_EXPORT CUresult CUDAAPI cuGraphLaunch_ptsz(CUgraphExec e, CUstream s)
{
    return graph_launch(REAL(cuGraphLaunch_ptsz), &OPS_PTSZ, e, s);
}

/* ------------------------------------------------------------------ sync points
 * The host is about to wait for the GPU: close the limiter's open batches first so that the
 * idle time that follows is not measured as GPU time of this tenant. After the wait,
 * stream-ordered pools may have released memory (release threshold): reconcile them. */
static void pools_reconcile_all(void);

static inline void sync_point(CUstream s, const struct xpu_meter_ops *ops, int whole_context)
{
    if (xpu_core()->status != XPU_REGION_OK)
        return;
    int d = cur_dev();
    if (d >= 0)
        xpu_limit_sync_point((unsigned)d, s, ops, whole_context);
}
static CUresult after_sync(CUresult rc)
{
    if (rc == CUDA_SUCCESS && xpu_core()->status == XPU_REGION_OK)
        pools_reconcile_all();
    return rc;
}
XPU_EXPORT CUresult CUDAAPI cuStreamSynchronize(CUstream s)
{
    __typeof__(&cuStreamSynchronize) f = REAL(cuStreamSynchronize);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    sync_point(s, &OPS_LEGACY, 0);
    return after_sync(f(s));
}
XPU_EXPORT CUresult CUDAAPI cuStreamSynchronize_ptsz(CUstream s)
{
    __typeof__(&cuStreamSynchronize_ptsz) f = REAL(cuStreamSynchronize_ptsz);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    sync_point(s, &OPS_PTSZ, 0);
    return after_sync(f(s));
}
XPU_EXPORT CUresult CUDAAPI cuCtxSynchronize(void)
{
    __typeof__(&cuCtxSynchronize) f = REAL(cuCtxSynchronize);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    sync_point(NULL, &OPS_LEGACY, 1);
    return after_sync(f());
}
XPU_EXPORT CUresult CUDAAPI cuCtxSynchronize_v2(CUcontext ctx)
{
    __typeof__(&cuCtxSynchronize_v2) f = REAL(cuCtxSynchronize_v2);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    sync_point(NULL, &OPS_LEGACY, 1); /* one context per device and process is assumed (see docs) */
    return after_sync(f(ctx));
}
XPU_EXPORT CUresult CUDAAPI cuEventSynchronize(CUevent e)
{
    __typeof__(&cuEventSynchronize) f = REAL(cuEventSynchronize);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    sync_point(NULL, &OPS_LEGACY, 1); /* the event's stream is unknown: every open batch ends */
    return after_sync(f(e));
}

/* ------------------------------------------------------------------ stream capture
 * Captured work is not executed: the limiter must not measure, throttle or record events on a
 * capturing stream, and its event queries must not invalidate a capture (shim_limit.c). The
 * capture hooks tell it a capture may be in progress; capture begins only after the stream's
 * open batch has ended. */
static CUresult capture_begin(CUstream s, const struct xpu_meter_ops *ops, CUresult (*begin)(void *, void *),
                              void *ctx)
{
    int managed = xpu_core()->status == XPU_REGION_OK;
    if (managed) {
        xpu_capture_begin();
        int d = cur_dev();
        if (d >= 0)
            xpu_limit_stream_capture_begins((unsigned)d, s, ops);
    }
    CUresult rc = begin(s, ctx);
    if (rc != CUDA_SUCCESS && managed)
        xpu_capture_end();
    return rc;
}
struct begin_args { void *fn; CUstreamCaptureMode mode; CUgraph g; const CUgraphNode *deps; const CUgraphEdgeData *data; size_t n; };
static CUresult begin_v1(void *s, void *a) { return ((__typeof__(&cuStreamBeginCapture))((struct begin_args *)a)->fn)((CUstream)s); }
static CUresult begin_v2(void *s, void *a)
{
    struct begin_args *b = a;
    return ((__typeof__(&cuStreamBeginCapture_v2))b->fn)((CUstream)s, b->mode);
}
static CUresult begin_to_graph(void *s, void *a)
{
    struct begin_args *b = a;
    return ((__typeof__(&cuStreamBeginCaptureToGraph))b->fn)((CUstream)s, b->g, b->deps, b->data, b->n, b->mode);
}
#define BEGIN_CAPTURE(name, ops, how, ...)                                                             \
    struct begin_args a_ = {(void *)REAL(name), __VA_ARGS__};                                          \
    if (!a_.fn)                                                                                        \
        return CUDA_ERROR_NOT_FOUND;                                                                   \
    return capture_begin(s, ops, how, &a_);
XPU_EXPORT CUresult CUDAAPI cuStreamBeginCapture(CUstream s) { BEGIN_CAPTURE(cuStreamBeginCapture, &OPS_LEGACY, begin_v1, CU_STREAM_CAPTURE_MODE_GLOBAL, NULL, NULL, NULL, 0) }
XPU_EXPORT CUresult CUDAAPI cuStreamBeginCapture_ptsz(CUstream s) { BEGIN_CAPTURE(cuStreamBeginCapture_ptsz, &OPS_PTSZ, begin_v1, CU_STREAM_CAPTURE_MODE_GLOBAL, NULL, NULL, NULL, 0) }
XPU_EXPORT CUresult CUDAAPI cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode mode)
{
    BEGIN_CAPTURE(cuStreamBeginCapture_v2, &OPS_LEGACY, begin_v2, mode, NULL, NULL, NULL, 0)
}
XPU_EXPORT CUresult CUDAAPI cuStreamBeginCapture_v2_ptsz(CUstream s, CUstreamCaptureMode mode)
{
    BEGIN_CAPTURE(cuStreamBeginCapture_v2_ptsz, &OPS_PTSZ, begin_v2, mode, NULL, NULL, NULL, 0)
}
XPU_EXPORT CUresult CUDAAPI cuStreamBeginCaptureToGraph(CUstream s, CUgraph g, const CUgraphNode *deps,
                                                        const CUgraphEdgeData *data, size_t n, CUstreamCaptureMode mode)
{
    BEGIN_CAPTURE(cuStreamBeginCaptureToGraph, &OPS_LEGACY, begin_to_graph, mode, g, deps, data, n)
}
XPU_EXPORT CUresult CUDAAPI cuStreamBeginCaptureToGraph_ptsz(CUstream s, CUgraph g, const CUgraphNode *deps,
                                                             const CUgraphEdgeData *data, size_t n,
                                                             CUstreamCaptureMode mode)
{
    BEGIN_CAPTURE(cuStreamBeginCaptureToGraph_ptsz, &OPS_PTSZ, begin_to_graph, mode, g, deps, data, n)
}
static CUresult capture_end(__typeof__(&cuStreamEndCapture) f, CUstream s, CUgraph *g)
{
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(s, g);
    /* an invalidated capture has ended too */
    if ((rc == CUDA_SUCCESS || rc == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED) && xpu_core()->status == XPU_REGION_OK)
        xpu_capture_end();
    return rc;
}
XPU_EXPORT CUresult CUDAAPI cuStreamEndCapture(CUstream s, CUgraph *g) { return capture_end(REAL(cuStreamEndCapture), s, g); }
XPU_EXPORT CUresult CUDAAPI cuStreamEndCapture_ptsz(CUstream s, CUgraph *g)
{
    return capture_end(REAL(cuStreamEndCapture_ptsz), s, g);
}

/* the graph a capturing stream records into, or NULL when it is not capturing */
static CUgraph capture_graph_of(CUstream s, int ptsz)
{
    if (!xpu_captures_possible())
        return NULL;
    __typeof__(&cuStreamGetCaptureInfo_v2) f = ptsz ? REAL(cuStreamGetCaptureInfo_v2_ptsz) : NULL;
    if (!f)
        f = REAL(cuStreamGetCaptureInfo_v2);
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    CUgraph g = NULL;
    if (!f || f(s, &st, NULL, &g, NULL, NULL) != CUDA_SUCCESS || st != CU_STREAM_CAPTURE_STATUS_ACTIVE)
        return NULL;
    return g;
}

/* ------------------------------------------------------------------ resolver */

const struct xpu_hook xpu_cuda_hooks[] = {
#define HOOK_ENTRY(n) {#n, (void *)n, &R_##n},
    HOOKED(HOOK_ENTRY)
};
const size_t xpu_cuda_nhooks = sizeof xpu_cuda_hooks / sizeof xpu_cuda_hooks[0];

static _Atomic uint64_t g_resolver_swaps, g_resolver_misses;

/* if p is the real address of a hooked export, return our wrapper */
static void *substitute(const char *symbol, void *p)
{
    if (!p)
        return p;
    /* the table must be complete even if a dlsym() lookup pre-filled this resolver's slot */
    pthread_once(&g_cuda_once, cuda_init);
    for (size_t i = 0; i < xpu_cuda_nhooks; i++) {
        if (__atomic_load_n(xpu_cuda_hooks[i].real, __ATOMIC_ACQUIRE) == p) {
            atomic_fetch_add_explicit(&g_resolver_swaps, 1, memory_order_relaxed);
            return xpu_cuda_hooks[i].wrapper;
        }
    }
    /* pre-3.2 entry points with 32-bit sizes pass through on purpose (docs/isolation.md) */
    static const char *const legacy[] = {"cuMemAlloc", "cuMemAllocPitch", "cuMemFree", "cuMemGetInfo",
                                         "cuDeviceTotalMem", "cuArrayCreate", "cuArray3DCreate"};
    for (size_t i = 0; i < sizeof legacy / sizeof legacy[0]; i++)
        if (strcmp(symbol, legacy[i]) == 0 && g_cuda && xpu_real_dlsym(g_cuda, legacy[i]) == p)
            return p;
    /* a symbol of a hooked family the driver resolved to an address we do not know */
    size_t sl = strlen(symbol);
    for (size_t i = 0; i < xpu_cuda_nhooks; i++) {
        const char *hn = xpu_cuda_hooks[i].name;
        if (strncmp(hn, symbol, sl) == 0 && (hn[sl] == 0 || hn[sl] == '_')) {
            atomic_fetch_add_explicit(&g_resolver_misses, 1, memory_order_relaxed);
            xpu_log_once(10, "cuGetProcAddress returned an unknown address for hooked symbol", symbol);
            break;
        }
    }
    return p;
}

XPU_EXPORT CUresult CUDAAPI cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                                cuuint64_t flags, CUdriverProcAddressQueryResult *status)
{
    __typeof__(&cuGetProcAddress_v2) f = REAL(cuGetProcAddress_v2);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(symbol, pfn, cudaVersion, flags, status);
    if (rc == CUDA_SUCCESS && pfn && symbol)
        *pfn = substitute(symbol, *pfn);
    return rc;
}

XPU_EXPORT CUresult CUDAAPI cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    __typeof__(&cuGetProcAddress) f = REAL(cuGetProcAddress);
    if (!f)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = f(symbol, pfn, cudaVersion, flags);
    if (rc == CUDA_SUCCESS && pfn && symbol)
        *pfn = substitute(symbol, *pfn);
    return rc;
}

/* test/diagnostic hook: counters of the resolver (not part of the CUDA API) */
XPU_EXPORT void xpushim_resolver_stats(uint64_t *swaps, uint64_t *misses)
{
    *swaps = atomic_load(&g_resolver_swaps);
    *misses = atomic_load(&g_resolver_misses);
}

/* fork child: cached ordinals stay valid, but mutexes another thread held at fork time and
 * the graph-memory charges of the parent's contexts must not leak into the child */
void xpu_cuda_fork_child(void)
{
    pthread_mutex_init(&g_pool_mu, NULL);
    pthread_mutex_init(&g_graph_mu, NULL);
    memset(g_graph_charged, 0, sizeof g_graph_charged);
}
