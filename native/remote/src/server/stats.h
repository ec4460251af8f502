/*
 * Per-session metrics in a shared mapping the supervisor creates before it forks: each worker is
 * the single writer of its slot (relaxed atomics), the supervisor reads every slot to answer the
 * control socket's `metrics` command. Bounded: one slot per admitted session.
 */
#ifndef XPUR_STATS_H
#define XPUR_STATS_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#define XPUR_STATS_API_LIMIT 1024
/* RTT histogram bucket upper edges in microseconds (the last bucket is +Inf) */
#define XPUR_RTT_EDGES_US {10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 1000, 2000, 5000, 10000, 100000}
#define XPUR_RTT_BUCKETS 20

enum xpur_slot_state { XPUR_SLOT_FREE, XPUR_SLOT_HANDSHAKE, XPUR_SLOT_ACTIVE, XPUR_SLOT_ENDED };

/* Why an admitted session ended, as its worker saw it (the first reason wins); the supervisor
 * adds what only it sees (refusals, a worker killed by a signal) when it reaps the worker. */
enum xpur_end_reason {
    XPUR_END_UNKNOWN = 0,
    XPUR_END_BYE,        /* the client said goodbye: not an error */
    XPUR_END_CONNECTION, /* the connection closed, broke or stayed silent past the grace */
    XPUR_END_STICKY,     /* a sticky CUDA error (a faulting kernel) ended the context */
    XPUR_END_BAD_FRAME,  /* the client sent a frame or arguments that failed validation */
};

struct xpur_stats_slot {
    _Atomic uint32_t state;
    _Atomic uint32_t end_reason; /* enum xpur_end_reason, written once by the worker */
    uint32_t session;
    pid_t pid;
    char alloc[128];
    char tenant[128];
    char card[96];
    uint64_t started_s;
    _Atomic uint64_t backend_opened;   /* 1 once the driver library was loaded for this session */
    _Atomic uint64_t calls[XPUR_STATS_API_LIMIT];
    _Atomic uint64_t call_errors;
    _Atomic uint64_t deferred_errors;
    _Atomic uint64_t bytes_in, bytes_out;
    _Atomic uint64_t gpu_mem_bytes, gpu_mem_peak;
    /* client-observed round trips of synchronous calls (sent in PING frames) */
    _Atomic uint64_t rtt_buckets[XPUR_RTT_BUCKETS];
    _Atomic uint64_t rtt_count, rtt_sum_ns;
};

#endif
