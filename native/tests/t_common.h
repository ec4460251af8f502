/*
 * Shared helpers of the driver-API test programs (run against the fake libcuda.so.1 TEST
 * DOUBLE with LD_PRELOAD=libxpushim.so and XPUSHIM_REGION=<region>): CHECK, the region
 * mapping the tests read usage from, clocks.
 */
#ifndef XPUSHIM_T_COMMON_H
#define XPUSHIM_T_COMMON_H
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "xpushim_region.h"

#define MIB (1024ull * 1024ull)
#define CHECK(c, ...)                                                                                  \
    do {                                                                                               \
        if (!(c)) {                                                                                    \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                \
            printf(__VA_ARGS__);                                                                       \
            printf("\n");                                                                              \
            fflush(stdout);                                                                            \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

static struct xpu_usage *R; /* the container's usage file (what the shims write) */

static inline void map_region(void)
{
    const char *p = getenv("XPUSHIM_REGION");
    if (!p)
        return;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", p, XPU_USAGE_FILE);
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0, "open %s", path);
    R = mmap(NULL, sizeof *R, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    CHECK(R != MAP_FAILED, "map region");
}

static inline uint64_t used(void) { return R ? atomic_load(&R->dev[0].mem_used) : 0; }
static inline uint64_t metered_ns(void) { return R ? atomic_load(&R->dev[0].gpu_time_ns) : 0; }

static inline double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static inline void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}
#endif
