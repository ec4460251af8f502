/*
 * The session worker's frame loop: read, validate, dispatch, reply. See session.h for the contract.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "session.h"
#include "xpur_hello.h"

#define REPLY_PREFIX XPUR_REPLY_PREFIX

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int xpur_is_sticky(int32_t st)
{
    switch (st) {
    case CUDA_ERROR_ECC_UNCORRECTABLE:
    case CUDA_ERROR_ILLEGAL_ADDRESS:
    case CUDA_ERROR_LAUNCH_TIMEOUT:
    case CUDA_ERROR_ASSERT:
    case CUDA_ERROR_HARDWARE_STACK_ERROR:
    case CUDA_ERROR_ILLEGAL_INSTRUCTION:
    case CUDA_ERROR_MISALIGNED_ADDRESS:
    case CUDA_ERROR_INVALID_ADDRESS_SPACE:
    case CUDA_ERROR_INVALID_PC:
    case CUDA_ERROR_LAUNCH_FAILED:
    case CUDA_ERROR_CONTEXT_IS_DESTROYED:
        return 1;
    default:
        return 0;
    }
}

void xpur_req_malformed(struct xpur_req *q)
{
    q->malformed = 1;
    q->status = CUDA_ERROR_INVALID_VALUE;
}

int xpur_hdr_check(const struct xpur_hdr *h, uint32_t session, uint64_t last_request, uint32_t max_bulk)
{
    if (h->magic != XPUR_MAGIC)
        return XPUR_E_BAD_FRAME;
    if (h->version != XPUR_VERSION)
        return XPUR_E_BAD_VERSION;
    if (h->reserved || (h->flags & ~(unsigned)XPUR_F_KNOWN) || h->length > XPUR_LIMIT_MAX_ARGS)
        return XPUR_E_BAD_FRAME;
    if (h->session != session)
        return XPUR_E_BAD_FRAME;
    switch (h->type) {
    case XPUR_T_CALL:
        if (h->api == 0 || h->api >= XPUR_API_ID_LIMIT || !xpur_api_info[h->api].name)
            return XPUR_E_BAD_FRAME;
        if (h->request <= last_request) /* never reused: replays are refused */
            return XPUR_E_BAD_FRAME;
        if (h->bulk > max_bulk)
            return XPUR_E_BAD_FRAME;
        return 0;
    case XPUR_T_PING:
    case XPUR_T_BYE:
        return h->api || h->bulk ? XPUR_E_BAD_FRAME : 0;
    default:
        return XPUR_E_BAD_FRAME;
    }
}

int xpur_session_init(struct xpur_session *s, const struct xpur_session_config *cfg)
{
    memset(s, 0, sizeof *s);
    s->conn.fd = -1;
    s->max_bulk = cfg->max_bulk;
    s->keepalive_ms = cfg->keepalive_ms;
    s->rcap = XPUR_HDR_SIZE + XPUR_LIMIT_MAX_ARGS + 65536;
    s->scap = 2 * (XPUR_HDR_SIZE + REPLY_PREFIX + XPUR_LIMIT_MAX_ARGS);
    s->staging_cap = 4u << 20;
    s->rbuf = malloc(s->rcap);
    s->sbuf = malloc(s->scap);
    s->staging = malloc(s->staging_cap);
    s->staging2 = malloc(s->staging_cap);
    pthread_mutex_init(&s->io_mu, NULL);
    pthread_mutex_init(&s->ka_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->ka_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!s->rbuf || !s->sbuf || !s->staging || !s->staging2) {
        xpur_session_destroy(s);
        return -1;
    }
    return 0;
}

void xpur_session_destroy(struct xpur_session *s)
{
    free(s->rbuf);
    free(s->sbuf);
    free(s->staging);
    free(s->staging2);
    s->rbuf = s->sbuf = s->staging = s->staging2 = NULL;
    xpur_hmap_free(&s->ids);
    xpur_hmap_free(&s->exports);
    for (size_t i = 0; i < s->layouts.cap; i++)
        if (s->layouts.v[i].key && s->layouts.v[i].key != UINT64_MAX)
            free((void *)(uintptr_t)s->layouts.v[i].val); /* layouts own their values */
    xpur_hmap_free(&s->layouts);
    xpur_ranges_free(&s->ranges);
    if (s->modules)
        xpur_module_cache_free(s->modules);
    s->modules = NULL;
    pthread_mutex_destroy(&s->io_mu);
    pthread_mutex_destroy(&s->ka_mu);
    pthread_cond_destroy(&s->ka_cv);
}

