/*
 * xpushim shared-memory layouts: THE single definition.
 *
 * Two kinds of regions, both plain files mmap'd MAP_SHARED:
 *
 *  1. Container region (one per container and device set), path given to the shim by
 *     the device plugin (env XPUSHIM_REGION, read once) or the bind-mounted default
 *     XPUSHIM_DEFAULT_REGION_PATH. Written by the node agent (config fields) and by every
 *     shim process of the container (usage fields, per-process slots).
 *  2. Card region (one per physical card), path stored in the container region's device
 *     entry. Every container on the card has a tenant entry in it; shims publish demand
 *     there and compute their work-conserving effective share from it.
 *
 * Rules: fixed-width fields only, no implicit padding (static asserts below), little
 * endian host order, magic + version + size + generation in every header. Readers reject
 * unknown major versions and sizes smaller than they need; writers never shrink structs.
 * The Python mirror is src/xpupool/agent/shim_region.py; tests compare both via
 * native/tools/region_layout.c.
 *
 * Config writes by the agent use the header generation as a seqlock: it makes it odd,
 * writes, then makes it even (+2 overall). Shims re-read config when generation changes.
 */
#ifndef XPUSHIM_REGION_H
#define XPUSHIM_REGION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define XPU_ATOMIC(t) t
#else
#include <stdatomic.h>
#define XPU_ATOMIC(t) _Atomic t
#endif

#define XPU_REGION_MAGIC 0x3147455255505858ULL /* "XXPUREG1" little endian */
#define XPU_CARD_MAGIC 0x3144524143555058ULL   /* "XPUCARD1" little endian */
#define XPU_REGION_VERSION 1u
#define XPU_CARD_VERSION 1u

#define XPU_MAX_DEVICES 16
#define XPU_MAX_SLOTS 128
#define XPU_MAX_TENANTS 32
#define XPU_UUID_LEN 64
#define XPU_PATH_LEN 192
#define XPU_SHARE_FULL 10000u /* basis points: 10000 = whole card */

#define XPUSHIM_ENV_REGION "XPUSHIM_REGION"
#define XPUSHIM_DEFAULT_REGION_PATH "/run/xpupool/shim/region"

/* header.policy bits */
#define XPU_POLICY_FAIL_OPEN_ON_BROKEN 0x1u /* default 0 = fail closed when region is broken */

/* slot.state */
#define XPU_SLOT_FREE 0u
#define XPU_SLOT_ACTIVE 1u
#define XPU_SLOT_REAPING 2u

/* ---------------- container region ---------------- */

struct xpu_region_header {            /* 256 bytes */
    uint64_t magic;                   /* XPU_REGION_MAGIC */
    uint32_t version;                 /* XPU_REGION_VERSION */
    uint32_t header_size;             /* sizeof(struct xpu_region_header) */
    uint64_t total_size;              /* bytes of the whole file */
    XPU_ATOMIC(uint64_t) generation;  /* seqlock for config: odd while the agent writes */
    uint32_t ndevices;                /* device entries in use (<= XPU_MAX_DEVICES) */
    uint32_t nslots;                  /* XPU_MAX_SLOTS */
    uint32_t device_offset;
    uint32_t device_stride;
    uint32_t slot_offset;
    uint32_t slot_stride;
    uint64_t container_key;           /* nonzero id of the container, used in card regions */
    uint32_t policy;                  /* XPU_POLICY_* */
    uint32_t reserved0;
    XPU_ATOMIC(uint32_t) lock_init;   /* 0 none, 1 initialising, 2 ready (shim initialises) */
    uint32_t reserved1;
    uint64_t reserved2[3];
    unsigned char lock[64];           /* pthread_mutex_t, process-shared + robust, opaque */
    uint64_t reserved3[11];
};

