/*
 * The REAL NVIDIA CUDA runtime (libcudart.so.12 / .13 from NVIDIA's wheels) on the fake libcuda
 * TEST DOUBLE, optionally through libxpushim (LD_PRELOAD + region). CPU only: proves that the
 * runtime starts on cudacompat (export tables, handshake, cuGetProcAddress) and that data moves
 * through the double's host-backed device memory; proves nothing about a GPU.
 *
 * usage: t_cudart LIBCUDART [QUOTA_MIB [DEVICES]]  (DEVICES: 2 for the double, 1 through remoting)
 *   QUOTA_MIB: the slice's memory quota when run under libxpushim (checks the virtualised total
 *   and that an allocation beyond it is cudaErrorMemoryAllocation).
 * Output: "ok <check>" / "FAIL <check>: ..." lines, "stat <name> <value>" lines, and a summary;
 * exit status 0 only if every check passed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB ((size_t)1024 * 1024)
#define BIG (64 * MIB)

typedef int cudaError_t;
typedef int (*CUresult_gpa)(const char *, void **, int, unsigned long long, int *);
typedef void *cudaStream_t;
typedef void *cudaEvent_t;
enum { H2D = 1, D2H = 2, D2D = 3, DEFAULT_KIND = 4 };
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2 };
enum { ATTR_MAJOR = 75, ATTR_MINOR = 76, ATTR_SM_COUNT = 16 };

static struct {
    cudaError_t (*GetDeviceCount)(int *);
    cudaError_t (*GetDeviceProperties)(void *, int);
    cudaError_t (*DeviceGetAttribute)(int *, int, int);
    cudaError_t (*RuntimeGetVersion)(int *);
    cudaError_t (*DriverGetVersion)(int *);
    cudaError_t (*SetDevice)(int);
    cudaError_t (*Malloc)(void **, size_t);
    cudaError_t (*MallocHost)(void **, size_t);
    cudaError_t (*FreeHost)(void *);
    cudaError_t (*Free)(void *);
    cudaError_t (*Memcpy)(void *, const void *, size_t, int);
    cudaError_t (*MemcpyAsync)(void *, const void *, size_t, int, cudaStream_t);
    cudaError_t (*Memset)(void *, int, size_t);
    cudaError_t (*MemsetAsync)(void *, int, size_t, cudaStream_t);
    cudaError_t (*MemGetInfo)(size_t *, size_t *);
    cudaError_t (*StreamCreate)(cudaStream_t *);
    cudaError_t (*StreamCreateWithFlags)(cudaStream_t *, unsigned);
    cudaError_t (*StreamDestroy)(cudaStream_t);
    cudaError_t (*StreamSynchronize)(cudaStream_t);
    cudaError_t (*StreamQuery)(cudaStream_t);
    cudaError_t (*StreamWaitEvent)(cudaStream_t, cudaEvent_t, unsigned);
    cudaError_t (*EventCreate)(cudaEvent_t *);
    cudaError_t (*EventDestroy)(cudaEvent_t);
    cudaError_t (*EventRecord)(cudaEvent_t, cudaStream_t);
    cudaError_t (*EventSynchronize)(cudaEvent_t);
    cudaError_t (*EventQuery)(cudaEvent_t);
    cudaError_t (*EventElapsedTime)(float *, cudaEvent_t, cudaEvent_t);
    cudaError_t (*DeviceSynchronize)(void);
    cudaError_t (*DeviceReset)(void);
    cudaError_t (*GetLastError)(void);
    const char *(*GetErrorString)(cudaError_t);
    const char *(*GetErrorName)(cudaError_t);
} rt;

static int g_passed, g_failed;
#define CHECK(cond, ...)                                                                               \
    do {                                                                                               \
        if (cond) {                                                                                    \
            g_passed++;                                                                                \
            printf("ok   ");                                                                           \
        } else {                                                                                       \
            g_failed++;                                                                                \
            printf("FAIL ");                                                                           \
        }                                                                                              \
        printf(__VA_ARGS__);                                                                           \
        printf("\n");                                                                                  \
        fflush(stdout);                                                                                \
    } while (0)
#define CUDA_OK(call, what) CHECK((call) == cudaSuccess, "%s", what)

static void *need(void *lib, const char *name)
{
    void *p = dlsym(lib, name);
    if (!p) {
        printf("FAIL libcudart has no %s\n", name);
        exit(1);
    }
    return p;
}

static void load(const char *path)
{
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("FAIL dlopen %s: %s\n", path, dlerror());
        exit(1);
    }
#define LOAD(f) *(void **)&rt.f = need(lib, "cuda" #f)
    LOAD(GetDeviceCount);
    LOAD(DeviceGetAttribute);
    LOAD(RuntimeGetVersion);
    LOAD(DriverGetVersion);
    LOAD(SetDevice);
    LOAD(Malloc);
    LOAD(MallocHost);
    LOAD(FreeHost);
    LOAD(Free);
    LOAD(Memcpy);
    LOAD(MemcpyAsync);
    LOAD(Memset);
    LOAD(MemsetAsync);
    LOAD(MemGetInfo);
    LOAD(StreamCreate);
    LOAD(StreamCreateWithFlags);
    LOAD(StreamDestroy);
    LOAD(StreamSynchronize);
    LOAD(StreamQuery);
    LOAD(StreamWaitEvent);
    LOAD(EventCreate);
    LOAD(EventDestroy);
    LOAD(EventRecord);
    LOAD(EventSynchronize);
    LOAD(EventQuery);
    LOAD(EventElapsedTime);
    LOAD(DeviceSynchronize);
    LOAD(DeviceReset);
    LOAD(GetLastError);
    LOAD(GetErrorString);
    LOAD(GetErrorName);
    /* 12.x: the _v2 entry point fills the current struct; 13.x has only the plain name */
    *(void **)&rt.GetDeviceProperties = dlsym(lib, "cudaGetDeviceProperties_v2");
    if (!rt.GetDeviceProperties)
        LOAD(GetDeviceProperties);
}

