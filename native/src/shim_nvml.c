/*
 * xpushim NVML backend: nvidia-smi / pynvml inside the container see the slice.
 *
 * NVML has no header in any wheel we use: the few types below are declared from the
 * public NVML reference (nvmlMemory_t, nvmlMemory_v2_t, nvmlProcessInfo_v1_t/_v2_t,
 * nvmlUtilization_t). Identity calls (UUID, PCI, name, index) pass through untouched.
 */
#define _GNU_SOURCE
#include "shim_core.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_FUNCTION_NOT_FOUND 13

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
    unsigned long long usedGpuCcProtectedMemory;
} nvmlProcessDetail_v1_t;
typedef struct {
    unsigned int version, mode, numProcArrayEntries;
    nvmlProcessDetail_v1_t *procArray;
} nvmlProcessDetailList_v1_t;
typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;
typedef struct {
    unsigned long long timeStamp;
    unsigned int pid, smUtil, memUtil, encUtil, decUtil, jpgUtil, ofaUtil;
} nvmlProcessUtilizationInfo_v1_t;
typedef struct {
    unsigned int version, processSamplesCount;
    unsigned long long lastSeenTimeStamp;
    nvmlProcessUtilizationInfo_v1_t *procUtilArray;
} nvmlProcessesUtilizationInfo_v1_t;
#define NVML_PROCESS_MODE_COMPUTE 0u

#define NVML_HOOKED(X)                                                                                 \
    X(nvmlDeviceGetMemoryInfo) X(nvmlDeviceGetMemoryInfo_v2) X(nvmlDeviceGetComputeRunningProcesses)   \
    X(nvmlDeviceGetComputeRunningProcesses_v2) X(nvmlDeviceGetComputeRunningProcesses_v3)              \
    X(nvmlDeviceGetGraphicsRunningProcesses) X(nvmlDeviceGetGraphicsRunningProcesses_v2)               \
    X(nvmlDeviceGetGraphicsRunningProcesses_v3) X(nvmlDeviceGetMPSComputeRunningProcesses)             \
    X(nvmlDeviceGetMPSComputeRunningProcesses_v2) X(nvmlDeviceGetMPSComputeRunningProcesses_v3)        \
    X(nvmlDeviceGetRunningProcessDetailList) X(nvmlDeviceGetProcessUtilization)                        \
    X(nvmlDeviceGetProcessesUtilizationInfo) X(nvmlDeviceGetUtilizationRates)

#define NVML_INTERNAL(X) X(nvmlDeviceGetUUID) X(nvmlDeviceGetIndex)

XPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *m);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t dev, nvmlMemory_v2_t *m);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t dev, unsigned int *count,
                                                              nvmlProcessInfo_v1_t *infos);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t dev, unsigned int *count,
                                                                 nvmlProcessInfo_v2_t *infos);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                                 nvmlProcessInfo_v2_t *infos);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t dev, nvmlUtilization_t *u);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t dev, unsigned int *count,
                                                               nvmlProcessInfo_v1_t *infos);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t dev, unsigned int *count,
                                                                  nvmlProcessInfo_v2_t *infos);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                                  nvmlProcessInfo_v2_t *infos);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses(nvmlDevice_t dev, unsigned int *count,
                                                                 nvmlProcessInfo_v1_t *infos);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v2(nvmlDevice_t dev, unsigned int *count,
                                                                    nvmlProcessInfo_v2_t *infos);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                                    nvmlProcessInfo_v2_t *infos);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetRunningProcessDetailList(nvmlDevice_t dev, nvmlProcessDetailList_v1_t *list);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t dev, nvmlProcessUtilizationSample_t *u,
                                                         unsigned int *n, unsigned long long since);
XPU_EXPORT nvmlReturn_t nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t dev, nvmlProcessesUtilizationInfo_v1_t *info);
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t dev, char *uuid, unsigned int len);
nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t dev, unsigned int *index);

#define DECL(n) static void *R_##n;
NVML_HOOKED(DECL)
NVML_INTERNAL(DECL)

static void *g_nvml;
static pthread_once_t g_nvml_once = PTHREAD_ONCE_INIT;

