/*
 * Hand-written client codecs for the catalogue's `custom` entries (layouts: xpur_custom_wire.h):
 * contexts, copies (bulk on the same connection), pointer queries, modules (hash first, image on a
 * miss), kernel launches (parameters packed with the layout the server learned), capture, graphs.
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "cudacompat.h"
#include "digest.h"
#include "xpur_custom_wire.h"

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        CUresult rc_ = (expr);                                                                     \
        if (rc_ != CUDA_SUCCESS)                                                                   \
            return rc_;                                                                            \
    } while (0)

static CUresult stream_id(CUstream s, uint64_t *id) { return xpur_handle_in(XPUR_H_STREAM, (uint64_t)(uintptr_t)s, id); }

/* ------------------------------------------------------------------ contexts */

static _Atomic uint64_t g_primary;
uint64_t xpur_primary_ctx(void) { return g_primary; }

void xpur_hook_cuDevicePrimaryCtxReset_v2(unsigned xo, CUdevice dev)
{
    (void)xo;
    (void)dev;
    if (g_primary) /* its context-local state (the runtime's) dies with it */
        cudacompat_context_destroyed((CUcontext)(uintptr_t)g_primary);
}
void xpur_hook_cuDevicePrimaryCtxReset(unsigned xo, CUdevice dev) { xpur_hook_cuDevicePrimaryCtxReset_v2(xo, dev); }

CUresult xpur_c_cuDevicePrimaryCtxRetain(unsigned xo, CUcontext *pctx, CUdevice dev)
{
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(xpur_dev_in(dev));
    struct xpur_call c;
    TRY(xpur_call_begin(&c, XPUR_API_cuDevicePrimaryCtxRetain, xo | XPUR_O_NOCTX));
    xpur_put_i32(&c.w, 0);
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS) {
        uint64_t id = xpur_get_u64(&c.r);
        g_primary = id;
        *pctx = (CUcontext)(uintptr_t)id;
    }
    return xpur_call_end(&c, rc);
}

CUresult xpur_c_cuCtxCreate_v2(unsigned xo, CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(xpur_dev_in(dev));
    struct xpur_call c;
    TRY(xpur_call_begin(&c, XPUR_API_cuCtxCreate_v2, xo | XPUR_O_NOCTX));
    xpur_put_u32(&c.w, flags);
    xpur_put_i32(&c.w, 0);
    CUresult rc = xpur_call_sync(&c);
    uint64_t id = rc == CUDA_SUCCESS ? xpur_get_u64(&c.r) : 0;
    rc = xpur_call_end(&c, rc);
    if (rc != CUDA_SUCCESS)
        return rc;
    xpur_ctx_server_current(id); /* the server made it current for its thread */
    TRY(xpur_l_cuCtxPushCurrent_v2((CUcontext)(uintptr_t)id));
    *pctx = (CUcontext)(uintptr_t)id;
    return CUDA_SUCCESS;
}

CUresult xpur_c_cuCtxDestroy_v2(unsigned xo, CUcontext ctx)
{
    uint64_t id;
    TRY(xpur_handle_in(XPUR_H_CTX, (uint64_t)(uintptr_t)ctx, &id));
    if (!id)
        return CUDA_ERROR_INVALID_VALUE;
    struct xpur_call c;
    TRY(xpur_call_begin(&c, XPUR_API_cuCtxDestroy_v2, xo | XPUR_O_NOCTX));
    xpur_put_u64(&c.w, id);
    CUresult rc = xpur_call_end(&c, xpur_call_sync(&c));
    if (rc == CUDA_SUCCESS) {
        xpur_ctx_server_forget(id);
        cudacompat_context_destroyed(ctx);
    }
    return rc;
}

/* ------------------------------------------------------------------ memory */

CUresult xpur_c_cuMemAllocPitch_v2(unsigned xo, CUdeviceptr *dptr, size_t *pitch, size_t w, size_t h, unsigned int elem)
{
    if (!dptr || !pitch)
        return CUDA_ERROR_INVALID_VALUE;
    struct xpur_call c;
    TRY(xpur_call_begin(&c, XPUR_API_cuMemAllocPitch_v2, xo));
    xpur_put_u64(&c.w, w);
    xpur_put_u64(&c.w, h);
    xpur_put_u32(&c.w, elem);
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS) {
        *dptr = xpur_get_u64(&c.r);
        *pitch = xpur_get_u64(&c.r);
    }
    rc = xpur_call_end(&c, rc);
    if (rc == CUDA_SUCCESS)
        xpur_dev_add(*dptr, (uint64_t)*pitch * h);
    return rc;
}

/* pinned/registered host memory is the client's: answered here */
static int host_attr(int attr, CUdeviceptr ptr, uint64_t *v)
{
    void *base;
    size_t n;
    if (!xpur_host_find((void *)(uintptr_t)ptr, &base, &n, NULL, NULL))
        return 0;
    switch (attr) {
    case CU_POINTER_ATTRIBUTE_CONTEXT: *v = xpur_ctx_current(); break;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE: *v = CU_MEMORYTYPE_HOST; break;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
    case CU_POINTER_ATTRIBUTE_HOST_POINTER: *v = ptr; break;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: *v = (uint64_t)(uintptr_t)base; break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE: *v = n; break;
    case CU_POINTER_ATTRIBUTE_MAPPED: *v = 1; break;
    default: *v = 0;
    }
    return 1;
}

