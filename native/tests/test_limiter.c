/*
 * Limiter arithmetic on a simulated clock (no shim, no driver): unit checks of the GCRA
 * and effective-share functions, then a discrete-time simulation of a single GPU shared
 * by several tenants, each submitting back-to-back kernels through the limiter exactly
 * as the shim does (gate before submit, charge measured GPU time at completion, at most
 * two kernels in flight). Achieved shares are checked against the targets.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "limiter.h"

static int g_fail;
#define CHECK(c, ...)                                                                                  \
    do {                                                                                               \
        if (!(c)) {                                                                                    \
            g_fail++;                                                                                  \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                \
            printf(__VA_ARGS__);                                                                       \
            printf("\n");                                                                              \
        }                                                                                              \
    } while (0)

static void unit(void)
{
    CHECK(xpu_lim_delay_ns(100, 200, 0) == 0, "tat in the past -> go");
    CHECK(xpu_lim_delay_ns(1000, 200, 300) == 500, "delay = tat - now - burst");
    CHECK(xpu_lim_delay_ns(400, 200, 300) == 0, "within burst -> go");
    CHECK(xpu_lim_next_tat(0, 1000, 100, 5000) == 1200, "charge at 50%% doubles the cost");
    CHECK(xpu_lim_next_tat(5000, 1000, 100, 10000) == 5100, "charge extends a future tat");
    CHECK(xpu_lim_next_tat(5000, 1000, -200, 10000) == 4800, "negative correction gives back");
    CHECK(xpu_lim_next_tat(1100, 1000, -500, 10000) == 1000, "correction never below now");
    CHECK(xpu_lim_next_tat(500, 1000, -100, 10000) == 500, "correction of a past tat is a no-op");
    CHECK(xpu_lim_scaled(1000, 0) == 1000ull * 10000 / XPU_LIM_MIN_BP, "share 0 uses the floor");
    CHECK(xpu_lim_next_tat(UINT64_MAX - 5, 0, 1000, 100) == UINT64_MAX, "saturates");
    CHECK(xpu_lim_ewma_bp(0, 500, 1000, 16) == 5000, "ewma alpha 1");
    CHECK(xpu_lim_ewma_bp(5000, 0, 1000, 8) == 2500, "ewma alpha 1/2");
    _Atomic uint64_t tat = 0;
    xpu_lim_charge(&tat, 10, 100, 2500);
    CHECK(tat == 410, "atomic charge %llu", (unsigned long long)tat);

    struct xpu_tenant_view v[4];
    uint32_t out[4];
    memset(v, 0, sizeof v);
    v[0] = (struct xpu_tenant_view){3000, 8000, 0, 1};
    v[1] = (struct xpu_tenant_view){5000, 5000, 0, 0};
    xpu_lim_effective(v, 2, out);
    CHECK(out[0] == 8000 && out[1] == 0, "idle neighbour: burst to limit (%u, %u)", out[0], out[1]);
    v[1].active = 1;
    xpu_lim_effective(v, 2, out);
    CHECK(out[0] == 5000 && out[1] == 5000, "both active: %u %u", out[0], out[1]);
    v[0] = (struct xpu_tenant_view){6000, 6000, 1, 1};
    v[1] = (struct xpu_tenant_view){6000, 6000, 0, 1};
    xpu_lim_effective(v, 2, out);
    CHECK(out[0] == 6000 && out[1] == 4000, "overcommit: high tier first (%u, %u)", out[0], out[1]);
    v[0] = (struct xpu_tenant_view){6000, 10000, 1, 1};
    v[1] = (struct xpu_tenant_view){0, 10000, 0, 1};
    xpu_lim_effective(v, 2, out);
    CHECK(out[0] == 10000 && out[1] == XPU_LIM_MIN_BP, "best effort under a bursting high tier: %u %u", out[0], out[1]);
    v[0] = (struct xpu_tenant_view){1000, 1000, 0, 1};
    v[1] = (struct xpu_tenant_view){3000, 3000, 0, 1};
    v[2] = (struct xpu_tenant_view){6000, 6000, 0, 1};
    xpu_lim_effective(v, 3, out);
    CHECK(out[0] == 1000 && out[1] == 3000 && out[2] == 6000, "exact guarantees");
    v[0] = (struct xpu_tenant_view){2000, 10000, 0, 1};
    v[1] = (struct xpu_tenant_view){2000, 10000, 0, 1};
    v[2] = (struct xpu_tenant_view){2000, 3000, 0, 1};
    xpu_lim_effective(v, 3, out);
    CHECK(out[2] == 3000 && out[0] + out[1] + out[2] >= 9990 && out[0] + out[1] + out[2] <= 10000 &&
              (out[0] > out[1] ? out[0] - out[1] : out[1] - out[0]) <= 2,
          "water filling respects limits and weights: %u %u %u", out[0], out[1], out[2]);
    CHECK(xpu_lim_effective(v, 0, out) == 10000, "no tenants");
}

/* ---------------------------------------------------------------- simulation */