static void fill_pattern(unsigned char *p, size_t n, unsigned seed)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (seed + 1);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)x;
    }
}

static size_t first_mismatch(const unsigned char *a, const unsigned char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return i;
    return n;
}

static int g_runtime_version;
static int g_devices = 2; /* hook (remote): a remote vXPU session exposes one card (argv[3]) */

static void check_devices(size_t quota_mib)
{
    int n = -1, rtv = 0, drv = 0;
    CUDA_OK(rt.GetDeviceCount(&n), "cudaGetDeviceCount");
    CHECK(n == g_devices, "the double's %d devices are visible (count %d)", g_devices, n);
    CUDA_OK(rt.RuntimeGetVersion(&rtv), "cudaRuntimeGetVersion");
    CUDA_OK(rt.DriverGetVersion(&drv), "cudaDriverGetVersion");
    printf("stat runtime_version %d\nstat driver_version %d\n", rtv, drv);
    g_runtime_version = rtv;
    int major = 0, minor = -1, sms = 0;
    CUDA_OK(rt.DeviceGetAttribute(&major, ATTR_MAJOR, 0), "cudaDeviceGetAttribute(major)");
    CUDA_OK(rt.DeviceGetAttribute(&minor, ATTR_MINOR, 0), "cudaDeviceGetAttribute(minor)");
    CUDA_OK(rt.DeviceGetAttribute(&sms, ATTR_SM_COUNT, 0), "cudaDeviceGetAttribute(SM count)");
    CHECK(major == 8 && minor == 0 && sms == 108, "compute capability %d.%d, %d SMs", major, minor, sms);
    static unsigned char prop[8192]; /* larger than cudaDeviceProp of 12.x and 13.x */
    CUDA_OK(rt.GetDeviceProperties(prop, g_devices - 1), "cudaGetDeviceProperties(last device)");
    size_t total;
    memcpy(&total, prop + 288, sizeof total); /* name[256], uuid[16], luid[8], mask, pad */
    CHECK(strstr((const char *)prop, "test double") != NULL, "device name '%s'", (const char *)prop);
    if (quota_mib)
        CHECK(total == quota_mib * MIB, "totalGlobalMem is the slice's quota under libxpushim (%zu MiB)",
              total / MIB);
    else
        CHECK(total == 16 * 1024 * MIB, "totalGlobalMem is the double's 16 GiB (%zu MiB)", total / MIB);
}

