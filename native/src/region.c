/* Region mapping, process slots, quota reservation and dead-process reconciliation. */
#define _GNU_SOURCE
#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define XPU_REGION_LIKELY(x) __builtin_expect(!!(x), 1)
static _Atomic int g_slot = -1;     /* slot of this process, -1 none */
static _Atomic pid_t g_slot_pid = 0;

uint64_t xpu_now_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Fast CLOCK_MONOTONIC for the launch path. On x86-64 with the kernel itself using the
 * TSC as clocksource, interpolate with rdtsc from a per-thread CLOCK_MONOTONIC anchor
 * taken at most every ~1 ms (so values stay within ~100 ns of CLOCK_MONOTONIC and are
 * comparable across processes); the tick length is calibrated globally over >= 20 ms.
 * Anywhere else: clock_gettime.
 */
#if defined(__x86_64__)
#include <x86intrin.h>
static _Atomic uint64_t g_tsc_mult;    /* ns per tick, 32.32 fixed point; 0 = not calibrated */
static _Atomic int g_tsc_ok = -1;      /* -1 unknown, 0 no, 1 yes */
static uint64_t g_cal_tsc, g_cal_ns;   /* first anchor (calibration start) */
static _Atomic int g_cal_state;        /* 0 none, 1 anchor set */
static _Thread_local uint64_t t_tsc __attribute__((tls_model("initial-exec")));
static _Thread_local uint64_t t_ns __attribute__((tls_model("initial-exec")));

static int tsc_usable(void)
{
    int ok = atomic_load_explicit(&g_tsc_ok, memory_order_relaxed);
    if (ok >= 0)
        return ok;
    char buf[32] = {0};
    int fd = open("/sys/devices/system/clocksource/clocksource0/current_clocksource", O_RDONLY | O_CLOEXEC);
    ok = 0;
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        ok = n >= 3 && strncmp(buf, "tsc", 3) == 0;
        close(fd);
    }
    atomic_store(&g_tsc_ok, ok);
    return ok;
}

uint64_t xpu_now_fast_ns(void)
{
    uint64_t mult = atomic_load_explicit(&g_tsc_mult, memory_order_relaxed);
    uint64_t tsc = __rdtsc();
    if (XPU_REGION_LIKELY(mult && t_ns && tsc - t_tsc < (1000000ull << 32) / mult))
        return t_ns + (uint64_t)(((unsigned __int128)(tsc - t_tsc) * mult) >> 32);
    uint64_t ns = xpu_now_mono_ns();
    tsc = __rdtsc();
    t_tsc = tsc;
    t_ns = ns;
    if (!mult && tsc_usable()) {
        int st = atomic_load(&g_cal_state);
        if (st == 0) {
            int exp = 0;
            if (atomic_compare_exchange_strong(&g_cal_state, &exp, 2)) {
                g_cal_tsc = tsc;
                g_cal_ns = ns;
                atomic_store(&g_cal_state, 1);
            }
        } else if (st == 1 && ns - g_cal_ns >= 20000000ull && tsc > g_cal_tsc) {
            uint64_t m = (uint64_t)((((unsigned __int128)(ns - g_cal_ns)) << 32) / (tsc - g_cal_tsc));
            atomic_store_explicit(&g_tsc_mult, m ? m : 1, memory_order_relaxed);
        }
    }
    return ns;
}

void xpu_now_fast_fork_child(void)
{
    t_ns = 0;
}
#else
uint64_t xpu_now_fast_ns(void)
{
    return xpu_now_mono_ns();
}
void xpu_now_fast_fork_child(void) {}
#endif

static void *map_file(const char *path, size_t min_size, int writable, size_t *out_size)
{
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 0 || (size_t)st.st_size < min_size) {
        close(fd);
        return NULL;
    }
    void *p = mmap(NULL, (size_t)st.st_size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return NULL;
    *out_size = (size_t)st.st_size;
    return p;
}