static void store_attr(void *data, int attr, uint64_t v)
{
    unsigned size = xpur_pointer_attr_size(attr);
    if (size == 8)
        memcpy(data, &v, 8);
    else if (size == 4) {
        uint32_t v32 = (uint32_t)v;
        memcpy(data, &v32, 4);
    }
}

static CUresult pointer_attrs(unsigned xo, unsigned n, const CUpointer_attribute *attrs, void **data, CUdeviceptr ptr,
                              int plural)
{
    if (!n || n > XPUR_MAX_POINTER_ATTRS || !attrs || !data)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t v;
    if (host_attr(attrs[0], ptr, &v)) {
        for (unsigned i = 0; i < n; i++) {
            host_attr(attrs[i], ptr, &v);
            if (data[i])
                store_attr(data[i], attrs[i], v);
        }
        return xpur_ready();
    }
    for (unsigned i = 0; i < n; i++)
        if (!xpur_pointer_attr_size(attrs[i]) && !plural)
            return CUDA_ERROR_INVALID_VALUE;
    struct xpur_call c;
    TRY(xpur_call_begin(&c, plural ? XPUR_API_cuPointerGetAttributes : XPUR_API_cuPointerGetAttribute, xo | XPUR_O_NOCTX));
    xpur_put_u32(&c.w, n);
    for (unsigned i = 0; i < n; i++)
        xpur_put_i32(&c.w, attrs[i]);
    xpur_put_u64(&c.w, ptr);
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS) {
        for (unsigned i = 0; i < n; i++) {
            int32_t st = xpur_get_i32(&c.r);
            uint64_t value = xpur_get_u64(&c.r);
            if (st != CUDA_SUCCESS) {
                if (!plural)
                    rc = st;
                value = 0; /* cuPointerGetAttributes reports unknown pointers as zeros */
            }
            if (data[i])
                store_attr(data[i], attrs[i], value);
        }
    }
    return xpur_call_end(&c, rc);
}

CUresult xpur_c_cuPointerGetAttribute(unsigned xo, void *data, CUpointer_attribute attr, CUdeviceptr ptr)
{
    void *d[1] = {data};
    if (!data)
        return CUDA_ERROR_INVALID_VALUE;
    return pointer_attrs(xo, 1, &attr, d, ptr, 0);
}

CUresult xpur_c_cuPointerGetAttributes(unsigned xo, unsigned int n, CUpointer_attribute *attrs, void **data,
                                       CUdeviceptr ptr)
{
    return pointer_attrs(xo, n, attrs, data, ptr, 1);
}

static CUresult mempool_attr(unsigned xo, CUmemoryPool pool, CUmemPool_attribute attr, void *value, int set)
{
    uint64_t id;
    unsigned size = xpur_mempool_attr_size(attr);
    if (!value || !size)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(xpur_handle_in(XPUR_H_POOL, (uint64_t)(uintptr_t)pool, &id));
    struct xpur_call c;
    TRY(xpur_call_begin(&c, set ? XPUR_API_cuMemPoolSetAttribute : XPUR_API_cuMemPoolGetAttribute, xo | XPUR_O_NOCTX));
    xpur_put_u64(&c.w, id);
    xpur_put_i32(&c.w, attr);
    if (set) {
        uint64_t v = 0;
        memcpy(&v, value, size);
        xpur_put_u64(&c.w, v);
    }
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS && !set) {
        uint64_t v = xpur_get_u64(&c.r);
        memcpy(value, &v, size);
    }
    return xpur_call_end(&c, rc);
}

CUresult xpur_c_cuMemPoolSetAttribute(unsigned xo, CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    return mempool_attr(xo, pool, attr, value, 1);
}
CUresult xpur_c_cuMemPoolGetAttribute(unsigned xo, CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    return mempool_attr(xo, pool, attr, value, 0);
}

CUresult xpur_c_cuMemSetAccess(unsigned xo, CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count)
{
    if (!desc || !count || count > XPUR_MAX_ACCESS_DESCS)
        return CUDA_ERROR_INVALID_VALUE;
    struct xpur_call c;
    TRY(xpur_call_begin(&c, XPUR_API_cuMemSetAccess, xo));
    xpur_put_u64(&c.w, ptr);
    xpur_put_u64(&c.w, size);
    xpur_put_u32(&c.w, (uint32_t)count);
    for (size_t i = 0; i < count; i++)
        xpur_put_bytes(&c.w, &desc[i], sizeof desc[i]);
    return xpur_call_end(&c, xpur_call_sync(&c));
}

/* ------------------------------------------------------------------ copies */

static size_t chunk_of(size_t left)
{
    size_t max = xpur_max_bulk();
    return left < max ? left : max;
}

/* host to device: fire-and-forget when async (the bytes are captured now, as the driver would
 * stage pageable memory), a round trip when synchronous (the caller sees the copy's status) */
static CUresult htod(unsigned xo, uint16_t api, uint8_t op, CUdeviceptr dst, const void *src, size_t n, uint64_t sid,
                     int async)
{
    if (!src && n)
        return CUDA_ERROR_INVALID_VALUE;
    size_t off = 0;
    do {
        size_t k = chunk_of(n - off);
        struct xpur_call c;
        TRY(xpur_call_begin(&c, api, xo | (async ? XPUR_O_ASYNC : 0)));
        if (op)
            xpur_put_u8(&c.w, op);
        xpur_put_u64(&c.w, dst + off);
        xpur_put_u64(&c.w, k);
        xpur_put_u64(&c.w, sid);
        if (async) {
            TRY(xpur_call_async_bulk(&c, (const uint8_t *)src + off, k));
        } else {
            TRY(xpur_call_end(&c, xpur_call_sync_bulk(&c, (const uint8_t *)src + off, k, NULL, 0)));
        }
        off += k;
    } while (off < n);
    return CUDA_SUCCESS;
}

