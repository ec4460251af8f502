/* Container/card region access shared by every xpushim backend (CUDA, NVML, ACL, HIP). */
#ifndef XPUSHIM_REGION_ACCESS_H
#define XPUSHIM_REGION_ACCESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "xpushim_region.h"

enum xpu_region_status {
    XPU_REGION_NONE = 0,   /* no region configured: unmanaged process, fail open */
    XPU_REGION_OK = 1,
    XPU_REGION_BROKEN = 2, /* configured but unusable: fail closed (unless policy says open) */
};

/* Process-local handles of one container region directory (layout: xpushim_layout.def). */
struct xpu_region {
    const struct xpu_config *cfg; /* agent-owned: mapped read-only */
    struct xpu_usage *use;        /* shared by the container's processes */
};

/* Process-local handles of one card region directory. */
struct xpu_card {
    const struct xpu_card_policy *policy;                 /* agent-owned: read-only */
    const struct xpu_tenant_state *tenant[XPU_MAX_TENANTS]; /* every tenant, read-only (NULL: missing) */
    struct xpu_tenant_state *mine;                         /* this container's own file, read-write */
    uint32_t slot;
};

/* Maps the region directory at dir (NULL/"" -> NONE): config read-only, usage read-write.
 * Validates magic/version/sizes of both. */
enum xpu_region_status xpu_region_map(const char *dir, struct xpu_region **out);
/* Maps the card directory: policy and other tenants read-only, tenant `slot` read-write. */
enum xpu_region_status xpu_card_map(const char *dir, uint32_t slot, struct xpu_card **out);

/* Process slot of the calling process; registers (and reaps dead slots) if needed.
 * Returns slot index or -1 when the table is full. */
int xpu_region_register(struct xpu_region *r);
/* Forget the slot after fork() in the child (the child registers anew). */
void xpu_region_forget_slot(void);
/* Release this process's slot and its charges (normal exit). */
void xpu_region_unregister(struct xpu_region *r);

/* Reserve bytes on device index d for the calling process. 0 = ok, -1 = over quota,
 * -2 = region lock unusable. The first reservation of a process on a device also charges the
 * device's per-process reserve (context, modules, local memory, device heap), in the same
 * check; bytes may be 0 to charge only that. Dead slots are reaped and the check retried once
 * before refusing. */
int xpu_mem_reserve(struct xpu_region *r, unsigned d, uint64_t bytes);
/* Give back bytes charged by this process (saturating; counts accounting errors). */
void xpu_mem_release(struct xpu_region *r, unsigned d, uint64_t bytes);
/* Adjust by a signed delta without quota check (pool / graph reconciliation). */
void xpu_mem_adjust(struct xpu_region *r, unsigned d, int64_t delta);

/* Reap slots whose process is gone (pid + start time). Returns bytes released. */
uint64_t xpu_region_reap(struct xpu_region *r);

/* Consistent snapshot of config of device d (seqlock on generation). */
struct xpu_dev_cfg {
    uint64_t mem_limit, process_reserve;
    uint32_t request_bp, limit_bp, priority, period_us, card_slot;
    uint64_t generation;
};
void xpu_region_read_cfg(struct xpu_region *r, unsigned d, struct xpu_dev_cfg *out);

/* /proc/<pid>/stat start time (field 22); 0 if the process does not exist. */
uint64_t xpu_proc_start_time(pid_t pid);

uint64_t xpu_now_mono_ns(void);
/* CLOCK_MONOTONIC interpolated with the TSC where safe (launch hot path) */
uint64_t xpu_now_fast_ns(void);
void xpu_now_fast_fork_child(void);

#endif
