/*
 * Hand-written decoders for the catalogue's `custom` entries (layouts: xpur_custom_wire.h).
 * Same rules as the generated ones: decode everything, check the frame is exactly consumed,
 * validate every handle and device range, and only then call the backend.
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "digest.h"
#include "session.h"
#include "xpur_custom_wire.h"

#define BAD_ARGS(q)                                                                                \
    do {                                                                                           \
        xpur_req_malformed(q);                                                                     \
        return;                                                                                    \
    } while (0)
#define FAIL(q, st)                                                                                \
    do {                                                                                           \
        (q)->status = (st);                                                                        \
        return;                                                                                    \
    } while (0)
#define NEED(fnp)                                                                                  \
    do {                                                                                           \
        if (!(fnp))                                                                                \
            FAIL(q, CUDA_ERROR_NOT_SUPPORTED);                                                     \
    } while (0)
/* the backend entry for this frame: the per-thread default-stream variant when the client called one */
#define PTSZ(name) (((q->hdr.flags & XPUR_F_PER_THREAD) && s->be->p_##name##_ptsz) ? s->be->p_##name##_ptsz : s->be->p_##name)
#define PTDS(name) (((q->hdr.flags & XPUR_F_PER_THREAD) && s->be->p_##name##_ptds) ? s->be->p_##name##_ptds : s->be->p_##name)

#define GET_HANDLE(var, type, kind, id)                                                            \
    type var;                                                                                      \
    do {                                                                                           \
        uint64_t v_;                                                                               \
        if (xpur_h_get(s, kind, id, &v_))                                                          \
            FAIL(q, CUDA_ERROR_INVALID_HANDLE);                                                    \
        var = (type)(uintptr_t)v_;                                                                 \
    } while (0)

static void reply_export(struct xpur_session *s, struct xpur_req *q, unsigned kind, uint64_t val)
{
    uint64_t id = xpur_h_export(s, kind, val);
    if (!id)
        FAIL(q, CUDA_ERROR_OUT_OF_MEMORY);
    xpur_put_u64(&q->out, id);
}

/* ------------------------------------------------------------------ contexts */

