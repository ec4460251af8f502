/*
 * TEST DOUBLE — fake libcuda.so.1 for CPU-only CI. NOT a CUDA driver.
 *
 * Implements just enough of the driver API for the xpushim tests: fake device pointers,
 * a per-process device memory budget, stream-ordered pools with "reserved" bytes, VMM
 * handles, arrays, graphs with memory nodes, and a simulated GPU timeline: a kernel's
 * duration in microseconds is its gridDimX; events complete when the simulated timeline
 * passes them (CLOCK_MONOTONIC). cuGetProcAddress(_v2) resolves base name + version +
 * flags from a built-in table (per-thread-stream variants for flags == 2).
 * Call counters are exported (fake_cuda_calls) so tests can prove which export ran.
 * The files listed in fake_cuda_internal.h complete it for the real libcudart (cudacompat answers
 * cuGetProcAddress/cuGetExportTable; device memory is real host memory; contexts; streams).
 */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cuda.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cudacompat.h"
#include "fake_cuda_internal.h"

#undef cuGetProcAddress
#undef cuMemAlloc
#define EXPORT __attribute__((visibility("default")))

/* ---------------------------------------------------------------- counters */
#define MAXC 512 /* cudart-compat: the runtime reaches a few hundred entry points */
static struct { _Atomic(const char *) name; _Atomic long n; } g_calls[MAXC];
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static void count(const char *name)
{
    for (int i = 0; i < MAXC; i++) {
        const char *n = atomic_load_explicit(&g_calls[i].name, memory_order_acquire);
        if (!n)
            break;
        if (n == name || strcmp(n, name) == 0) {
            atomic_fetch_add(&g_calls[i].n, 1);
            return;
        }
    }
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAXC; i++) {
        const char *n = atomic_load_explicit(&g_calls[i].name, memory_order_acquire);
        if (n && (n == name || strcmp(n, name) == 0)) {
            atomic_fetch_add(&g_calls[i].n, 1);
            break;
        }
        if (!n) {
            atomic_fetch_add(&g_calls[i].n, 1);
            atomic_store_explicit(&g_calls[i].name, name, memory_order_release);
            break;
        }
    }
    pthread_mutex_unlock(&g_mu);
}
#define COUNT() count(__func__)
void fake_cuda_count(const char *name) { count(name); } /* cudart-compat: for the other fake_cuda_*.c */

EXPORT long fake_cuda_calls(const char *name)
{
    for (int i = 0; i < MAXC; i++) {
        const char *n = atomic_load_explicit(&g_calls[i].name, memory_order_acquire);
        if (n && strcmp(n, name) == 0)
            return atomic_load(&g_calls[i].n);
    }
    return 0;
}

/* ---------------------------------------------------------------- simulated device */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define GIB (1024ull * 1024 * 1024)
static uint64_t g_total = 16 * GIB; /* physical memory of each fake device */
static _Atomic uint64_t g_phys_used;
static _Atomic uint64_t g_busy_until;  /* simulated GPU timeline */
static _Atomic uint64_t g_busy_total;  /* sum of kernel durations */

EXPORT uint64_t fake_cuda_busy_ns(void) { return atomic_load(&g_busy_total); }
EXPORT uint64_t fake_cuda_phys_used(void) { return atomic_load(&g_phys_used); }

static int phys_alloc(uint64_t b)
{
    uint64_t cur = atomic_load(&g_phys_used);
    do {
        if (cur + b > g_total)
            return -1;
    } while (!atomic_compare_exchange_weak(&g_phys_used, &cur, cur + b));
    return 0;
}
static void phys_free(uint64_t b) { atomic_fetch_sub(&g_phys_used, b); }
/* cudart-compat: device memory is real host memory (fake_cuda_memory.c), released in al_take */
static uint64_t new_ptr(uint64_t b) { return fake_devmem_map(b); }

