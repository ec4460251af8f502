/*
 * Compute limiter glue: measures GPU time with events around batches of launches, feeds the
 * pure GCRA arithmetic in limiter.c, and computes the work-conserving effective share from
 * the card region.
 *
 * Measurement (one meter per process and device):
 *  - A batch is a run of launches on ONE stream, bracketed by a start and an end event
 *    recorded on that stream, so its span (elapsed start -> end) is never negative.
 *  - Batches of different streams may overlap in time. The charge is the device time the
 *    process kept busy: the union of the batch intervals. Every interval is positioned on
 *    one timeline by the elapsed time from an anchor event (an earlier completed event of
 *    this meter, re-anchored every second for float precision); the newly covered part of
 *    each completed batch is what it costs.
 *  - Each launch is charged an estimate when its batch closes (one CAS per batch); the
 *    measurement corrects it when the batch completes.
 *
 * CUDA rules kept here (the fake driver enforces them in the tests):
 *  - Work on a capturing stream is not executed: such launches are neither measured nor
 *    throttled (graphs are charged when they are launched), and no event of ours is ever
 *    recorded on a capturing stream.
 *  - While any capture may be in progress, our event queries and waits run in the RELAXED
 *    capture mode, so they never count as "unsafe" calls that invalidate a GLOBAL capture of
 *    another thread. Capture begin hooks wait for in-flight queries first (a Dekker handshake
 *    on g_captures / g_in_query), so a query never races a capture start.
 *  - No thread waits for the GPU (cuEventSynchronize) while holding the meter lock: a wait
 *    pins the batch, drops the lock, waits, and re-takes it.
 *
 * Hot path (no throttle): one clock read, a few relaxed loads, a thread-cached stream slot,
 * a short spin lock; two event records per batch (<= 64 launches). No heap allocation, no
 * getenv, no logging.
 */
#define _GNU_SOURCE
#include "shim_core.h"

#include <sched.h>
#include <string.h>
#include <time.h>

#define NMARK 32u                 /* batches in flight per device */
#define NSTREAM 32u               /* streams tracked per device */
#define MAX_OUTSTANDING 4u        /* closed, unfinished batches per stream */
#define BATCH_MAX 64u
#define NIV 64u                   /* recent busy intervals kept for the union */
#define SPARSE_GAP_NS 100000ull   /* a launch after >= 100 us idle closes batches eagerly */
#define POLL_EVERY_NS 20000ull
#define REFRESH_EVERY_NS 1000000ull
#define REANCHOR_NS 1000000000ll  /* keep anchor offsets below 1 s (float ms precision) */
#define MAX_WAIT_PER_LAUNCH_NS 2000000000ull /* never block a launch longer than 2 s */
#define NONE (-1)

struct mark {                      /* one closed batch on one stream */
    void *start, *end;
    uint32_t n;
    int stream;                    /* index in st[] */
    int next;                      /* FIFO of its stream / free list */
    int pins;                      /* waiters outside the lock (under the lock) */
    int done;                      /* polled while pinned: free when unpinned */
    uint64_t est_charged;
    int64_t lb;                    /* its start lies at or after this timeline position */
};

struct strm {
    uintptr_t key;                 /* 0 = free slot */
    void *handle;                  /* what to record on */
    const void *owner;             /* per-thread default stream: only its thread records */
    const struct xpu_meter_ops *ops;
    int open;                      /* mark holding the open batch's start event, or NONE */
    uint32_t batch_n;
    uint64_t batch_est, batch_open_ns, last_launch_ns, last_gap_ns;
    int head, tail;                /* closed batches in flight, oldest first */
    unsigned outstanding;
    uint64_t est_ns;               /* EWMA of charged GPU ns per launch on this stream */
    int have_est;                  /* at least one batch of this stream measured */
};

struct meter {
    atomic_flag lock;
    /* read without the lock on the launch path: atomics (written only in refresh/ensure) */
    _Atomic int enabled, broken;
    _Atomic uint64_t gen, next_refresh_ns, period_ns;
    int ev_ready;
    struct mark mk[NMARK];
    int free_mark;
    struct strm st[NSTREAM];
    unsigned nst;                  /* slots ever used: st[0..nst) */
    void *anchor;                  /* a completed event fixing the timeline's origin */
    int have_anchor;
    int64_t anchor_pos;
    struct { int64_t s, e; } iv[NIV];
    unsigned niv;
    int64_t frontier;              /* everything before it is already charged */
    int64_t max_end;               /* latest end of a processed batch (timeline position) */
    uint64_t last_poll_ns;
    struct xpu_dev_cfg cfg;
    uint32_t eff_bp;
    struct xpu_card *card;
    int card_status;               /* -1 unknown */
    uint64_t local_launches;
    uint64_t win_start_ns, win_busy_ns;
};

