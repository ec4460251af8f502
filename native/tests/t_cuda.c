/*
 * Driver-API test program for xpushim, run against the fake libcuda.so.1 TEST DOUBLE with
 * LD_PRELOAD=libxpushim.so and XPUSHIM_REGION=<region file>. Each mode checks its own
 * expectations and exits 1 on the first failed check ("FAIL ..." on stdout).
 *   basic            quota, free, pitch, managed, arrays, mipmaps, VMM, memory info
 *   async            stream-ordered pools: reserve accounting, trim, user pools
 *   graph            graph memory nodes: refusal at instantiate, reconcile at launch/trim
 *   procaddr         dlsym + cuGetProcAddress(_v2) substitution, versions and flags
 *   hold BYTES       allocate and sleep (prints READY) — for crash/two-process tests
 *   try BYTES        one allocation, prints the CUresult
 *   launch SECS US   back-to-back kernels of US microseconds for SECS seconds, prints the
 *                    busy share observed on the fake's simulated timeline
 *   fork             a child process gets its own slot and its memory is released at exit
 */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cuda.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <pthread.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "xpushim_region.h"

#undef cuGetProcAddress
CUresult cuGraphCreate(CUgraph *g, unsigned int flags);
long fake_cuda_calls(const char *name);
long fake_cuda_last_gpa_version(void);
long fake_cuda_last_gpa_flags(void);
uint64_t fake_cuda_busy_ns(void);

#define MIB (1024ull * 1024ull)
static struct xpu_usage *R; /* the container's usage file */

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

static uint64_t used(void) { return R ? atomic_load(&R->dev[0].mem_used) : 0; }

static void map_region(void)
{
    const char *p = getenv("XPUSHIM_REGION");
    if (!p)
        return;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", p, XPU_USAGE_FILE);
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0, "open region usage");
    R = mmap(NULL, sizeof *R, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    CHECK(R != MAP_FAILED, "map region");
}

