/*
 * Stream capture under the shim, against the fake libcuda.so.1 TEST DOUBLE (which enforces
 * CUDA's capture rules: querying/synchronising a captured event, or an unsafe call during a
 * GLOBAL capture, invalidates the capture).
 *   capture          a compute share is set; kernels before, during (with a fork/join to a
 *                    second stream and a busy neighbour thread) and after capture; the
 *                    capture must stay valid, captured launches are not charged, the graph
 *                    is charged when it runs
 *   capgraph SECS    a captured 1 ms graph launched back to back: prints the achieved share
 *   capalloc         cuMemAllocAsync during capture is charged when the graph runs
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>
#include "t_common.h"

uint64_t fake_cuda_busy_ns(void);
long fake_cuda_capture_invalidations(void);

static _Atomic int g_stop;
static CUstream g_s2;
static _Atomic long g_neighbour_launches;

static void *neighbour(void *arg)
{
    (void)arg; /* a thread in GLOBAL capture mode launching on a stream that is not capturing */
    while (!atomic_load(&g_stop)) {
        CHECK(cuLaunchKernel(NULL, 50, 1, 1, 1, 1, 1, 0, g_s2, NULL, NULL) == CUDA_SUCCESS, "neighbour launch");
        atomic_fetch_add(&g_neighbour_launches, 1);
        sleep_s(0.0002);
    }
    return NULL;
}

static void launch_n(CUstream s, int n, unsigned us)
{
    for (int i = 0; i < n; i++)
        CHECK(cuLaunchKernel(NULL, us, 1, 1, 1, 1, 1, 0, s, NULL, NULL) == CUDA_SUCCESS, "launch %d on %p", i, (void *)s);
}

static CUgraphExec capture_graph(CUstream s, int kernels, unsigned us)
{
    CUgraph g;
    CUgraphExec e;
    CHECK(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL) == CUDA_SUCCESS, "begin capture");
    launch_n(s, kernels, us);
    CHECK(cuStreamEndCapture(s, &g) == CUDA_SUCCESS && g, "end capture");
    CHECK(cuGraphInstantiateWithFlags(&e, g, 0) == CUDA_SUCCESS, "instantiate");
    CHECK(cuGraphDestroy(g) == CUDA_SUCCESS, "graph destroy");
    return e;
}