static struct meter g_m[XPU_MAX_DEVICES];
#define XPU_TLS __attribute__((tls_model("initial-exec")))
static _Thread_local char t_tag XPU_TLS;             /* identifies this thread's default stream */
static _Thread_local int t_cache_dev XPU_TLS = -1, t_cache_idx XPU_TLS;
static _Thread_local uintptr_t t_cache_key XPU_TLS;
static _Thread_local void *t_cache_stream XPU_TLS;
static _Thread_local const struct xpu_meter_ops *t_cache_ops XPU_TLS;
static _Thread_local int t_launch_slot XPU_TLS;      /* stream slot from xpu_limit_before to _after */

/* ------------------------------------------------------------------ capture tracking */
static _Atomic int g_captures;     /* captures begun through our hooks and not ended */
static _Atomic int g_untracked;    /* a capture we did not see (learned from an error) */
static _Atomic int g_in_query;     /* event queries in flight */

void xpu_capture_begin(void)
{
    atomic_fetch_add(&g_captures, 1);
    /* let queries that started before this capture finish: they did not switch to RELAXED */
    for (unsigned spins = 0; atomic_load(&g_in_query) && spins < 1000000u; spins++)
        sched_yield();
}

void xpu_capture_end(void)
{
    int cur = atomic_load(&g_captures);
    while (cur > 0 && !atomic_compare_exchange_weak(&g_captures, &cur, cur - 1)) {}
}

static inline int captures_possible(void)
{
    return atomic_load_explicit(&g_captures, memory_order_relaxed) ||
           atomic_load_explicit(&g_untracked, memory_order_relaxed);
}

int xpu_captures_possible(void)
{
    return captures_possible();
}

/* query an event; in RELAXED capture mode when a capture may be in progress */
static int query_relaxed(const struct xpu_meter_ops *ops, void *ev)
{
    if (!ops->exchange_mode)
        return ops->query(ev);
    atomic_fetch_add(&g_in_query, 1); /* seq_cst: pairs with xpu_capture_begin */
    int relax = captures_possible(), saved = 0;
    if (relax)
        ops->exchange_mode(1, &saved);
    int q = ops->query(ev);
    if (relax)
        ops->exchange_mode(0, &saved);
    atomic_fetch_sub(&g_in_query, 1);
    if (q == -2) /* our event was recorded inside a capture we did not see: check streams from now on */
        atomic_store(&g_untracked, 1);
    return q;
}

static int sync_relaxed(const struct xpu_meter_ops *ops, void *ev)
{
    int saved = 0;
    if (ops->exchange_mode) /* a blocking wait: always relaxed, it cannot be ordered against captures */
        ops->exchange_mode(1, &saved);
    int rc = ops->sync(ev);
    if (ops->exchange_mode)
        ops->exchange_mode(0, &saved);
    return rc;
}

static inline int stream_capturing(const struct xpu_meter_ops *ops, void *stream)
{
    return ops->capturing && captures_possible() && ops->capturing(stream) != 0;
}

/* ------------------------------------------------------------------ lock */
static void mlock(struct meter *m)
{
    unsigned spins = 0;
    while (atomic_flag_test_and_set_explicit(&m->lock, memory_order_acquire)) {
        if (++spins > 64) {
            sched_yield();
            spins = 0;
        }
    }
}

static void munlock(struct meter *m)
{
    atomic_flag_clear_explicit(&m->lock, memory_order_release);
}

static void meter_reset(struct meter *m)
{
    struct xpu_card *card = m->card;
    int cs = m->card_status;
    memset(m, 0, sizeof *m);
    atomic_flag_clear(&m->lock);
    m->card = card;
    m->card_status = card ? cs : 0;
    m->gen = UINT64_MAX; /* forces a refresh at the first launch */
}

void xpu_limit_fork_child(void)
{
    /* events belong to the parent's contexts; the card mapping is inherited */
    for (unsigned d = 0; d < XPU_MAX_DEVICES; d++)
        meter_reset(&g_m[d]);
    atomic_store(&g_in_query, 0);
    atomic_store(&g_captures, 0); /* the parent's captures do not exist in the child */
    atomic_store(&g_untracked, 0);
    t_cache_dev = -1;
}

