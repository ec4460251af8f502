/*
 * Session handle table. Every handle a client names is looked up here: an id the session never
 * bound (or bound to another kind) is CUDA_ERROR_INVALID_HANDLE, so a client can never make the
 * worker use a driver handle it does not own. Ids are never reused within a session.
 */
#include <stdlib.h>
#include <string.h>

#include "session.h"

#define MAX_ENTRIES (1u << 22)

static int kind_ok(unsigned want, uint64_t id)
{
    unsigned k = xpur_h_kind(id);
    /* CUDA 12 accepts a CUkernel wherever a CUfunction is expected */
    return k == want || (want == XPUR_H_FUNC && k == XPUR_H_KERNEL);
}

int xpur_h_get(struct xpur_session *s, unsigned kind, uint64_t id, uint64_t *val)
{
    if (id == 0) {
        *val = 0;
        return 0;
    }
    if (xpur_h_is_special(id)) {
        if (kind != XPUR_H_STREAM)
            return -1;
        *val = id; /* CU_STREAM_LEGACY / CU_STREAM_PER_THREAD */
        return 0;
    }
    if (!kind_ok(kind, id))
        return -1;
    return xpur_hmap_get(&s->ids, id, val);
}

int xpur_h_check_new(struct xpur_session *s, unsigned kind, uint64_t id)
{
    uint64_t v;
    if (xpur_h_kind(id) != kind || (id & XPUR_H_SERVER_BIT) || !(id & XPUR_H_COUNTER_MASK))
        return -1;
    if (xpur_hmap_get(&s->ids, id, &v) == 0)
        return -1;
    return s->ids.live >= MAX_ENTRIES ? -1 : 0;
}

int xpur_h_bind(struct xpur_session *s, unsigned kind, uint64_t id, uint64_t val)
{
    if (xpur_h_check_new(s, kind, id))
        return -1;
    return xpur_hmap_put(&s->ids, id, val);
}

/* exact reverse key for driver handles below 2^56 (all user-space addresses); others are not
 * de-duplicated (a second export names them with a new id) */
static uint64_t export_key(unsigned kind, uint64_t val)
{
    return val >> 56 ? 0 : ((uint64_t)kind << 56) | val;
}

/* a driver handle may be NULL (the test double's primary context of device 0 is): it still gets
 * an id, so the application never sees NULL for a handle the driver returned */
uint64_t xpur_h_export(struct xpur_session *s, unsigned kind, uint64_t val)
{
    uint64_t key = export_key(kind, val), id;
    if (key && xpur_hmap_get(&s->exports, key, &id) == 0)
        return id;
    if (s->ids.live >= MAX_ENTRIES)
        return 0;
    id = xpur_h_make(kind, 1, ++s->next_export);
    if (xpur_hmap_put(&s->ids, id, val))
        return 0;
    if (key && xpur_hmap_put(&s->exports, key, id)) {
        xpur_hmap_del(&s->ids, id, NULL);
        return 0;
    }
    return id;
}

void xpur_h_forget(struct xpur_session *s, unsigned kind, uint64_t id)
{
    uint64_t val, cur;
    if (xpur_h_is_special(id) || !kind_ok(kind, id) || xpur_hmap_del(&s->ids, id, &val))
        return;
    uint64_t key = export_key(xpur_h_kind(id), val);
    if ((id & XPUR_H_SERVER_BIT) && key && xpur_hmap_get(&s->exports, key, &cur) == 0 && cur == id)
        xpur_hmap_del(&s->exports, key, NULL);
}