/* tiny map of live allocations: ptr -> size */
#define MAXA 4096
static struct { uint64_t k; uint64_t sz; int kind; } g_al[MAXA];
static void al_put(uint64_t k, uint64_t sz, int kind)
{
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAXA; i++)
        if (!g_al[i].k) {
            g_al[i].k = k;
            g_al[i].sz = sz;
            g_al[i].kind = kind;
            break;
        }
    pthread_mutex_unlock(&g_mu);
}
static int al_take(uint64_t k, uint64_t *sz, int *kind)
{
    int f = 0;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAXA; i++)
        if (g_al[i].k == k) {
            *sz = g_al[i].sz;
            if (kind)
                *kind = g_al[i].kind;
            g_al[i].k = 0;
            f = 1;
            break;
        }
    pthread_mutex_unlock(&g_mu);
    if (f)
        fake_devmem_unmap(k); /* cudart-compat */
    return f;
}

static void launch_sim(unsigned gx)
{
    uint64_t dur = (uint64_t)gx * 1000ull; /* gridDimX microseconds */
    uint64_t n = now_ns();
    uint64_t cur = atomic_load(&g_busy_until);
    for (;;) {
        uint64_t start = cur > n ? cur : n;
        if (atomic_compare_exchange_weak(&g_busy_until, &cur, start + dur))
            break;
    }
    atomic_fetch_add(&g_busy_total, dur);
}

/* ---------------------------------------------------------------- init / device */
EXPORT CUresult cuInit(unsigned int f)
{
    (void)f;
    COUNT();
    const char *t = getenv("FAKE_CUDA_TOTAL_MIB"); /* test double: env read at init only */
    if (t)
        g_total = strtoull(t, NULL, 10) * 1024ull * 1024ull;
    return CUDA_SUCCESS;
}
/* cudart-compat: versions, devices (fake_cuda_device.c) and contexts (fake_cuda_context.c) moved
 * out; t_cur is the current context's device */