void xpur_s_cuDevicePrimaryCtxRetain(struct xpur_session *s, struct xpur_req *q)
{
    int32_t dev = xpur_get_i32(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    if (dev != 0)
        FAIL(q, CUDA_ERROR_INVALID_DEVICE);
    NEED(s->be->p_cuDevicePrimaryCtxRetain);
    CUcontext ctx = NULL;
    if ((q->status = s->be->p_cuDevicePrimaryCtxRetain(&ctx, s->dev)) == CUDA_SUCCESS)
        reply_export(s, q, XPUR_H_CTX, (uint64_t)(uintptr_t)ctx);
}

void xpur_s_cuCtxCreate_v2(struct xpur_session *s, struct xpur_req *q)
{
    uint32_t flags = xpur_get_u32(&q->in);
    int32_t dev = xpur_get_i32(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    if (dev != 0)
        FAIL(q, CUDA_ERROR_INVALID_DEVICE);
    NEED(s->be->p_cuCtxCreate_v2);
    CUcontext ctx = NULL;
    if ((q->status = s->be->p_cuCtxCreate_v2(&ctx, flags, s->dev)) == CUDA_SUCCESS)
        reply_export(s, q, XPUR_H_CTX, (uint64_t)(uintptr_t)ctx);
}

void xpur_s_cuCtxDestroy_v2(struct xpur_session *s, struct xpur_req *q)
{
    uint64_t id = xpur_get_u64(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    GET_HANDLE(ctx, CUcontext, XPUR_H_CTX, id);
    NEED(s->be->p_cuCtxDestroy_v2);
    if ((q->status = s->be->p_cuCtxDestroy_v2(ctx)) == CUDA_SUCCESS)
        xpur_h_forget(s, XPUR_H_CTX, id);
}

void xpur_s_cuCtxSetCurrent(struct xpur_session *s, struct xpur_req *q)
{
    uint64_t id = xpur_get_u64(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    GET_HANDLE(ctx, CUcontext, XPUR_H_CTX, id);
    NEED(s->be->p_cuCtxSetCurrent);
    q->status = s->be->p_cuCtxSetCurrent(ctx);
}

/* ------------------------------------------------------------------ memory */

void xpur_s_cuMemAllocPitch_v2(struct xpur_session *s, struct xpur_req *q)
{
    uint64_t w = xpur_get_u64(&q->in), h = xpur_get_u64(&q->in);
    uint32_t elem = xpur_get_u32(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    NEED(s->be->p_cuMemAllocPitch_v2);
    CUdeviceptr p = 0;
    size_t pitch = 0;
    if ((q->status = s->be->p_cuMemAllocPitch_v2(&p, &pitch, w, h, elem)) != CUDA_SUCCESS)
        return;
    xpur_track(s, XPUR_TRACK_ALLOC, p, h && pitch <= UINT64_MAX / h ? pitch * h : 0);
    xpur_put_u64(&q->out, p);
    xpur_put_u64(&q->out, pitch);
}

static void pointer_attrs(struct xpur_session *s, struct xpur_req *q)
{
    uint32_t n = xpur_get_u32(&q->in);
    if (n == 0 || n > XPUR_MAX_POINTER_ATTRS)
        BAD_ARGS(q);
    int32_t attrs[XPUR_MAX_POINTER_ATTRS];
    for (uint32_t i = 0; i < n; i++)
        attrs[i] = xpur_get_i32(&q->in);
    uint64_t ptr = xpur_get_u64(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    NEED(s->be->p_cuPointerGetAttribute);
    q->status = CUDA_SUCCESS;
    for (uint32_t i = 0; i < n; i++) {
        unsigned size = xpur_pointer_attr_size(attrs[i]);
        uint64_t value = 0;
        int32_t st = CUDA_ERROR_NOT_SUPPORTED;
        if (size) {
            unsigned char slot[16] = {0};
            st = s->be->p_cuPointerGetAttribute(slot, (CUpointer_attribute)attrs[i], (CUdeviceptr)ptr);
            if (st == CUDA_SUCCESS) {
                memcpy(&value, slot, size == 8 ? 8 : 4);
                if (attrs[i] == CU_POINTER_ATTRIBUTE_CONTEXT)
                    value = value ? xpur_h_export(s, XPUR_H_CTX, value) : 0;
                else if (attrs[i] == CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE)
                    value = value ? xpur_h_export(s, XPUR_H_POOL, value) : 0;
                else if (attrs[i] == CU_POINTER_ATTRIBUTE_HOST_POINTER)
                    value = 0; /* a worker address means nothing to the client */
                else if (attrs[i] == CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL)
                    value = 0;
            }
        }
        xpur_put_i32(&q->out, st);
        xpur_put_u64(&q->out, value);
    }
}

void xpur_s_cuPointerGetAttribute(struct xpur_session *s, struct xpur_req *q) { pointer_attrs(s, q); }
void xpur_s_cuPointerGetAttributes(struct xpur_session *s, struct xpur_req *q) { pointer_attrs(s, q); }

static void mempool_attr(struct xpur_session *s, struct xpur_req *q, int set)
{
    uint64_t pid = xpur_get_u64(&q->in);
    int32_t attr = xpur_get_i32(&q->in);
    uint64_t value = set ? xpur_get_u64(&q->in) : 0;
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    unsigned size = xpur_mempool_attr_size(attr);
    if (!size)
        FAIL(q, CUDA_ERROR_INVALID_VALUE);
    GET_HANDLE(pool, CUmemoryPool, XPUR_H_POOL, pid);
    unsigned char slot[8] = {0};
    if (set) {
        uint32_t v32 = (uint32_t)value;
        memcpy(slot, size == 8 ? (void *)&value : (void *)&v32, size);
        NEED(s->be->p_cuMemPoolSetAttribute);
        q->status = s->be->p_cuMemPoolSetAttribute(pool, (CUmemPool_attribute)attr, slot);
        return;
    }
    NEED(s->be->p_cuMemPoolGetAttribute);
    if ((q->status = s->be->p_cuMemPoolGetAttribute(pool, (CUmemPool_attribute)attr, slot)) != CUDA_SUCCESS)
        return;
    uint64_t out = 0;
    memcpy(&out, slot, size);
    xpur_put_u64(&q->out, out);
}

void xpur_s_cuMemPoolSetAttribute(struct xpur_session *s, struct xpur_req *q) { mempool_attr(s, q, 1); }
void xpur_s_cuMemPoolGetAttribute(struct xpur_session *s, struct xpur_req *q) { mempool_attr(s, q, 0); }

void xpur_s_cuMemSetAccess(struct xpur_session *s, struct xpur_req *q)
{
    uint64_t ptr = xpur_get_u64(&q->in), size = xpur_get_u64(&q->in);
    uint32_t n = xpur_get_u32(&q->in);
    if (n > XPUR_MAX_ACCESS_DESCS)
        BAD_ARGS(q);
    CUmemAccessDesc d[XPUR_MAX_ACCESS_DESCS];
    for (uint32_t i = 0; i < n; i++)
        xpur_get_bytes(&q->in, &d[i], sizeof d[i]);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    for (uint32_t i = 0; i < n; i++)
        if (d[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || d[i].location.id != 0)
            FAIL(q, CUDA_ERROR_INVALID_DEVICE); /* the session has one device */
    NEED(s->be->p_cuMemSetAccess);
    q->status = s->be->p_cuMemSetAccess(ptr, size, d, n);
}

/* ------------------------------------------------------------------ copies */

/* Copies larger than one staging buffer run as a two-stage pipeline over the session's two buffers:
 * host-to-device, a helper thread receives chunk i+1 while this thread hands chunk i to the driver;
 * device-to-host, this thread copies chunk i+1 out of the device while a helper thread sends chunk
 * i. Driver calls stay on the worker's thread (its context is current there); only one thread at a
 * time touches the connection. */
struct pipe {
    struct xpur_session *s;
    struct xpur_req *q;
    uint8_t *buf[2];
    size_t len[2];
    int full[2];
    uint64_t total;
    int broken;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static void pipe_init(struct pipe *p, struct xpur_session *s, struct xpur_req *q, uint64_t total)
{
    memset(p, 0, sizeof *p);
    p->s = s;
    p->q = q;
    p->buf[0] = s->staging;
    p->buf[1] = s->staging2;
    p->total = total;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
}

static void pipe_fini(struct pipe *p)
{
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
}

/* wait until slot i is `want` (1 full, 0 empty); 0, or -1 when the other side broke */
static int pipe_wait(struct pipe *p, int i, int want)
{
    pthread_mutex_lock(&p->mu);
    while (p->full[i] != want && !p->broken)
        pthread_cond_wait(&p->cv, &p->mu);
    int ok = p->full[i] == want;
    pthread_mutex_unlock(&p->mu);
    return ok ? 0 : -1;
}

static void pipe_set(struct pipe *p, int i, int full, size_t len, int broken)
{
    pthread_mutex_lock(&p->mu);
    p->full[i] = full;
    p->len[i] = len;
    p->broken |= broken;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void *htod_receiver(void *arg)
{
    struct pipe *p = arg;
    uint64_t off = 0;
    for (int i = 0; off < p->total; i ^= 1) {
        size_t k = p->total - off < p->s->staging_cap ? (size_t)(p->total - off) : p->s->staging_cap;
        if (pipe_wait(p, i, 0))
            break;
        if (xpur_req_bulk_read(p->s, p->q, p->buf[i], k)) {
            pipe_set(p, i, 0, 0, 1);
            break;
        }
        pipe_set(p, i, 1, k, 0);
        off += k;
    }
    return NULL;
}

/* host-to-device: the bytes follow as bulk; streamed through staging into the device */
static void htod(struct xpur_session *s, struct xpur_req *q, int async)
{
    uint64_t dst = xpur_get_u64(&q->in), n = xpur_get_u64(&q->in), sid = xpur_get_u64(&q->in);
    if (!xpur_rbuf_done(&q->in) || n != q->hdr.bulk)
        BAD_ARGS(q);
    uint64_t sv;
    if (xpur_h_get(s, XPUR_H_STREAM, sid, &sv))
        FAIL(q, CUDA_ERROR_INVALID_HANDLE);
    if (!xpur_range_ok(s, dst, n, 1))
        FAIL(q, CUDA_ERROR_INVALID_VALUE); /* the dispatcher drains the bulk */
    CUstream st = (CUstream)(uintptr_t)sv;
    __typeof__(s->be->p_cuMemcpyHtoDAsync_v2) fa = PTSZ(cuMemcpyHtoDAsync_v2);
    __typeof__(s->be->p_cuMemcpyHtoD_v2) fs = PTDS(cuMemcpyHtoD_v2);
    if (async ? !fa : !fs)
        FAIL(q, CUDA_ERROR_NOT_SUPPORTED);
    q->status = CUDA_SUCCESS;
    struct pipe p;
    pipe_init(&p, s, q, n);
    pthread_t rx;
    int threaded = n > s->staging_cap && pthread_create(&rx, NULL, htod_receiver, &p) == 0;
    uint64_t off = 0;
    for (int i = 0; off < n; i ^= 1) {
        size_t k = n - off < s->staging_cap ? (size_t)(n - off) : s->staging_cap;
        if (threaded) {
            if (pipe_wait(&p, i, 1)) {
                q->lost = 1; /* the connection broke mid-copy */
                break;
            }
        } else if (xpur_req_bulk_read(s, q, p.buf[i], k)) {
            q->lost = 1;
            break;
        }
        /* pageable staging: the driver has consumed it when the call returns, so it is reusable */
        if (q->status == CUDA_SUCCESS)
            q->status = async ? fa(dst + off, p.buf[i], k, st) : fs(dst + off, p.buf[i], k);
        if (threaded)
            pipe_set(&p, i, 0, 0, 0);
        off += k;
    }
    if (threaded) {
        if (q->lost)
            pipe_set(&p, 0, p.full[0], p.len[0], 1);
        pthread_join(rx, NULL);
    }
    pipe_fini(&p);
}

void xpur_s_cuMemcpyHtoD_v2(struct xpur_session *s, struct xpur_req *q) { htod(s, q, 0); }
void xpur_s_cuMemcpyHtoDAsync_v2(struct xpur_session *s, struct xpur_req *q) { htod(s, q, 1); }

static void *dtoh_sender(void *arg)
{
    struct pipe *p = arg;
    uint64_t off = 0;
    for (int i = 0; off < p->total; i ^= 1) {
        if (pipe_wait(p, i, 1))
            break;
        size_t k = p->len[i];
        if (xpur_conn_send(&p->s->conn, p->buf[i], k)) {
            pipe_set(p, i, 1, k, 1);
            break;
        }
        pipe_set(p, i, 0, 0, 0);
        off += k;
    }
    return NULL;
}

/* device-to-host: the reply carries the bytes then the final status (i32) */
static int dtoh_stream(struct xpur_session *s, struct xpur_req *q)
{
    uint64_t src = q->ctx[0], n = q->ctx[1];
    int async = (int)q->ctx[3];
    CUstream st = (CUstream)(uintptr_t)q->ctx[2];
    __typeof__(s->be->p_cuMemcpyDtoHAsync_v2) fa = (__typeof__(fa))(uintptr_t)q->ctx[4];
    __typeof__(s->be->p_cuMemcpyDtoH_v2) fs = (__typeof__(fs))(uintptr_t)q->ctx[5];
    int32_t status = CUDA_SUCCESS;
    struct pipe p;
    pipe_init(&p, s, q, n);
    pthread_t tx;
    int threaded = n > s->staging_cap && pthread_create(&tx, NULL, dtoh_sender, &p) == 0, broken = 0;
    uint64_t off = 0;
    for (int i = 0; off < n; i ^= 1) {
        size_t chunk = n - off < s->staging_cap ? (size_t)(n - off) : s->staging_cap;
        if (threaded && pipe_wait(&p, i, 0)) {
            broken = 1;
            break;
        }
        if (status == CUDA_SUCCESS)
            status = async ? fa(p.buf[i], src + off, chunk, st) : fs(p.buf[i], src + off, chunk);
        if (status != CUDA_SUCCESS)
            memset(p.buf[i], 0, chunk);
        if (threaded) {
            pipe_set(&p, i, 1, chunk, 0);
        } else if (xpur_conn_send(&s->conn, p.buf[i], chunk)) {
            broken = 1;
            break;
        }
        off += chunk;
    }
    if (threaded) {
        pthread_join(tx, NULL);
        broken |= p.broken;
    }
    pipe_fini(&p);
    if (broken)
        return -1;
    uint8_t tail[4];
    xpur_le_put(tail, (uint32_t)status, 4);
    if (xpur_is_sticky(status)) {
        s->end_after_reply = 1, s->ending = 1;
        xpur_session_end_reason(s, XPUR_END_STICKY);
    }
    return xpur_conn_send(&s->conn, tail, 4);
}

static void dtoh(struct xpur_session *s, struct xpur_req *q, int async)
{
    uint64_t src = xpur_get_u64(&q->in), n = xpur_get_u64(&q->in), sid = xpur_get_u64(&q->in);
    if (!xpur_rbuf_done(&q->in) || n > s->max_bulk)
        BAD_ARGS(q);
    uint64_t sv;
    if (xpur_h_get(s, XPUR_H_STREAM, sid, &sv))
        FAIL(q, CUDA_ERROR_INVALID_HANDLE);
    if (!xpur_range_ok(s, src, n, 1))
        FAIL(q, CUDA_ERROR_INVALID_VALUE);
    __typeof__(s->be->p_cuMemcpyDtoHAsync_v2) fa = PTSZ(cuMemcpyDtoHAsync_v2);
    __typeof__(s->be->p_cuMemcpyDtoH_v2) fs = PTDS(cuMemcpyDtoH_v2);
    if (async ? !fa : !fs)
        FAIL(q, CUDA_ERROR_NOT_SUPPORTED);
    q->ctx[0] = src;
    q->ctx[1] = n;
    q->ctx[2] = sv;
    q->ctx[3] = (uint64_t)async;
    q->ctx[4] = (uint64_t)(uintptr_t)fa;
    q->ctx[5] = (uint64_t)(uintptr_t)fs;
    q->status = CUDA_SUCCESS;
    q->bulk_out_len = (uint32_t)n + 4;
    q->bulk_stream = dtoh_stream;
}

void xpur_s_cuMemcpyDtoH_v2(struct xpur_session *s, struct xpur_req *q) { dtoh(s, q, 0); }
void xpur_s_cuMemcpyDtoHAsync_v2(struct xpur_session *s, struct xpur_req *q) { dtoh(s, q, 1); }

/* the unified and peer entry points arrive already resolved by the client to one of the
 * directional layouts: op (u8: 1 HtoD, 2 DtoH, 3 DtoD) then that layout */
static void dtod(struct xpur_session *s, struct xpur_req *q, uint64_t dst, uint64_t src, uint64_t n, uint64_t sid,
                 int async)
{
    uint64_t sv;
    if (xpur_h_get(s, XPUR_H_STREAM, sid, &sv))
        FAIL(q, CUDA_ERROR_INVALID_HANDLE);
    if (!xpur_range_ok(s, dst, n, 1) || !xpur_range_ok(s, src, n, 1))
        FAIL(q, CUDA_ERROR_INVALID_VALUE);
    if (async) {
        __typeof__(s->be->p_cuMemcpyDtoDAsync_v2) f = PTSZ(cuMemcpyDtoDAsync_v2);
        NEED(f);
        q->status = f(dst, src, n, (CUstream)(uintptr_t)sv);
    } else {
        __typeof__(s->be->p_cuMemcpyDtoD_v2) f = PTDS(cuMemcpyDtoD_v2);
        NEED(f);
        q->status = f(dst, src, n);
    }
}

static void unified(struct xpur_session *s, struct xpur_req *q, int async)
{
    uint8_t op = xpur_get_u8(&q->in);
    if (op == 1) {
        htod(s, q, async);
    } else if (op == 2) {
        dtoh(s, q, async);
    } else if (op == 3) {
        uint64_t dst = xpur_get_u64(&q->in), src = xpur_get_u64(&q->in), n = xpur_get_u64(&q->in),
                 sid = xpur_get_u64(&q->in);
        if (!xpur_rbuf_done(&q->in))
            BAD_ARGS(q);
        dtod(s, q, dst, src, n, sid, async);
    } else {
        BAD_ARGS(q);
    }
}

void xpur_s_cuMemcpy(struct xpur_session *s, struct xpur_req *q) { unified(s, q, 0); }
void xpur_s_cuMemcpyAsync(struct xpur_session *s, struct xpur_req *q) { unified(s, q, 1); }
void xpur_s_cuMemcpyPeer(struct xpur_session *s, struct xpur_req *q) { unified(s, q, 0); }
void xpur_s_cuMemcpyPeerAsync(struct xpur_session *s, struct xpur_req *q) { unified(s, q, 1); }

/* 2D copies: device sides keep their pitch; host sides are packed rows (the client packs and
 * unpacks its own memory, the worker never sees a client address) */
static int d2h2d_stream(struct xpur_session *s, struct xpur_req *q)
{
    CUDA_MEMCPY2D c;
    memcpy(&c, q->ctx, sizeof c);
    int async = (int)q->ctx[16];
    CUstream st = (CUstream)(uintptr_t)q->ctx[17];
    size_t rows_per_chunk = s->staging_cap / c.WidthInBytes;
    int32_t status = CUDA_SUCCESS;
    for (size_t y = 0; y < c.Height;) {
        size_t rows = c.Height - y < rows_per_chunk ? c.Height - y : rows_per_chunk;
        CUDA_MEMCPY2D part = c;
        part.srcY = c.srcY + y;
        part.dstHost = s->staging;
        part.dstPitch = c.WidthInBytes;
        part.Height = rows;
        if (status == CUDA_SUCCESS) {
            if (async && s->be->p_cuMemcpy2DAsync_v2)
                status = s->be->p_cuMemcpy2DAsync_v2(&part, st);
            else if (!async && s->be->p_cuMemcpy2D_v2)
                status = s->be->p_cuMemcpy2D_v2(&part);
            else
                status = CUDA_ERROR_NOT_SUPPORTED;
        }
        if (status != CUDA_SUCCESS)
            memset(s->staging, 0, rows * c.WidthInBytes);
        if (xpur_conn_send(&s->conn, s->staging, rows * c.WidthInBytes))
            return -1;
        y += rows;
    }
    uint8_t tail[4];
    xpur_le_put(tail, (uint32_t)status, 4);
    return xpur_conn_send(&s->conn, tail, 4);
}

static int range2d(struct xpur_session *s, CUdeviceptr base, size_t x, size_t y, size_t pitch, size_t width,
                   size_t height)
{
    if (!width || !height)
        return 1;
    if (x > pitch || width > pitch - x || y > UINT64_MAX / (pitch ? pitch : 1))
        return 0;
    uint64_t start = base + y * pitch + x;
    if (start < base)
        return 0;
    return xpur_range2d_ok(s, start, pitch, width, height, 1);
}

static void copy2d(struct xpur_session *s, struct xpur_req *q, int async)
{
    CUDA_MEMCPY2D c;
    xpur_get_bytes(&q->in, &c, sizeof c);
    uint64_t sid = xpur_get_u64(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    c.srcHost = NULL;
    c.dstHost = NULL;
    c.srcArray = NULL;
    c.dstArray = NULL;
    uint64_t sv;
    if (xpur_h_get(s, XPUR_H_STREAM, sid, &sv))
        FAIL(q, CUDA_ERROR_INVALID_HANDLE);
    CUstream st = (CUstream)(uintptr_t)sv;
    int src_dev = c.srcMemoryType == CU_MEMORYTYPE_DEVICE, dst_dev = c.dstMemoryType == CU_MEMORYTYPE_DEVICE;
    int src_host = c.srcMemoryType == CU_MEMORYTYPE_HOST, dst_host = c.dstMemoryType == CU_MEMORYTYPE_HOST;
    if (!(src_dev || src_host) || !(dst_dev || dst_host) || (src_host && dst_host))
        FAIL(q, CUDA_ERROR_NOT_SUPPORTED); /* arrays and host-to-host are not remoted */
    if (src_dev && !range2d(s, c.srcDevice, c.srcXInBytes, c.srcY, c.srcPitch, c.WidthInBytes, c.Height))
        FAIL(q, CUDA_ERROR_INVALID_VALUE);
    if (dst_dev && !range2d(s, c.dstDevice, c.dstXInBytes, c.dstY, c.dstPitch, c.WidthInBytes, c.Height))
        FAIL(q, CUDA_ERROR_INVALID_VALUE);
    uint64_t packed = (uint64_t)c.WidthInBytes * c.Height;
    if (c.Height && packed / c.Height != c.WidthInBytes)
        FAIL(q, CUDA_ERROR_INVALID_VALUE);
    if (src_host && packed != q->hdr.bulk)
        BAD_ARGS(q);
    if (!async && !s->be->p_cuMemcpy2D_v2)
        FAIL(q, CUDA_ERROR_NOT_SUPPORTED);
    if (async && !s->be->p_cuMemcpy2DAsync_v2)
        FAIL(q, CUDA_ERROR_NOT_SUPPORTED);
    if (!c.WidthInBytes || !c.Height)
        FAIL(q, CUDA_SUCCESS);
    if (c.WidthInBytes > s->staging_cap)
        FAIL(q, CUDA_ERROR_NOT_SUPPORTED); /* rows wider than the staging buffer */
    if (src_dev && dst_dev) {
        q->status = async ? s->be->p_cuMemcpy2DAsync_v2(&c, st) : s->be->p_cuMemcpy2D_v2(&c);
        return;
    }
    if (src_host) { /* host rows arrive packed */
        size_t rows_per_chunk = s->staging_cap / c.WidthInBytes;
        q->status = CUDA_SUCCESS;
        for (size_t y = 0; y < c.Height;) {
            size_t rows = c.Height - y < rows_per_chunk ? c.Height - y : rows_per_chunk;
            if (xpur_req_bulk_read(s, q, s->staging, rows * c.WidthInBytes)) {
                q->lost = 1;
                return;
            }
            CUDA_MEMCPY2D part = c;
            part.srcHost = s->staging;
            part.srcPitch = c.WidthInBytes;
            part.srcXInBytes = 0;
            part.srcY = 0;
            part.dstY = c.dstY + y;
            part.Height = rows;
            if (q->status == CUDA_SUCCESS)
                q->status = async ? s->be->p_cuMemcpy2DAsync_v2(&part, st) : s->be->p_cuMemcpy2D_v2(&part);
            y += rows;
        }
        return;
    }
    /* device to host: rows are streamed back packed */
    if (packed > s->max_bulk)
        FAIL(q, CUDA_ERROR_INVALID_VALUE);
    c.dstXInBytes = 0;
    c.dstY = 0;
    _Static_assert(sizeof(CUDA_MEMCPY2D) <= 16 * sizeof(uint64_t), "CUDA_MEMCPY2D fits the request state");
    memcpy(&q->ctx[0], &c, sizeof c);
    q->ctx[16] = (uint64_t)async;
    q->ctx[17] = sv;
    q->status = CUDA_SUCCESS;
    q->bulk_out_len = (uint32_t)packed + 4;
    q->bulk_stream = d2h2d_stream;
}

void xpur_s_cuMemcpy2D_v2(struct xpur_session *s, struct xpur_req *q) { copy2d(s, q, 0); }
void xpur_s_cuMemcpy2DUnaligned_v2(struct xpur_session *s, struct xpur_req *q) { copy2d(s, q, 0); }
void xpur_s_cuMemcpy2DAsync_v2(struct xpur_session *s, struct xpur_req *q) { copy2d(s, q, 1); }

/* ------------------------------------------------------------------ capture and host callbacks */

static void capture_info(struct xpur_session *s, struct xpur_req *q, int v3)
{
    uint64_t sid = xpur_get_u64(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    GET_HANDLE(st, CUstream, XPUR_H_STREAM, sid);
    CUstreamCaptureStatus cs = CU_STREAM_CAPTURE_STATUS_NONE;
    cuuint64_t id = 0;
    CUgraph g = NULL;
    if (v3) {
        __typeof__(s->be->p_cuStreamGetCaptureInfo_v3) f = PTSZ(cuStreamGetCaptureInfo_v3);
        NEED(f);
        q->status = f(st, &cs, &id, &g, NULL, NULL, NULL);
    } else {
        __typeof__(s->be->p_cuStreamGetCaptureInfo_v2) f = PTSZ(cuStreamGetCaptureInfo_v2);
        NEED(f);
        q->status = f(st, &cs, &id, &g, NULL, NULL);
    }
    if (q->status != CUDA_SUCCESS)
        return;
    uint64_t gid = g ? xpur_h_export(s, XPUR_H_GRAPH, (uint64_t)(uintptr_t)g) : 0;
    xpur_put_i32(&q->out, (int32_t)cs);
    xpur_put_u64(&q->out, id);
    xpur_put_u64(&q->out, gid);
}

void xpur_s_cuStreamGetCaptureInfo_v2(struct xpur_session *s, struct xpur_req *q) { capture_info(s, q, 0); }
void xpur_s_cuStreamGetCaptureInfo_v3(struct xpur_session *s, struct xpur_req *q) { capture_info(s, q, 1); }

void xpur_s_cuThreadExchangeStreamCaptureMode(struct xpur_session *s, struct xpur_req *q)
{
    int32_t mode = xpur_get_i32(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    NEED(s->be->p_cuThreadExchangeStreamCaptureMode);
    CUstreamCaptureMode m = (CUstreamCaptureMode)mode;
    if ((q->status = s->be->p_cuThreadExchangeStreamCaptureMode(&m)) == CUDA_SUCCESS)
        xpur_put_i32(&q->out, (int32_t)m);
}

static void host_callback(struct xpur_session *s, struct xpur_req *q)
{
    uint64_t sid = xpur_get_u64(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    GET_HANDLE(st, CUstream, XPUR_H_STREAM, sid);
    __typeof__(s->be->p_cuStreamSynchronize) f = PTSZ(cuStreamSynchronize);
    NEED(f);
    q->status = f(st);
}

void xpur_s_cuStreamAddCallback(struct xpur_session *s, struct xpur_req *q) { host_callback(s, q); }
void xpur_s_cuLaunchHostFunc(struct xpur_session *s, struct xpur_req *q) { host_callback(s, q); }

/* ------------------------------------------------------------------ modules */

struct cached_image {
    unsigned char sha[32];
    size_t size;
    unsigned char *bytes;
    struct cached_image *next;
};

struct xpur_module_cache {
    char dir[512]; /* shared content-addressed cache (may be empty) */
    struct cached_image *head;
    size_t bytes;
};

#define SESSION_CACHE_BYTES (512ull << 20)

struct xpur_module_cache *xpur_module_cache_new(const char *dir)
{
    struct xpur_module_cache *c = calloc(1, sizeof *c);
    if (c && dir)
        snprintf(c->dir, sizeof c->dir, "%s", dir);
    return c;
}

void xpur_module_cache_free(struct xpur_module_cache *c)
{
    for (struct cached_image *i = c->head, *n; i; i = n) {
        n = i->next;
        free(i->bytes);
        free(i);
    }
    free(c);
}

static void hexname(const unsigned char sha[32], char out[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", sha[i]);
}

static struct cached_image *cache_find(struct xpur_module_cache *c, const unsigned char sha[32], size_t size)
{
    for (struct cached_image *i = c->head; i; i = i->next)
        if (i->size == size && memcmp(i->sha, sha, 32) == 0)
            return i;
    if (!c->dir[0])
        return NULL;
    char name[65], path[640];
    hexname(sha, name);
    snprintf(path, sizeof path, "%s/%s", c->dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return NULL;
    struct stat st;
    unsigned char *b = NULL;
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_size == size && (b = malloc(size ? size : 1))) {
        size_t got = 0;
        while (got < size) {
            ssize_t r = read(fd, b + got, size - got);
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        unsigned char check[32];
        if (got != size || xpur_sha256(b, size, check) || memcmp(check, sha, 32)) { /* never trust the disk */
            free(b);
            b = NULL;
        }
    }
    close(fd);
    if (!b)
        return NULL;
    struct cached_image *i = calloc(1, sizeof *i);
    if (!i) {
        free(b);
        return NULL;
    }
    memcpy(i->sha, sha, 32);
    i->size = size;
    i->bytes = b;
    i->next = c->head;
    c->head = i;
    c->bytes += size;
    return i;
}

static void cache_store_disk(struct xpur_module_cache *c, const struct cached_image *i)
{
    if (!c->dir[0])
        return;
    char name[65], path[640], tmp[700];
    hexname(i->sha, name);
    snprintf(path, sizeof path, "%s/%s", c->dir, name);
    snprintf(tmp, sizeof tmp, "%s/.tmp.%d.%s", c->dir, (int)getpid(), name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0)
        return;
    size_t off = 0;
    while (off < i->size) {
        ssize_t w = write(fd, i->bytes + off, i->size - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    close(fd);
    if (off != i->size || rename(tmp, path))
        unlink(tmp);
}

static void load_image(struct xpur_session *s, struct xpur_req *q, uint8_t want_kind)
{
    uint8_t kind = xpur_get_u8(&q->in);
    unsigned char sha[32];
    xpur_get_bytes(&q->in, sha, 32);
    uint64_t size = xpur_get_u64(&q->in);
    if (!xpur_rbuf_done(&q->in) || kind != want_kind || size == 0 || size > XPUR_LIMIT_MAX_BULK_CEILING ||
        (q->hdr.bulk && q->hdr.bulk != size))
        BAD_ARGS(q);
    if (!s->modules && !(s->modules = xpur_module_cache_new(NULL)))
        FAIL(q, CUDA_ERROR_OUT_OF_MEMORY);
    struct cached_image *img = cache_find(s->modules, sha, size);
    if (!img) {
        if (!q->hdr.bulk)
            FAIL(q, XPUR_STATUS_NEED_IMAGE);
        if (s->modules->bytes + size > SESSION_CACHE_BYTES)
            FAIL(q, CUDA_ERROR_OUT_OF_MEMORY);
        unsigned char *b = malloc(size + 1); /* +1: a NUL after PTX text */
        img = calloc(1, sizeof *img);
        if (!b || !img) {
            free(b);
            free(img);
            FAIL(q, CUDA_ERROR_OUT_OF_MEMORY);
        }
        if (xpur_req_bulk_read(s, q, b, size)) {
            free(b);
            free(img);
            q->lost = 1;
            return;
        }
        b[size] = 0;
        unsigned char check[32];
        if (xpur_sha256(b, size, check) || memcmp(check, sha, 32)) {
            free(b);
            free(img);
            FAIL(q, CUDA_ERROR_INVALID_IMAGE);
        }
        memcpy(img->sha, sha, 32);
        img->size = size;
        img->bytes = b;
        img->next = s->modules->head;
        s->modules->head = img;
        s->modules->bytes += size;
        cache_store_disk(s->modules, img);
    } else if (q->hdr.bulk && xpur_req_bulk_read(s, q, NULL, q->hdr.bulk)) {
        q->lost = 1;
        return;
    }
    if (kind == XPUR_IMAGE_LIBRARY) {
        NEED(s->be->p_cuLibraryLoadData);
        CUlibrary lib = NULL;
        if ((q->status = s->be->p_cuLibraryLoadData(&lib, img->bytes, NULL, NULL, 0, NULL, NULL, 0)) == CUDA_SUCCESS)
            reply_export(s, q, XPUR_H_LIBRARY, (uint64_t)(uintptr_t)lib);
        return;
    }
    CUmodule mod = NULL;
    if (kind == XPUR_IMAGE_FATBINARY && s->be->p_cuModuleLoadFatBinary) {
        q->status = s->be->p_cuModuleLoadFatBinary(&mod, img->bytes);
    } else {
        NEED(s->be->p_cuModuleLoadData);
        q->status = s->be->p_cuModuleLoadData(&mod, img->bytes);
    }
    if (q->status == CUDA_SUCCESS)
        reply_export(s, q, XPUR_H_MODULE, (uint64_t)(uintptr_t)mod);
}

void xpur_s_cuModuleLoad(struct xpur_session *s, struct xpur_req *q) { load_image(s, q, XPUR_IMAGE_MODULE); }
void xpur_s_cuModuleLoadData(struct xpur_session *s, struct xpur_req *q) { load_image(s, q, XPUR_IMAGE_MODULE); }
void xpur_s_cuModuleLoadDataEx(struct xpur_session *s, struct xpur_req *q) { load_image(s, q, XPUR_IMAGE_MODULE); }
void xpur_s_cuModuleLoadFatBinary(struct xpur_session *s, struct xpur_req *q) { load_image(s, q, XPUR_IMAGE_FATBINARY); }
void xpur_s_cuLibraryLoadData(struct xpur_session *s, struct xpur_req *q) { load_image(s, q, XPUR_IMAGE_LIBRARY); }
void xpur_s_cuLibraryLoadFromFile(struct xpur_session *s, struct xpur_req *q) { load_image(s, q, XPUR_IMAGE_LIBRARY); }

/* ------------------------------------------------------------------ functions and parameter layouts */

struct xpur_layout {
    uint32_t n, total;
    uint32_t off[];
    /* followed by n sizes */
};

static uint32_t *layout_sizes(struct xpur_layout *l) { return l->off + l->n; }

/* learn the parameter layout of f (function or kernel) from the driver, remember it for launches,
 * and append it to the reply */
static void reply_function(struct xpur_session *s, struct xpur_req *q, unsigned kind, uint64_t val)
{
    uint64_t id = xpur_h_export(s, kind, val);
    if (!id)
        FAIL(q, CUDA_ERROR_OUT_OF_MEMORY);
    uint64_t have;
    struct xpur_layout *l = NULL;
    if (xpur_hmap_get(&s->layouts, id, &have) == 0) {
        l = (struct xpur_layout *)(uintptr_t)have;
    } else {
        uint32_t off[64], sz[64], n = 0, total = 0;
        int known = kind == XPUR_H_KERNEL ? s->be->p_cuKernelGetParamInfo != NULL : s->be->p_cuFuncGetParamInfo != NULL;
        size_t cap = 64;
        uint32_t *offs = off, *sizes = sz;
        while (known) {
            size_t o = 0, z = 0;
            CUresult r = kind == XPUR_H_KERNEL ? s->be->p_cuKernelGetParamInfo((CUkernel)(uintptr_t)val, n, &o, &z)
                                               : s->be->p_cuFuncGetParamInfo((CUfunction)(uintptr_t)val, n, &o, &z);
            if (r == CUDA_ERROR_INVALID_VALUE)
                break; /* past the last parameter */
            if (r != CUDA_SUCCESS || o + z > XPUR_MAX_PARAM_BYTES || n >= XPUR_MAX_PARAMS) {
                known = 0;
                break;
            }
            if (n == cap) {
                size_t ncap = cap * 2;
                uint32_t *no = malloc(ncap * sizeof *no), *ns = malloc(ncap * sizeof *ns);
                if (!no || !ns) {
                    free(no);
                    free(ns);
                    known = 0;
                    break;
                }
                memcpy(no, offs, n * sizeof *no);
                memcpy(ns, sizes, n * sizeof *ns);
                if (offs != off) {
                    free(offs);
                    free(sizes);
                }
                offs = no;
                sizes = ns;
                cap = ncap;
            }
            offs[n] = (uint32_t)o;
            sizes[n] = (uint32_t)z;
            if (o + z > total)
                total = (uint32_t)(o + z);
            n++;
        }
        if (known && (l = malloc(sizeof *l + 2 * n * sizeof(uint32_t)))) {
            l->n = n;
            l->total = total;
            memcpy(l->off, offs, n * sizeof *offs);
            memcpy(layout_sizes(l), sizes, n * sizeof *sizes);
            if (xpur_hmap_put(&s->layouts, id, (uint64_t)(uintptr_t)l)) {
                free(l);
                l = NULL;
            }
        }
        if (offs != off) {
            free(offs);
            free(sizes);
        }
    }
    xpur_put_u64(&q->out, id);
    if (!l) {
        xpur_put_u32(&q->out, XPUR_PARAMS_UNKNOWN);
        return;
    }
    xpur_put_u32(&q->out, l->n);
    for (uint32_t i = 0; i < l->n; i++) {
        xpur_put_u32(&q->out, l->off[i]);
        xpur_put_u32(&q->out, layout_sizes(l)[i]);
    }
}

void xpur_s_cuModuleGetFunction(struct xpur_session *s, struct xpur_req *q)
{
    uint64_t mid = xpur_get_u64(&q->in);
    char name[XPUR_LIMIT_MAX_STRING + 1];
    xpur_get_str(&q->in, name, sizeof name);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    GET_HANDLE(mod, CUmodule, XPUR_H_MODULE, mid);
    NEED(s->be->p_cuModuleGetFunction);
    CUfunction f = NULL;
    if ((q->status = s->be->p_cuModuleGetFunction(&f, mod, name)) == CUDA_SUCCESS)
        reply_function(s, q, XPUR_H_FUNC, (uint64_t)(uintptr_t)f);
}

void xpur_s_cuLibraryGetKernel(struct xpur_session *s, struct xpur_req *q)
{
    uint64_t lid = xpur_get_u64(&q->in);
    char name[XPUR_LIMIT_MAX_STRING + 1];
    xpur_get_str(&q->in, name, sizeof name);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    GET_HANDLE(lib, CUlibrary, XPUR_H_LIBRARY, lid);
    NEED(s->be->p_cuLibraryGetKernel);
    CUkernel k = NULL;
    if ((q->status = s->be->p_cuLibraryGetKernel(&k, lib, name)) == CUDA_SUCCESS)
        reply_function(s, q, XPUR_H_KERNEL, (uint64_t)(uintptr_t)k);
}

void xpur_s_cuKernelGetFunction(struct xpur_session *s, struct xpur_req *q)
{
    uint64_t kid = xpur_get_u64(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    if (xpur_h_kind(kid) != XPUR_H_KERNEL)
        FAIL(q, CUDA_ERROR_INVALID_HANDLE);
    GET_HANDLE(k, CUkernel, XPUR_H_KERNEL, kid);
    NEED(s->be->p_cuKernelGetFunction);
    CUfunction f = NULL;
    if ((q->status = s->be->p_cuKernelGetFunction(&f, k)) == CUDA_SUCCESS)
        reply_function(s, q, XPUR_H_FUNC, (uint64_t)(uintptr_t)f);
}

/* ------------------------------------------------------------------ launches */

struct launch {
    uint64_t fid, sid;
    uint32_t g[3], b[3], shm, flags, nbytes;
    const uint8_t *bytes;
};

static int launch_head(struct xpur_req *q, struct launch *l)
{
    l->fid = xpur_get_u64(&q->in);
    for (int i = 0; i < 3; i++)
        l->g[i] = xpur_get_u32(&q->in);
    for (int i = 0; i < 3; i++)
        l->b[i] = xpur_get_u32(&q->in);
    l->shm = xpur_get_u32(&q->in);
    l->sid = xpur_get_u64(&q->in);
    l->flags = xpur_get_u32(&q->in);
    l->nbytes = xpur_get_u32(&q->in);
    if (l->nbytes > XPUR_MAX_PARAM_BYTES || (l->flags & ~XPUR_LAUNCH_EXTRA_BUFFER))
        return -1;
    l->bytes = xpur_rbuf_take(&q->in, l->nbytes);
    return q->in.bad ? -1 : 0;
}

/* the arguments the backend wants: params[] into an aligned copy, or an `extra` buffer */
struct packed {
    _Alignas(16) unsigned char buf[XPUR_MAX_PARAM_BYTES + 4];
    void *params[XPUR_MAX_PARAMS];
    void *extra[5];
    size_t size;
};

static int32_t launch_args(struct xpur_session *s, const struct launch *l, struct packed *p, void ***params,
                           void ***extra)
{
    memcpy(p->buf, l->bytes, l->nbytes);
    p->size = l->nbytes;
    *params = NULL;
    *extra = NULL;
    if (l->flags & XPUR_LAUNCH_EXTRA_BUFFER) {
        p->extra[0] = CU_LAUNCH_PARAM_BUFFER_POINTER;
        p->extra[1] = p->buf;
        p->extra[2] = CU_LAUNCH_PARAM_BUFFER_SIZE;
        p->extra[3] = &p->size;
        p->extra[4] = CU_LAUNCH_PARAM_END;
        *extra = p->extra;
        return CUDA_SUCCESS;
    }
    uint64_t have;
    if (xpur_hmap_get(&s->layouts, l->fid, &have))
        return l->nbytes ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS; /* no parameters known: none sent */
    const struct xpur_layout *lay = (const struct xpur_layout *)(uintptr_t)have;
    if (lay->total != l->nbytes)
        return CUDA_ERROR_INVALID_VALUE;
    for (uint32_t i = 0; i < lay->n; i++)
        p->params[i] = p->buf + lay->off[i];
    *params = lay->n ? p->params : NULL;
    return CUDA_SUCCESS;
}

static void launch(struct xpur_session *s, struct xpur_req *q, int cooperative)
{
    struct launch l;
    if (launch_head(q, &l) || !xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    GET_HANDLE(f, CUfunction, XPUR_H_FUNC, l.fid);
    GET_HANDLE(st, CUstream, XPUR_H_STREAM, l.sid);
    static _Thread_local struct packed p;
    void **params, **extra;
    if ((q->status = launch_args(s, &l, &p, &params, &extra)) != CUDA_SUCCESS)
        return;
    if (cooperative) {
        __typeof__(s->be->p_cuLaunchCooperativeKernel) fn = PTSZ(cuLaunchCooperativeKernel);
        NEED(fn);
        if (extra)
            FAIL(q, CUDA_ERROR_INVALID_VALUE);
        q->status = fn(f, l.g[0], l.g[1], l.g[2], l.b[0], l.b[1], l.b[2], l.shm, st, params);
        return;
    }
    __typeof__(s->be->p_cuLaunchKernel) fn = PTSZ(cuLaunchKernel);
    NEED(fn);
    q->status = fn(f, l.g[0], l.g[1], l.g[2], l.b[0], l.b[1], l.b[2], l.shm, st, params, extra);
}

void xpur_s_cuLaunchKernel(struct xpur_session *s, struct xpur_req *q) { launch(s, q, 0); }
void xpur_s_cuLaunchCooperativeKernel(struct xpur_session *s, struct xpur_req *q) { launch(s, q, 1); }

void xpur_s_cuLaunchKernelEx(struct xpur_session *s, struct xpur_req *q)
{
    struct launch l;
    if (launch_head(q, &l))
        BAD_ARGS(q);
    uint32_t na = xpur_get_u32(&q->in);
    if (na > XPUR_MAX_LAUNCH_ATTRS)
        BAD_ARGS(q);
    CUlaunchAttribute attrs[XPUR_MAX_LAUNCH_ATTRS];
    for (uint32_t i = 0; i < na; i++)
        xpur_get_bytes(&q->in, &attrs[i], sizeof attrs[i]);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    GET_HANDLE(f, CUfunction, XPUR_H_FUNC, l.fid);
    GET_HANDLE(st, CUstream, XPUR_H_STREAM, l.sid);
    for (uint32_t i = 0; i < na; i++) {
        CUlaunchAttribute *a = &attrs[i];
        uint64_t v;
        switch (a->id) {
        case CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT:
            if (xpur_h_get(s, XPUR_H_EVENT, (uint64_t)(uintptr_t)a->value.programmaticEvent.event, &v))
                FAIL(q, CUDA_ERROR_INVALID_HANDLE);
            a->value.programmaticEvent.event = (CUevent)(uintptr_t)v;
            break;
        case CU_LAUNCH_ATTRIBUTE_LAUNCH_COMPLETION_EVENT:
            if (xpur_h_get(s, XPUR_H_EVENT, (uint64_t)(uintptr_t)a->value.launchCompletionEvent.event, &v))
                FAIL(q, CUDA_ERROR_INVALID_HANDLE);
            a->value.launchCompletionEvent.event = (CUevent)(uintptr_t)v;
            break;
        case CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE:
            FAIL(q, CUDA_ERROR_NOT_SUPPORTED); /* graph-only, returns a device node handle */
        default:
            break; /* plain values (no addresses the worker would dereference) */
        }
    }
    static _Thread_local struct packed p;
    void **params, **extra;
    if ((q->status = launch_args(s, &l, &p, &params, &extra)) != CUDA_SUCCESS)
        return;
    CUlaunchConfig cfg = {l.g[0], l.g[1], l.g[2], l.b[0], l.b[1], l.b[2], l.shm, st, na ? attrs : NULL, na};
    __typeof__(s->be->p_cuLaunchKernelEx) fn = PTSZ(cuLaunchKernelEx);
    NEED(fn);
    q->status = fn(&cfg, f, params, extra);
}

static void occupancy(struct xpur_session *s, struct xpur_req *q, int with_flags)
{
    uint64_t fid = xpur_get_u64(&q->in), smem = xpur_get_u64(&q->in);
    int32_t limit = xpur_get_i32(&q->in);
    uint32_t flags = xpur_get_u32(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    GET_HANDLE(f, CUfunction, XPUR_H_FUNC, fid);
    int grid = 0, block = 0;
    if (with_flags) {
        NEED(s->be->p_cuOccupancyMaxPotentialBlockSizeWithFlags);
        q->status = s->be->p_cuOccupancyMaxPotentialBlockSizeWithFlags(&grid, &block, f, NULL, smem, limit, flags);
    } else {
        NEED(s->be->p_cuOccupancyMaxPotentialBlockSize);
        q->status = s->be->p_cuOccupancyMaxPotentialBlockSize(&grid, &block, f, NULL, smem, limit);
    }
    if (q->status == CUDA_SUCCESS) {
        xpur_put_i32(&q->out, grid);
        xpur_put_i32(&q->out, block);
    }
}

void xpur_s_cuOccupancyMaxPotentialBlockSize(struct xpur_session *s, struct xpur_req *q) { occupancy(s, q, 0); }
void xpur_s_cuOccupancyMaxPotentialBlockSizeWithFlags(struct xpur_session *s, struct xpur_req *q)
{
    occupancy(s, q, 1);
}

/* ------------------------------------------------------------------ graphs */

void xpur_s_cuGraphInstantiateWithParams(struct xpur_session *s, struct xpur_req *q)
{
    uint64_t gid = xpur_get_u64(&q->in), flags = xpur_get_u64(&q->in), sid = xpur_get_u64(&q->in);
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    GET_HANDLE(g, CUgraph, XPUR_H_GRAPH, gid);
    GET_HANDLE(st, CUstream, XPUR_H_STREAM, sid);
    __typeof__(s->be->p_cuGraphInstantiateWithParams) fn = PTSZ(cuGraphInstantiateWithParams);
    NEED(fn);
    CUDA_GRAPH_INSTANTIATE_PARAMS p = {.flags = flags, .hUploadStream = st};
    CUgraphExec e = NULL;
    if ((q->status = fn(&e, g, &p)) != CUDA_SUCCESS)
        return;
    uint64_t id = xpur_h_export(s, XPUR_H_GEXEC, (uint64_t)(uintptr_t)e);
    if (!id)
        FAIL(q, CUDA_ERROR_OUT_OF_MEMORY);
    xpur_put_u64(&q->out, id);
    xpur_put_i32(&q->out, (int32_t)p.result_out);
}

static void graph_mem_attr(struct xpur_session *s, struct xpur_req *q, int set)
{
    int32_t dev = xpur_get_i32(&q->in), attr = xpur_get_i32(&q->in);
    uint64_t value = set ? xpur_get_u64(&q->in) : 0;
    if (!xpur_rbuf_done(&q->in))
        BAD_ARGS(q);
    if (dev != 0)
        FAIL(q, CUDA_ERROR_INVALID_DEVICE);
    cuuint64_t v = value;
    if (set) {
        NEED(s->be->p_cuDeviceSetGraphMemAttribute);
        q->status = s->be->p_cuDeviceSetGraphMemAttribute(s->dev, (CUgraphMem_attribute)attr, &v);
        return;
    }
    NEED(s->be->p_cuDeviceGetGraphMemAttribute);
    if ((q->status = s->be->p_cuDeviceGetGraphMemAttribute(s->dev, (CUgraphMem_attribute)attr, &v)) == CUDA_SUCCESS)
        xpur_put_u64(&q->out, v);
}

void xpur_s_cuDeviceGetGraphMemAttribute(struct xpur_session *s, struct xpur_req *q) { graph_mem_attr(s, q, 0); }
void xpur_s_cuDeviceSetGraphMemAttribute(struct xpur_session *s, struct xpur_req *q) { graph_mem_attr(s, q, 1); }
