/*
 * xpu-remoted supervisor: listeners, grants, admission, one worker process per session, metrics.
 * Single-threaded poll loop; never loads a driver; all per-session work happens in the workers.
 *
 * Control socket (unix, mode 0600; the node agent's channel), one command per connection:
 *   grant <alloc> <card-uuid> <shim-region-path|-> <tenant>   -> ok
 *   revoke <alloc>                                            -> ok <sessions ended>
 *   grants                                                    -> one line per grant
 *   sessions                                                  -> one line per live session
 *   metrics                                                   -> Prometheus text exposition
 *   ping                                                      -> ok
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "daemon.h"
#include "xpur_api.h"

#define MAX_LISTEN 8
#define MAX_CTL 16
#define MAX_GRANTS 4096
#define CTL_BUF 1024

struct grant {
    char alloc[128], card[96], region[512], tenant[128];
    int used;
};

struct session_meta {
    pid_t pid;
    int admit_fd;
    int in_use;
    int revoked; /* killed on purpose (grant revoked): its end is not an error */
};

struct ctl_client {
    int fd;
    size_t len;
    char buf[CTL_BUF];
};

static struct xpur_daemon_cfg cfg;
static struct xpur_stats_slot *g_slots;
static struct session_meta *g_meta;
static int g_nslots = 64, g_max_pending = 32;
static struct grant *g_grants;
static int g_listen[MAX_LISTEN], g_listen_tls[MAX_LISTEN], g_nlisten;
static int g_ctl_listen = -1;
static struct ctl_client g_ctl[MAX_CTL];
static int g_sigpipe[2];
static volatile sig_atomic_t g_stop;
static uint64_t g_admitted, g_refused_auth, g_refused_protocol, g_refused_busy, g_refused_backend, g_backend_loads,
    g_sessions_ended;
static uint64_t g_api_totals[XPUR_STATS_API_LIMIT];

/* xpupool_remote_session_errors_total{reason}: connections refused and sessions that ended badly */
enum session_error {
    SE_REFUSED_AUTH, SE_REFUSED_PROTOCOL, SE_REFUSED_BUSY, SE_BACKEND_FAILED, SE_HANDSHAKE_LOST,
    SE_WORKER_CRASHED, SE_STICKY_ERROR, SE_BAD_FRAME, SE_CONNECTION_LOST, SE_COUNT
};
static const char *const k_session_error_names[SE_COUNT] = {
    "refused_auth", "refused_protocol", "refused_busy", "backend_failed", "handshake_lost",
    "worker_crashed", "sticky_error", "bad_frame", "connection_lost",
};
static uint64_t g_session_errors[SE_COUNT];

/* the error a reaped worker's exit stands for, or -1 (a goodbye, a revoked grant) */
static int session_error_of(int status, const struct session_meta *m, uint32_t end_reason)
{
    if (WIFSIGNALED(status))
        return m->revoked ? -1 : SE_WORKER_CRASHED;
    switch (WEXITSTATUS(status)) {
    case 2: return SE_REFUSED_PROTOCOL;
    case 3: return SE_REFUSED_AUTH;
    case 4: return SE_BACKEND_FAILED;
    case 5: return SE_HANDSHAKE_LOST;
    default: break;
    }
    switch (end_reason) {
    case XPUR_END_BYE: return -1;
    case XPUR_END_STICKY: return SE_STICKY_ERROR;
    case XPUR_END_BAD_FRAME: return SE_BAD_FRAME;
    case XPUR_END_CONNECTION: return SE_CONNECTION_LOST;
    default: return WEXITSTATUS(status) == 0 ? -1 : SE_WORKER_CRASHED; /* exited without saying why */
    }
}

static void on_signal(int sig)
{
    if (sig == SIGTERM || sig == SIGINT)
        g_stop = 1;
    int saved = errno;
    if (write(g_sigpipe[1], "x", 1) < 0) {
    }
    errno = saved;
}

