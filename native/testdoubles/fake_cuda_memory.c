/*
 * TEST DOUBLE — fake libcuda.so.1 device memory that is real host memory (NOT a CUDA driver).
 *
 * Every device allocation of fake_libcuda.c is an anonymous private mapping (MAP_NORESERVE: pages
 * cost nothing until written, so multi-GiB quota tests stay cheap), registered by range. Copies
 * and memsets move real bytes, so round trips through the real runtime carry real data.
 * Pointers are validated as the driver does: a device range that is not inside one live
 * allocation is CUDA_ERROR_INVALID_VALUE, as is a NULL host pointer.
 * Copies and memsets (synchronous and asynchronous) run at submission, in stream order: after the
 * stream's earlier work on the simulated timeline of fake_libcuda.c (fake_stream_order), so an
 * asynchronous copy is complete when its call returns (a correct program cannot tell). Copies on
 * a capturing stream are not modelled (CUDA_ERROR_NOT_SUPPORTED). Pinned host memory
 * (cuMemHostAlloc, cuMemAllocHost, cuMemHostRegister) is registered for pointer attributes.
 */
#include "fake_cuda_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ------------------------------------------------------------------ range registries */

struct range {
    uint64_t base, size;
    int dev;
    unsigned long long id;
};
struct registry {
    pthread_rwlock_t lock;
    struct range *r; /* sorted by base */
    size_t n, cap;
};
static struct registry g_dev = {.lock = PTHREAD_RWLOCK_INITIALIZER};
static struct registry g_host = {.lock = PTHREAD_RWLOCK_INITIALIZER};
static unsigned long long g_next_buffer_id = 1;

/* index of the first range with base > p; caller holds the lock */
static size_t upper(const struct registry *g, uint64_t p)
{
    size_t lo = 0, hi = g->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g->r[mid].base <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int reg_add(struct registry *g, uint64_t base, uint64_t size, int dev)
{
    pthread_rwlock_wrlock(&g->lock);
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 64;
        struct range *grown = realloc(g->r, cap * sizeof *grown);
        if (!grown) {
            pthread_rwlock_unlock(&g->lock);
            return -1;
        }
        g->r = grown;
        g->cap = cap;
    }
    size_t i = upper(g, base);
    memmove(&g->r[i + 1], &g->r[i], (g->n - i) * sizeof g->r[0]);
    g->r[i] = (struct range){base, size, dev, g_next_buffer_id++};
    g->n++;
    pthread_rwlock_unlock(&g->lock);
    return 0;
}

/* remove the range starting exactly at base; its size, or 0 */
static uint64_t reg_remove(struct registry *g, uint64_t base)
{
    uint64_t size = 0;
    pthread_rwlock_wrlock(&g->lock);
    size_t i = upper(g, base);
    if (i > 0 && g->r[i - 1].base == base) {
        size = g->r[i - 1].size ? g->r[i - 1].size : 1;
        memmove(&g->r[i - 1], &g->r[i], (g->n - i) * sizeof g->r[0]);
        g->n--;
    }
    pthread_rwlock_unlock(&g->lock);
    return size;
}

/* the range containing [p, p + bytes) */
static int reg_find(struct registry *g, uint64_t p, uint64_t bytes, struct range *out)
{
    int found = 0;
    pthread_rwlock_rdlock(&g->lock);
    size_t i = upper(g, p);
    if (i > 0) {
        const struct range *r = &g->r[i - 1];
        if (p - r->base <= r->size && bytes <= r->size - (p - r->base)) {
            *out = *r;
            found = 1;
        }
    }
    pthread_rwlock_unlock(&g->lock);
    return found;
}

uint64_t fake_devmem_map(uint64_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = bytes ? (size_t)((bytes + page - 1) / page * page) : page;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED || reg_add(&g_dev, (uint64_t)(uintptr_t)p, bytes, fake_cuda_current_device()) != 0) {
        fprintf(stderr, "fake libcuda (test double): cannot map %llu bytes of device memory\n",
                (unsigned long long)bytes);
        abort();
    }
    return (uint64_t)(uintptr_t)p;
}

/* Freed ranges are not handed out again at once: their pages are dropped and made inaccessible,
 * and the address range is kept reserved until QUARANTINE later frees. (A driver may reuse an
 * address right away; code that books allocations by address after the real free returns then
 * races with another thread's allocation of the same address. FAKE_CUDA_REUSE_ADDRESSES=1
 * releases ranges at once to expose that race.) */