static void check_copies(void)
{
    unsigned char *src = malloc(BIG), *dst = malloc(BIG);
    void *d = NULL, *d2 = NULL;
    fill_pattern(src, BIG, 1);
    CUDA_OK(rt.SetDevice(0), "cudaSetDevice(0)");
    CUDA_OK(rt.Malloc(&d, BIG), "cudaMalloc 64 MiB");
    CUDA_OK(rt.Malloc(&d2, BIG), "cudaMalloc second 64 MiB");
    CUDA_OK(rt.Memcpy(d, src, BIG, H2D), "cudaMemcpy H2D 64 MiB");
    CUDA_OK(rt.Memcpy(d2, d, BIG, D2D), "cudaMemcpy D2D 64 MiB");
    memset(dst, 0, BIG);
    CUDA_OK(rt.Memcpy(dst, d2, BIG, D2H), "cudaMemcpy D2H 64 MiB");
    size_t at = first_mismatch(src, dst, BIG);
    CHECK(at == BIG, "64 MiB H2D -> D2D -> D2H round trip carries the data (first mismatch %zu)", at);
    CUDA_OK(rt.Memset(d, 0xab, BIG), "cudaMemset 64 MiB");
    CUDA_OK(rt.Memcpy(dst, d, BIG, DEFAULT_KIND), "cudaMemcpy D2H (cudaMemcpyDefault, unified addressing)");
    size_t bad = 0;
    for (size_t i = 0; i < BIG; i++)
        bad += dst[i] != 0xab;
    CHECK(bad == 0, "cudaMemset value reached every byte (%zu wrong)", bad);
    /* pointers are validated as the driver does */
    unsigned char local[64];
    CHECK(rt.Memcpy(local, (unsigned char *)d + BIG - 32, 64, D2H) == cudaErrorInvalidValue,
          "a copy running past the end of an allocation is cudaErrorInvalidValue");
    rt.GetLastError();
    CHECK(rt.Free(local) == cudaErrorInvalidValue, "cudaFree of a foreign pointer is cudaErrorInvalidValue");
    rt.GetLastError();
    CUDA_OK(rt.Free(d), "cudaFree");
    CUDA_OK(rt.Free(d2), "cudaFree second");
    CHECK(rt.Memcpy(dst, d, 16, D2H) == cudaErrorInvalidValue, "a copy from freed memory is cudaErrorInvalidValue");
    rt.GetLastError();
    free(src);
    free(dst);
}

static void check_streams_and_events(void)
{
    const size_t n = 8 * MIB;
    unsigned char *src = malloc(n), *pinned = NULL;
    void *d = NULL;
    cudaStream_t s1 = NULL, s2 = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    fill_pattern(src, n, 2);
    CUDA_OK(rt.MallocHost((void **)&pinned, n), "cudaMallocHost 8 MiB (pinned)");
    if (!pinned) {
        free(src);
        return; /* reported above */
    }
    CUDA_OK(rt.Malloc(&d, n), "cudaMalloc 8 MiB");
    CUDA_OK(rt.StreamCreate(&s1), "cudaStreamCreate");
    CUDA_OK(rt.StreamCreateWithFlags(&s2, 1), "cudaStreamCreateWithFlags(non-blocking)");
    CUDA_OK(rt.EventCreate(&e0), "cudaEventCreate");
    CUDA_OK(rt.EventCreate(&e1), "cudaEventCreate second");
    CUDA_OK(rt.EventRecord(e0, s1), "cudaEventRecord start");
    /* ordered on s1: H2D (pageable source, staged), memset of the second half, D2H into pinned */
    CUDA_OK(rt.MemcpyAsync(d, src, n, H2D, s1), "cudaMemcpyAsync H2D");
    memset(src, 0, n); /* the pageable source was staged: overwriting it now changes nothing */
    CUDA_OK(rt.MemsetAsync((unsigned char *)d + n / 2, 0x5a, n / 2, s1), "cudaMemsetAsync second half");
    CUDA_OK(rt.MemcpyAsync(pinned, d, n, D2H, s1), "cudaMemcpyAsync D2H into pinned memory");
    CUDA_OK(rt.EventRecord(e1, s1), "cudaEventRecord end");
    CUDA_OK(rt.StreamWaitEvent(s2, e1, 0), "cudaStreamWaitEvent");
    CUDA_OK(rt.EventSynchronize(e1), "cudaEventSynchronize");
    CUDA_OK(rt.EventQuery(e1), "cudaEventQuery after synchronize");
    float ms = -1;
    CUDA_OK(rt.EventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
    CHECK(ms >= 0, "elapsed time is not negative (%.3f ms)", (double)ms);
    CUDA_OK(rt.StreamSynchronize(s1), "cudaStreamSynchronize");
    CUDA_OK(rt.StreamQuery(s1), "cudaStreamQuery after synchronize");
    fill_pattern(src, n, 2);
    memset(src + n / 2, 0x5a, n / 2);
    size_t at = first_mismatch(src, pinned, n);
    CHECK(at == n, "async copy, memset and copy back ran in stream order (first mismatch %zu)", at);
    /* work on the non-blocking stream, waited for by the host */
    CUDA_OK(rt.MemsetAsync(d, 0x11, n, s2), "cudaMemsetAsync on a non-blocking stream");
    CUDA_OK(rt.MemcpyAsync(pinned, d, n, D2H, s2), "cudaMemcpyAsync D2H on a non-blocking stream");
    CUDA_OK(rt.DeviceSynchronize(), "cudaDeviceSynchronize");
    CHECK(pinned[0] == 0x11 && pinned[n - 1] == 0x11, "cudaDeviceSynchronize waited for the non-blocking stream");
    CUDA_OK(rt.EventDestroy(e0), "cudaEventDestroy");
    CUDA_OK(rt.EventDestroy(e1), "cudaEventDestroy second");
    CUDA_OK(rt.StreamDestroy(s1), "cudaStreamDestroy");
    CUDA_OK(rt.StreamDestroy(s2), "cudaStreamDestroy second");
    CUDA_OK(rt.Free(d), "cudaFree 8 MiB");
    CUDA_OK(rt.FreeHost(pinned), "cudaFreeHost");
    free(src);
}

/* several host threads, each with its own stream, copying at the same time */
static void *worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    const size_t n = 2 * MIB;
    unsigned char *src = malloc(n), *back = malloc(n);
    void *d = NULL;
    cudaStream_t s = NULL;
    int ok = src && back && rt.SetDevice(0) == cudaSuccess && rt.StreamCreate(&s) == cudaSuccess;
    for (int round = 0; ok && round < 8; round++) {
        fill_pattern(src, n, seed * 100 + (unsigned)round);
        ok = rt.Malloc(&d, n) == cudaSuccess && rt.MemcpyAsync(d, src, n, H2D, s) == cudaSuccess &&
             rt.MemcpyAsync(back, d, n, D2H, s) == cudaSuccess && rt.StreamSynchronize(s) == cudaSuccess &&
             memcmp(src, back, n) == 0 && rt.Free(d) == cudaSuccess;
    }
    if (s)
        rt.StreamDestroy(s);
    free(src);
    free(back);
    return (void *)(uintptr_t)ok;
}