static int set_cloexec_nonblock(int fd)
{
    return fcntl(fd, F_SETFD, FD_CLOEXEC) | fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* ------------------------------------------------------------------ listeners */

static int listen_tcp(const char *spec, int tls)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host) {
        fprintf(stderr, "xpu-remoted: --listen wants HOST:PORT, got %s\n", spec);
        return -1;
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = 0;
    char *h = host;
    if (h[0] == '[') { /* [v6]:port */
        h++;
        h[strlen(h) - 1] = 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
    if (getaddrinfo(h[0] ? h : NULL, colon + 1, &hints, &ai)) {
        fprintf(stderr, "xpu-remoted: cannot resolve %s\n", spec);
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 128)) {
        fprintf(stderr, "xpu-remoted: cannot listen on %s: %s\n", spec, strerror(errno));
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    char addr[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, addr, sizeof addr);
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    } else {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, addr, sizeof addr);
        port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    set_cloexec_nonblock(fd);
    printf("listening tcp %s:%d %s\n", addr, port, tls ? "tls" : "plaintext");
    fflush(stdout);
    return fd;
}

static int listen_unix(const char *path, mode_t mode)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) {
        fprintf(stderr, "xpu-remoted: socket path too long: %s\n", path);
        return -1;
    }
    strcpy(a.sun_path, path);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || chmod(path, mode) || listen(fd, 128)) {
        fprintf(stderr, "xpu-remoted: cannot listen on %s: %s\n", path, strerror(errno));
        return -1;
    }
    set_cloexec_nonblock(fd);
    return fd;
}

/* ------------------------------------------------------------------ grants */

static struct grant *grant_find(const char *alloc)
{
    for (int i = 0; i < MAX_GRANTS; i++)
        if (g_grants[i].used && strcmp(g_grants[i].alloc, alloc) == 0)
            return &g_grants[i];
    return NULL;
}

static int valid_field(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (!n || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == '"' || s[i] == '\\' || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

/* ------------------------------------------------------------------ sessions */

static uint32_t new_session_id(void)
{
    for (;;) {
        uint32_t id = 0;
        if (getrandom(&id, sizeof id, 0) != sizeof id)
            id = (uint32_t)time(NULL) ^ (uint32_t)getpid();
        if (!id)
            continue;
        int clash = 0;
        for (int i = 0; i < g_nslots; i++)
            if (g_meta[i].in_use && g_slots[i].session == id)
                clash = 1;
        if (!clash)
            return id;
    }
}

static void accept_one(int lfd, int tls)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    int pending = 0, free_slot = -1;
    for (int i = 0; i < g_nslots; i++) {
        if (!g_meta[i].in_use && free_slot < 0)
            free_slot = i;
        if (g_meta[i].in_use && atomic_load(&g_slots[i].state) == XPUR_SLOT_HANDSHAKE)
            pending++;
    }
    if (free_slot < 0 || pending >= g_max_pending) {
        g_refused_busy++;
        g_session_errors[SE_REFUSED_BUSY]++;
        close(fd);
        return;
    }
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp)) {
        close(fd);
        return;
    }
    struct xpur_stats_slot *slot = &g_slots[free_slot];
    memset(slot, 0, sizeof *slot);
    slot->session = new_session_id();
    slot->started_s = (uint64_t)time(NULL);
    atomic_store(&slot->state, XPUR_SLOT_HANDSHAKE);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd);
        close(sp[0]);
        close(sp[1]);
        atomic_store(&slot->state, XPUR_SLOT_FREE);
        return;
    }
    if (pid == 0) {
        /* the child keeps only its connection and its admission channel */
        for (int i = 0; i < g_nlisten; i++)
            close(g_listen[i]);
        if (g_ctl_listen >= 0)
            close(g_ctl_listen);
        for (int i = 0; i < MAX_CTL; i++)
            if (g_ctl[i].fd >= 0)
                close(g_ctl[i].fd);
        for (int i = 0; i < g_nslots; i++)
            if (g_meta[i].in_use && g_meta[i].admit_fd >= 0)
                close(g_meta[i].admit_fd);
        close(g_sigpipe[0]);
        close(g_sigpipe[1]);
        close(sp[0]);
        signal(SIGCHLD, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        memset(g_grants, 0, sizeof *g_grants * MAX_GRANTS);
        slot->pid = getpid();
        xpur_worker_main(&cfg, fd, tls, sp[1], slot, slot->session);
    }
    close(fd);
    close(sp[1]);
    set_cloexec_nonblock(sp[0]);
    slot->pid = pid;
    g_meta[free_slot] = (struct session_meta){pid, sp[0], 1};
}

