/*
 * The client channel: configuration, connection + HELLO, framing, batching, replies, heart-beats,
 * the lost-session state, handles and per-thread contexts. See client.h for the contract.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "stats.h"
#include "xpur_hello.h"

#define FLUSH_BYTES (64u << 10)
#define FLUSH_CALLS 256u
#define FLUSH_DELAY_NS 50000ull
#define PING_NS 1000000000ull

enum { ST_NEW, ST_READY, ST_LOST, ST_FAILED, ST_FORKED };

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state;
    CUresult error; /* the status of a failed init or a lost session */
    struct xpur_conn conn;
    SSL_CTX *tls;
    uint32_t session, max_bulk;
    uint64_t next_req;
    uint8_t *sbuf;
    size_t slen, scap;
    unsigned pending;
    uint64_t first_pending_ns, last_ping_ns;
    uint8_t *rbuf;
    size_t rcap;
    int32_t deferred;
    uint64_t server_ctx; /* the context current on the server's side */
    int timeout_ms;
    int log;
    pthread_t bg;
    int bg_running, stop;
    pid_t pid;
    struct xpur_device dev;
    uint64_t rtt[XPUR_RTT_BUCKETS], rtt_n, rtt_sum;
} C = {.mu = PTHREAD_MUTEX_INITIALIZER, .log = 1, .timeout_ms = 2500};

static pthread_once_t g_init_once = PTHREAD_ONCE_INIT;
static _Thread_local uint64_t t_ctx;
static _Atomic uint64_t g_handle_counter;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void xpur_log(int level, const char *fmt, ...)
{
    if (level > C.log)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "xpupool remote: %s\n", buf);
}

/* ------------------------------------------------------------------ lost session */

static void lose(CUresult why, const char *what)
{
    if (C.state != ST_READY)
        return;
    C.state = ST_LOST;
    C.error = why;
    xpur_log(1, "session lost (%s); CUDA calls now return %d", what, (int)why);
    if (C.conn.fd >= 0)
        shutdown(C.conn.fd, SHUT_RDWR);
    pthread_cond_broadcast(&C.cv);
}

/* ------------------------------------------------------------------ sending */

static void put_header(uint8_t *frame, uint8_t type, uint16_t flags, uint16_t api, uint32_t len, uint32_t bulk,
                       uint64_t req)
{
    struct xpur_hdr h = {XPUR_MAGIC, XPUR_VERSION, type, flags, api, 0, len, bulk, C.session, req};
    xpur_hdr_encode(frame, &h);
}

/* caller holds C.mu; sends the buffer (and optional bulk) in one write */
static int flush_locked(const void *bulk, size_t n)
{
    if (C.state != ST_READY)
        return -1;
    if (!C.slen && !n)
        return 0;
    struct iovec iov[2] = {{C.sbuf, C.slen}, {(void *)bulk, n}};
    int rc = xpur_conn_sendv(&C.conn, iov, n ? 2 : 1);
    C.slen = 0;
    C.pending = 0;
    if (rc) {
        lose(CUDA_ERROR_DEVICE_UNAVAILABLE, "cannot send to the daemon");
        return -1;
    }
    return 0;
}

static void append_ping_locked(void)
{
    if (C.scap - C.slen < XPUR_HDR_SIZE + 8 + 8 * XPUR_RTT_BUCKETS + 16)
        return;
    uint8_t *f = C.sbuf + C.slen;
    struct xpur_wbuf w;
    xpur_wbuf_init(&w, f + XPUR_HDR_SIZE, C.scap - C.slen - XPUR_HDR_SIZE);
    xpur_put_u32(&w, XPUR_RTT_BUCKETS);
    for (int i = 0; i < XPUR_RTT_BUCKETS; i++)
        xpur_put_u64(&w, C.rtt[i]);
    xpur_put_u64(&w, C.rtt_n);
    xpur_put_u64(&w, C.rtt_sum);
    uint32_t len = (uint32_t)(w.p - (f + XPUR_HDR_SIZE));
    put_header(f, XPUR_T_PING, 0, 0, len, 0, 0);
    C.slen += XPUR_HDR_SIZE + len;
    C.last_ping_ns = now_ns();
}

