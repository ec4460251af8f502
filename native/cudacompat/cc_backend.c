/* cudacompat: the installed driver backend and the trace hook. */
#define _GNU_SOURCE
#include "cc_internal.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Installed backends are immutable copies; a replaced one stays allocated (and reachable through
 * the chain) because another thread may still be reading it. */
struct installed {
    struct cudacompat_backend b;
    struct installed *previous;
};
static _Atomic(struct installed *) g_installed;

const struct cudacompat_backend *cc_backend(void)
{
    struct installed *i = atomic_load_explicit(&g_installed, memory_order_acquire);
    return i ? &i->b : NULL;
}

int cudacompat_install(const struct cudacompat_backend *b)
{
    if (!b || b->abi != CUDACOMPAT_ABI || !b->lookup || !b->device_get_count || !b->device_get_uuid ||
        !b->device_get_attribute || !b->primary_ctx_retain || !b->ctx_get_current || !b->module_load_data ||
        !b->launch_kernel)
        return -1;
    struct installed *i = malloc(sizeof *i);
    if (!i)
        return -1;
    i->b = *b;
    i->previous = atomic_load_explicit(&g_installed, memory_order_acquire);
    while (!atomic_compare_exchange_weak_explicit(&g_installed, &i->previous, i, memory_order_acq_rel,
                                                  memory_order_acquire))
        ;
    return 0;
}

void cc_tracef(const char *fmt, ...)
{
    const struct cudacompat_backend *b = cc_backend();
    if (!b || !b->trace)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    b->trace(line);
}
