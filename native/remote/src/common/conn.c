#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void xpur_conn_fd(struct xpur_conn *c, int fd)
{
    memset(c, 0, sizeof *c);
    c->kind = XPUR_CONN_FD;
    c->fd = fd;
}

void xpur_conn_mem(struct xpur_conn *c, const void *buf, size_t n)
{
    memset(c, 0, sizeof *c);
    c->kind = XPUR_CONN_MEM;
    c->fd = -1;
    c->mem = (const uint8_t *)buf;
    c->mem_len = n;
}

ssize_t xpur_conn_recv(struct xpur_conn *c, void *buf, size_t cap)
{
    ssize_t n;
    switch (c->kind) {
    case XPUR_CONN_FD:
        do
            n = recv(c->fd, buf, cap, 0);
        while (n < 0 && errno == EINTR);
        break;
    case XPUR_CONN_TLS: {
        size_t got = 0;
        int r = SSL_read_ex(c->ssl, buf, cap, &got);
        if (r == 1)
            n = (ssize_t)got;
        else
            n = SSL_get_error(c->ssl, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
        break;
    }
    case XPUR_CONN_MEM: {
        size_t left = c->mem_len - c->mem_off;
        n = (ssize_t)(left < cap ? left : cap);
        memcpy(buf, c->mem + c->mem_off, (size_t)n);
        c->mem_off += (size_t)n;
        break;
    }
    default:
        return -1;
    }
    if (n > 0)
        c->bytes_in += (uint64_t)n;
    return n < 0 ? -1 : n;
}

int xpur_conn_recv_all(struct xpur_conn *c, void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n) {
        ssize_t r = xpur_conn_recv(c, p, n);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

int xpur_conn_sendv(struct xpur_conn *c, struct iovec *iov, int n)
{
    for (int i = 0; i < n; i++)
        c->bytes_out += iov[i].iov_len;
    if (c->kind == XPUR_CONN_MEM)
        return 0;
    if (c->kind == XPUR_CONN_TLS) {
        for (int i = 0; i < n; i++) {
            const uint8_t *p = iov[i].iov_base;
            size_t left = iov[i].iov_len;
            while (left) {
                size_t wrote = 0;
                if (SSL_write_ex(c->ssl, p, left, &wrote) != 1)
                    return -1;
                p += wrote;
                left -= wrote;
            }
        }
        return 0;
    }
    if (c->kind != XPUR_CONN_FD)
        return -1;
    while (n > 0) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)(n > 64 ? 64 : n)};
        ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

int xpur_conn_send(struct xpur_conn *c, const void *buf, size_t n)
{
    struct iovec v = {(void *)buf, n};
    return xpur_conn_sendv(c, &v, 1);
}

int xpur_conn_buffered(struct xpur_conn *c)
{
    return c->kind == XPUR_CONN_TLS ? SSL_pending(c->ssl) : 0;
}

void xpur_conn_close(struct xpur_conn *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->fd >= 0 && c->kind != XPUR_CONN_MEM)
        close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
    c->kind = XPUR_CONN_NONE;
}

int xpur_sock_timeouts(int fd, int recv_ms, int send_ms)
{
    struct timeval r = {recv_ms / 1000, (recv_ms % 1000) * 1000}, s = {send_ms / 1000, (send_ms % 1000) * 1000};
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &r, sizeof r) || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &s, sizeof s))
        return -1;
    return 0;
}

int xpur_sock_tune(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) || (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
        return 0;
    int one = 1, idle = 5, intvl = 1, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    return 0;
}

/* A socket BIO that never raises SIGPIPE: this code runs inside applications (the client library),
 * whose signal dispositions are not ours to change; a vanished peer must be an error, not a kill. */
static BIO_METHOD *g_bio_method;
static pthread_once_t g_bio_once = PTHREAD_ONCE_INIT;

static int bio_write(BIO *b, const char *buf, size_t len, size_t *written)
{
    int fd = -1;
    BIO_get_fd(b, &fd);
    BIO_clear_retry_flags(b);
    ssize_t w;
    do
        w = send(fd, buf, len, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w <= 0)
        return 0; /* timeouts included: the caller treats the connection as lost */
    *written = (size_t)w;
    return 1;
}