static CUresult dtoh(unsigned xo, uint16_t api, uint8_t op, void *dst, CUdeviceptr src, size_t n, uint64_t sid)
{
    if (!dst && n)
        return CUDA_ERROR_INVALID_VALUE;
    size_t off = 0;
    do {
        size_t k = chunk_of(n - off);
        struct xpur_call c;
        TRY(xpur_call_begin(&c, api, xo));
        if (op)
            xpur_put_u8(&c.w, op);
        xpur_put_u64(&c.w, src + off);
        xpur_put_u64(&c.w, k);
        xpur_put_u64(&c.w, sid);
        TRY(xpur_call_end(&c, xpur_call_sync_bulk(&c, NULL, 0, (uint8_t *)dst + off, k)));
        off += k;
    } while (off < n);
    return CUDA_SUCCESS;
}

CUresult xpur_c_cuMemcpyHtoD_v2(unsigned xo, CUdeviceptr dst, const void *src, size_t n)
{
    return htod(xo, XPUR_API_cuMemcpyHtoD_v2, 0, dst, src, n, 0, 0);
}

CUresult xpur_c_cuMemcpyHtoDAsync_v2(unsigned xo, CUdeviceptr dst, const void *src, size_t n, CUstream s)
{
    uint64_t sid;
    TRY(stream_id(s, &sid));
    return htod(xo, XPUR_API_cuMemcpyHtoDAsync_v2, 0, dst, src, n, sid, 1);
}

CUresult xpur_c_cuMemcpyDtoH_v2(unsigned xo, void *dst, CUdeviceptr src, size_t n)
{
    return dtoh(xo, XPUR_API_cuMemcpyDtoH_v2, 0, dst, src, n, 0);
}

CUresult xpur_c_cuMemcpyDtoHAsync_v2(unsigned xo, void *dst, CUdeviceptr src, size_t n, CUstream s)
{
    uint64_t sid;
    TRY(stream_id(s, &sid));
    /* device to host completes before returning (the bytes must land in the caller's memory) */
    return dtoh(xo, XPUR_API_cuMemcpyDtoHAsync_v2, 0, dst, src, n, sid);
}

/* unified addressing: the client's view of device ranges decides the direction */
static CUresult unified(unsigned xo, uint16_t api, CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s, int async)
{
    uint64_t sid;
    TRY(stream_id(s, &sid));
    int dd = xpur_dev_known(dst), sd = xpur_dev_known(src);
    if (dd && sd) {
        struct xpur_call c;
        TRY(xpur_call_begin(&c, api, xo | XPUR_O_ASYNC));
        xpur_put_u8(&c.w, 3);
        xpur_put_u64(&c.w, dst);
        xpur_put_u64(&c.w, src);
        xpur_put_u64(&c.w, n);
        xpur_put_u64(&c.w, sid);
        return xpur_call_async(&c);
    }
    if (dd)
        return htod(xo, api, 1, dst, (const void *)(uintptr_t)src, n, sid, async);
    if (sd)
        return dtoh(xo, api, 2, (void *)(uintptr_t)dst, src, n, sid);
    /* host to host: ordered after the stream's work */
    if (async) {
        struct xpur_call c;
        TRY(xpur_call_begin(&c, XPUR_API_cuStreamSynchronize, xo | XPUR_O_SYNCPOINT));
        xpur_put_u64(&c.w, sid);
        TRY(xpur_call_end(&c, xpur_call_sync(&c)));
    } else {
        TRY(xpur_ready());
    }
    memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}

CUresult xpur_c_cuMemcpy(unsigned xo, CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    return unified(xo, XPUR_API_cuMemcpy, dst, src, n, NULL, 0);
}
CUresult xpur_c_cuMemcpyAsync(unsigned xo, CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    return unified(xo, XPUR_API_cuMemcpyAsync, dst, src, n, s, 1);
}
CUresult xpur_c_cuMemcpyPeer(unsigned xo, CUdeviceptr dst, CUcontext dctx, CUdeviceptr src, CUcontext sctx, size_t n)
{
    (void)dctx;
    (void)sctx; /* one device per session: a peer copy is a device copy */
    return unified(xo, XPUR_API_cuMemcpyPeer, dst, src, n, NULL, 0);
}
CUresult xpur_c_cuMemcpyPeerAsync(unsigned xo, CUdeviceptr dst, CUcontext dctx, CUdeviceptr src, CUcontext sctx,
                                  size_t n, CUstream s)
{
    (void)dctx;
    (void)sctx;
    return unified(xo, XPUR_API_cuMemcpyPeerAsync, dst, src, n, s, 1);
}

static CUmemorytype resolve_type(CUmemorytype t, CUdeviceptr dev, const void *host)
{
    if (t != CU_MEMORYTYPE_UNIFIED)
        return t;
    return xpur_dev_known(dev ? dev : (CUdeviceptr)(uintptr_t)host) ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
}