__attribute__((constructor)) static void meters_ctor(void)
{
    for (unsigned d = 0; d < XPU_MAX_DEVICES; d++) {
        atomic_flag_clear(&g_m[d].lock);
        g_m[d].gen = UINT64_MAX;
    }
}

/* ------------------------------------------------------------------ share refresh */
static void rescale_debt(_Atomic uint64_t *tat, uint64_t now, uint32_t old_bp, uint32_t new_bp)
{
    if (!old_bp || !new_bp || old_bp == new_bp)
        return;
    uint64_t cur = atomic_load(tat);
    for (;;) {
        if (cur <= now)
            return;
        uint64_t debt = cur - now;
        uint64_t nd = (uint64_t)((unsigned __int128)debt * old_bp / new_bp);
        if (atomic_compare_exchange_weak(tat, &cur, now + nd))
            return;
    }
}

/* Effective share from the card region (must hold m->lock). The inputs other tenants cannot
 * forge come from the agent-owned policy: who owns each slot, requests, limits, priorities.
 * Each tenant's own file only says whether it is active (its latest launch); a tenant's file
 * counts only while it names the owner the policy names. Returns 0 when there is no usable
 * card coordination (static share). */
static int card_share(struct meter *m, uint64_t now, uint32_t *eff)
{
    struct xpu_card *c = m->card;
    uint32_t slot = m->cfg.card_slot;
    if (!c || m->card_status != XPU_REGION_OK || slot != c->slot || !c->mine)
        return 0;
    const struct xpu_card_policy *p = c->policy;
    uint64_t me = g_xpu.region->cfg->hdr.container_key;
    struct xpu_tenant_view v[XPU_MAX_TENANTS];
    uint64_t owner[XPU_MAX_TENANTS];
    uint32_t n = p->hdr.ntenants, out[XPU_MAX_TENANTS];
    int consistent = 0;
    for (int tries = 0; tries < 100 && !consistent; tries++) { /* seqlock on the policy */
        uint64_t g1 = atomic_load_explicit(&p->hdr.generation, memory_order_acquire);
        if (g1 & 1u)
            continue;
        for (uint32_t i = 0; i < n; i++) {
            owner[i] = p->tenant[i].owner_key;
            v[i].request_bp = p->tenant[i].request_bp;
            v[i].limit_bp = p->tenant[i].limit_bp;
            v[i].priority = p->tenant[i].priority;
        }
        consistent = atomic_load_explicit(&p->hdr.generation, memory_order_acquire) == g1;
    }
    if (!consistent || slot >= n || owner[slot] != me)
        return 0; /* not (or no longer) our slot: no burst, no priority */
    atomic_store_explicit(&c->mine->owner_key, me, memory_order_relaxed);
    atomic_store_explicit(&c->mine->last_demand_ns, now, memory_order_relaxed);
    for (uint32_t i = 0; i < n; i++) {
        const struct xpu_tenant_state *t = c->tenant[i];
        uint64_t ld = t ? atomic_load_explicit(&t->last_demand_ns, memory_order_relaxed) : 0;
        v[i].active = owner[i] != 0 && t && atomic_load_explicit(&t->owner_key, memory_order_relaxed) == owner[i] &&
                      ld <= now + m->period_ns && now - ld <= 2 * m->period_ns;
    }
    v[slot].active = 1;
    xpu_lim_effective(v, n, out);
    *eff = out[slot];
    atomic_store_explicit(&c->mine->effective_bp, *eff, memory_order_relaxed);
    return 1;
}

