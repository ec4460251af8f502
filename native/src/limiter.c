/* Pure limiter arithmetic; see limiter.h. No I/O, no clock, no allocation. */
#include "limiter.h"

uint64_t xpu_lim_scaled(uint64_t cost_ns, uint32_t share_bp)
{
    if (share_bp == 0)
        share_bp = XPU_LIM_MIN_BP;
    if (share_bp >= XPU_LIM_FULL_BP)
        return cost_ns;
    /* cost * 10000 / share without overflow for costs up to ~1.8e15 ns */
    if (cost_ns > UINT64_MAX / XPU_LIM_FULL_BP)
        return UINT64_MAX / 2;
    return cost_ns * XPU_LIM_FULL_BP / share_bp;
}

uint64_t xpu_lim_delay_ns(uint64_t tat, uint64_t now, uint64_t burst_ns)
{
    if (tat <= now)
        return 0;
    uint64_t ahead = tat - now;
    return ahead > burst_ns ? ahead - burst_ns : 0;
}

uint64_t xpu_lim_next_tat(uint64_t tat, uint64_t now, int64_t cost_ns, uint32_t share_bp)
{
    if (cost_ns >= 0) {
        uint64_t base = tat > now ? tat : now;
        uint64_t add = xpu_lim_scaled((uint64_t)cost_ns, share_bp);
        return base > UINT64_MAX - add ? UINT64_MAX : base + add;
    }
    /* correction: give back virtual time, but never create credit below min(tat, now) */
    uint64_t sub = xpu_lim_scaled((uint64_t)(-(cost_ns + 1)) + 1u, share_bp);
    uint64_t floor = tat < now ? tat : now;
    return (tat > floor && tat - floor > sub) ? tat - sub : floor;
}

void xpu_lim_charge(_Atomic uint64_t *tat, uint64_t now, int64_t cost_ns, uint32_t share_bp)
{
    uint64_t cur = atomic_load_explicit(tat, memory_order_relaxed);
    for (;;) {
        uint64_t next = xpu_lim_next_tat(cur, now, cost_ns, share_bp);
        if (atomic_compare_exchange_weak_explicit(tat, &cur, next, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return;
    }
}

static uint32_t lim_of(const struct xpu_tenant_view *t)
{
    uint32_t lim = t->limit_bp ? t->limit_bp : t->request_bp;
    if (lim < t->request_bp)
        lim = t->request_bp;
    return lim > XPU_LIM_FULL_BP ? XPU_LIM_FULL_BP : lim;
}

static uint32_t req_of(const struct xpu_tenant_view *t)
{
    uint32_t r = t->request_bp;
    uint32_t l = lim_of(t);
    return r > l ? l : r;
}

/* next lower priority tier strictly below `below` among active tenants; returns 0 if none */
static int next_tier(const struct xpu_tenant_view *t, size_t n, int have_below, uint32_t below,
                     uint32_t *tier)
{
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (!t[i].active)
            continue;
        if (have_below && t[i].priority >= below)
            continue;
        if (!found || t[i].priority > *tier) {
            *tier = t[i].priority;
            found = 1;
        }
    }
    return found;
}

uint32_t xpu_lim_effective(const struct xpu_tenant_view *t, size_t n, uint32_t *out_bp)
{
    uint64_t cap = XPU_LIM_FULL_BP;
    for (size_t i = 0; i < n; i++)
        out_bp[i] = 0;

    /* phase 1: guarantees, tier by tier */
    uint32_t tier = 0;
    int have = 0;
    while (next_tier(t, n, have, tier, &tier)) {
        have = 1;
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++)
            if (t[i].active && t[i].priority == tier)
                sum += req_of(&t[i]);
        for (size_t i = 0; i < n; i++) {
            if (!t[i].active || t[i].priority != tier)
                continue;
            uint64_t g = sum <= cap ? req_of(&t[i]) : (sum ? req_of(&t[i]) * cap / sum : 0);
            out_bp[i] = (uint32_t)g;
        }
        if (sum <= cap) {
            cap -= sum;
        } else {
            cap = 0;
        }
    }

    /* phase 2: water-fill leftovers, tier by tier, weighted by request */
    have = 0;
    while (cap > 0 && next_tier(t, n, have, tier, &tier)) {
        have = 1;
        for (size_t round = 0; round < n + 1 && cap > 0; round++) {
            uint64_t wsum = 0;
            for (size_t i = 0; i < n; i++) {
                if (!t[i].active || t[i].priority != tier || out_bp[i] >= lim_of(&t[i]))
                    continue;
                uint32_t w = req_of(&t[i]);
                wsum += w < 100 ? 100 : w;
            }
            if (wsum == 0)
                break;
            uint64_t given = 0;
            for (size_t i = 0; i < n; i++) {
                if (!t[i].active || t[i].priority != tier || out_bp[i] >= lim_of(&t[i]))
                    continue;
                uint32_t w = req_of(&t[i]);
                uint64_t share = cap * (w < 100 ? 100 : w) / wsum;
                if (share == 0)
                    share = 1;
                uint64_t room = lim_of(&t[i]) - out_bp[i];
                if (share > room)
                    share = room;
                if (share > cap - given)
                    share = cap - given;
                out_bp[i] += (uint32_t)share;
                given += share;
            }
            cap -= given;
            if (given == 0)
                break;
        }
    }

    for (size_t i = 0; i < n; i++)
        if (t[i].active && out_bp[i] < XPU_LIM_MIN_BP)
            out_bp[i] = XPU_LIM_MIN_BP;
    return (uint32_t)cap;
}

uint32_t xpu_lim_ewma_bp(uint32_t prev_bp, uint64_t busy_ns, uint64_t window_ns, unsigned alpha16)
{
    if (window_ns == 0)
        return prev_bp;
    uint64_t cur = busy_ns >= window_ns ? XPU_LIM_FULL_BP : busy_ns * XPU_LIM_FULL_BP / window_ns;
    if (alpha16 > 16)
        alpha16 = 16;
    return (uint32_t)((cur * alpha16 + (uint64_t)prev_bp * (16u - alpha16)) / 16u);
}