static void handle_admit(int i)
{
    char buf[600];
    ssize_t n = read(g_meta[i].admit_fd, buf, sizeof buf - 1);
    if (n <= 0) {
        close(g_meta[i].admit_fd);
        g_meta[i].admit_fd = -1;
        return;
    }
    buf[n] = 0;
    char alloc[200] = "", card[200] = "", tenant[200] = "";
    const char *reply = "no malformed admission request\n";
    char ok[700];
    if (sscanf(buf, "admit %199s %199s %199s", alloc, card, tenant) == 3) {
        struct grant *g = grant_find(alloc);
        int live = 0;
        for (int k = 0; k < g_nslots; k++)
            if (g_meta[k].in_use && k != i && atomic_load(&g_slots[k].state) == XPUR_SLOT_ACTIVE &&
                strcmp(g_slots[k].alloc, alloc) == 0)
                live++;
        if (!g) {
            reply = "no no grant for this allocation on this node\n";
        } else if (strcmp(g->card, card) != 0) {
            reply = "no allocation granted on another card\n";
        } else if (live >= 16) {
            reply = "no too many sessions for this allocation\n";
        } else {
            snprintf(ok, sizeof ok, "ok %s %s\n", g->region, g->tenant);
            reply = ok;
            g_admitted++;
        }
    }
    if (write(g_meta[i].admit_fd, reply, strlen(reply)) < 0) {
    }
}

static void reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < g_nslots; i++) {
            if (!g_meta[i].in_use || g_meta[i].pid != pid)
                continue;
            struct xpur_stats_slot *s = &g_slots[i];
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            if (code == 2)
                g_refused_protocol++;
            else if (code == 3)
                g_refused_auth++;
            else if (code == 4)
                g_refused_backend++;
            int err = session_error_of(status, &g_meta[i], atomic_load(&s->end_reason));
            if (err >= 0)
                g_session_errors[err]++;
            if (atomic_load(&s->backend_opened))
                g_backend_loads++;
            if (atomic_load(&s->backend_opened))
                g_sessions_ended++;
            for (int a = 0; a < XPUR_STATS_API_LIMIT; a++)
                g_api_totals[a] += atomic_load(&s->calls[a]);
            if (g_meta[i].admit_fd >= 0)
                close(g_meta[i].admit_fd);
            memset(&g_meta[i], 0, sizeof g_meta[i]);
            g_meta[i].admit_fd = -1;
            memset(s, 0, sizeof *s);
            xpur_log(2, "worker %d exited (%s %d)", (int)pid, WIFEXITED(status) ? "code" : "signal",
                     WIFEXITED(status) ? code : WTERMSIG(status));
        }
    }
}

/* ------------------------------------------------------------------ control socket */

struct out {
    char *p;
    size_t len, cap;
};

static void outf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(struct out *o, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(o->p ? o->p + o->len : NULL, o->p ? o->cap - o->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (o->p && o->len + (size_t)n < o->cap) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = (o->cap + (size_t)n + 1) * 2;
        char *p = realloc(o->p, cap);
        if (!p)
            return;
        o->p = p;
        o->cap = cap;
    }
}

static const double k_edges_us[] = XPUR_RTT_EDGES_US;