/* must hold m->lock */
static void refresh(struct meter *m, unsigned d, uint64_t now)
{
    struct xpu_region *r = g_xpu.region;
    struct xpu_dev_usage *e = &r->use->dev[d];
    xpu_region_read_cfg(r, d, &m->cfg);
    m->gen = m->cfg.generation;
    m->enabled = m->cfg.request_bp != 0 || m->cfg.limit_bp != 0;
    m->period_ns = m->cfg.period_us ? (uint64_t)m->cfg.period_us * 1000ull : XPU_LIM_DEFAULT_PERIOD_NS;
    if (m->card_status == 0 && !m->card) {
        char dir[XPU_PATH_LEN];
        memcpy(dir, r->cfg->dev[d].card_dir, sizeof dir);
        dir[sizeof dir - 1] = 0;
        m->card_status = (int)xpu_card_map(dir, m->cfg.card_slot, &m->card);
    }
    uint32_t eff;
    uint32_t req = m->cfg.request_bp, lim = m->cfg.limit_bp ? m->cfg.limit_bp : m->cfg.request_bp;
    if (!card_share(m, now, &eff))
        eff = req ? req : lim;
    if (eff > XPU_LIM_FULL_BP)
        eff = XPU_LIM_FULL_BP;
    if (m->enabled && eff < XPU_LIM_MIN_BP)
        eff = XPU_LIM_MIN_BP;
    if (m->eff_bp && eff != m->eff_bp)
        rescale_debt(&e->lim_tat_ns, now, m->eff_bp, eff);
    m->eff_bp = eff;
    atomic_store_explicit(&e->effective_share_bp, m->enabled ? eff : 0, memory_order_relaxed);
    atomic_store_explicit(&e->last_launch_ns, now, memory_order_relaxed);
    if (m->local_launches) {
        atomic_fetch_add_explicit(&e->launches, m->local_launches, memory_order_relaxed);
        m->local_launches = 0;
    }
    if (!m->win_start_ns)
        m->win_start_ns = now;
    if (now - m->win_start_ns >= m->period_ns * 5) {
        uint32_t prev = atomic_load_explicit(&e->measured_share_bp, memory_order_relaxed);
        atomic_store_explicit(&e->measured_share_bp,
                              xpu_lim_ewma_bp(prev, m->win_busy_ns, now - m->win_start_ns, 8),
                              memory_order_relaxed);
        m->win_busy_ns = 0;
        m->win_start_ns = now;
    }
    m->next_refresh_ns = now + REFRESH_EVERY_NS;
}

/* ------------------------------------------------------------------ union of busy intervals */

/* adds [s, e) and returns the part of it not covered yet (must hold m->lock) */
static uint64_t union_add(struct meter *m, int64_t s, int64_t e)
{
    if (e > m->max_end)
        m->max_end = e;
    if (s < m->frontier)
        s = m->frontier;
    if (e <= s)
        return 0;
    int64_t covered = 0;
    unsigned i = 0;
    while (i < m->niv && m->iv[i].e < s)
        i++;
    unsigned j = i;
    int64_t ns = s, ne = e;
    while (j < m->niv && m->iv[j].s <= e) {
        int64_t os = m->iv[j].s > s ? m->iv[j].s : s, oe = m->iv[j].e < e ? m->iv[j].e : e;
        if (oe > os)
            covered += oe - os;
        if (m->iv[j].s < ns)
            ns = m->iv[j].s;
        if (m->iv[j].e > ne)
            ne = m->iv[j].e;
        j++;
    }
    /* replace iv[i..j) by the merged interval */
    memmove(&m->iv[i + 1], &m->iv[j], (m->niv - j) * sizeof m->iv[0]);
    m->iv[i].s = ns;
    m->iv[i].e = ne;
    m->niv = m->niv - (j - i) + 1;
    /* intervals no pending batch can overlap any more are final: forget them (batches of one
     * stream follow each other, and a batch starts after everything that had completed
     * when it was opened) */
    int64_t safe = m->max_end;
    for (unsigned k = 0; k < m->nst; k++) {
        const struct strm *st = &m->st[k];
        if (!st->key)
            continue;
        if (st->head != NONE && m->mk[st->head].lb < safe)
            safe = m->mk[st->head].lb;
        if (st->open != NONE && m->mk[st->open].lb < safe)
            safe = m->mk[st->open].lb;
    }
    while (m->niv > 1 && (m->niv == NIV || m->iv[0].e <= safe)) {
        if (m->iv[0].e > m->frontier)
            m->frontier = m->iv[0].e;
        memmove(&m->iv[0], &m->iv[1], (m->niv - 1) * sizeof m->iv[0]);
        m->niv--;
    }
    return (uint64_t)((e - s) - covered);
}

/* ------------------------------------------------------------------ marks and streams */

static int mark_alloc(struct meter *m)
{
    int k = m->free_mark;
    if (k != NONE) {
        m->free_mark = m->mk[k].next;
        m->mk[k].next = NONE;
        m->mk[k].pins = 0;
        m->mk[k].done = 0;
    }
    return k;
}

static void mark_free(struct meter *m, int k)
{
    if (m->mk[k].pins) { /* a thread still waits on its end event: freed when it unpins */
        m->mk[k].done = 1;
        return;
    }
    m->mk[k].next = m->free_mark;
    m->free_mark = k;
}

