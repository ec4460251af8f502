/*
 * TEST DOUBLE — fake libcuda.so.1 streams (NOT a CUDA driver).
 *
 * An explicit stream is an ordered queue executed by its own worker thread (started on first
 * use), so asynchronous work really completes after the call returns: a program that reads the
 * result of an asynchronous copy without synchronising sees stale data, as on a GPU.
 * The legacy default stream (NULL, CU_STREAM_LEGACY) synchronises with every blocking stream:
 * its work runs inline after draining them. The per-thread default stream (CU_STREAM_PER_THREAD
 * or a _ptds/_ptsz entry point with a NULL stream) runs its work inline.
 * Kernels never compute; launches stay on the simulated timeline of fake_libcuda.c.
 * Unknown or destroyed stream handles are CUDA_ERROR_INVALID_HANDLE.
 */
#include "fake_cuda_internal.h"

#include <pthread.h>
#include <stdlib.h>

#define STREAM_MAGIC 0x58535452u /* "XSTR" */

struct op {
    fake_stream_op fn;
    void *arg;
    void (*free_arg)(void *);
    struct op *next;
};

struct fake_stream {
    uint32_t magic;
    unsigned flags;
    int priority;
    CUcontext ctx;
    unsigned long long id;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* work queued, work completed, stop */
    struct op *head, *tail;
    uint64_t submitted, completed;
    int worker_started, stop;
    pthread_t worker;
    _Atomic uint64_t timeline_ns; /* for the simulated kernel timeline of fake_libcuda.c */
    struct fake_stream *next_live;
};

/* The live list. Readers (submit, drain, validity checks) hold it shared for as long as they use
 * a stream; create and destroy hold it exclusive, so a stream is never freed under a reader. */
static pthread_rwlock_t g_life = PTHREAD_RWLOCK_INITIALIZER;
static struct fake_stream *g_live;
static unsigned long long g_next_id = 16;

static int is_special(CUstream s) { return s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD; }

/* caller holds g_life */
static struct fake_stream *live(CUstream s)
{
    struct fake_stream *it = g_live;
    while (it && it != (struct fake_stream *)s)
        it = it->next_live;
    return it;
}

int fake_stream_valid(CUstream s)
{
    if (is_special(s))
        return 1;
    pthread_rwlock_rdlock(&g_life);
    int ok = live(s) != NULL;
    pthread_rwlock_unlock(&g_life);
    return ok;
}

