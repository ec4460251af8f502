/* u64 -> u64 open-addressing hash map (key 0 is reserved). Used for handle ids, exports, layouts. */
#ifndef XPUR_HMAP_H
#define XPUR_HMAP_H

#include <stddef.h>
#include <stdint.h>

struct xpur_hslot {
    uint64_t key, val;
};
struct xpur_hmap {
    struct xpur_hslot *v;
    size_t cap, used, live; /* used counts tombstones too */
};

int xpur_hmap_get(const struct xpur_hmap *m, uint64_t key, uint64_t *val); /* 0 when found */
int xpur_hmap_put(struct xpur_hmap *m, uint64_t key, uint64_t val);        /* 0, else -1 (no memory) */
int xpur_hmap_del(struct xpur_hmap *m, uint64_t key, uint64_t *val);       /* 0 when it was there */
void xpur_hmap_free(struct xpur_hmap *m);

#endif