#define MAXT 4
#define DT 10000ull /* 10 us step */

struct tenant {
    uint32_t req, lim, prio;
    uint64_t kernel_ns;
    uint64_t active_from, active_to; /* demand window */
    _Atomic uint64_t tat;
    uint32_t eff;
    int inflight;
    uint64_t busy_ns;              /* GPU time received in the measurement window */
    uint64_t resize_at; uint32_t resize_req, resize_lim;
};

struct job { int t; uint64_t left, dur; };

static void simulate(struct tenant *ts, int n, uint64_t period, uint64_t t_end, uint64_t meas_from,
                     uint64_t meas_to)
{
    struct job q[64];
    int qh = 0, qn = 0;
    uint64_t next_eff = 0;
    for (uint64_t now = 0; now < t_end; now += DT) {
        /* live resize */
        for (int i = 0; i < n; i++)
            if (ts[i].resize_at && now == ts[i].resize_at) {
                uint32_t old = ts[i].eff;
                ts[i].req = ts[i].resize_req;
                ts[i].lim = ts[i].resize_lim;
                (void)old;
            }
        if (now >= next_eff) { /* the shim refreshes effective shares every ~1 ms */
            struct xpu_tenant_view v[MAXT];
            uint32_t out[MAXT];
            for (int i = 0; i < n; i++)
                v[i] = (struct xpu_tenant_view){ts[i].req, ts[i].lim, ts[i].prio,
                                                now >= ts[i].active_from && now < ts[i].active_to};
            xpu_lim_effective(v, (size_t)n, out);
            for (int i = 0; i < n; i++) {
                uint64_t cur = ts[i].tat;
                if (ts[i].eff && out[i] && out[i] != ts[i].eff && cur > now) /* debt rescale */
                    ts[i].tat = now + (cur - now) * ts[i].eff / out[i];
                ts[i].eff = out[i];
            }
            next_eff = now + 1000000ull;
        }
        /* tenants submit through the gate */
        for (int i = 0; i < n; i++) {
            struct tenant *t = &ts[i];
            if (now < t->active_from || now >= t->active_to || t->inflight >= 2)
                continue;
            if (xpu_lim_delay_ns(t->tat, now, period) != 0)
                continue;
            q[(qh + qn) % 64] = (struct job){i, t->kernel_ns, t->kernel_ns};
            qn++;
            t->inflight++;
        }
        /* the GPU runs the head of the FIFO for one step */
        uint64_t budget = DT;
        while (budget && qn) {
            struct job *j = &q[qh];
            uint64_t run = j->left < budget ? j->left : budget;
            j->left -= run;
            budget -= run;
            if (now >= meas_from && now < meas_to)
                ts[j->t].busy_ns += run;
            if (j->left == 0) { /* completion: charge measured GPU time */
                xpu_lim_charge(&ts[j->t].tat, now + DT - budget, (int64_t)j->dur, ts[j->t].eff);
                ts[j->t].inflight--;
                qh = (qh + 1) % 64;
                qn--;
            }
        }
    }
}

static double pct(const struct tenant *t, uint64_t window) { return 100.0 * (double)t->busy_ns / (double)window; }

static void scenario_single(void)
{
    const uint32_t targets[] = {1000, 3000, 5000, 7000, 9000};
    const uint64_t kernels[] = {50000, 1000000, 8000000};
    for (size_t k = 0; k < 3; k++)
        for (size_t i = 0; i < 5; i++) {
            struct tenant t[1];
            memset(t, 0, sizeof t);
            t[0] = (struct tenant){.req = targets[i], .lim = targets[i], .kernel_ns = kernels[k],
                                   .active_to = UINT64_MAX};
            simulate(t, 1, 20000000ull, 10000000000ull, 1000000000ull, 10000000000ull);
            double got = pct(&t[0], 9000000000ull);
            double want = targets[i] / 100.0;
            printf("single  target %4.1f%% kernel %6.2f ms -> %5.2f%%\n", want, kernels[k] / 1e6, got);
            CHECK(got > want - 1.0 && got < want + 1.0, "single tenant %.1f%% got %.2f%%", want, got);
        }
}

