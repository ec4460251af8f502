/*
 * Compute limiter glue: per-process, per-device meter (GPU time measured with events
 * around batches of launches) feeding the pure GCRA arithmetic in limiter.c, plus the
 * work-conserving effective share computed from the card region.
 *
 * Hot path (no throttle): one clock read, a few relaxed loads, a short spin lock, and an
 * event record every batch (<= 64 launches). No heap allocation, no getenv, no logging.
 */
#define _GNU_SOURCE
#include "shim_core.h"

#include <sched.h>
#include <string.h>
#include <time.h>

#define RING 8u
#define MAX_OUTSTANDING 4u
#define BATCH_MAX 64u
#define SPARSE_GAP_NS 100000ull   /* a launch after >= 100 us idle closes batches eagerly */
#define POLL_EVERY_NS 20000ull
#define REFRESH_EVERY_NS 1000000ull
#define MAX_WAIT_PER_LAUNCH_NS 2000000000ull /* never block a launch longer than 2 s */

struct mark {
    void *start, *end;
    uint32_t n;
    uint32_t has_start;
    uint64_t est_charged;          /* provisional charge made when the batch closed */
    uint32_t late;                 /* end event recorded after a host idle gap: not measurable */
    uint32_t pad;
};

struct meter {
    atomic_flag lock;
    /* read without the lock on the launch path: atomics (written only in refresh/ensure) */
    _Atomic int enabled, broken;
    _Atomic uint64_t gen, next_refresh_ns, period_ns;
    int ev_ready;
    struct mark ring[RING];
    unsigned head, tail, outstanding;
    void *last_end;
    uint32_t batch_n, batch_has_start;
    uint64_t batch_est;
    uint64_t batch_open_ns, last_launch_ns, last_gap_ns;
    uint64_t est_ns;               /* EWMA GPU ns per launch */
    int have_est;                  /* at least one batch measured */
    uint64_t last_poll_ns;
    struct xpu_dev_cfg cfg;
    uint32_t eff_bp;
    struct xpu_card *card;
    int card_status;               /* -1 unknown */
    uint64_t local_launches;
    uint64_t win_start_ns, win_busy_ns;
};

static struct meter g_m[XPU_MAX_DEVICES];

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

void xpu_limit_fork_child(void)
{
    /* events belong to the parent's contexts; the card mapping is inherited */
    for (unsigned d = 0; d < XPU_MAX_DEVICES; d++) {
        struct xpu_card *card = g_m[d].card;
        int cs = g_m[d].card_status;
        memset(&g_m[d], 0, sizeof g_m[d]);
        atomic_flag_clear(&g_m[d].lock);
        g_m[d].card = card;
        g_m[d].card_status = card ? cs : 0;
        g_m[d].gen = UINT64_MAX;
    }
}

__attribute__((constructor)) static void meters_ctor(void)
{
    for (unsigned d = 0; d < XPU_MAX_DEVICES; d++) {
        atomic_flag_clear(&g_m[d].lock);
        g_m[d].gen = UINT64_MAX; /* forces a refresh at the first launch */
    }
}

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

