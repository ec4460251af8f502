/*
 * TEST DOUBLE — CPU reference kernels of the fake libcuda.so.1 (NOT a CUDA driver, NOT a GPU).
 *
 * The double records modules and functions but cannot read a real image, so it cannot know a real
 * kernel's parameters or run it. A few kernels with reserved names are known here instead: their
 * parameter layout (cuFuncGetParamInfo / cuKernelGetParamInfo, as a driver >= 12.4 reports it) and
 * a CPU implementation that runs in stream order on the double's host-backed device memory. They
 * let tests prove that kernel parameters cross the remoting wire intact (a result computed from
 * them is checked) and exercise failure paths (a kernel that faults, one that kills the process).
 * Every other name: parameter queries answer CUDA_ERROR_NOT_SUPPORTED, launches only advance the
 * simulated timeline of fake_libcuda.c.
 *
 *   xpur_ref_saxpy(int n, float a, const float *x, float *y)   y[i] = a * x[i] + y[i]
 *   xpur_ref_fill_u32(unsigned *p, unsigned v, int n)          p[i] = v
 *   xpur_ref_trap(void)                                        fails: CUDA_ERROR_ILLEGAL_ADDRESS
 *   xpur_ref_abort(void)                                       kills the calling process (a crash)
 *   xpur_ref_sleep_ms(int ms)                                  a long kernel (the host waits)
 * A pointer argument outside a live device allocation is CUDA_ERROR_ILLEGAL_ADDRESS, as a GPU's
 * memory fault would be.
 */
#include "fake_cuda_internal.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct ref_param {
    unsigned off, size;
};

struct ref_kernel {
    const char *name;
    unsigned nparams;
    struct ref_param p[4];
    CUresult (*run)(const unsigned char *args, unsigned gx, unsigned bx);
};

static int dev_span(uint64_t p, uint64_t bytes) { return fake_devmem_find(p, bytes ? bytes : 1, NULL, NULL); }

static CUresult saxpy(const unsigned char *a, unsigned gx, unsigned bx)
{
    (void)gx;
    (void)bx;
    int n;
    float k;
    uint64_t x, y;
    memcpy(&n, a, 4);
    memcpy(&k, a + 4, 4);
    memcpy(&x, a + 8, 8);
    memcpy(&y, a + 16, 8);
    if (n < 0 || !dev_span(x, (uint64_t)n * 4) || !dev_span(y, (uint64_t)n * 4))
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    const float *xs = (const float *)(uintptr_t)x;
    float *ys = (float *)(uintptr_t)y;
    for (int i = 0; i < n; i++)
        ys[i] = k * xs[i] + ys[i];
    return CUDA_SUCCESS;
}

static CUresult fill_u32(const unsigned char *a, unsigned gx, unsigned bx)
{
    (void)gx;
    (void)bx;
    uint64_t p;
    unsigned v;
    int n;
    memcpy(&p, a, 8);
    memcpy(&v, a + 8, 4);
    memcpy(&n, a + 12, 4);
    if (n < 0 || !dev_span(p, (uint64_t)n * 4))
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    unsigned *d = (unsigned *)(uintptr_t)p;
    for (int i = 0; i < n; i++)
        d[i] = v;
    return CUDA_SUCCESS;
}

static CUresult trap(const unsigned char *a, unsigned gx, unsigned bx)
{
    (void)a;
    (void)gx;
    (void)bx;
    return CUDA_ERROR_ILLEGAL_ADDRESS;
}

static CUresult die(const unsigned char *a, unsigned gx, unsigned bx)
{
    (void)a;
    (void)gx;
    (void)bx;
    raise(SIGKILL); /* what a driver-level crash of the process looks like to its peers */
    return CUDA_ERROR_UNKNOWN;
}

static CUresult sleep_ms(const unsigned char *a, unsigned gx, unsigned bx)
{
    (void)gx;
    (void)bx;
    int ms;
    memcpy(&ms, a, 4);
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return CUDA_SUCCESS;
}

