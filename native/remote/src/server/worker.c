/*
 * One connection, from accept to exit: TLS, HELLO, token, admission, then (only when admitted)
 * libxpushim + the driver, WELCOME and the frame loop. A refused connection never loads the driver.
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "session.h"
#include "xpur_hello.h"

int xpur_log_level = 1;

void xpur_log(int level, const char *fmt, ...)
{
    if (level > xpur_log_level)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "xpu-remoted[%d]: %s\n", (int)getpid(), buf);
}

static void refuse(struct xpur_conn *c, int32_t code, const char *why)
{
    uint8_t buf[XPUR_HDR_SIZE + 300];
    struct xpur_wbuf w;
    xpur_wbuf_init(&w, buf + XPUR_HDR_SIZE, sizeof buf - XPUR_HDR_SIZE);
    xpur_put_i32(&w, code);
    xpur_put_str(&w, why, 250);
    struct xpur_hdr h = {XPUR_MAGIC, XPUR_VERSION, XPUR_T_ERROR, XPUR_F_SESSION_END, 0, 0,
                         (uint32_t)(w.p - (buf + XPUR_HDR_SIZE)), 0, 0, 0};
    xpur_hdr_encode(buf, &h);
    xpur_conn_send(c, buf, XPUR_HDR_SIZE + h.length);
    xpur_log(1, "refused: %s", why);
}

static void die(struct xpur_conn *c, struct xpur_stats_slot *slot, int code)
{
    if (slot)
        atomic_store(&slot->state, XPUR_SLOT_ENDED);
    xpur_conn_close(c);
    _exit(code);
}

/* "admit <alloc> <card> <tenant>\n" -> "ok <region|-> <tenant>\n" | "no <reason>\n" */
static int admit(int fd, const struct xpur_claims *cl, char *region, size_t rcap, char *why, size_t wcap, int timeout_ms)
{
    char line[512];
    int n = snprintf(line, sizeof line, "admit %s %s %s\n", cl->alloc, cl->card, cl->sub[0] ? cl->sub : "-");
    if (n <= 0 || (size_t)n >= sizeof line || write(fd, line, (size_t)n) != n) {
        snprintf(why, wcap, "supervisor unreachable");
        return -1;
    }
    size_t got = 0;
    while (got < sizeof line - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, timeout_ms) <= 0) {
            snprintf(why, wcap, "supervisor did not answer");
            return -1;
        }
        ssize_t r = read(fd, line + got, sizeof line - 1 - got);
        if (r <= 0) {
            snprintf(why, wcap, "supervisor closed");
            return -1;
        }
        got += (size_t)r;
        if (memchr(line, '\n', got))
            break;
    }
    line[got] = 0;
    char *nl = strchr(line, '\n');
    if (!nl) {
        snprintf(why, wcap, "supervisor answer too long");
        return -1;
    }
    *nl = 0;
    if (strncmp(line, "ok ", 3) == 0) {
        char *sp = strchr(line + 3, ' ');
        if (sp)
            *sp = 0;
        snprintf(region, rcap, "%.500s", line + 3);
        return 0;
    }
    snprintf(why, wcap, "%.200s", strncmp(line, "no ", 3) == 0 ? line + 3 : "refused");
    return -1;
}

struct resolver {
    void *shim, *drv;
};

static void *resolve(void *ctx, const char *name)
{
    struct resolver *r = ctx;
    void *f = r->shim ? dlsym(r->shim, name) : NULL;
    return f ? f : dlsym(r->drv, name);
}

