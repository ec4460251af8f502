/*
 * xpushim compute limiter: pure arithmetic, no I/O, no clock of its own.
 *
 * Model (documented in docs/isolation.md, "Compute share"):
 *  - Rate control is GCRA (the single-variable form of a token bucket) over *measured GPU
 *    time*: every completed batch of launches charges cost_ns * 10000 / share_bp of virtual
 *    time to the theoretical arrival time TAT; a launch may be submitted while
 *    TAT - now <= burst_ns, otherwise it waits TAT - now - burst_ns. One 64-bit atomic per
 *    (container, device), so all processes of a container share one bucket and a crashed
 *    process cannot leave a lock behind.
 *  - The share applied (effective share) is work-conserving: guarantees (request) first,
 *    then idle capacity goes to active tenants up to their burst limit, tier by tier in
 *    priority order (xpu_lim_effective).
 * Callers inject the clock (now values); tests drive it on a simulated clock.
 */
#ifndef XPUSHIM_LIMITER_H
#define XPUSHIM_LIMITER_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>

#define XPU_LIM_FULL_BP 10000u
#define XPU_LIM_MIN_BP 50u            /* starvation guard for an active tenant (0.5 %) */
#define XPU_LIM_DEFAULT_PERIOD_NS 20000000ull /* 20 ms */

struct xpu_clock {
    uint64_t (*now_ns)(void *ctx);
    void (*sleep_ns)(void *ctx, uint64_t ns);
    void *ctx;
};

/* ns the caller has to wait before submitting; 0 = go. */
uint64_t xpu_lim_delay_ns(uint64_t tat, uint64_t now, uint64_t burst_ns);

/* New TAT after charging cost_ns (may be negative: a correction) at share share_bp. */
uint64_t xpu_lim_next_tat(uint64_t tat, uint64_t now, int64_t cost_ns, uint32_t share_bp);

/* Atomic form of xpu_lim_next_tat on a shared TAT (CAS loop, lock free). */
void xpu_lim_charge(_Atomic uint64_t *tat, uint64_t now, int64_t cost_ns, uint32_t share_bp);

/* Virtual time for cost at share, saturating. */
uint64_t xpu_lim_scaled(uint64_t cost_ns, uint32_t share_bp);

struct xpu_tenant_view {
    uint32_t request_bp;   /* guaranteed */
    uint32_t limit_bp;     /* burst cap; 0 = same as request */
    uint32_t priority;     /* higher first */
    int active;            /* launched recently */
};

/*
 * Effective share of every tenant (basis points) for this period.
 *  1. tiers in descending priority: each active tenant gets its request; if a tier's
 *     requests exceed what is left, that tier is scaled down proportionally and lower
 *     tiers get nothing from phase 1 (overcommit: the high tier gets the card first);
 *  2. leftover capacity (incl. the requests of idle tenants) is water-filled tier by tier
 *     to active tenants, weighted by max(request, 1 %), up to each tenant's limit;
 *  3. an active tenant never gets less than XPU_LIM_MIN_BP.
 * Inactive tenants get 0. Returns the capacity left unassigned.
 */
uint32_t xpu_lim_effective(const struct xpu_tenant_view *t, size_t n, uint32_t *out_bp);

/* Exponentially weighted share estimate: busy_ns over window_ns, alpha in 1/16 steps. */
uint32_t xpu_lim_ewma_bp(uint32_t prev_bp, uint64_t busy_ns, uint64_t window_ns, unsigned alpha16);

#endif
