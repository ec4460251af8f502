/*
 * The remoting client: a libcuda.so.1 for machines without a GPU. Internal interface between the
 * generated stubs (xpur_client_stubs.c), the local answers (client_local.c), the custom codecs
 * (client_custom.c) and the channel (client_core.c).
 *
 * One channel per process, one ordered connection. Fire-and-forget calls are appended to a send
 * buffer and flushed at the next synchronous call, at 64 KiB or 256 calls, or 50 us after the first
 * buffered call; a synchronous call flushes, then waits for its reply (the server's WAITING frames
 * keep it alive through long driver calls; silence past the timeout means the session is lost).
 * A lost session makes every later call return the same error, immediately: never a hang.
 *
 * Configuration (read once, at cuInit): XPUPOOL_REMOTE_ENDPOINT (host:port, [v6]:port or
 * unix:/path), XPUPOOL_REMOTE_TOKEN or XPUPOOL_REMOTE_TOKEN_FILE, XPUPOOL_REMOTE_CA (PEM bundle:
 * TLS, required for TCP unless XPUPOOL_REMOTE_INSECURE=1), XPUPOOL_REMOTE_SERVER_NAME (the name the
 * certificate must carry; default: the endpoint host), XPUPOOL_REMOTE_TIMEOUT_MS (default 2500),
 * XPUPOOL_REMOTE_LOG (0 quiet, 1 errors (default), 2 info).
 */
#ifndef XPUR_CLIENT_H
#define XPUR_CLIENT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "hmap.h"
#include "xpur_api.h"
#include "xpur_handles.h"
#include "xpur_protocol.h"
#include "xpur_wire.h"

#define XPUR_EXPORT __attribute__((visibility("default")))

/* a call being encoded (send side) and, for synchronous calls, its decoded reply */
struct xpur_call {
    struct xpur_wbuf w;
    struct xpur_rbuf r;
    uint8_t *frame;
    uint16_t api;
    unsigned opts;
};

CUresult xpur_call_begin(struct xpur_call *c, uint16_t api, unsigned opts);
/* fire-and-forget: completes the frame and releases the channel */
CUresult xpur_call_async(struct xpur_call *c);
/* the same with bulk bytes after the arguments (host-to-device data), sent without copying */
CUresult xpur_call_async_bulk(struct xpur_call *c, const void *bulk, size_t n);
/* synchronous: flush, wait for the reply; the channel stays held until xpur_call_end */
CUresult xpur_call_sync(struct xpur_call *c);
/* synchronous with bulk out (may be NULL/0) and reply bulk into `in` (in_len bytes, then the
 * server's final status, see xpur_custom_wire.h) */
CUresult xpur_call_sync_bulk(struct xpur_call *c, const void *out, size_t out_len, void *in, size_t in_len);
CUresult xpur_call_end(struct xpur_call *c, CUresult rc);
/* abandon a begun call without sending it */
void xpur_call_abort(struct xpur_call *c);

/* handles: the id of an application handle of `kind` (0 and stream sentinels pass) */
CUresult xpur_handle_in(unsigned kind, uint64_t value, uint64_t *id);
uint64_t xpur_handle_new(unsigned kind);
CUresult xpur_dev_in(CUdevice dev);
CUresult xpur_unsupported(uint16_t api);

/* the session's device, from WELCOME */
struct xpur_device {
    char name[256];
    unsigned char uuid[16];
    uint64_t total_mem;
    char pci[64];
    int driver_version;
    int prio_least, prio_greatest;
    int attr[CU_DEVICE_ATTRIBUTE_MAX];
    unsigned char attr_known[CU_DEVICE_ATTRIBUTE_MAX];
};

/* CUDA_SUCCESS once cuInit connected; else the error every call reports */
CUresult xpur_ready(void);
const struct xpur_device *xpur_device(void);
uint32_t xpur_max_bulk(void);

/* current context of the calling thread (a context id; 0: none) */
uint64_t xpur_ctx_current(void);
void xpur_ctx_set_current(uint64_t id);
/* the server made `id` current on its side (cuCtxCreate) / forgot it (cuCtxDestroy) */
void xpur_ctx_server_current(uint64_t id);
void xpur_ctx_server_forget(uint64_t id);

/* host memory the client owns or registered (pinned allocations) */
int xpur_host_add(void *p, size_t n, unsigned flags, int owned);
int xpur_host_find(const void *p, void **base, size_t *n, unsigned *flags, int *owned);
int xpur_host_del(void *p);
/* device ranges known to this client (for unified copies and pointer queries) */
void xpur_dev_add(uint64_t p, uint64_t n);
void xpur_dev_del(uint64_t p);
int xpur_dev_known(uint64_t p);

/* kernel parameter layouts learned from the server */
struct xpur_func_info {
    char name[256];
    uint32_t n, total; /* n == XPUR_PARAMS_UNKNOWN: not known */
    uint32_t *off, *size;
};
void xpur_func_put(uint64_t id, struct xpur_func_info *info);
const struct xpur_func_info *xpur_func_get(uint64_t id);

void xpur_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* (re)install the cudacompat backend with the driver version cuDriverGetVersion reports */
void xpur_compat_install(int driver_version);
/* the primary context's id (0 until it was retained) and its reset (cudart context-local state) */
uint64_t xpur_primary_ctx(void);

/* module images: byte size of an image (cubin ELF, fatbin, fatbin wrapper or PTX), 0 if unknown */
size_t xpur_image_size(const void *image, const void **start);

#endif