/* ---------------------------------------------------------------- I/O */

static size_t avail(const struct xpur_session *s) { return s->rlen - s->roff; }

/* make at least n bytes available in rbuf (n <= rcap): 0, else -1 */
static int fill(struct xpur_session *s, size_t n)
{
    if (avail(s) >= n)
        return 0;
    if (s->rcap - s->roff < n) {
        memmove(s->rbuf, s->rbuf + s->roff, avail(s));
        s->rlen -= s->roff;
        s->roff = 0;
    }
    while (avail(s) < n) {
        ssize_t r = xpur_conn_recv(&s->conn, s->rbuf + s->rlen, s->rcap - s->rlen);
        if (r <= 0)
            return -1;
        s->rlen += (size_t)r;
    }
    return 0;
}

static int flush_replies(struct xpur_session *s)
{
    if (!s->slen)
        return 0;
    int rc = xpur_conn_send(&s->conn, s->sbuf, s->slen);
    s->slen = 0;
    return rc;
}

int xpur_req_bulk_read(struct xpur_session *s, struct xpur_req *q, void *dst, size_t n)
{
    if (n > q->bulk_in_left)
        return -1;
    uint8_t *d = dst;
    size_t from_buf = avail(s) < n ? avail(s) : n;
    if (from_buf) {
        if (d)
            memcpy(d, s->rbuf + s->roff, from_buf);
        s->roff += from_buf;
        n -= from_buf;
        q->bulk_in_left -= (uint32_t)from_buf;
        if (d)
            d += from_buf;
    }
    pthread_mutex_lock(&s->io_mu);
    while (n) {
        size_t chunk = n;
        uint8_t *into = d;
        if (!d) {
            into = s->staging;
            chunk = n < s->staging_cap ? n : s->staging_cap;
        }
        ssize_t r = xpur_conn_recv(&s->conn, into, chunk);
        if (r <= 0) {
            pthread_mutex_unlock(&s->io_mu);
            return -1;
        }
        n -= (size_t)r;
        q->bulk_in_left -= (uint32_t)r;
        if (d)
            d += r;
    }
    pthread_mutex_unlock(&s->io_mu);
    return 0;
}

void xpur_session_end_reason(struct xpur_session *s, uint32_t reason)
{
    uint32_t none = XPUR_END_UNKNOWN;
    if (s->stats)
        atomic_compare_exchange_strong(&s->stats->end_reason, &none, reason);
}

static void send_error(struct xpur_session *s, uint64_t request, int32_t refusal, const char *msg)
{
    s->refusals++;
    xpur_session_end_reason(s, XPUR_END_BAD_FRAME);
    uint8_t buf[XPUR_HDR_SIZE + 8 + 256];
    struct xpur_wbuf w;
    xpur_wbuf_init(&w, buf + XPUR_HDR_SIZE, sizeof buf - XPUR_HDR_SIZE);
    xpur_put_i32(&w, refusal);
    xpur_put_str(&w, msg, 200);
    struct xpur_hdr h = {XPUR_MAGIC, XPUR_VERSION, XPUR_T_ERROR, XPUR_F_SESSION_END, 0, 0,
                         (uint32_t)(w.p - (buf + XPUR_HDR_SIZE)), 0, s->id, request};
    xpur_hdr_encode(buf, &h);
    pthread_mutex_lock(&s->io_mu);
    flush_replies(s);
    xpur_conn_send(&s->conn, buf, XPUR_HDR_SIZE + h.length);
    pthread_mutex_unlock(&s->io_mu);
}

/* ---------------------------------------------------------------- keep-alive */