static void *worker_main(void *p)
{
    struct fake_stream *st = p;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        while (!st->head && !st->stop)
            pthread_cond_wait(&st->cv, &st->mu);
        if (!st->head)
            break; /* stopped and drained */
        struct op *o = st->head;
        st->head = o->next;
        if (!st->head)
            st->tail = NULL;
        pthread_mutex_unlock(&st->mu);
        o->fn(o->arg);
        if (o->free_arg)
            o->free_arg(o->arg);
        free(o);
        pthread_mutex_lock(&st->mu);
        st->completed++;
        pthread_cond_broadcast(&st->cv);
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

static void drain_one(struct fake_stream *st)
{
    pthread_mutex_lock(&st->mu);
    uint64_t target = st->submitted;
    while (st->completed < target)
        pthread_cond_wait(&st->cv, &st->mu);
    pthread_mutex_unlock(&st->mu);
}

/* caller holds g_life shared */
static void drain_live_locked(int only_blocking)
{
    for (struct fake_stream *it = g_live; it; it = it->next_live)
        if (!only_blocking || !(it->flags & CU_STREAM_NON_BLOCKING))
            drain_one(it);
}

void fake_stream_drain_all(void)
{
    pthread_rwlock_rdlock(&g_life);
    drain_live_locked(0);
    pthread_rwlock_unlock(&g_life);
}

CUresult fake_stream_drain(CUstream s)
{
    if (s == CU_STREAM_PER_THREAD)
        return CUDA_SUCCESS;
    CUresult rc = CUDA_SUCCESS;
    pthread_rwlock_rdlock(&g_life);
    if (s == NULL || s == CU_STREAM_LEGACY)
        drain_live_locked(1);
    else if (live(s))
        drain_one((struct fake_stream *)s);
    else
        rc = CUDA_ERROR_INVALID_HANDLE;
    pthread_rwlock_unlock(&g_life);
    return rc;
}

static CUresult run_inline(fake_stream_op fn, void *arg, void (*free_arg)(void *))
{
    fn(arg);
    if (free_arg)
        free_arg(arg);
    return CUDA_SUCCESS;
}

static CUresult enqueue(struct fake_stream *st, fake_stream_op fn, void *arg, void (*free_arg)(void *))
{
    struct op *o = malloc(sizeof *o);
    if (!o)
        return CUDA_ERROR_OUT_OF_MEMORY;
    o->fn = fn;
    o->arg = arg;
    o->free_arg = free_arg;
    o->next = NULL;
    pthread_mutex_lock(&st->mu);
    if (!st->worker_started) {
        if (pthread_create(&st->worker, NULL, worker_main, st) != 0) {
            pthread_mutex_unlock(&st->mu);
            free(o);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        st->worker_started = 1;
    }
    if (st->tail)
        st->tail->next = o;
    else
        st->head = o;
    st->tail = o;
    st->submitted++;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    return CUDA_SUCCESS;
}

CUresult fake_stream_submit(CUstream s, int per_thread, fake_stream_op fn, void *arg, void (*free_arg)(void *))
{
    if (s == CU_STREAM_PER_THREAD || (s == NULL && per_thread))
        return run_inline(fn, arg, free_arg);
    pthread_rwlock_rdlock(&g_life);
    CUresult rc;
    if (s == NULL || s == CU_STREAM_LEGACY) {
        drain_live_locked(1); /* legacy default stream: after every blocking stream */
        pthread_rwlock_unlock(&g_life);
        return run_inline(fn, arg, free_arg);
    }
    struct fake_stream *st = live(s);
    rc = st ? enqueue(st, fn, arg, free_arg) : CUDA_ERROR_INVALID_HANDLE;
    pthread_rwlock_unlock(&g_life);
    if (rc != CUDA_SUCCESS && free_arg)
        free_arg(arg);
    return rc;
}

static _Atomic uint64_t g_legacy_timeline_ns;
static _Thread_local _Atomic uint64_t t_per_thread_timeline_ns;

_Atomic uint64_t *fake_stream_timeline(CUstream s, int per_thread)
{
    if (s == CU_STREAM_PER_THREAD || (s == NULL && per_thread))
        return &t_per_thread_timeline_ns;
    if (s == NULL || s == CU_STREAM_LEGACY)
        return &g_legacy_timeline_ns;
    pthread_rwlock_rdlock(&g_life);
    struct fake_stream *st = live(s);
    pthread_rwlock_unlock(&g_life);
    return st ? &st->timeline_ns : NULL;
}

/* ------------------------------------------------------------------ stream API */

static CUresult create(CUstream *ps, unsigned flags, int priority)
{
    FAKE_COUNT();
    if (!ps || (flags & ~(unsigned)CU_STREAM_NON_BLOCKING))
        return CUDA_ERROR_INVALID_VALUE;
    struct fake_stream *st = calloc(1, sizeof *st);
    if (!st)
        return CUDA_ERROR_OUT_OF_MEMORY;
    st->magic = STREAM_MAGIC;
    st->flags = flags;
    st->priority = priority < -5 ? -5 : priority > 0 ? 0 : priority;
    cuCtxGetCurrent(&st->ctx);
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    pthread_rwlock_wrlock(&g_life);
    st->id = g_next_id++;
    st->next_live = g_live;
    g_live = st;
    pthread_rwlock_unlock(&g_life);
    *ps = (CUstream)st;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamCreate(CUstream *ps, unsigned flags) { return create(ps, flags, 0); }
FAKE_EXPORT CUresult cuStreamCreateWithPriority(CUstream *ps, unsigned flags, int priority)
{
    return create(ps, flags, priority);
}

/* queued work completes first (CUDA returns at once and finishes it in the background; waiting
 * here is observably the same for a correct program) */
FAKE_EXPORT CUresult cuStreamDestroy(CUstream s)
{
    FAKE_COUNT();
    if (is_special(s))
        return CUDA_ERROR_INVALID_HANDLE;
    pthread_rwlock_wrlock(&g_life);
    struct fake_stream **pp = &g_live;
    while (*pp && *pp != (struct fake_stream *)s)
        pp = &(*pp)->next_live;
    struct fake_stream *st = *pp;
    if (st)
        *pp = st->next_live;
    pthread_rwlock_unlock(&g_life);
    if (!st)
        return CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&st->mu);
    st->stop = 1;
    pthread_cond_broadcast(&st->cv);
    int started = st->worker_started;
    pthread_mutex_unlock(&st->mu);
    if (started)
        pthread_join(st->worker, NULL);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    st->magic = 0;
    free(st);
    return CUDA_SUCCESS;
}

/* what a stream handle means for the _ptsz entry points: NULL is the per-thread stream */
static CUstream ptsz(CUstream s) { return s ? s : CU_STREAM_PER_THREAD; }

static CUresult query(CUstream s)
{
    if (is_special(s))
        return CUDA_SUCCESS; /* default streams run their work inline */
    CUresult rc = CUDA_ERROR_INVALID_HANDLE;
    pthread_rwlock_rdlock(&g_life);
    struct fake_stream *st = live(s);
    if (st) {
        pthread_mutex_lock(&st->mu);
        rc = st->completed == st->submitted ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
        pthread_mutex_unlock(&st->mu);
    }
    pthread_rwlock_unlock(&g_life);
    return rc;
}
FAKE_EXPORT CUresult cuStreamQuery(CUstream s) { return query(s); }
FAKE_EXPORT CUresult cuStreamQuery_ptsz(CUstream s) { return query(ptsz(s)); }

/* events are recorded after their stream drained (fake_libcuda.c), so a wait has nothing left
 * to order; the handles are still checked */
static CUresult wait_event(CUstream s, CUevent e, unsigned flags)
{
    (void)flags;
    if (!e)
        return CUDA_ERROR_INVALID_HANDLE;
    return fake_stream_valid(s) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}
FAKE_EXPORT CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned flags) { return wait_event(s, e, flags); }
FAKE_EXPORT CUresult cuStreamWaitEvent_ptsz(CUstream s, CUevent e, unsigned flags)
{
    return wait_event(ptsz(s), e, flags);
}

static CUresult get_field(CUstream s, unsigned *flags, int *priority, CUcontext *ctx, unsigned long long *id)
{
    if (is_special(s)) {
        if (flags)
            *flags = 0;
        if (priority)
            *priority = 0;
        if (ctx)
            cuCtxGetCurrent(ctx);
        if (id)
            *id = s == CU_STREAM_PER_THREAD ? 2 : 1;
        return CUDA_SUCCESS;
    }
    CUresult rc = CUDA_ERROR_INVALID_HANDLE;
    pthread_rwlock_rdlock(&g_life);
    struct fake_stream *st = live(s);
    if (st) {
        if (flags)
            *flags = st->flags;
        if (priority)
            *priority = st->priority;
        if (ctx)
            *ctx = st->ctx;
        if (id)
            *id = st->id;
        rc = CUDA_SUCCESS;
    }
    pthread_rwlock_unlock(&g_life);
    return rc;
}
FAKE_EXPORT CUresult cuStreamGetFlags(CUstream s, unsigned *f) { return f ? get_field(s, f, NULL, NULL, NULL) : CUDA_ERROR_INVALID_VALUE; }
FAKE_EXPORT CUresult cuStreamGetFlags_ptsz(CUstream s, unsigned *f) { return f ? get_field(ptsz(s), f, NULL, NULL, NULL) : CUDA_ERROR_INVALID_VALUE; }
FAKE_EXPORT CUresult cuStreamGetPriority(CUstream s, int *p) { return p ? get_field(s, NULL, p, NULL, NULL) : CUDA_ERROR_INVALID_VALUE; }
FAKE_EXPORT CUresult cuStreamGetPriority_ptsz(CUstream s, int *p) { return p ? get_field(ptsz(s), NULL, p, NULL, NULL) : CUDA_ERROR_INVALID_VALUE; }
FAKE_EXPORT CUresult cuStreamGetCtx(CUstream s, CUcontext *c) { return c ? get_field(s, NULL, NULL, c, NULL) : CUDA_ERROR_INVALID_VALUE; }
FAKE_EXPORT CUresult cuStreamGetCtx_ptsz(CUstream s, CUcontext *c) { return c ? get_field(ptsz(s), NULL, NULL, c, NULL) : CUDA_ERROR_INVALID_VALUE; }
FAKE_EXPORT CUresult cuStreamGetId(CUstream s, unsigned long long *id) { return id ? get_field(s, NULL, NULL, NULL, id) : CUDA_ERROR_INVALID_VALUE; }
FAKE_EXPORT CUresult cuStreamGetId_ptsz(CUstream s, unsigned long long *id) { return id ? get_field(ptsz(s), NULL, NULL, NULL, id) : CUDA_ERROR_INVALID_VALUE; }

/* host functions run in stream order on the stream's worker (or inline on default streams) */
struct host_fn {
    CUhostFn fn;
    void *data;
};
static void run_host_fn(void *p)
{
    struct host_fn *h = p;
    h->fn(h->data);
}
static CUresult launch_host_fn(CUstream s, int per_thread, CUhostFn fn, void *data)
{
    FAKE_COUNT();
    if (!fn)
        return CUDA_ERROR_INVALID_VALUE;
    struct host_fn *h = malloc(sizeof *h);
    if (!h)
        return CUDA_ERROR_OUT_OF_MEMORY;
    h->fn = fn;
    h->data = data;
    return fake_stream_submit(s, per_thread, run_host_fn, h, free);
}
FAKE_EXPORT CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void *data) { return launch_host_fn(s, 0, fn, data); }
FAKE_EXPORT CUresult cuLaunchHostFunc_ptsz(CUstream s, CUhostFn fn, void *data)
{
    return launch_host_fn(s, 1, fn, data);
}

