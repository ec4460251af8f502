/* HIP test program (fake libamdhip64.so TEST DOUBLE + LD_PRELOAD shim). Quota 1024 MiB. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); exit(1); } } while (0)
#define MIB (1024ull * 1024ull)
int hipMalloc(void **p, size_t sz);
int hipFree(void *p);
int hipMallocAsync(void **p, size_t sz, void *s);
int hipFreeAsync(void *p, void *s);
int hipMemGetInfo(size_t *f, size_t *t);
int hipDeviceTotalMem(size_t *b, int d);
int hipGetProcAddress(const char *sym, void **pfn, int v, uint64_t fl, int *st);
int hipModuleLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                          unsigned shm, void *s, void **p, void **x);
uint64_t fake_hip_busy_ns(void);

int main(int argc, char **argv)
{
    void *a, *b;
    CHECK(hipMalloc(&a, 800 * MIB) == 0, "800 fits");
    CHECK(hipMallocAsync(&b, 300 * MIB, NULL) == 2, "async over quota -> hipErrorOutOfMemory");
    size_t f, t, tot;
    CHECK(hipMemGetInfo(&f, &t) == 0 && t == 1024 * MIB && f == 224 * MIB, "meminfo slice");
    CHECK(hipDeviceTotalMem(&tot, 0) == 0 && tot == 1024 * MIB, "total = quota");
    CHECK(hipFree(a) == 0, "free");
    void *fn = NULL;
    int st;
    CHECK(hipGetProcAddress("hipMalloc", &fn, 60200, 0, &st) == 0 && fn, "getprocaddress");
    Dl_info di;
    CHECK(dladdr(fn, &di) && di.dli_fname && __builtin_strstr(di.dli_fname, "libxpushim"), "hipGetProcAddress substituted");
    CHECK(((int (*)(void **, size_t))fn)(&a, 2000 * MIB) == 2, "resolved hipMalloc is accounted");
    CHECK(((int (*)(void **, size_t))fn)(&a, 1000 * MIB) == 0 && hipFreeAsync(a, NULL) == 0, "fits, freed async");
    CHECK(hipMalloc(&a, 1000 * MIB) == 0, "free async uncharged");
    if (argc >= 2) {
        double secs = atof(argv[1]);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        double el;
        do { hipModuleLaunchKernel(NULL, 1000, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL); clock_gettime(CLOCK_MONOTONIC, &t1);
             el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9; } while (el < 0.5);
        uint64_t b0 = fake_hip_busy_ns();
        t0 = t1;
        do { hipModuleLaunchKernel(NULL, 1000, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL); clock_gettime(CLOCK_MONOTONIC, &t1);
             el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9; } while (el < secs);
        printf("share %.2f\n", 100.0 * (double)(fake_hip_busy_ns() - b0) / (el * 1e9));
    }
    printf("hip ok\n");
    return 0;
}
