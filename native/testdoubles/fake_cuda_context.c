/*
 * TEST DOUBLE — fake libcuda.so.1 contexts (NOT a CUDA driver).
 *
 * One primary context per device (stable handle, reference counted, flags, active state) and
 * contexts from cuCtxCreate; a per-thread stack of current contexts. Handles are validated: an
 * unknown or destroyed context is CUDA_ERROR_INVALID_CONTEXT. When a context dies (destroy, or a
 * primary context reset / released to zero) the runtime's context-local state is released
 * through cudacompat_context_destroyed, as the runtime expects on cudaDeviceReset.
 *
 * Leniency kept on purpose (the shim's driver-API tests rely on it): a thread without a current
 * context works on device 0 (cuCtxGetDevice answers 0, allocations succeed).
 */
#include "fake_cuda_internal.h"

#include "cudacompat.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define CTX_MAGIC 0x58435458u /* "XCTX" */
#define MAX_CREATED 64
#define STACK_DEPTH 32

struct fake_ctx {
    uint32_t magic;
    CUdevice dev;
    int primary;
    unsigned flags;
    int refs;   /* primary: retain count */
    int active; /* primary: retained at least once since the last reset */
    unsigned long long id;
};

static struct fake_ctx g_primary[FAKE_NDEVICES];
static struct fake_ctx *g_created[MAX_CREATED];
static unsigned long long g_next_id = 1;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static _Thread_local struct fake_ctx *t_stack[STACK_DEPTH];
static _Thread_local int t_depth;

__attribute__((constructor)) static void init_primaries(void)
{
    for (int d = 0; d < FAKE_NDEVICES; d++) {
        g_primary[d].magic = CTX_MAGIC;
        g_primary[d].dev = d;
        g_primary[d].primary = 1;
        g_primary[d].id = g_next_id++;
    }
}

/* caller holds g_mu */
static int known(const struct fake_ctx *c)
{
    for (int d = 0; d < FAKE_NDEVICES; d++)
        if (c == &g_primary[d])
            return 1;
    for (int i = 0; i < MAX_CREATED; i++)
        if (g_created[i] && g_created[i] == c)
            return 1;
    return 0;
}

int fake_cuda_valid_context(CUcontext ctx)
{
    pthread_mutex_lock(&g_mu);
    int ok = ctx && known((const struct fake_ctx *)ctx);
    pthread_mutex_unlock(&g_mu);
    return ok;
}

static struct fake_ctx *current(void) { return t_depth > 0 ? t_stack[t_depth - 1] : NULL; }

CUdevice fake_cuda_current_device(void)
{
    struct fake_ctx *c = current();
    return c ? c->dev : 0;
}

/* ------------------------------------------------------------------ primary contexts */

FAKE_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    FAKE_COUNT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_mu);
    g_primary[dev].refs++;
    g_primary[dev].active = 1;
    pthread_mutex_unlock(&g_mu);
    *pctx = (CUcontext)&g_primary[dev];
    return CUDA_SUCCESS;
}

static void primary_gone(CUdevice dev) { cudacompat_context_destroyed((CUcontext)&g_primary[dev]); }

FAKE_EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
    FAKE_COUNT();
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_mu);
    if (g_primary[dev].refs == 0) {
        pthread_mutex_unlock(&g_mu);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    int gone = --g_primary[dev].refs == 0;
    if (gone)
        g_primary[dev].active = 0;
    pthread_mutex_unlock(&g_mu);
    if (gone)
        primary_gone(dev);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice dev)
{
    FAKE_COUNT();
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_mu);
    int was_active = g_primary[dev].active;
    g_primary[dev].active = 0;
    g_primary[dev].flags = 0;
    pthread_mutex_unlock(&g_mu);
    if (was_active)
        primary_gone(dev);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned *flags, int *active)
{
    if (!flags || !active)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_mu);
    *flags = g_primary[dev].flags;
    *active = g_primary[dev].active;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxSetFlags(CUdevice dev, unsigned flags)
{
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&g_mu);
    g_primary[dev].flags = flags;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ created contexts */