static void metrics(struct out *o)
{
    int active = 0, handshake = 0;
    uint64_t calls[XPUR_STATS_API_LIMIT];
    memcpy(calls, g_api_totals, sizeof calls);
    uint64_t loads = g_backend_loads;
    for (int i = 0; i < g_nslots; i++) {
        if (!g_meta[i].in_use)
            continue;
        int st = (int)atomic_load(&g_slots[i].state);
        active += st == XPUR_SLOT_ACTIVE;
        handshake += st == XPUR_SLOT_HANDSHAKE;
        loads += atomic_load(&g_slots[i].backend_opened);
        for (int a = 0; a < XPUR_STATS_API_LIMIT; a++)
            calls[a] += atomic_load(&g_slots[i].calls[a]);
    }
    outf(o, "# HELP xpupool_remote_sessions Remote vXPU sessions by state.\n# TYPE xpupool_remote_sessions gauge\n");
    outf(o, "xpupool_remote_sessions{state=\"active\"} %d\nxpupool_remote_sessions{state=\"handshake\"} %d\n", active,
         handshake);
    outf(o, "# HELP xpupool_remote_connections_total Connections by outcome.\n"
            "# TYPE xpupool_remote_connections_total counter\n");
    outf(o, "xpupool_remote_connections_total{result=\"admitted\"} %llu\n", (unsigned long long)g_admitted);
    outf(o, "xpupool_remote_connections_total{result=\"refused_auth\"} %llu\n", (unsigned long long)g_refused_auth);
    outf(o, "xpupool_remote_connections_total{result=\"refused_protocol\"} %llu\n",
         (unsigned long long)g_refused_protocol);
    outf(o, "xpupool_remote_connections_total{result=\"refused_busy\"} %llu\n", (unsigned long long)g_refused_busy);
    outf(o, "xpupool_remote_connections_total{result=\"backend_failed\"} %llu\n", (unsigned long long)g_refused_backend);
    outf(o, "# HELP xpupool_remote_session_errors_total Connections refused and sessions ended by an error, "
            "by reason.\n# TYPE xpupool_remote_session_errors_total counter\n");
    for (int r = 0; r < SE_COUNT; r++)
        outf(o, "xpupool_remote_session_errors_total{reason=\"%s\"} %llu\n", k_session_error_names[r],
             (unsigned long long)g_session_errors[r]);
    outf(o, "# HELP xpupool_remote_backend_loads_total Sessions that loaded the driver (admitted ones only).\n"
            "# TYPE xpupool_remote_backend_loads_total counter\nxpupool_remote_backend_loads_total %llu\n",
         (unsigned long long)loads);
    outf(o, "# HELP xpupool_remote_api_calls_total Remoted driver calls by API, all sessions.\n"
            "# TYPE xpupool_remote_api_calls_total counter\n");
    for (int a = 0; a < XPUR_STATS_API_LIMIT; a++)
        if (calls[a] && xpur_api_info[a].name)
            outf(o, "xpupool_remote_api_calls_total{api=\"%s\"} %llu\n", xpur_api_info[a].name,
                 (unsigned long long)calls[a]);
    outf(o, "# HELP xpupool_remote_session_calls_total Remoted driver calls by session and API.\n"
            "# TYPE xpupool_remote_session_calls_total counter\n"
            "# TYPE xpupool_remote_session_bytes_total counter\n"
            "# TYPE xpupool_remote_session_gpu_memory_bytes gauge\n"
            "# TYPE xpupool_remote_session_rtt_seconds histogram\n");
    for (int i = 0; i < g_nslots; i++) {
        struct xpur_stats_slot *s = &g_slots[i];
        if (!g_meta[i].in_use || atomic_load(&s->state) != XPUR_SLOT_ACTIVE)
            continue;
        char lab[400];
        snprintf(lab, sizeof lab, "session=\"%u\",alloc=\"%s\",tenant=\"%s\"", s->session, s->alloc, s->tenant);
        for (int a = 0; a < XPUR_STATS_API_LIMIT; a++) {
            uint64_t c = atomic_load(&s->calls[a]);
            if (c && xpur_api_info[a].name)
                outf(o, "xpupool_remote_session_calls_total{%s,api=\"%s\"} %llu\n", lab, xpur_api_info[a].name,
                     (unsigned long long)c);
        }
        outf(o, "xpupool_remote_session_call_errors_total{%s} %llu\n", lab,
             (unsigned long long)atomic_load(&s->call_errors));
        outf(o, "xpupool_remote_session_deferred_errors_total{%s} %llu\n", lab,
             (unsigned long long)atomic_load(&s->deferred_errors));
        outf(o, "xpupool_remote_session_bytes_total{%s,direction=\"in\"} %llu\n", lab,
             (unsigned long long)atomic_load(&s->bytes_in));
        outf(o, "xpupool_remote_session_bytes_total{%s,direction=\"out\"} %llu\n", lab,
             (unsigned long long)atomic_load(&s->bytes_out));
        outf(o, "xpupool_remote_session_gpu_memory_bytes{%s} %llu\n", lab,
             (unsigned long long)atomic_load(&s->gpu_mem_bytes));
        outf(o, "xpupool_remote_session_gpu_memory_peak_bytes{%s} %llu\n", lab,
             (unsigned long long)atomic_load(&s->gpu_mem_peak));
        uint64_t cum = 0;
        for (int b = 0; b < XPUR_RTT_BUCKETS; b++) {
            cum += atomic_load(&s->rtt_buckets[b]);
            if (b < XPUR_RTT_BUCKETS - 1)
                outf(o, "xpupool_remote_session_rtt_seconds_bucket{%s,le=\"%g\"} %llu\n", lab, k_edges_us[b] / 1e6,
                     (unsigned long long)cum);
            else
                outf(o, "xpupool_remote_session_rtt_seconds_bucket{%s,le=\"+Inf\"} %llu\n", lab,
                     (unsigned long long)cum);
        }
        outf(o, "xpupool_remote_session_rtt_seconds_count{%s} %llu\n", lab,
             (unsigned long long)atomic_load(&s->rtt_count));
        outf(o, "xpupool_remote_session_rtt_seconds_sum{%s} %.9f\n", lab,
             (double)atomic_load(&s->rtt_sum_ns) / 1e9);
    }
}