static int join(char *out, size_t n, const char *dir, const char *name)
{
    int w = snprintf(out, n, "%s/%s", dir, name);
    return w > 0 && (size_t)w < n ? 0 : -1;
}

enum xpu_region_status xpu_region_map(const char *dir, struct xpu_region **out)
{
    static struct xpu_region g_handle; /* one region per process */
    *out = NULL;
    if (!dir || !dir[0])
        return XPU_REGION_NONE;
    char path[512];
    size_t csize = 0, usize = 0;
    const struct xpu_config *c = NULL;
    struct xpu_usage *u = NULL;
    if (join(path, sizeof path, dir, XPU_CONFIG_FILE) == 0)
        c = map_file(path, sizeof(struct xpu_config_header), 0, &csize); /* agent-owned: read-only */
    if (c && join(path, sizeof path, dir, XPU_USAGE_FILE) == 0)
        u = map_file(path, sizeof(struct xpu_usage_header), 1, &usize);
    int ok = c && u;
    if (ok) {
        const struct xpu_config_header *h = &c->hdr;
        const struct xpu_usage_header *uh = &u->hdr;
        ok = h->magic == XPU_CONFIG_MAGIC && h->version == XPU_LAYOUT_VERSION &&
             h->header_size >= sizeof(struct xpu_config_header) && csize >= sizeof(struct xpu_config) &&
             h->total_size <= csize && h->ndevices <= XPU_MAX_DEVICES &&
             h->device_offset == offsetof(struct xpu_config, dev) && h->device_stride == sizeof(struct xpu_dev_config) &&
             h->pid_offset == offsetof(struct xpu_config, pid) && h->pid_stride == sizeof(struct xpu_pid_entry) &&
             uh->magic == XPU_USAGE_MAGIC && uh->version == XPU_LAYOUT_VERSION && usize >= sizeof(struct xpu_usage) &&
             uh->total_size <= usize && uh->nslots <= XPU_MAX_SLOTS &&
             uh->device_offset == offsetof(struct xpu_usage, dev) && uh->device_stride == sizeof(struct xpu_dev_usage) &&
             uh->slot_offset == offsetof(struct xpu_usage, slot) && uh->slot_stride == sizeof(struct xpu_slot);
    }
    if (!ok) {
        if (c)
            munmap((void *)c, csize);
        if (u)
            munmap(u, usize);
        return XPU_REGION_BROKEN;
    }
    g_handle.cfg = c;
    g_handle.use = u;
    *out = &g_handle;
    return XPU_REGION_OK;
}

static int tenant_ok(const struct xpu_tenant_state *t) { return t->magic == XPU_TENANT_MAGIC && t->version == XPU_LAYOUT_VERSION; }

enum xpu_region_status xpu_card_map(const char *dir, uint32_t slot, struct xpu_card **out)
{
    *out = NULL;
    if (!dir || !dir[0])
        return XPU_REGION_NONE;
    char path[512];
    size_t size = 0;
    const struct xpu_card_policy *p = NULL;
    if (slot >= XPU_MAX_TENANTS || join(path, sizeof path, dir, XPU_POLICY_FILE) != 0 ||
        !(p = map_file(path, sizeof(struct xpu_card_policy), 0, &size)))
        return XPU_REGION_BROKEN;
    if (p->hdr.magic != XPU_CARD_MAGIC || p->hdr.version != XPU_LAYOUT_VERSION || p->hdr.ntenants > XPU_MAX_TENANTS ||
        p->hdr.tenant_offset != offsetof(struct xpu_card_policy, tenant) ||
        p->hdr.tenant_stride != sizeof(struct xpu_policy_tenant)) {
        munmap((void *)p, size);
        return XPU_REGION_BROKEN;
    }
    struct xpu_card *c = calloc(1, sizeof *c); /* once per device and process, at the first launch */
    if (!c) {
        munmap((void *)p, size);
        return XPU_REGION_BROKEN;
    }
    c->policy = p;
    c->slot = slot;
    for (uint32_t i = 0; i < p->hdr.ntenants; i++) {
        char name[32];
        size_t tsize = 0;
        snprintf(name, sizeof name, "%s%02u", XPU_TENANT_FILE_PREFIX, (unsigned)i);
        if (join(path, sizeof path, dir, name) != 0)
            continue;
        void *t = map_file(path, sizeof(struct xpu_tenant_state), i == slot, &tsize);
        if (t && !tenant_ok(t)) {
            munmap(t, tsize);
            t = NULL;
        }
        c->tenant[i] = t;
        if (i == slot)
            c->mine = t;
    }
    if (!c->mine) { /* our own file must be writable: without it there is no card coordination */
        *out = c;
        return XPU_REGION_BROKEN;
    }
    *out = c;
    return XPU_REGION_OK;
}