static int ensure_events(struct meter *m, unsigned d, const struct xpu_meter_ops *ops)
{
    if (m->ev_ready)
        return 0;
    if (ops->create(&m->anchor) != 0)
        goto broken;
    m->free_mark = NONE;
    for (int i = (int)NMARK - 1; i >= 0; i--) {
        if (ops->create(&m->mk[i].start) != 0 || ops->create(&m->mk[i].end) != 0)
            goto broken;
        m->mk[i].next = m->free_mark;
        m->free_mark = i;
    }
    for (unsigned i = 0; i < NSTREAM; i++)
        m->st[i].open = m->st[i].head = m->st[i].tail = NONE;
    m->frontier = m->max_end = INT64_MIN;
    m->ev_ready = 1;
    return 0;
broken:
    m->broken = 1; /* fail open for compute; counted */
    atomic_fetch_add(&g_xpu.region->use->dev[d].accounting_errors, 1);
    return -1;
}

/* stream key: explicit handles are themselves; NULL / CU_STREAM_LEGACY is the legacy stream;
 * the per-thread default stream is one per thread */
static inline uintptr_t stream_key(void *stream, const struct xpu_meter_ops *ops, void **handle, const void **owner)
{
    uintptr_t h = (uintptr_t)stream;
    *handle = stream;
    *owner = NULL;
    if (ops->per_thread_null && (h == 0 || h == 2)) {
        *owner = &t_tag;
        *handle = NULL;
        return (uintptr_t)&t_tag | 1u;
    }
    if (h == 0 || h == 1) {
        *handle = NULL;
        return 1u;
    }
    return h;
}

static void cache_slot(unsigned d, void *stream, const struct xpu_meter_ops *ops, uintptr_t key, int idx)
{
    t_cache_dev = (int)d;
    t_cache_stream = stream;
    t_cache_ops = ops;
    t_cache_key = key;
    t_cache_idx = idx;
}

static int stream_slot_slow(struct meter *m, unsigned d, void *stream, const struct xpu_meter_ops *ops, uint64_t now);

/* must hold m->lock; NONE when the table is full of busy streams. The thread's last
 * (device, stream, flavour) is cached: back-to-back launches on one stream cost a compare. */
static inline int stream_slot(struct meter *m, unsigned d, void *stream, const struct xpu_meter_ops *ops, uint64_t now)
{
    if (XPU_LIKELY(t_cache_dev == (int)d && t_cache_stream == stream && t_cache_ops == ops &&
                   m->st[t_cache_idx].key == t_cache_key))
        return t_cache_idx;
    return stream_slot_slow(m, d, stream, ops, now);
}

static int stream_slot_slow(struct meter *m, unsigned d, void *stream, const struct xpu_meter_ops *ops, uint64_t now)
{
    void *handle;
    const void *owner;
    uintptr_t key = stream_key(stream, ops, &handle, &owner);
    int free_slot = NONE, idle = NONE;
    uint64_t idle_t = UINT64_MAX;
    for (unsigned i = 0; i < m->nst; i++) {
        struct strm *s = &m->st[i];
        if (s->key == key) {
            cache_slot(d, stream, ops, key, (int)i);
            return (int)i;
        }
        if (!s->key && free_slot == NONE)
            free_slot = (int)i;
        else if (s->key && s->open == NONE && s->outstanding == 0 && s->last_launch_ns < idle_t) {
            idle = (int)i;
            idle_t = s->last_launch_ns;
        }
    }
    if (free_slot == NONE && m->nst < NSTREAM)
        free_slot = (int)m->nst;
    int i = free_slot != NONE ? free_slot : idle;
    if (i == NONE)
        return NONE;
    if ((unsigned)i >= m->nst)
        m->nst = (unsigned)i + 1;
    struct strm *s = &m->st[i];
    memset(s, 0, sizeof *s);
    s->key = key;
    s->handle = handle;
    s->owner = owner;
    s->ops = ops;
    s->open = s->head = s->tail = NONE;
    s->last_launch_ns = now;
    cache_slot(d, stream, ops, key, i);
    return i;
}

static inline void charge(struct meter *m, unsigned d, uint64_t now, int64_t ns)
{
    if (ns)
        xpu_lim_charge(&g_xpu.region->use->dev[d].lim_tat_ns, now, ns, m->eff_bp);
}

