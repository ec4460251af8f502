/*
 * xpushim core: one-time configuration, dlsym interposition, per-process allocation
 * table, fork handling. Shared by the CUDA, NVML, ACL and HIP backends.
 */
#define _GNU_SOURCE
#include "shim_core.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* dlsym is called by sanitizer runtimes before their shadow memory exists: the lookup
 * path must not be instrumented (only matters for the ASan/UBSan test build) */
#define XPU_NO_SAN __attribute__((no_sanitize("address", "undefined", "thread")))

struct xpu_core g_xpu;
_Atomic int g_xpu_ready;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* ------------------------------------------------------------------ real dlsym */

typedef void *(*dlsym_fn)(void *, const char *);
/* no pthread_once here: sanitizer runtimes call dlsym before their pthread interceptors
 * work; racing initialisers compute the same pointer */
static _Atomic(dlsym_fn) g_real_dlsym;

XPU_NO_SAN static dlsym_fn find_real_dlsym(void)
{
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0"};
    dlsym_fn f = NULL;
    for (size_t i = 0; i < sizeof versions / sizeof versions[0] && !f; i++)
        f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    return f;
}

XPU_NO_SAN void *xpu_real_dlsym(void *handle, const char *name)
{
    dlsym_fn f = atomic_load_explicit(&g_real_dlsym, memory_order_acquire);
    if (XPU_UNLIKELY(!f)) {
        f = find_real_dlsym();
        atomic_store_explicit(&g_real_dlsym, f, memory_order_release);
    }
    return f ? f(handle, name) : NULL;
}

/* RTLD_NEXT relative to the *caller*, not to this library. Callers loaded before us (the
 * program, earlier preloads such as sanitizer runtimes) get glibc's answer relative to
 * us, which is the same object list minus objects that cannot be "next" anyway. Callers
 * loaded after us are resolved by walking the link-map list after the caller, with
 * RTLD_NOLOAD handles. (Sanitizer runtimes call this before their dlopen works, hence the
 * ordering of the cases.) */
XPU_NO_SAN static void *dlsym_next_of(const void *caller, const char *name)
{
    Dl_info di;
    struct link_map *lm = NULL, *self = NULL;
    if (!dladdr1(caller, &di, (void **)&lm, RTLD_DL_LINKMAP) || !lm ||
        !dladdr1((void *)dlsym_next_of, &di, (void **)&self, RTLD_DL_LINKMAP) || !self)
        return xpu_real_dlsym(RTLD_NEXT, name);
    for (struct link_map *p = self; p; p = p->l_prev)
        if (p == lm)
            return xpu_real_dlsym(RTLD_NEXT, name); /* caller at or before us */
    for (struct link_map *n = lm->l_next; n; n = n->l_next) {
        if (!n->l_name || !n->l_name[0])
            continue;
        void *h = dlopen(n->l_name, RTLD_LAZY | RTLD_NOLOAD);
        if (!h)
            continue;
        void *p = xpu_real_dlsym(h, name);
        dlclose(h);
        struct link_map *owner = NULL;
        if (p && dladdr1(p, &di, (void **)&owner, RTLD_DL_LINKMAP) && owner == n)
            return p;
    }
    return NULL;
}

/* ------------------------------------------------------------------ hooks */

