/*
 * xpu-remoted session worker: one process per authenticated session, bound to one card, with
 * libxpushim loaded so the slice (memory quota, compute share) is enforced by the same code and
 * per-card ledger as local tenants.
 *
 * Data flow: frames arrive in order on one connection; each CALL is validated (header, then its
 * arguments by the generated decoder, then every handle against this session's table and every
 * device range against this session's allocations) before the backend sees it. Fire-and-forget
 * calls reply nothing; their first failure is latched and carried by the next reply. Nothing is
 * allocated for a frame before its header and arguments are validated.
 */
#ifndef XPUR_SESSION_H
#define XPUR_SESSION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "conn.h"
#include "hmap.h"
#include "stats.h"
#include "xpur_api.h"
#include "xpur_custom_wire.h"
#include "xpur_handles.h"
#include "xpur_protocol.h"
#include "xpur_wire.h"


/* ---- device ranges this session may touch */
enum xpur_range_kind { XPUR_RK_ALLOC = 1, XPUR_RK_GLOBAL, XPUR_RK_MAPPED, XPUR_RK_RESERVED };
struct xpur_range {
    uint64_t base, end;
    uint8_t kind;
};
struct xpur_ranges {
    struct xpur_range *v;
    size_t n, cap;
    uint64_t alloc_bytes; /* live bytes of XPUR_RK_ALLOC ranges */
};
enum xpur_track_action {
    XPUR_TRACK_ALLOC, XPUR_TRACK_FREE, XPUR_TRACK_GLOBAL, XPUR_TRACK_RESERVE, XPUR_TRACK_UNRESERVE,
    XPUR_TRACK_MAP, XPUR_TRACK_UNMAP,
};

/* per-function kernel parameter layout learned on the server (cuFuncGetParamInfo) */
#define XPUR_MAX_PARAMS 1024
#define XPUR_MAX_PARAM_BYTES 32764 /* CUDA 12.1+ limit on kernel parameter space */

struct xpur_module_cache; /* module images by SHA-256 (srv_custom.c) */

struct xpur_req {
    struct xpur_hdr hdr;
    struct xpur_rbuf in;  /* the arguments */
    int32_t status;       /* CUresult, or XPUR_STATUS_NEED_IMAGE */
    struct xpur_wbuf out; /* reply fields, kept only when status == CUDA_SUCCESS */
    const void *bulk_out; /* data that follows the reply fields (device-to-host copies) */
    uint32_t bulk_out_len;
    uint32_t bulk_in_left; /* bulk bytes of this frame still unread on the connection */
    int malformed;         /* protocol violation (refused, answered with ERROR): the session ends */
    int lost;              /* the connection broke in the middle of the frame: the session ends */
    /* streamed reply bulk (device-to-host copies): called after the reply header and fields are
     * sent; must send exactly bulk_out_len bytes; returns 0, else -1 (session lost) */
    int (*bulk_stream)(struct xpur_session *s, struct xpur_req *q);
    uint64_t ctx[20]; /* the handler's state for bulk_stream */
};

struct xpur_session {
    struct xpur_conn conn;
    struct xpur_backend *be;
    CUdevice dev;
    uint32_t id;
    uint32_t max_bulk;
    uint64_t last_request;
    struct xpur_hmap ids;     /* id -> driver handle */
    struct xpur_hmap exports; /* (kind, driver handle) hash -> id, for handles the server named */
    uint64_t next_export;
    struct xpur_ranges ranges;
    int32_t deferred; /* first failure of a fire-and-forget call not yet reported */
    uint16_t deferred_api;
    int ending;          /* flush replies and end (sticky CUDA error reported, protocol error) */
    int end_after_reply; /* a fire-and-forget call hit a sticky error: end after the next reply */
    /* receive buffer: header + arguments of the current frame are contiguous here */
    uint8_t *rbuf;
    size_t rcap, roff, rlen;
    /* replies waiting to be flushed (one write per batch of replies) */
    uint8_t *sbuf;
    size_t scap, slen;
    uint8_t *staging; /* bulk staging for copies: two buffers, so the network and the copy overlap */
    uint8_t *staging2;
    size_t staging_cap;
    struct xpur_module_cache *modules;
    struct xpur_hmap layouts; /* function/kernel id -> struct xpur_layout * (kernel parameters) */
    struct xpur_stats_slot *stats;
    /* keep-alive while a call blocks in the driver */
    pthread_mutex_t io_mu;
    _Atomic uint64_t busy_since_ns; /* 0 when not inside a backend call */
    _Atomic int stop;
    pthread_mutex_t ka_mu; /* with ka_cv: wakes the keep-alive thread at once when the session ends */
    pthread_cond_t ka_cv;
    int32_t keepalive_ms;
    uint64_t refusals; /* ERROR frames sent (protocol violations) */
};

/* ---- used by generated and hand-written handlers */
int xpur_h_get(struct xpur_session *s, unsigned kind, uint64_t id, uint64_t *val);
int xpur_h_check_new(struct xpur_session *s, unsigned kind, uint64_t id);
int xpur_h_bind(struct xpur_session *s, unsigned kind, uint64_t id, uint64_t val);
uint64_t xpur_h_export(struct xpur_session *s, unsigned kind, uint64_t val);
void xpur_h_forget(struct xpur_session *s, unsigned kind, uint64_t id);


int xpur_range_ok(struct xpur_session *s, uint64_t ptr, uint64_t count, uint64_t scale);
int xpur_range2d_ok(struct xpur_session *s, uint64_t ptr, uint64_t pitch, uint64_t width, uint64_t height,
                    uint64_t elem);
void xpur_track(struct xpur_session *s, enum xpur_track_action a, uint64_t ptr, uint64_t size);
void xpur_ranges_free(struct xpur_ranges *r);

void xpur_req_malformed(struct xpur_req *q);
/* read bulk bytes of the current frame (dst may be NULL to discard): 0, else -1 (session lost) */
int xpur_req_bulk_read(struct xpur_session *s, struct xpur_req *q, void *dst, size_t n);
/* a sticky CUDA error: the context is unusable, the session must end */
int xpur_is_sticky(int32_t status);
/* record why the session ends (enum xpur_end_reason) for the supervisor's metrics; first one wins */
void xpur_session_end_reason(struct xpur_session *s, uint32_t reason);

/* ---- the worker */
struct xpur_session_config {
    uint32_t max_bulk;
    int keepalive_ms;
    int idle_timeout_ms;
};
int xpur_session_init(struct xpur_session *s, const struct xpur_session_config *cfg);
void xpur_session_destroy(struct xpur_session *s);
/* serve frames until BYE, end of stream, timeout or a protocol error; returns 0 on BYE */
int xpur_session_serve(struct xpur_session *s);
/* process one frame already in s->rbuf (header decoded and validated): used by serve and the fuzzer */
int xpur_session_frame(struct xpur_session *s, const struct xpur_hdr *h, const uint8_t *args);
/* header checks shared with the fuzzer: 0 valid, else an XPUR_E_* refusal */
int xpur_hdr_check(const struct xpur_hdr *h, uint32_t session, uint64_t last_request, uint32_t max_bulk);

/* test instrumentation: called before each frame is read (NULL in the daemon) */
extern void (*xpur_frame_hook)(struct xpur_session *s);

/* modules (srv_custom.c) */
struct xpur_module_cache *xpur_module_cache_new(const char *dir);
void xpur_module_cache_free(struct xpur_module_cache *c);

#endif
