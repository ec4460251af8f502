/*
 * Several streams and threads under the shim's compute limiter, against the fake
 * libcuda.so.1 TEST DOUBLE (each stream has its own timeline; kernels of different streams
 * overlap unless FAKE_CUDA_SERIAL=1; the device's busy time is the union of all kernels).
 *   mstream SECS US[,US..] NSTREAMS NTHREADS   thread i launches US[i]-microsecond kernels
 *                    round robin over their own NSTREAMS streams; prints the achieved busy
 *                    share of the card and the ratio of the shim's metered GPU time to the
 *                    device's real busy time
 *   lockwait         while one thread waits for its own stream's queue to drain, a launch
 *                    on another stream from another thread is not held up
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <pthread.h>
#include <string.h>
#include "t_common.h"

uint64_t fake_cuda_busy_ns(void);

static double g_secs;
static unsigned g_us[8], g_nus, g_nstreams;
static _Atomic int g_next_thread;
static _Atomic int g_phase; /* 0 warm-up, 1 measure, 2 stop */

static void *launcher(void *arg)
{
    (void)arg;
    unsigned us = g_us[(unsigned)atomic_fetch_add(&g_next_thread, 1) % g_nus];
    CUstream s[8];
    for (unsigned i = 0; i < g_nstreams; i++)
        CHECK(cuStreamCreate(&s[i], CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS, "stream");
    unsigned k = 0;
    while (atomic_load(&g_phase) < 2) {
        CHECK(cuLaunchKernel(NULL, us, 1, 1, 1, 1, 1, 0, s[k], NULL, NULL) == CUDA_SUCCESS, "launch");
        k = (k + 1) % g_nstreams;
    }
    for (unsigned i = 0; i < g_nstreams; i++)
        CHECK(cuStreamSynchronize(s[i]) == CUDA_SUCCESS && cuStreamDestroy(s[i]) == CUDA_SUCCESS, "teardown");
    return NULL;
}

static void mode_mstream(int nthreads)
{
    uint64_t m0 = metered_ns(), f0 = fake_cuda_busy_ns();
    pthread_t t[8];
    for (int i = 0; i < nthreads; i++)
        CHECK(pthread_create(&t[i], NULL, launcher, NULL) == 0, "thread");
    sleep_s(1.0);
    uint64_t b0 = fake_cuda_busy_ns();
    double t0 = now_s();
    sleep_s(g_secs);
    uint64_t b1 = fake_cuda_busy_ns();
    double el = now_s() - t0;
    atomic_store(&g_phase, 2);
    for (int i = 0; i < nthreads; i++)
        pthread_join(t[i], NULL);
    sleep_s(0.05);
    CUstream s;
    cuStreamCreate(&s, CU_STREAM_NON_BLOCKING);
    cuLaunchKernel(NULL, 0, 1, 1, 1, 1, 1, 0, s, NULL, NULL); /* lets the shim poll the last batches */
    cuStreamSynchronize(s);
    cuStreamDestroy(s);
    if (R)
        printf("metered_ratio %.3f\n", (double)(metered_ns() - m0) / (double)(fake_cuda_busy_ns() - f0));
    printf("share %.2f\n", 100.0 * (double)(b1 - b0) / (el * 1e9));
}

static _Atomic int g_a_launched;
static double g_a_wait_s;

static void *long_kernels(void *arg)
{
    CUstream s = (CUstream)arg;
    for (int i = 0; i < 6; i++) {
        double t0 = now_s();
        atomic_store(&g_a_launched, i);
        CHECK(cuLaunchKernel(NULL, 30000, 1, 1, 1, 1, 1, 0, s, NULL, NULL) == CUDA_SUCCESS, "30 ms kernel");
        double w = now_s() - t0;
        if (w > g_a_wait_s)
            g_a_wait_s = w;
    }
    return NULL;
}

static void mode_lockwait(void)
{
    CUstream sa, sb;
    CHECK(cuStreamCreate(&sa, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS && cuStreamCreate(&sb, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS,
          "streams");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, long_kernels, sa) == 0, "thread");
    while (atomic_load(&g_a_launched) < 5)
        sleep_s(0.0005);
    sleep_s(0.005); /* A is now waiting for its own queue (4 x 30 ms ahead) */
    double t0 = now_s();
    CHECK(cuLaunchKernel(NULL, 1, 1, 1, 1, 1, 1, 0, sb, NULL, NULL) == CUDA_SUCCESS, "short kernel on another stream");
    double b_s = now_s() - t0;
    pthread_join(t, NULL);
    printf("a_max_wait_ms %.2f b_launch_ms %.3f\n", g_a_wait_s * 1e3, b_s * 1e3);
    CHECK(g_a_wait_s > 0.010, "the long-kernel thread did wait for its queue (%.2f ms)", g_a_wait_s * 1e3);
    CHECK(b_s < 0.005, "a launch on another stream is not held up by that wait (%.2f ms)", b_s * 1e3);
    CHECK(cuStreamSynchronize(sa) == CUDA_SUCCESS && cuStreamSynchronize(sb) == CUDA_SUCCESS &&
              cuStreamDestroy(sa) == CUDA_SUCCESS && cuStreamDestroy(sb) == CUDA_SUCCESS, "teardown");
    printf("lockwait ok\n");
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    map_region();
    CHECK(cuInit(0) == CUDA_SUCCESS, "cuInit");
    if (!strcmp(argv[1], "mstream") && argc >= 6) {
        g_secs = atof(argv[2]);
        for (char *tok = strtok(argv[3], ","); tok && g_nus < 8; tok = strtok(NULL, ","))
            g_us[g_nus++] = (unsigned)atoi(tok);
        if (!g_nus)
            return 2;
        g_nstreams = (unsigned)atoi(argv[4]);
        if (g_nstreams < 1 || g_nstreams > 8)
            return 2;
        mode_mstream(atoi(argv[5]) < 1 ? 1 : atoi(argv[5]) > 8 ? 8 : atoi(argv[5]));
    } else if (!strcmp(argv[1], "lockwait")) {
        mode_lockwait();
    } else {
        return 2;
    }
    return 0;
}