static void mode_basic2(void)
{
    /* continues basic with arrays and VMM on a fresh process (quota 1024 MiB) */
    uint64_t u0 = used();
    CUarray arr, arr3;
    CUDA_ARRAY_DESCRIPTOR d2 = {.Width = 4096, .Height = 4096, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
    CHECK(cuArrayCreate(&arr, &d2) == CUDA_SUCCESS, "256 MiB 2D array");
    CHECK(used() == u0 + 256 * MIB, "array estimated 4096*4096*4ch*4B");
    CUDA_ARRAY3D_DESCRIPTOR d3 = {.Width = 1024, .Height = 1024, .Depth = 1024, .Format = CU_AD_FORMAT_UNSIGNED_INT8,
                                  .NumChannels = 1};
    CHECK(cuArray3DCreate(&arr3, &d3) == CUDA_ERROR_OUT_OF_MEMORY, "1 GiB 3D array refused");
    d3.Depth = 256;
    CHECK(cuArray3DCreate(&arr3, &d3) == CUDA_SUCCESS, "256 MiB 3D array");
    CHECK(used() == u0 + 512 * MIB, "3D charged");
    CUmipmappedArray mip;
    CUDA_ARRAY3D_DESCRIPTOR dm = {.Width = 2048, .Height = 2048, .Depth = 0, .Format = CU_AD_FORMAT_FLOAT,
                                  .NumChannels = 4};
    CHECK(cuMipmappedArrayCreate(&mip, &dm, 3) == CUDA_SUCCESS, "mipmap 64+16+4 MiB");
    CHECK(used() == u0 + 512 * MIB + 84 * MIB, "mipmap levels summed: %llu", (unsigned long long)(used() - u0));
    CHECK(cuMipmappedArrayDestroy(mip) == CUDA_SUCCESS && cuArrayDestroy(arr) == CUDA_SUCCESS &&
              cuArrayDestroy(arr3) == CUDA_SUCCESS, "destroys");
    CHECK(used() == u0, "arrays uncharged");

    CUmemAllocationProp prop = {0};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    CUmemGenericAllocationHandle h1, h2, hh;
    CHECK(cuMemCreate(&h1, 768 * MIB, &prop, 0) == CUDA_SUCCESS, "VMM create 768");
    CHECK(used() == u0 + 768 * MIB, "VMM charged at create");
    CHECK(cuMemCreate(&h2, 512 * MIB, &prop, 0) == CUDA_ERROR_OUT_OF_MEMORY, "VMM over quota");
    CUmemAllocationProp hp = prop;
    hp.location.type = CU_MEM_LOCATION_TYPE_HOST;
    CHECK(cuMemCreate(&hh, 512 * MIB, &hp, 0) == CUDA_SUCCESS, "host-located VMM is not device memory");
    CHECK(used() == u0 + 768 * MIB, "host VMM not charged");
    CHECK(cuMemRelease(h1) == CUDA_SUCCESS && used() == u0, "VMM release uncharges");
    CHECK(cuMemRelease(hh) == CUDA_SUCCESS, "release host");
    void *host;
    CHECK(cuMemHostAlloc(&host, 2048 * MIB, 0) == CUDA_SUCCESS && used() == u0, "pinned host memory not charged");
    cuMemFreeHost(host);
    printf("basic2 ok\n");
}

static void mode_async(void)
{
    /* quota 1024 MiB; fake pools grow in 2 MiB steps */
    uint64_t u0 = used();
    CUdeviceptr p1, p2, p3;
    CHECK(cuMemAllocAsync(&p1, 300 * MIB, NULL) == CUDA_SUCCESS, "async 300");
    CHECK(used() == u0 + 300 * MIB, "charged pool reserve %llu", (unsigned long long)(used() - u0));
    CHECK(cuMemFreeAsync(p1, NULL) == CUDA_SUCCESS, "free async");
    CHECK(used() == u0 + 300 * MIB, "pool keeps it reserved: still charged");
    CHECK(cuMemAllocAsync(&p2, 200 * MIB, NULL) == CUDA_SUCCESS, "reuse from pool");
    CHECK(used() == u0 + 300 * MIB, "reuse does not double charge: %llu", (unsigned long long)(used() - u0));
    CHECK(cuMemAllocAsync(&p3, 900 * MIB, NULL) == CUDA_ERROR_OUT_OF_MEMORY, "async over quota");
    CHECK(used() == u0 + 300 * MIB, "refusal rolled back");
    CUmemoryPool pool;
    cuDeviceGetMemPool(&pool, 0);
    CHECK(cuMemFreeAsync(p2, NULL) == CUDA_SUCCESS, "free");
    CHECK(cuMemPoolTrimTo(pool, 0) == CUDA_SUCCESS, "trim");
    CHECK(used() == u0, "trim releases the charge: %llu", (unsigned long long)(used() - u0));
    CUmemPoolProps props = {0};
    props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = 0;
    CUmemoryPool up;
    CHECK(cuMemPoolCreate(&up, &props) == CUDA_SUCCESS, "user pool");
    CHECK(cuMemAllocFromPoolAsync(&p1, 101 * MIB, up, NULL) == CUDA_SUCCESS, "from pool");
    CHECK(used() == u0 + 102 * MIB, "pool reserve rounded to 2 MiB: %llu", (unsigned long long)(used() - u0));
    CHECK(cuMemAllocFromPoolAsync(&p2, 1000 * MIB, up, NULL) == CUDA_ERROR_OUT_OF_MEMORY, "pool over quota");
    CHECK(cuMemPoolDestroy(up) == CUDA_SUCCESS && used() == u0, "pool destroy uncharges");
    /* per-thread-stream variants are accounted too */
    CUresult (*aa)(CUdeviceptr *, size_t, CUstream) = (CUresult(*)(CUdeviceptr *, size_t, CUstream))dlsym(RTLD_DEFAULT, "cuMemAllocAsync_ptsz");
    CHECK(aa && aa(&p1, 2000 * MIB, NULL) == CUDA_ERROR_OUT_OF_MEMORY, "ptsz async over quota refused");
    printf("async ok\n");
}

static void mode_graph(void)
{
    uint64_t u0 = used();
    CUgraph g, g2;
    CUgraphNode n;
    CHECK(cuGraphCreate(&g, 0) == CUDA_SUCCESS, "graph");
    CUDA_MEM_ALLOC_NODE_PARAMS p = {0};
    p.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.poolProps.location.id = 0;
    p.bytesize = 2000 * MIB;
    CHECK(cuGraphAddMemAllocNode(&n, g, NULL, 0, &p) == CUDA_ERROR_OUT_OF_MEMORY, "node larger than quota refused");
    p.bytesize = 400 * MIB;
    CHECK(cuGraphAddMemAllocNode(&n, g, NULL, 0, &p) == CUDA_SUCCESS, "node 400");
    CUgraphExec e;
    CHECK(cuGraphInstantiateWithFlags(&e, g, 0) == CUDA_SUCCESS, "instantiate");
    CHECK(used() == u0, "nothing charged before the graph runs");
    CHECK(cuGraphLaunch(e, NULL) == CUDA_SUCCESS, "launch");
    CHECK(used() == u0 + 400 * MIB, "graph memory charged after launch: %llu", (unsigned long long)(used() - u0));
    CUdeviceptr x;
    CHECK(cuMemAlloc(&x, 700 * MIB) == CUDA_ERROR_OUT_OF_MEMORY, "graph memory counts against the quota");
    CHECK(cuGraphCreate(&g2, 0) == CUDA_SUCCESS, "graph2");
    p.bytesize = 700 * MIB;
    CHECK(cuGraphAddMemAllocNode(&n, g2, NULL, 0, &p) == CUDA_SUCCESS, "node 700 alone fits the quota");
    CUgraphExec e2;
    CHECK(cuGraphInstantiateWithFlags(&e2, g2, 0) == CUDA_ERROR_OUT_OF_MEMORY, "instantiate refused: 400 used + 700");
    CHECK(cuGraphExecDestroy(e) == CUDA_SUCCESS, "exec destroy");
    CHECK(cuDeviceGraphMemTrim(0) == CUDA_SUCCESS, "trim");
    CHECK(used() == u0, "trim uncharges graph memory");
    CHECK(cuGraphInstantiateWithFlags(&e2, g2, 0) == CUDA_SUCCESS, "instantiate fits after trim");
    CHECK(cuGraphExecDestroy(e2) == CUDA_SUCCESS && cuGraphDestroy(g) == CUDA_SUCCESS &&
              cuGraphDestroy(g2) == CUDA_SUCCESS, "graph teardown");
    printf("graph ok\n");
}

static int in_shim(void *p)
{
    Dl_info di;
    return p && dladdr(p, &di) && di.dli_fname && strstr(di.dli_fname, "libxpushim") != NULL;
}

static void mode_procaddr(void)
{
    /* the way cudart finds the driver: dlopen + dlsym + cuGetProcAddress_v2 */
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    CHECK(h, "dlopen libcuda.so.1");
    typedef CUresult (*gpa2_t)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
    typedef CUresult (*gpa1_t)(const char *, void **, int, cuuint64_t);
    gpa2_t gpa = (gpa2_t)dlsym(h, "cuGetProcAddress_v2");
    CHECK(in_shim((void *)gpa), "dlsym(libcuda, cuGetProcAddress_v2) returns the shim");
    void *fn = NULL;
    CUdriverProcAddressQueryResult st = 99;
    /* the runtime first asks the resolver for itself */
    CHECK(gpa("cuGetProcAddress", &fn, 12000, 0, &st) == CUDA_SUCCESS && in_shim(fn) && st == 0,
          "resolver for cuGetProcAddress@12000 is the shim");
    CHECK(gpa("cuGetProcAddress", &fn, 11030, 0, &st) == CUDA_SUCCESS && in_shim(fn), "v1 resolver @11030 too");
    gpa1_t gpa1 = (gpa1_t)fn;
    CHECK(gpa1("cuMemAlloc", &fn, 11030, 0) == CUDA_SUCCESS && in_shim(fn), "v1 resolver substitutes too");
    CHECK(fake_cuda_last_gpa_version() == 11030, "cudaVersion forwarded exactly");
    /* base name + version -> versioned export, substituted */
    CHECK(gpa("cuMemAlloc", &fn, 12000, 0, &st) == CUDA_SUCCESS && in_shim(fn), "cuMemAlloc@12000 -> shim");
    uint64_t u0 = used();
    CUdeviceptr p;
    CHECK(((CUresult(*)(CUdeviceptr *, size_t))fn)(&p, 64 * MIB) == CUDA_SUCCESS && used() == u0 + 64 * MIB,
          "allocation through the resolved pointer is accounted");
    CHECK(fake_cuda_calls("cuMemAlloc_v2") >= 1, "real cuMemAlloc_v2 reached");
    /* pre-3.2 version returns the legacy export, passed through (not hooked) */
    CHECK(gpa("cuMemAlloc", &fn, 3010, 0, &st) == CUDA_SUCCESS && !in_shim(fn), "legacy v1 passes through");
    /* flags: per-thread default stream must get the _ptsz wrapper, legacy stream the plain one */
    void *k0 = NULL, *k1 = NULL, *k2 = NULL;
    CHECK(gpa("cuLaunchKernel", &k0, 12000, CU_GET_PROC_ADDRESS_DEFAULT, &st) == CUDA_SUCCESS, "launch flags 0");
    CHECK(gpa("cuLaunchKernel", &k1, 12000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &st) == CUDA_SUCCESS, "flags 1");
    CHECK(gpa("cuLaunchKernel", &k2, 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st) == CUDA_SUCCESS,
          "flags 2");
    CHECK(fake_cuda_last_gpa_flags() == 2, "flags forwarded exactly");
    CHECK(in_shim(k0) && in_shim(k1) && in_shim(k2) && k2 != k0 && k0 == k1, "distinct ptsz wrapper");
    long before_ptsz = fake_cuda_calls("cuLaunchKernel_ptsz"), before = fake_cuda_calls("cuLaunchKernel");
    typedef CUresult (*lk_t)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             CUstream, void **, void **);
    CHECK(((lk_t)k2)(NULL, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL) == CUDA_SUCCESS, "ptsz launch");
    CHECK(fake_cuda_calls("cuLaunchKernel_ptsz") == before_ptsz + 1 && fake_cuda_calls("cuLaunchKernel") == before,
          "the per-thread-stream launch reached the _ptsz export, not the legacy one");
    const char *fams[] = {"cuLaunchKernelEx", "cuLaunchCooperativeKernel", "cuGraphLaunch", "cuMemAllocAsync",
                          "cuMemAllocFromPoolAsync", "cuMemFreeAsync", "cuGraphInstantiateWithParams", "cuGraphUpload"};
    for (size_t i = 0; i < sizeof fams / sizeof fams[0]; i++) {
        void *a = NULL, *b = NULL;
        CHECK(gpa(fams[i], &a, 12000, 0, &st) == CUDA_SUCCESS && gpa(fams[i], &b, 12000, 2, &st) == CUDA_SUCCESS,
              "%s resolves", fams[i]);
        CHECK(in_shim(a) && in_shim(b) && a != b, "%s: legacy and ptsz both substituted and distinct", fams[i]);
    }
    const char *plain[] = {"cuMemCreate", "cuMemRelease", "cuArrayCreate", "cuArray3DCreate", "cuMemGetInfo",
                           "cuDeviceTotalMem", "cuMemFree", "cuMemAllocPitch", "cuMemAllocManaged",
                           "cuMipmappedArrayCreate", "cuGraphAddMemAllocNode", "cuGraphInstantiate",
                           "cuMemPoolTrimTo", "cuLaunchCooperativeKernelMultiDevice"};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        void *a = NULL;
        CHECK(gpa(plain[i], &a, 12090, 0, &st) == CUDA_SUCCESS && in_shim(a), "%s substituted", plain[i]);
    }
    /* what the real runtimes resolve (found with libcudart 12.9 / 13.x on the double): the legacy
     * cuGraphInstantiate below 12.0 and cuCtxSynchronize_v2 from 13.0 are wrappers too */
    void *gi = NULL, *cs13 = NULL;
    CHECK(gpa("cuGraphInstantiate", &gi, 10000, 0, &st) == CUDA_SUCCESS && in_shim(gi), "cuGraphInstantiate@10000");
    CHECK(gpa("cuCtxSynchronize", &cs13, 13000, 0, &st) == CUDA_SUCCESS && in_shim(cs13), "cuCtxSynchronize@13000");
    /* not hooked: identity passes through; unknown symbols keep the driver's status */
    CHECK(gpa("cuInit", &fn, 12000, 0, &st) == CUDA_SUCCESS && !in_shim(fn), "cuInit passes through");
    CHECK(gpa("cuDoesNotExist", &fn, 12000, 0, &st) == CUDA_ERROR_NOT_FOUND && fn == NULL &&
              st == CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND, "unknown symbol status forwarded");
    /* plain dlsym by name of hooked exports, on the library handle and globally */
    CHECK(in_shim(dlsym(h, "cuMemAlloc_v2")) && in_shim(dlsym(h, "cuLaunchKernel_ptsz")) &&
              in_shim(dlsym(RTLD_DEFAULT, "cuGraphLaunch")), "dlsym lookups return wrappers");
    CHECK(!in_shim(dlsym(h, "cuInit")), "dlsym of unhooked passes through");
    CHECK(dlsym(h, "cuNoSuchSymbol") == NULL, "dlsym of a missing symbol stays NULL");
    /* RTLD_NEXT from the program resolves past the program, not past the shim */
    void *nx = dlsym(RTLD_NEXT, "cuMemAlloc_v2");
    CHECK(nx != NULL, "RTLD_NEXT finds a definition");
    uint64_t swaps = 0, misses = 0;
    void (*stats)(uint64_t *, uint64_t *) = (void (*)(uint64_t *, uint64_t *))dlsym(RTLD_DEFAULT, "xpushim_resolver_stats");
    CHECK(stats, "resolver statistics");
    stats(&swaps, &misses);
    CHECK(swaps > 0 && misses == 0, "every hooked lookup swapped, the legacy pass-through is no miss (swaps %llu, misses %llu)",
          (unsigned long long)swaps, (unsigned long long)misses);
    printf("procaddr ok\n");
}