static int bio_read(BIO *b, char *buf, size_t len, size_t *got)
{
    int fd = -1;
    BIO_get_fd(b, &fd);
    BIO_clear_retry_flags(b);
    ssize_t r;
    do
        r = recv(fd, buf, len, 0);
    while (r < 0 && errno == EINTR);
    if (r <= 0) {
        if (r == 0)
            BIO_set_flags(b, BIO_FLAGS_IN_EOF);
        return 0;
    }
    *got = (size_t)r;
    return 1;
}

static void bio_init(void)
{
    const BIO_METHOD *sock = BIO_s_socket();
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR, "xpur-socket");
    if (!m)
        return;
    BIO_meth_set_write_ex(m, bio_write);
    BIO_meth_set_read_ex(m, bio_read);
    BIO_meth_set_ctrl(m, BIO_meth_get_ctrl(sock));
    BIO_meth_set_create(m, BIO_meth_get_create(sock));
    BIO_meth_set_destroy(m, BIO_meth_get_destroy(sock));
    g_bio_method = m;
}

static int attach_bio(SSL *ssl, int fd)
{
    pthread_once(&g_bio_once, bio_init);
    BIO *b = g_bio_method ? BIO_new(g_bio_method) : NULL;
    if (!b)
        return -1;
    BIO_set_fd(b, fd, BIO_NOCLOSE);
    SSL_set_bio(ssl, b, b);
    return 0;
}

static void tls_err(char *err, size_t n, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[200] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, n, "%s%s%s", what, e ? ": " : "", buf);
    ERR_clear_error();
}

SSL_CTX *xpur_tls_server_ctx(const char *cert_pem, const char *key_pem, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        tls_err(err, errlen, "SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
    /* bulk copies: read whole socket buffers, not a 5-byte header then one record per syscall */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, 256 * 1024);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_pem) != 1) {
        tls_err(err, errlen, "server certificate");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_pem, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        tls_err(err, errlen, "server key");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

SSL_CTX *xpur_tls_client_ctx(const char *ca_pem, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        tls_err(err, errlen, "SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, 256 * 1024);
    if (SSL_CTX_load_verify_locations(ctx, ca_pem, NULL) != 1) {
        tls_err(err, errlen, "CA bundle");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int xpur_tls_accept(struct xpur_conn *c, SSL_CTX *ctx, int fd, char *err, size_t errlen)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl || attach_bio(ssl, fd)) {
        tls_err(err, errlen, "SSL_new");
        SSL_free(ssl);
        return -1;
    }
    if (SSL_accept(ssl) != 1) {
        tls_err(err, errlen, "TLS handshake");
        SSL_free(ssl);
        return -1;
    }
    xpur_conn_fd(c, fd);
    c->kind = XPUR_CONN_TLS;
    c->ssl = ssl;
    return 0;
}

int xpur_tls_connect(struct xpur_conn *c, SSL_CTX *ctx, int fd, const char *server_name, char *err, size_t errlen)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl || attach_bio(ssl, fd)) {
        tls_err(err, errlen, "SSL_new");
        SSL_free(ssl);
        return -1;
    }
    struct in6_addr a6;
    struct in_addr a4;
    if (inet_pton(AF_INET, server_name, &a4) == 1 || inet_pton(AF_INET6, server_name, &a6) == 1) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        X509_VERIFY_PARAM_set1_ip_asc(vp, server_name);
    } else {
        SSL_set_tlsext_host_name(ssl, server_name);
        SSL_set1_host(ssl, server_name);
    }
    if (SSL_connect(ssl) != 1) {
        long v = SSL_get_verify_result(ssl);
        if (v != X509_V_OK)
            snprintf(err, errlen, "TLS: server certificate not trusted for %s: %s", server_name,
                     X509_verify_cert_error_string(v));
        else
            tls_err(err, errlen, "TLS handshake");
        SSL_free(ssl);
        return -1;
    }
    xpur_conn_fd(c, fd);
    c->kind = XPUR_CONN_TLS;
    c->ssl = ssl;
    return 0;
}