#define QUARANTINE 1024
static struct {
    void *p;
    size_t len;
} g_quarantine[QUARANTINE];
static unsigned g_q_next;
static pthread_mutex_t g_q_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_reuse = -1;

void fake_devmem_unmap(uint64_t base)
{
    uint64_t size = reg_remove(&g_dev, base);
    if (!size)
        return;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = (size_t)((size + page - 1) / page * page);
    void *p = (void *)(uintptr_t)base;
    if (__atomic_load_n(&g_reuse, __ATOMIC_RELAXED) < 0) {
        const char *e = getenv("FAKE_CUDA_REUSE_ADDRESSES"); /* test double: env */
        __atomic_store_n(&g_reuse, e && *e == '1', __ATOMIC_RELAXED);
    }
    if (g_reuse) {
        munmap(p, len);
        return;
    }
    madvise(p, len, MADV_DONTNEED);
    mprotect(p, len, PROT_NONE);
    pthread_mutex_lock(&g_q_mu);
    void *old = g_quarantine[g_q_next].p;
    size_t old_len = g_quarantine[g_q_next].len;
    g_quarantine[g_q_next].p = p;
    g_quarantine[g_q_next].len = len;
    g_q_next = (g_q_next + 1) % QUARANTINE;
    pthread_mutex_unlock(&g_q_mu);
    if (old)
        munmap(old, old_len);
}

int fake_devmem_find(uint64_t ptr, uint64_t bytes, uint64_t *base, uint64_t *size)
{
    struct range r;
    if (!reg_find(&g_dev, ptr, bytes, &r))
        return 0;
    if (base)
        *base = r.base;
    if (size)
        *size = r.size;
    return 1;
}

void fake_hostmem_register(void *p, size_t bytes) { reg_add(&g_host, (uint64_t)(uintptr_t)p, bytes, -1); }
int fake_hostmem_unregister(void *p) { return reg_remove(&g_host, (uint64_t)(uintptr_t)p) != 0; }
int fake_hostmem_is_pinned(const void *p, size_t bytes)
{
    struct range r;
    return reg_find(&g_host, (uint64_t)(uintptr_t)p, bytes, &r);
}

static int dev_ok(CUdeviceptr p, size_t bytes) { return p && fake_devmem_find(p, bytes, NULL, NULL); }

/* ------------------------------------------------------------------ copies */

enum side { DEV, HOST };

/* validate, then run in stream order */
static CUresult copy(void *dst, enum side dst_side, const void *src, enum side src_side, size_t bytes, CUstream s,
                     int per_thread, int sync)
{
    (void)sync; /* both complete before returning */
    if (!dst || !src)
        return CUDA_ERROR_INVALID_VALUE;
    if ((dst_side == DEV && !dev_ok((CUdeviceptr)(uintptr_t)dst, bytes)) ||
        (src_side == DEV && !dev_ok((CUdeviceptr)(uintptr_t)src, bytes)))
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = fake_stream_order(s, per_thread);
    if (rc == CUDA_SUCCESS && bytes)
        memmove(dst, src, bytes);
    return rc;
}

#define D(p) ((void *)(uintptr_t)(p))
#define CD(p) ((const void *)(uintptr_t)(p))

FAKE_EXPORT CUresult cuMemcpyHtoD(CUdeviceptr dst, const void *src, size_t n) { FAKE_COUNT(); return copy(D(dst), DEV, src, HOST, n, NULL, 0, 1); }
FAKE_EXPORT CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr dst, const void *src, size_t n) { FAKE_COUNT(); return copy(D(dst), DEV, src, HOST, n, NULL, 1, 1); }
FAKE_EXPORT CUresult cuMemcpyDtoH(void *dst, CUdeviceptr src, size_t n) { FAKE_COUNT(); return copy(dst, HOST, CD(src), DEV, n, NULL, 0, 1); }
FAKE_EXPORT CUresult cuMemcpyDtoH_v2_ptds(void *dst, CUdeviceptr src, size_t n) { FAKE_COUNT(); return copy(dst, HOST, CD(src), DEV, n, NULL, 1, 1); }
FAKE_EXPORT CUresult cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t n) { FAKE_COUNT(); return copy(D(dst), DEV, CD(src), DEV, n, NULL, 0, 1); }
FAKE_EXPORT CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n) { FAKE_COUNT(); return copy(D(dst), DEV, CD(src), DEV, n, NULL, 1, 1); }
FAKE_EXPORT CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void *src, size_t n, CUstream s) { FAKE_COUNT(); return copy(D(dst), DEV, src, HOST, n, s, 0, 0); }
FAKE_EXPORT CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void *src, size_t n, CUstream s) { FAKE_COUNT(); return copy(D(dst), DEV, src, HOST, n, s, 1, 0); }
FAKE_EXPORT CUresult cuMemcpyDtoHAsync(void *dst, CUdeviceptr src, size_t n, CUstream s) { FAKE_COUNT(); return copy(dst, HOST, CD(src), DEV, n, s, 0, 0); }
FAKE_EXPORT CUresult cuMemcpyDtoHAsync_v2_ptsz(void *dst, CUdeviceptr src, size_t n, CUstream s) { FAKE_COUNT(); return copy(dst, HOST, CD(src), DEV, n, s, 1, 0); }
FAKE_EXPORT CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { FAKE_COUNT(); return copy(D(dst), DEV, CD(src), DEV, n, s, 0, 0); }
FAKE_EXPORT CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { FAKE_COUNT(); return copy(D(dst), DEV, CD(src), DEV, n, s, 1, 0); }