static CUresult copy2d(unsigned xo, uint16_t api, const CUDA_MEMCPY2D *p, CUstream s, int async)
{
    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t sid;
    TRY(stream_id(s, &sid));
    CUDA_MEMCPY2D c = *p;
    c.srcMemoryType = resolve_type(p->srcMemoryType, p->srcDevice, p->srcHost);
    c.dstMemoryType = resolve_type(p->dstMemoryType, p->dstDevice, p->dstHost);
    if (p->srcMemoryType == CU_MEMORYTYPE_UNIFIED && c.srcMemoryType == CU_MEMORYTYPE_DEVICE && !p->srcDevice)
        c.srcDevice = (CUdeviceptr)(uintptr_t)p->srcHost;
    if (p->dstMemoryType == CU_MEMORYTYPE_UNIFIED && c.dstMemoryType == CU_MEMORYTYPE_DEVICE && !p->dstDevice)
        c.dstDevice = (CUdeviceptr)(uintptr_t)p->dstHost;
    int src_host = c.srcMemoryType == CU_MEMORYTYPE_HOST, dst_host = c.dstMemoryType == CU_MEMORYTYPE_HOST;
    if (c.srcMemoryType == CU_MEMORYTYPE_ARRAY || c.dstMemoryType == CU_MEMORYTYPE_ARRAY)
        return CUDA_ERROR_NOT_SUPPORTED;
    size_t w = c.WidthInBytes, h = c.Height;
    if (src_host && dst_host) { /* both in the client's memory */
        TRY(xpur_ready());
        for (size_t y = 0; y < h; y++)
            memmove((uint8_t *)c.dstHost + (c.dstY + y) * c.dstPitch + c.dstXInBytes,
                    (const uint8_t *)c.srcHost + (c.srcY + y) * c.srcPitch + c.srcXInBytes, w);
        return CUDA_SUCCESS;
    }
    if (h && w > SIZE_MAX / h)
        return CUDA_ERROR_INVALID_VALUE;
    size_t packed = w * h;
    if (packed > xpur_max_bulk())
        return CUDA_ERROR_NOT_SUPPORTED; /* larger 2D copies: split by the caller */
    uint8_t *buf = NULL;
    if ((src_host || dst_host) && packed && !(buf = malloc(packed)))
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (src_host)
        for (size_t y = 0; y < h; y++)
            memcpy(buf + y * w, (const uint8_t *)c.srcHost + (c.srcY + y) * c.srcPitch + c.srcXInBytes, w);
    CUDA_MEMCPY2D wire = c;
    wire.srcHost = NULL; /* never send a client address */
    wire.dstHost = NULL;
    struct xpur_call call;
    CUresult rc = xpur_call_begin(&call, api, xo);
    if (rc) {
        free(buf);
        return rc;
    }
    xpur_put_bytes(&call.w, &wire, sizeof wire);
    xpur_put_u64(&call.w, sid);
    (void)async;
    if (src_host)
        rc = xpur_call_end(&call, xpur_call_sync_bulk(&call, buf, packed, NULL, 0));
    else if (dst_host)
        rc = xpur_call_end(&call, xpur_call_sync_bulk(&call, NULL, 0, buf, packed));
    else
        rc = xpur_call_end(&call, xpur_call_sync(&call));
    if (rc == CUDA_SUCCESS && dst_host)
        for (size_t y = 0; y < h; y++)
            memcpy((uint8_t *)c.dstHost + (c.dstY + y) * c.dstPitch + c.dstXInBytes, buf + y * w, w);
    free(buf);
    return rc;
}

CUresult xpur_c_cuMemcpy2D_v2(unsigned xo, const CUDA_MEMCPY2D *p) { return copy2d(xo, XPUR_API_cuMemcpy2D_v2, p, NULL, 0); }
CUresult xpur_c_cuMemcpy2DUnaligned_v2(unsigned xo, const CUDA_MEMCPY2D *p)
{
    return copy2d(xo, XPUR_API_cuMemcpy2DUnaligned_v2, p, NULL, 0);
}
CUresult xpur_c_cuMemcpy2DAsync_v2(unsigned xo, const CUDA_MEMCPY2D *p, CUstream s)
{
    return copy2d(xo, XPUR_API_cuMemcpy2DAsync_v2, p, s, 1);
}

/* ------------------------------------------------------------------ capture and host callbacks */

static CUresult capture_info(unsigned xo, uint16_t api, CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id,
                             CUgraph *g, const CUgraphNode **deps, const CUgraphEdgeData **edges, size_t *ndeps)
{
    uint64_t sid;
    if (!st)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(stream_id(s, &sid));
    struct xpur_call c;
    TRY(xpur_call_begin(&c, api, xo));
    xpur_put_u64(&c.w, sid);
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS) {
        *st = (CUstreamCaptureStatus)xpur_get_i32(&c.r);
        uint64_t cid = xpur_get_u64(&c.r), gid = xpur_get_u64(&c.r);
        if (id)
            *id = cid;
        if (g)
            *g = (CUgraph)(uintptr_t)gid;
        /* dependency node lists are not remoted: an empty set (callers then add no edges) */
        if (deps)
            *deps = NULL;
        if (edges)
            *edges = NULL;
        if (ndeps)
            *ndeps = 0;
    }
    return xpur_call_end(&c, rc);
}

CUresult xpur_c_cuStreamGetCaptureInfo_v2(unsigned xo, CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id,
                                          CUgraph *g, const CUgraphNode **deps, size_t *ndeps)
{
    return capture_info(xo, XPUR_API_cuStreamGetCaptureInfo_v2, s, st, id, g, deps, NULL, ndeps);
}

