/*
 * TEST DOUBLE — fake libcuda.so.1 for CPU-only CI. NOT a CUDA driver.
 *
 * Just enough of the driver API for the xpushim tests, STRICT about the CUDA rules the shim
 * relies on (each rule below is quoted from cuda.h / the CUDA programming guide, and the
 * double fails the way the real driver documents when it is broken):
 *
 *  - Streams have their own timelines. A kernel's duration in microseconds is its gridDimX.
 *    By default kernels of different streams run concurrently; FAKE_CUDA_SERIAL=1 makes the
 *    device run one kernel at a time (kernels that fill the GPU). The legacy default stream
 *    (NULL / CU_STREAM_LEGACY) synchronises with blocking streams; per-thread default
 *    streams (CU_STREAM_PER_THREAD, NULL through _ptsz entry points) are one per thread.
 *    fake_cuda_busy_ns() is the device's busy time: the union of all kernel intervals.
 *  - Events complete when the work before them on their stream completes;
 *    cuEventElapsedTime returns CUDA_ERROR_NOT_READY until both completed, may be negative
 *    for events of different streams, and refuses CU_EVENT_DISABLE_TIMING events.
 *  - Stream capture: work on a capturing stream is recorded into the capture's graph, not
 *    executed. Querying or synchronising an event last recorded in a capture returns
 *    CUDA_ERROR_CAPTURED_EVENT and invalidates that capture; synchronising or querying a
 *    capturing stream returns CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates it;
 *    "potentially unsafe" calls (event/stream query and synchronize, context synchronize,
 *    cuMemAlloc/cuMemFree) from a thread whose capture mode is GLOBAL while another thread
 *    has a GLOBAL capture, or from a thread with its own non-RELAXED capture, return
 *    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidate the conflicting captures;
 *    cuThreadExchangeStreamCaptureMode(RELAXED) lifts that. cuStreamEndCapture of an
 *    invalidated capture returns CUDA_ERROR_STREAM_CAPTURE_INVALIDATED.
 *    cuMemAllocAsync on a capturing stream adds a memory-allocation node (the memory comes
 *    from the graph memory pool when the graph runs), it does not touch the stream's pool.
 *  - Stream-ordered pools keep freed memory reserved, and release what exceeds
 *    max(used, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD) (default 0) at cuStreamSynchronize,
 *    cuEventSynchronize and cuCtxSynchronize.
 *  - VMM: "The memory allocation will be freed when all outstanding mappings to the memory
 *    are unmapped and when all outstanding references to the handle are also released"
 *    (cuMemRelease). cuMemMap needs a reserved, unmapped VA range and a live handle.
 *  - Graphs: kernel and memory nodes (cuGraphAddNode, cuGraphAddKernelNode,
 *    cuGraphAddMemAllocNode, stream capture); graph memory is reserved in a per-device graph
 *    pool when an executable graph is uploaded or launched and kept until
 *    cuDeviceGraphMemTrim.
 *
 * cuGetProcAddress(_v2) resolves base name + version + flags (per-thread-stream variants for
 * flags == 2) over the library's own exports, so symbols added in other fake_cuda_*.c files
 * of this library resolve too. Call counters are exported (fake_cuda_calls) so tests can
 * prove which export ran; fake_cuda_capture_invalidations() counts captures this double
 * invalidated.
 * cudart-compat: the files listed in fake_cuda_internal.h complete it for the real libcudart
 * (cudacompat answers cuGetProcAddress/cuGetExportTable; device memory is real host memory;
 * contexts; copies and memsets in stream order).
 */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cuda.h>
#include <dlfcn.h>
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
#undef cuStreamBeginCapture
#undef cuStreamGetCaptureInfo
#undef cuGraphInstantiate
#define EXPORT __attribute__((visibility("default")))
/* start-up entry points another fake_cuda_*.c file may define fully (the real runtime's
 * bootstrap): ours are weak, so the fuller definition wins at link time */
#define WEAK_EXPORT EXPORT __attribute__((weak))