static void scenario_two_tenants(void)
{
    struct tenant t[2];
    memset(t, 0, sizeof t);
    t[0] = (struct tenant){.req = 3000, .lim = 3000, .kernel_ns = 2000000, .active_to = UINT64_MAX};
    t[1] = (struct tenant){.req = 6000, .lim = 6000, .kernel_ns = 500000, .active_to = UINT64_MAX};
    simulate(t, 2, 20000000ull, 10000000000ull, 1000000000ull, 10000000000ull);
    double a = pct(&t[0], 9000000000ull), b = pct(&t[1], 9000000000ull);
    printf("two     30/60 -> %5.2f%% / %5.2f%%\n", a, b);
    CHECK(a > 29 && a < 31 && b > 59 && b < 61, "30/60 got %.2f/%.2f", a, b);
}

static void scenario_burst(void)
{
    /* A: request 30, limit 80. B: request 50, limit 50, idle for the first 5 s. */
    struct tenant t[2];
    memset(t, 0, sizeof t);
    t[0] = (struct tenant){.req = 3000, .lim = 8000, .kernel_ns = 1000000, .active_to = UINT64_MAX};
    t[1] = (struct tenant){.req = 5000, .lim = 5000, .kernel_ns = 1000000, .active_from = 5000000000ull,
                           .active_to = UINT64_MAX};
    simulate(t, 2, 20000000ull, 5000000000ull, 500000000ull, 5000000000ull);
    double a1 = pct(&t[0], 4500000000ull);
    memset(t, 0, sizeof t);
    t[0] = (struct tenant){.req = 3000, .lim = 8000, .kernel_ns = 1000000, .active_to = UINT64_MAX};
    t[1] = (struct tenant){.req = 5000, .lim = 5000, .kernel_ns = 1000000, .active_from = 0, .active_to = UINT64_MAX};
    simulate(t, 2, 20000000ull, 6000000000ull, 1000000000ull, 6000000000ull);
    double a2 = pct(&t[0], 5000000000ull), b2 = pct(&t[1], 5000000000ull);
    printf("burst   alone -> A %5.2f%% ; with B -> A %5.2f%% B %5.2f%%\n", a1, a2, b2);
    CHECK(a1 > 79 && a1 < 81, "A alone bursts to its 80%% limit, got %.2f", a1);
    CHECK(a2 > 49 && a2 < 51 && b2 > 49 && b2 < 51, "A 30(+20 idle) / B 50, got %.2f/%.2f", a2, b2);
}

static void scenario_priority(void)
{
    struct tenant t[2];
    memset(t, 0, sizeof t);
    t[0] = (struct tenant){.req = 6000, .lim = 6000, .prio = 1, .kernel_ns = 1000000, .active_to = UINT64_MAX};
    t[1] = (struct tenant){.req = 6000, .lim = 6000, .prio = 0, .kernel_ns = 1000000, .active_to = UINT64_MAX};
    simulate(t, 2, 20000000ull, 6000000000ull, 1000000000ull, 6000000000ull);
    double a = pct(&t[0], 5000000000ull), b = pct(&t[1], 5000000000ull);
    printf("prio    overcommit 60+60 -> high %5.2f%% low %5.2f%%\n", a, b);
    CHECK(a > 59 && a < 61 && b > 39 && b < 41, "high tier first: %.2f/%.2f", a, b);
}

static void scenario_resize(void)
{
    struct tenant t[1];
    memset(t, 0, sizeof t);
    t[0] = (struct tenant){.req = 2000, .lim = 2000, .kernel_ns = 1000000, .active_to = UINT64_MAX,
                           .resize_at = 5000000000ull, .resize_req = 6000, .resize_lim = 6000};
    simulate(t, 1, 20000000ull, 5000000000ull, 1000000000ull, 5000000000ull);
    double before = pct(&t[0], 4000000000ull);
    t[0].busy_ns = 0;
    /* continue from the same state: second half measured 5.2 s .. 10 s */
    struct tenant t2 = t[0];
    t2.busy_ns = 0;
    simulate(&t2, 1, 20000000ull, 10000000000ull, 5200000000ull, 10000000000ull);
    double after = pct(&t2, 4800000000ull);
    printf("resize  20%% -> 60%% live: %5.2f%% then %5.2f%%\n", before, after);
    CHECK(before > 19 && before < 21, "before resize %.2f", before);
    CHECK(after > 59 && after < 61, "after resize %.2f", after);
}

int main(void)
{
    unit();
    scenario_single();
    scenario_two_tenants();
    scenario_burst();
    scenario_priority();
    scenario_resize();
    if (g_fail) {
        printf("test_limiter: %d FAILED\n", g_fail);
        return 1;
    }
    printf("test_limiter: all passed\n");
    return 0;
}