static void nvml_init(void)
{
    g_nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
#define RES(n)                                                                                     \
    if (!__atomic_load_n(&R_##n, __ATOMIC_ACQUIRE) && g_nvml)                                              \
        __atomic_store_n(&R_##n, xpu_real_dlsym(g_nvml, #n), __ATOMIC_RELEASE);
    NVML_HOOKED(RES)
    NVML_INTERNAL(RES)
}

static inline void *nreal(void **slot)
{
    void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (!p) {
        pthread_once(&g_nvml_once, nvml_init);
        p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    }
    return p;
}
#define NREAL(n) ((__typeof__(&n))nreal(&R_##n))

/* small cache handle -> region device index */
#define NCACHE 64
static struct { nvmlDevice_t h; int idx; } g_cache[NCACHE];
static pthread_mutex_t g_cache_mu = PTHREAD_MUTEX_INITIALIZER;

static int dev_index(nvmlDevice_t h)
{
    struct xpu_core *c = xpu_core();
    if (c->status != XPU_REGION_OK)
        return -1;
    pthread_mutex_lock(&g_cache_mu);
    for (int i = 0; i < NCACHE; i++) {
        if (g_cache[i].h == h) {
            int v = g_cache[i].idx;
            pthread_mutex_unlock(&g_cache_mu);
            return v;
        }
    }
    pthread_mutex_unlock(&g_cache_mu);
    int idx = -1;
    char uuid[96] = {0};
    __typeof__(&nvmlDeviceGetUUID) gu = NREAL(nvmlDeviceGetUUID);
    if (gu && gu(h, uuid, sizeof uuid) == NVML_SUCCESS)
        idx = xpu_dev_index_by_uuid(uuid);
    if (idx < 0) {
        unsigned int o;
        __typeof__(&nvmlDeviceGetIndex) gi = NREAL(nvmlDeviceGetIndex);
        if (gi && gi(h, &o) == NVML_SUCCESS)
            idx = xpu_dev_index_by_ordinal((int)o);
    }
    pthread_mutex_lock(&g_cache_mu);
    for (int i = 0; i < NCACHE; i++) {
        if (g_cache[i].h == NULL || g_cache[i].h == h) {
            g_cache[i].h = h;
            g_cache[i].idx = idx;
            break;
        }
    }
    pthread_mutex_unlock(&g_cache_mu);
    return idx;
}

static void virt_mem(int d, unsigned long long *total, unsigned long long *fr, unsigned long long *used)
{
    struct xpu_dev_cfg cfg;
    xpu_region_read_cfg(g_xpu.region, (unsigned)d, &cfg);
    if (!cfg.mem_limit)
        return;
    unsigned long long t = cfg.mem_limit < *total ? cfg.mem_limit : *total;
    unsigned long long u = atomic_load(&g_xpu.region->use->dev[d].mem_used);
    *total = t;
    *used = u;
    *fr = u < t ? t - u : 0;
}

XPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *m)
{
    __typeof__(&nvmlDeviceGetMemoryInfo) f = NREAL(nvmlDeviceGetMemoryInfo);
    if (!f)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t rc = f(dev, m);
    int d;
    if (rc == NVML_SUCCESS && m && (d = dev_index(dev)) >= 0)
        virt_mem(d, &m->total, &m->free, &m->used);
    return rc;
}

XPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t dev, nvmlMemory_v2_t *m)
{
    __typeof__(&nvmlDeviceGetMemoryInfo_v2) f = NREAL(nvmlDeviceGetMemoryInfo_v2);
    if (!f)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t rc = f(dev, m);
    int d;
    if (rc == NVML_SUCCESS && m && (d = dev_index(dev)) >= 0) {
        virt_mem(d, &m->total, &m->free, &m->used);
        m->reserved = 0; /* driver reservation is outside the slice */
    }
    return rc;
}

/* container processes with memory on region device d (container pids) */
static unsigned list_procs(int d, unsigned int *pids, unsigned long long *mem, unsigned cap)
{
    struct xpu_region *r = g_xpu.region;
    unsigned n = 0;
    for (unsigned s = 0; s < XPU_MAX_SLOTS; s++) {
        struct xpu_slot *sl = &r->use->slot[s];
        if (atomic_load_explicit(&sl->state, memory_order_acquire) != XPU_SLOT_ACTIVE)
            continue;
        if (!sl->mem_used[d])
            continue;
        if (n < cap) {
            pids[n] = (unsigned)sl->pid;
            mem[n] = sl->mem_used[d];
        }
        n++;
    }
    return n;
}

static nvmlReturn_t procs_common(nvmlDevice_t dev, unsigned int *count, void *infos, int v2,
                                 nvmlReturn_t (*realf)(nvmlDevice_t, unsigned int *, void *))
{
    if (!realf)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    int d = dev_index(dev);
    if (d < 0)
        return realf(dev, count, infos);
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int pids[XPU_MAX_SLOTS];
    unsigned long long mem[XPU_MAX_SLOTS];
    unsigned n = list_procs(d, pids, mem, XPU_MAX_SLOTS);
    if (n > XPU_MAX_SLOTS)
        n = XPU_MAX_SLOTS;
    if (*count < n || (!infos && n)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned i = 0; i < n; i++) {
        if (v2) {
            nvmlProcessInfo_v2_t *p = &((nvmlProcessInfo_v2_t *)infos)[i];
            p->pid = pids[i];
            p->usedGpuMemory = mem[i];
            p->gpuInstanceId = 0xFFFFFFFFu;
            p->computeInstanceId = 0xFFFFFFFFu;
        } else {
            nvmlProcessInfo_v1_t *p = &((nvmlProcessInfo_v1_t *)infos)[i];
            p->pid = pids[i];
            p->usedGpuMemory = mem[i];
        }
    }
    *count = n;
    return NVML_SUCCESS;
}

XPU_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t dev, unsigned int *count,
                                                              nvmlProcessInfo_v1_t *infos)
{
    return procs_common(dev, count, infos, 0,
                        (nvmlReturn_t(*)(nvmlDevice_t, unsigned int *, void *))nreal(
                            &R_nvmlDeviceGetComputeRunningProcesses));
}
XPU_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t dev, unsigned int *count,
                                                                 nvmlProcessInfo_v2_t *infos)
{
    return procs_common(dev, count, infos, 1,
                        (nvmlReturn_t(*)(nvmlDevice_t, unsigned int *, void *))nreal(
                            &R_nvmlDeviceGetComputeRunningProcesses_v2));
}
XPU_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                                 nvmlProcessInfo_v2_t *infos)
{
    return procs_common(dev, count, infos, 1,
                        (nvmlReturn_t(*)(nvmlDevice_t, unsigned int *, void *))nreal(
                            &R_nvmlDeviceGetComputeRunningProcesses_v3));
}

