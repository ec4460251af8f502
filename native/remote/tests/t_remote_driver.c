/*
 * A CUDA driver-API program run against the remoting client (this directory's libcuda.so.1) and a
 * daemon whose backend is the fake libcuda TEST DOUBLE (device memory is host memory there).
 * Usage: t_remote_driver MODE [args]
 *   basic            device queries, contexts, memory, copies with data checks, memsets, streams,
 *                    events, deferred errors, error strings
 *   hold MIB         allocate MIB, print READY, then wait (the test kills this process)
 *   loop             synchronous calls forever, printing "tick" (the test kills the daemon or cuts
 *                    the network and measures how long the next call takes to fail)
 *   rtt N            N null round trips (cuCtxSynchronize), prints p50/p99 in microseconds
 *   alloc MIB        one allocation, prints its status (quota tests)
 *   launch           load a module, learn parameters, launch reference kernels, check the results,
 *                    then a faulting kernel: the sticky error ends the session
 *   crash            a kernel that kills the worker: the session ends with an error
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int failures;

#define CHECK(call)                                                                                \
    do {                                                                                           \
        CUresult r_ = (call);                                                                      \
        if (r_ != CUDA_SUCCESS) {                                                                  \
            const char *n_ = NULL;                                                                 \
            cuGetErrorName(r_, &n_);                                                               \
            fprintf(stderr, "FAIL %s:%d %s -> %d %s\n", __FILE__, __LINE__, #call, (int)r_, n_ ? n_ : "?"); \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)
#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d ", __FILE__, __LINE__);                                    \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void setup(CUcontext *ctx)
{
    CUresult r = cuInit(0);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "cuInit failed: %d\n", (int)r);
        exit(3);
    }
    CUdevice dev;
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(ctx, dev));
    CHECK(cuCtxSetCurrent(*ctx));
    if (failures)
        exit(4); /* never report READY without a context */
}

