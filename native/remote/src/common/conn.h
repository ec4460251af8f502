/*
 * One byte stream between a remoting client and its session worker: a plain socket (TCP or
 * unix), TLS over a socket (OpenSSL), or an in-memory source (fuzzing the worker's frame loop
 * with the production code path). Blocking I/O; the owner sets socket timeouts, and any timeout,
 * reset or short read is an error: callers treat the session as lost, never retry silently.
 */
#ifndef XPUR_CONN_H
#define XPUR_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

enum xpur_conn_kind { XPUR_CONN_NONE, XPUR_CONN_FD, XPUR_CONN_TLS, XPUR_CONN_MEM };

struct xpur_conn {
    enum xpur_conn_kind kind;
    int fd;
    SSL *ssl;
    const uint8_t *mem; /* XPUR_CONN_MEM: bytes to read; writes are counted and dropped */
    size_t mem_len, mem_off;
    uint64_t bytes_in, bytes_out;
};

void xpur_conn_fd(struct xpur_conn *c, int fd);
void xpur_conn_mem(struct xpur_conn *c, const void *buf, size_t n);
/* >0 bytes read, 0 orderly end of stream, -1 error or timeout */
ssize_t xpur_conn_recv(struct xpur_conn *c, void *buf, size_t cap);
/* exactly n bytes: 0, else -1 */
int xpur_conn_recv_all(struct xpur_conn *c, void *buf, size_t n);
/* everything in iov: 0, else -1 (the iov array is consumed) */
int xpur_conn_sendv(struct xpur_conn *c, struct iovec *iov, int n);
int xpur_conn_send(struct xpur_conn *c, const void *buf, size_t n);
/* bytes already decrypted and buffered by TLS (readable without blocking) */
int xpur_conn_buffered(struct xpur_conn *c);
void xpur_conn_close(struct xpur_conn *c);

/* socket helpers */
int xpur_sock_timeouts(int fd, int recv_ms, int send_ms);
int xpur_sock_tune(int fd); /* TCP_NODELAY + keepalive on TCP sockets; no-op on unix sockets */

/* TLS (TLS 1.3 only). Server: certificate chain + key. Client: CA bundle; verifies the name. */
SSL_CTX *xpur_tls_server_ctx(const char *cert_pem, const char *key_pem, char *err, size_t errlen);
SSL_CTX *xpur_tls_client_ctx(const char *ca_pem, char *err, size_t errlen);
/* handshake on fd; on success c becomes a TLS connection. server_name: host name or IP literal */
int xpur_tls_accept(struct xpur_conn *c, SSL_CTX *ctx, int fd, char *err, size_t errlen);
int xpur_tls_connect(struct xpur_conn *c, SSL_CTX *ctx, int fd, const char *server_name, char *err, size_t errlen);

#endif