/* ---------------------------------------------------------------- counters */
#define MAXC 512 /* cudart-compat: the runtime reaches a few hundred entry points */
static struct { _Atomic(const char *) name; _Atomic long n; } g_calls[MAXC];
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER; /* memory tables, pools, graphs */

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
    static pthread_mutex_t cmu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&cmu);
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
    pthread_mutex_unlock(&cmu);
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

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
    uint64_t n = now_ns();
    if (t > n) {
        struct timespec ts = {(time_t)((t - n) / 1000000000ull), (long)((t - n) % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
}

static int g_serial = -1; /* FAKE_CUDA_SERIAL, read at cuInit */

/* ---------------------------------------------------------------- streams and the timeline */
#define STREAM_MAGIC 0x53545245u
struct fstream {
    uint32_t magic;
    unsigned flags;            /* CU_STREAM_NON_BLOCKING */
    int legacy;                /* the legacy default stream */
    _Atomic uint64_t end;      /* when its last submitted kernel ends */
    _Atomic uint64_t cap_id;   /* capture it belongs to, 0 = none */
};
static struct fstream g_legacy = {STREAM_MAGIC, 0, 1, 0, 0};
static _Thread_local struct fstream t_ptds = {STREAM_MAGIC, 0, 0, 0, 0};

static struct fstream *stream_of(CUstream h, int ptsz)
{
    if (h == NULL)
        return ptsz ? &t_ptds : &g_legacy;
    if (h == CU_STREAM_LEGACY)
        return &g_legacy;
    if (h == CU_STREAM_PER_THREAD)
        return &t_ptds;
    struct fstream *s = (struct fstream *)h;
    return s->magic == STREAM_MAGIC ? s : NULL;
}
static int blocking(const struct fstream *s) { return !s->legacy && !(s->flags & CU_STREAM_NON_BLOCKING); }

static atomic_flag g_tl = ATOMIC_FLAG_INIT;   /* timeline spin lock */
static uint64_t g_blocking_end;               /* latest end over blocking streams */
static uint64_t g_device_end;                 /* latest end over all streams */
#define NIV 64
static struct { uint64_t s, e; } g_iv[NIV];   /* pending busy intervals (disjoint, sorted) */
static unsigned g_niv;
static uint64_t g_busy_final;                 /* union length of intervals that ended */

static void tl_lock(void) { while (atomic_flag_test_and_set_explicit(&g_tl, memory_order_acquire)) {} }
static void tl_unlock(void) { atomic_flag_clear_explicit(&g_tl, memory_order_release); }

/* adds [s, e) to the busy union; finalises intervals that ended before now (every future
 * kernel starts at or after its submission time) */
static void busy_add(uint64_t s, uint64_t e, uint64_t now)
{
    unsigned w = 0;
    for (unsigned i = 0; i < g_niv; i++) {
        if (g_iv[i].e <= now && g_iv[i].e < s) {
            g_busy_final += g_iv[i].e - g_iv[i].s;
            continue;
        }
        g_iv[w++] = g_iv[i];
    }
    g_niv = w;
    /* merge [s, e) into the sorted disjoint list */
    unsigned i = 0;
    while (i < g_niv && g_iv[i].e < s)
        i++;
    unsigned j = i;
    while (j < g_niv && g_iv[j].s <= e) {
        if (g_iv[j].s < s)
            s = g_iv[j].s;
        if (g_iv[j].e > e)
            e = g_iv[j].e;
        j++;
    }
    if (j == i && g_niv == NIV) { /* full: fold the oldest into the final sum */
        g_busy_final += g_iv[0].e - g_iv[0].s;
        memmove(&g_iv[0], &g_iv[1], (NIV - 1) * sizeof g_iv[0]);
        g_niv--;
        if (i > 0)
            i--, j--;
    }
    memmove(&g_iv[i + 1], &g_iv[j], (g_niv - j) * sizeof g_iv[0]);
    g_iv[i].s = s;
    g_iv[i].e = e;
    g_niv = g_niv - (j - i) + 1;
}

/* busy time so far: the union of kernel intervals, up to now */
EXPORT uint64_t fake_cuda_busy_ns(void)
{
    uint64_t n = now_ns();
    tl_lock();
    uint64_t b = g_busy_final;
    for (unsigned i = 0; i < g_niv; i++)
        if (g_iv[i].s < n)
            b += (g_iv[i].e < n ? g_iv[i].e : n) - g_iv[i].s;
    tl_unlock();
    return b;
}

/* time at which work submitted now on s could start (must hold g_tl) */
static uint64_t ready_locked(const struct fstream *s, uint64_t now)
{
    uint64_t t = atomic_load_explicit(&s->end, memory_order_relaxed);
    if (t < now)
        t = now;
    if (s->legacy && g_blocking_end > t)
        t = g_blocking_end;
    if (blocking(s) && atomic_load_explicit(&g_legacy.end, memory_order_relaxed) > t)
        t = atomic_load_explicit(&g_legacy.end, memory_order_relaxed);
    return t;
}

static uint64_t stream_ready(const struct fstream *s)
{
    tl_lock();
    uint64_t t = ready_locked(s, now_ns());
    tl_unlock();
    return t;
}

/* run a kernel of dur_ns on s */
static void run_on(struct fstream *s, uint64_t dur_ns)
{
    uint64_t n = now_ns();
    tl_lock();
    uint64_t start = ready_locked(s, n);
    if (g_serial > 0 && g_device_end > start)
        start = g_device_end;
    uint64_t end = start + dur_ns;
    atomic_store_explicit(&s->end, end, memory_order_relaxed);
    if (blocking(s) && end > g_blocking_end)
        g_blocking_end = end;
    if (end > g_device_end)
        g_device_end = end;
    if (dur_ns)
        busy_add(start, end, n);
    tl_unlock();
}

/* ---------------------------------------------------------------- stream capture */
struct fgraph;
#define MAXCAP 16
struct fcapture {
    uint64_t id;              /* 0 = free slot */
    int mode;                 /* CUstreamCaptureMode */
    const void *owner;        /* thread tag */
    int status;               /* CU_STREAM_CAPTURE_STATUS_ACTIVE / _INVALIDATED */
    struct fgraph *graph;
    struct fstream *origin;
};
static struct fcapture g_cap[MAXCAP];
static pthread_mutex_t g_cap_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int g_ncap;              /* captures in progress */
static _Atomic uint64_t g_cap_next = 1;
static _Atomic long g_invalidations;
static _Thread_local int t_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
static _Thread_local char t_tag;

EXPORT long fake_cuda_capture_invalidations(void) { return atomic_load(&g_invalidations); }

static struct fcapture *cap_find_locked(uint64_t id)
{
    if (!id)
        return NULL;
    for (int i = 0; i < MAXCAP; i++)
        if (g_cap[i].id == id)
            return &g_cap[i];
    return NULL;
}
static void invalidate_locked(struct fcapture *c)
{
    if (c && c->status == CU_STREAM_CAPTURE_STATUS_ACTIVE) {
        c->status = CU_STREAM_CAPTURE_STATUS_INVALIDATED;
        atomic_fetch_add(&g_invalidations, 1);
    }
}

/* "potentially unsafe" API call from this thread: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
 * (and the conflicting captures invalidated) when a capture forbids it */
static CUresult unsafe_call(void)
{
    if (!atomic_load(&g_ncap) || t_mode == CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_SUCCESS;
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&g_cap_mu);
    for (int i = 0; i < MAXCAP; i++) {
        struct fcapture *c = &g_cap[i];
        if (!c->id || c->status != CU_STREAM_CAPTURE_STATUS_ACTIVE)
            continue;
        int mine = c->owner == &t_tag;
        if ((mine && c->mode != CU_STREAM_CAPTURE_MODE_RELAXED) ||
            (!mine && t_mode == CU_STREAM_CAPTURE_MODE_GLOBAL && c->mode == CU_STREAM_CAPTURE_MODE_GLOBAL)) {
            invalidate_locked(c);
            rc = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
        }
    }
    pthread_mutex_unlock(&g_cap_mu);
    return rc;
}

/* the legacy stream is used while a blocking stream captures: implicit dependency */
static CUresult legacy_conflict(const struct fstream *s)
{
    if (!s->legacy || !atomic_load(&g_ncap))
        return CUDA_SUCCESS;
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&g_cap_mu);
    for (int i = 0; i < MAXCAP; i++)
        if (g_cap[i].id && g_cap[i].status == CU_STREAM_CAPTURE_STATUS_ACTIVE && blocking(g_cap[i].origin)) {
            invalidate_locked(&g_cap[i]);
            rc = CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
        }
    pthread_mutex_unlock(&g_cap_mu);
    return rc;
}

/* a stream that is capturing must not be synchronised or queried */
static CUresult capturing_stream_forbidden(struct fstream *s)
{
    uint64_t id = atomic_load(&s->cap_id);
    if (!id)
        return CUDA_SUCCESS;
    pthread_mutex_lock(&g_cap_mu);
    invalidate_locked(cap_find_locked(id));
    pthread_mutex_unlock(&g_cap_mu);
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}

/* ---------------------------------------------------------------- devices, contexts */
#define GIB (1024ull * 1024 * 1024)
#define MIB (1024ull * 1024)
static uint64_t g_total = 16 * GIB; /* physical memory of each fake device */
static _Atomic uint64_t g_phys_used;
/* cudart-compat: contexts live in fake_cuda_context.c; t_cur is the current context's device */
#define t_cur fake_cuda_current_device()

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

EXPORT CUresult cuInit(unsigned int f)
{
    (void)f;
    COUNT();
    const char *t = getenv("FAKE_CUDA_TOTAL_MIB"); /* test double: env read at init only */
    if (t)
        g_total = strtoull(t, NULL, 10) * MIB;
    const char *s = getenv("FAKE_CUDA_SERIAL");
    g_serial = s && s[0] == '1';
    return CUDA_SUCCESS;
}
/* cudart-compat: versions, devices and contexts are defined in fake_cuda_device.c and
 * fake_cuda_context.c (real context objects the runtime needs) */
WEAK_EXPORT CUresult cuDeviceTotalMem_v2(size_t *b, CUdevice d) { (void)d; COUNT(); *b = g_total; return CUDA_SUCCESS; }
WEAK_EXPORT CUresult cuMemGetInfo_v2(size_t *f, size_t *t)
{
    COUNT();
    *t = g_total;
    *f = g_total - atomic_load(&g_phys_used);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- allocation table */
enum { AK_PTR = 1, AK_POOL, AK_ARRAY, AK_GRAPHMEM };
#define MAXA 4096
struct fpool;
static struct { uint64_t k, sz; int kind; struct fpool *pool; } g_al[MAXA];
static void al_put(uint64_t k, uint64_t sz, int kind, struct fpool *pool)
{
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAXA; i++)
        if (!g_al[i].k) {
            g_al[i].k = k;
            g_al[i].sz = sz;
            g_al[i].kind = kind;
            g_al[i].pool = pool;
            break;
        }
    pthread_mutex_unlock(&g_mu);
}
static int al_take(uint64_t k, uint64_t *sz, int *kind, struct fpool **pool)
{
    int f = 0;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAXA; i++)
        if (g_al[i].k == k) {
            *sz = g_al[i].sz;
            if (kind)
                *kind = g_al[i].kind;
            if (pool)
                *pool = g_al[i].pool;
            g_al[i].k = 0;
            f = 1;
            break;
        }
    pthread_mutex_unlock(&g_mu);
    if (f)
        fake_devmem_unmap(k); /* cudart-compat */
    return f;
}

