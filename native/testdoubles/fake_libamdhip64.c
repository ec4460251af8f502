/*
 * TEST DOUBLE — fake libamdhip64.so for CPU-only CI. NOT HIP.
 * Device memory budget 64 GiB, fake pointers, simulated timeline (kernel us = grid.x),
 * and a hipGetProcAddress that returns its own exports.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define EXPORT __attribute__((visibility("default")))
#define GIB (1024ull * 1024 * 1024)
typedef struct { uint32_t x, y, z; } dim3;
static _Atomic uint64_t g_used, g_next = 0x200000000ull, g_busy_until, g_busy_total;
static uint64_t now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec; }
#define MAXA 1024
static struct { uint64_t p, sz; } g_al[MAXA];
EXPORT int hipGetDevice(int *d) { *d = 0; return 0; }
static int alloc(void **p, size_t sz)
{
    if (atomic_load(&g_used) + sz > 64 * GIB) return 2;
    atomic_fetch_add(&g_used, sz);
    *p = (void *)(uintptr_t)atomic_fetch_add(&g_next, (sz + 4095) & ~4095ull);
    for (int i = 0; i < MAXA; i++) if (!g_al[i].p) { g_al[i].p = (uint64_t)(uintptr_t)*p; g_al[i].sz = sz; break; }
    return 0;
}
static int dealloc(void *p)
{
    for (int i = 0; i < MAXA; i++) if (g_al[i].p == (uint64_t)(uintptr_t)p) { atomic_fetch_sub(&g_used, g_al[i].sz); g_al[i].p = 0; return 0; }
    return 1;
}
EXPORT int hipMalloc(void **p, size_t sz) { return alloc(p, sz); }
EXPORT int hipExtMallocWithFlags(void **p, size_t sz, unsigned f) { (void)f; return alloc(p, sz); }
EXPORT int hipMallocManaged(void **p, size_t sz, unsigned f) { (void)f; return alloc(p, sz); }
EXPORT int hipMallocAsync(void **p, size_t sz, void *s) { (void)s; return alloc(p, sz); }
EXPORT int hipFree(void *p) { return dealloc(p); }
EXPORT int hipFreeAsync(void *p, void *s) { (void)s; return dealloc(p); }
EXPORT int hipMemGetInfo(size_t *f, size_t *t) { *t = 64 * GIB; *f = 64 * GIB - atomic_load(&g_used); return 0; }
EXPORT int hipDeviceTotalMem(size_t *b, int d) { (void)d; *b = 64 * GIB; return 0; }
static void sim(uint32_t us)
{
    uint64_t now = now_ns(), cur = atomic_load(&g_busy_until), dur = (uint64_t)us * 1000ull;
    while (!atomic_compare_exchange_weak(&g_busy_until, &cur, (cur > now ? cur : now) + dur)) {}
    atomic_fetch_add(&g_busy_total, dur);
}
EXPORT int hipLaunchKernel(const void *f, dim3 g, dim3 b, void **a, size_t shm, void *s) { (void)f; (void)b; (void)a; (void)shm; (void)s; sim(g.x); return 0; }
EXPORT int hipModuleLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shm, void *s, void **p, void **x)
{ (void)f; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)s; (void)p; (void)x; sim(gx); return 0; }
EXPORT int hipGraphLaunch(void *e, void *s) { (void)e; (void)s; sim(100); return 0; }
EXPORT uint64_t fake_hip_busy_ns(void) { return atomic_load(&g_busy_total); }
struct ev { uint64_t ts; };
EXPORT int hipEventCreate(void **e) { *e = calloc(1, sizeof(struct ev)); return 0; }
EXPORT int hipEventRecord(void *e, void *s) { (void)s; uint64_t n = now_ns(), b = atomic_load(&g_busy_until); ((struct ev *)e)->ts = b > n ? b : n; return 0; }
EXPORT int hipEventQuery(void *e) { return now_ns() >= ((struct ev *)e)->ts ? 0 : 600; }
EXPORT int hipEventSynchronize(void *e) { uint64_t n = now_ns(), t = ((struct ev *)e)->ts; if (t > n) { struct timespec ts = {(time_t)((t - n) / 1000000000ull), (long)((t - n) % 1000000000ull)}; nanosleep(&ts, NULL); } return 0; }
EXPORT int hipEventElapsedTime(float *ms, void *a, void *b) { *ms = (float)((double)(int64_t)(((struct ev *)b)->ts - ((struct ev *)a)->ts) / 1e6); return 0; }
EXPORT int hipGetProcAddress(const char *sym, void **pfn, int v, uint64_t fl, int *st)
{
    (void)v; (void)fl;
    static const struct { const char *n; void *f; } t[] = {{"hipMalloc", (void *)hipMalloc}, {"hipFree", (void *)hipFree},
        {"hipMemGetInfo", (void *)hipMemGetInfo}, {"hipModuleLaunchKernel", (void *)hipModuleLaunchKernel}};
    *pfn = NULL;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) if (strcmp(t[i].n, sym) == 0) *pfn = t[i].f;
    if (st) *st = *pfn ? 0 : 1;
    return *pfn ? 0 : 500;
}