CUresult xpur_c_cuStreamGetCaptureInfo_v3(unsigned xo, CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id,
                                          CUgraph *g, const CUgraphNode **deps, const CUgraphEdgeData **edges,
                                          size_t *ndeps)
{
    return capture_info(xo, XPUR_API_cuStreamGetCaptureInfo_v3, s, st, id, g, deps, edges, ndeps);
}

CUresult xpur_c_cuThreadExchangeStreamCaptureMode(unsigned xo, CUstreamCaptureMode *mode)
{
    if (!mode)
        return CUDA_ERROR_INVALID_VALUE;
    struct xpur_call c;
    TRY(xpur_call_begin(&c, XPUR_API_cuThreadExchangeStreamCaptureMode, xo | XPUR_O_NOCTX));
    xpur_put_i32(&c.w, *mode);
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS)
        *mode = (CUstreamCaptureMode)xpur_get_i32(&c.r);
    return xpur_call_end(&c, rc);
}

/* host functions run here, in the caller's thread, once the stream's earlier work is done on the
 * server (stronger ordering than a driver thread; the callback may not call CUDA either way) */
static CUresult stream_done(unsigned xo, uint16_t api, CUstream s)
{
    uint64_t sid;
    TRY(stream_id(s, &sid));
    struct xpur_call c;
    TRY(xpur_call_begin(&c, api, xo));
    xpur_put_u64(&c.w, sid);
    return xpur_call_end(&c, xpur_call_sync(&c));
}

CUresult xpur_c_cuStreamAddCallback(unsigned xo, CUstream s, CUstreamCallback cb, void *user, unsigned int flags)
{
    if (!cb || flags)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = stream_done(xo, XPUR_API_cuStreamAddCallback, s);
    if (rc == CUDA_ERROR_DEVICE_UNAVAILABLE || rc == CUDA_ERROR_NOT_INITIALIZED || rc == CUDA_ERROR_INVALID_HANDLE)
        return rc;
    cb(s, rc, user);
    return CUDA_SUCCESS;
}

CUresult xpur_c_cuLaunchHostFunc(unsigned xo, CUstream s, CUhostFn fn, void *user)
{
    if (!fn)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(stream_done(xo, XPUR_API_cuLaunchHostFunc, s));
    fn(user);
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ modules */

static CUresult load_image(unsigned xo, uint16_t api, uint8_t kind, const void *image, uint64_t *id, unsigned opts)
{
    if (!image)
        return CUDA_ERROR_INVALID_VALUE;
    const void *start = image;
    size_t size = xpur_image_size(image, &start);
    if (!size)
        return CUDA_ERROR_INVALID_IMAGE;
    if (size > xpur_max_bulk())
        return CUDA_ERROR_NOT_SUPPORTED;
    unsigned char sha[32];
    if (xpur_sha256(start, size, sha))
        return CUDA_ERROR_UNKNOWN;
    for (int attempt = 0; attempt < 2; attempt++) { /* the hash first; the image only on a miss */
        struct xpur_call c;
        TRY(xpur_call_begin(&c, api, xo | opts));
        xpur_put_u8(&c.w, kind);
        xpur_put_bytes(&c.w, sha, 32);
        xpur_put_u64(&c.w, size);
        CUresult rc = attempt ? xpur_call_sync_bulk(&c, start, size, NULL, 0) : xpur_call_sync(&c);
        if (rc == CUDA_SUCCESS)
            *id = xpur_get_u64(&c.r);
        rc = xpur_call_end(&c, rc);
        if (rc != (CUresult)XPUR_STATUS_NEED_IMAGE)
            return rc;
    }
    return CUDA_ERROR_INVALID_IMAGE;
}

/* the whole file, NUL-terminated; load_image finds the image's size from its format */
static void *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap + 1);
    while (b) {
        size_t r = fread(b + len, 1, cap - len, f);
        len += r;
        if (len < cap)
            break;
        char *nb = cap < (1ull << 31) ? realloc(b, cap * 2 + 1) : NULL;
        if (!nb) {
            free(b);
            b = NULL;
            break;
        }
        b = nb;
        cap *= 2;
    }
    fclose(f);
    if (b)
        b[len] = 0; /* PTX text is NUL-terminated */
    return b;
}

CUresult xpur_c_cuModuleLoadData(unsigned xo, CUmodule *mod, const void *image)
{
    uint64_t id;
    if (!mod)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(load_image(xo, XPUR_API_cuModuleLoadData, XPUR_IMAGE_MODULE, image, &id, 0));
    *mod = (CUmodule)(uintptr_t)id;
    return CUDA_SUCCESS;
}