/* unified addressing: the side of each pointer is what the registry says */
static enum side side_of(CUdeviceptr p) { return fake_devmem_find(p, 1, NULL, NULL) ? DEV : HOST; }
FAKE_EXPORT CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n) { FAKE_COUNT(); return copy(D(dst), side_of(dst), CD(src), side_of(src), n, NULL, 0, 1); }
FAKE_EXPORT CUresult cuMemcpy_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n) { FAKE_COUNT(); return copy(D(dst), side_of(dst), CD(src), side_of(src), n, NULL, 1, 1); }
FAKE_EXPORT CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { FAKE_COUNT(); return copy(D(dst), side_of(dst), CD(src), side_of(src), n, s, 0, 0); }
FAKE_EXPORT CUresult cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) { FAKE_COUNT(); return copy(D(dst), side_of(dst), CD(src), side_of(src), n, s, 1, 0); }
FAKE_EXPORT CUresult cuMemcpyPeer(CUdeviceptr dst, CUcontext dc, CUdeviceptr src, CUcontext sc, size_t n)
{
    (void)dc;
    (void)sc;
    FAKE_COUNT();
    return copy(D(dst), DEV, CD(src), DEV, n, NULL, 0, 1);
}
FAKE_EXPORT CUresult cuMemcpyPeerAsync(CUdeviceptr dst, CUcontext dc, CUdeviceptr src, CUcontext sc, size_t n,
                                       CUstream s)
{
    (void)dc;
    (void)sc;
    FAKE_COUNT();
    return copy(D(dst), DEV, CD(src), DEV, n, s, 0, 0);
}

/* 2D copies between pitched host / device rows (arrays are not modelled) */
/* start of one side of a 2D copy, after checking its rows lie in one allocation if on the device */
static int side_2d(CUmemorytype type, const void *host, CUdeviceptr dev, size_t x, size_t y, size_t pitch,
                   size_t width, size_t height, unsigned char **start, enum side *where)
{
    if (type == CU_MEMORYTYPE_UNIFIED)
        type = fake_devmem_find(dev, 1, NULL, NULL) ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
    size_t offset = y * pitch + x, span = pitch * (height - 1) + width;
    if (type == CU_MEMORYTYPE_HOST) {
        const unsigned char *h = host ? host : (const unsigned char *)(uintptr_t)dev;
        if (!h)
            return 0;
        *start = (unsigned char *)(uintptr_t)(h + offset);
        *where = HOST;
        return 1;
    }
    if (type != CU_MEMORYTYPE_DEVICE || !dev_ok(dev + offset, span))
        return 0;
    *start = (unsigned char *)(uintptr_t)(dev + offset);
    *where = DEV;
    return 1;
}

static CUresult copy2d(const CUDA_MEMCPY2D *p, CUstream s, int per_thread, int sync)
{
    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    if (p->WidthInBytes == 0 || p->Height == 0)
        return CUDA_SUCCESS;
    if (p->srcPitch < p->WidthInBytes || p->dstPitch < p->WidthInBytes)
        return CUDA_ERROR_INVALID_VALUE;
    unsigned char *src, *dst;
    enum side src_side, dst_side;
    if (!side_2d(p->srcMemoryType, p->srcHost, p->srcDevice, p->srcXInBytes, p->srcY, p->srcPitch, p->WidthInBytes,
                 p->Height, &src, &src_side) ||
        !side_2d(p->dstMemoryType, p->dstHost, p->dstDevice, p->dstXInBytes, p->dstY, p->dstPitch, p->WidthInBytes,
                 p->Height, &dst, &dst_side))
        return CUDA_ERROR_INVALID_VALUE;
    (void)sync;
    (void)src_side;
    (void)dst_side;
    CUresult rc = fake_stream_order(s, per_thread);
    for (size_t row = 0; rc == CUDA_SUCCESS && row < p->Height; row++)
        memmove(dst + row * p->dstPitch, src + row * p->srcPitch, p->WidthInBytes);
    return rc;
}