/* ---- robust process-shared lock living in the region header ---- */

static pthread_mutex_t *region_lock(struct xpu_region *r)
{
    return (pthread_mutex_t *)(void *)r->use->hdr.lock;
}

static int lock_ready(struct xpu_region *r)
{
    _Atomic uint32_t *st = &r->use->hdr.lock_init;
    for (int spin = 0; spin < 20000; spin++) {
        uint32_t v = atomic_load_explicit(st, memory_order_acquire);
        if (v == 2)
            return 0;
        if (v == 0) {
            uint32_t exp = 0;
            if (atomic_compare_exchange_strong(st, &exp, 1)) {
                pthread_mutexattr_t a;
                pthread_mutexattr_init(&a);
                pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
                pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
                memset(r->use->hdr.lock, 0, sizeof r->use->hdr.lock);
                int rc = pthread_mutex_init(region_lock(r), &a);
                pthread_mutexattr_destroy(&a);
                atomic_store_explicit(st, rc == 0 ? 2u : 0u, memory_order_release);
                if (rc != 0)
                    return -1;
                return 0;
            }
        }
        if (spin > 100) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        }
    }
    return -1; /* an initialiser died mid-way (1 s): caller fails closed */
}

static void recompute_totals(struct xpu_region *r)
{
    for (unsigned d = 0; d < XPU_MAX_DEVICES; d++) {
        uint64_t sum = 0;
        for (unsigned s = 0; s < XPU_MAX_SLOTS; s++)
            if (atomic_load_explicit(&r->use->slot[s].state, memory_order_relaxed) != XPU_SLOT_FREE)
                sum += r->use->slot[s].mem_used[d];
        atomic_store(&r->use->dev[d].mem_used, sum);
    }
}

static int lock_region(struct xpu_region *r)
{
    if (lock_ready(r) != 0)
        return -1;
    int rc = pthread_mutex_lock(region_lock(r));
    if (rc == EOWNERDEAD) {
        /* the previous holder died mid-update: totals are rebuilt from the slots */
        recompute_totals(r);
        pthread_mutex_consistent(region_lock(r));
        rc = 0;
    }
    return rc == 0 ? 0 : -1;
}

static void unlock_region(struct xpu_region *r)
{
    pthread_mutex_unlock(region_lock(r));
}

uint64_t xpu_proc_start_time(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may contain spaces */
    if (!p)
        return 0;
    /* after ") " comes field 3 (state); start time is field 22 */
    int field = 2;
    for (; *p && field < 22; p++)
        if (*p == ' ')
            field++;
    unsigned long long v = 0;
    if (sscanf(p, "%llu", &v) != 1)
        return 0;
    if (field == 22 && buf[0] != 0) {
        char st = 0;
        char *q = strrchr(buf, ')');
        if (q && q[1] == ' ')
            st = q[2];
        if (st == 'Z' || st == 'X') /* zombie: its device memory is already gone */
            return 0;
    }
    return v ? (uint64_t)v : 1;
}