static void mode_capture(void)
{
    CUstream s, s3;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS && cuStreamCreate(&g_s2, 0) == CUDA_SUCCESS &&
              cuStreamCreate(&s3, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS, "streams");
    uint64_t b0 = fake_cuda_busy_ns(), m0 = metered_ns();
    launch_n(s, 8, 200); /* the limiter has batches open / in flight on s when capture begins */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, neighbour, NULL) == 0, "thread");
    sleep_s(0.005);
    CHECK(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL) == CUDA_SUCCESS, "begin capture");
    uint64_t busy_at_begin = fake_cuda_busy_ns();
    double t0 = now_s();
    launch_n(s, 50, 100);
    CUevent e1, e2;
    CHECK(cuEventCreate(&e1, CU_EVENT_DISABLE_TIMING) == CUDA_SUCCESS && cuEventCreate(&e2, CU_EVENT_DISABLE_TIMING) == CUDA_SUCCESS,
          "events");
    CHECK(cuEventRecord(e1, s) == CUDA_SUCCESS && cuStreamWaitEvent(s3, e1, 0) == CUDA_SUCCESS, "fork to s3");
    CUstreamCaptureStatus st;
    CHECK(cuStreamIsCapturing(s3, &st) == CUDA_SUCCESS && st == CU_STREAM_CAPTURE_STATUS_ACTIVE, "s3 joined the capture");
    launch_n(s3, 10, 100);
    CHECK(cuEventRecord(e2, s3) == CUDA_SUCCESS && cuStreamWaitEvent(s, e2, 0) == CUDA_SUCCESS, "join back");
    double capture_s = now_s() - t0;
    CHECK(capture_s < 0.5, "captured launches are not throttled (%.3f s)", capture_s);
    /* the neighbour keeps launching (and the shim polling and waiting) while we capture */
    long at_begin = atomic_load(&g_neighbour_launches);
    for (double t1 = now_s(); atomic_load(&g_neighbour_launches) - at_begin < 20 && now_s() - t1 < 10;)
        sleep_s(0.002);
    CUgraph g;
    CUresult rc = cuStreamEndCapture(s, &g);
    CHECK(rc == CUDA_SUCCESS && g, "capture still valid at its end (rc %d, invalidations %ld)", (int)rc,
          fake_cuda_capture_invalidations());
    CHECK(fake_cuda_capture_invalidations() == 0, "no capture invalidated");
    atomic_store(&g_stop, 1);
    pthread_join(t, NULL);
    CHECK(atomic_load(&g_neighbour_launches) - at_begin >= 20, "the neighbour ran during the capture");
    (void)busy_at_begin;
    /* the graph (60 x 100 us on the fake) runs when launched, and only then */
    CUgraphExec e;
    CHECK(cuGraphInstantiateWithFlags(&e, g, 0) == CUDA_SUCCESS, "instantiate");
    for (int i = 0; i < 3; i++)
        CHECK(cuGraphLaunch(e, s) == CUDA_SUCCESS, "graph launch");
    CHECK(cuStreamSynchronize(s) == CUDA_SUCCESS && cuStreamSynchronize(g_s2) == CUDA_SUCCESS, "sync");
    sleep_s(0.01);
    launch_n(s, 1, 1); /* lets the shim poll the last batches */
    CHECK(cuStreamSynchronize(s) == CUDA_SUCCESS, "sync");
    sleep_s(0.01);
    launch_n(s, 1, 0);
    double busy = (double)(fake_cuda_busy_ns() - b0), metered = (double)(metered_ns() - m0);
    printf("busy_ms %.3f metered_ms %.3f\n", busy / 1e6, metered / 1e6);
    CHECK(busy > 18e6, "the graph ran three times (busy %.3f ms)", busy / 1e6);
    CHECK(metered > 0.85 * busy && metered < 1.15 * busy,
          "charged what ran, captured launches not charged twice: metered %.3f ms vs busy %.3f ms", metered / 1e6,
          busy / 1e6);
    /* per-thread default stream, thread-local mode */
    CUresult (*begin_ptsz)(CUstream, CUstreamCaptureMode) =
        (CUresult(*)(CUstream, CUstreamCaptureMode))dlsym(RTLD_DEFAULT, "cuStreamBeginCapture_v2_ptsz");
    CUresult (*end_ptsz)(CUstream, CUgraph *) = (CUresult(*)(CUstream, CUgraph *))dlsym(RTLD_DEFAULT, "cuStreamEndCapture_ptsz");
    CUresult (*lk_ptsz)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **) =
        (CUresult(*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void **,
                     void **))dlsym(RTLD_DEFAULT, "cuLaunchKernel_ptsz");
    CHECK(begin_ptsz && end_ptsz && lk_ptsz, "ptsz entry points");
    lk_ptsz(NULL, 100, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
    CHECK(begin_ptsz(NULL, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) == CUDA_SUCCESS, "begin ptsz capture");
    for (int i = 0; i < 20; i++)
        CHECK(lk_ptsz(NULL, 100, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL) == CUDA_SUCCESS, "ptsz captured launch");
    CUgraph g2;
    CHECK(end_ptsz(NULL, &g2) == CUDA_SUCCESS && g2, "ptsz capture intact");
    CHECK(fake_cuda_capture_invalidations() == 0, "no capture invalidated");
    CHECK(cuGraphExecDestroy(e) == CUDA_SUCCESS && cuGraphDestroy(g) == CUDA_SUCCESS && cuGraphDestroy(g2) == CUDA_SUCCESS &&
              cuEventDestroy(e1) == CUDA_SUCCESS && cuEventDestroy(e2) == CUDA_SUCCESS && cuStreamDestroy(s) == CUDA_SUCCESS &&
              cuStreamDestroy(s3) == CUDA_SUCCESS && cuStreamDestroy(g_s2) == CUDA_SUCCESS, "teardown");
    printf("capture ok\n");
}