static int basic(void)
{
    CUcontext ctx;
    int n = -1;
    EXPECT(cuDeviceGetCount(&n) == CUDA_ERROR_NOT_INITIALIZED, "count before cuInit must fail");
    setup(&ctx);
    CHECK(cuDeviceGetCount(&n));
    EXPECT(n == 1, "one device per session, got %d", n);
    CUdevice bad;
    EXPECT(cuDeviceGet(&bad, 1) == CUDA_ERROR_INVALID_DEVICE, "ordinal 1 must be invalid");
    char name[128];
    CHECK(cuDeviceGetName(name, sizeof name, 0));
    size_t total = 0;
    CHECK(cuDeviceTotalMem(&total, 0));
    CUuuid uuid;
    CHECK(cuDeviceGetUuid(&uuid, 0));
    int drv = 0;
    CHECK(cuDriverGetVersion(&drv));
    printf("device %s total %zu MiB driver %d\n", name, total >> 20, drv);
    const char *s = NULL;
    CHECK(cuGetErrorString(CUDA_ERROR_OUT_OF_MEMORY, &s));
    EXPECT(s && strstr(s, "memory"), "error string: %s", s ? s : "(null)");
    CHECK(cuGetErrorName(CUDA_ERROR_INVALID_HANDLE, &s));
    EXPECT(s && strcmp(s, "CUDA_ERROR_INVALID_HANDLE") == 0, "error name");
    CUcontext cur = NULL;
    CHECK(cuCtxGetCurrent(&cur));
    EXPECT(cur == ctx, "current context");

    /* memory: 64 MiB round trip with data checked */
    const size_t N = 64u << 20;
    CUdeviceptr d = 0, d2 = 0;
    CHECK(cuMemAlloc(&d, N));
    CHECK(cuMemAlloc(&d2, N));
    size_t mfree = 0, mtotal = 0;
    CHECK(cuMemGetInfo(&mfree, &mtotal));
    EXPECT(mtotal >= 2 * N && mfree <= mtotal - 2 * N, "meminfo free %zu total %zu", mfree, mtotal);
    uint8_t *h = malloc(N), *back = malloc(N);
    for (size_t i = 0; i < N; i++)
        h[i] = (uint8_t)(i * 2654435761u >> 13);
    double t0 = now_s();
    CHECK(cuMemcpyHtoD(d, h, N));
    double t1 = now_s();
    memset(back, 0, N);
    CHECK(cuMemcpyDtoH(back, d, N));
    double t2 = now_s();
    EXPECT(memcmp(h, back, N) == 0, "64 MiB host->device->host round trip differs");
    printf("h2d %.0f MB/s d2h %.0f MB/s\n", N / (t1 - t0) / 1e6, N / (t2 - t1) / 1e6);
    /* device to device, then memsets */
    CHECK(cuMemcpyDtoD(d2, d, N));
    memset(back, 0, N);
    CHECK(cuMemcpyDtoH(back, d2, N));
    EXPECT(memcmp(h, back, N) == 0, "device to device copy differs");
    CHECK(cuMemsetD8(d, 0xab, 4096));
    CHECK(cuMemsetD32(d + 4096, 0x01020304u, 1024));
    CHECK(cuMemcpyDtoH(back, d, 8192));
    int ok = 1;
    for (int i = 0; i < 4096; i++)
        ok &= back[i] == 0xab;
    for (int i = 0; i < 1024; i++) {
        uint32_t v;
        memcpy(&v, back + 4096 + 4 * i, 4);
        ok &= v == 0x01020304u;
    }
    EXPECT(ok, "memset D8/D32 results");

    /* streams, events and async copies from pinned memory */
    CUstream st;
    CUevent e0, e1;
    CHECK(cuStreamCreate(&st, CU_STREAM_NON_BLOCKING));
    unsigned flags = 0;
    CHECK(cuStreamGetFlags(st, &flags));
    EXPECT(flags == CU_STREAM_NON_BLOCKING, "stream flags %u", flags);
    CHECK(cuEventCreate(&e0, 0));
    CHECK(cuEventCreate(&e1, 0));
    uint8_t *pinned = NULL;
    CHECK(cuMemAllocHost((void **)&pinned, 1 << 20));
    for (int i = 0; i < (1 << 20); i++)
        pinned[i] = (uint8_t)(i ^ 0x5a);
    CHECK(cuEventRecord(e0, st));
    CHECK(cuMemcpyHtoDAsync(d, pinned, 1 << 20, st));
    CHECK(cuMemsetD8Async(d + (1 << 20), 7, 1 << 20, st));
    CHECK(cuEventRecord(e1, st));
    memset(back, 0, 2 << 20);
    CHECK(cuMemcpyDtoHAsync(back, d, 2 << 20, st));
    CHECK(cuStreamSynchronize(st));
    CHECK(cuEventSynchronize(e1));
    EXPECT(cuEventQuery(e1) == CUDA_SUCCESS, "event complete after sync");
    float ms = -1;
    CHECK(cuEventElapsedTime(&ms, e0, e1));
    EXPECT(ms >= 0, "elapsed %f", ms);
    ok = 1;
    for (int i = 0; i < (1 << 20); i++)
        ok &= back[i] == (uint8_t)(i ^ 0x5a) && back[(1 << 20) + i] == 7;
    EXPECT(ok, "async copy + memset on a stream");
    unsigned int pflags = 99;
    CHECK(cuMemHostGetFlags(&pflags, pinned));
    unsigned int mtype = 0;
    CHECK(cuPointerGetAttribute(&mtype, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, (CUdeviceptr)(uintptr_t)pinned));
    EXPECT(mtype == CU_MEMORYTYPE_HOST, "pinned memory type %u", mtype);
    CHECK(cuMemFreeHost(pinned));

    /* validation: foreign handles and pointers never reach the driver as such */
    EXPECT(cuStreamSynchronize((CUstream)(uintptr_t)0x0100000000001234ull) == CUDA_ERROR_INVALID_HANDLE,
           "unknown stream id must be an invalid handle");
    EXPECT(cuStreamSynchronize((CUstream)(uintptr_t)0x0200000000000001ull) == CUDA_ERROR_INVALID_HANDLE,
           "an event id used as a stream must be refused on the client");
    EXPECT(cuMemcpyDtoH(back, 0x10, 16) == CUDA_ERROR_INVALID_VALUE, "copy from an address the session does not own");
    EXPECT(cuMemcpyHtoD(d + N - 8, h, 16) == CUDA_ERROR_INVALID_VALUE, "copy past the end of an allocation");
    /* a fire-and-forget failure is reported by the next synchronising call, once */
    CHECK(cuMemsetD8Async(0x20, 1, 16, st));
    EXPECT(cuStreamSynchronize(st) == CUDA_ERROR_INVALID_VALUE, "deferred error at the next sync point");
    CHECK(cuStreamSynchronize(st));

    CHECK(cuEventDestroy(e0));
    CHECK(cuEventDestroy(e1));
    CHECK(cuStreamDestroy(st));
    CHECK(cuStreamSynchronize(0));
    EXPECT(cuStreamSynchronize(st) == CUDA_ERROR_INVALID_HANDLE, "destroyed stream");
    CHECK(cuMemFree(d));
    CHECK(cuMemFree(d2));
    EXPECT(cuMemFree(d) != CUDA_SUCCESS, "double free refused");
    CHECK(cuCtxSynchronize());
    free(h);
    free(back);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("driver ok\n");
    return 0;
}