static void *bg_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&C.mu);
    while (!C.stop && C.state == ST_READY) {
        uint64_t n = now_ns(), deadline = C.last_ping_ns + PING_NS;
        if (C.pending && C.first_pending_ns + FLUSH_DELAY_NS < deadline)
            deadline = C.first_pending_ns + FLUSH_DELAY_NS;
        if (deadline > n) {
            struct timespec ts = {(time_t)(deadline / 1000000000ull), (long)(deadline % 1000000000ull)};
            pthread_cond_timedwait(&C.cv, &C.mu, &ts);
            continue;
        }
        if (C.state != ST_READY || C.stop)
            break;
        if (n >= C.last_ping_ns + PING_NS)
            append_ping_locked(); /* liveness for the daemon's idle grace, and the RTT histogram */
        flush_locked(NULL, 0);
    }
    pthread_mutex_unlock(&C.mu);
    return NULL;
}

/* ------------------------------------------------------------------ receiving */

static int recv_frame_header(struct xpur_hdr *h)
{
    uint8_t b[XPUR_HDR_SIZE];
    for (;;) {
        if (xpur_conn_recv_all(&C.conn, b, sizeof b)) {
            lose(CUDA_ERROR_DEVICE_UNAVAILABLE, "no answer from the daemon within the timeout, or connection closed");
            return -1;
        }
        xpur_hdr_decode(b, h);
        if (h->magic != XPUR_MAGIC || h->version != XPUR_VERSION || h->length > C.rcap) {
            lose(CUDA_ERROR_DEVICE_UNAVAILABLE, "malformed frame from the daemon");
            return -1;
        }
        if (h->type != XPUR_T_WAITING)
            return 0;
        if (h->length && xpur_conn_recv_all(&C.conn, C.rbuf, h->length)) {
            lose(CUDA_ERROR_DEVICE_UNAVAILABLE, "connection closed");
            return -1;
        }
    }
}

static void error_frame(const struct xpur_hdr *h)
{
    char why[256] = "?";
    if (h->length <= C.rcap && xpur_conn_recv_all(&C.conn, C.rbuf, h->length) == 0) {
        struct xpur_rbuf r;
        xpur_rbuf_init(&r, C.rbuf, h->length);
        (void)xpur_get_i32(&r);
        xpur_get_str(&r, why, sizeof why);
    }
    lose(CUDA_ERROR_DEVICE_UNAVAILABLE, why);
}

static void rtt_record(uint64_t ns)
{
    static const unsigned edges[] = XPUR_RTT_EDGES_US;
    unsigned us = (unsigned)(ns / 1000), b = 0;
    while (b < XPUR_RTT_BUCKETS - 1 && us > edges[b])
        b++;
    C.rtt[b]++;
    C.rtt_n++;
    C.rtt_sum += ns;
}

/* ------------------------------------------------------------------ calls */

CUresult xpur_ready(void)
{
    if (C.pid && C.pid != getpid())
        return CUDA_ERROR_NOT_INITIALIZED; /* CUDA is not usable in a forked child */
    switch (C.state) {
    case ST_READY:
        return CUDA_SUCCESS;
    case ST_NEW:
        return CUDA_ERROR_NOT_INITIALIZED;
    default:
        return C.error;
    }
}

const struct xpur_device *xpur_device(void) { return &C.dev; }
uint32_t xpur_max_bulk(void) { return C.max_bulk; }

static CUresult reserve_locked(size_t need)
{
    if (C.scap - C.slen < need && flush_locked(NULL, 0))
        return C.error;
    return CUDA_SUCCESS;
}

