#include "hmap.h"

#include <stdlib.h>
#include <string.h>

#define TOMB UINT64_MAX

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static size_t find(const struct xpur_hmap *m, uint64_t key)
{
    if (!m->cap || key == 0 || key == TOMB)
        return SIZE_MAX;
    size_t j = mix(key) & (m->cap - 1);
    for (size_t n = 0; n < m->cap; n++, j = (j + 1) & (m->cap - 1)) {
        if (!m->v[j].key)
            return SIZE_MAX;
        if (m->v[j].key == key)
            return j;
    }
    return SIZE_MAX;
}

static int rehash(struct xpur_hmap *m, size_t cap)
{
    struct xpur_hslot *v = calloc(cap, sizeof *v);
    if (!v)
        return -1;
    for (size_t i = 0; i < m->cap; i++) {
        uint64_t k = m->v[i].key;
        if (!k || k == TOMB)
            continue;
        size_t j = mix(k) & (cap - 1);
        while (v[j].key)
            j = (j + 1) & (cap - 1);
        v[j] = m->v[i];
    }
    free(m->v);
    m->v = v;
    m->cap = cap;
    m->used = m->live;
    return 0;
}

int xpur_hmap_get(const struct xpur_hmap *m, uint64_t key, uint64_t *val)
{
    size_t j = find(m, key);
    if (j == SIZE_MAX)
        return -1;
    *val = m->v[j].val;
    return 0;
}

int xpur_hmap_put(struct xpur_hmap *m, uint64_t key, uint64_t val)
{
    if (key == 0 || key == TOMB)
        return -1;
    size_t j = find(m, key);
    if (j != SIZE_MAX) {
        m->v[j].val = val;
        return 0;
    }
    if ((m->used + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap : 64;
        while ((m->live + 1) * 4 > cap) /* after a rehash at most a quarter is live */
            cap *= 2;
        if (rehash(m, cap))
            return -1;
    }
    j = mix(key) & (m->cap - 1);
    while (m->v[j].key && m->v[j].key != TOMB)
        j = (j + 1) & (m->cap - 1);
    if (!m->v[j].key)
        m->used++;
    m->v[j].key = key;
    m->v[j].val = val;
    m->live++;
    return 0;
}

int xpur_hmap_del(struct xpur_hmap *m, uint64_t key, uint64_t *val)
{
    size_t j = find(m, key);
    if (j == SIZE_MAX)
        return -1;
    if (val)
        *val = m->v[j].val;
    m->v[j].key = TOMB;
    m->live--;
    return 0;
}

void xpur_hmap_free(struct xpur_hmap *m)
{
    free(m->v);
    memset(m, 0, sizeof *m);
}
