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

#define NVML_HOOKED(X)                                                                                 \
    X(nvmlDeviceGetMemoryInfo) X(nvmlDeviceGetMemoryInfo_v2) X(nvmlDeviceGetComputeRunningProcesses)   \
    X(nvmlDeviceGetComputeRunningProcesses_v2) X(nvmlDeviceGetComputeRunningProcesses_v3)              \
    X(nvmlDeviceGetUtilizationRates)

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
    unsigned long long u = atomic_load(&g_xpu.region->dev[d].mem_used);
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
        struct xpu_slot *sl = &r->slot[s];
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

XPU_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t dev, nvmlUtilization_t *u)
{
    __typeof__(&nvmlDeviceGetUtilizationRates) f = NREAL(nvmlDeviceGetUtilizationRates);
    if (!f)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t rc = f(dev, u);
    int d;
    if (rc == NVML_SUCCESS && u && (d = dev_index(dev)) >= 0 &&
        (g_xpu.region->dev[d].share_request_bp || g_xpu.region->dev[d].share_limit_bp)) {
        /* the container's measured share of the card, in percent of the card */
        u->gpu = atomic_load(&g_xpu.region->dev[d].measured_share_bp) / 100u;
    }
    return rc;
}

const struct xpu_hook xpu_nvml_hooks[] = {
#define NHOOK(n) {#n, (void *)n, &R_##n},
    NVML_HOOKED(NHOOK)
};
const size_t xpu_nvml_nhooks = sizeof xpu_nvml_hooks / sizeof xpu_nvml_hooks[0];