static uint64_t reap_locked(struct xpu_region *r)
{
    uint64_t released = 0;
    for (unsigned s = 0; s < XPU_MAX_SLOTS; s++) {
        struct xpu_slot *sl = &r->use->slot[s];
        if (atomic_load(&sl->state) != XPU_SLOT_ACTIVE)
            continue;
        if ((int)s == g_slot && g_slot_pid == getpid())
            continue; /* our own slot (a dead predecessor with our pid is still reaped) */
        uint64_t st = xpu_proc_start_time(sl->pid);
        if (st != 0 && st == sl->start_time)
            continue; /* alive */
        atomic_store(&sl->state, XPU_SLOT_REAPING);
        for (unsigned d = 0; d < XPU_MAX_DEVICES; d++) {
            uint64_t b = sl->mem_used[d];
            if (!b)
                continue;
            uint64_t cur = atomic_load(&r->use->dev[d].mem_used);
            atomic_store(&r->use->dev[d].mem_used, cur >= b ? cur - b : 0);
            if (cur < b)
                atomic_fetch_add(&r->use->dev[d].accounting_errors, 1);
            atomic_fetch_add(&r->use->dev[d].reaped_bytes, b);
            released += b;
            sl->mem_used[d] = 0;
        }
        sl->pid = 0;
        sl->start_time = 0;
        sl->reserve_mask = 0;
        atomic_store(&sl->state, XPU_SLOT_FREE);
    }
    return released;
}

uint64_t xpu_region_reap(struct xpu_region *r)
{
    if (lock_region(r) != 0)
        return 0;
    uint64_t n = reap_locked(r);
    unlock_region(r);
    return n;
}

void xpu_region_forget_slot(void)
{
    g_slot = -1;
    g_slot_pid = 0;
}

int xpu_region_register(struct xpu_region *r)
{
    pid_t self = getpid();
    if (g_slot >= 0 && g_slot_pid == self)
        return g_slot;
    uint64_t st = xpu_proc_start_time(self);
    if (lock_region(r) != 0)
        return -1;
    if (g_slot >= 0 && g_slot_pid == self) { /* another thread registered meanwhile */
        unlock_region(r);
        return g_slot;
    }
    reap_locked(r);
    int found = -1;
    for (unsigned s = 0; s < XPU_MAX_SLOTS && found < 0; s++) {
        struct xpu_slot *sl = &r->use->slot[s];
        if (atomic_load(&sl->state) == XPU_SLOT_FREE) {
            memset(sl->mem_used, 0, sizeof sl->mem_used);
            sl->pid = self;
            sl->start_time = st;
            sl->reserve_mask = 0;
            atomic_store(&sl->state, XPU_SLOT_ACTIVE);
            found = (int)s;
        }
    }
    if (found >= 0) {
        /* publish before unlocking: a thread that takes the lock next must see our slot, or it
         * would register a second slot for the same process */
        g_slot_pid = self;
        g_slot = found;
    }
    unlock_region(r);
    return found;
}

void xpu_region_unregister(struct xpu_region *r)
{
    if (g_slot < 0 || g_slot_pid != getpid())
        return;
    if (lock_region(r) != 0)
        return;
    struct xpu_slot *sl = &r->use->slot[g_slot];
    for (unsigned d = 0; d < XPU_MAX_DEVICES; d++) {
        uint64_t b = sl->mem_used[d];
        uint64_t cur = atomic_load(&r->use->dev[d].mem_used);
        atomic_store(&r->use->dev[d].mem_used, cur >= b ? cur - b : 0);
        sl->mem_used[d] = 0;
    }
    sl->pid = 0;
    sl->reserve_mask = 0;
    atomic_store(&sl->state, XPU_SLOT_FREE);
    unlock_region(r);
    g_slot = -1;
}