/* CUDA 13.1: the same with a synchronisation mode (how the host function may block the stream);
 * the double runs host functions in stream order whatever the mode */
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

struct callback {
    CUstream stream;
    CUstreamCallback fn;
    void *data;
};
static void run_callback(void *p)
{
    struct callback *c = p;
    c->fn(c->stream, CUDA_SUCCESS, c->data);
}
static CUresult add_callback(CUstream s, int per_thread, CUstreamCallback fn, void *data, unsigned flags)
{
    if (!fn || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    struct callback *c = malloc(sizeof *c);
    if (!c)
        return CUDA_ERROR_OUT_OF_MEMORY;
    c->stream = s;
    c->fn = fn;
    c->data = data;
    return fake_stream_submit(s, per_thread, run_callback, c, free);
}
FAKE_EXPORT CUresult cuStreamAddCallback(CUstream s, CUstreamCallback fn, void *data, unsigned flags)
{
    return add_callback(s, 0, fn, data, flags);
}
FAKE_EXPORT CUresult cuStreamAddCallback_ptsz(CUstream s, CUstreamCallback fn, void *data, unsigned flags)
{
    return add_callback(s, 1, fn, data, flags);
}

/* fork child: the parent's workers do not exist here; its streams are forgotten */
static void fork_child(void)
{
    pthread_rwlock_init(&g_life, NULL);
    g_live = NULL;
}
__attribute__((constructor)) static void install_fork_handler(void) { pthread_atfork(NULL, NULL, fork_child); }
