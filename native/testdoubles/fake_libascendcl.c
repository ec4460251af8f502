/*
 * TEST DOUBLE — fake libascendcl.so for CPU-only CI. NOT CANN/ACL.
 * Device memory budget 32 GiB, fake pointers, events on a simulated timeline where a
 * kernel's duration in microseconds equals its blockDim.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#define EXPORT __attribute__((visibility("default")))
#define GIB (1024ull * 1024 * 1024)
static _Atomic uint64_t g_used, g_next = 0x100000000ull, g_busy_until, g_busy_total;
static uint64_t now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec; }
#define MAXA 1024
static struct { uint64_t p, sz; } g_al[MAXA];
EXPORT int aclrtGetDevice(int32_t *d) { *d = 0; return 0; }
static int alloc(void **p, size_t sz)
{
    if (atomic_load(&g_used) + sz > 32 * GIB) return 207001;
    atomic_fetch_add(&g_used, sz);
    *p = (void *)(uintptr_t)atomic_fetch_add(&g_next, (sz + 4095) & ~4095ull);
    for (int i = 0; i < MAXA; i++) if (!g_al[i].p) { g_al[i].p = (uint64_t)(uintptr_t)*p; g_al[i].sz = sz; break; }
    return 0;
}
EXPORT int aclrtMalloc(void **p, size_t sz, int pol) { (void)pol; return alloc(p, sz); }
EXPORT int aclrtMallocCached(void **p, size_t sz, int pol) { (void)pol; return alloc(p, sz); }
EXPORT int aclrtMallocAlign32(void **p, size_t sz, int pol) { (void)pol; return alloc(p, sz); }
EXPORT int aclrtFree(void *p)
{
    for (int i = 0; i < MAXA; i++) if (g_al[i].p == (uint64_t)(uintptr_t)p) { atomic_fetch_sub(&g_used, g_al[i].sz); g_al[i].p = 0; return 0; }
    return 107000;
}
EXPORT int aclrtGetMemInfo(int attr, size_t *f, size_t *t) { (void)attr; *t = 32 * GIB; *f = 32 * GIB - atomic_load(&g_used); return 0; }
EXPORT int aclrtLaunchKernel(void *fn, uint32_t blockDim, const void *a, size_t n, void *s)
{
    (void)fn; (void)a; (void)n; (void)s;
    uint64_t now = now_ns(), cur = atomic_load(&g_busy_until), dur = (uint64_t)blockDim * 1000ull;
    while (!atomic_compare_exchange_weak(&g_busy_until, &cur, (cur > now ? cur : now) + dur)) {}
    atomic_fetch_add(&g_busy_total, dur);
    return 0;
}
EXPORT uint64_t fake_acl_busy_ns(void) { return atomic_load(&g_busy_total); }
struct ev { uint64_t ts; };
EXPORT int aclrtCreateEvent(void **e) { *e = calloc(1, sizeof(struct ev)); return 0; }
EXPORT int aclrtRecordEvent(void *e, void *s) { (void)s; uint64_t n = now_ns(), b = atomic_load(&g_busy_until); ((struct ev *)e)->ts = b > n ? b : n; return 0; }
EXPORT int aclrtQueryEventStatus(void *e, int *st) { *st = now_ns() >= ((struct ev *)e)->ts ? 1 : 0; return 0; }
EXPORT int aclrtSynchronizeEvent(void *e) { uint64_t n = now_ns(), t = ((struct ev *)e)->ts; if (t > n) { struct timespec ts = {(time_t)((t - n) / 1000000000ull), (long)((t - n) % 1000000000ull)}; nanosleep(&ts, NULL); } return 0; }
EXPORT int aclrtEventElapsedTime(float *ms, void *a, void *b) { *ms = (float)((double)(int64_t)(((struct ev *)b)->ts - ((struct ev *)a)->ts) / 1e6); return 0; }