/* make the calling thread's context current on the server before its call (fire-and-forget) */
static CUresult switch_ctx_locked(uint64_t ctx)
{
    CUresult rc = reserve_locked(XPUR_HDR_SIZE + 8);
    if (rc)
        return rc;
    uint8_t *f = C.sbuf + C.slen;
    xpur_le_put(f + XPUR_HDR_SIZE, ctx, 8);
    put_header(f, XPUR_T_CALL, XPUR_F_NO_REPLY, XPUR_API_cuCtxSetCurrent, 8, 0, ++C.next_req);
    C.slen += XPUR_HDR_SIZE + 8;
    C.pending++;
    C.server_ctx = ctx;
    return CUDA_SUCCESS;
}

CUresult xpur_call_begin(struct xpur_call *c, uint16_t api, unsigned opts)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    uint64_t ctx = t_ctx;
    if (!(opts & XPUR_O_NOCTX) && !ctx)
        return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&C.mu);
    if (C.state != ST_READY) {
        rc = C.error;
        pthread_mutex_unlock(&C.mu);
        return rc;
    }
    if (ctx && ctx != C.server_ctx && (rc = switch_ctx_locked(ctx))) {
        pthread_mutex_unlock(&C.mu);
        return rc;
    }
    if ((rc = reserve_locked(XPUR_HDR_SIZE + XPUR_LIMIT_MAX_ARGS))) {
        pthread_mutex_unlock(&C.mu);
        return rc;
    }
    c->frame = C.sbuf + C.slen;
    xpur_wbuf_init(&c->w, c->frame + XPUR_HDR_SIZE, XPUR_LIMIT_MAX_ARGS);
    xpur_rbuf_init(&c->r, NULL, 0);
    c->api = api;
    c->opts = opts;
    return CUDA_SUCCESS;
}

void xpur_call_abort(struct xpur_call *c)
{
    (void)c;
    pthread_mutex_unlock(&C.mu);
}

static uint16_t frame_flags(const struct xpur_call *c, int async)
{
    return (uint16_t)((async ? XPUR_F_NO_REPLY : 0) | ((c->opts & XPUR_O_PT) ? XPUR_F_PER_THREAD : 0));
}

CUresult xpur_call_async_bulk(struct xpur_call *c, const void *bulk, size_t n)
{
    if (c->w.bad) {
        pthread_mutex_unlock(&C.mu);
        return CUDA_ERROR_INVALID_VALUE;
    }
    uint32_t len = (uint32_t)(c->w.p - (c->frame + XPUR_HDR_SIZE));
    put_header(c->frame, XPUR_T_CALL, frame_flags(c, 1), c->api, len, (uint32_t)n, ++C.next_req);
    C.slen += XPUR_HDR_SIZE + len;
    C.pending++;
    CUresult rc = CUDA_SUCCESS;
    if (n) {
        if (flush_locked(bulk, n))
            rc = C.error;
    } else if (C.slen >= FLUSH_BYTES || C.pending >= FLUSH_CALLS) {
        if (flush_locked(NULL, 0))
            rc = C.error;
    } else if (C.pending == 1) {
        C.first_pending_ns = now_ns();
        pthread_cond_signal(&C.cv);
    }
    pthread_mutex_unlock(&C.mu);
    return rc;
}

CUresult xpur_call_async(struct xpur_call *c) { return xpur_call_async_bulk(c, NULL, 0); }