#define t_cur fake_cuda_current_device()
EXPORT CUresult cuDeviceTotalMem_v2(size_t *b, CUdevice d) { (void)d; COUNT(); *b = g_total; return CUDA_SUCCESS; }
EXPORT CUresult cuMemGetInfo_v2(size_t *f, size_t *t)
{
    COUNT();
    *t = g_total;
    *f = g_total - atomic_load(&g_phys_used);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGetExportTable(const void **t, const CUuuid *id) { return cudacompat_get_export_table(t, id); }

/* ---------------------------------------------------------------- classic allocations */
EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t b)
{
    COUNT();
    if (phys_alloc(b))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *p = new_ptr(b);
    al_put(*p, b, 1);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAlloc(unsigned int *p, unsigned int b) /* legacy v1 (pre-3.2) */
{
    COUNT();
    (void)b;
    *p = 0x1000;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned int e)
{
    (void)e;
    COUNT();
    *pitch = (w + 511u) & ~(size_t)511u;
    uint64_t b = (uint64_t)*pitch * h;
    if (phys_alloc(b))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *p = new_ptr(b);
    al_put(*p, b, 1);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAllocManaged(CUdeviceptr *p, size_t b, unsigned int f)
{
    (void)f;
    COUNT();
    if (phys_alloc(b))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *p = new_ptr(b);
    al_put(*p, b, 1);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemFree_v2(CUdeviceptr p)
{
    COUNT();
    uint64_t b;
    if (!al_take(p, &b, NULL))
        return CUDA_ERROR_INVALID_VALUE;
    phys_free(b);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemHostAlloc(void **p, size_t b, unsigned int f) { (void)f; COUNT(); *p = malloc(b ? b : 1); fake_hostmem_register(*p, b); return CUDA_SUCCESS; }
/* cudart-compat: pinned memory is registered (async copy rules); a foreign pointer is refused */
EXPORT CUresult cuMemFreeHost(void *p) { COUNT(); if (!fake_hostmem_unregister(p)) return CUDA_ERROR_INVALID_VALUE; free(p); return CUDA_SUCCESS; }

/* ---------------------------------------------------------------- pools */
struct fpool { uint64_t reserved, in_use; int dev; };
static struct fpool g_default_pool[2] = {{0, 0, 0}, {0, 0, 1}};
#define POOL_GRAN (2ull * 1024 * 1024)

EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool *p, CUdevice d) { *p = (CUmemoryPool)&g_default_pool[d & 1]; return CUDA_SUCCESS; }
EXPORT CUresult cuMemPoolCreate(CUmemoryPool *p, const CUmemPoolProps *props)
{
    COUNT();
    struct fpool *fp = calloc(1, sizeof *fp);
    fp->dev = props ? props->location.id : 0;
    *p = (CUmemoryPool)fp;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPoolDestroy(CUmemoryPool p)
{
    COUNT();
    struct fpool *fp = (struct fpool *)p;
    phys_free(fp->reserved);
    if (fp != &g_default_pool[0] && fp != &g_default_pool[1])
        free(fp);
    return CUDA_SUCCESS;
}
static CUresult pool_alloc(struct fpool *fp, CUdeviceptr *p, size_t b)
{
    pthread_mutex_lock(&g_mu);
    if (fp->in_use + b > fp->reserved) {
        uint64_t grow = (fp->in_use + b - fp->reserved + POOL_GRAN - 1) / POOL_GRAN * POOL_GRAN;
        if (phys_alloc(grow)) {
            pthread_mutex_unlock(&g_mu);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        fp->reserved += grow;
    }
    fp->in_use += b;
    pthread_mutex_unlock(&g_mu);
    *p = new_ptr(b);
    al_put(*p, b, 2);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t b, CUstream s) { (void)s; COUNT(); return pool_alloc(&g_default_pool[t_cur & 1], p, b); }
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t b, CUstream s) { (void)s; COUNT(); return pool_alloc(&g_default_pool[t_cur & 1], p, b); }
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *p, size_t b, CUmemoryPool pool, CUstream s) { (void)s; COUNT(); return pool_alloc((struct fpool *)pool, p, b); }
EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *p, size_t b, CUmemoryPool pool, CUstream s) { (void)s; COUNT(); return pool_alloc((struct fpool *)pool, p, b); }
static CUresult free_async(CUdeviceptr p)
{
    uint64_t b;
    int kind;
    if (!al_take(p, &b, &kind))
        return CUDA_ERROR_INVALID_VALUE;
    if (kind == 1) {
        phys_free(b);
        return CUDA_SUCCESS;
    }
    /* the fake only tracks default-pool usage precisely; good enough for the tests */
    pthread_mutex_lock(&g_mu);
    struct fpool *fp = &g_default_pool[t_cur & 1];
    fp->in_use = fp->in_use >= b ? fp->in_use - b : 0;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { (void)s; COUNT(); return free_async(p); }
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { (void)s; COUNT(); return free_async(p); }
EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool p, size_t keep)
{
    COUNT();
    struct fpool *fp = (struct fpool *)p;
    pthread_mutex_lock(&g_mu);
    uint64_t target = fp->in_use > keep ? fp->in_use : keep;
    target = (target + POOL_GRAN - 1) / POOL_GRAN * POOL_GRAN;
    if (target < fp->reserved) {
        phys_free(fp->reserved - target);
        fp->reserved = target;
    }
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool p, CUmemPool_attribute a, void *v)
{
    struct fpool *fp = (struct fpool *)p;
    if (a == CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT) {
        *(cuuint64_t *)v = fp->reserved;
        return CUDA_SUCCESS;
    }
    if (a == CU_MEMPOOL_ATTR_USED_MEM_CURRENT) {
        *(cuuint64_t *)v = fp->in_use;
        return CUDA_SUCCESS;
    }
    return CUDA_ERROR_INVALID_VALUE;
}

/* ---------------------------------------------------------------- VMM */
EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t b, const CUmemAllocationProp *prop,
                            unsigned long long f)
{
    (void)f;
    (void)prop;
    COUNT();
    if (phys_alloc(b))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *h = new_ptr(b);
    al_put(*h, b, 3);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h)
{
    COUNT();
    uint64_t b;
    if (!al_take(h, &b, NULL))
        return CUDA_ERROR_INVALID_VALUE;
    phys_free(b);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- arrays */
static CUresult arr(void **h, uint64_t b)
{
    if (phys_alloc(b))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *h = (void *)(uintptr_t)new_ptr(b);
    al_put((uint64_t)(uintptr_t)*h, b, 4);
    return CUDA_SUCCESS;
}
static CUresult arr_free(void *h)
{
    uint64_t b;
    if (!al_take((uint64_t)(uintptr_t)h, &b, NULL))
        return CUDA_ERROR_INVALID_HANDLE;
    phys_free(b);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuArrayCreate_v2(CUarray *h, const CUDA_ARRAY_DESCRIPTOR *d) { COUNT(); return arr((void **)h, (uint64_t)d->Width * (d->Height ? d->Height : 1) * d->NumChannels * 4); }
EXPORT CUresult cuArray3DCreate_v2(CUarray *h, const CUDA_ARRAY3D_DESCRIPTOR *d) { COUNT(); return arr((void **)h, (uint64_t)d->Width * (d->Height ? d->Height : 1) * (d->Depth ? d->Depth : 1) * d->NumChannels * 4); }
EXPORT CUresult cuArrayDestroy(CUarray h) { COUNT(); return arr_free(h); }
EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *h, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int l) { (void)l; COUNT(); return arr((void **)h, (uint64_t)d->Width * (d->Height ? d->Height : 1) * d->NumChannels * 8); }
EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray h) { COUNT(); return arr_free(h); }

/* ---------------------------------------------------------------- graphs */
struct fgraph { uint64_t mem; };
struct fexec { uint64_t mem; };
static uint64_t g_graph_reserved;
EXPORT CUresult cuGraphCreate(CUgraph *g, unsigned int f) { (void)f; *g = (CUgraph)calloc(1, sizeof(struct fgraph)); return CUDA_SUCCESS; }
EXPORT CUresult cuGraphDestroy(CUgraph g) { COUNT(); free(g); return CUDA_SUCCESS; }
EXPORT CUresult cuGraphAddMemAllocNode(CUgraphNode *n, CUgraph g, const CUgraphNode *d, size_t nd,
                                       CUDA_MEM_ALLOC_NODE_PARAMS *p)
{
    (void)d;
    (void)nd;
    COUNT();
    ((struct fgraph *)g)->mem += p->bytesize;
    p->dptr = new_ptr(p->bytesize);
    *n = (CUgraphNode)(uintptr_t)0x1;
    return CUDA_SUCCESS;
}
static CUresult inst(CUgraphExec *e, CUgraph g)
{
    struct fexec *x = calloc(1, sizeof *x);
    x->mem = ((struct fgraph *)g)->mem;
    *e = (CUgraphExec)x;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long f) { (void)f; COUNT(); return inst(e, g); }
EXPORT CUresult cuGraphInstantiate_v2(CUgraphExec *e, CUgraph g, CUgraphNode *en, char *l, size_t n) { (void)en; (void)l; (void)n; COUNT(); return inst(e, g); }
EXPORT CUresult cuGraphInstantiateWithParams(CUgraphExec *e, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p) { (void)p; COUNT(); return inst(e, g); }
EXPORT CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *e, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p) { (void)p; COUNT(); return inst(e, g); }
EXPORT CUresult cuGraphExecDestroy(CUgraphExec e) { COUNT(); free(e); return CUDA_SUCCESS; }
static CUresult graph_mem(CUgraphExec e)
{
    struct fexec *x = (struct fexec *)e;
    pthread_mutex_lock(&g_mu);
    if (x->mem > g_graph_reserved) {
        if (phys_alloc(x->mem - g_graph_reserved)) {
            pthread_mutex_unlock(&g_mu);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        g_graph_reserved = x->mem;
    }
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphUpload(CUgraphExec e, CUstream s) { (void)s; COUNT(); return graph_mem(e); }
EXPORT CUresult cuGraphUpload_ptsz(CUgraphExec e, CUstream s) { (void)s; COUNT(); return graph_mem(e); }
EXPORT CUresult cuGraphLaunch(CUgraphExec e, CUstream s) { (void)s; COUNT(); launch_sim(100); return graph_mem(e); }
EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec e, CUstream s) { (void)s; COUNT(); launch_sim(100); return graph_mem(e); }
EXPORT CUresult cuDeviceGraphMemTrim(CUdevice d)
{
    (void)d;
    COUNT();
    pthread_mutex_lock(&g_mu);
    phys_free(g_graph_reserved);
    g_graph_reserved = 0;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetGraphMemAttribute(CUdevice d, CUgraphMem_attribute a, void *v)
{
    (void)d;
    if (a != CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT && a != CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT)
        return CUDA_ERROR_INVALID_VALUE;
    *(cuuint64_t *)v = g_graph_reserved;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- launches */
/* hook (remote): CPU reference kernels by name, native/testdoubles/fake_cuda_kernels.c */
int fake_cuda_reference_kernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                               unsigned bz, CUstream s, int per_thread, void **params, void **extra, CUresult *rc);
EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int shm, CUstream s, void **p, void **x)
{
    CUresult krc; /* hook (remote) */
    if (fake_cuda_reference_kernel(f, gx, gy, gz, bx, by, bz, s, 0, p, x, &krc))
        return krc;
    (void)f; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)s; (void)p; (void)x;
    COUNT();
    launch_sim(gx);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int shm, CUstream s, void **p, void **x)
{
    CUresult krc; /* hook (remote) */
    if (fake_cuda_reference_kernel(f, gx, gy, gz, bx, by, bz, s, 1, p, x, &krc))
        return krc;
    (void)f; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)s; (void)p; (void)x;
    COUNT();
    launch_sim(gx);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **p, void **x) { (void)f; (void)p; (void)x; COUNT(); launch_sim(c->gridDimX); return CUDA_SUCCESS; }
EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **p, void **x) { (void)f; (void)p; (void)x; COUNT(); launch_sim(c->gridDimX); return CUDA_SUCCESS; }
EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                          unsigned int by, unsigned int bz, unsigned int shm, CUstream s, void **p)
{
    (void)f; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)s; (void)p;
    COUNT();
    launch_sim(gx);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                               unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm,
                                               CUstream s, void **p)
{
    (void)f; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)s; (void)p;
    COUNT();
    launch_sim(gx);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuLaunchCooperativeKernelMultiDevice(CUDA_LAUNCH_PARAMS *l, unsigned int n, unsigned int f) { (void)f; COUNT(); for (unsigned i = 0; i < n; i++) launch_sim(l[i].gridDimX); return CUDA_SUCCESS; }
EXPORT CUresult cuLaunch(CUfunction f) { (void)f; COUNT(); launch_sim(1); return CUDA_SUCCESS; }
EXPORT CUresult cuLaunchGrid(CUfunction f, int w, int h) { (void)f; (void)h; COUNT(); launch_sim((unsigned)w); return CUDA_SUCCESS; }
EXPORT CUresult cuLaunchGridAsync(CUfunction f, int w, int h, CUstream s) { (void)f; (void)h; (void)s; COUNT(); launch_sim((unsigned)w); return CUDA_SUCCESS; }