XPU_NO_SAN const struct xpu_hook *xpu_hook_find(const char *name)
{
    const struct xpu_hook *tab;
    size_t n;
    if (name[0] == 'c' && name[1] == 'u') {
        tab = xpu_cuda_hooks;
        n = xpu_cuda_nhooks;
    } else if (name[0] == 'n' && strncmp(name, "nvml", 4) == 0) {
        tab = xpu_nvml_hooks;
        n = xpu_nvml_nhooks;
    } else if (name[0] == 'a' && strncmp(name, "aclrt", 5) == 0) {
        tab = xpu_acl_hooks;
        n = xpu_acl_nhooks;
    } else if (name[0] == 'h' && strncmp(name, "hip", 3) == 0) {
        tab = xpu_hip_hooks;
        n = xpu_hip_nhooks;
    } else {
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if (strcmp(tab[i].name, name) == 0)
            return &tab[i];
    return NULL;
}

XPU_EXPORT XPU_NO_SAN void *dlsym(void *handle, const char *name)
{
    void *real;
    if (handle == RTLD_NEXT)
        real = dlsym_next_of(__builtin_return_address(0), name);
    else
        real = xpu_real_dlsym(handle, name);
    if (!real)
        return real;
    const struct xpu_hook *h = xpu_hook_find(name);
    if (!h)
        return real;
    if (real != h->wrapper && h->real) {
        /* remember a real definition if the backend could not find its library */
        void *expected = NULL;
        __atomic_compare_exchange_n(h->real, &expected, real, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    return h->wrapper;
}

/* ------------------------------------------------------------------ logging */

static _Atomic uint64_t g_logged[4];

void xpu_log_once(unsigned key, const char *msg, const char *arg)
{
    unsigned w = (key / 64u) % 4u;
    uint64_t bit = 1ull << (key % 64u);
    if (atomic_fetch_or(&g_logged[w], bit) & bit)
        return;
    if (g_xpu.log_level <= 0)
        return;
    char buf[256];
    int n = snprintf(buf, sizeof buf, "xpushim[%d]: %s%s%s\n", (int)getpid(), msg, arg ? " " : "",
                     arg ? arg : "");
    if (n > 0) {
        ssize_t wr = write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
        (void)wr;
    }
}

/* ------------------------------------------------------------------ allocation table */

struct track_ent {
    uint64_t key;
    uint64_t bytes;
    uint64_t aux;  /* kind-specific (VMM mapping: its allocation handle) */
    int32_t dev;
    uint32_t kind; /* 0 empty, UINT32_MAX tombstone */
    int32_t refs, maps; /* VMM allocation: handle references and mappings alive */
};

static pthread_mutex_t g_track_mu = PTHREAD_MUTEX_INITIALIZER;
static struct track_ent *g_tab;
static size_t g_cap, g_used;

static size_t hash2(unsigned kind, uint64_t key)
{
    uint64_t x = key ^ ((uint64_t)kind * 0x9E3779B97F4A7C15ull);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x;
}

static struct track_ent *find_slot(unsigned kind, uint64_t key, int for_insert)
{
    if (!g_cap)
        return NULL;
    size_t mask = g_cap - 1, i = hash2(kind, key) & mask;
    struct track_ent *tomb = NULL;
    for (size_t probe = 0; probe < g_cap; probe++, i = (i + 1) & mask) {
        struct track_ent *e = &g_tab[i];
        if (e->kind == 0)
            return for_insert ? (tomb ? tomb : e) : NULL;
        if (e->kind == UINT32_MAX) {
            if (!tomb)
                tomb = e;
            continue;
        }
        if (e->kind == kind && e->key == key)
            return e;
    }
    return for_insert ? tomb : NULL;
}

static int grow(void)
{
    size_t ncap = g_cap ? g_cap * 2 : 1024;
    struct track_ent *old = g_tab;
    size_t ocap = g_cap;
    struct track_ent *nt = calloc(ncap, sizeof *nt);
    if (!nt)
        return -1;
    g_tab = nt;
    g_cap = ncap;
    g_used = 0;
    for (size_t i = 0; i < ocap; i++) {
        if (old[i].kind == 0 || old[i].kind == UINT32_MAX)
            continue;
        struct track_ent *e = find_slot(old[i].kind, old[i].key, 1);
        *e = old[i];
        g_used++;
    }
    free(old);
    return 0;
}

void xpu_track_lock(void) { pthread_mutex_lock(&g_track_mu); }
void xpu_track_unlock(void) { pthread_mutex_unlock(&g_track_mu); }

int xpu_track_put_aux(unsigned kind, uint64_t key, uint64_t bytes, int dev, uint64_t aux, int refs)
{
    pthread_mutex_lock(&g_track_mu);
    if ((g_used + 1) * 2 > g_cap && grow() != 0) {
        pthread_mutex_unlock(&g_track_mu);
        return -1;
    }
    struct track_ent *e = find_slot(kind, key, 1);
    if (e->kind == 0 || e->kind == UINT32_MAX)
        g_used++;
    e->kind = kind;
    e->key = key;
    e->bytes = bytes;
    e->dev = dev;
    e->aux = aux;
    e->refs = refs;
    e->maps = 0;
    pthread_mutex_unlock(&g_track_mu);
    return 0;
}

int xpu_track_put(unsigned kind, uint64_t key, uint64_t bytes, int dev)
{
    return xpu_track_put_aux(kind, key, bytes, dev, 0, 1);
}

int xpu_track_ref(unsigned kind, uint64_t key, int drefs, int dmaps, uint64_t *bytes, int *dev)
{
    pthread_mutex_lock(&g_track_mu);
    struct track_ent *e = find_slot(kind, key, 0);
    int rc = -1;
    if (e) {
        e->refs += drefs;
        e->maps += dmaps;
        if (e->refs < 0)
            e->refs = 0;
        if (e->maps < 0)
            e->maps = 0;
        rc = 0;
        if (e->refs == 0 && e->maps == 0) { /* the memory is gone: hand back the charge */
            if (bytes)
                *bytes = e->bytes;
            if (dev)
                *dev = e->dev;
            e->kind = UINT32_MAX;
            rc = 1;
        }
    }
    pthread_mutex_unlock(&g_track_mu);
    return rc;
}

size_t xpu_track_take_range(unsigned kind, uint64_t lo, uint64_t hi, struct xpu_track_item *out, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&g_track_mu);
    for (size_t i = 0; i < g_cap && n < cap; i++) {
        struct track_ent *e = &g_tab[i];
        if (e->kind == kind && e->key >= lo && e->key < hi) {
            out[n].key = e->key;
            out[n].bytes = e->bytes;
            out[n].aux = e->aux;
            out[n].dev = e->dev;
            n++;
            e->kind = UINT32_MAX;
        }
    }
    pthread_mutex_unlock(&g_track_mu);
    return n;
}

size_t xpu_track_keys(unsigned kind, uint64_t *keys, int *devs, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&g_track_mu);
    for (size_t i = 0; i < g_cap && n < cap; i++)
        if (g_tab[i].kind == kind) {
            keys[n] = g_tab[i].key;
            devs[n] = g_tab[i].dev;
            n++;
        }
    pthread_mutex_unlock(&g_track_mu);
    return n;
}

int xpu_track_take(unsigned kind, uint64_t key, uint64_t *bytes, int *dev)
{
    pthread_mutex_lock(&g_track_mu);
    struct track_ent *e = find_slot(kind, key, 0);
    int found = e != NULL;
    if (found) {
        if (bytes)
            *bytes = e->bytes;
        if (dev)
            *dev = e->dev;
        e->kind = UINT32_MAX; /* tombstone; g_used keeps counting it until the next grow */
    }
    pthread_mutex_unlock(&g_track_mu);
    return found;
}

int xpu_track_get(unsigned kind, uint64_t key, uint64_t *bytes, int *dev)
{
    pthread_mutex_lock(&g_track_mu);
    struct track_ent *e = find_slot(kind, key, 0);
    int found = e != NULL;
    if (found) {
        if (bytes)
            *bytes = e->bytes;
        if (dev)
            *dev = e->dev;
    }
    pthread_mutex_unlock(&g_track_mu);
    return found;
}

uint64_t xpu_track_add(unsigned kind, uint64_t key, int64_t delta, int dev)
{
    pthread_mutex_lock(&g_track_mu);
    struct track_ent *e = find_slot(kind, key, 0);
    if (!e) {
        if ((g_used + 1) * 2 > g_cap && grow() != 0) {
            pthread_mutex_unlock(&g_track_mu);
            return 0;
        }
        e = find_slot(kind, key, 1);
        if (e->kind == 0 || e->kind == UINT32_MAX)
            g_used++;
        e->kind = kind;
        e->key = key;
        e->bytes = 0;
        e->dev = dev;
    }
    if (delta >= 0)
        e->bytes += (uint64_t)delta;
    else
        e->bytes = e->bytes >= (uint64_t)(-(delta + 1)) + 1u ? e->bytes - ((uint64_t)(-(delta + 1)) + 1u) : 0;
    uint64_t v = e->bytes;
    pthread_mutex_unlock(&g_track_mu);
    return v;
}

void xpu_track_reset(void)
{
    /* fork child: allocations belong to the parent's contexts */
    if (g_tab)
        memset(g_tab, 0, g_cap * sizeof *g_tab);
    g_used = 0;
}

/* ------------------------------------------------------------------ devices */

int xpu_dev_index_by_uuid(const char *uuid)
{
    struct xpu_core *c = xpu_core();
    if (c->status != XPU_REGION_OK || !uuid)
        return -1;
    uint32_t n = c->region->cfg->hdr.ndevices;
    for (uint32_t d = 0; d < n && d < XPU_MAX_DEVICES; d++) {
        const char *u = c->region->cfg->dev[d].uuid;
        if (u[0] && strncmp(u, uuid, XPU_UUID_LEN) == 0)
            return (int)d;
    }
    return -1;
}

int xpu_dev_index_by_ordinal(int ordinal)
{
    struct xpu_core *c = xpu_core();
    if (c->status != XPU_REGION_OK)
        return -1;
    uint32_t n = c->region->cfg->hdr.ndevices;
    for (uint32_t d = 0; d < n && d < XPU_MAX_DEVICES; d++)
        if (!c->region->cfg->dev[d].uuid[0] && (int)c->region->cfg->dev[d].ordinal == ordinal)
            return (int)d;
    return -1;
}

/* ------------------------------------------------------------------ init, fork, exit */

static void fork_prepare(void) { xpu_track_lock(); }
static void fork_parent(void) { xpu_track_unlock(); }
static void fork_child(void)
{
    xpu_track_unlock();
    xpu_track_reset();
    xpu_region_forget_slot(); /* the child registers its own slot on first use */
    xpu_limit_fork_child();
    xpu_cuda_fork_child();
    xpu_now_fast_fork_child();
}

static void at_exit(void)
{
    if (g_xpu.status == XPU_REGION_OK)
        xpu_region_unregister(g_xpu.region);
}

static void init_once(void)
{
    const char *lv = getenv("XPUSHIM_LOG"); /* read once, here only */
    g_xpu.log_level = lv ? atoi(lv) : 1;
    const char *path = getenv(XPUSHIM_ENV_REGION);
    if (!path || !path[0]) {
        if (access(XPUSHIM_DEFAULT_REGION_PATH, F_OK) == 0)
            path = XPUSHIM_DEFAULT_REGION_PATH;
    }
    g_xpu.status = xpu_region_map(path, &g_xpu.region);
    if (g_xpu.status == XPU_REGION_OK) {
        g_xpu.fail_open_on_broken = (g_xpu.region->cfg->hdr.policy & XPU_POLICY_FAIL_OPEN_ON_BROKEN) != 0;
        atexit(at_exit);
    } else if (g_xpu.status == XPU_REGION_BROKEN) {
        xpu_log_once(0, "region unusable, failing closed for allocations:", path);
    }
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    atomic_store_explicit(&g_xpu_ready, 1, memory_order_release);
}

void xpu_core_init(void)
{
    pthread_once(&g_once, init_once);
}