static int send_welcome(struct xpur_session *s, const struct xpur_daemon_cfg *cfg)
{
    struct xpur_backend *be = s->be;
    uint8_t *buf = calloc(1, XPUR_HDR_SIZE + XPUR_WELCOME_MAX);
    if (!buf)
        return -1;
    struct xpur_wbuf w;
    xpur_wbuf_init(&w, buf + XPUR_HDR_SIZE, XPUR_WELCOME_MAX);
    int drv = 0;
    if (be->p_cuDriverGetVersion)
        be->p_cuDriverGetVersion(&drv);
    char name[256] = "";
    if (be->p_cuDeviceGetName)
        be->p_cuDeviceGetName(name, sizeof name, s->dev);
    CUuuid uuid;
    memset(&uuid, 0, sizeof uuid);
    if (be->p_cuDeviceGetUuid_v2)
        be->p_cuDeviceGetUuid_v2(&uuid, s->dev);
    else if (be->p_cuDeviceGetUuid)
        be->p_cuDeviceGetUuid(&uuid, s->dev);
    size_t total = 0;
    if (be->p_cuDeviceTotalMem_v2)
        be->p_cuDeviceTotalMem_v2(&total, s->dev);
    char pci[64] = "";
    if (be->p_cuDeviceGetPCIBusId)
        be->p_cuDeviceGetPCIBusId(pci, sizeof pci, s->dev);
    int lo = 0, hi = 0;
    CUcontext ctx = NULL;
    if (be->p_cuDevicePrimaryCtxRetain && be->p_cuCtxSetCurrent && be->p_cuCtxGetStreamPriorityRange &&
        be->p_cuDevicePrimaryCtxRetain(&ctx, s->dev) == CUDA_SUCCESS && be->p_cuCtxSetCurrent(ctx) == CUDA_SUCCESS)
        be->p_cuCtxGetStreamPriorityRange(&lo, &hi);
    xpur_put_u32(&w, XPUR_VERSION);
    xpur_put_u32(&w, s->max_bulk);
    xpur_put_u32(&w, (uint32_t)cfg->keepalive_ms);
    xpur_put_u32(&w, (uint32_t)cfg->idle_timeout_ms);
    xpur_put_i32(&w, drv);
    xpur_put_str(&w, name, 255);
    xpur_put_bytes(&w, uuid.bytes, 16);
    xpur_put_u64(&w, total);
    xpur_put_str(&w, pci, 63);
    xpur_put_i32(&w, lo);
    xpur_put_i32(&w, hi);
    uint8_t *count_at = w.p;
    xpur_put_u32(&w, 0);
    uint32_t n = 0;
    for (int a = 1; a < CU_DEVICE_ATTRIBUTE_MAX && be->p_cuDeviceGetAttribute; a++) {
        int v = 0;
        if (be->p_cuDeviceGetAttribute(&v, (CUdevice_attribute)a, s->dev) != CUDA_SUCCESS)
            continue;
        xpur_put_i32(&w, a);
        xpur_put_i32(&w, v);
        n++;
    }
    if (!w.bad)
        xpur_le_put(count_at, n, 4);
    xpur_put_str(&w, XPUR_DAEMON_VERSION, 64);
    int rc = -1;
    if (!w.bad) {
        struct xpur_hdr h = {XPUR_MAGIC, XPUR_VERSION, XPUR_T_WELCOME, 0, 0, 0, (uint32_t)(w.p - (buf + XPUR_HDR_SIZE)),
                             0, s->id, 0};
        xpur_hdr_encode(buf, &h);
        rc = xpur_conn_send(&s->conn, buf, XPUR_HDR_SIZE + h.length);
    }
    free(buf);
    return rc;
}