static CUresult push(struct fake_ctx *c)
{
    if (t_depth == STACK_DEPTH)
        return CUDA_ERROR_OUT_OF_MEMORY;
    t_stack[t_depth++] = c;
    return CUDA_SUCCESS;
}

static CUresult create(CUcontext *pctx, unsigned flags, CUdevice dev)
{
    FAKE_COUNT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    struct fake_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return CUDA_ERROR_OUT_OF_MEMORY;
    c->magic = CTX_MAGIC;
    c->dev = dev;
    c->flags = flags;
    pthread_mutex_lock(&g_mu);
    int slot = -1;
    for (int i = 0; i < MAX_CREATED && slot < 0; i++)
        if (!g_created[i])
            slot = i;
    if (slot >= 0) {
        c->id = g_next_id++;
        g_created[slot] = c;
    }
    pthread_mutex_unlock(&g_mu);
    if (slot < 0) {
        free(c);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *pctx = (CUcontext)c;
    return push(c); /* the new context becomes current */
}

FAKE_EXPORT CUresult cuCtxCreate(CUcontext *pctx, unsigned flags, CUdevice dev) { return create(pctx, flags, dev); }
FAKE_EXPORT CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *p, int n, unsigned flags, CUdevice dev)
{
    (void)p;
    (void)n;
    return create(pctx, flags, dev);
}
FAKE_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *p, unsigned flags, CUdevice dev)
{
    (void)p;
    return create(pctx, flags, dev);
}

FAKE_EXPORT CUresult cuCtxDestroy(CUcontext ctx)
{
    FAKE_COUNT();
    struct fake_ctx *c = (struct fake_ctx *)ctx;
    int found = 0;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAX_CREATED; i++)
        if (c && g_created[i] == c) {
            g_created[i] = NULL;
            found = 1;
        }
    pthread_mutex_unlock(&g_mu);
    if (!found)
        return CUDA_ERROR_INVALID_CONTEXT; /* primary contexts cannot be destroyed */
    /* the calling thread stops using it; other threads' stacks are their problem, as with CUDA */
    for (int i = 0; i < t_depth; i++)
        if (t_stack[i] == c) {
            memmove(&t_stack[i], &t_stack[i + 1], (size_t)(t_depth - i - 1) * sizeof t_stack[0]);
            t_depth--;
            i--;
        }
    cudacompat_context_destroyed(ctx);
    c->magic = 0;
    free(c);
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ the current context */

