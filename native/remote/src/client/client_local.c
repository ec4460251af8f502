/*
 * Entry points answered on the client: versions, error strings, the session's device (from
 * WELCOME), per-thread contexts, pinned host memory (the tenant's own RAM), stream properties,
 * function names and parameter layouts. No round trip.
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client.h"
#include "cudacompat.h"
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

/* names and descriptions come from cuda.h, once for both libcuda replacements (cudacompat) */
CUresult xpur_l_cuGetErrorString(CUresult e, const char **s) { return cudacompat_error_string(e, s); }
CUresult xpur_l_cuGetErrorName(CUresult e, const char **s) { return cudacompat_error_name(e, s); }

CUresult xpur_l_cuProfilerStart(void) { return xpur_ready(); }
CUresult xpur_l_cuProfilerStop(void) { return xpur_ready(); }

/* ------------------------------------------------------------------ symbol resolution
 * cudart's versioned (name, cudaVersion, flags) queries and its private export tables are answered
 * by cudacompat (shared with the fake driver), resolving to this library's own exports. */

CUresult xpur_l_cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *st)
{
    return cudacompat_get_proc_address(sym, pfn, ver, flags, st);
}

CUresult xpur_l_cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags)
{
    return cudacompat_get_proc_address(sym, pfn, ver, flags, NULL);
}

CUresult xpur_l_cuGetExportTable(const void **table, const CUuuid *id) { return cudacompat_get_export_table(table, id); }

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
    if (m == MAP_FAILED) /* already mapped (ours, or the client's own memory) or refused: nothing to do */
        return;
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

static CUmoduleLoadingMode g_loading_mode = CU_MODULE_LAZY_LOADING;
static pthread_once_t g_loading_once = PTHREAD_ONCE_INIT;

static void loading_mode_init(void)
{
    const char *v = getenv("CUDA_MODULE_LOADING"); /* read once, as the driver does */
    if (v && strcmp(v, "EAGER") == 0)
        g_loading_mode = CU_MODULE_EAGER_LOADING;
}

/* Lazy unless the application asks for eager, as the driver (12.2+) answers. It matters: with
 * eager loading the runtime loads every fatbin of every library at start-up (198 cuBLAS images,
 * each sent to the server), with lazy loading only those whose kernels are used. */
CUresult xpur_l_cuModuleGetLoadingMode(CUmoduleLoadingMode *mode)
{
    if (!mode)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_once(&g_loading_once, loading_mode_init);
    *mode = g_loading_mode;
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