/* ---------------------------------------------------------------- events (simulated timeline) */
struct fevent { uint64_t ts; int recorded; };
EXPORT CUresult cuEventCreate(CUevent *e, unsigned int f) { (void)f; COUNT(); *e = (CUevent)calloc(1, sizeof(struct fevent)); return CUDA_SUCCESS; }
EXPORT CUresult cuEventDestroy_v2(CUevent e) { free(e); return CUDA_SUCCESS; }
static CUresult rec(CUevent e)
{
    struct fevent *ev = (struct fevent *)e;
    uint64_t n = now_ns(), b = atomic_load(&g_busy_until);
    ev->ts = b > n ? b : n;
    ev->recorded = 1;
    return CUDA_SUCCESS;
}
/* cudart-compat: an event completes after the copies queued before it (fake_cuda_stream.c) */
EXPORT CUresult cuEventRecord(CUevent e, CUstream s) { COUNT(); CUresult rc = fake_stream_drain(s); return rc ? rc : rec(e); }
EXPORT CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { COUNT(); CUresult rc = fake_stream_drain(s ? s : CU_STREAM_PER_THREAD); return rc ? rc : rec(e); }
EXPORT CUresult cuEventQuery(CUevent e)
{
    struct fevent *ev = (struct fevent *)e;
    return now_ns() >= ev->ts ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
EXPORT CUresult cuEventSynchronize(CUevent e)
{
    COUNT();
    struct fevent *ev = (struct fevent *)e;
    uint64_t n = now_ns();
    if (ev->ts > n) {
        struct timespec ts = {(time_t)((ev->ts - n) / 1000000000ull), (long)((ev->ts - n) % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventElapsedTime(float *ms, CUevent a, CUevent b)
{
    struct fevent *x = (struct fevent *)a, *y = (struct fevent *)b;
    if (!x->recorded || !y->recorded)
        return CUDA_ERROR_INVALID_HANDLE;
    *ms = (float)((double)((int64_t)(y->ts - x->ts)) / 1e6);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventElapsedTime_v2(float *ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }
static CUresult stream_sync(void)
{
    struct fevent e;
    rec((CUevent)&e);
    uint64_t n = now_ns();
    if (e.ts > n) {
        struct timespec ts = {(time_t)((e.ts - n) / 1000000000ull), (long)((e.ts - n) % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
    return CUDA_SUCCESS;
}
/* cudart-compat: the stream's queued copies first (fake_cuda_stream.c) */
EXPORT CUresult cuStreamSynchronize(CUstream s) { COUNT(); CUresult rc = fake_stream_drain(s); return rc ? rc : stream_sync(); }
EXPORT CUresult cuStreamSynchronize_ptsz(CUstream s) { COUNT(); CUresult rc = fake_stream_drain(s ? s : CU_STREAM_PER_THREAD); return rc ? rc : stream_sync(); }
EXPORT CUresult cuCtxSynchronize(void) { COUNT(); fake_stream_drain_all(); return stream_sync(); }

/* ---------------------------------------------------------------- resolver
 * cudart-compat: (symbol, version, flags) -> export is native/cudacompat's (the version ladder
 * generated from cudaTypedefs.h); the double's exports are listed by fake_exports.c */
EXPORT CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *st);
EXPORT CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags);

/* test-double helper: the fake's own address of an export (linked -Bsymbolic, so this is
 * never an interposed wrapper) */
EXPORT void *fake_cuda_raw(const char *name) { return fake_cuda_export(name); }

static _Atomic long g_last_version, g_last_flags;
EXPORT long fake_cuda_last_gpa_version(void) { return atomic_load(&g_last_version); }
EXPORT long fake_cuda_last_gpa_flags(void) { return atomic_load(&g_last_flags); }

EXPORT CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *st)
{
    COUNT();
    atomic_store(&g_last_version, ver);
    atomic_store(&g_last_flags, (long)flags);
    return cudacompat_get_proc_address(sym, pfn, ver, flags, st);
}
EXPORT CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags)
{
    COUNT();
    atomic_store(&g_last_version, ver);
    atomic_store(&g_last_flags, (long)flags);
    return cudacompat_get_proc_address(sym, pfn, ver, flags, NULL);
}
