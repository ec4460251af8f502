/*
 * Little-endian wire codecs shared by the remoting client (libcuda.so.1 replacement) and the
 * daemon (xpu-remoted). Bounds-checked cursors: a write past the end sets `bad` and writes
 * nothing; a read past the end sets `bad` and yields zeros. Callers check `bad` once per frame,
 * so a malformed frame can never read or write outside its buffer.
 */
#ifndef XPUR_WIRE_H
#define XPUR_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct xpur_wbuf {
    uint8_t *p, *end;
    int bad;
};

struct xpur_rbuf {
    const uint8_t *p, *end;
    int bad;
};

static inline void xpur_wbuf_init(struct xpur_wbuf *w, void *buf, size_t n)
{
    w->p = (uint8_t *)buf;
    w->end = (uint8_t *)buf + n;
    w->bad = 0;
}

static inline void xpur_rbuf_init(struct xpur_rbuf *r, const void *buf, size_t n)
{
    r->p = (const uint8_t *)buf;
    r->end = (const uint8_t *)buf + n;
    r->bad = 0;
}

static inline size_t xpur_rbuf_left(const struct xpur_rbuf *r) { return (size_t)(r->end - r->p); }
/* all input consumed and nothing malformed */
static inline int xpur_rbuf_done(const struct xpur_rbuf *r) { return !r->bad && r->p == r->end; }

static inline uint8_t *xpur_wbuf_take(struct xpur_wbuf *w, size_t n)
{
    if (w->bad || (size_t)(w->end - w->p) < n) {
        w->bad = 1;
        return NULL;
    }
    uint8_t *q = w->p;
    w->p += n;
    return q;
}

static inline const uint8_t *xpur_rbuf_take(struct xpur_rbuf *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *q = r->p;
    r->p += n;
    return q;
}

static inline void xpur_le_put(uint8_t *q, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        q[i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t xpur_le_get(const uint8_t *q, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)q[i] << (8 * i);
    return v;
}

#define XPUR_PUT(bits)                                                                             \
    static inline void xpur_put_u##bits(struct xpur_wbuf *w, uint##bits##_t v)                     \
    {                                                                                              \
        uint8_t *q = xpur_wbuf_take(w, bits / 8);                                                  \
        if (q)                                                                                     \
            xpur_le_put(q, v, bits / 8);                                                           \
    }                                                                                              \
    static inline uint##bits##_t xpur_get_u##bits(struct xpur_rbuf *r)                             \
    {                                                                                              \
        const uint8_t *q = xpur_rbuf_take(r, bits / 8);                                            \
        return q ? (uint##bits##_t)xpur_le_get(q, bits / 8) : 0;                                   \
    }
XPUR_PUT(8)
XPUR_PUT(16)
XPUR_PUT(32)
XPUR_PUT(64)
#undef XPUR_PUT

static inline void xpur_put_i32(struct xpur_wbuf *w, int32_t v) { xpur_put_u32(w, (uint32_t)v); }
static inline int32_t xpur_get_i32(struct xpur_rbuf *r) { return (int32_t)xpur_get_u32(r); }

static inline void xpur_put_f32(struct xpur_wbuf *w, float f)
{
    uint32_t v;
    memcpy(&v, &f, sizeof v);
    xpur_put_u32(w, v);
}

static inline float xpur_get_f32(struct xpur_rbuf *r)
{
    uint32_t v = xpur_get_u32(r);
    float f;
    memcpy(&f, &v, sizeof f);
    return f;
}

static inline void xpur_put_bytes(struct xpur_wbuf *w, const void *src, size_t n)
{
    uint8_t *q = xpur_wbuf_take(w, n);
    if (q && n)
        memcpy(q, src, n);
}

/* copies n bytes out (zeros when short) */
static inline void xpur_get_bytes(struct xpur_rbuf *r, void *dst, size_t n)
{
    const uint8_t *q = xpur_rbuf_take(r, n);
    if (q) {
        if (n)
            memcpy(dst, q, n);
    } else if (n) {
        memset(dst, 0, n);
    }
}

/* strings: u32 length + bytes, no terminator on the wire */
static inline void xpur_put_str(struct xpur_wbuf *w, const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n > max) {
        w->bad = 1;
        return;
    }
    xpur_put_u32(w, (uint32_t)n);
    xpur_put_bytes(w, s, n);
}

/* copies a string into dst (cap includes the terminator); rejects embedded NULs and overlong */
static inline void xpur_get_str(struct xpur_rbuf *r, char *dst, size_t cap)
{
    uint32_t n = xpur_get_u32(r);
    if (r->bad || (size_t)n >= cap) {
        r->bad = 1;
        dst[0] = 0;
        return;
    }
    const uint8_t *q = xpur_rbuf_take(r, n);
    if (!q || memchr(q, 0, n)) {
        r->bad = 1;
        dst[0] = 0;
        return;
    }
    memcpy(dst, q, n);
    dst[n] = 0;
}

#endif