static void *keepalive_main(void *arg)
{
    struct xpur_session *s = arg;
    uint64_t last = 0;
    uint64_t period = (uint64_t)s->keepalive_ms * 1000000ull;
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L)
            ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_mutex_lock(&s->ka_mu);
        while (!atomic_load(&s->stop) && pthread_cond_timedwait(&s->ka_cv, &s->ka_mu, &ts) == 0) {
        }
        pthread_mutex_unlock(&s->ka_mu);
        if (atomic_load(&s->stop))
            break;
        uint64_t b = atomic_load(&s->busy_since_ns), n = now_ns();
        if (!b || n - b < period || n - last < period)
            continue;
        uint8_t buf[XPUR_HDR_SIZE];
        struct xpur_hdr h = {XPUR_MAGIC, XPUR_VERSION, XPUR_T_WAITING, 0, 0, 0, 0, 0, s->id, s->last_request};
        xpur_hdr_encode(buf, &h);
        if (pthread_mutex_trylock(&s->io_mu) == 0) {
            xpur_conn_send(&s->conn, buf, sizeof buf);
            pthread_mutex_unlock(&s->io_mu);
            last = n;
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------- frames */

static void take_ping(struct xpur_session *s, const uint8_t *args, uint32_t len)
{
    struct xpur_rbuf r;
    xpur_rbuf_init(&r, args, len);
    uint32_t nb = xpur_get_u32(&r);
    if (nb != XPUR_RTT_BUCKETS || !s->stats)
        return;
    uint64_t b[XPUR_RTT_BUCKETS];
    for (unsigned i = 0; i < nb; i++)
        b[i] = xpur_get_u64(&r);
    uint64_t count = xpur_get_u64(&r), sum = xpur_get_u64(&r);
    if (!xpur_rbuf_done(&r))
        return;
    for (unsigned i = 0; i < nb; i++)
        atomic_store_explicit(&s->stats->rtt_buckets[i], b[i], memory_order_relaxed);
    atomic_store_explicit(&s->stats->rtt_count, count, memory_order_relaxed);
    atomic_store_explicit(&s->stats->rtt_sum_ns, sum, memory_order_relaxed);
}

static int dispatch(struct xpur_session *s, const struct xpur_hdr *h, const uint8_t *args)
{
    struct xpur_req q;
    memset(&q, 0, sizeof q);
    q.hdr = *h;
    xpur_rbuf_init(&q.in, args, h->length);
    q.bulk_in_left = h->bulk;
    int no_reply = (h->flags & XPUR_F_NO_REPLY) != 0;
    /* reply fields go straight into the reply buffer, after a header and prefix written later */
    if (s->scap - s->slen < XPUR_HDR_SIZE + REPLY_PREFIX + XPUR_LIMIT_MAX_ARGS) {
        pthread_mutex_lock(&s->io_mu);
        int rc = flush_replies(s);
        pthread_mutex_unlock(&s->io_mu);
        if (rc)
            return -1;
    }
    uint8_t *frame = s->sbuf + s->slen;
    xpur_wbuf_init(&q.out, frame + XPUR_HDR_SIZE + REPLY_PREFIX, XPUR_LIMIT_MAX_ARGS);
    s->last_request = h->request;

    xpur_handler fn = xpur_handlers[h->api];
    if (s->stats)
        atomic_fetch_add_explicit(&s->stats->calls[h->api], 1, memory_order_relaxed);
    if (!fn) {
        q.status = CUDA_ERROR_NOT_SUPPORTED; /* a local or unsupported entry sent by a confused client */
    } else {
        atomic_store(&s->busy_since_ns, now_ns());
        fn(s, &q);
        atomic_store(&s->busy_since_ns, 0);
    }
    if (q.lost)
        return -1;
    if (q.malformed) {
        send_error(s, h->request, XPUR_E_BAD_FRAME, "malformed arguments");
        return -1;
    }
    if (q.bulk_in_left && xpur_req_bulk_read(s, &q, NULL, q.bulk_in_left))
        return -1;
    if (q.status != CUDA_SUCCESS && s->stats)
        atomic_fetch_add_explicit(&s->stats->call_errors, 1, memory_order_relaxed);
    int sticky = xpur_is_sticky(q.status);
    if (no_reply) {
        if (q.status != CUDA_SUCCESS && !s->deferred) {
            s->deferred = q.status;
            s->deferred_api = h->api;
            if (s->stats)
                atomic_fetch_add_explicit(&s->stats->deferred_errors, 1, memory_order_relaxed);
        }
        if (sticky) { /* nobody waits for this call: the next reply reports it, then the session ends */
            s->end_after_reply = 1;
            xpur_session_end_reason(s, XPUR_END_STICKY);
        }
        return 0;
    }
    if (sticky)
        xpur_session_end_reason(s, XPUR_END_STICKY);
    if (sticky || s->end_after_reply)
        s->ending = 1;
    if (q.out.bad)
        q.status = CUDA_ERROR_UNKNOWN;
    uint32_t fields = q.status == CUDA_SUCCESS ? (uint32_t)(q.out.p - (frame + XPUR_HDR_SIZE + REPLY_PREFIX)) : 0;
    uint32_t bulk = q.status == CUDA_SUCCESS ? q.bulk_out_len : 0;
    struct xpur_hdr rh = {XPUR_MAGIC, XPUR_VERSION, XPUR_T_REPLY, s->ending ? XPUR_F_SESSION_END : 0, h->api, 0,
                          REPLY_PREFIX + fields, bulk, s->id, h->request};
    xpur_hdr_encode(frame, &rh);
    struct xpur_wbuf pw;
    xpur_wbuf_init(&pw, frame + XPUR_HDR_SIZE, REPLY_PREFIX);
    xpur_put_i32(&pw, q.status);
    xpur_put_i32(&pw, s->deferred);
    xpur_put_u16(&pw, s->deferred_api);
    xpur_put_u16(&pw, 0);
    xpur_put_u32(&pw, 0);
    s->deferred = 0;
    s->deferred_api = 0;
    s->slen += XPUR_HDR_SIZE + REPLY_PREFIX + fields;
    if (bulk) {
        pthread_mutex_lock(&s->io_mu);
        int rc;
        if (q.bulk_stream) {
            rc = flush_replies(s);
            if (!rc)
                rc = q.bulk_stream(s, &q);
        } else {
            struct iovec iov[2] = {{s->sbuf, s->slen}, {(void *)q.bulk_out, bulk}};
            rc = xpur_conn_sendv(&s->conn, iov, 2);
        }
        s->slen = 0;
        pthread_mutex_unlock(&s->io_mu);
        if (rc)
            return -1;
    }
    return 0;
}

int xpur_session_frame(struct xpur_session *s, const struct xpur_hdr *h, const uint8_t *args)
{
    switch (h->type) {
    case XPUR_T_CALL:
        return dispatch(s, h, args);
    case XPUR_T_PING:
        take_ping(s, args, h->length);
        return 0;
    case XPUR_T_BYE:
        return 1;
    default:
        return -1;
    }
}

void (*xpur_frame_hook)(struct xpur_session *s);

int xpur_session_serve(struct xpur_session *s)
{
    pthread_t ka;
    int have_ka = s->keepalive_ms > 0 && s->conn.kind != XPUR_CONN_MEM &&
                  pthread_create(&ka, NULL, keepalive_main, s) == 0;
    int result = -1;
    for (;;) {
        if (s->ending) {
            pthread_mutex_lock(&s->io_mu);
            flush_replies(s);
            pthread_mutex_unlock(&s->io_mu);
            break;
        }
        if (xpur_frame_hook)
            xpur_frame_hook(s);
        pthread_mutex_lock(&s->io_mu);
        int rc = 0;
        if (avail(s) < XPUR_HDR_SIZE && !xpur_conn_buffered(&s->conn))
            rc = flush_replies(s);
        if (!rc)
            rc = fill(s, XPUR_HDR_SIZE);
        pthread_mutex_unlock(&s->io_mu);
        if (rc)
            break; /* end of stream, timeout (idle past the grace), reset */
        struct xpur_hdr h;
        xpur_hdr_decode(s->rbuf + s->roff, &h);
        int refusal = xpur_hdr_check(&h, s->id, s->last_request, s->max_bulk);
        if (refusal) {
            send_error(s, h.request, refusal, "bad frame header");
            break;
        }
        pthread_mutex_lock(&s->io_mu);
        rc = fill(s, XPUR_HDR_SIZE + h.length);
        pthread_mutex_unlock(&s->io_mu);
        if (rc)
            break;
        const uint8_t *args = s->rbuf + s->roff + XPUR_HDR_SIZE;
        s->roff += XPUR_HDR_SIZE + h.length;
        if (s->stats) {
            atomic_store_explicit(&s->stats->bytes_in, s->conn.bytes_in, memory_order_relaxed);
            atomic_store_explicit(&s->stats->bytes_out, s->conn.bytes_out, memory_order_relaxed);
        }
        rc = xpur_session_frame(s, &h, args);
        if (rc == 1) {
            result = 0;
            break;
        }
        if (rc < 0)
            break; /* refused (ERROR sent) or the connection broke */
    }
    /* a reason recorded earlier (sticky error, bad frame) wins over these */
    xpur_session_end_reason(s, result == 0 ? XPUR_END_BYE : XPUR_END_CONNECTION);
    pthread_mutex_lock(&s->ka_mu);
    atomic_store(&s->stop, 1);
    pthread_cond_signal(&s->ka_cv);
    pthread_mutex_unlock(&s->ka_mu);
    if (have_ka)
        pthread_join(ka, NULL);
    return result;
}