/* a batch that cannot be measured keeps its provisional charge (estimate) */
static void drop_open_batch(struct meter *m, unsigned d, struct strm *s, uint64_t now)
{
    charge(m, d, now, (int64_t)s->batch_est);
    atomic_fetch_add_explicit(&g_xpu.region->use->dev[d].gpu_time_ns, s->batch_est, memory_order_relaxed);
    m->win_busy_ns += s->batch_est;
    if (s->open != NONE)
        mark_free(m, s->open);
    s->open = NONE;
    s->batch_n = 0;
    s->batch_est = 0;
}

/* ends the open batch of s with an end event on its stream; its estimate is charged now
 * (one CAS per batch) and corrected when the batch completes. must hold m->lock */
static void close_batch(struct meter *m, unsigned d, struct strm *s, uint64_t now)
{
    if (s->open == NONE || !s->batch_n) {
        if (s->open != NONE)
            mark_free(m, s->open);
        s->open = NONE;
        s->batch_n = 0;
        return;
    }
    int late = s->last_launch_ns && now - s->last_launch_ns >= SPARSE_GAP_NS;
    if (late || (s->owner && s->owner != &t_tag) || stream_capturing(s->ops, s->handle)) {
        /* its end event would include a host idle gap, or it cannot be recorded from this
         * thread, or the stream joined a capture since: charged by estimate */
        drop_open_batch(m, d, s, now);
        return;
    }
    struct mark *k = &m->mk[s->open];
    if (s->ops->record(k->end, s->handle) != 0) {
        drop_open_batch(m, d, s, now);
        return;
    }
    charge(m, d, now, (int64_t)s->batch_est);
    k->n = s->batch_n;
    k->est_charged = s->batch_est;
    k->stream = (int)(s - m->st);
    k->next = NONE;
    if (s->tail != NONE)
        m->mk[s->tail].next = s->open;
    else
        s->head = s->open;
    s->tail = s->open;
    s->outstanding++;
    s->open = NONE;
    s->batch_n = 0;
    s->batch_est = 0;
}

static int64_t elapsed_signed(const struct xpu_meter_ops *ops, void *a, void *b, int *ok)
{
    int64_t ns = 0;
    *ok = ops->elapsed_ns(a, b, &ns) == 0;
    return ns;
}

/* a completed batch: position it on the timeline and charge what it newly covered */
static void account_batch(struct meter *m, unsigned d, struct strm *st, struct mark *k, const struct xpu_meter_ops *ops,
                          uint64_t now)
{
    struct xpu_dev_usage *e = &g_xpu.region->use->dev[d];
    int ok1, ok2 = 1;
    int64_t span = elapsed_signed(ops, k->start, k->end, &ok1);
    uint64_t ns;
    int measured = 0;
    if (!ok1) {
        ns = k->est_charged; /* measurement failed: keep the estimate */
        atomic_fetch_add_explicit(&e->accounting_errors, 1, memory_order_relaxed);
    } else {
        if (span < 0)
            span = 0;
        int64_t s;
        if (!m->have_anchor) { /* the first completed start event becomes the origin */
            void *t = m->anchor;
            m->anchor = k->start;
            k->start = t;
            m->have_anchor = 1;
            m->anchor_pos = 0;
            s = 0;
        } else {
            s = m->anchor_pos + elapsed_signed(ops, m->anchor, k->start, &ok2);
        }
        if (!ok2) {
            ns = (uint64_t)span; /* no position: charge the span on its own */
        } else {
            ns = union_add(m, s, s + span);
            if (s + span - m->anchor_pos > REANCHOR_NS) { /* move the origin forward */
                void *t = m->anchor;
                m->anchor = k->end;
                k->end = t;
                m->anchor_pos = s + span;
            }
        }
        measured = 1;
    }
    charge(m, d, now, (int64_t)(ns > INT64_MAX / 2 ? INT64_MAX / 2 : ns) - (int64_t)k->est_charged);
    atomic_fetch_add_explicit(&e->gpu_time_ns, ns, memory_order_relaxed);
    if (m->card && m->card->mine)
        atomic_fetch_add_explicit(&m->card->mine->gpu_time_ns, ns, memory_order_relaxed);
    m->win_busy_ns += ns;
    if (k->n && measured) {
        uint64_t per = ns / k->n;
        st->est_ns = st->have_est ? (st->est_ns * 3 + per) / 4 : per;
        st->have_est = 1;
    }
}