CUresult xpur_call_sync_bulk(struct xpur_call *c, const void *out, size_t out_len, void *in, size_t in_len)
{
    if (c->w.bad)
        return CUDA_ERROR_INVALID_VALUE; /* xpur_call_end releases the channel */
    uint32_t len = (uint32_t)(c->w.p - (c->frame + XPUR_HDR_SIZE));
    uint64_t req = ++C.next_req;
    put_header(c->frame, XPUR_T_CALL, frame_flags(c, 0), c->api, len, (uint32_t)out_len, req);
    C.slen += XPUR_HDR_SIZE + len;
    uint64_t t0 = now_ns();
    if (flush_locked(out, out_len))
        return C.error;
    struct xpur_hdr h;
    if (recv_frame_header(&h))
        return C.error;
    if (h.type == XPUR_T_ERROR) {
        error_frame(&h);
        return C.error;
    }
    if (h.type != XPUR_T_REPLY || h.request != req || h.length < XPUR_REPLY_PREFIX ||
        (h.bulk && h.bulk != in_len + 4)) {
        lose(CUDA_ERROR_DEVICE_UNAVAILABLE, "unexpected frame from the daemon");
        return C.error;
    }
    if (xpur_conn_recv_all(&C.conn, C.rbuf, h.length)) {
        lose(CUDA_ERROR_DEVICE_UNAVAILABLE, "connection closed");
        return C.error;
    }
    struct xpur_rbuf r;
    xpur_rbuf_init(&r, C.rbuf, h.length);
    int32_t status = xpur_get_i32(&r), deferred = xpur_get_i32(&r);
    (void)xpur_get_u16(&r);
    (void)xpur_get_u16(&r);
    (void)xpur_get_u32(&r);
    if (h.bulk) {
        uint8_t tail[4];
        if (xpur_conn_recv_all(&C.conn, in, in_len) || xpur_conn_recv_all(&C.conn, tail, 4)) {
            lose(CUDA_ERROR_DEVICE_UNAVAILABLE, "connection closed during a copy");
            return C.error;
        }
        int32_t final = (int32_t)xpur_le_get(tail, 4);
        if (status == CUDA_SUCCESS)
            status = final;
    }
    rtt_record(now_ns() - t0);
    c->r = r;
    if (deferred && !C.deferred)
        C.deferred = deferred;
    if ((c->opts & XPUR_O_SYNCPOINT) && status == CUDA_SUCCESS && C.deferred) {
        status = C.deferred; /* an earlier fire-and-forget call failed: report it here, once */
        C.deferred = 0;
    }
    if (h.flags & XPUR_F_SESSION_END) {
        /* the daemon ended the session after this reply (a sticky error): it stays the answer */
        CUresult sticky = status != CUDA_SUCCESS ? status : (deferred ? deferred : CUDA_ERROR_DEVICE_UNAVAILABLE);
        lose(sticky, "the daemon ended the session after a sticky CUDA error");
        C.error = sticky;
    }
    return status;
}

CUresult xpur_call_sync(struct xpur_call *c) { return xpur_call_sync_bulk(c, NULL, 0, NULL, 0); }

CUresult xpur_call_end(struct xpur_call *c, CUresult rc)
{
    if (rc == CUDA_SUCCESS && c->r.bad)
        rc = CUDA_ERROR_UNKNOWN;
    pthread_mutex_unlock(&C.mu);
    return rc;
}

/* ------------------------------------------------------------------ handles, devices, contexts */

CUresult xpur_handle_in(unsigned kind, uint64_t v, uint64_t *id)
{
    *id = v;
    if (v == 0)
        return CUDA_SUCCESS;
    if (xpur_h_is_special(v))
        return kind == XPUR_H_STREAM ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
    unsigned k = xpur_h_kind(v);
    if (k == kind || (kind == XPUR_H_FUNC && k == XPUR_H_KERNEL))
        return CUDA_SUCCESS;
    return CUDA_ERROR_INVALID_HANDLE;
}

uint64_t xpur_handle_new(unsigned kind) { return xpur_h_make(kind, 0, atomic_fetch_add(&g_handle_counter, 1) + 1); }