CUresult xpur_c_cuModuleLoadDataEx(unsigned xo, CUmodule *mod, const void *image, unsigned int n, CUjit_option *opts,
                                   void **vals)
{
    uint64_t id;
    if (!mod || (n && (!opts || !vals)))
        return CUDA_ERROR_INVALID_VALUE;
    TRY(load_image(xo, XPUR_API_cuModuleLoadDataEx, XPUR_IMAGE_MODULE, image, &id, 0));
    /* JIT options are not forwarded; report empty logs to callers that asked for them */
    for (unsigned i = 0; i < n; i++) {
        if (opts[i] == CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES || opts[i] == CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
            vals[i] = (void *)(uintptr_t)0;
        else if (opts[i] == CU_JIT_WALL_TIME)
            memset(&vals[i], 0, sizeof(float));
    }
    *mod = (CUmodule)(uintptr_t)id;
    return CUDA_SUCCESS;
}

CUresult xpur_c_cuModuleLoadFatBinary(unsigned xo, CUmodule *mod, const void *fat)
{
    uint64_t id;
    if (!mod)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(load_image(xo, XPUR_API_cuModuleLoadFatBinary, XPUR_IMAGE_FATBINARY, fat, &id, 0));
    *mod = (CUmodule)(uintptr_t)id;
    return CUDA_SUCCESS;
}

CUresult xpur_c_cuModuleLoad(unsigned xo, CUmodule *mod, const char *path)
{
    if (!mod || !path)
        return CUDA_ERROR_INVALID_VALUE;
    void *b = read_file(path); /* the client's file, read here: the server never opens client paths */
    if (!b)
        return CUDA_ERROR_FILE_NOT_FOUND;
    uint64_t id;
    CUresult rc = load_image(xo, XPUR_API_cuModuleLoad, XPUR_IMAGE_MODULE, b, &id, 0);
    free(b);
    if (rc == CUDA_SUCCESS)
        *mod = (CUmodule)(uintptr_t)id;
    return rc;
}

CUresult xpur_c_cuLibraryLoadData(unsigned xo, CUlibrary *lib, const void *code, CUjit_option *jo, void **jv,
                                  unsigned int nj, CUlibraryOption *lo, void **lv, unsigned int nl)
{
    (void)jo;
    (void)jv;
    (void)nj;
    (void)lo;
    (void)lv;
    (void)nl; /* options are not forwarded (the image is copied on the server) */
    uint64_t id;
    if (!lib)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(xpur_ready());
    TRY(load_image(xo, XPUR_API_cuLibraryLoadData, XPUR_IMAGE_LIBRARY, code, &id, XPUR_O_NOCTX));
    *lib = (CUlibrary)(uintptr_t)id;
    return CUDA_SUCCESS;
}

CUresult xpur_c_cuLibraryLoadFromFile(unsigned xo, CUlibrary *lib, const char *path, CUjit_option *jo, void **jv,
                                      unsigned int nj, CUlibraryOption *lo, void **lv, unsigned int nl)
{
    (void)jo;
    (void)jv;
    (void)nj;
    (void)lo;
    (void)lv;
    (void)nl;
    if (!lib || !path)
        return CUDA_ERROR_INVALID_VALUE;
    void *b = read_file(path);
    if (!b)
        return CUDA_ERROR_FILE_NOT_FOUND;
    uint64_t id;
    CUresult rc = load_image(xo, XPUR_API_cuLibraryLoadFromFile, XPUR_IMAGE_LIBRARY, b, &id, XPUR_O_NOCTX);
    free(b);
    if (rc == CUDA_SUCCESS)
        *lib = (CUlibrary)(uintptr_t)id;
    return rc;
}

/* the reply of GetFunction / GetKernel: id + parameter layout, remembered for launches */
static CUresult take_function(struct xpur_call *c, const char *name, uint64_t *id)
{
    *id = xpur_get_u64(&c->r);
    uint32_t n = xpur_get_u32(&c->r);
    struct xpur_func_info *f = calloc(1, sizeof *f);
    if (!f)
        return CUDA_ERROR_OUT_OF_MEMORY;
    snprintf(f->name, sizeof f->name, "%s", name ? name : "");
    f->n = n;
    if (n != XPUR_PARAMS_UNKNOWN) {
        if (n > 4096 || !(f->off = calloc(2 * (size_t)n + 1, sizeof *f->off))) {
            free(f);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        f->size = f->off + n;
        for (uint32_t i = 0; i < n; i++) {
            f->off[i] = xpur_get_u32(&c->r);
            f->size[i] = xpur_get_u32(&c->r);
            if (f->off[i] + f->size[i] > f->total)
                f->total = f->off[i] + f->size[i];
        }
    }
    if (c->r.bad) {
        free(f->off);
        free(f);
        return CUDA_ERROR_UNKNOWN;
    }
    xpur_func_put(*id, f);
    return CUDA_SUCCESS;
}

CUresult xpur_c_cuModuleGetFunction(unsigned xo, CUfunction *fn, CUmodule mod, const char *name)
{
    uint64_t mid, id = 0;
    if (!fn || !name)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(xpur_handle_in(XPUR_H_MODULE, (uint64_t)(uintptr_t)mod, &mid));
    struct xpur_call c;
    TRY(xpur_call_begin(&c, XPUR_API_cuModuleGetFunction, xo));
    xpur_put_u64(&c.w, mid);
    xpur_put_str(&c.w, name, XPUR_LIMIT_MAX_STRING);
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS)
        rc = take_function(&c, name, &id);
    rc = xpur_call_end(&c, rc);
    if (rc == CUDA_SUCCESS)
        *fn = (CUfunction)(uintptr_t)id;
    return rc;
}

CUresult xpur_c_cuLibraryGetKernel(unsigned xo, CUkernel *k, CUlibrary lib, const char *name)
{
    uint64_t lid, id = 0;
    if (!k || !name)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(xpur_handle_in(XPUR_H_LIBRARY, (uint64_t)(uintptr_t)lib, &lid));
    struct xpur_call c;
    TRY(xpur_call_begin(&c, XPUR_API_cuLibraryGetKernel, xo | XPUR_O_NOCTX));
    xpur_put_u64(&c.w, lid);
    xpur_put_str(&c.w, name, XPUR_LIMIT_MAX_STRING);
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS)
        rc = take_function(&c, name, &id);
    rc = xpur_call_end(&c, rc);
    if (rc == CUDA_SUCCESS)
        *k = (CUkernel)(uintptr_t)id;
    return rc;
}

