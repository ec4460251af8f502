/*
 * xpu-remoted: the supervisor (main.c) and the per-session worker set-up (worker.c).
 *
 * The supervisor listens (TCP with TLS, and a unix socket for same-host clients), keeps the grants
 * its node agent sends over the control socket (which allocation may use which card and shim
 * region), and forks one process per connection. That process does the TLS handshake, reads
 * HELLO, verifies the session token and asks the supervisor to admit it, all before any driver
 * library is loaded; only an admitted session loads libxpushim and the driver and becomes the
 * session worker. The supervisor never loads the driver.
 */
#ifndef XPUR_DAEMON_H
#define XPUR_DAEMON_H

#include <stdint.h>

#include "stats.h"
#include "token.h"

typedef struct ssl_ctx_st SSL_CTX;

#define XPUR_MAX_CARDS 64
#define XPUR_MAX_KEYS 8

struct xpur_card {
    char uuid[96];
    char visible[96]; /* CUDA_VISIBLE_DEVICES value for a worker on this card */
};

struct xpur_daemon_cfg {
    SSL_CTX *tls; /* TCP connections; unix-socket connections are plain */
    EVP_PKEY *keys[XPUR_MAX_KEYS];
    int nkeys;
    char node[128];
    struct xpur_card cards[XPUR_MAX_CARDS];
    int ncards;
    char shim[512];   /* libxpushim.so loaded in every worker ("" only with --no-shim, for tests) */
    char driver[512]; /* the driver the worker loads (default libcuda.so.1) */
    char module_dir[512];
    uint32_t max_bulk;
    int keepalive_ms, idle_timeout_ms, handshake_timeout_ms;
    int log_level;
};

/* the child side of one connection; never returns */
void xpur_worker_main(const struct xpur_daemon_cfg *cfg, int fd, int tls, int admit_fd, struct xpur_stats_slot *slot,
                      uint32_t session_id) __attribute__((noreturn));

void xpur_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
extern int xpur_log_level;

#endif