/* processes completed batches, per stream in order (must hold m->lock) */
static void poll(struct meter *m, unsigned d, uint64_t now)
{
    m->last_poll_ns = now;
    for (unsigned i = 0; i < m->nst; i++) {
        struct strm *s = &m->st[i];
        if (!s->key)
            continue;
        while (s->head != NONE) {
            int ki = s->head;
            struct mark *k = &m->mk[ki];
            int q = query_relaxed(s->ops, k->end);
            if (q == 1)
                break;
            if (q < 0) { /* error (e.g. our event got captured): keep the estimate */
                atomic_fetch_add_explicit(&g_xpu.region->use->dev[d].accounting_errors, 1, memory_order_relaxed);
                atomic_fetch_add_explicit(&g_xpu.region->use->dev[d].gpu_time_ns, k->est_charged, memory_order_relaxed);
            } else {
                account_batch(m, d, s, k, s->ops, now);
            }
            s->head = k->next;
            if (s->head == NONE)
                s->tail = NONE;
            s->outstanding--;
            mark_free(m, ki);
        }
        /* an open batch left behind by a stream gone idle without a sync: an end event now
         * would include the idle gap, so it keeps its estimate */
        if (s->open != NONE && s->batch_n && now - s->last_launch_ns >= SPARSE_GAP_NS)
            drop_open_batch(m, d, s, now);
    }
}

/* waits (without the lock) for the oldest batch of stream si, or of any stream when si is
 * NONE; returns with the lock held */
static void wait_oldest(struct meter *m, unsigned d, int si, uint64_t *now)
{
    int ki = NONE;
    const struct xpu_meter_ops *ops = NULL;
    for (unsigned i = 0; i < m->nst && ki == NONE; i++) {
        struct strm *s = &m->st[si == NONE ? i : (unsigned)si];
        if (s->key && s->head != NONE) {
            ki = s->head;
            ops = s->ops;
        }
        if (si != NONE)
            break;
    }
    if (ki == NONE)
        return;
    struct mark *k = &m->mk[ki];
    k->pins++;
    void *ev = k->end;
    munlock(m);
    sync_relaxed(ops, ev); /* the GPU wait happens without the lock */
    *now = xpu_now_fast_ns();
    mlock(m);
    if (--k->pins == 0 && k->done) {
        k->done = 0;
        mark_free(m, ki);
    }
    poll(m, d, *now);
}

/* ------------------------------------------------------------------ public entry points */

void xpu_limit_sync_point(unsigned d, void *stream, const struct xpu_meter_ops *ops, int whole_context)
{
    if (d >= XPU_MAX_DEVICES)
        return;
    struct meter *m = &g_m[d];
    if (!m->enabled || !m->ev_ready)
        return;
    uint64_t now = xpu_now_fast_ns();
    mlock(m);
    /* the host is about to wait: batches end here, not after the wait */
    if (whole_context) {
        for (unsigned i = 0; i < m->nst; i++)
            if (m->st[i].key && m->st[i].open != NONE)
                close_batch(m, d, &m->st[i], now);
    } else {
        int si = stream_slot(m, d, stream, ops, now);
        if (si != NONE && m->st[si].open != NONE)
            close_batch(m, d, &m->st[si], now);
    }
    munlock(m);
}

void xpu_limit_stream_capture_begins(unsigned d, void *stream, const struct xpu_meter_ops *ops)
{
    /* the batch open on this stream must end before capture starts, or its end event would be
     * recorded into the capture */
    xpu_limit_sync_point(d, stream, ops, 0);
}

int xpu_limit_enabled(unsigned d)
{
    return d < XPU_MAX_DEVICES && g_m[d].enabled;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    nanosleep(&ts, NULL);
}