/* bytes plus, on the process's first charge on d, the device's per-process reserve */
static int try_reserve_locked(struct xpu_region *r, unsigned d, uint64_t bytes, const struct xpu_dev_cfg *cfg)
{
    struct xpu_dev_usage *e = &r->use->dev[d];
    struct xpu_slot *sl = &r->use->slot[g_slot];
    uint64_t need = bytes;
    int first = !(sl->reserve_mask & (1u << d));
    if (first) {
        if (cfg->process_reserve > UINT64_MAX - need)
            return -1;
        need += cfg->process_reserve;
    }
    uint64_t used = atomic_load(&e->mem_used);
    uint64_t limit = cfg->mem_limit;
    if (limit && (need > limit || used > limit - need))
        return -1;
    uint64_t nu = used + need;
    atomic_store(&e->mem_used, nu);
    sl->mem_used[d] += need;
    if (first)
        sl->reserve_mask |= 1u << d;
    uint64_t peak = atomic_load(&e->mem_peak);
    if (nu > peak)
        atomic_store(&e->mem_peak, nu);
    return 0;
}

int xpu_mem_reserve(struct xpu_region *r, unsigned d, uint64_t bytes)
{
    if (d >= XPU_MAX_DEVICES)
        return -2;
    if (xpu_region_register(r) < 0)
        return -2;
    struct xpu_dev_cfg cfg;
    xpu_region_read_cfg(r, d, &cfg);
    if (lock_region(r) != 0)
        return -2;
    int rc = try_reserve_locked(r, d, bytes, &cfg);
    if (rc != 0 && reap_locked(r) > 0)
        rc = try_reserve_locked(r, d, bytes, &cfg);
    unlock_region(r);
    if (rc != 0)
        atomic_fetch_add(&r->use->dev[d].oom_events, 1);
    return rc;
}

void xpu_mem_adjust(struct xpu_region *r, unsigned d, int64_t delta)
{
    if (d >= XPU_MAX_DEVICES || delta == 0)
        return;
    if (xpu_region_register(r) < 0)
        return;
    if (lock_region(r) != 0)
        return;
    struct xpu_dev_usage *e = &r->use->dev[d];
    uint64_t *mine = &r->use->slot[g_slot].mem_used[d];
    uint64_t cur = atomic_load(&e->mem_used);
    if (delta > 0) {
        atomic_store(&e->mem_used, cur + (uint64_t)delta);
        *mine += (uint64_t)delta;
        if (cur + (uint64_t)delta > atomic_load(&e->mem_peak))
            atomic_store(&e->mem_peak, cur + (uint64_t)delta);
    } else {
        uint64_t b = (uint64_t)(-(delta + 1)) + 1u;
        if (*mine < b || cur < b)
            atomic_fetch_add(&e->accounting_errors, 1);
        *mine = *mine >= b ? *mine - b : 0;
        atomic_store(&e->mem_used, cur >= b ? cur - b : 0);
    }
    unlock_region(r);
}

void xpu_mem_release(struct xpu_region *r, unsigned d, uint64_t bytes)
{
    if (bytes > (uint64_t)INT64_MAX)
        bytes = (uint64_t)INT64_MAX;
    xpu_mem_adjust(r, d, -(int64_t)bytes);
}

void xpu_region_read_cfg(struct xpu_region *r, unsigned d, struct xpu_dev_cfg *out)
{
    const struct xpu_dev_config *e = &r->cfg->dev[d];
    for (int tries = 0; tries < 1000; tries++) {
        uint64_t g1 = atomic_load_explicit(&r->cfg->hdr.generation, memory_order_acquire);
        if (g1 & 1u)
            continue;
        out->mem_limit = e->mem_limit;
        out->process_reserve = e->process_reserve;
        out->request_bp = e->share_request_bp;
        out->limit_bp = e->share_limit_bp;
        out->priority = e->priority;
        out->period_us = e->period_us;
        out->card_slot = e->card_slot;
        atomic_thread_fence(memory_order_acquire);
        uint64_t g2 = atomic_load_explicit(&r->cfg->hdr.generation, memory_order_relaxed);
        if (g1 == g2) {
            out->generation = g1;
            return;
        }
    }
    out->generation = atomic_load(&r->cfg->hdr.generation); /* writer stuck: use last read */
}