static void mode_capgraph(double secs)
{
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS, "stream");
    CUgraphExec e = capture_graph(s, 10, 100); /* 1 ms of GPU work per launch */
    double t0 = now_s(), t1 = t0 + 1.0;
    while (now_s() < t1)
        CHECK(cuGraphLaunch(e, s) == CUDA_SUCCESS, "graph launch");
    uint64_t b0 = fake_cuda_busy_ns();
    t0 = now_s();
    long n = 0;
    while (now_s() - t0 < secs) {
        CHECK(cuGraphLaunch(e, s) == CUDA_SUCCESS, "graph launch");
        n++;
    }
    double el = now_s() - t0;
    printf("share %.2f launches %ld invalidations %ld\n", 100.0 * (double)(fake_cuda_busy_ns() - b0) / (el * 1e9), n,
           fake_cuda_capture_invalidations());
    CHECK(cuStreamSynchronize(s) == CUDA_SUCCESS && cuGraphExecDestroy(e) == CUDA_SUCCESS && cuStreamDestroy(s) == CUDA_SUCCESS,
          "teardown");
}

static void mode_capalloc(void)
{
    /* quota 1024 MiB, no compute share */
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS, "stream");
    uint64_t u0 = used();
    CUdeviceptr p, q;
    CHECK(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL) == CUDA_SUCCESS, "begin capture");
    CHECK(cuMemAllocAsync(&q, 2000 * MIB, s) == CUDA_ERROR_OUT_OF_MEMORY, "a node larger than the quota is refused");
    CHECK(cuMemAllocAsync(&p, 600 * MIB, s) == CUDA_SUCCESS, "allocation node during capture");
    CHECK(cuLaunchKernel(NULL, 10, 1, 1, 1, 1, 1, 0, s, NULL, NULL) == CUDA_SUCCESS, "kernel");
    CHECK(cuMemFreeAsync(p, s) == CUDA_SUCCESS, "free node");
    CUgraph g;
    CHECK(cuStreamEndCapture(s, &g) == CUDA_SUCCESS && g, "end capture");
    CHECK(used() == u0, "nothing runs during capture, nothing charged yet (%llu)", (unsigned long long)(used() - u0));
    CUgraphExec e;
    CHECK(cuGraphInstantiateWithFlags(&e, g, 0) == CUDA_SUCCESS, "instantiate");
    CHECK(cuGraphLaunch(e, s) == CUDA_SUCCESS && cuStreamSynchronize(s) == CUDA_SUCCESS, "launch");
    CHECK(used() == u0 + 600 * MIB, "graph memory charged when the graph runs: %llu MiB",
          (unsigned long long)((used() - u0) / MIB));
    CUdeviceptr x;
    CHECK(cuMemAlloc(&x, 600 * MIB) == CUDA_ERROR_OUT_OF_MEMORY, "600 graph + 600 > 1024: refused");
    CHECK(cuGraphExecDestroy(e) == CUDA_SUCCESS && cuDeviceGraphMemTrim(0) == CUDA_SUCCESS, "trim");
    CHECK(used() == u0, "trim uncharges");
    CHECK(cuMemAlloc(&x, 600 * MIB) == CUDA_SUCCESS, "fits after trim");
    CHECK(cuMemFree(x) == CUDA_SUCCESS && cuGraphDestroy(g) == CUDA_SUCCESS && cuStreamDestroy(s) == CUDA_SUCCESS, "teardown");
    printf("capalloc ok\n");
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    map_region();
    CHECK(cuInit(0) == CUDA_SUCCESS, "cuInit");
    if (!strcmp(argv[1], "capture"))
        mode_capture();
    else if (!strcmp(argv[1], "capgraph") && argc >= 3)
        mode_capgraph(atof(argv[2]));
    else if (!strcmp(argv[1], "capalloc"))
        mode_capalloc();
    else
        return 2;
    return 0;
}