static const struct ref_kernel k_kernels[] = {
    {"xpur_ref_saxpy", 4, {{0, 4}, {4, 4}, {8, 8}, {16, 8}}, saxpy},
    {"xpur_ref_fill_u32", 3, {{0, 8}, {8, 4}, {12, 4}}, fill_u32},
    {"xpur_ref_trap", 0, {{0, 0}}, trap},
    {"xpur_ref_abort", 0, {{0, 0}}, die},
    {"xpur_ref_sleep_ms", 1, {{0, 4}}, sleep_ms},
};

FAKE_EXPORT CUresult cuFuncGetName(const char **name, CUfunction f);

static const struct ref_kernel *lookup(CUfunction f)
{
    const char *name = NULL;
    if (!f || cuFuncGetName(&name, f) != CUDA_SUCCESS || !name)
        return NULL;
    for (size_t i = 0; i < sizeof k_kernels / sizeof k_kernels[0]; i++)
        if (strcmp(k_kernels[i].name, name) == 0)
            return &k_kernels[i];
    return NULL;
}

/* launches are hot in the shim's limiter tests: remember the last function per thread */
static const struct ref_kernel *find(CUfunction f)
{
    static _Thread_local CUfunction last_f;
    static _Thread_local const struct ref_kernel *last_k;
    if (!f)
        return NULL;
    if (f != last_f) {
        last_k = lookup(f);
        last_f = f;
    }
    return last_k;
}

static CUresult param_info(CUfunction f, size_t i, size_t *off, size_t *size)
{
    FAKE_COUNT();
    const char *name = NULL;
    if (!f || cuFuncGetName(&name, f) != CUDA_SUCCESS)
        return CUDA_ERROR_INVALID_HANDLE;
    const struct ref_kernel *k = lookup(f);
    if (!k)
        return CUDA_ERROR_NOT_SUPPORTED; /* a recorded image: its layout is unknowable here */
    if (i >= k->nparams)
        return CUDA_ERROR_INVALID_VALUE;
    if (off)
        *off = k->p[i].off;
    if (size)
        *size = k->p[i].size;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuFuncGetParamInfo(CUfunction f, size_t i, size_t *off, size_t *size)
{
    return param_info(f, i, off, size);
}

FAKE_EXPORT CUresult cuKernelGetParamInfo(CUkernel k, size_t i, size_t *off, size_t *size)
{
    return param_info((CUfunction)k, i, off, size); /* the double's kernels are its functions */
}

/* Called by fake_libcuda.c's launch entry points: 1 when f is a reference kernel (it ran, in
 * stream order, and *rc is its result), 0 to let the double simulate the launch as for any other. */
int fake_cuda_reference_kernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                               unsigned bz, CUstream s, int per_thread, void **params, void **extra, CUresult *rc)
{
    (void)gy;
    (void)gz;
    (void)by;
    (void)bz;
    const struct ref_kernel *k = find(f);
    if (!k)
        return 0;
    unsigned char args[64] = {0};
    if (extra) {
        const void *buf = NULL;
        size_t n = 0;
        for (int i = 0; extra[i] != CU_LAUNCH_PARAM_END && i < 8; i += 2) {
            if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER)
                buf = extra[i + 1];
            else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE)
                n = *(const size_t *)extra[i + 1];
        }
        if (!buf || n > sizeof args) {
            *rc = CUDA_ERROR_INVALID_VALUE;
            return 1;
        }
        memcpy(args, buf, n);
    } else {
        for (unsigned i = 0; i < k->nparams; i++) {
            if (!params || !params[i]) {
                *rc = CUDA_ERROR_INVALID_VALUE;
                return 1;
            }
            memcpy(args + k->p[i].off, params[i], k->p[i].size);
        }
    }
    *rc = fake_stream_order(s, per_thread); /* earlier work on the stream first */
    if (*rc == CUDA_SUCCESS)
        *rc = k->run(args, gx, bx);
    return 1;
}