static int hold(size_t mib)
{
    CUcontext ctx;
    setup(&ctx);
    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, mib << 20));
    CHECK(cuCtxSynchronize());
    if (failures)
        return 1;
    printf("READY\n");
    fflush(stdout);
    for (;;)
        pause();
}

static int loop(void)
{
    CUcontext ctx;
    setup(&ctx);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY\n");
    for (;;) {
        double t = now_s();
        CUresult r = cuCtxSynchronize();
        if (r != CUDA_SUCCESS) {
            printf("error %d after %.3f s\n", (int)r, now_s() - t);
            CUresult again = cuCtxSynchronize();
            printf("then %d\n", (int)again);
            return 0;
        }
        usleep(20000);
    }
}

/* kernels of the fake libcuda's reference set (native/testdoubles/fake_cuda_kernels.c): any image
 * loads on the double; the names select CPU reference implementations */
static const char k_ptx[] = ".version 8.0\n.target sm_80\n.address_size 64\n"
                            ".visible .entry xpur_ref_saxpy()\n{\n}\n";

static int launch(void)
{
    CUcontext ctx;
    setup(&ctx);
    CUmodule m;
    CUfunction saxpy, fill;
    CHECK(cuModuleLoadData(&m, k_ptx));
    CHECK(cuModuleGetFunction(&saxpy, m, "xpur_ref_saxpy"));
    CHECK(cuModuleGetFunction(&fill, m, "xpur_ref_fill_u32"));
    /* outputs the driver lets the caller skip (cuBLAS asks for a global's address only) */
    CUdeviceptr g = 0;
    size_t gbytes = 0;
    CHECK(cuModuleGetGlobal(&g, NULL, m, "xpur_constants"));
    CHECK(cuModuleGetGlobal(NULL, &gbytes, m, "xpur_constants"));
    EXPECT(g != 0 && gbytes > 0, "a global's address and size asked for separately");
    CHECK(cuMemsetD8(g, 0x5a, gbytes)); /* the session may write its module's globals */
    CUdeviceptr base = 0;
    CHECK(cuMemGetAddressRange(&base, NULL, g));
    EXPECT(base != 0, "cuMemGetAddressRange with only the base asked for");
    CUmoduleLoadingMode mode = CU_MODULE_EAGER_LOADING;
    CHECK(cuModuleGetLoadingMode(&mode));
    EXPECT(mode == CU_MODULE_LAZY_LOADING, "lazy module loading, as a 12.2+ driver answers by default");
    size_t off = 99, size = 99;
    CHECK(cuFuncGetParamInfo(saxpy, 3, &off, &size));
    EXPECT(off == 16 && size == 8, "saxpy parameter 3 at %zu (%zu bytes)", off, size);
    EXPECT(cuFuncGetParamInfo(saxpy, 4, &off, &size) == CUDA_ERROR_INVALID_VALUE, "no parameter 4");
    const char *name = NULL;
    CHECK(cuFuncGetName(&name, saxpy));
    EXPECT(name && !strcmp(name, "xpur_ref_saxpy"), "function name");
    enum { N = 1 << 16 };
    static float x[N], y[N], out[N];
    for (int i = 0; i < N; i++) {
        x[i] = (float)i;
        y[i] = 1.0f;
    }
    CUdeviceptr dx, dy, dp;
    CHECK(cuMemAlloc(&dx, sizeof x));
    CHECK(cuMemAlloc(&dy, sizeof y));
    CHECK(cuMemAlloc(&dp, 4 * N));
    CUstream st;
    CHECK(cuStreamCreate(&st, 0));
    CHECK(cuMemcpyHtoDAsync(dx, x, sizeof x, st));
    CHECK(cuMemcpyHtoDAsync(dy, y, sizeof y, st));
    int n = N;
    float a = 2.5f;
    void *args[] = {&n, &a, &dx, &dy};
    for (int rep = 0; rep < 4; rep++) /* fire-and-forget, batched, in stream order */
        CHECK(cuLaunchKernel(saxpy, (N + 255) / 256, 1, 1, 256, 1, 1, 0, st, args, NULL));
    unsigned v = 0xfeedf00du;
    struct {
        CUdeviceptr p;
        unsigned v;
        int n;
    } packed = {dp, v, N};
    size_t psize = sizeof packed;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, &packed, CU_LAUNCH_PARAM_BUFFER_SIZE, &psize, CU_LAUNCH_PARAM_END};
    CHECK(cuLaunchKernel(fill, 1, 1, 1, 1, 1, 1, 0, st, NULL, extra));
    CHECK(cuMemcpyDtoHAsync(out, dy, sizeof out, st));
    CHECK(cuStreamSynchronize(st));
    int ok = 1;
    for (int i = 0; i < N; i++)
        ok &= out[i] == 1.0f + 4 * 2.5f * (float)i;
    EXPECT(ok, "4 x saxpy computed on the (reference) device from parameters sent over the wire");
    unsigned got[4];
    CHECK(cuMemcpyDtoH(got, dp + 4 * (N - 4), sizeof got));
    EXPECT(got[0] == v && got[3] == v, "fill through the CU_LAUNCH_PARAM_BUFFER path");
    /* a kernel that faults: the launch is fire-and-forget, the fault ends the session at the next
     * synchronising call and every call after it reports the same error */
    CUfunction trap;
    CHECK(cuModuleGetFunction(&trap, m, "xpur_ref_trap"));
    CHECK(cuLaunchKernel(trap, 1, 1, 1, 1, 1, 1, 0, st, NULL, NULL));
    CUresult r1 = cuStreamSynchronize(st), r2 = cuMemAlloc(&dx, 16);
    EXPECT(r1 == CUDA_ERROR_ILLEGAL_ADDRESS && r2 == CUDA_ERROR_ILLEGAL_ADDRESS,
           "sticky fault: sync %d, next call %d", (int)r1, (int)r2);
    if (failures)
        return 1;
    printf("launch ok\n");
    return 0;
}