struct xpu_device_entry {             /* 512 bytes */
    /* ---- config, written by the node agent ---- */
    char uuid[XPU_UUID_LEN];          /* "GPU-xxxxxxxx-..." (NVML form), NUL terminated; "" = match by ordinal */
    uint32_t ordinal;                 /* in-container ordinal used when uuid is empty */
    uint32_t cfg_flags;
    uint64_t mem_limit;               /* bytes; 0 = no memory limit */
    uint32_t share_request_bp;        /* guaranteed share, basis points; 0 = no compute limit */
    uint32_t share_limit_bp;          /* burst cap (>= request) */
    uint32_t priority;                /* higher value = served first */
    uint32_t period_us;               /* limiter window; 0 = default */
    uint32_t card_slot;               /* tenant index in the card region */
    uint32_t reserved0;
    char card_path[XPU_PATH_LEN];     /* card region file; "" = no card coordination */
    uint64_t reserved1[3];
    /* ---- usage, written by shims (atomics) ---- */
    XPU_ATOMIC(uint64_t) mem_used;           /* bytes charged, all processes */
    XPU_ATOMIC(uint64_t) mem_peak;
    XPU_ATOMIC(uint64_t) oom_events;         /* allocations refused by quota */
    XPU_ATOMIC(uint64_t) accounting_errors;  /* saturated subtractions, unknown frees */
    XPU_ATOMIC(uint64_t) gpu_time_ns;        /* measured GPU busy time */
    XPU_ATOMIC(uint64_t) throttle_ns;        /* time launches were held back */
    XPU_ATOMIC(uint64_t) launches;
    XPU_ATOMIC(uint64_t) throttled_launches;
    XPU_ATOMIC(uint64_t) lim_tat_ns;         /* limiter state: GCRA theoretical arrival time */
    XPU_ATOMIC(uint64_t) last_launch_ns;     /* CLOCK_MONOTONIC */
    XPU_ATOMIC(uint32_t) effective_share_bp; /* share currently applied */
    XPU_ATOMIC(uint32_t) measured_share_bp;  /* recent measured share (EWMA) */
    XPU_ATOMIC(uint64_t) reaped_bytes;       /* released from dead processes */
    uint64_t reserved2[12];
};

struct xpu_slot {                     /* 256 bytes */
    XPU_ATOMIC(uint32_t) state;       /* XPU_SLOT_* */
    int32_t pid;                      /* pid in the container's pid namespace */
    uint64_t start_time;              /* /proc/<pid>/stat field 22, to detect pid reuse */
    int32_t host_pid;                 /* written by the agent (0 = unknown) */
    uint32_t reserved0;
    uint64_t mem_used[XPU_MAX_DEVICES];
    uint64_t reserved1[13];
};

struct xpu_region {
    struct xpu_region_header hdr;
    struct xpu_device_entry dev[XPU_MAX_DEVICES];
    struct xpu_slot slot[XPU_MAX_SLOTS];
};

/* ---------------- card region ---------------- */

struct xpu_card_header {              /* 128 bytes */
    uint64_t magic;                   /* XPU_CARD_MAGIC */
    uint32_t version;
    uint32_t header_size;
    uint64_t total_size;
    XPU_ATOMIC(uint64_t) generation;
    uint32_t ntenants;                /* XPU_MAX_TENANTS */
    uint32_t tenant_offset;
    uint32_t tenant_stride;
    uint32_t reserved0;
    char uuid[XPU_UUID_LEN];
    uint64_t reserved1[2];
};

struct xpu_card_tenant {              /* 64 bytes, one per container on the card */
    XPU_ATOMIC(uint64_t) owner_key;   /* container_key, 0 = free */
    XPU_ATOMIC(uint32_t) request_bp;
    XPU_ATOMIC(uint32_t) limit_bp;
    XPU_ATOMIC(uint32_t) priority;
    XPU_ATOMIC(uint32_t) effective_bp;
    XPU_ATOMIC(uint64_t) last_demand_ns;  /* CLOCK_MONOTONIC of the latest launch */
    XPU_ATOMIC(uint64_t) gpu_time_ns;
    uint64_t reserved[3];
};

struct xpu_card {
    struct xpu_card_header hdr;
    struct xpu_card_tenant tenant[XPU_MAX_TENANTS];
};

#ifndef __cplusplus
_Static_assert(sizeof(struct xpu_region_header) == 256, "header size");
_Static_assert(sizeof(struct xpu_device_entry) == 512, "device entry size");
_Static_assert(sizeof(struct xpu_slot) == 256, "slot size");
_Static_assert(offsetof(struct xpu_region, dev) == 256, "device offset");
_Static_assert(offsetof(struct xpu_region, slot) == 256 + 512 * XPU_MAX_DEVICES, "slot offset");
_Static_assert(sizeof(struct xpu_card_header) == 128, "card header size");
_Static_assert(sizeof(struct xpu_card_tenant) == 64, "tenant size");
_Static_assert(offsetof(struct xpu_device_entry, mem_used) == 320, "usage block offset");
#endif

#endif /* XPUSHIM_REGION_H */