FAKE_EXPORT CUresult cuMemcpy2D(const CUDA_MEMCPY2D *p) { FAKE_COUNT(); return copy2d(p, NULL, 0, 1); }
FAKE_EXPORT CUresult cuMemcpy2D_v2_ptds(const CUDA_MEMCPY2D *p) { FAKE_COUNT(); return copy2d(p, NULL, 1, 1); }
FAKE_EXPORT CUresult cuMemcpy2DUnaligned(const CUDA_MEMCPY2D *p) { FAKE_COUNT(); return copy2d(p, NULL, 0, 1); }
FAKE_EXPORT CUresult cuMemcpy2DUnaligned_v2_ptds(const CUDA_MEMCPY2D *p) { FAKE_COUNT(); return copy2d(p, NULL, 1, 1); }
FAKE_EXPORT CUresult cuMemcpy2DAsync(const CUDA_MEMCPY2D *p, CUstream s) { FAKE_COUNT(); return copy2d(p, s, 0, 0); }
FAKE_EXPORT CUresult cuMemcpy2DAsync_v2_ptsz(const CUDA_MEMCPY2D *p, CUstream s) { FAKE_COUNT(); return copy2d(p, s, 1, 0); }

/* managed memory is ordinary device memory here: advice and prefetch only check the range */
static CUresult managed_range(CUdeviceptr p, size_t n, CUstream s)
{
    unsigned flags;
    if (!dev_ok(p, n))
        return CUDA_ERROR_INVALID_VALUE;
    return fake_stream_flags(s, 0, &flags);
}
FAKE_EXPORT CUresult cuMemPrefetchAsync(CUdeviceptr p, size_t n, CUdevice d, CUstream s)
{
    (void)d;
    return managed_range(p, n, s);
}
FAKE_EXPORT CUresult cuMemPrefetchAsync_ptsz(CUdeviceptr p, size_t n, CUdevice d, CUstream s)
{
    (void)d;
    return managed_range(p, n, s);
}
FAKE_EXPORT CUresult cuMemAdvise(CUdeviceptr p, size_t n, CUmem_advise a, CUdevice d)
{
    (void)a;
    (void)d;
    return managed_range(p, n, NULL);
}

/* ------------------------------------------------------------------ memsets */

struct fill {
    unsigned char *dst;
    size_t pitch, width, height; /* width in elements */
    unsigned elem;
    uint32_t value;
};
static void do_fill(void *p)
{
    struct fill *f = p;
    for (size_t row = 0; row < f->height; row++) {
        unsigned char *d = f->dst + row * f->pitch;
        if (f->elem == 1) {
            memset(d, (int)(f->value & 0xff), f->width);
            continue;
        }
        for (size_t i = 0; i < f->width; i++) {
            if (f->elem == 2) {
                uint16_t v = (uint16_t)f->value;
                memcpy(d + 2 * i, &v, 2);
            } else {
                memcpy(d + 4 * i, &f->value, 4);
            }
        }
    }
}

static CUresult fill(CUdeviceptr dst, size_t pitch, uint32_t value, unsigned elem, size_t width, size_t height,
                     CUstream s, int per_thread, int sync)
{
    if (height == 0 || width == 0)
        return CUDA_SUCCESS;
    if (pitch < width * elem)
        return CUDA_ERROR_INVALID_VALUE;
    size_t span = pitch * (height - 1) + width * elem;
    if (!dev_ok(dst, span))
        return CUDA_ERROR_INVALID_VALUE;
    (void)sync; /* both complete before returning */
    CUresult rc = fake_stream_order(s, per_thread);
    if (rc == CUDA_SUCCESS) {
        struct fill f = {(unsigned char *)(uintptr_t)dst, pitch, width, height, elem, value};
        do_fill(&f);
    }
    return rc;
}