/* ---------------------------------------------------------------- classic allocations */
EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t b)
{
    COUNT();
    CUresult rc = unsafe_call();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (phys_alloc(b))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *p = new_ptr(b);
    al_put(*p, b, AK_PTR, NULL);
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
    CUresult rc = unsafe_call();
    if (rc != CUDA_SUCCESS)
        return rc;
    *pitch = (w + 511u) & ~(size_t)511u;
    uint64_t b = (uint64_t)*pitch * h;
    if (phys_alloc(b))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *p = new_ptr(b);
    al_put(*p, b, AK_PTR, NULL);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAllocManaged(CUdeviceptr *p, size_t b, unsigned int f)
{
    (void)f;
    COUNT();
    CUresult rc = unsafe_call();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (phys_alloc(b))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *p = new_ptr(b);
    al_put(*p, b, AK_PTR, NULL);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemFree_v2(CUdeviceptr p)
{
    COUNT();
    CUresult rc = unsafe_call();
    if (rc != CUDA_SUCCESS)
        return rc;
    uint64_t b;
    int kind;
    if (!al_take(p, &b, &kind, NULL))
        return CUDA_ERROR_INVALID_VALUE;
    if (kind == AK_PTR)
        phys_free(b);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemHostAlloc(void **p, size_t b, unsigned int f) { (void)f; COUNT(); *p = malloc(b ? b : 1); fake_hostmem_register(*p, b); return CUDA_SUCCESS; }
/* cudart-compat: pinned memory is registered (pointer attributes); a foreign pointer is refused */
EXPORT CUresult cuMemFreeHost(void *p) { COUNT(); if (!fake_hostmem_unregister(p)) return CUDA_ERROR_INVALID_VALUE; free(p); return CUDA_SUCCESS; }

/* ---------------------------------------------------------------- stream-ordered pools */
#define POOL_MAGIC 0x504f4f4cu
#define POOL_GRAN (2ull * 1024 * 1024)
#define MAXPOOL 64
struct fpool { uint32_t magic; int dev; uint64_t reserved, in_use, threshold; };
static struct fpool g_pools[MAXPOOL] = {{POOL_MAGIC, 0, 0, 0, 0}, {POOL_MAGIC, 1, 0, 0, 0}};

static struct fpool *pool_of(CUmemoryPool p)
{
    struct fpool *fp = (struct fpool *)p;
    return fp && fp >= g_pools && fp < g_pools + MAXPOOL && fp->magic == POOL_MAGIC ? fp : NULL;
}
static uint64_t gran_up(uint64_t b) { return (b + POOL_GRAN - 1) / POOL_GRAN * POOL_GRAN; }

/* at a synchronisation the pools give back what exceeds max(used, release threshold) */
static void pools_release_at_sync(void)
{
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAXPOOL; i++) {
        struct fpool *fp = &g_pools[i];
        if (fp->magic != POOL_MAGIC)
            continue;
        uint64_t keep = gran_up(fp->in_use > fp->threshold ? fp->in_use : fp->threshold);
        if (fp->reserved > keep) {
            phys_free(fp->reserved - keep);
            fp->reserved = keep;
        }
    }
    pthread_mutex_unlock(&g_mu);
}

EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool *p, CUdevice d) { *p = (CUmemoryPool)&g_pools[d & 1]; return CUDA_SUCCESS; }
EXPORT CUresult cuMemPoolCreate(CUmemoryPool *p, const CUmemPoolProps *props)
{
    COUNT();
    pthread_mutex_lock(&g_mu);
    for (int i = 2; i < MAXPOOL; i++)
        if (g_pools[i].magic != POOL_MAGIC) {
            g_pools[i] = (struct fpool){POOL_MAGIC, props ? props->location.id : 0, 0, 0, 0};
            *p = (CUmemoryPool)&g_pools[i];
            pthread_mutex_unlock(&g_mu);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&g_mu);
    return CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT CUresult cuMemPoolDestroy(CUmemoryPool p)
{
    COUNT();
    struct fpool *fp = pool_of(p);
    if (!fp || fp < g_pools + 2)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    phys_free(fp->reserved);
    fp->magic = 0;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}
static CUresult pool_alloc(struct fpool *fp, CUdeviceptr *p, size_t b)
{
    if (!fp)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    if (fp->in_use + b > fp->reserved) {
        uint64_t grow = gran_up(fp->in_use + b - fp->reserved);
        if (phys_alloc(grow)) {
            pthread_mutex_unlock(&g_mu);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        fp->reserved += grow;
    }
    fp->in_use += b;
    pthread_mutex_unlock(&g_mu);
    *p = new_ptr(b);
    al_put(*p, b, AK_POOL, fp);
    return CUDA_SUCCESS;
}

/* cuMemAllocAsync on a capturing stream: an allocation node of the capture's graph */
static CUresult capture_alloc_node(struct fstream *s, CUdeviceptr *p, size_t b, int *handled);

static CUresult alloc_async(CUstream h, int ptsz, CUdeviceptr *p, size_t b, struct fpool *fp)
{
    struct fstream *s = stream_of(h, ptsz);
    if (!s)
        return CUDA_ERROR_INVALID_HANDLE;
    int handled = 0;
    CUresult rc = capture_alloc_node(s, p, b, &handled);
    if (handled)
        return rc;
    return pool_alloc(fp ? fp : &g_pools[t_cur & 1], p, b);
}
EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t b, CUstream s) { COUNT(); return alloc_async(s, 0, p, b, NULL); }
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t b, CUstream s) { COUNT(); return alloc_async(s, 1, p, b, NULL); }
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *p, size_t b, CUmemoryPool pool, CUstream s)
{
    COUNT();
    return pool_of(pool) ? alloc_async(s, 0, p, b, pool_of(pool)) : CUDA_ERROR_INVALID_VALUE;
}
EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *p, size_t b, CUmemoryPool pool, CUstream s)
{
    COUNT();
    return pool_of(pool) ? alloc_async(s, 1, p, b, pool_of(pool)) : CUDA_ERROR_INVALID_VALUE;
}
static CUresult free_async(CUdeviceptr p, CUstream h, int ptsz)
{
    struct fstream *s = stream_of(h, ptsz);
    if (!s)
        return CUDA_ERROR_INVALID_HANDLE;
    if (atomic_load(&s->cap_id))
        return CUDA_SUCCESS; /* a free node of the capture: nothing happens before the graph runs */
    uint64_t b;
    int kind;
    struct fpool *fp = NULL;
    if (!al_take(p, &b, &kind, &fp))
        return CUDA_ERROR_INVALID_VALUE;
    if (kind == AK_PTR) {
        phys_free(b);
        return CUDA_SUCCESS;
    }
    if (kind == AK_POOL && fp) { /* back to its pool, still reserved */
        pthread_mutex_lock(&g_mu);
        fp->in_use = fp->in_use >= b ? fp->in_use - b : 0;
        pthread_mutex_unlock(&g_mu);
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { COUNT(); return free_async(p, s, 0); }
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { COUNT(); return free_async(p, s, 1); }
EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool p, size_t keep)
{
    COUNT();
    struct fpool *fp = pool_of(p);
    if (!fp)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    uint64_t target = gran_up(fp->in_use > keep ? fp->in_use : keep);
    if (target < fp->reserved) {
        phys_free(fp->reserved - target);
        fp->reserved = target;
    }
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool p, CUmemPool_attribute a, void *v)
{
    struct fpool *fp = pool_of(p);
    if (!fp || !v)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    CUresult rc = CUDA_SUCCESS;
    if (a == CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)
        *(cuuint64_t *)v = fp->reserved;
    else if (a == CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
        *(cuuint64_t *)v = fp->in_use;
    else if (a == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD)
        *(cuuint64_t *)v = fp->threshold;
    else
        rc = CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_unlock(&g_mu);
    return rc;
}
EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool p, CUmemPool_attribute a, void *v)
{
    COUNT();
    struct fpool *fp = pool_of(p);
    if (!fp || !v || a != CU_MEMPOOL_ATTR_RELEASE_THRESHOLD)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    fp->threshold = *(cuuint64_t *)v;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- VMM */
#define MAXH 1024
static struct { uint64_t h, size; int refs, maps; } g_hd[MAXH];    /* live physical allocations */
static struct { uint64_t ptr, size; } g_va[MAXH];                  /* reserved VA ranges */
static struct { uint64_t ptr, size, h; } g_map[MAXH];              /* mappings */

static int hd_find_locked(uint64_t h)
{
    for (int i = 0; i < MAXH; i++)
        if (g_hd[i].h == h && h)
            return i;
    return -1;
}
/* frees the physical memory once no reference and no mapping is left (must hold g_mu) */
static void hd_maybe_free_locked(int i)
{
    if (g_hd[i].refs == 0 && g_hd[i].maps == 0) {
        phys_free(g_hd[i].size);
        g_hd[i].h = 0;
    }
}
EXPORT CUresult cuMemGetAllocationGranularity(size_t *g, const CUmemAllocationProp *prop, CUmemAllocationGranularity_flags f)
{
    (void)prop;
    (void)f;
    *g = POOL_GRAN;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t b, const CUmemAllocationProp *prop,
                            unsigned long long f)
{
    (void)f;
    COUNT();
    if (!prop || !b || b % POOL_GRAN)
        return CUDA_ERROR_INVALID_VALUE;
    if (phys_alloc(b))
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAXH; i++)
        if (!g_hd[i].h) {
            g_hd[i].h = new_ptr(b) | 1; /* handles are not addresses */
            g_hd[i].size = b;
            g_hd[i].refs = 1;
            g_hd[i].maps = 0;
            *h = g_hd[i].h;
            pthread_mutex_unlock(&g_mu);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&g_mu);
    phys_free(b);
    return CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h)
{
    COUNT();
    pthread_mutex_lock(&g_mu);
    int i = hd_find_locked(h);
    if (i < 0 || g_hd[i].refs <= 0) {
        pthread_mutex_unlock(&g_mu);
        return CUDA_ERROR_INVALID_VALUE;
    }
    g_hd[i].refs--;
    hd_maybe_free_locked(i); /* still mapped: freed at the last cuMemUnmap */
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t align, CUdeviceptr addr,
                                    unsigned long long f)
{
    (void)align;
    (void)addr;
    (void)f;
    COUNT();
    if (!size || size % POOL_GRAN)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAXH; i++)
        if (!g_va[i].ptr) {
            g_va[i].ptr = new_ptr(size);
            g_va[i].size = size;
            *ptr = g_va[i].ptr;
            pthread_mutex_unlock(&g_mu);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&g_mu);
    return CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    COUNT();
    pthread_mutex_lock(&g_mu);
    for (int m = 0; m < MAXH; m++)
        if (g_map[m].ptr && g_map[m].ptr >= ptr && g_map[m].ptr < ptr + size) {
            pthread_mutex_unlock(&g_mu);
            return CUDA_ERROR_INVALID_VALUE; /* still mapped */
        }
    for (int i = 0; i < MAXH; i++)
        if (g_va[i].ptr == ptr && g_va[i].size == size) {
            g_va[i].ptr = 0;
            pthread_mutex_unlock(&g_mu);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&g_mu);
    return CUDA_ERROR_INVALID_VALUE;
}
EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle h,
                         unsigned long long f)
{
    COUNT();
    if (f || offset || !size)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    int i = hd_find_locked(h), in_va = 0;
    for (int v = 0; v < MAXH; v++)
        in_va |= g_va[v].ptr && ptr >= g_va[v].ptr && ptr + size <= g_va[v].ptr + g_va[v].size;
    int free_slot = -1;
    for (int m = 0; m < MAXH; m++) {
        if (g_map[m].ptr && ptr < g_map[m].ptr + g_map[m].size && g_map[m].ptr < ptr + size)
            in_va = 0; /* overlaps a mapping */
        if (!g_map[m].ptr && free_slot < 0)
            free_slot = m;
    }
    if (i < 0 || g_hd[i].refs <= 0 || size > g_hd[i].size || !in_va || free_slot < 0) {
        pthread_mutex_unlock(&g_mu);
        return CUDA_ERROR_INVALID_VALUE;
    }
    g_map[free_slot].ptr = ptr;
    g_map[free_slot].size = size;
    g_map[free_slot].h = h;
    g_hd[i].maps++;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    COUNT();
    pthread_mutex_lock(&g_mu);
    for (int m = 0; m < MAXH; m++)
        if (g_map[m].ptr == ptr && g_map[m].size == size) {
            int i = hd_find_locked(g_map[m].h);
            g_map[m].ptr = 0;
            if (i >= 0) {
                g_hd[i].maps--;
                hd_maybe_free_locked(i);
            }
            pthread_mutex_unlock(&g_mu);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&g_mu);
    return CUDA_ERROR_INVALID_VALUE;
}
EXPORT CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *h, void *addr)
{
    COUNT();
    uint64_t a = (uint64_t)(uintptr_t)addr;
    pthread_mutex_lock(&g_mu);
    for (int m = 0; m < MAXH; m++)
        if (g_map[m].ptr && a >= g_map[m].ptr && a < g_map[m].ptr + g_map[m].size) {
            int i = hd_find_locked(g_map[m].h);
            if (i >= 0) {
                g_hd[i].refs++;
                *h = g_map[m].h;
                pthread_mutex_unlock(&g_mu);
                return CUDA_SUCCESS;
            }
        }
    pthread_mutex_unlock(&g_mu);
    return CUDA_ERROR_INVALID_VALUE;
}
EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *d, size_t n)
{
    (void)ptr;
    (void)size;
    (void)d;
    (void)n;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- arrays */
static CUresult arr(void **h, uint64_t b)
{
    if (phys_alloc(b))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *h = (void *)(uintptr_t)new_ptr(b);
    al_put((uint64_t)(uintptr_t)*h, b, AK_ARRAY, NULL);
    return CUDA_SUCCESS;
}
static CUresult arr_free(void *h)
{
    uint64_t b;
    if (!al_take((uint64_t)(uintptr_t)h, &b, NULL, NULL))
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
#define GRAPH_MAGIC 0x47524150u
#define EXEC_MAGIC 0x45584543u
struct fgraph { uint32_t magic; unsigned nodes; uint64_t kernel_ns, mem; };
struct fexec { uint32_t magic; uint64_t kernel_ns, mem; };
static uint64_t g_graph_reserved; /* the device's graph memory pool (both fake devices share it) */

static struct fgraph *graph_of(CUgraph g)
{
    struct fgraph *x = (struct fgraph *)g;
    return x && x->magic == GRAPH_MAGIC ? x : NULL;
}
static struct fexec *exec_of(CUgraphExec e)
{
    struct fexec *x = (struct fexec *)e;
    return x && x->magic == EXEC_MAGIC ? x : NULL;
}
static CUgraphNode new_node(struct fgraph *g)
{
    g->nodes++;
    return (CUgraphNode)(uintptr_t)(0x1000 + g->nodes);
}

EXPORT CUresult cuGraphCreate(CUgraph *g, unsigned int f)
{
    (void)f;
    struct fgraph *x = calloc(1, sizeof *x);
    if (!x)
        return CUDA_ERROR_OUT_OF_MEMORY;
    x->magic = GRAPH_MAGIC;
    *g = (CUgraph)x;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphDestroy(CUgraph g)
{
    COUNT();
    struct fgraph *x = graph_of(g);
    if (!x)
        return CUDA_ERROR_INVALID_VALUE;
    x->magic = 0;
    free(x);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphAddMemAllocNode(CUgraphNode *n, CUgraph g, const CUgraphNode *d, size_t nd,
                                       CUDA_MEM_ALLOC_NODE_PARAMS *p)
{
    (void)d;
    (void)nd;
    COUNT();
    struct fgraph *x = graph_of(g);
    if (!x || !p)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    x->mem += p->bytesize;
    *n = new_node(x);
    pthread_mutex_unlock(&g_mu);
    p->dptr = new_ptr(p->bytesize);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphAddKernelNode_v2(CUgraphNode *n, CUgraph g, const CUgraphNode *d, size_t nd,
                                        const CUDA_KERNEL_NODE_PARAMS *p)
{
    (void)d;
    (void)nd;
    COUNT();
    struct fgraph *x = graph_of(g);
    if (!x || !p)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    x->kernel_ns += (uint64_t)p->gridDimX * 1000ull;
    *n = new_node(x);
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}
static CUresult add_node(CUgraphNode *n, CUgraph g, CUgraphNodeParams *p)
{
    struct fgraph *x = graph_of(g);
    if (!x || !p)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    if (p->type == CU_GRAPH_NODE_TYPE_KERNEL)
        x->kernel_ns += (uint64_t)p->kernel.gridDimX * 1000ull;
    else if (p->type == CU_GRAPH_NODE_TYPE_MEM_ALLOC)
        x->mem += p->alloc.bytesize;
    *n = new_node(x);
    pthread_mutex_unlock(&g_mu);
    if (p->type == CU_GRAPH_NODE_TYPE_MEM_ALLOC)
        p->alloc.dptr = new_ptr(p->alloc.bytesize);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphAddNode(CUgraphNode *n, CUgraph g, const CUgraphNode *d, size_t nd, CUgraphNodeParams *p)
{
    (void)d;
    (void)nd;
    COUNT();
    return add_node(n, g, p);
}
EXPORT CUresult cuGraphAddNode_v2(CUgraphNode *n, CUgraph g, const CUgraphNode *d, const CUgraphEdgeData *e,
                                  size_t nd, CUgraphNodeParams *p)
{
    (void)d;
    (void)e;
    (void)nd;
    COUNT();
    return add_node(n, g, p);
}
static CUresult inst(CUgraphExec *e, CUgraph g)
{
    struct fgraph *x = graph_of(g);
    if (!x || !e)
        return CUDA_ERROR_INVALID_VALUE;
    struct fexec *ex = calloc(1, sizeof *ex);
    if (!ex)
        return CUDA_ERROR_OUT_OF_MEMORY;
    ex->magic = EXEC_MAGIC;
    pthread_mutex_lock(&g_mu);
    ex->kernel_ns = x->kernel_ns;
    ex->mem = x->mem;
    pthread_mutex_unlock(&g_mu);
    *e = (CUgraphExec)ex;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long f) { (void)f; COUNT(); return inst(e, g); }
EXPORT CUresult cuGraphInstantiate_v2(CUgraphExec *e, CUgraph g, CUgraphNode *en, char *l, size_t n) { (void)en; (void)l; (void)n; COUNT(); return inst(e, g); }
/* the legacy export (what the runtime resolves for "cuGraphInstantiate" below CUDA 12.0) */
EXPORT CUresult cuGraphInstantiate(CUgraphExec *e, CUgraph g, CUgraphNode *en, char *l, size_t n) { (void)en; (void)l; (void)n; COUNT(); return inst(e, g); }
EXPORT CUresult cuGraphInstantiateWithParams(CUgraphExec *e, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p) { (void)p; COUNT(); return inst(e, g); }
EXPORT CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *e, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p) { (void)p; COUNT(); return inst(e, g); }
EXPORT CUresult cuGraphExecDestroy(CUgraphExec e)
{
    COUNT();
    struct fexec *x = exec_of(e);
    if (!x)
        return CUDA_ERROR_INVALID_VALUE;
    x->magic = 0;
    free(x);
    return CUDA_SUCCESS;
}
static CUresult graph_mem(struct fexec *x)
{
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
static CUresult upload(CUgraphExec e, CUstream h, int ptsz)
{
    struct fexec *x = exec_of(e);
    if (!x || !stream_of(h, ptsz))
        return CUDA_ERROR_INVALID_VALUE;
    return graph_mem(x);
}
EXPORT CUresult cuGraphUpload(CUgraphExec e, CUstream s) { COUNT(); return upload(e, s, 0); }
EXPORT CUresult cuGraphUpload_ptsz(CUgraphExec e, CUstream s) { COUNT(); return upload(e, s, 1); }
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
    pthread_mutex_lock(&g_mu);
    *(cuuint64_t *)v = g_graph_reserved;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- capture entry points */

/* work submitted to s: 1 and *rc set when s is capturing (recorded into the graph, or the
 * capture is invalidated), 0 when it executes */
static int captured(struct fstream *s, uint64_t kernel_ns, uint64_t mem, CUresult *rc)
{
    if (!atomic_load_explicit(&g_ncap, memory_order_relaxed))
        return 0;
    uint64_t id = atomic_load(&s->cap_id);
    if (!id)
        return 0;
    pthread_mutex_lock(&g_cap_mu);
    struct fcapture *c = cap_find_locked(id);
    if (!c || c->status != CU_STREAM_CAPTURE_STATUS_ACTIVE) {
        *rc = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    } else {
        pthread_mutex_lock(&g_mu);
        c->graph->kernel_ns += kernel_ns;
        c->graph->mem += mem;
        new_node(c->graph);
        pthread_mutex_unlock(&g_mu);
        *rc = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&g_cap_mu);
    return 1;
}

static CUresult capture_alloc_node(struct fstream *s, CUdeviceptr *p, size_t b, int *handled)
{
    CUresult rc = CUDA_SUCCESS;
    *handled = captured(s, 0, b, &rc);
    if (*handled && rc == CUDA_SUCCESS) {
        *p = new_ptr(b);
        al_put(*p, b, AK_GRAPHMEM, NULL);
    }
    return rc;
}

static CUresult begin_capture(CUstream h, int ptsz, CUstreamCaptureMode mode, CUgraph into)
{
    struct fstream *s = stream_of(h, ptsz);
    if (!s)
        return CUDA_ERROR_INVALID_HANDLE;
    if (s->legacy)
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; /* capture may not be initiated on the legacy stream */
    if ((unsigned)mode > CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_cap_mu);
    if (atomic_load(&s->cap_id)) {
        pthread_mutex_unlock(&g_cap_mu);
        return CUDA_ERROR_ILLEGAL_STATE;
    }
    struct fcapture *c = NULL;
    for (int i = 0; i < MAXCAP && !c; i++)
        if (!g_cap[i].id)
            c = &g_cap[i];
    struct fgraph *g = into ? graph_of(into) : NULL;
    if (!g) {
        g = calloc(1, sizeof *g);
        if (g)
            g->magic = GRAPH_MAGIC;
    }
    if (!c || !g) {
        pthread_mutex_unlock(&g_cap_mu);
        if (g && !into)
            free(g);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    c->id = atomic_fetch_add(&g_cap_next, 1);
    c->mode = mode;
    c->owner = &t_tag;
    c->status = CU_STREAM_CAPTURE_STATUS_ACTIVE;
    c->graph = g;
    c->origin = s;
    atomic_store(&s->cap_id, c->id);
    atomic_fetch_add(&g_ncap, 1);
    pthread_mutex_unlock(&g_cap_mu);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamBeginCapture(CUstream s) { COUNT(); return begin_capture(s, 0, CU_STREAM_CAPTURE_MODE_GLOBAL, NULL); }
EXPORT CUresult cuStreamBeginCapture_ptsz(CUstream s) { COUNT(); return begin_capture(s, 1, CU_STREAM_CAPTURE_MODE_GLOBAL, NULL); }
EXPORT CUresult cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode m) { COUNT(); return begin_capture(s, 0, m, NULL); }
EXPORT CUresult cuStreamBeginCapture_v2_ptsz(CUstream s, CUstreamCaptureMode m) { COUNT(); return begin_capture(s, 1, m, NULL); }
EXPORT CUresult cuStreamBeginCaptureToGraph(CUstream s, CUgraph g, const CUgraphNode *d, const CUgraphEdgeData *e,
                                            size_t n, CUstreamCaptureMode m)
{
    (void)d;
    (void)e;
    (void)n;
    COUNT();
    return graph_of(g) ? begin_capture(s, 0, m, g) : CUDA_ERROR_INVALID_VALUE;
}
EXPORT CUresult cuStreamBeginCaptureToGraph_ptsz(CUstream s, CUgraph g, const CUgraphNode *d,
                                                 const CUgraphEdgeData *e, size_t n, CUstreamCaptureMode m)
{
    (void)d;
    (void)e;
    (void)n;
    COUNT();
    return graph_of(g) ? begin_capture(s, 1, m, g) : CUDA_ERROR_INVALID_VALUE;
}

static void detach_streams_locked(uint64_t id); /* defined with the stream registry */

static CUresult end_capture(CUstream h, int ptsz, CUgraph *out)
{
    struct fstream *s = stream_of(h, ptsz);
    if (!s || !out)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_cap_mu);
    struct fcapture *c = cap_find_locked(atomic_load(&s->cap_id));
    if (!c || c->origin != s) {
        pthread_mutex_unlock(&g_cap_mu);
        return CUDA_ERROR_ILLEGAL_STATE;
    }
    if (c->mode != CU_STREAM_CAPTURE_MODE_RELAXED && c->owner != &t_tag) {
        pthread_mutex_unlock(&g_cap_mu);
        return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    }
    CUresult rc = CUDA_SUCCESS;
    if (c->status == CU_STREAM_CAPTURE_STATUS_INVALIDATED) {
        rc = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        *out = NULL;
        c->graph->magic = 0;
        free(c->graph);
    } else {
        *out = (CUgraph)c->graph;
    }
    detach_streams_locked(c->id);
    atomic_store(&s->cap_id, 0);
    c->id = 0;
    atomic_fetch_sub(&g_ncap, 1);
    pthread_mutex_unlock(&g_cap_mu);
    return rc;
}
EXPORT CUresult cuStreamEndCapture(CUstream s, CUgraph *g) { COUNT(); return end_capture(s, 0, g); }
EXPORT CUresult cuStreamEndCapture_ptsz(CUstream s, CUgraph *g) { COUNT(); return end_capture(s, 1, g); }

static CUresult capture_status(CUstream h, int ptsz, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g)
{
    struct fstream *s = stream_of(h, ptsz);
    if (!s || !st)
        return CUDA_ERROR_INVALID_VALUE;
    if (s->legacy && atomic_load(&g_ncap)) {
        CUresult rc = legacy_conflict(s);
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    pthread_mutex_lock(&g_cap_mu);
    struct fcapture *c = cap_find_locked(atomic_load(&s->cap_id));
    *st = c ? (CUstreamCaptureStatus)c->status : CU_STREAM_CAPTURE_STATUS_NONE;
    if (id)
        *id = c ? c->id : 0;
    if (g)
        *g = c && c->status == CU_STREAM_CAPTURE_STATUS_ACTIVE ? (CUgraph)c->graph : NULL;
    pthread_mutex_unlock(&g_cap_mu);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus *st) { COUNT(); return capture_status(s, 0, st, NULL, NULL); }
EXPORT CUresult cuStreamIsCapturing_ptsz(CUstream s, CUstreamCaptureStatus *st) { COUNT(); return capture_status(s, 1, st, NULL, NULL); }
EXPORT CUresult cuStreamGetCaptureInfo_v2(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                                          const CUgraphNode **deps, size_t *nd)
{
    COUNT();
    if (deps)
        *deps = NULL;
    if (nd)
        *nd = 0;
    return capture_status(s, 0, st, id, g);
}
EXPORT CUresult cuStreamGetCaptureInfo_v2_ptsz(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                                               const CUgraphNode **deps, size_t *nd)
{
    COUNT();
    if (deps)
        *deps = NULL;
    if (nd)
        *nd = 0;
    return capture_status(s, 1, st, id, g);
}
EXPORT CUresult cuStreamGetCaptureInfo_v3(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                                          const CUgraphNode **deps, const CUgraphEdgeData **ed, size_t *nd)
{
    if (ed)
        *ed = NULL;
    return cuStreamGetCaptureInfo_v2(s, st, id, g, deps, nd);
}
EXPORT CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode)
{
    COUNT();
    if (!mode || (unsigned)*mode > CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    int prev = t_mode;
    t_mode = (int)*mode;
    *mode = (CUstreamCaptureMode)prev;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- streams */
#define MAXS 256
static struct fstream *g_streams[MAXS]; /* created streams, for capture detach and context sync */

static void detach_streams_locked(uint64_t id)
{
    for (int i = 0; i < MAXS; i++)
        if (g_streams[i] && atomic_load(&g_streams[i]->cap_id) == id)
            atomic_store(&g_streams[i]->cap_id, 0);
    if (atomic_load(&t_ptds.cap_id) == id)
        atomic_store(&t_ptds.cap_id, 0);
}

static CUresult stream_create(CUstream *out, unsigned flags)
{
    struct fstream *s = calloc(1, sizeof *s);
    if (!s)
        return CUDA_ERROR_OUT_OF_MEMORY;
    s->magic = STREAM_MAGIC;
    s->flags = flags;
    pthread_mutex_lock(&g_cap_mu);
    for (int i = 0; i < MAXS; i++)
        if (!g_streams[i]) {
            g_streams[i] = s;
            break;
        }
    pthread_mutex_unlock(&g_cap_mu);
    *out = (CUstream)s;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamCreate(CUstream *s, unsigned int flags) { COUNT(); return stream_create(s, flags); }
EXPORT CUresult cuStreamCreateWithPriority(CUstream *s, unsigned int flags, int prio) { (void)prio; COUNT(); return stream_create(s, flags); }
EXPORT CUresult cuStreamDestroy_v2(CUstream h)
{
    COUNT();
    struct fstream *s = stream_of(h, 0);
    if (!s || s == &g_legacy || s == &t_ptds)
        return CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&g_cap_mu);
    for (int i = 0; i < MAXS; i++)
        if (g_streams[i] == s)
            g_streams[i] = NULL;
    pthread_mutex_unlock(&g_cap_mu);
    s->magic = 0;
    free(s); /* pending work completes on its own (the timeline is in g_iv) */
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- events */
#define EVENT_MAGIC 0x45564e54u
struct fevent { uint32_t magic; unsigned flags; uint64_t ts; int recorded; uint64_t cap_id; };
static struct fevent *event_of(CUevent e)
{
    struct fevent *x = (struct fevent *)e;
    return x && x->magic == EVENT_MAGIC ? x : NULL;
}
EXPORT CUresult cuEventCreate(CUevent *e, unsigned int f)
{
    COUNT();
    struct fevent *x = calloc(1, sizeof *x);
    if (!x)
        return CUDA_ERROR_OUT_OF_MEMORY;
    x->magic = EVENT_MAGIC;
    x->flags = f;
    *e = (CUevent)x;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventDestroy_v2(CUevent e)
{
    struct fevent *x = event_of(e);
    if (!x)
        return CUDA_ERROR_INVALID_HANDLE;
    x->magic = 0;
    free(x);
    return CUDA_SUCCESS;
}
static CUresult rec(CUevent e, CUstream h, int ptsz)
{
    struct fevent *ev = event_of(e);
    struct fstream *s = stream_of(h, ptsz);
    if (!ev || !s)
        return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc = legacy_conflict(s);
    if (rc != CUDA_SUCCESS)
        return rc;
    uint64_t id = atomic_load(&s->cap_id);
    if (id && atomic_load(&g_ncap)) { /* the event becomes a node of the capture */
        pthread_mutex_lock(&g_cap_mu);
        struct fcapture *c = cap_find_locked(id);
        rc = c && c->status == CU_STREAM_CAPTURE_STATUS_ACTIVE ? CUDA_SUCCESS : CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        pthread_mutex_unlock(&g_cap_mu);
        if (rc == CUDA_SUCCESS) {
            ev->cap_id = id;
            ev->recorded = 1;
        }
        return rc;
    }
    ev->cap_id = 0;
    ev->ts = stream_ready(s);
    ev->recorded = 1;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventRecord(CUevent e, CUstream s) { COUNT(); return rec(e, s, 0); }
EXPORT CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { COUNT(); return rec(e, s, 1); }
EXPORT CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned int f) { (void)f; COUNT(); return rec(e, s, 0); }
EXPORT CUresult cuEventRecordWithFlags_ptsz(CUevent e, CUstream s, unsigned int f) { (void)f; COUNT(); return rec(e, s, 1); }

/* an event last recorded in a capture must not be waited on from the host */
static CUresult captured_event(struct fevent *ev)
{
    if (!ev->cap_id)
        return CUDA_SUCCESS;
    pthread_mutex_lock(&g_cap_mu);
    invalidate_locked(cap_find_locked(ev->cap_id));
    pthread_mutex_unlock(&g_cap_mu);
    return CUDA_ERROR_CAPTURED_EVENT;
}
EXPORT CUresult cuEventQuery(CUevent e)
{
    COUNT();
    struct fevent *ev = event_of(e);
    if (!ev)
        return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc = captured_event(ev);
    if (rc == CUDA_SUCCESS)
        rc = unsafe_call();
    if (rc != CUDA_SUCCESS)
        return rc;
    return !ev->recorded || now_ns() >= ev->ts ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
EXPORT CUresult cuEventSynchronize(CUevent e)
{
    COUNT();
    struct fevent *ev = event_of(e);
    if (!ev)
        return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc = captured_event(ev);
    if (rc == CUDA_SUCCESS)
        rc = unsafe_call();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (ev->recorded)
        sleep_until(ev->ts);
    pools_release_at_sync();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventElapsedTime(float *ms, CUevent a, CUevent b)
{
    COUNT();
    struct fevent *x = event_of(a), *y = event_of(b);
    if (!ms || !x || !y || !x->recorded || !y->recorded || (x->flags | y->flags) & CU_EVENT_DISABLE_TIMING)
        return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc = captured_event(x);
    if (rc == CUDA_SUCCESS)
        rc = captured_event(y);
    if (rc != CUDA_SUCCESS)
        return rc;
    uint64_t n = now_ns();
    if (x->ts > n || y->ts > n)
        return CUDA_ERROR_NOT_READY;
    *ms = (float)((double)((int64_t)(y->ts - x->ts)) / 1e6); /* negative when b completed first */
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventElapsedTime_v2(float *ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }

static CUresult wait_event(CUstream h, int ptsz, CUevent e)
{
    struct fstream *s = stream_of(h, ptsz);
    struct fevent *ev = event_of(e);
    if (!s || !ev)
        return CUDA_ERROR_INVALID_HANDLE;
    if (ev->cap_id) { /* fork: the waiting stream joins the capture */
        pthread_mutex_lock(&g_cap_mu);
        struct fcapture *c = cap_find_locked(ev->cap_id);
        uint64_t cur = atomic_load(&s->cap_id);
        CUresult rc = CUDA_SUCCESS;
        if (!c)
            rc = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        else if (cur && cur != c->id)
            rc = CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
        else
            atomic_store(&s->cap_id, c->id);
        pthread_mutex_unlock(&g_cap_mu);
        return rc;
    }
    if (atomic_load(&s->cap_id))
        return CUDA_SUCCESS; /* an external dependency of the capture */
    tl_lock(); /* later work on s starts after the event */
    if (ev->recorded && atomic_load(&s->end) < ev->ts)
        atomic_store(&s->end, ev->ts);
    tl_unlock();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int f) { (void)f; COUNT(); return wait_event(s, 0, e); }
EXPORT CUresult cuStreamWaitEvent_ptsz(CUstream s, CUevent e, unsigned int f) { (void)f; COUNT(); return wait_event(s, 1, e); }

/* ---------------------------------------------------------------- launches */
static CUresult launch(CUstream h, int ptsz, uint64_t dur_ns)
{
    struct fstream *s = stream_of(h, ptsz);
    if (!s)
        return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc;
    if (captured(s, dur_ns, 0, &rc))
        return rc;
    rc = legacy_conflict(s);
    if (rc != CUDA_SUCCESS)
        return rc;
    run_on(s, dur_ns);
    return CUDA_SUCCESS;
}

/* weak default of the remoting tests' reference-kernel hook (fake_cuda_internal.h) */
__attribute__((weak)) int fake_cuda_reference_kernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                                     unsigned by, unsigned bz, CUstream stream, int per_thread,
                                                     void **params, void **extra, CUresult *rc)
{
    (void)f; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)stream; (void)per_thread;
    (void)params; (void)extra; (void)rc;
    return 0;
}

/* a kernel launch: capture and legacy-stream rules first, then a reference kernel if one is
 * linked in, else the simulated timeline */
static CUresult launch_kernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                              unsigned bz, CUstream h, int ptsz, void **p, void **x)
{
    struct fstream *s = stream_of(h, ptsz);
    if (!s)
        return CUDA_ERROR_INVALID_HANDLE;
    uint64_t dur_ns = (uint64_t)gx * 1000ull;
    CUresult rc;
    if (captured(s, dur_ns, 0, &rc))
        return rc;
    rc = legacy_conflict(s);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (fake_cuda_reference_kernel(f, gx, gy, gz, bx, by, bz, h, ptsz, p, x, &rc))
        return rc;
    run_on(s, dur_ns);
    return CUDA_SUCCESS;
}
#define US(x) ((uint64_t)(x) * 1000ull)
EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int shm, CUstream s, void **p, void **x)
{
    (void)shm;
    COUNT();
    return launch_kernel(f, gx, gy, gz, bx, by, bz, s, 0, p, x);
}
EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int shm, CUstream s, void **p, void **x)
{
    (void)shm;
    COUNT();
    return launch_kernel(f, gx, gy, gz, bx, by, bz, s, 1, p, x);
}
EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **p, void **x) { COUNT(); return launch_kernel(f, c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, c->blockDimY, c->blockDimZ, c->hStream, 0, p, x); }
EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **p, void **x) { COUNT(); return launch_kernel(f, c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, c->blockDimY, c->blockDimZ, c->hStream, 1, p, x); }
EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                          unsigned int by, unsigned int bz, unsigned int shm, CUstream s, void **p)
{
    (void)shm;
    COUNT();
    return launch_kernel(f, gx, gy, gz, bx, by, bz, s, 0, p, NULL);
}
EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                               unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm,
                                               CUstream s, void **p)
{
    (void)shm;
    COUNT();
    return launch_kernel(f, gx, gy, gz, bx, by, bz, s, 1, p, NULL);
}
EXPORT CUresult cuLaunchCooperativeKernelMultiDevice(CUDA_LAUNCH_PARAMS *l, unsigned int n, unsigned int f)
{
    (void)f;
    COUNT();
    for (unsigned i = 0; i < n; i++) {
        CUresult rc = launch(l[i].hStream, 0, US(l[i].gridDimX));
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuLaunch(CUfunction f) { (void)f; COUNT(); return launch(NULL, 0, US(1)); }
EXPORT CUresult cuLaunchGrid(CUfunction f, int w, int h) { (void)f; (void)h; COUNT(); return launch(NULL, 0, US((unsigned)w)); }
EXPORT CUresult cuLaunchGridAsync(CUfunction f, int w, int h, CUstream s) { (void)f; (void)h; COUNT(); return launch(s, 0, US((unsigned)w)); }

static CUresult graph_launch(CUgraphExec e, CUstream h, int ptsz)
{
    struct fexec *x = exec_of(e);
    struct fstream *s = stream_of(h, ptsz);
    if (!x || !s)
        return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc;
    if (captured(s, x->kernel_ns, x->mem, &rc)) /* a child graph of the capture */
        return rc;
    rc = legacy_conflict(s);
    if (rc == CUDA_SUCCESS)
        rc = graph_mem(x);
    if (rc == CUDA_SUCCESS)
        run_on(s, x->kernel_ns); /* one unit of work on s */
    return rc;
}
EXPORT CUresult cuGraphLaunch(CUgraphExec e, CUstream s) { COUNT(); return graph_launch(e, s, 0); }
EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec e, CUstream s) { COUNT(); return graph_launch(e, s, 1); }

/* ---------------------------------------------------------------- synchronisation */
static CUresult stream_sync(CUstream h, int ptsz)
{
    struct fstream *s = stream_of(h, ptsz);
    if (!s)
        return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc = capturing_stream_forbidden(s);
    if (rc == CUDA_SUCCESS)
        rc = legacy_conflict(s);
    if (rc == CUDA_SUCCESS)
        rc = unsafe_call();
    if (rc != CUDA_SUCCESS)
        return rc;
    sleep_until(stream_ready(s));
    pools_release_at_sync();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamSynchronize(CUstream s) { COUNT(); return stream_sync(s, 0); }
EXPORT CUresult cuStreamSynchronize_ptsz(CUstream s) { COUNT(); return stream_sync(s, 1); }
static CUresult stream_query(CUstream h, int ptsz)
{
    struct fstream *s = stream_of(h, ptsz);
    if (!s)
        return CUDA_ERROR_INVALID_HANDLE;
    CUresult rc = capturing_stream_forbidden(s);
    if (rc == CUDA_SUCCESS)
        rc = unsafe_call();
    if (rc != CUDA_SUCCESS)
        return rc;
    uint64_t ready = stream_ready(s); /* cudart-compat: read before "now" (ready >= its own now) */
    return now_ns() >= ready ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
EXPORT CUresult cuStreamQuery(CUstream s) { COUNT(); return stream_query(s, 0); }
EXPORT CUresult cuStreamQuery_ptsz(CUstream s) { COUNT(); return stream_query(s, 1); }
/* cudart-compat: stream order for the copies, memsets and host functions of fake_cuda_memory.c and
 * fake_cuda_stream.c, which run at submission: checks the handle, refuses a capturing stream
 * (captured copies are not modelled: CUDA_ERROR_NOT_SUPPORTED, the capture stays valid), then waits
 * until the stream's earlier work is done */
CUresult fake_stream_order(CUstream h, int ptsz)
{
    struct fstream *s = stream_of(h, ptsz);
    if (!s)
        return CUDA_ERROR_INVALID_HANDLE;
    if (atomic_load(&s->cap_id))
        return CUDA_ERROR_NOT_SUPPORTED;
    CUresult rc = legacy_conflict(s);
    if (rc != CUDA_SUCCESS)
        return rc;
    sleep_until(stream_ready(s));
    return CUDA_SUCCESS;
}
/* cudart-compat: a stream's creation flags (CUDA_ERROR_INVALID_HANDLE for an unknown stream) */
CUresult fake_stream_flags(CUstream h, int ptsz, unsigned *flags)
{
    struct fstream *s = stream_of(h, ptsz);
    if (!s)
        return CUDA_ERROR_INVALID_HANDLE;
    *flags = s->flags;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxSynchronize(void)
{
    COUNT();
    if (atomic_load(&g_ncap)) { /* the context has a capturing stream */
        pthread_mutex_lock(&g_cap_mu);
        for (int i = 0; i < MAXCAP; i++)
            if (g_cap[i].id)
                invalidate_locked(&g_cap[i]);
        pthread_mutex_unlock(&g_cap_mu);
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    tl_lock();
    uint64_t until = g_device_end;
    tl_unlock();
    sleep_until(until);
    pools_release_at_sync();
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- resolver
 * cudart-compat: (symbol, version, flags) -> export is native/cudacompat's (the version ladder
 * generated from cudaTypedefs.h); the exports of every fake_cuda_*.c file of this library are
 * listed by fake_exports.c (generated from the objects, no dlsym) */

/* test-double helper: the fake's own address of an export (never an interposed wrapper) */
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
WEAK_EXPORT CUresult cuGetExportTable(const void **t, const CUuuid *id) { (void)t; (void)id; return CUDA_ERROR_NOT_SUPPORTED; }