/* a kernel that kills the worker process: this session ends with an error, others go on */
static int crash(void)
{
    CUcontext ctx;
    setup(&ctx);
    CUmodule m;
    CUfunction f;
    CHECK(cuModuleLoadData(&m, k_ptx));
    CHECK(cuModuleGetFunction(&f, m, "xpur_ref_abort"));
    CHECK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, 0, NULL, NULL));
    CUresult r = cuCtxSynchronize();
    printf("after crash %d\n", (int)r);
    return r == CUDA_ERROR_DEVICE_UNAVAILABLE ? 0 : 1;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int rtt(int n)
{
    CUcontext ctx;
    setup(&ctx);
    double *v = malloc(sizeof(double) * (size_t)n);
    for (int i = 0; i < 200; i++)
        CHECK(cuCtxSynchronize());
    for (int i = 0; i < n; i++) {
        double t = now_s();
        CHECK(cuCtxSynchronize());
        v[i] = (now_s() - t) * 1e6;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    printf("rtt_us p50 %.1f p99 %.1f\n", v[n / 2], v[n * 99 / 100]);
    free(v);
    return failures != 0;
}

static int alloc(size_t mib)
{
    CUcontext ctx;
    setup(&ctx);
    CUdeviceptr d;
    CUresult r = cuMemAlloc(&d, mib << 20);
    printf("alloc %d\n", (int)r);
    return r == CUDA_SUCCESS ? 0 : 2;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "basic";
    if (!strcmp(mode, "basic"))
        return basic();
    if (!strcmp(mode, "hold") && argc > 2)
        return hold(strtoull(argv[2], NULL, 10));
    if (!strcmp(mode, "loop"))
        return loop();
    if (!strcmp(mode, "rtt"))
        return rtt(argc > 2 ? atoi(argv[2]) : 10000);
    if (!strcmp(mode, "alloc") && argc > 2)
        return alloc(strtoull(argv[2], NULL, 10));
    if (!strcmp(mode, "launch"))
        return launch();
    if (!strcmp(mode, "crash"))
        return crash();
    fprintf(stderr, "usage: t_remote_driver basic|hold MIB|loop|rtt N|alloc MIB\n");
    return 2;
}
