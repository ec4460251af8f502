/*
 * Baseline for the remoting benchmarks: what plain sockets do on this machine, in the same run.
 *   raw_tcp pingpong N      64-byte request / 16-byte reply round trips over TCP loopback
 *                            (TCP_NODELAY, blocking), prints p50/p99/p999 in microseconds
 *   raw_tcp stream MIB REPS  MIB bytes sent one way over TCP loopback, REPS times, prints MB/s
 *                            (best and median); the receiver reads into a reused 4 MiB buffer
 *                            (cache-friendly: the fastest a plain receiver can go)
 * The peer is a forked child; nothing else runs in either process.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int all(int fd, void *b, size_t n, int rd)
{
    uint8_t *p = b;
    while (n) {
        ssize_t r = rd ? recv(fd, p, n, 0) : send(fd, p, n, MSG_NOSIGNAL);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int pair(int *srv, int *cli)
{
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &al))
        return -1;
    *cli = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(*cli, (struct sockaddr *)&a, sizeof a))
        return -1;
    *srv = accept(l, NULL, NULL);
    close(l);
    setsockopt(*cli, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(*srv, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    int srv, cli;
    if (pair(&srv, &cli))
        return 1;
    if (!strcmp(argv[1], "pingpong")) {
        int n = atoi(argv[2]);
        pid_t pid = fork();
        if (pid == 0) {
            close(cli);
            uint8_t q[64], r[16] = {0};
            while (all(srv, q, sizeof q, 1) == 0)
                if (all(srv, r, sizeof r, 0))
                    break;
            _exit(0);
        }
        close(srv);
        uint8_t q[64] = {0}, r[16];
        double *v = malloc(sizeof(double) * (size_t)n);
        for (int i = 0; i < n + 1000; i++) {
            double t = now();
            if (all(cli, q, sizeof q, 0) || all(cli, r, sizeof r, 1))
                return 1;
            if (i >= 1000)
                v[i - 1000] = (now() - t) * 1e6;
        }
        close(cli);
        waitpid(pid, NULL, 0);
        qsort(v, (size_t)n, sizeof *v, cmp);
        printf("pingpong_us p50 %.2f p99 %.2f p999 %.2f\n", v[n / 2], v[(long)n * 99 / 100], v[(long)n * 999 / 1000]);
        return 0;
    }
    if (!strcmp(argv[1], "stream") && argc > 3) {
        size_t bytes = (size_t)atol(argv[2]) << 20;
        int reps = atoi(argv[3]);
        pid_t pid = fork();
        if (pid == 0) { /* receiver: read everything, acknowledge each transfer with one byte */
            close(cli);
            size_t cap = 4u << 20;
            uint8_t *buf = malloc(cap);
            for (int i = 0; i < reps; i++) {
                for (size_t left = bytes; left;) {
                    size_t k = left < cap ? left : cap;
                    if (all(srv, buf, k, 1))
                        _exit(1);
                    left -= k;
                }
                uint8_t ack = 1;
                all(srv, &ack, 1, 0);
            }
            _exit(0);
        }
        close(srv);
        uint8_t *buf = malloc(bytes);
        memset(buf, 7, bytes);
        double *v = malloc(sizeof(double) * (size_t)reps);
        for (int i = 0; i < reps; i++) {
            double t = now();
            uint8_t ack;
            if (all(cli, buf, bytes, 0) || all(cli, &ack, 1, 1))
                return 1;
            v[i] = bytes / (now() - t) / 1e6;
        }
        waitpid(pid, NULL, 0);
        qsort(v, (size_t)reps, sizeof *v, cmp);
        printf("stream_mbps best %.0f median %.0f\n", v[reps - 1], v[reps / 2]);
        return 0;
    }
    return 2;
}
