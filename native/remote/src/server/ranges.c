/*
 * Device ranges a session owns. Every device pointer the worker hands to a copy or memset is
 * checked here first (overflow-checked); unknown ranges fall back to the driver's own view of this
 * process's allocations (cuMemGetAddressRange: one context per session, so anything it knows is
 * this session's). A pointer neither knows is CUDA_ERROR_INVALID_VALUE, never dereferenced.
 */
#include <stdlib.h>
#include <string.h>

#include "session.h"

static size_t upper(const struct xpur_ranges *r, uint64_t ptr)
{ /* first index with base > ptr */
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r->v[mid].base <= ptr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void add(struct xpur_session *s, uint64_t base, uint64_t size, uint8_t kind)
{
    struct xpur_ranges *r = &s->ranges;
    if (!size || base + size < base)
        return;
    size_t i = upper(r, base);
    for (size_t k = i; k-- > 0 && r->v[k].base == base;)
        if (r->v[k].kind == kind && r->v[k].end == base + size)
            return; /* the same global asked twice */
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        struct xpur_range *v = realloc(r->v, cap * sizeof *v);
        if (!v)
            return;
        r->v = v;
        r->cap = cap;
    }
    memmove(&r->v[i + 1], &r->v[i], (r->n - i) * sizeof *r->v);
    r->v[i] = (struct xpur_range){base, base + size, kind};
    r->n++;
    if (kind == XPUR_RK_ALLOC)
        r->alloc_bytes += size;
}

static void del(struct xpur_session *s, uint64_t lo, uint64_t hi, uint8_t kind, int exact_base)
{
    struct xpur_ranges *r = &s->ranges;
    for (size_t i = 0; i < r->n;) {
        struct xpur_range *x = &r->v[i];
        int hit = x->kind == kind && (exact_base ? x->base == lo : (x->base >= lo && x->end <= hi));
        if (!hit) {
            i++;
            continue;
        }
        if (kind == XPUR_RK_ALLOC)
            r->alloc_bytes -= x->end - x->base;
        memmove(x, x + 1, (r->n - i - 1) * sizeof *x);
        r->n--;
    }
}

void xpur_track(struct xpur_session *s, enum xpur_track_action a, uint64_t ptr, uint64_t size)
{
    switch (a) {
    case XPUR_TRACK_ALLOC:
        add(s, ptr, size, XPUR_RK_ALLOC);
        break;
    case XPUR_TRACK_FREE:
        del(s, ptr, 0, XPUR_RK_ALLOC, 1);
        break;
    case XPUR_TRACK_GLOBAL:
        add(s, ptr, size, XPUR_RK_GLOBAL);
        break;
    case XPUR_TRACK_RESERVE:
        add(s, ptr, size, XPUR_RK_RESERVED);
        break;
    case XPUR_TRACK_UNRESERVE:
        del(s, ptr, 0, XPUR_RK_RESERVED, 1);
        del(s, ptr, ptr + size, XPUR_RK_MAPPED, 0);
        break;
    case XPUR_TRACK_MAP:
        add(s, ptr, size, XPUR_RK_MAPPED);
        break;
    case XPUR_TRACK_UNMAP:
        if (ptr + size >= ptr)
            del(s, ptr, ptr + size, XPUR_RK_MAPPED, 0);
        break;
    }
    if (s->stats) {
        uint64_t b = s->ranges.alloc_bytes;
        atomic_store_explicit(&s->stats->gpu_mem_bytes, b, memory_order_relaxed);
        if (b > atomic_load_explicit(&s->stats->gpu_mem_peak, memory_order_relaxed))
            atomic_store_explicit(&s->stats->gpu_mem_peak, b, memory_order_relaxed);
    }
}

int xpur_range_ok(struct xpur_session *s, uint64_t ptr, uint64_t count, uint64_t scale)
{
    if (scale && count > UINT64_MAX / scale)
        return 0;
    uint64_t bytes = count * scale;
    if (!bytes)
        return 1; /* nothing is dereferenced */
    if (ptr + bytes < ptr)
        return 0;
    const struct xpur_ranges *r = &s->ranges;
    size_t i = upper(r, ptr);
    for (size_t k = i; k-- > 0;) {
        const struct xpur_range *x = &r->v[k];
        if (x->end <= ptr && x->kind != XPUR_RK_RESERVED)
            break;
        if (x->kind != XPUR_RK_RESERVED && ptr >= x->base && ptr + bytes <= x->end)
            return 1;
    }
    if (s->be && s->be->p_cuMemGetAddressRange_v2) {
        CUdeviceptr base = 0;
        size_t size = 0;
        if (s->be->p_cuMemGetAddressRange_v2(&base, &size, (CUdeviceptr)ptr) == CUDA_SUCCESS && size &&
            ptr >= base && ptr + bytes <= (uint64_t)base + size)
            return 1;
    }
    return 0;
}

int xpur_range2d_ok(struct xpur_session *s, uint64_t ptr, uint64_t pitch, uint64_t width, uint64_t height,
                    uint64_t elem)
{
    if (!width || !height)
        return 1;
    if (width > UINT64_MAX / elem || width * elem > pitch || height - 1 > UINT64_MAX / (pitch ? pitch : 1))
        return 0;
    uint64_t rows = pitch * (height - 1);
    if (rows + width * elem < rows)
        return 0;
    return xpur_range_ok(s, ptr, rows + width * elem, 1);
}

void xpur_ranges_free(struct xpur_ranges *r)
{
    free(r->v);
    memset(r, 0, sizeof *r);
}