CUresult xpur_c_cuKernelGetFunction(unsigned xo, CUfunction *fn, CUkernel k)
{
    uint64_t kid, id = 0;
    if (!fn)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(xpur_handle_in(XPUR_H_KERNEL, (uint64_t)(uintptr_t)k, &kid));
    const struct xpur_func_info *ki = xpur_func_get(kid);
    struct xpur_call c;
    TRY(xpur_call_begin(&c, XPUR_API_cuKernelGetFunction, xo));
    xpur_put_u64(&c.w, kid);
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS)
        rc = take_function(&c, ki ? ki->name : "", &id);
    rc = xpur_call_end(&c, rc);
    if (rc == CUDA_SUCCESS)
        *fn = (CUfunction)(uintptr_t)id;
    return rc;
}

/* ------------------------------------------------------------------ launches */

static CUresult launch_common(struct xpur_call *c, uint64_t fid, const unsigned g[3], const unsigned b[3], unsigned shm,
                              uint64_t sid, void **params, void **extra)
{
    xpur_put_u64(&c->w, fid);
    for (int i = 0; i < 3; i++)
        xpur_put_u32(&c->w, g[i]);
    for (int i = 0; i < 3; i++)
        xpur_put_u32(&c->w, b[i]);
    xpur_put_u32(&c->w, shm);
    xpur_put_u64(&c->w, sid);
    if (extra) {
        const void *buf = NULL;
        size_t size = 0;
        for (int i = 0; extra[i] != CU_LAUNCH_PARAM_END && i < 16; i += 2) {
            if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER)
                buf = extra[i + 1];
            else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE && extra[i + 1])
                size = *(const size_t *)extra[i + 1];
            else
                return CUDA_ERROR_INVALID_VALUE;
        }
        if ((!buf && size) || size > 32764)
            return CUDA_ERROR_INVALID_VALUE;
        xpur_put_u32(&c->w, XPUR_LAUNCH_EXTRA_BUFFER);
        xpur_put_u32(&c->w, (uint32_t)size);
        xpur_put_bytes(&c->w, buf, size);
        return CUDA_SUCCESS;
    }
    const struct xpur_func_info *f = xpur_func_get(fid);
    xpur_put_u32(&c->w, 0);
    if (!params || !f || f->n == 0) {
        if (params && (!f || f->n == XPUR_PARAMS_UNKNOWN))
            return CUDA_ERROR_NOT_SUPPORTED; /* the server could not tell this function's parameters */
        xpur_put_u32(&c->w, 0);
        return CUDA_SUCCESS;
    }
    if (f->n == XPUR_PARAMS_UNKNOWN)
        return CUDA_ERROR_NOT_SUPPORTED;
    xpur_put_u32(&c->w, f->total);
    uint8_t *dst = xpur_wbuf_take(&c->w, f->total);
    if (!dst)
        return CUDA_ERROR_INVALID_VALUE;
    memset(dst, 0, f->total);
    for (uint32_t i = 0; i < f->n; i++) {
        if (!params[i])
            return CUDA_ERROR_INVALID_VALUE;
        memcpy(dst + f->off[i], params[i], f->size[i]);
    }
    return CUDA_SUCCESS;
}

static CUresult launch(unsigned xo, uint16_t api, CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                       unsigned by, unsigned bz, unsigned shm, CUstream s, void **params, void **extra)
{
    uint64_t fid, sid;
    TRY(xpur_handle_in(XPUR_H_FUNC, (uint64_t)(uintptr_t)f, &fid));
    TRY(stream_id(s, &sid));
    if (!fid)
        return CUDA_ERROR_INVALID_HANDLE;
    unsigned g[3] = {gx, gy, gz}, b[3] = {bx, by, bz};
    struct xpur_call c;
    TRY(xpur_call_begin(&c, api, xo | XPUR_O_ASYNC));
    CUresult rc = launch_common(&c, fid, g, b, shm, sid, params, extra);
    if (rc) {
        xpur_call_abort(&c);
        return rc;
    }
    return xpur_call_async(&c);
}

CUresult xpur_c_cuLaunchKernel(unsigned xo, CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                               unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm, CUstream s,
                               void **params, void **extra)
{
    return launch(xo, XPUR_API_cuLaunchKernel, f, gx, gy, gz, bx, by, bz, shm, s, params, extra);
}

CUresult xpur_c_cuLaunchCooperativeKernel(unsigned xo, CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                          unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm,
                                          CUstream s, void **params)
{
    return launch(xo, XPUR_API_cuLaunchCooperativeKernel, f, gx, gy, gz, bx, by, bz, shm, s, params, NULL);
}

