/*
 * TEST DOUBLE — fake libcuda.so.1 stream queries and host functions (NOT a CUDA driver).
 *
 * Streams themselves (timelines, capture, events, synchronisation) are fake_libcuda.c's. This
 * file adds what the runtime and libraries also ask of a stream: its flags, priority, context
 * and id, and host functions / callbacks, which run in stream order at submission
 * (fake_stream_order waits for the stream's earlier work). Unknown handles are
 * CUDA_ERROR_INVALID_HANDLE.
 */
#include "fake_cuda_internal.h"

#include <stdint.h>

/* what a stream handle means for the _ptsz entry points: NULL is the per-thread stream */
static CUstream ptsz(CUstream s) { return s ? s : CU_STREAM_PER_THREAD; }
static int is_default(CUstream s) { return s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD; }

static CUresult get_flags(CUstream s, unsigned *flags)
{
    if (!flags)
        return CUDA_ERROR_INVALID_VALUE;
    return fake_stream_flags(s, 0, flags);
}
FAKE_EXPORT CUresult cuStreamGetFlags(CUstream s, unsigned *f) { return get_flags(s, f); }
FAKE_EXPORT CUresult cuStreamGetFlags_ptsz(CUstream s, unsigned *f) { return get_flags(ptsz(s), f); }

static CUresult get_priority(CUstream s, int *priority)
{
    unsigned flags;
    if (!priority)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = fake_stream_flags(s, 0, &flags);
    if (rc == CUDA_SUCCESS)
        *priority = 0; /* the double has one priority */
    return rc;
}
FAKE_EXPORT CUresult cuStreamGetPriority(CUstream s, int *p) { return get_priority(s, p); }
FAKE_EXPORT CUresult cuStreamGetPriority_ptsz(CUstream s, int *p) { return get_priority(ptsz(s), p); }

static CUresult get_ctx(CUstream s, CUcontext *ctx)
{
    unsigned flags;
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = fake_stream_flags(s, 0, &flags);
    if (rc == CUDA_SUCCESS)
        rc = cuCtxGetCurrent(ctx); /* streams are not bound to contexts in the double */
    return rc;
}
FAKE_EXPORT CUresult cuStreamGetCtx(CUstream s, CUcontext *c) { return get_ctx(s, c); }
FAKE_EXPORT CUresult cuStreamGetCtx_ptsz(CUstream s, CUcontext *c) { return get_ctx(ptsz(s), c); }

static CUresult get_id(CUstream s, unsigned long long *id)
{
    unsigned flags;
    if (!id)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = fake_stream_flags(s, 0, &flags);
    if (rc == CUDA_SUCCESS)
        *id = is_default(s) ? (s == CU_STREAM_PER_THREAD ? 2 : 1) : (unsigned long long)(uintptr_t)s;
    return rc;
}
FAKE_EXPORT CUresult cuStreamGetId(CUstream s, unsigned long long *id) { return get_id(s, id); }
FAKE_EXPORT CUresult cuStreamGetId_ptsz(CUstream s, unsigned long long *id) { return get_id(ptsz(s), id); }

/* host functions and callbacks run in stream order, on the submitting thread */
static CUresult launch_host_fn(CUstream s, int per_thread, CUhostFn fn, void *data)
{
    FAKE_COUNT();
    if (!fn)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = fake_stream_order(s, per_thread);
    if (rc == CUDA_SUCCESS)
        fn(data);
    return rc;
}
FAKE_EXPORT CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void *data) { return launch_host_fn(s, 0, fn, data); }
FAKE_EXPORT CUresult cuLaunchHostFunc_ptsz(CUstream s, CUhostFn fn, void *data)
{
    return launch_host_fn(s, 1, fn, data);
}
/* CUDA 13.1: the same with a synchronisation mode, which running at submission satisfies */
FAKE_EXPORT CUresult cuLaunchHostFunc_v2(CUstream s, CUhostFn fn, void *data, unsigned sync_mode)
{
    (void)sync_mode;
    return launch_host_fn(s, 0, fn, data);
}
FAKE_EXPORT CUresult cuLaunchHostFunc_v2_ptsz(CUstream s, CUhostFn fn, void *data, unsigned sync_mode)
{
    (void)sync_mode;
    return launch_host_fn(s, 1, fn, data);
}

static CUresult add_callback(CUstream s, int per_thread, CUstreamCallback fn, void *data, unsigned flags)
{
    FAKE_COUNT();
    if (!fn || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = fake_stream_order(s, per_thread);
    if (rc == CUDA_SUCCESS)
        fn(s, CUDA_SUCCESS, data);
    return rc;
}
FAKE_EXPORT CUresult cuStreamAddCallback(CUstream s, CUstreamCallback fn, void *data, unsigned flags)
{
    return add_callback(s, 0, fn, data, flags);
}
FAKE_EXPORT CUresult cuStreamAddCallback_ptsz(CUstream s, CUstreamCallback fn, void *data, unsigned flags)
{
    return add_callback(s, 1, fn, data, flags);
}