static void check_threads(void)
{
    pthread_t t[4];
    int ok = 1;
    for (unsigned i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    for (unsigned i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        ok &= r != NULL;
    }
    CHECK(ok, "4 threads with their own streams copy 8 x 2 MiB each, data verified");
}

static void check_errors_and_quota(size_t quota_mib)
{
    CHECK(strcmp(rt.GetErrorString(cudaErrorMemoryAllocation), "out of memory") == 0, "cudaGetErrorString(2) = '%s'",
          rt.GetErrorString(cudaErrorMemoryAllocation));
    CHECK(strcmp(rt.GetErrorName(cudaErrorInvalidValue), "cudaErrorInvalidValue") == 0, "cudaGetErrorName(1) = '%s'",
          rt.GetErrorName(cudaErrorInvalidValue));
    size_t free_b = 0, total_b = 0;
    CUDA_OK(rt.MemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    printf("stat mem_free_mib %zu\nstat mem_total_mib %zu\n", free_b / MIB, total_b / MIB);
    if (!quota_mib)
        return;
    CHECK(total_b == quota_mib * MIB, "cudaMemGetInfo total is the quota (%zu MiB)", total_b / MIB);
    void *d = NULL, *over = NULL;
    CUDA_OK(rt.Malloc(&d, (quota_mib / 2) * MIB), "cudaMalloc half the quota");
    cudaError_t rc = rt.Malloc(&over, (quota_mib / 2 + 1) * MIB);
    CHECK(rc == cudaErrorMemoryAllocation, "cudaMalloc beyond the slice's quota is cudaErrorMemoryAllocation (%d %s)",
          rc, rt.GetErrorName(rc));
    CHECK(rt.GetLastError() == cudaErrorMemoryAllocation, "cudaGetLastError reports it once");
    CHECK(rt.GetLastError() == cudaSuccess, "and then it is cleared (not sticky)");
    CUDA_OK(rt.Free(d), "cudaFree");
    CUDA_OK(rt.Malloc(&over, (quota_mib / 2 + 1) * MIB), "after the free the same request fits");
    CUDA_OK(rt.Free(over), "cudaFree");
}

static void check_reset(void)
{
    void *d = NULL;
    CUDA_OK(rt.DeviceReset(), "cudaDeviceReset");
    CUDA_OK(rt.Malloc(&d, MIB), "cudaMalloc after reset (runtime state rebuilt)");
    CUDA_OK(rt.Free(d), "cudaFree after reset");
}

/* Entry points the runtime resolves whose driver export libxpushim does not know yet (reported to
 * the shim): (symbol, cudaVersion the runtime asks). Each is asked again after the run; a miss
 * counted for it proves the gap is still there, so the run's misses can be accounted for exactly. */
static const struct {
    const char *symbol;
    int version;
} KNOWN_SHIM_GAPS[] = {{"cuGraphInstantiate", 10000}, {"cuCtxSynchronize", 13000}};

static void report_interception(int runtime_version)
{
    /* under libxpushim: its resolver counters (dlsym passes this unhooked name through) */
    void (*stats)(uint64_t *, uint64_t *) = (void (*)(uint64_t *, uint64_t *))dlsym(RTLD_DEFAULT, "xpushim_resolver_stats");
    if (stats) {
        uint64_t swaps = 0, misses = 0, gaps = 0;
        stats(&swaps, &misses);
        printf("stat resolver_swaps %llu\nstat resolver_misses %llu\n", (unsigned long long)swaps,
               (unsigned long long)misses);
        CUresult_gpa gpa = (CUresult_gpa)dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2");
        for (size_t i = 0; gpa && i < sizeof KNOWN_SHIM_GAPS / sizeof KNOWN_SHIM_GAPS[0]; i++) {
            if (KNOWN_SHIM_GAPS[i].version > runtime_version)
                continue; /* this runtime never asks for it */
            uint64_t before = 0, after = 0, unused;
            void *fn = NULL;
            int status;
            stats(&unused, &before);
            gpa(KNOWN_SHIM_GAPS[i].symbol, &fn, KNOWN_SHIM_GAPS[i].version, 0, &status);
            stats(&unused, &after);
            if (after > before) {
                gaps++;
                printf("stat shim_gap_%s@%d 1\n", KNOWN_SHIM_GAPS[i].symbol, KNOWN_SHIM_GAPS[i].version);
            }
        }
        printf("stat shim_known_gaps %llu\n", (unsigned long long)gaps);
    }
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    uint64_t (*slot_calls)(const unsigned char *, unsigned) =
        cuda ? (uint64_t(*)(const unsigned char *, unsigned))dlsym(cuda, "fake_cuda_slot_calls") : NULL;
    uint64_t (*trapped)(void) = cuda ? (uint64_t(*)(void))dlsym(cuda, "fake_cuda_trapped_slots") : NULL;
    if (slot_calls && trapped) {
        static const unsigned char integrity[16] = {0xd4, 0x08, 0x20, 0x55, 0xbd, 0xe6, 0x70, 0x4b,
                                                    0x8d, 0x34, 0xba, 0x12, 0x3c, 0x66, 0xe1, 0xf2};
        static const unsigned char cudart_if[16] = {0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a,
                                                    0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd, 0x9d, 0xf9};
        static const unsigned char cls[16] = {0xc6, 0x93, 0x33, 0x6e, 0x11, 0x21, 0xdf, 0x11,
                                              0xa8, 0xc3, 0x68, 0xf3, 0x55, 0xd8, 0x95, 0x93};
        printf("stat handshake_calls %llu\n", (unsigned long long)slot_calls(integrity, 1));
        printf("stat primary_context_calls %llu\n", (unsigned long long)slot_calls(cudart_if, 2));
        printf("stat cls_insert_calls %llu\n", (unsigned long long)slot_calls(cls, 0));
        printf("stat cls_get_calls %llu\n", (unsigned long long)slot_calls(cls, 2));
        printf("stat trapped_slot_calls %llu\n", (unsigned long long)trapped());
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s LIBCUDART [QUOTA_MIB [DEVICES]]\n", argv[0]);
        return 2;
    }
    size_t quota_mib = argc > 2 ? (size_t)strtoull(argv[2], NULL, 10) : 0;
    if (argc > 3) /* hook (remote) */
        g_devices = atoi(argv[3]) > 0 ? atoi(argv[3]) : 2;
    load(argv[1]);
    check_devices(quota_mib);
    check_copies();
    check_streams_and_events();
    check_threads();
    check_errors_and_quota(quota_mib);
    check_reset();
    report_interception(g_runtime_version);
    printf("summary passed %d failed %d\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
