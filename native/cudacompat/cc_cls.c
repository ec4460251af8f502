/*
 * cudacompat: context-local storage (export table c693336e-..., slots 0-2).
 *
 * The runtime keeps its per-context state (streams, module registrations, ...) in the driver,
 * keyed by (context, key): insert(ctx, key, value, dtor), remove(ctx, key), get(&value, ctx, key);
 * a NULL ctx means the calling thread's current context. When a context dies, the runtime's dtor
 * must run (cudaDeviceReset -> cuDevicePrimaryCtxReset, then the runtime rebuilds its state on
 * the next call). One mutex guards the store; destructors run after it is released.
 */
#include "cc_internal.h"

#include <pthread.h>
#include <stdlib.h>

typedef void (*cls_dtor)(CUcontext, void *, void *);
struct entry {
    CUcontext ctx;
    void *key, *value;
    cls_dtor dtor;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct entry *g_entries;
static size_t g_n, g_cap;

static CUresult resolve_ctx(CUcontext *ctx)
{
    if (*ctx)
        return CUDA_SUCCESS;
    const struct cudacompat_backend *b = cc_backend();
    CUresult rc = b ? b->ctx_get_current(ctx) : CUDA_ERROR_NOT_INITIALIZED;
    if (rc == CUDA_SUCCESS && !*ctx)
        rc = CUDA_ERROR_INVALID_CONTEXT;
    return rc;
}

static struct entry *find(CUcontext ctx, void *key)
{
    for (size_t i = 0; i < g_n; i++)
        if (g_entries[i].ctx == ctx && g_entries[i].key == key)
            return &g_entries[i];
    return NULL;
}

CUresult cc_cls_insert(CUcontext ctx, void *key, void *value, cls_dtor dtor)
{
    CUresult rc = resolve_ctx(&ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&g_mu);
    struct entry *e = find(ctx, key);
    if (!e) {
        if (g_n == g_cap) {
            size_t cap = g_cap ? 2 * g_cap : 16;
            struct entry *grown = realloc(g_entries, cap * sizeof *grown);
            if (!grown) {
                pthread_mutex_unlock(&g_mu);
                return CUDA_ERROR_OUT_OF_MEMORY;
            }
            g_entries = grown;
            g_cap = cap;
        }
        e = &g_entries[g_n++];
        e->ctx = ctx;
        e->key = key;
    }
    e->value = value;
    e->dtor = dtor;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}

CUresult cc_cls_remove(CUcontext ctx, void *key)
{
    CUresult rc = resolve_ctx(&ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&g_mu);
    struct entry *e = find(ctx, key);
    if (e)
        *e = g_entries[--g_n];
    pthread_mutex_unlock(&g_mu);
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cc_cls_get(void **value, CUcontext ctx, void *key)
{
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = resolve_ctx(&ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&g_mu);
    struct entry *e = find(ctx, key);
    if (e)
        *value = e->value;
    pthread_mutex_unlock(&g_mu);
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; /* absent: the runtime then inserts */
}

void cudacompat_context_destroyed(CUcontext ctx)
{
    for (;;) { /* one entry at a time: a destructor may insert or remove entries */
        struct entry victim = {0};
        int found = 0;
        pthread_mutex_lock(&g_mu);
        for (size_t i = 0; i < g_n; i++)
            if (g_entries[i].ctx == ctx) {
                victim = g_entries[i];
                g_entries[i] = g_entries[--g_n];
                found = 1;
                break;
            }
        pthread_mutex_unlock(&g_mu);
        if (!found)
            return;
        cc_tracef("cls: context %p destroyed, dtor for key %p", (void *)ctx, victim.key);
        if (victim.dtor)
            victim.dtor(ctx, victim.key, victim.value);
    }
}