/* ---- lists that pass through NVML: only the container's processes, with container pids.
 * The real lists hold HOST pids; the agent-owned config maps them to container pids (a tenant
 * cannot write that table). Entries without a mapping belong to other tenants: dropped. */

static int container_pid_of(unsigned host_pid, unsigned *pid)
{
    const struct xpu_config *c = g_xpu.region->cfg;
    for (unsigned i = 0; i < XPU_MAX_SLOTS; i++)
        if (c->pid[i].pid > 0 && (unsigned)c->pid[i].host_pid == host_pid && host_pid) {
            *pid = (unsigned)c->pid[i].pid;
            return 1;
        }
    return 0;
}

typedef nvmlReturn_t (*list_fn)(void *ctx, unsigned int *count, void *buf);

/* the whole real list (grown until it fits); *out is malloc'ed (NVML is not a hot path) */
static nvmlReturn_t real_list(list_fn call, void *ctx, size_t esz, void **out, unsigned *n)
{
    unsigned cap = 0;
    void *buf = NULL;
    for (int tries = 0; tries < 8; tries++) {
        unsigned want = cap;
        nvmlReturn_t rc = call(ctx, &want, buf);
        if (rc == NVML_SUCCESS) {
            *out = buf;
            *n = want;
            return rc;
        }
        if (rc != NVML_ERROR_INSUFFICIENT_SIZE) {
            free(buf);
            return rc;
        }
        free(buf);
        cap = want + 8; /* processes may start between the calls */
        buf = calloc(cap, esz);
        if (!buf)
            return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    free(buf);
    return NVML_ERROR_INSUFFICIENT_SIZE;
}

/* keeps the entries (esz bytes, pid at pid_off) of the container's processes, pids translated;
 * returns how many */
static unsigned keep_own(void *list, unsigned n, size_t esz, size_t pid_off)
{
    unsigned kept = 0;
    for (unsigned i = 0; i < n; i++) {
        char *e = (char *)list + i * esz;
        unsigned host, pid;
        memcpy(&host, e + pid_off, sizeof host);
        if (!container_pid_of(host, &pid))
            continue;
        memcpy(e + pid_off, &pid, sizeof pid);
        if (kept != i)
            memmove((char *)list + kept * esz, e, esz);
        kept++;
    }
    return kept;
}

/* NVML's size-probe protocol over the filtered list */
static nvmlReturn_t hand_out(const void *list, unsigned n, size_t esz, unsigned int *count, void *infos)
{
    if (*count < n || (!infos && n)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (n)
        memcpy(infos, list, n * esz);
    *count = n;
    return NVML_SUCCESS;
}

struct plain_ctx { nvmlReturn_t (*f)(nvmlDevice_t, unsigned int *, void *); nvmlDevice_t dev; };
static nvmlReturn_t call_plain(void *ctx, unsigned int *count, void *buf)
{
    struct plain_ctx *c = ctx;
    return c->f(c->dev, count, buf);
}

static nvmlReturn_t filtered(nvmlDevice_t dev, unsigned int *count, void *infos, size_t esz,
                             nvmlReturn_t (*realf)(nvmlDevice_t, unsigned int *, void *))
{
    if (!realf)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    if (dev_index(dev) < 0)
        return realf(dev, count, infos); /* a card this container does not manage */
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct plain_ctx ctx = {realf, dev};
    void *list = NULL;
    unsigned n = 0;
    nvmlReturn_t rc = real_list(call_plain, &ctx, esz, &list, &n);
    if (rc != NVML_SUCCESS)
        return rc;
    n = keep_own(list, n, esz, 0); /* pid is the first field of every process info */
    rc = hand_out(list, n, esz, count, infos);
    free(list);
    return rc;
}

#define FILTERED(name, type)                                                                           \
    XPU_EXPORT nvmlReturn_t name(nvmlDevice_t dev, unsigned int *count, type *infos)                   \
    {                                                                                                  \
        return filtered(dev, count, infos, sizeof(type),                                               \
                        (nvmlReturn_t(*)(nvmlDevice_t, unsigned int *, void *))nreal(&R_##name));       \
    }
FILTERED(nvmlDeviceGetGraphicsRunningProcesses, nvmlProcessInfo_v1_t)
FILTERED(nvmlDeviceGetGraphicsRunningProcesses_v2, nvmlProcessInfo_v2_t)
FILTERED(nvmlDeviceGetGraphicsRunningProcesses_v3, nvmlProcessInfo_v2_t)
FILTERED(nvmlDeviceGetMPSComputeRunningProcesses, nvmlProcessInfo_v1_t)
FILTERED(nvmlDeviceGetMPSComputeRunningProcesses_v2, nvmlProcessInfo_v2_t)
FILTERED(nvmlDeviceGetMPSComputeRunningProcesses_v3, nvmlProcessInfo_v2_t)

struct detail_ctx { __typeof__(&nvmlDeviceGetRunningProcessDetailList) f; nvmlDevice_t dev; unsigned version, mode; };
static nvmlReturn_t call_detail(void *ctx, unsigned int *count, void *buf)
{
    struct detail_ctx *c = ctx;
    nvmlProcessDetailList_v1_t l = {c->version, c->mode, *count, buf};
    nvmlReturn_t rc = c->f(c->dev, &l);
    *count = l.numProcArrayEntries;
    return rc;
}

XPU_EXPORT nvmlReturn_t nvmlDeviceGetRunningProcessDetailList(nvmlDevice_t dev, nvmlProcessDetailList_v1_t *list)
{
    __typeof__(&nvmlDeviceGetRunningProcessDetailList) f = NREAL(nvmlDeviceGetRunningProcessDetailList);
    if (!f)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    int d = dev_index(dev);
    if (d < 0 || !list)
        return f(dev, list);
    /* the driver checks the version and the mode */
    struct detail_ctx ctx = {f, dev, list->version, list->mode};
    void *all = NULL;
    unsigned n = 0;
    nvmlReturn_t rc = real_list(call_detail, &ctx, sizeof(nvmlProcessDetail_v1_t), &all, &n);
    if (rc != NVML_SUCCESS)
        return rc;
    if (list->mode == NVML_PROCESS_MODE_COMPUTE) { /* compute: the slots, like the compute lists */
        free(all);
        unsigned int pids[XPU_MAX_SLOTS];
        unsigned long long mem[XPU_MAX_SLOTS];
        n = list_procs(d, pids, mem, XPU_MAX_SLOTS);
        all = calloc(n ? n : 1, sizeof(nvmlProcessDetail_v1_t));
        if (!all)
            return NVML_ERROR_INSUFFICIENT_SIZE;
        for (unsigned i = 0; i < n; i++) {
            nvmlProcessDetail_v1_t *p = &((nvmlProcessDetail_v1_t *)all)[i];
            p->pid = pids[i];
            p->usedGpuMemory = mem[i];
            p->gpuInstanceId = p->computeInstanceId = 0xFFFFFFFFu;
        }
    } else {
        n = keep_own(all, n, sizeof(nvmlProcessDetail_v1_t), 0);
    }
    rc = hand_out(all, n, sizeof(nvmlProcessDetail_v1_t), &list->numProcArrayEntries, list->procArray);
    free(all);
    return rc;
}

struct util_ctx { __typeof__(&nvmlDeviceGetProcessUtilization) f; nvmlDevice_t dev; unsigned long long since; };
static nvmlReturn_t call_util(void *ctx, unsigned int *count, void *buf)
{
    struct util_ctx *c = ctx;
    return c->f(c->dev, buf, count, c->since);
}

XPU_EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t dev, nvmlProcessUtilizationSample_t *u,
                                                         unsigned int *n, unsigned long long since)
{
    __typeof__(&nvmlDeviceGetProcessUtilization) f = NREAL(nvmlDeviceGetProcessUtilization);
    if (!f)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    if (dev_index(dev) < 0 || !n)
        return f(dev, u, n, since);
    struct util_ctx ctx = {f, dev, since};
    void *all = NULL;
    unsigned cnt = 0;
    nvmlReturn_t rc = real_list(call_util, &ctx, sizeof(nvmlProcessUtilizationSample_t), &all, &cnt);
    if (rc != NVML_SUCCESS)
        return rc;
    cnt = keep_own(all, cnt, sizeof(nvmlProcessUtilizationSample_t), offsetof(nvmlProcessUtilizationSample_t, pid));
    rc = cnt ? hand_out(all, cnt, sizeof(nvmlProcessUtilizationSample_t), n, u) : NVML_ERROR_NOT_FOUND;
    free(all);
    return rc;
}

struct util_info_ctx { __typeof__(&nvmlDeviceGetProcessesUtilizationInfo) f; nvmlDevice_t dev; nvmlProcessesUtilizationInfo_v1_t in; };
static nvmlReturn_t call_util_info(void *ctx, unsigned int *count, void *buf)
{
    struct util_info_ctx *c = ctx;
    nvmlProcessesUtilizationInfo_v1_t info = c->in;
    info.processSamplesCount = *count;
    info.procUtilArray = buf;
    nvmlReturn_t rc = c->f(c->dev, &info);
    *count = info.processSamplesCount;
    c->in.lastSeenTimeStamp = rc == NVML_SUCCESS ? info.lastSeenTimeStamp : c->in.lastSeenTimeStamp;
    return rc;
}

XPU_EXPORT nvmlReturn_t nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t dev, nvmlProcessesUtilizationInfo_v1_t *info)
{
    __typeof__(&nvmlDeviceGetProcessesUtilizationInfo) f = NREAL(nvmlDeviceGetProcessesUtilizationInfo);
    if (!f)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    if (dev_index(dev) < 0 || !info)
        return f(dev, info);
    struct util_info_ctx ctx = {f, dev, *info};
    void *all = NULL;
    unsigned cnt = 0;
    nvmlReturn_t rc = real_list(call_util_info, &ctx, sizeof(nvmlProcessUtilizationInfo_v1_t), &all, &cnt);
    if (rc != NVML_SUCCESS)
        return rc;
    cnt = keep_own(all, cnt, sizeof(nvmlProcessUtilizationInfo_v1_t), offsetof(nvmlProcessUtilizationInfo_v1_t, pid));
    if (!cnt) {
        free(all);
        return NVML_ERROR_NOT_FOUND;
    }
    rc = hand_out(all, cnt, sizeof(nvmlProcessUtilizationInfo_v1_t), &info->processSamplesCount, info->procUtilArray);
    if (rc == NVML_SUCCESS)
        info->lastSeenTimeStamp = ctx.in.lastSeenTimeStamp;
    free(all);
    return rc;
}

XPU_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t dev, nvmlUtilization_t *u)
{
    __typeof__(&nvmlDeviceGetUtilizationRates) f = NREAL(nvmlDeviceGetUtilizationRates);
    if (!f)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t rc = f(dev, u);
    int d;
    if (rc == NVML_SUCCESS && u && (d = dev_index(dev)) >= 0 &&
        (g_xpu.region->cfg->dev[d].share_request_bp || g_xpu.region->cfg->dev[d].share_limit_bp)) {
        /* the container's measured share of the card, in percent of the card */
        u->gpu = atomic_load(&g_xpu.region->use->dev[d].measured_share_bp) / 100u;
    }
    return rc;
}

const struct xpu_hook xpu_nvml_hooks[] = {
#define NHOOK(n) {#n, (void *)n, &R_##n},
    NVML_HOOKED(NHOOK)
};
const size_t xpu_nvml_nhooks = sizeof xpu_nvml_hooks / sizeof xpu_nvml_hooks[0];