int xpu_limit_before(unsigned d, void *stream, const struct xpu_meter_ops *ops, uint64_t *now_out)
{
    if (d >= XPU_MAX_DEVICES)
        return 0;
    struct meter *m = &g_m[d];
    struct xpu_region *r = g_xpu.region;
    struct xpu_dev_usage *e = &r->use->dev[d];
    uint64_t gen = atomic_load_explicit(&r->cfg->hdr.generation, memory_order_relaxed);
    if (XPU_LIKELY(!m->enabled && gen == m->gen))
        return 0; /* no compute limit: no clock read, no lock */
    if (XPU_UNLIKELY(stream_capturing(ops, stream)))
        return 0; /* captured, not executed: the graph is charged when it is launched */
    uint64_t now = xpu_now_fast_ns();
    if (XPU_UNLIKELY(gen != m->gen || now >= m->next_refresh_ns)) {
        mlock(m);
        refresh(m, d, now);
        munlock(m);
    }
    if (!m->enabled || m->broken)
        return 0;

    uint64_t delay = xpu_lim_delay_ns(atomic_load_explicit(&e->lim_tat_ns, memory_order_acquire), now,
                                      m->period_ns);
    if (XPU_UNLIKELY(delay)) {
        uint64_t start = now;
        mlock(m);
        if (m->ev_ready) { /* end the open batch before idling, or the sleep would be measured */
            int si = stream_slot(m, d, stream, ops, now);
            if (si != NONE && m->st[si].open != NONE)
                close_batch(m, d, &m->st[si], now);
        }
        munlock(m);
        while (delay && now - start < MAX_WAIT_PER_LAUNCH_NS) {
            sleep_ns(delay < 2000000ull ? delay : 2000000ull);
            now = xpu_now_fast_ns();
            mlock(m);
            if (m->ev_ready)
                poll(m, d, now);
            if (atomic_load_explicit(&r->cfg->hdr.generation, memory_order_relaxed) != m->gen ||
                now >= m->next_refresh_ns)
                refresh(m, d, now);
            munlock(m);
            if (!m->enabled)
                break;
            delay = xpu_lim_delay_ns(atomic_load_explicit(&e->lim_tat_ns, memory_order_acquire), now,
                                     m->period_ns);
        }
        atomic_fetch_add_explicit(&e->throttle_ns, now - start, memory_order_relaxed);
        atomic_fetch_add_explicit(&e->throttled_launches, 1, memory_order_relaxed);
    }

    mlock(m);
    if (XPU_UNLIKELY(!m->ev_ready) && ensure_events(m, d, ops) != 0) {
        munlock(m);
        return 0;
    }
    if (now - m->last_poll_ns >= POLL_EVERY_NS)
        poll(m, d, now);
    int si = stream_slot(m, d, stream, ops, now);
    if (si == NONE) { /* more busy streams than slots: this launch is not measured */
        m->local_launches++;
        munlock(m);
        return 0;
    }
    struct strm *s = &m->st[si];
    uint64_t wait_start = now;
    /* bound the work queued ahead of the limiter on this stream */
    while (s->outstanding >= MAX_OUTSTANDING && now - wait_start < MAX_WAIT_PER_LAUNCH_NS) {
        poll(m, d, now);
        if (s->outstanding >= MAX_OUTSTANDING)
            wait_oldest(m, d, si, &now);
    }
    s->last_gap_ns = s->last_launch_ns ? now - s->last_launch_ns : UINT64_MAX;
    if (s->open != NONE && s->batch_n && s->last_gap_ns >= SPARSE_GAP_NS)
        close_batch(m, d, s, now); /* the open batch ended before this idle gap */
    if (s->open == NONE) {
        int k = mark_alloc(m);
        while (k == NONE && now - wait_start < MAX_WAIT_PER_LAUNCH_NS) { /* all marks in flight */
            poll(m, d, now);
            k = mark_alloc(m);
            if (k == NONE)
                wait_oldest(m, d, NONE, &now);
        }
        if (k == NONE || s->ops->record(m->mk[k].start, s->handle) != 0) {
            if (k != NONE)
                mark_free(m, k);
            charge(m, d, now, (int64_t)s->est_ns); /* unmeasured launch: estimate */
            munlock(m);
            return 0;
        }
        s->open = k;
        m->mk[k].lb = m->max_end;
        s->batch_n = 0;
        s->batch_est = 0;
        s->batch_open_ns = now;
    }
    munlock(m);
    t_launch_slot = si; /* an open batch keeps the slot from being reused until _after */
    *now_out = now;
    return 1;
}

void xpu_limit_after(unsigned d, void *stream, const struct xpu_meter_ops *ops, int ok, int force_close,
                     uint64_t now)
{
    struct meter *m = &g_m[d];
    (void)stream;
    (void)ops;
    mlock(m);
    struct strm *s = &m->st[t_launch_slot];
    if (ok) {
        s->batch_n++;
        m->local_launches++;
        s->batch_est += s->est_ns; /* provisional, charged when the batch closes */
    }
    s->last_launch_ns = now;
    uint64_t quarter = m->period_ns / 4;
    /* until a first measurement exists every launch is its own batch (<= MAX_OUTSTANDING
     * unmeasured launches in flight per stream) */
    if (s->open != NONE && s->batch_n &&
        (force_close || !s->have_est || s->batch_n >= BATCH_MAX || now - s->batch_open_ns >= quarter ||
         s->est_ns * s->batch_n >= quarter || s->last_gap_ns >= SPARSE_GAP_NS))
        close_batch(m, d, s, now);
    munlock(m);
}