FAKE_EXPORT CUresult cuMemsetD8(CUdeviceptr d, unsigned char v, size_t n) { FAKE_COUNT(); return fill(d, n, v, 1, n, 1, NULL, 0, 1); }
FAKE_EXPORT CUresult cuMemsetD8_v2_ptds(CUdeviceptr d, unsigned char v, size_t n) { FAKE_COUNT(); return fill(d, n, v, 1, n, 1, NULL, 1, 1); }
FAKE_EXPORT CUresult cuMemsetD16(CUdeviceptr d, unsigned short v, size_t n) { FAKE_COUNT(); return fill(d, 2 * n, v, 2, n, 1, NULL, 0, 1); }
FAKE_EXPORT CUresult cuMemsetD16_v2_ptds(CUdeviceptr d, unsigned short v, size_t n) { FAKE_COUNT(); return fill(d, 2 * n, v, 2, n, 1, NULL, 1, 1); }
FAKE_EXPORT CUresult cuMemsetD32(CUdeviceptr d, unsigned int v, size_t n) { FAKE_COUNT(); return fill(d, 4 * n, v, 4, n, 1, NULL, 0, 1); }
FAKE_EXPORT CUresult cuMemsetD32_v2_ptds(CUdeviceptr d, unsigned int v, size_t n) { FAKE_COUNT(); return fill(d, 4 * n, v, 4, n, 1, NULL, 1, 1); }
FAKE_EXPORT CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { FAKE_COUNT(); return fill(d, n, v, 1, n, 1, s, 0, 0); }
FAKE_EXPORT CUresult cuMemsetD8Async_ptsz(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { FAKE_COUNT(); return fill(d, n, v, 1, n, 1, s, 1, 0); }
FAKE_EXPORT CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream s) { FAKE_COUNT(); return fill(d, 2 * n, v, 2, n, 1, s, 0, 0); }
FAKE_EXPORT CUresult cuMemsetD16Async_ptsz(CUdeviceptr d, unsigned short v, size_t n, CUstream s) { FAKE_COUNT(); return fill(d, 2 * n, v, 2, n, 1, s, 1, 0); }
FAKE_EXPORT CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream s) { FAKE_COUNT(); return fill(d, 4 * n, v, 4, n, 1, s, 0, 0); }
FAKE_EXPORT CUresult cuMemsetD32Async_ptsz(CUdeviceptr d, unsigned int v, size_t n, CUstream s) { FAKE_COUNT(); return fill(d, 4 * n, v, 4, n, 1, s, 1, 0); }
FAKE_EXPORT CUresult cuMemsetD2D8(CUdeviceptr d, size_t pitch, unsigned char v, size_t w, size_t h) { FAKE_COUNT(); return fill(d, pitch, v, 1, w, h, NULL, 0, 1); }
FAKE_EXPORT CUresult cuMemsetD2D8_v2_ptds(CUdeviceptr d, size_t pitch, unsigned char v, size_t w, size_t h) { FAKE_COUNT(); return fill(d, pitch, v, 1, w, h, NULL, 1, 1); }
FAKE_EXPORT CUresult cuMemsetD2D8Async(CUdeviceptr d, size_t pitch, unsigned char v, size_t w, size_t h, CUstream s) { FAKE_COUNT(); return fill(d, pitch, v, 1, w, h, s, 0, 0); }
FAKE_EXPORT CUresult cuMemsetD2D8Async_ptsz(CUdeviceptr d, size_t pitch, unsigned char v, size_t w, size_t h, CUstream s) { FAKE_COUNT(); return fill(d, pitch, v, 1, w, h, s, 1, 0); }

/* ------------------------------------------------------------------ pinned host memory */

