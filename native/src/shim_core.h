/* Internal API shared by the xpushim backends (CUDA driver, NVML, ACL, HIP). */
#ifndef XPUSHIM_CORE_H
#define XPUSHIM_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include "region.h"
#include "limiter.h"

#define XPU_EXPORT __attribute__((visibility("default")))
#define XPU_LIKELY(x) __builtin_expect(!!(x), 1)
#define XPU_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* process-wide state, filled once by xpu_core_init() (pthread_once) */
struct xpu_core {
    enum xpu_region_status status;
    struct xpu_region *region;
    int log_level;            /* XPUSHIM_LOG, read once: 0 quiet, 1 warn, 2 info */
    int fail_open_on_broken;  /* policy bit */
};
extern struct xpu_core g_xpu;

void xpu_core_init(void);     /* idempotent, thread safe */
static inline struct xpu_core *xpu_core(void)
{
    extern _Atomic int g_xpu_ready;
    if (XPU_UNLIKELY(!atomic_load_explicit(&g_xpu_ready, memory_order_acquire)))
        xpu_core_init();
    return &g_xpu;
}

/* rate-limited (once per key) log to stderr; never formats on hot paths */
void xpu_log_once(unsigned key, const char *msg, const char *arg);

/* the real dlsym (glibc), found with dlvsym */
void *xpu_real_dlsym(void *handle, const char *name);

/* per-process allocation table: (kind, key) -> (bytes, device index) */
enum xpu_kind {
    XPU_K_PTR = 1, XPU_K_VMM, XPU_K_ARRAY, XPU_K_MIPMAP, XPU_K_POOL, XPU_K_GRAPH, XPU_K_GEXEC,
    XPU_K_ACL, XPU_K_HIP,
    XPU_K_VMAP, /* a VMM mapping: key = address, bytes = size, aux = allocation handle */
};
int xpu_track_put(unsigned kind, uint64_t key, uint64_t bytes, int dev);
/* put with an aux value and an initial reference count (VMM handles start at 1) */
int xpu_track_put_aux(unsigned kind, uint64_t key, uint64_t bytes, int dev, uint64_t aux, int refs);
/* adjust references / mappings of an entry: -1 unknown, 0 still alive, 1 none left (the
 * entry is removed and its bytes/dev returned) */
int xpu_track_ref(unsigned kind, uint64_t key, int drefs, int dmaps, uint64_t *bytes, int *dev);
/* remove every entry of kind with lo <= key < hi, returning them (up to cap) */
struct xpu_track_item { uint64_t key, bytes, aux; int dev; };
size_t xpu_track_take_range(unsigned kind, uint64_t lo, uint64_t hi, struct xpu_track_item *out, size_t cap);
/* keys and devices of the entries of kind (up to cap) */
size_t xpu_track_keys(unsigned kind, uint64_t *keys, int *devs, size_t cap);
/* removes; returns 1 and fills bytes/dev if it was present */
int xpu_track_take(unsigned kind, uint64_t key, uint64_t *bytes, int *dev);
int xpu_track_get(unsigned kind, uint64_t key, uint64_t *bytes, int *dev);
/* add delta to an entry (creating it), returns new value */
uint64_t xpu_track_add(unsigned kind, uint64_t key, int64_t delta, int dev);
void xpu_track_reset(void); /* fork child */
void xpu_track_lock(void);
void xpu_track_unlock(void);

/* hook tables for dlsym interposition: each backend registers name -> wrapper */
struct xpu_hook {
    const char *name;
    void *wrapper;
    void **real;          /* where the real address is cached */
};
const struct xpu_hook *xpu_hook_find(const char *name);
void xpu_cuda_fork_child(void);
void xpu_cuda_atexit(void);

/* backend tables (defined in each backend) */
extern const struct xpu_hook xpu_cuda_hooks[];
extern const size_t xpu_cuda_nhooks;
extern const struct xpu_hook xpu_nvml_hooks[];
extern const size_t xpu_nvml_nhooks;
extern const struct xpu_hook xpu_acl_hooks[];
extern const size_t xpu_acl_nhooks;
extern const struct xpu_hook xpu_hip_hooks[];
extern const size_t xpu_hip_nhooks;

/* region device index for a uuid string / ordinal; -1 when not managed */
int xpu_dev_index_by_uuid(const char *uuid);
int xpu_dev_index_by_ordinal(int ordinal);

/* ---- compute limiter glue (shim_limit.c), backend independent ---- */
struct xpu_meter_ops {
    /* all return 0 on success */
    int (*create)(void **ev);
    int (*record)(void *ev, void *stream);
    int (*query)(void *ev);               /* 0 done, 1 not ready, -2 recorded in a capture, <0 error */
    int (*sync)(void *ev);
    int (*elapsed_ns)(void *start, void *end, int64_t *ns); /* end - start, may be negative */
    int (*capturing)(void *stream);       /* 1 if stream capture is in progress; NULL: no capture */
    void (*exchange_mode)(int relaxed, int *saved); /* capture interaction mode; NULL: none */
    int per_thread_null;                  /* the NULL stream is the calling thread's default stream */
};
/* Called before a launch on region device d. May sleep (bounded). Returns 1 if the
 * launch should be measured; then call xpu_limit_after with the same *now. Launches on a
 * capturing stream return 0 (not executed, not charged). */
int xpu_limit_before(unsigned d, void *stream, const struct xpu_meter_ops *ops, uint64_t *now);
void xpu_limit_after(unsigned d, void *stream, const struct xpu_meter_ops *ops, int ok, int force_close,
                     uint64_t now);
void xpu_limit_fork_child(void);
/* host synchronisation point on stream (whole_context: every stream): closes open batches */
void xpu_limit_sync_point(unsigned d, void *stream, const struct xpu_meter_ops *ops, int whole_context);
/* capture is about to begin on stream: its open batch ends first */
void xpu_limit_stream_capture_begins(unsigned d, void *stream, const struct xpu_meter_ops *ops);
/* a stream capture begins / ended (called around the real driver calls) */
void xpu_capture_begin(void);
void xpu_capture_end(void);
/* a stream capture may be in progress in this process (cheap) */
int xpu_captures_possible(void);
/* is compute limiting configured for device d (relaxed, cheap) */
int xpu_limit_enabled(unsigned d);

#endif
