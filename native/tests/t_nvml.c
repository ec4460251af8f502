/*
 * NVML view test program (fake libnvidia-ml.so.1 TEST DOUBLE + LD_PRELOAD shim): the
 * library is dlopen'ed and every function found with dlsym, as nvidia-smi and pynvml do.
 * Expects a region with a 2048 MiB quota for device uuid ...4440 and `EXPECT_USED` bytes
 * charged by processes of the container (argv[1], per-process reserves included), whose pids
 * are listed in argv[2..]. With exactly two pids, the agent has mapped them to host pids that
 * the fake lists next to other tenants' (run_tests.sh sets FAKE_NVML_*_PIDS): the graphics,
 * MPS, detail and utilisation lists must show only the container's processes, container pids.
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
typedef struct { unsigned int pid; unsigned long long used; unsigned int gi, ci; unsigned long long cc; } detail;
typedef struct { unsigned int version, mode, n; detail *procs; } detail_list;
typedef struct { unsigned int pid; unsigned long long ts; unsigned int sm, mem, enc, dec; } sample;
#define VERSION(type, v) ((unsigned)(sizeof(type) | ((v) << 24u)))

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
    mem2 m2 = {.version = VERSION(mem2, 2)};
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
    if (argc == 4) {
        unsigned h1 = (unsigned)atoi(argv[2]), h2 = (unsigned)atoi(argv[3]);
        int (*gg3)(void *, unsigned *, p2 *) = (int (*)(void *, unsigned *, p2 *))dlsym(h, "nvmlDeviceGetGraphicsRunningProcesses_v3");
        int (*gg1)(void *, unsigned *, p1 *) = (int (*)(void *, unsigned *, p1 *))dlsym(h, "nvmlDeviceGetGraphicsRunningProcesses");
        int (*gm3)(void *, unsigned *, p2 *) = (int (*)(void *, unsigned *, p2 *))dlsym(h, "nvmlDeviceGetMPSComputeRunningProcesses_v3");
        int (*gdl)(void *, detail_list *) = (int (*)(void *, detail_list *))dlsym(h, "nvmlDeviceGetRunningProcessDetailList");
        int (*gpu)(void *, sample *, unsigned *, unsigned long long) =
            (int (*)(void *, sample *, unsigned *, unsigned long long))dlsym(h, "nvmlDeviceGetProcessUtilization");
        CHECK(gg3 && gg1 && gm3 && gdl && gpu, "list symbols");
        n = 0;
        CHECK(gg3(d0, &n, NULL) == 7 && n == 1, "graphics size probe counts only the container's (%u)", n);
        p2 g[8];
        n = 8;
        CHECK(gg3(d0, &n, g) == 0 && n == 1 && g[0].pid == h1 && g[0].used == 64 * MIB,
              "graphics: only the container's process, container pid (%u entries, pid %u)", n, n ? g[0].pid : 0);
        p1 g1[8];
        n = 8;
        CHECK(gg1(d0, &n, g1) == 0 && n == 1 && g1[0].pid == h1, "graphics v1");
        n = 8;
        CHECK(gm3(d0, &n, g) == 0 && n == 1 && g[0].pid == h2 && g[0].used == 32 * MIB, "MPS: only the container's process");
        detail dd[8];
        detail_list dl = {VERSION(detail_list, 1), 1, 0, NULL};
        CHECK(gdl(d0, &dl) == 7 && dl.n == 1, "detail list size probe (graphics)");
        dl.procs = dd;
        dl.n = 8;
        CHECK(gdl(d0, &dl) == 0 && dl.n == 1 && dd[0].pid == h1, "detail list, graphics mode");
        dl.mode = 0;
        dl.n = 8;
        CHECK(gdl(d0, &dl) == 0 && dl.n == 2, "detail list, compute mode: the container's processes (%u)", dl.n);
        CHECK(dd[0].used + dd[1].used == expect, "detail list compute memory sums to the container usage");
        dl.version = 1;
        CHECK(gdl(d0, &dl) == 25, "a wrong struct version is refused (the driver's check)");
        sample sm[8];
        n = 8;
        CHECK(gpu(d0, sm, &n, 0) == 0 && n == 1 && sm[0].pid == h1 && sm[0].sm == 30, "process utilisation: own samples only");
    }
    printf("nvml ok\n");
    return 0;
}