FAKE_EXPORT CUresult cuMemAllocHost(void **pp, size_t bytes)
{
    FAKE_COUNT();
    if (!pp)
        return CUDA_ERROR_INVALID_VALUE;
    *pp = malloc(bytes ? bytes : 1);
    if (!*pp)
        return CUDA_ERROR_OUT_OF_MEMORY;
    fake_hostmem_register(*pp, bytes);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemHostRegister(void *p, size_t bytes, unsigned flags)
{
    (void)flags;
    FAKE_COUNT();
    if (!p || !bytes)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake_hostmem_is_pinned(p, 1))
        return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    fake_hostmem_register(p, bytes);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemHostUnregister(void *p)
{
    FAKE_COUNT();
    return fake_hostmem_unregister(p) ? CUDA_SUCCESS : CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
}

FAKE_EXPORT CUresult cuMemHostGetDevicePointer(CUdeviceptr *pd, void *p, unsigned flags)
{
    if (!pd || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_hostmem_is_pinned(p, 1))
        return CUDA_ERROR_INVALID_VALUE;
    *pd = (CUdeviceptr)(uintptr_t)p; /* unified addressing */
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemHostGetFlags(unsigned *flags, void *p)
{
    if (!flags || !fake_hostmem_is_pinned(p, 1))
        return CUDA_ERROR_INVALID_VALUE;
    *flags = 0;
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ pointer queries */

FAKE_EXPORT CUresult cuMemGetAddressRange(CUdeviceptr *base, size_t *size, CUdeviceptr p)
{
    uint64_t b, s;
    if (!fake_devmem_find(p, 1, &b, &s))
        return CUDA_ERROR_NOT_FOUND;
    if (base)
        *base = b;
    if (size)
        *size = s;
    return CUDA_SUCCESS;
}

static CUresult pointer_attribute(void *data, CUpointer_attribute a, CUdeviceptr p)
{
    struct range r;
    int dev = reg_find(&g_dev, p, 1, &r);
    if (!dev && !reg_find(&g_host, p, 1, &r))
        return CUDA_ERROR_INVALID_VALUE; /* memory the driver does not know */
    switch (a) {
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE: *(unsigned *)data = dev ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST; break;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: *(CUdeviceptr *)data = p; break;
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
        if (dev)
            return CUDA_ERROR_INVALID_VALUE;
        *(void **)data = (void *)(uintptr_t)p;
        break;
    case CU_POINTER_ATTRIBUTE_CONTEXT: {
        CUcontext c = NULL;
        cuCtxGetCurrent(&c);
        *(CUcontext *)data = c;
        break;
    }
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: *(int *)data = dev ? r.dev : fake_cuda_current_device(); break;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: *(CUdeviceptr *)data = r.base; break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE: *(size_t *)data = r.size; break;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID: *(unsigned long long *)data = r.id; break;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
    case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS:
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE: *(int *)data = 0; break;
    case CU_POINTER_ATTRIBUTE_MAPPED: *(int *)data = 1; break;
    case CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES: *(unsigned long long *)data = 0; break;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE: *(CUmemoryPool *)data = NULL; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuPointerGetAttribute(void *data, CUpointer_attribute a, CUdeviceptr p)
{
    FAKE_COUNT();
    if (!data)
        return CUDA_ERROR_INVALID_VALUE;
    return pointer_attribute(data, a, p);
}

FAKE_EXPORT CUresult cuPointerGetAttributes(unsigned n, CUpointer_attribute *attrs, void **data, CUdeviceptr p)
{
    FAKE_COUNT();
    if (!attrs || !data)
        return CUDA_ERROR_INVALID_VALUE;
    struct range r;
    int known = reg_find(&g_dev, p, 1, &r) || reg_find(&g_host, p, 1, &r);
    for (unsigned i = 0; i < n; i++) {
        if (!data[i])
            continue;
        if (!known) { /* unregistered host memory: type 0, everything else empty, no error */
            if (attrs[i] == CU_POINTER_ATTRIBUTE_MEMORY_TYPE)
                *(unsigned *)data[i] = 0;
            else if (attrs[i] == CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL)
                *(int *)data[i] = -2;
            else if (attrs[i] == CU_POINTER_ATTRIBUTE_CONTEXT)
                *(CUcontext *)data[i] = NULL;
            else if (attrs[i] == CU_POINTER_ATTRIBUTE_HOST_POINTER || attrs[i] == CU_POINTER_ATTRIBUTE_DEVICE_POINTER)
                *(void **)data[i] = NULL;
            else
                *(int *)data[i] = 0;
            continue;
        }
        CUresult rc = pointer_attribute(data[i], attrs[i], p);
        if (rc != CUDA_SUCCESS && attrs[i] == CU_POINTER_ATTRIBUTE_HOST_POINTER)
            *(void **)data[i] = NULL;
        else if (rc != CUDA_SUCCESS)
            return rc;
    }
    return CUDA_SUCCESS;
}

/* fork child: the registries' locks must not stay held by a thread that does not exist here */
static void fork_child(void)
{
    pthread_mutex_init(&g_q_mu, NULL);
    pthread_rwlock_init(&g_dev.lock, NULL);
    pthread_rwlock_init(&g_host.lock, NULL);
}
__attribute__((constructor)) static void install_fork_handler(void) { pthread_atfork(NULL, NULL, fork_child); }