FAKE_EXPORT CUresult cuCtxPushCurrent(CUcontext ctx)
{
    if (!fake_cuda_valid_context(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    return push((struct fake_ctx *)ctx);
}

FAKE_EXPORT CUresult cuCtxPopCurrent(CUcontext *pctx)
{
    if (t_depth == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct fake_ctx *c = t_stack[--t_depth];
    if (pctx)
        *pctx = (CUcontext)c;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx)
{
    FAKE_COUNT();
    if (!ctx) {
        if (t_depth > 0)
            t_depth--;
        return CUDA_SUCCESS;
    }
    if (!fake_cuda_valid_context(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    if (t_depth == 0)
        return push((struct fake_ctx *)ctx);
    t_stack[t_depth - 1] = (struct fake_ctx *)ctx;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = (CUcontext)current();
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetDevice(CUdevice *dev)
{
    if (!dev)
        return CUDA_ERROR_INVALID_VALUE;
    *dev = fake_cuda_current_device();
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetFlags(unsigned *flags)
{
    struct fake_ctx *c = current();
    if (!flags)
        return CUDA_ERROR_INVALID_VALUE;
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    *flags = c->flags;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetId(CUcontext ctx, unsigned long long *id)
{
    struct fake_ctx *c = ctx ? (struct fake_ctx *)ctx : current();
    if (!id)
        return CUDA_ERROR_INVALID_VALUE;
    if (!c || !fake_cuda_valid_context((CUcontext)c))
        return CUDA_ERROR_INVALID_CONTEXT;
    *id = c->id;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetApiVersion(CUcontext ctx, unsigned *version)
{
    if (!version)
        return CUDA_ERROR_INVALID_VALUE;
    if (ctx && !fake_cuda_valid_context(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    *version = 3020;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetStreamPriorityRange(int *least, int *greatest)
{
    if (least)
        *least = 0;
    if (greatest)
        *greatest = -5;
    return CUDA_SUCCESS;
}

/* CUDA 13 forms taking the context explicitly (NULL = the current one); the 13.x runtime asks for
 * these at 13000 */
FAKE_EXPORT CUresult cuCtxGetDevice_v2(CUdevice *dev, CUcontext ctx)
{
    if (!dev)
        return CUDA_ERROR_INVALID_VALUE;
    if (!ctx)
        return cuCtxGetDevice(dev);
    if (!fake_cuda_valid_context(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    *dev = ((const struct fake_ctx *)ctx)->dev;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxSynchronize_v2(CUcontext ctx)
{
    FAKE_COUNT();
    if (ctx && !fake_cuda_valid_context(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    return cuCtxSynchronize(); /* the double has one timeline for every context */
}

/* the fake devices cannot reach each other's memory */
FAKE_EXPORT CUresult cuCtxEnablePeerAccess(CUcontext peer, unsigned flags)
{
    if (flags || !fake_cuda_valid_context(peer))
        return flags ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_INVALID_CONTEXT;
    return CUDA_ERROR_PEER_ACCESS_UNSUPPORTED;
}
FAKE_EXPORT CUresult cuCtxDisablePeerAccess(CUcontext peer)
{
    return fake_cuda_valid_context(peer) ? CUDA_ERROR_PEER_ACCESS_NOT_ENABLED : CUDA_ERROR_INVALID_CONTEXT;
}

/* limits the runtime reads and sets at start-up: remembered per process */
static size_t g_limits[CU_LIMIT_MAX];

FAKE_EXPORT CUresult cuCtxGetLimit(size_t *value, CUlimit limit)
{
    static const size_t defaults[CU_LIMIT_MAX] = {[CU_LIMIT_STACK_SIZE] = 1024,
                                                  [CU_LIMIT_PRINTF_FIFO_SIZE] = 1 << 20,
                                                  [CU_LIMIT_MALLOC_HEAP_SIZE] = 8 << 20,
                                                  [CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH] = 2,
                                                  [CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT] = 2048,
                                                  [CU_LIMIT_MAX_L2_FETCH_GRANULARITY] = 64};
    if (!value || (unsigned)limit >= CU_LIMIT_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    *value = g_limits[limit] ? g_limits[limit] : defaults[limit];
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxSetLimit(CUlimit limit, size_t value)
{
    if ((unsigned)limit >= CU_LIMIT_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    g_limits[limit] = value;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetCacheConfig(CUfunc_cache *config)
{
    if (!config)
        return CUDA_ERROR_INVALID_VALUE;
    *config = CU_FUNC_CACHE_PREFER_NONE;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxSetCacheConfig(CUfunc_cache config)
{
    (void)config;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetSharedMemConfig(CUsharedconfig *config)
{
    if (!config)
        return CUDA_ERROR_INVALID_VALUE;
    *config = CU_SHARED_MEM_CONFIG_FOUR_BYTE_BANK_SIZE;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxResetPersistingL2Cache(void) { return CUDA_SUCCESS; }

/* the runtime resolves these at their first version (7000): the driver exports the unsuffixed
 * originals next to the _v2 ones, with the same behaviour for a primary context */
#undef cuDevicePrimaryCtxRelease
#undef cuDevicePrimaryCtxReset
#undef cuDevicePrimaryCtxSetFlags
FAKE_EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev) { return cuDevicePrimaryCtxRelease_v2(dev); }
FAKE_EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice dev) { return cuDevicePrimaryCtxReset_v2(dev); }
FAKE_EXPORT CUresult cuDevicePrimaryCtxSetFlags(CUdevice dev, unsigned flags)
{
    return cuDevicePrimaryCtxSetFlags_v2(dev, flags);
}

/* fork child: a mutex another thread held at fork time must not stay locked */
static void fork_child(void) { pthread_mutex_init(&g_mu, NULL); }
__attribute__((constructor)) static void install_fork_handler(void) { pthread_atfork(NULL, NULL, fork_child); }
