/*
 * The remoting client under load (linked against native/remote's libcuda.so.1; the daemon's
 * backend is whatever the caller started: the fake libcuda test double in CI, a GPU on a GPU host).
 *   bench_client rtt N           N synchronous null calls (cuCtxGetFlags: a reply with nothing in
 *                                 it), p50/p99/p999 in microseconds
 *   bench_client launch N         N fire-and-forget launch-shaped calls (cuLaunchKernel, 64-byte
 *                                 parameter buffer: ~150-byte frames), then one synchronisation;
 *                                 calls/s and client CPU microseconds per call
 *   bench_client copy MIB REPS    MIB host-to-device and device-to-host copies, REPS times; MB/s
 *                                 best and median per direction; the data is verified once
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        CUresult r_ = (x);                                                                         \
        if (r_) {                                                                                  \
            fprintf(stderr, "%s failed: %d\n", #x, (int)r_);                                        \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage u;
    getrusage(RUSAGE_THREAD, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    CUcontext ctx;
    CHECK(cuInit(0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, 0));
    CHECK(cuCtxSetCurrent(ctx));
    if (!strcmp(argv[1], "rtt")) {
        int n = atoi(argv[2]);
        double *v = malloc(sizeof(double) * (size_t)n);
        unsigned flags;
        for (int i = 0; i < 2000; i++)
            CHECK(cuCtxGetFlags(&flags));
        for (int i = 0; i < n; i++) {
            double t = now();
            CHECK(cuCtxGetFlags(&flags));
            v[i] = (now() - t) * 1e6;
        }
        qsort(v, (size_t)n, sizeof *v, cmp);
        printf("rtt_us p50 %.2f p99 %.2f p999 %.2f\n", v[n / 2], v[(long)n * 99 / 100], v[(long)n * 999 / 1000]);
    } else if (!strcmp(argv[1], "launch")) {
        long n = atol(argv[2]);
        static const char ptx[] = ".version 8.0\n.target sm_80\n.address_size 64\n";
        CUmodule m;
        CUfunction f;
        CHECK(cuModuleLoadData(&m, ptx));
        CHECK(cuModuleGetFunction(&f, m, "bench_kernel"));
        uint8_t params[64] = {1};
        size_t size = sizeof params;
        void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, params, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
        for (int i = 0; i < 1000; i++)
            CHECK(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, 0, NULL, extra));
        CHECK(cuCtxSynchronize());
        double t = now(), c = cpu_s();
        for (long i = 0; i < n; i++)
            CHECK(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, 0, NULL, extra));
        double issued = now(), cpu = cpu_s() - c;
        CHECK(cuCtxSynchronize());
        double done = now();
        printf("launch calls_per_s %.0f issue_calls_per_s %.0f client_cpu_us_per_call %.2f\n", n / (done - t),
               n / (issued - t), cpu / n * 1e6);
    } else if (!strcmp(argv[1], "copy") && argc > 3) {
        size_t bytes = (size_t)atol(argv[2]) << 20;
        int reps = atoi(argv[3]);
        uint8_t *h = malloc(bytes), *back = malloc(bytes);
        for (size_t i = 0; i < bytes; i++)
            h[i] = (uint8_t)(i * 131 >> 7);
        CUdeviceptr d;
        CHECK(cuMemAlloc(&d, bytes));
        double *up = malloc(sizeof(double) * (size_t)reps), *down = malloc(sizeof(double) * (size_t)reps);
        for (int i = 0; i < reps; i++) {
            double t = now();
            CHECK(cuMemcpyHtoD(d, h, bytes));
            double t1 = now();
            CHECK(cuMemcpyDtoH(back, d, bytes));
            double t2 = now();
            up[i] = bytes / (t1 - t) / 1e6;
            down[i] = bytes / (t2 - t1) / 1e6;
            if (i == 0 && memcmp(h, back, bytes)) {
                fprintf(stderr, "data differs\n");
                return 1;
            }
        }
        qsort(up, (size_t)reps, sizeof *up, cmp);
        qsort(down, (size_t)reps, sizeof *down, cmp);
        printf("h2d_mbps best %.0f median %.0f d2h_mbps best %.0f median %.0f\n", up[reps - 1], up[reps / 2],
               down[reps - 1], down[reps / 2]);
    }
    return 0;
}