static void ctl_command(struct ctl_client *c, char *line)
{
    struct out o = {0};
    char verb[16] = "", f1[200] = "", f2[200] = "", f3[600] = "", f4[200] = "";
    int k = sscanf(line, "%15s %199s %199s %599s %199s", verb, f1, f2, f3, f4);
    if (k >= 1 && strcmp(verb, "ping") == 0) {
        outf(&o, "ok\n");
    } else if (k == 5 && strcmp(verb, "grant") == 0) {
        if (!valid_field(f1, 127) || !valid_field(f2, 95) || !valid_field(f3, 511) || !valid_field(f4, 127)) {
            outf(&o, "error invalid field\n");
        } else {
            struct grant *g = grant_find(f1);
            for (int i = 0; !g && i < MAX_GRANTS; i++)
                if (!g_grants[i].used)
                    g = &g_grants[i];
            if (!g) {
                outf(&o, "error grant table full\n");
            } else {
                snprintf(g->alloc, sizeof g->alloc, "%.127s", f1);
                snprintf(g->card, sizeof g->card, "%.95s", f2);
                snprintf(g->region, sizeof g->region, "%.511s", f3);
                snprintf(g->tenant, sizeof g->tenant, "%.127s", f4);
                g->used = 1;
                outf(&o, "ok\n");
            }
        }
    } else if (k == 2 && strcmp(verb, "revoke") == 0) {
        struct grant *g = grant_find(f1);
        if (g)
            memset(g, 0, sizeof *g);
        int killed = 0;
        for (int i = 0; i < g_nslots; i++)
            if (g_meta[i].in_use && strcmp(g_slots[i].alloc, f1) == 0 && g_meta[i].pid > 0) {
                kill(g_meta[i].pid, SIGKILL); /* ending the process frees the session's GPU memory */
                g_meta[i].revoked = 1;
                killed++;
            }
        outf(&o, "ok %d\n", killed);
    } else if (k >= 1 && strcmp(verb, "grants") == 0) {
        for (int i = 0; i < MAX_GRANTS; i++)
            if (g_grants[i].used)
                outf(&o, "%s %s %s %s\n", g_grants[i].alloc, g_grants[i].card, g_grants[i].region, g_grants[i].tenant);
        outf(&o, "end\n");
    } else if (k >= 1 && strcmp(verb, "sessions") == 0) {
        for (int i = 0; i < g_nslots; i++) {
            struct xpur_stats_slot *s = &g_slots[i];
            if (!g_meta[i].in_use)
                continue;
            const char *st[] = {"free", "handshake", "active", "ended"};
            uint32_t state = atomic_load(&s->state);
            uint64_t calls = 0;
            for (int a = 0; a < XPUR_STATS_API_LIMIT; a++)
                calls += atomic_load(&s->calls[a]);
            outf(&o, "%u %d %s %s %s %s %llu %llu %llu %llu\n", s->session, (int)g_meta[i].pid,
                 st[state < 4 ? state : 0], s->alloc[0] ? s->alloc : "-", s->tenant[0] ? s->tenant : "-",
                 s->card[0] ? s->card : "-", (unsigned long long)calls, (unsigned long long)atomic_load(&s->bytes_in),
                 (unsigned long long)atomic_load(&s->bytes_out), (unsigned long long)atomic_load(&s->gpu_mem_bytes));
        }
        outf(&o, "end\n");
    } else if (k >= 1 && strcmp(verb, "metrics") == 0) {
        metrics(&o);
    } else {
        outf(&o, "error unknown command\n");
    }
    if (o.p) {
        /* the control socket is local and answers are small: a blocking write is fine */
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK);
        size_t off = 0;
        while (off < o.len) {
            ssize_t w = write(c->fd, o.p + off, o.len - off);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        free(o.p);
    }
}