void xpur_worker_main(const struct xpur_daemon_cfg *cfg, int fd, int tls, int admit_fd, struct xpur_stats_slot *slot,
                      uint32_t session_id)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* the supervisor's death ends every session */
    prctl(PR_SET_NAME, "xpur-worker");
    struct xpur_conn conn;
    xpur_conn_fd(&conn, fd);
    xpur_sock_tune(fd);
    xpur_sock_timeouts(fd, cfg->handshake_timeout_ms, cfg->handshake_timeout_ms);
    char err[256];
    if (tls) {
        if (xpur_tls_accept(&conn, cfg->tls, fd, err, sizeof err)) {
            xpur_log(1, "%s", err);
            die(&conn, slot, 2);
        }
    }
    /* HELLO: validated before anything else is read or allocated */
    uint8_t hb[XPUR_HDR_SIZE];
    if (xpur_conn_recv_all(&conn, hb, sizeof hb))
        die(&conn, slot, 2);
    struct xpur_hdr h;
    xpur_hdr_decode(hb, &h);
    if (h.magic != XPUR_MAGIC || h.type != XPUR_T_HELLO || h.session || h.bulk || h.length > XPUR_HELLO_MAX ||
        h.reserved) {
        refuse(&conn, XPUR_E_BAD_FRAME, "expected HELLO");
        die(&conn, slot, 2);
    }
    if (h.version != XPUR_VERSION) {
        refuse(&conn, XPUR_E_BAD_VERSION, "protocol version not supported");
        die(&conn, slot, 2);
    }
    uint8_t hello[XPUR_HELLO_MAX];
    if (xpur_conn_recv_all(&conn, hello, h.length))
        die(&conn, slot, 2);
    struct xpur_rbuf r;
    xpur_rbuf_init(&r, hello, h.length);
    uint32_t vmin = xpur_get_u32(&r), vmax = xpur_get_u32(&r), want_bulk = xpur_get_u32(&r);
    char token[XPUR_LIMIT_MAX_TOKEN + 1], host[256];
    xpur_get_str(&r, token, sizeof token);
    uint32_t cpid = xpur_get_u32(&r);
    xpur_get_str(&r, host, sizeof host);
    if (!xpur_rbuf_done(&r) || vmin > XPUR_VERSION || vmax < XPUR_VERSION) {
        refuse(&conn, XPUR_E_BAD_FRAME, "malformed HELLO");
        die(&conn, slot, 2);
    }
    if (!token[0]) {
        refuse(&conn, XPUR_E_NO_TOKEN, "no session token");
        die(&conn, slot, 3);
    }
    struct xpur_claims cl;
    enum xpur_token_result tr = xpur_token_verify(token, cfg->keys, cfg->nkeys, (int64_t)time(NULL), cfg->node, &cl);
    explicit_bzero(token, sizeof token);
    if (tr != XPUR_TOKEN_OK) {
        refuse(&conn, tr == XPUR_TOKEN_EXPIRED ? XPUR_E_EXPIRED_TOKEN : XPUR_E_BAD_TOKEN, xpur_token_result_str(tr));
        die(&conn, slot, 3);
    }
    const struct xpur_card *card = NULL;
    for (int i = 0; i < cfg->ncards; i++)
        if (strcmp(cfg->cards[i].uuid, cl.card) == 0)
            card = &cfg->cards[i];
    if (!card) {
        refuse(&conn, XPUR_E_WRONG_CARD, "token is for a card this daemon does not serve");
        die(&conn, slot, 3);
    }
    char region[512], why[256];
    if (admit(admit_fd, &cl, region, sizeof region, why, sizeof why, cfg->handshake_timeout_ms)) {
        refuse(&conn, XPUR_E_NOT_GRANTED, why);
        die(&conn, slot, 3);
    }
    snprintf(slot->alloc, sizeof slot->alloc, "%s", cl.alloc);
    snprintf(slot->tenant, sizeof slot->tenant, "%s", cl.sub);
    snprintf(slot->card, sizeof slot->card, "%s", cl.card);
    xpur_log(2, "session %u admitted: alloc=%s tenant=%s card=%s client=%s pid %u", session_id, cl.alloc, cl.sub,
             cl.card, host, cpid);

    /* admitted: bind to the card and load the shim and the driver */
    setenv("CUDA_VISIBLE_DEVICES", card->visible, 1);
    if (strcmp(region, "-") != 0)
        setenv("XPUSHIM_REGION", region, 1);
    else
        unsetenv("XPUSHIM_REGION");
    struct resolver res = {NULL, NULL};
    if (cfg->shim[0] && !(res.shim = dlopen(cfg->shim, RTLD_NOW | RTLD_GLOBAL))) {
        refuse(&conn, XPUR_E_BACKEND, "cannot load libxpushim");
        xpur_log(1, "dlopen %s: %s", cfg->shim, dlerror());
        die(&conn, slot, 4);
    }
    res.drv = dlopen(cfg->driver, RTLD_NOW | RTLD_LOCAL);
    atomic_store(&slot->backend_opened, 1);
    if (!res.drv) {
        refuse(&conn, XPUR_E_BACKEND, "cannot load the driver");
        xpur_log(1, "dlopen %s: %s", cfg->driver, dlerror());
        die(&conn, slot, 4);
    }
    static struct xpur_backend be;
    xpur_backend_load(&be, resolve, &res);
    struct xpur_session_config scfg = {
        .max_bulk = want_bulk && want_bulk < cfg->max_bulk ? want_bulk : cfg->max_bulk,
        .keepalive_ms = cfg->keepalive_ms,
        .idle_timeout_ms = cfg->idle_timeout_ms,
    };
    if (scfg.max_bulk < (1u << 20))
        scfg.max_bulk = 1u << 20;
    static struct xpur_session s;
    if (xpur_session_init(&s, &scfg)) {
        refuse(&conn, XPUR_E_INTERNAL, "out of memory");
        die(&conn, slot, 4);
    }
    s.conn = conn;
    s.be = &be;
    s.id = session_id;
    s.stats = slot;
    s.modules = xpur_module_cache_new(cfg->module_dir[0] ? cfg->module_dir : NULL);
    CUresult cr = be.p_cuInit ? be.p_cuInit(0) : CUDA_ERROR_NOT_INITIALIZED;
    if (cr == CUDA_SUCCESS && be.p_cuDeviceGet)
        cr = be.p_cuDeviceGet(&s.dev, 0);
    if (cr != CUDA_SUCCESS) {
        snprintf(why, sizeof why, "driver initialisation failed (CUresult %d)", (int)cr);
        refuse(&s.conn, XPUR_E_BACKEND, why);
        die(&s.conn, slot, 4);
    }
    if (send_welcome(&s, cfg))
        die(&s.conn, slot, 5);
    atomic_store(&slot->state, XPUR_SLOT_ACTIVE);
    /* from here a silent client ends the session after the idle grace (it pings every second) */
    xpur_sock_timeouts(fd, cfg->idle_timeout_ms, cfg->idle_timeout_ms);
    int rc = xpur_session_serve(&s);
    xpur_log(2, "session %u ended (%s)", session_id, rc == 0 ? "bye" : "connection ended");
    atomic_store(&slot->state, XPUR_SLOT_ENDED);
    xpur_conn_close(&s.conn);
    /* exit, not _exit: libxpushim's exit handlers return the slice's charges at once (a killed
     * worker's are reaped by the next process of the slice); the process exit frees the GPU memory */
    exit(rc == 0 ? 0 : 1);
}