CUresult xpur_dev_in(CUdevice dev)
{
    CUresult rc = xpur_ready();
    if (rc)
        return rc;
    return dev == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult xpur_unsupported(uint16_t api)
{
    static _Atomic unsigned char logged[XPUR_API_ID_LIMIT];
    if (api < XPUR_API_ID_LIMIT && !atomic_exchange(&logged[api], 1))
        xpur_log(2, "%s is not available on a remote vXPU (CUDA_ERROR_NOT_SUPPORTED)", xpur_api_info[api].name);
    return CUDA_ERROR_NOT_SUPPORTED;
}

uint64_t xpur_ctx_current(void) { return t_ctx; }
void xpur_ctx_set_current(uint64_t id) { t_ctx = id; }

void xpur_ctx_server_current(uint64_t id)
{
    pthread_mutex_lock(&C.mu);
    C.server_ctx = id;
    pthread_mutex_unlock(&C.mu);
}

void xpur_ctx_server_forget(uint64_t id)
{
    pthread_mutex_lock(&C.mu);
    if (C.server_ctx == id)
        C.server_ctx = 0;
    pthread_mutex_unlock(&C.mu);
    if (t_ctx == id)
        t_ctx = 0;
}

/* ------------------------------------------------------------------ connecting */

static char *env_dup(const char *name)
{
    const char *v = getenv(name); /* read once, at initialisation */
    return v && v[0] ? strdup(v) : NULL;
}

static char *read_token_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = calloc(1, XPUR_LIMIT_MAX_TOKEN + 2);
    size_t n = buf ? fread(buf, 1, XPUR_LIMIT_MAX_TOKEN + 1, f) : 0;
    fclose(f);
    if (!buf || n > XPUR_LIMIT_MAX_TOKEN) {
        free(buf);
        return NULL;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = 0;
    return buf;
}

static int connect_endpoint(const char *ep, char *host, size_t hcap, int *is_tcp)
{
    int fd = -1;
    if (strncmp(ep, "unix:", 5) == 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(ep + 5) >= sizeof a.sun_path)
            return -1;
        strcpy(a.sun_path, ep + 5);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a)) {
            close(fd);
            return -1;
        }
        *is_tcp = 0;
        snprintf(host, hcap, "localhost");
        return fd;
    }
    *is_tcp = 1;
    const char *colon = strrchr(ep, ':');
    if (!colon || (size_t)(colon - ep) >= hcap)
        return -1;
    memcpy(host, ep, (size_t)(colon - ep));
    host[colon - ep] = 0;
    if (host[0] == '[') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai, *p;
    if (getaddrinfo(host, colon + 1, &hints, &ai))
        return -1;
    for (p = ai; p && fd < 0; p = p->ai_next) {
        fd = socket(p->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        int r = connect(fd, p->ai_addr, p->ai_addrlen);
        if (r && errno == EINPROGRESS) {
            struct pollfd pf = {fd, POLLOUT, 0};
            int err = 0;
            socklen_t el = sizeof err;
            r = poll(&pf, 1, C.timeout_ms) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && !err ? 0 : -1;
        }
        if (r) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd >= 0)
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

static int parse_welcome(const uint8_t *p, uint32_t len)
{
    struct xpur_rbuf r;
    xpur_rbuf_init(&r, p, len);
    uint32_t version = xpur_get_u32(&r);
    C.max_bulk = xpur_get_u32(&r);
    (void)xpur_get_u32(&r); /* keepalive_ms */
    (void)xpur_get_u32(&r); /* idle timeout */
    C.dev.driver_version = xpur_get_i32(&r);
    xpur_get_str(&r, C.dev.name, sizeof C.dev.name);
    xpur_get_bytes(&r, C.dev.uuid, 16);
    C.dev.total_mem = xpur_get_u64(&r);
    xpur_get_str(&r, C.dev.pci, sizeof C.dev.pci);
    C.dev.prio_least = xpur_get_i32(&r);
    C.dev.prio_greatest = xpur_get_i32(&r);
    uint32_t n = xpur_get_u32(&r);
    for (uint32_t i = 0; i < n && !r.bad; i++) {
        int32_t a = xpur_get_i32(&r), v = xpur_get_i32(&r);
        if (a > 0 && a < CU_DEVICE_ATTRIBUTE_MAX) {
            C.dev.attr[a] = v;
            C.dev.attr_known[a] = 1;
        }
    }
    char server[80];
    xpur_get_str(&r, server, sizeof server);
    if (!xpur_rbuf_done(&r) || version != XPUR_VERSION || C.max_bulk < (1u << 20))
        return -1;
    xpur_log(2, "session %u on %s (%s), %llu MiB, driver %d", C.session, C.dev.name, server,
             (unsigned long long)(C.dev.total_mem >> 20), C.dev.driver_version);
    return 0;
}

static void on_fork_child(void)
{
    pthread_mutex_init(&C.mu, NULL);
    pthread_cond_init(&C.cv, NULL);
    if (C.state == ST_READY) {
        /* the connection belongs to the parent: close our copy without touching its TLS state */
        if (C.conn.fd >= 0)
            close(C.conn.fd);
        C.conn.fd = -1;
        C.state = ST_FORKED;
        C.error = CUDA_ERROR_NOT_INITIALIZED;
    }
    C.bg_running = 0;
}

static void connect_once(void)
{
    char *ep = env_dup("XPUPOOL_REMOTE_ENDPOINT"), *token = env_dup("XPUPOOL_REMOTE_TOKEN"),
         *token_file = env_dup("XPUPOOL_REMOTE_TOKEN_FILE"), *ca = env_dup("XPUPOOL_REMOTE_CA"),
         *sname = env_dup("XPUPOOL_REMOTE_SERVER_NAME"), *insecure = env_dup("XPUPOOL_REMOTE_INSECURE"),
         *tmo = env_dup("XPUPOOL_REMOTE_TIMEOUT_MS"), *lg = env_dup("XPUPOOL_REMOTE_LOG");
    if (lg)
        C.log = atoi(lg);
    if (tmo && atoi(tmo) > 0)
        C.timeout_ms = atoi(tmo);
    C.state = ST_FAILED;
    C.error = CUDA_ERROR_NO_DEVICE;
    C.conn.fd = -1;
    char host[256] = "", err[256] = "";
    int is_tcp = 0, fd = -1;
    uint8_t *hello = NULL;
    if (!token && token_file)
        token = read_token_file(token_file);
    if (!ep) {
        xpur_log(1, "XPUPOOL_REMOTE_ENDPOINT is not set: no remote vXPU");
        goto out;
    }
    if (!token) {
        xpur_log(1, "no session token (XPUPOOL_REMOTE_TOKEN or XPUPOOL_REMOTE_TOKEN_FILE)");
        goto out;
    }
    if ((fd = connect_endpoint(ep, host, sizeof host, &is_tcp)) < 0) {
        xpur_log(1, "cannot connect to %s", ep);
        goto out;
    }
    xpur_sock_tune(fd);
    xpur_sock_timeouts(fd, C.timeout_ms, C.timeout_ms);
    xpur_conn_fd(&C.conn, fd);
    if (is_tcp && ca) {
        if (!(C.tls = xpur_tls_client_ctx(ca, err, sizeof err)) ||
            xpur_tls_connect(&C.conn, C.tls, fd, sname ? sname : host, err, sizeof err)) {
            xpur_log(1, "%s", err);
            goto out;
        }
    } else if (is_tcp && !(insecure && strcmp(insecure, "1") == 0)) {
        xpur_log(1, "TCP endpoint without XPUPOOL_REMOTE_CA: refusing to send the token in clear "
                    "(XPUPOOL_REMOTE_INSECURE=1 only on an isolated network)");
        goto out;
    }
    hello = calloc(1, XPUR_HDR_SIZE + XPUR_HELLO_MAX);
    C.rcap = XPUR_LIMIT_MAX_ARGS + XPUR_REPLY_PREFIX + XPUR_WELCOME_MAX;
    C.rbuf = malloc(C.rcap);
    C.scap = 2 * (XPUR_HDR_SIZE + XPUR_LIMIT_MAX_ARGS) + FLUSH_BYTES;
    C.sbuf = malloc(C.scap);
    if (!hello || !C.rbuf || !C.sbuf)
        goto out;
    struct xpur_wbuf w;
    xpur_wbuf_init(&w, hello + XPUR_HDR_SIZE, XPUR_HELLO_MAX);
    xpur_put_u32(&w, XPUR_VERSION);
    xpur_put_u32(&w, XPUR_VERSION);
    xpur_put_u32(&w, XPUR_LIMIT_MAX_BULK_DEFAULT);
    xpur_put_str(&w, token, XPUR_LIMIT_MAX_TOKEN);
    xpur_put_u32(&w, (uint32_t)getpid());
    char me[256] = "";
    gethostname(me, sizeof me - 1);
    xpur_put_str(&w, me, 255);
    if (w.bad) {
        xpur_log(1, "session token too long");
        goto out;
    }
    uint32_t len = (uint32_t)(w.p - (hello + XPUR_HDR_SIZE));
    struct xpur_hdr h = {XPUR_MAGIC, XPUR_VERSION, XPUR_T_HELLO, 0, 0, 0, len, 0, 0, 0};
    xpur_hdr_encode(hello, &h);
    uint8_t hb[XPUR_HDR_SIZE];
    if (xpur_conn_send(&C.conn, hello, XPUR_HDR_SIZE + len) || xpur_conn_recv_all(&C.conn, hb, sizeof hb)) {
        xpur_log(1, "no answer from %s", ep);
        goto out;
    }
    xpur_hdr_decode(hb, &h);
    if (h.magic != XPUR_MAGIC || h.length > C.rcap || xpur_conn_recv_all(&C.conn, C.rbuf, h.length)) {
        xpur_log(1, "bad answer from %s", ep);
        goto out;
    }
    if (h.type == XPUR_T_ERROR) {
        struct xpur_rbuf r;
        xpur_rbuf_init(&r, C.rbuf, h.length);
        int32_t code = xpur_get_i32(&r);
        char why[256] = "?";
        xpur_get_str(&r, why, sizeof why);
        xpur_log(1, "the daemon refused the session: %s", why);
        if (code >= XPUR_E_NO_TOKEN && code <= XPUR_E_NOT_GRANTED)
            C.error = CUDA_ERROR_NOT_PERMITTED;
        goto out;
    }
    C.session = h.session;
    if (h.type != XPUR_T_WELCOME || parse_welcome(C.rbuf, h.length)) {
        xpur_log(1, "malformed WELCOME from %s", ep);
        goto out;
    }
    C.pid = getpid();
    if (C.dev.driver_version)
        xpur_compat_install(C.dev.driver_version);
    C.last_ping_ns = now_ns();
    C.state = ST_READY;
    C.error = CUDA_SUCCESS;
    pthread_condattr_t ca_;
    pthread_condattr_init(&ca_);
    pthread_condattr_setclock(&ca_, CLOCK_MONOTONIC);
    pthread_cond_init(&C.cv, &ca_);
    pthread_atfork(NULL, NULL, on_fork_child);
    /* the background thread must not keep signals from the application's threads */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    C.bg_running = pthread_create(&C.bg, NULL, bg_main, NULL) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
out:
    if (C.state != ST_READY && fd >= 0) {
        xpur_conn_close(&C.conn);
        C.conn.fd = -1;
    }
    if (token)
        explicit_bzero(token, strlen(token));
    free(hello);
    free(ep);
    free(token);
    free(token_file);
    free(ca);
    free(sname);
    free(insecure);
    free(tmo);
    free(lg);
}

CUresult xpur_l_cuInit(unsigned int flags)
{
    if (flags)
        return CUDA_ERROR_INVALID_VALUE;
    if (C.pid && C.pid != getpid())
        return CUDA_ERROR_NOT_INITIALIZED;
    pthread_once(&g_init_once, connect_once);
    return C.state == ST_READY ? CUDA_SUCCESS : C.error;
}

/* at exit: deliver what is still buffered, say goodbye */
__attribute__((destructor)) static void xpur_fini(void)
{
    if (C.state != ST_READY || C.pid != getpid())
        return;
    pthread_mutex_lock(&C.mu);
    if (C.state == ST_READY) {
        uint8_t *f = C.sbuf + C.slen;
        if (C.scap - C.slen >= XPUR_HDR_SIZE) {
            put_header(f, XPUR_T_BYE, 0, 0, 0, 0, 0);
            C.slen += XPUR_HDR_SIZE;
        }
        flush_locked(NULL, 0);
        C.stop = 1;
        C.state = ST_LOST; /* calls from later destructors (cudart's) get DEINITIALIZED */
        C.error = CUDA_ERROR_DEINITIALIZED;
        pthread_cond_broadcast(&C.cv);
    }
    pthread_mutex_unlock(&C.mu);
}
