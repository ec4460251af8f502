/*
 * NVML view test program (fake libnvidia-ml.so.1 TEST DOUBLE + LD_PRELOAD shim): the
 * library is dlopen'ed and every function found with dlsym, as nvidia-smi and pynvml do.
 * Expects a region with a 2048 MiB quota for device uuid ...4440 and `EXPECT_USED` bytes
 * charged by processes of the container (argv[1]), whose pids are listed in argv[2..].
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { unsigned long long total, free, used; } mem1;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } mem2;
typedef struct { unsigned int pid; unsigned long long used; } p1;
typedef struct { unsigned int pid; unsigned long long used; unsigned int gi, ci; } p2;
typedef struct { unsigned int gpu, memory; } util;

#define CHECK(c, ...) do { if (!(c)) { printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); exit(1); } } while (0)
#define MIB (1024ull * 1024ull)

int main(int argc, char **argv)
{
    CHECK(argc >= 2, "usage");
    unsigned long long expect = strtoull(argv[1], NULL, 0);
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    CHECK(h, "dlopen");
    int (*init)(void) = (int (*)(void))dlsym(h, "nvmlInit_v2");
    int (*byidx)(unsigned, void **) = (int (*)(unsigned, void **))dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
    int (*gm1)(void *, mem1 *) = (int (*)(void *, mem1 *))dlsym(h, "nvmlDeviceGetMemoryInfo");
    int (*gm2)(void *, mem2 *) = (int (*)(void *, mem2 *))dlsym(h, "nvmlDeviceGetMemoryInfo_v2");
    int (*gp1)(void *, unsigned *, p1 *) = (int (*)(void *, unsigned *, p1 *))dlsym(h, "nvmlDeviceGetComputeRunningProcesses");
    int (*gp3)(void *, unsigned *, p2 *) = (int (*)(void *, unsigned *, p2 *))dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3");
    int (*gu)(void *, util *) = (int (*)(void *, util *))dlsym(h, "nvmlDeviceGetUtilizationRates");
    CHECK(init && byidx && gm1 && gm2 && gp1 && gp3 && gu, "symbols");
    CHECK(init() == 0, "init");
    void *d0, *d1;
    CHECK(byidx(0, &d0) == 0 && byidx(1, &d1) == 0, "handles");
    mem1 m;
    CHECK(gm1(d0, &m) == 0, "mem v1");
    CHECK(m.total == 2048 * MIB && m.used == expect && m.free == 2048 * MIB - expect,
          "v1 shows the slice: total %llu used %llu free %llu", m.total, m.used, m.free);
    mem2 m2 = {.version = 2};
    CHECK(gm2(d0, &m2) == 0, "mem v2");
    CHECK(m2.total == 2048 * MIB && m2.used == expect && m2.reserved == 0, "v2 shows the slice");
    CHECK(gm1(d1, &m) == 0 && m.total == 80ull * 1024 * MIB, "a device outside the container region is untouched");
    unsigned n = 0;
    CHECK(gp3(d0, &n, NULL) == (argc > 2 ? 7 : 0), "size probe");
    CHECK(n == (unsigned)(argc - 2), "count = container processes (%u)", n);
    p2 procs[16];
    n = 16;
    CHECK(gp3(d0, &n, procs) == 0, "v3 list");
    unsigned long long sum = 0;
    for (unsigned i = 0; i < n; i++) {
        int found = 0;
        for (int a = 2; a < argc; a++)
            found |= (unsigned)atoi(argv[a]) == procs[i].pid;
        CHECK(found, "pid %u belongs to the container (other tenants' host pids are hidden)", procs[i].pid);
        sum += procs[i].used;
    }
    CHECK(sum == expect, "per-process memory sums to the container usage");
    p1 pv1[16];
    n = 16;
    CHECK(gp1(d0, &n, pv1) == 0 && n == (unsigned)(argc - 2), "v1 list");
    util u;
    CHECK(gu(d0, &u) == 0 && u.memory == 40, "utilisation passes through when no compute share is set");
    printf("nvml ok\n");
    return 0;
}