static void ctl_read(struct ctl_client *c)
{
    ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
    if (n > 0)
        c->len += (size_t)n;
    c->buf[c->len] = 0;
    char *nl = strchr(c->buf, '\n');
    if (nl || n <= 0 || c->len == sizeof c->buf - 1) {
        if (nl) {
            *nl = 0;
            ctl_command(c, c->buf);
        }
        close(c->fd);
        c->fd = -1;
        c->len = 0;
    }
}

/* ------------------------------------------------------------------ main */

static void usage(void)
{
    fprintf(stderr,
            "usage: xpu-remoted --token-keys PEM --node NAME --card UUID[=VISIBLE]... --control PATH\n"
            "                   [--listen HOST:PORT --tls-cert PEM --tls-key PEM | --insecure-plaintext]\n"
            "                   [--unix PATH] [--shim libxpushim.so | --no-shim] [--driver libcuda.so.1]\n"
            "                   [--module-cache DIR] [--max-sessions N] [--max-bulk-mib N]\n"
            "                   [--keepalive-ms N] [--idle-timeout-ms N] [--handshake-timeout-ms N] [--log N]\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, 0, 'l'},      {"unix", required_argument, 0, 'u'},
        {"control", required_argument, 0, 'c'},     {"tls-cert", required_argument, 0, 'C'},
        {"tls-key", required_argument, 0, 'K'},     {"insecure-plaintext", no_argument, 0, 'P'},
        {"token-keys", required_argument, 0, 't'},  {"node", required_argument, 0, 'n'},
        {"card", required_argument, 0, 'd'},        {"shim", required_argument, 0, 's'},
        {"no-shim", no_argument, 0, 'S'},           {"driver", required_argument, 0, 'D'},
        {"module-cache", required_argument, 0, 'm'}, {"max-sessions", required_argument, 0, 'M'},
        {"max-bulk-mib", required_argument, 0, 'b'}, {"keepalive-ms", required_argument, 0, 'k'},
        {"idle-timeout-ms", required_argument, 0, 'i'}, {"handshake-timeout-ms", required_argument, 0, 'h'},
        {"log", required_argument, 0, 'v'},         {0, 0, 0, 0},
    };
    const char *listen_specs[MAX_LISTEN], *unix_path = NULL, *ctl_path = NULL, *cert = NULL, *key = NULL,
               *keys_path = NULL;
    int nspecs = 0, plaintext = 0, no_shim = 0;
    snprintf(cfg.driver, sizeof cfg.driver, "libcuda.so.1");
    cfg.max_bulk = 64u << 20;
    cfg.keepalive_ms = 1000;
    cfg.idle_timeout_ms = 10000;
    cfg.handshake_timeout_ms = 5000;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            if (nspecs < MAX_LISTEN)
                listen_specs[nspecs++] = optarg;
            break;
        case 'u': unix_path = optarg; break;
        case 'c': ctl_path = optarg; break;
        case 'C': cert = optarg; break;
        case 'K': key = optarg; break;
        case 'P': plaintext = 1; break;
        case 't': keys_path = optarg; break;
        case 'n': snprintf(cfg.node, sizeof cfg.node, "%s", optarg); break;
        case 'd':
            if (cfg.ncards < XPUR_MAX_CARDS) {
                struct xpur_card *cd = &cfg.cards[cfg.ncards++];
                char *eq = strchr(optarg, '=');
                snprintf(cd->uuid, sizeof cd->uuid, "%.*s", eq ? (int)(eq - optarg) : (int)strlen(optarg), optarg);
                snprintf(cd->visible, sizeof cd->visible, "%s", eq ? eq + 1 : cd->uuid);
            }
            break;
        case 's': snprintf(cfg.shim, sizeof cfg.shim, "%s", optarg); break;
        case 'S': no_shim = 1; break;
        case 'D': snprintf(cfg.driver, sizeof cfg.driver, "%s", optarg); break;
        case 'm': snprintf(cfg.module_dir, sizeof cfg.module_dir, "%s", optarg); break;
        case 'M': g_nslots = atoi(optarg); break;
        case 'b': cfg.max_bulk = (uint32_t)atoi(optarg) << 20; break;
        case 'k': cfg.keepalive_ms = atoi(optarg); break;
        case 'i': cfg.idle_timeout_ms = atoi(optarg); break;
        case 'h': cfg.handshake_timeout_ms = atoi(optarg); break;
        case 'v': xpur_log_level = atoi(optarg); break;
        default: usage(); return 2;
        }
    }
    if (!keys_path || !cfg.node[0] || !cfg.ncards || !ctl_path || (!nspecs && !unix_path)) {
        usage();
        return 2;
    }
    if (!cfg.shim[0] && !no_shim) {
        fprintf(stderr, "xpu-remoted: --shim is required (the slice is enforced by libxpushim in each worker)\n");
        return 2;
    }
    if (g_nslots < 1 || g_nslots > 4096 || cfg.max_bulk < (1u << 20) || cfg.max_bulk > XPUR_LIMIT_MAX_BULK_CEILING) {
        fprintf(stderr, "xpu-remoted: --max-sessions 1..4096, --max-bulk-mib 1..256\n");
        return 2;
    }
    cfg.nkeys = xpur_token_load_keys(keys_path, cfg.keys, XPUR_MAX_KEYS);
    if (!cfg.nkeys) {
        fprintf(stderr, "xpu-remoted: no Ed25519 public key in %s\n", keys_path);
        return 2;
    }
    if (nspecs) {
        char err[256];
        if (cert && key) {
            if (!(cfg.tls = xpur_tls_server_ctx(cert, key, err, sizeof err))) {
                fprintf(stderr, "xpu-remoted: %s\n", err);
                return 2;
            }
        } else if (!plaintext) {
            fprintf(stderr, "xpu-remoted: TCP needs --tls-cert and --tls-key (or --insecure-plaintext on an "
                            "isolated network)\n");
            return 2;
        }
    }
    g_grants = calloc(MAX_GRANTS, sizeof *g_grants);
    g_meta = calloc((size_t)g_nslots, sizeof *g_meta);
    g_slots = mmap(NULL, sizeof *g_slots * (size_t)g_nslots, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!g_grants || !g_meta || g_slots == MAP_FAILED) {
        fprintf(stderr, "xpu-remoted: out of memory\n");
        return 1;
    }
    for (int i = 0; i < g_nslots; i++)
        g_meta[i].admit_fd = -1;
    for (int i = 0; i < MAX_CTL; i++)
        g_ctl[i].fd = -1;
    for (int i = 0; i < nspecs; i++) {
        int fd = listen_tcp(listen_specs[i], cfg.tls != NULL);
        if (fd < 0)
            return 2;
        g_listen_tls[g_nlisten] = cfg.tls != NULL;
        g_listen[g_nlisten++] = fd;
    }
    if (unix_path) {
        int fd = listen_unix(unix_path, 0660);
        if (fd < 0)
            return 2;
        printf("listening unix %s\n", unix_path);
        fflush(stdout);
        g_listen_tls[g_nlisten] = 0;
        g_listen[g_nlisten++] = fd;
    }
    if ((g_ctl_listen = listen_unix(ctl_path, 0600)) < 0)
        return 2;
    if (pipe2(g_sigpipe, O_CLOEXEC | O_NONBLOCK))
        return 1;
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    printf("ready\n");
    fflush(stdout);

    while (!g_stop) {
        struct pollfd p[MAX_LISTEN + 2 + MAX_CTL + 4096];
        int np = 0;
        for (int i = 0; i < g_nlisten; i++)
            p[np++] = (struct pollfd){g_listen[i], POLLIN, 0};
        p[np++] = (struct pollfd){g_ctl_listen, POLLIN, 0};
        p[np++] = (struct pollfd){g_sigpipe[0], POLLIN, 0};
        int ctl_base = np;
        for (int i = 0; i < MAX_CTL; i++)
            p[np++] = (struct pollfd){g_ctl[i].fd, POLLIN, 0};
        int adm_base = np;
        for (int i = 0; i < g_nslots; i++)
            p[np++] = (struct pollfd){g_meta[i].in_use ? g_meta[i].admit_fd : -1, POLLIN, 0};
        if (poll(p, (nfds_t)np, 1000) < 0 && errno != EINTR)
            break;
        if (p[g_nlisten + 1].revents) {
            char b[64];
            while (read(g_sigpipe[0], b, sizeof b) > 0) {
            }
            reap();
        }
        for (int i = 0; i < g_nlisten; i++)
            if (p[i].revents & POLLIN)
                accept_one(g_listen[i], g_listen_tls[i]);
        if (p[g_nlisten].revents & POLLIN) {
            int fd = accept4(g_ctl_listen, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            int placed = 0;
            for (int i = 0; fd >= 0 && i < MAX_CTL && !placed; i++)
                if (g_ctl[i].fd < 0) {
                    g_ctl[i].fd = fd;
                    g_ctl[i].len = 0;
                    placed = 1;
                }
            if (fd >= 0 && !placed)
                close(fd);
        }
        for (int i = 0; i < MAX_CTL; i++)
            if (g_ctl[i].fd >= 0 && p[ctl_base + i].revents)
                ctl_read(&g_ctl[i]);
        for (int i = 0; i < g_nslots; i++)
            if (g_meta[i].in_use && g_meta[i].admit_fd >= 0 && p[adm_base + i].revents)
                handle_admit(i);
    }
    for (int i = 0; i < g_nslots; i++)
        if (g_meta[i].in_use && g_meta[i].pid > 0)
            kill(g_meta[i].pid, SIGKILL);
    while (wait(NULL) > 0) {
    }
    if (unix_path)
        unlink(unix_path);
    unlink(ctl_path);
    return 0;
}