CUresult xpur_c_cuLaunchKernelEx(unsigned xo, const CUlaunchConfig *cfg, CUfunction f, void **params, void **extra)
{
    uint64_t fid, sid;
    if (!cfg || cfg->numAttrs > XPUR_MAX_LAUNCH_ATTRS || (cfg->numAttrs && !cfg->attrs))
        return CUDA_ERROR_INVALID_VALUE;
    TRY(xpur_handle_in(XPUR_H_FUNC, (uint64_t)(uintptr_t)f, &fid));
    TRY(stream_id(cfg->hStream, &sid));
    for (unsigned i = 0; i < cfg->numAttrs; i++) { /* event handles are ids already; check their kind */
        uint64_t e;
        const CUlaunchAttribute *a = &cfg->attrs[i];
        if (a->id == CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT)
            TRY(xpur_handle_in(XPUR_H_EVENT, (uint64_t)(uintptr_t)a->value.programmaticEvent.event, &e));
        if (a->id == CU_LAUNCH_ATTRIBUTE_LAUNCH_COMPLETION_EVENT)
            TRY(xpur_handle_in(XPUR_H_EVENT, (uint64_t)(uintptr_t)a->value.launchCompletionEvent.event, &e));
    }
    unsigned g[3] = {cfg->gridDimX, cfg->gridDimY, cfg->gridDimZ}, b[3] = {cfg->blockDimX, cfg->blockDimY, cfg->blockDimZ};
    struct xpur_call c;
    TRY(xpur_call_begin(&c, XPUR_API_cuLaunchKernelEx, xo | XPUR_O_ASYNC));
    CUresult rc = launch_common(&c, fid, g, b, cfg->sharedMemBytes, sid, params, extra);
    if (rc) {
        xpur_call_abort(&c);
        return rc;
    }
    xpur_put_u32(&c.w, cfg->numAttrs);
    for (unsigned i = 0; i < cfg->numAttrs; i++)
        xpur_put_bytes(&c.w, &cfg->attrs[i], sizeof cfg->attrs[i]);
    return xpur_call_async(&c);
}

static CUresult occupancy(unsigned xo, uint16_t api, int *grid, int *block, CUfunction f, CUoccupancyB2DSize cb,
                          size_t smem, int limit, unsigned flags)
{
    uint64_t fid;
    if (!grid || !block)
        return CUDA_ERROR_INVALID_VALUE;
    if (cb)
        return CUDA_ERROR_NOT_SUPPORTED; /* a host callback cannot run on the server */
    TRY(xpur_handle_in(XPUR_H_FUNC, (uint64_t)(uintptr_t)f, &fid));
    struct xpur_call c;
    TRY(xpur_call_begin(&c, api, xo));
    xpur_put_u64(&c.w, fid);
    xpur_put_u64(&c.w, smem);
    xpur_put_i32(&c.w, limit);
    xpur_put_u32(&c.w, flags);
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS) {
        *grid = xpur_get_i32(&c.r);
        *block = xpur_get_i32(&c.r);
    }
    return xpur_call_end(&c, rc);
}

CUresult xpur_c_cuOccupancyMaxPotentialBlockSize(unsigned xo, int *grid, int *block, CUfunction f,
                                                 CUoccupancyB2DSize cb, size_t smem, int limit)
{
    return occupancy(xo, XPUR_API_cuOccupancyMaxPotentialBlockSize, grid, block, f, cb, smem, limit, 0);
}

CUresult xpur_c_cuOccupancyMaxPotentialBlockSizeWithFlags(unsigned xo, int *grid, int *block, CUfunction f,
                                                          CUoccupancyB2DSize cb, size_t smem, int limit,
                                                          unsigned int flags)
{
    return occupancy(xo, XPUR_API_cuOccupancyMaxPotentialBlockSizeWithFlags, grid, block, f, cb, smem, limit, flags);
}

/* ------------------------------------------------------------------ graphs */

CUresult xpur_c_cuGraphInstantiateWithParams(unsigned xo, CUgraphExec *exec, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p)
{
    uint64_t gid, sid;
    if (!exec || !p)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(xpur_handle_in(XPUR_H_GRAPH, (uint64_t)(uintptr_t)g, &gid));
    TRY(stream_id(p->hUploadStream, &sid));
    struct xpur_call c;
    TRY(xpur_call_begin(&c, XPUR_API_cuGraphInstantiateWithParams, xo));
    xpur_put_u64(&c.w, gid);
    xpur_put_u64(&c.w, p->flags);
    xpur_put_u64(&c.w, sid);
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS) {
        *exec = (CUgraphExec)(uintptr_t)xpur_get_u64(&c.r);
        p->result_out = (CUgraphInstantiateResult)xpur_get_i32(&c.r);
        p->hErrNode_out = NULL;
    }
    return xpur_call_end(&c, rc);
}

static CUresult graph_mem(unsigned xo, uint16_t api, CUdevice dev, CUgraphMem_attribute attr, void *value, int set)
{
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(xpur_dev_in(dev));
    struct xpur_call c;
    TRY(xpur_call_begin(&c, api, xo | XPUR_O_NOCTX));
    xpur_put_i32(&c.w, 0);
    xpur_put_i32(&c.w, attr);
    if (set)
        xpur_put_u64(&c.w, *(cuuint64_t *)value);
    CUresult rc = xpur_call_sync(&c);
    if (rc == CUDA_SUCCESS && !set)
        *(cuuint64_t *)value = xpur_get_u64(&c.r);
    return xpur_call_end(&c, rc);
}

CUresult xpur_c_cuDeviceGetGraphMemAttribute(unsigned xo, CUdevice dev, CUgraphMem_attribute attr, void *value)
{
    return graph_mem(xo, XPUR_API_cuDeviceGetGraphMemAttribute, dev, attr, value, 0);
}
CUresult xpur_c_cuDeviceSetGraphMemAttribute(unsigned xo, CUdevice dev, CUgraphMem_attribute attr, void *value)
{
    return graph_mem(xo, XPUR_API_cuDeviceSetGraphMemAttribute, dev, attr, value, 1);
}