static CUgraphExec g_exec;
static CUgraph g_graph;
static CUresult do_launch(const char *kind, unsigned us)
{
    typedef CUresult (*lk_t)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             CUstream, void **, void **);
    static lk_t ptsz;
    if (!strcmp(kind, "ptsz")) {
        if (!ptsz)
            ptsz = (lk_t)dlsym(RTLD_DEFAULT, "cuLaunchKernel_ptsz");
        return ptsz(NULL, us, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
    }
    if (!strcmp(kind, "graph"))
        return cuGraphLaunch(g_exec, NULL); /* one 100 us kernel node */
    if (!strcmp(kind, "syncidle")) { /* kernel, wait for it, then 300 us of host-only work */
        CUresult rc = cuLaunchKernel(NULL, us, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        cuStreamSynchronize(NULL);
        struct timespec ts = {0, 300000};
        nanosleep(&ts, NULL);
        return rc;
    }
    if (!strcmp(kind, "coop"))
        return cuLaunchCooperativeKernel(NULL, us, 1, 1, 1, 1, 1, 0, NULL, NULL);
    if (!strcmp(kind, "ex")) {
        CUlaunchConfig c = {.gridDimX = us, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 1, .blockDimY = 1, .blockDimZ = 1};
        return cuLaunchKernelEx(&c, NULL, NULL, NULL);
    }
    return cuLaunchKernel(NULL, us, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
}

/* prints the busy share of every full second after a 1 s warm-up, then the overall one */
static void mode_launch(double secs, unsigned us, const char *kind)
{
    if (!strcmp(kind, "graph")) {
        CUgraphNode node;
        CUDA_KERNEL_NODE_PARAMS kp = {.gridDimX = 100, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 1, .blockDimY = 1,
                                      .blockDimZ = 1};
        CHECK(cuGraphCreate(&g_graph, 0) == CUDA_SUCCESS && cuGraphAddKernelNode(&node, g_graph, NULL, 0, &kp) == CUDA_SUCCESS &&
                  cuGraphInstantiateWithFlags(&g_exec, g_graph, 0) == CUDA_SUCCESS, "graph");
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double el = 0;
    long n = 0;
    uint64_t m0 = R ? atomic_load(&R->dev[0].gpu_time_ns) : 0, f0 = fake_cuda_busy_ns();
    do {
        CHECK(do_launch(kind, us) == CUDA_SUCCESS, "launch");
        clock_gettime(CLOCK_MONOTONIC, &t1);
        el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    } while (el < 1.0);
    uint64_t b0 = fake_cuda_busy_ns(), bs = b0;
    t0 = t1;
    int sec = 1;
    do {
        CHECK(do_launch(kind, us) == CUDA_SUCCESS, "launch");
        n++;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        if (el >= sec) {
            uint64_t b = fake_cuda_busy_ns();
            printf("second %d share %.2f\n", sec, 100.0 * (double)(b - bs) / 1e9);
            fflush(stdout);
            bs = b;
            sec++;
        }
    } while (el < secs);
    uint64_t busy = fake_cuda_busy_ns() - b0;
    cuStreamSynchronize(NULL);
    struct timespec ts = {0, 50000000}; /* let the last batch be polled by one more launch */
    nanosleep(&ts, NULL);
    do_launch(kind, 0);
    if (R)
        printf("metered_ratio %.3f\n", (double)(atomic_load(&R->dev[0].gpu_time_ns) - m0) /
                                            (double)(fake_cuda_busy_ns() - f0));
    printf("share %.2f launches %ld\n", 100.0 * (double)busy / (el * 1e9), n);
    if (g_exec) {
        cuGraphExecDestroy(g_exec);
        cuGraphDestroy(g_graph);
    }
}

static void mode_fork(void)
{
    CUdeviceptr a;
    CHECK(cuMemAlloc(&a, 100 * MIB) == CUDA_SUCCESS, "parent alloc");
    uint64_t u0 = used();
    pid_t pid = fork();
    if (pid == 0) {
        CUdeviceptr b;
        if (cuMemAlloc(&b, 200 * MIB) != CUDA_SUCCESS)
            _exit(3);
        if (used() != u0 + 200 * MIB)
            _exit(4);
        int slots = 0;
        for (unsigned s = 0; s < XPU_MAX_SLOTS; s++)
            slots += atomic_load(&R->slot[s].state) == XPU_SLOT_ACTIVE;
        _exit(slots == 2 ? 0 : 5); /* parent and child each own a slot */
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child checks (status %d)", WEXITSTATUS(st));
    /* the child exited via _exit (no atexit): its slot is reaped at the next registration
     * or over-quota retry; trigger one with an allocation that only fits after reaping */
    CUdeviceptr c;
    CHECK(cuMemAlloc(&c, 1024 * MIB - 100 * MIB) == CUDA_SUCCESS, "dead child's charge reclaimed");
    printf("fork ok\n");
}

/* quota 1024 MiB, per-process reserve 300 MiB: contexts cost the reserve, once per process */
static void mode_ctx(void)
{
    CHECK(used() == 0, "nothing charged before a context exists");
    CUcontext c;
    CHECK(cuDevicePrimaryCtxRetain(&c, 0) == CUDA_SUCCESS, "primary context");
    CHECK(used() == 300 * MIB, "the context is charged the process reserve: %llu MiB", (unsigned long long)(used() / MIB));
    CHECK(cuDevicePrimaryCtxRetain(&c, 0) == CUDA_SUCCESS && used() == 300 * MIB, "once per process and device");
    CUdeviceptr a, b;
    CHECK(cuMemAlloc(&a, 700 * MIB) == CUDA_SUCCESS, "700 MiB fits next to the reserve");
    CHECK(cuMemAlloc(&b, 100 * MIB) == CUDA_ERROR_OUT_OF_MEMORY, "300 reserve + 700 + 100 > 1024");
    CHECK(cuMemFree(a) == CUDA_SUCCESS && used() == 300 * MIB, "a free leaves the reserve");
    CHECK(cuMemAlloc(&a, 500 * MIB) == CUDA_SUCCESS, "500");
    pid_t pid = fork();
    if (pid == 0) { /* a second process of the container pays its own reserve */
        CUcontext cc;
        CUresult rc = cuCtxCreate(&cc, 0, 0);
        _exit(rc == CUDA_ERROR_OUT_OF_MEMORY ? 0 : 3); /* 800 + 300 > 1024 */
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "second process's context refused (status %d)", WEXITSTATUS(st));
    CHECK(cuMemFree(a) == CUDA_SUCCESS, "free");
    pid = fork();
    if (pid == 0) {
        CUcontext cc;
        if (cuCtxCreate(&cc, 0, 0) != CUDA_SUCCESS)
            _exit(3);
        _exit(used() == 600 * MIB ? 0 : 4); /* two reserves */
    }
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "second context fits after the free (status %d)", WEXITSTATUS(st));
    printf("ctx ok\n");
}

static void *thread_body(void *arg)
{
    (void)arg;
    for (int i = 0; i < 300; i++) {
        CUdeviceptr p;
        CHECK(cuMemAlloc(&p, 3 * MIB) == CUDA_SUCCESS, "thread alloc");
        CHECK(cuLaunchKernel(NULL, 20, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL) == CUDA_SUCCESS, "thread launch");
        CHECK(cuMemFree(p) == CUDA_SUCCESS, "thread free");
    }
    return NULL;
}

/* 8 threads allocate, launch (through the limiter) and free concurrently */
static void mode_threads(void)
{
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        CHECK(pthread_create(&t[i], NULL, thread_body, NULL) == 0, "pthread_create");
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    CHECK(used() == 0, "all charges released: %llu", (unsigned long long)used());
    int slots = 0;
    for (unsigned s = 0; s < XPU_MAX_SLOTS; s++)
        slots += atomic_load(&R->slot[s].state) == XPU_SLOT_ACTIVE;
    CHECK(slots == 1, "one slot per process, not per thread (%d)", slots);
    CHECK(atomic_load(&R->dev[0].accounting_errors) == 0, "no accounting errors");
    printf("threads ok\n");
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    map_region();
    CHECK(cuInit(0) == CUDA_SUCCESS, "cuInit");
    const char *m = argv[1];
    if (!strcmp(m, "basic")) {
        CUdeviceptr a, b;
        uint64_t u0 = used();
        CHECK(cuMemAlloc(&a, 600 * MIB) == CUDA_SUCCESS, "600 MiB fits");
        CHECK(used() == u0 + 600 * MIB, "charged 600 MiB, used=%llu", (unsigned long long)used());
        CHECK(cuMemAlloc(&b, 500 * MIB) == CUDA_ERROR_OUT_OF_MEMORY, "600+500 > 1024 -> OOM");
        CHECK(used() == u0 + 600 * MIB, "refused request not charged");
        CHECK(atomic_load(&R->dev[0].oom_events) >= 1, "oom counted");
        size_t fr = 0, tot = 0;
        CHECK(cuMemGetInfo(&fr, &tot) == CUDA_SUCCESS, "meminfo");
        CHECK(tot == 1024 * MIB && fr == 424 * MIB, "meminfo shows the slice: total %zu free %zu", tot, fr);
        size_t dt = 0;
        CHECK(cuDeviceTotalMem(&dt, 0) == CUDA_SUCCESS && dt == 1024 * MIB, "cuDeviceTotalMem = quota (%zu)", dt);
        CHECK(cuMemFree(a) == CUDA_SUCCESS, "free");
        CHECK(used() == u0, "free uncharged");
        CHECK(cuMemAlloc(&b, 500 * MIB) == CUDA_SUCCESS, "after free 500 fits");
        CUdeviceptr c;
        size_t pitch = 0;
        CHECK(cuMemAllocPitch(&c, &pitch, 1000, 1000, 4) == CUDA_SUCCESS, "pitch");
        CHECK(used() == u0 + 500 * MIB + (uint64_t)pitch * 1000, "pitch charged pitch*height");
        CHECK(cuMemFree(c) == CUDA_SUCCESS && used() == u0 + 500 * MIB, "pitch freed");
        CHECK(cuMemAllocManaged(&c, 600 * MIB, CU_MEM_ATTACH_GLOBAL) == CUDA_ERROR_OUT_OF_MEMORY, "managed over quota");
        CHECK(cuMemAllocManaged(&c, 100 * MIB, CU_MEM_ATTACH_GLOBAL) == CUDA_SUCCESS, "managed fits");
        CHECK(used() == u0 + 600 * MIB, "managed counted fully");
        CHECK(cuMemFree(c) == CUDA_SUCCESS && cuMemFree(b) == CUDA_SUCCESS && used() == u0, "all freed");
        mode_basic2();
        printf("basic ok\n");
    } else if (!strcmp(m, "async")) {
        mode_async();
    } else if (!strcmp(m, "graph")) {
        mode_graph();
    } else if (!strcmp(m, "procaddr")) {
        mode_procaddr();
    } else if (!strcmp(m, "hold") && argc >= 3) {
        CUdeviceptr a;
        CUresult rc = cuMemAlloc(&a, strtoull(argv[2], NULL, 0));
        printf("%s %d\n", rc == CUDA_SUCCESS ? "READY" : "REFUSED", (int)rc);
        fflush(stdout);
        if (rc == CUDA_SUCCESS)
            for (;;)
                pause();
        return 1;
    } else if (!strcmp(m, "try") && argc >= 3) {
        CUdeviceptr a;
        CUresult rc = cuMemAlloc(&a, strtoull(argv[2], NULL, 0));
        printf("rc %d\n", (int)rc);
        return rc == CUDA_SUCCESS ? 0 : 10;
    } else if (!strcmp(m, "launch") && argc >= 4) {
        mode_launch(atof(argv[2]), (unsigned)atoi(argv[3]), argc >= 5 ? argv[4] : "kernel");
    } else if (!strcmp(m, "fork")) {
        mode_fork();
    } else if (!strcmp(m, "ctx")) {
        mode_ctx();
    } else if (!strcmp(m, "threads")) {
        mode_threads();
    } else {
        return 2;
    }
    return 0;
}
