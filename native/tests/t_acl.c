/* ACL test program (fake libascendcl.so TEST DOUBLE + LD_PRELOAD shim). Region quota
 * 1024 MiB. Prototypes declared here, as in the shim (no CANN headers). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); exit(1); } } while (0)
#define MIB (1024ull * 1024ull)
int aclrtMalloc(void **p, size_t sz, int pol);
int aclrtFree(void *p);
int aclrtGetMemInfo(int attr, size_t *f, size_t *t);
int aclrtLaunchKernel(void *fn, uint32_t blockDim, const void *a, size_t n, void *s);
uint64_t fake_acl_busy_ns(void);

int main(int argc, char **argv)
{
    void *a, *b;
    CHECK(aclrtMalloc(&a, 700 * MIB, 0) == 0, "700 fits");
    CHECK(aclrtMalloc(&b, 400 * MIB, 0) == 207001, "over quota -> ACL_ERROR_RT_MEMORY_ALLOCATION");
    size_t f, t;
    CHECK(aclrtGetMemInfo(0, &f, &t) == 0 && t == 1024 * MIB && f == 324 * MIB, "meminfo slice %zu %zu", f, t);
    CHECK(aclrtFree(a) == 0, "free");
    int (*m)(void **, size_t, int) = (int (*)(void **, size_t, int))dlsym(RTLD_DEFAULT, "aclrtMallocCached");
    CHECK(m && m(&b, 1000 * MIB, 0) == 0, "cached alloc via dlsym fits after free");
    CHECK(m(&a, 100 * MIB, 0) == 207001, "and is accounted");
    aclrtFree(b);
    if (argc >= 2) { /* limiter: run for argv[1] seconds of 1 ms kernels, print share */
        double secs = atof(argv[1]);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        double el;
        do { aclrtLaunchKernel(NULL, 1000, NULL, 0, NULL); clock_gettime(CLOCK_MONOTONIC, &t1);
             el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9; } while (el < 0.5);
        uint64_t b0 = fake_acl_busy_ns();
        t0 = t1;
        do { aclrtLaunchKernel(NULL, 1000, NULL, 0, NULL); clock_gettime(CLOCK_MONOTONIC, &t1);
             el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9; } while (el < secs);
        printf("share %.2f\n", 100.0 * (double)(fake_acl_busy_ns() - b0) / (el * 1e9));
    }
    printf("acl ok\n");
    return 0;
}