/* must hold m->lock */
static void refresh(struct meter *m, unsigned d, uint64_t now)
{
    struct xpu_region *r = g_xpu.region;
    struct xpu_device_entry *e = &r->dev[d];
    xpu_region_read_cfg(r, d, &m->cfg);
    m->gen = m->cfg.generation;
    m->enabled = m->cfg.request_bp != 0 || m->cfg.limit_bp != 0;
    m->period_ns = m->cfg.period_us ? (uint64_t)m->cfg.period_us * 1000ull : XPU_LIM_DEFAULT_PERIOD_NS;
    if (m->card_status == 0 && !m->card) {
        char path[XPU_PATH_LEN];
        memcpy(path, e->card_path, sizeof path);
        path[sizeof path - 1] = 0;
        m->card_status = (int)xpu_card_map(path, &m->card);
    }
    uint32_t eff;
    uint32_t req = m->cfg.request_bp, lim = m->cfg.limit_bp ? m->cfg.limit_bp : m->cfg.request_bp;
    if (m->card && m->cfg.card_slot < m->card->hdr.ntenants) {
        struct xpu_card *c = m->card;
        struct xpu_card_tenant *me = &c->tenant[m->cfg.card_slot];
        atomic_store_explicit(&me->owner_key, r->hdr.container_key ? r->hdr.container_key : 1,
                              memory_order_relaxed);
        atomic_store_explicit(&me->request_bp, req, memory_order_relaxed);
        atomic_store_explicit(&me->limit_bp, lim, memory_order_relaxed);
        atomic_store_explicit(&me->priority, m->cfg.priority, memory_order_relaxed);
        atomic_store_explicit(&me->last_demand_ns, now, memory_order_relaxed);
        struct xpu_tenant_view v[XPU_MAX_TENANTS];
        uint32_t out[XPU_MAX_TENANTS];
        uint32_t n = c->hdr.ntenants;
        for (uint32_t i = 0; i < n; i++) {
            struct xpu_card_tenant *t = &c->tenant[i];
            uint64_t ld = atomic_load_explicit(&t->last_demand_ns, memory_order_relaxed);
            v[i].request_bp = atomic_load_explicit(&t->request_bp, memory_order_relaxed);
            v[i].limit_bp = atomic_load_explicit(&t->limit_bp, memory_order_relaxed);
            v[i].priority = atomic_load_explicit(&t->priority, memory_order_relaxed);
            v[i].active = atomic_load_explicit(&t->owner_key, memory_order_relaxed) != 0 && ld <= now + m->period_ns &&
                          now - ld <= 2 * m->period_ns;
        }
        v[m->cfg.card_slot].active = 1;
        xpu_lim_effective(v, n, out);
        eff = out[m->cfg.card_slot];
        atomic_store_explicit(&me->effective_bp, eff, memory_order_relaxed);
    } else {
        eff = req ? req : lim;
    }
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

/* must hold m->lock; processes completed batches in order */
static void poll(struct meter *m, unsigned d, uint64_t now, const struct xpu_meter_ops *ops)
{
    struct xpu_device_entry *e = &g_xpu.region->dev[d];
    m->last_poll_ns = now;
    while (m->outstanding) {
        struct mark *k = &m->ring[m->head];
        int q = ops->query(k->end);
        if (q == 1)
            break;
        uint64_t ns = 0;
        void *ref = k->has_start ? k->start : m->last_end;
        int measured = 0;
        if (k->late) {
            ns = k->est_charged; /* the elapsed time would include the idle gap: keep the estimate */
        } else if (q < 0 || !ref || ops->elapsed_ns(ref, k->end, &ns) != 0) {
            ns = k->est_charged; /* measurement failed: charge the estimate */
            atomic_fetch_add_explicit(&e->accounting_errors, 1, memory_order_relaxed);
        } else {
            measured = 1;
        }
        /* measured minus what was charged provisionally at launch time */
        int64_t corr = (int64_t)(ns > INT64_MAX / 2 ? INT64_MAX / 2 : ns) - (int64_t)k->est_charged;
        if (corr)
            xpu_lim_charge(&e->lim_tat_ns, now, corr, m->eff_bp);
        atomic_fetch_add_explicit(&e->gpu_time_ns, ns, memory_order_relaxed);
        if (m->card && m->cfg.card_slot < m->card->hdr.ntenants)
            atomic_fetch_add_explicit(&m->card->tenant[m->cfg.card_slot].gpu_time_ns, ns, memory_order_relaxed);
        m->win_busy_ns += ns;
        if (k->n && measured) {
            uint64_t per = ns / k->n;
            m->est_ns = m->have_est ? (m->est_ns * 3 + per) / 4 : per;
            m->have_est = 1;
        }
        m->last_end = k->end;
        m->head = (m->head + 1) % RING;
        m->outstanding--;
    }
}

static int ensure_events(struct meter *m, const struct xpu_meter_ops *ops)
{
    if (m->ev_ready)
        return 0;
    for (unsigned i = 0; i < RING; i++) {
        if (ops->create(&m->ring[i].start) != 0 || ops->create(&m->ring[i].end) != 0) {
            m->broken = 1; /* fail open for compute; counted */
            atomic_fetch_add(&g_xpu.region->dev[0].accounting_errors, 1);
            return -1;
        }
    }
    m->ev_ready = 1;
    return 0;
}

/* ends the open batch with an end event; its estimated GPU time is charged now (one CAS per
 * batch, not per launch) and corrected when the batch's measurement arrives */
static void close_batch(struct meter *m, unsigned d, uint64_t now, void *stream, const struct xpu_meter_ops *ops)
{
    struct mark *k = &m->ring[m->tail];
    if (m->batch_est)
        xpu_lim_charge(&g_xpu.region->dev[d].lim_tat_ns, now, (int64_t)m->batch_est, m->eff_bp);
    if (ops->record(k->end, stream) != 0) {
        m->batch_n = 0;
        m->batch_est = 0; /* stays charged: no measurement will correct it */
        return;
    }
    k->n = m->batch_n;
    k->has_start = m->batch_has_start;
    k->est_charged = m->batch_est;
    /* closed long after its last launch (host idle without a sync): the end event's time
     * includes that idle gap, so this batch is charged by estimate, not by measurement */
    k->late = m->last_launch_ns && now - m->last_launch_ns >= SPARSE_GAP_NS;
    m->batch_est = 0;
    m->tail = (m->tail + 1) % RING;
    m->outstanding++;
    m->batch_n = 0;
    m->batch_has_start = 0;
}

void xpu_limit_sync_point(unsigned d, void *stream, const struct xpu_meter_ops *ops)
{
    if (d >= XPU_MAX_DEVICES)
        return;
    struct meter *m = &g_m[d];
    if (!m->enabled)
        return;
    uint64_t now = xpu_now_fast_ns();
    mlock(m);
    if (m->batch_n) /* the host is about to wait: the batch ends here, not after the wait */
        close_batch(m, d, now, stream, ops);
    munlock(m);
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
    struct xpu_device_entry *e = &r->dev[d];
    uint64_t gen = atomic_load_explicit(&r->hdr.generation, memory_order_relaxed);
    if (XPU_LIKELY(!m->enabled && gen == m->gen))
        return 0; /* no compute limit: no clock read, no lock */
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
        if (m->batch_n) /* end the open batch before idling, or the sleep would be measured */
            close_batch(m, d, now, stream, ops);
        munlock(m);
        while (delay && now - start < MAX_WAIT_PER_LAUNCH_NS) {
            sleep_ns(delay < 2000000ull ? delay : 2000000ull);
            now = xpu_now_fast_ns();
            mlock(m);
            if (m->outstanding)
                poll(m, d, now, ops);
            if (atomic_load_explicit(&r->hdr.generation, memory_order_relaxed) != m->gen ||
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
    if (XPU_UNLIKELY(!m->ev_ready) && ensure_events(m, ops) != 0) {
        munlock(m);
        return 0;
    }
    if (m->outstanding && now - m->last_poll_ns >= POLL_EVERY_NS)
        poll(m, d, now, ops);
    while (m->outstanding >= MAX_OUTSTANDING) { /* bound the work queued ahead of the limiter */
        ops->sync(m->ring[m->head].end);
        poll(m, d, now, ops);
    }
    m->last_gap_ns = m->last_launch_ns ? now - m->last_launch_ns : UINT64_MAX;
    if (m->batch_n && m->last_gap_ns >= SPARSE_GAP_NS)
        close_batch(m, d, now, stream, ops); /* the open batch ended before this idle gap */
    if (m->batch_n == 0) {
        if (m->outstanding)
            poll(m, d, now, ops);
        m->batch_has_start = 0;
        if (m->outstanding == 0 && ops->record(m->ring[m->tail].start, stream) == 0)
            m->batch_has_start = 1; /* queue may be idle: measure from here */
        m->batch_open_ns = now;
    }
    munlock(m);
    *now_out = now;
    return 1;
}

void xpu_limit_after(unsigned d, void *stream, const struct xpu_meter_ops *ops, int ok, int force_close,
                     uint64_t now)
{
    struct meter *m = &g_m[d];
    mlock(m);
    if (ok) {
        m->batch_n++;
        m->local_launches++;
        m->batch_est += m->est_ns; /* provisional, charged when the batch closes */
    }
    m->last_launch_ns = now;
    uint64_t quarter = m->period_ns / 4;
    /* until a first measurement exists every launch is its own batch (<= MAX_OUTSTANDING
     * unmeasured launches in flight) */
    if (m->batch_n && (force_close || !m->have_est || m->batch_n >= BATCH_MAX || now - m->batch_open_ns >= quarter ||
                       m->est_ns * m->batch_n >= quarter || m->last_gap_ns >= SPARSE_GAP_NS))
        close_batch(m, d, now, stream, ops);
    munlock(m);
}
