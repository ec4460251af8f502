/*
 * Launch-overhead micro-benchmark on the fake libcuda.so.1 TEST DOUBLE (not a test, not a
 * GPU number). Run with LD_PRELOAD=libxpushim.so. In one process, rounds alternate:
 *   direct   the fake's own cuLaunchKernel (address from fake_cuda_raw, bypassing the shim)
 *   shim     cuLaunchKernel through the shim, compute limit off (memory quota only)
 *   limited  through the shim with a compute share configured (10000 bp: never throttles,
 *            but the meter runs: clock read, gate, batch bookkeeping, event every batch)
 * The compute configuration is switched live through the region between rounds.
 * Zero-length kernels (gridDimX = 0) so the simulated GPU never backs up.
 * BENCH_CLOCK=cpu times rounds with the thread's CPU clock instead of the wall clock: on a
 * loaded shared host, time the thread spent descheduled is then not counted (no launch sleeps
 * in these rounds: limited_throttled_launches says so).
 * Prints one JSON object; medians over rounds.
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "xpushim_region.h"

void *fake_cuda_raw(const char *name);
typedef CUresult (*lk_t)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                         void **, void **);

static clockid_t g_clock = CLOCK_MONOTONIC;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(g_clock, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double per_call_ns(lk_t f, long n)
{
    double t0 = now_s();
    for (long i = 0; i < n; i++)
        f(NULL, 0, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
    return (now_s() - t0) * 1e9 / (double)n;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* the node agent's live resize, done by the benchmark on the region's config file */
static void set_share(struct xpu_config *r, uint32_t bp)
{
    atomic_fetch_add(&r->hdr.generation, 1);
    r->dev[0].share_request_bp = bp;
    r->dev[0].share_limit_bp = bp;
    atomic_fetch_add(&r->hdr.generation, 1);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    const char *clock_name = getenv("BENCH_CLOCK");
    if (clock_name && strcmp(clock_name, "cpu") == 0)
        g_clock = CLOCK_THREAD_CPUTIME_ID;
    cuInit(0);
    lk_t direct = (lk_t)fake_cuda_raw("cuLaunchKernel");
    lk_t shim = (lk_t)cuLaunchKernel;
    const char *rp = getenv("XPUSHIM_REGION");
    struct xpu_config *r = NULL;
    char cfg_path[512];
    if (rp && snprintf(cfg_path, sizeof cfg_path, "%s/%s", rp, XPU_CONFIG_FILE) < (int)sizeof cfg_path) {
        int fd = open(cfg_path, O_RDWR);
        if (fd >= 0) {
            r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
            if (r == MAP_FAILED)
                r = NULL;
        }
    }
    double d[64], s[64], l[64];
    if (rounds > 64)
        rounds = 64;
    per_call_ns(direct, n / 10); /* warm up */
    per_call_ns(shim, n / 10);
    for (int i = 0; i < rounds; i++) {
        d[i] = per_call_ns(direct, n);
        if (r)
            set_share(r, 0);
        s[i] = per_call_ns(shim, n);
        if (r) {
            set_share(r, 10000);
            l[i] = per_call_ns(shim, n);
        } else {
            l[i] = 0;
        }
    }
    qsort(d, (size_t)rounds, sizeof d[0], cmp);
    qsort(s, (size_t)rounds, sizeof s[0], cmp);
    qsort(l, (size_t)rounds, sizeof l[0], cmp);
    double dm = d[rounds / 2], sm = s[rounds / 2], lm = l[rounds / 2];
    unsigned long long thr = 0;
    if (r && snprintf(cfg_path, sizeof cfg_path, "%s/%s", rp, XPU_USAGE_FILE) < (int)sizeof cfg_path) {
        int fd = open(cfg_path, O_RDONLY);
        struct xpu_usage *u = fd >= 0 ? mmap(NULL, sizeof *u, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
        if (fd >= 0)
            close(fd);
        if (u != MAP_FAILED)
            thr = (unsigned long long)atomic_load(&u->dev[0].throttled_launches);
    }
    printf("{\"double\": \"fake libcuda.so.1 (test double)\", \"clock\": \"%s\", \"region\": %s, \"calls_per_round\": %ld, "
           "\"rounds\": %d, \"direct_ns\": %.2f, \"shim_ns\": %.2f, \"shim_added_ns\": %.2f, "
           "\"shim_ratio\": %.3f, \"limited_ns\": %.2f, \"limited_added_ns\": %.2f, \"limited_ratio\": %.3f, "
           "\"limited_throttled_launches\": %llu}\n",
           g_clock == CLOCK_MONOTONIC ? "wall" : "thread_cpu", r ? "true" : "false", n, rounds, dm, sm, sm - dm, sm / dm, lm, r ? lm - dm : 0.0, r ? lm / dm : 0.0, thr);
    return 0;
}
