/*
 * TEST DOUBLE — fake libnvidia-ml.so.1 for CPU-only CI. NOT NVML.
 * Two devices with fixed UUIDs, 80 GiB each with 10 GiB used, 87 % utilisation.
 * Process lists hold HOST pids, as the real NVML reports them inside a container:
 *   compute       1001..1003 (other tenants on the card), 3 GiB each
 *   graphics      FAKE_NVML_GRAPHICS_PIDS, default "1004:512"  (pid:MiB, comma separated)
 *   MPS compute   FAKE_NVML_MPS_PIDS, default "1005:256"
 *   utilisation   FAKE_NVML_UTIL_PIDS, default "1001:40" (pid:smUtil)
 * (environment read once, at nvmlInit). The calls keep NVML's protocols: the size probe
 * (NULL array or small count -> NVML_ERROR_INSUFFICIENT_SIZE with the count needed, an empty
 * list -> NVML_SUCCESS with count 0), versioned structs (wrong version ->
 * NVML_ERROR_ARGUMENT_VERSION_MISMATCH), NVML_ERROR_NOT_FOUND when no utilisation sample is
 * newer than the given timestamp.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
typedef struct nvmlDevice_st *nvmlDevice_t;
struct nvmlDevice_st { int idx; };
static struct nvmlDevice_st g_dev[2] = {{0}, {1}};
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gi, ci; } nvmlProcessInfo_v2_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gi, ci; unsigned long long cc; } nvmlProcessDetail_v1_t;
typedef struct { unsigned int version, mode, numProcArrayEntries; nvmlProcessDetail_v1_t *procArray; } nvmlProcessDetailList_v1_t;
typedef struct { unsigned int pid; unsigned long long timeStamp; unsigned int smUtil, memUtil, encUtil, decUtil; } nvmlProcessUtilizationSample_t;
typedef struct { unsigned long long timeStamp; unsigned int pid, smUtil, memUtil, encUtil, decUtil, jpgUtil, ofaUtil; } nvmlProcessUtilizationInfo_v1_t;
typedef struct { unsigned int version, processSamplesCount; unsigned long long lastSeenTimeStamp; nvmlProcessUtilizationInfo_v1_t *procUtilArray; } nvmlProcessesUtilizationInfo_v1_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
#define STRUCT_VERSION(type, v) ((unsigned)(sizeof(type) | ((v) << 24u)))

#define GIB (1024ull * 1024 * 1024)
#define MIB (1024ull * 1024)
#define MAXP 16
struct plist { unsigned n; unsigned pid[MAXP]; unsigned long long val[MAXP]; };
static struct plist g_compute = {3, {1001, 1002, 1003}, {3 * GIB, 3 * GIB, 3 * GIB}};
static struct plist g_graphics, g_mps, g_util;

static void parse(struct plist *l, const char *env, const char *def, unsigned long long unit)
{
    const char *s = getenv(env); /* test double: environment read at init only */
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s ? s : def);
    l->n = 0;
    for (char *tok = strtok(buf, ","); tok && l->n < MAXP; tok = strtok(NULL, ",")) {
        unsigned pid = 0;
        unsigned long long v = 0;
        if (sscanf(tok, "%u:%llu", &pid, &v) == 2) {
            l->pid[l->n] = pid;
            l->val[l->n++] = v * unit;
        }
    }
}
static nvmlReturn_t init(void)
{
    parse(&g_graphics, "FAKE_NVML_GRAPHICS_PIDS", "1004:512", MIB);
    parse(&g_mps, "FAKE_NVML_MPS_PIDS", "1005:256", MIB);
    parse(&g_util, "FAKE_NVML_UTIL_PIDS", "1001:40", 1);
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlInit(void) { return init(); }
EXPORT nvmlReturn_t nvmlInit_v2(void) { return init(); }
EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int f) { (void)f; return init(); }
EXPORT nvmlReturn_t nvmlShutdown(void) { return 0; }
EXPORT const char *nvmlErrorString(nvmlReturn_t r) { return r ? "fake error" : "Success"; }
EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) { *n = 2; return 0; }
EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { *n = 2; return 0; }
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) { if (i > 1) return 2; *d = &g_dev[i]; return 0; }
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *d) { return nvmlDeviceGetHandleByIndex_v2(i, d); }
EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *i) { *i = (unsigned)d->idx; return 0; }
EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *u, unsigned int n)
{
    snprintf(u, n, "GPU-00000000-1111-2222-3333-44444444444%d", d->idx);
    return 0;
}
EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *s, unsigned int n) { (void)d; snprintf(s, n, "Fake H100 (test double)"); return 0; }
EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *s, unsigned int n) { snprintf(s, n, "580.00-fake"); return 0; }
EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) { (void)d; m->total = 80 * GIB; m->used = 10 * GIB; m->free = 70 * GIB; return 0; }
EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m)
{
    (void)d;
    if (m->version != STRUCT_VERSION(nvmlMemory_v2_t, 2))
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    m->total = 80 * GIB; m->reserved = GIB / 2; m->used = 10 * GIB; m->free = 70 * GIB - GIB / 2;
    return 0;
}

/* the size-probe protocol of every process list */
static nvmlReturn_t procs(const struct plist *l, unsigned int *c, void *infos, int v2)
{
    if (!c)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (*c < l->n || (!infos && l->n)) {
        *c = l->n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned i = 0; i < l->n; i++) {
        if (v2) { nvmlProcessInfo_v2_t *p = &((nvmlProcessInfo_v2_t *)infos)[i]; p->pid = l->pid[i]; p->usedGpuMemory = l->val[i]; p->gi = p->ci = 0xFFFFFFFFu; }
        else { nvmlProcessInfo_v1_t *p = &((nvmlProcessInfo_v1_t *)infos)[i]; p->pid = l->pid[i]; p->usedGpuMemory = l->val[i]; }
    }
    *c = l->n;
    return 0;
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v1_t *i) { (void)d; return procs(&g_compute, c, i, 0); }
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v2_t *i) { (void)d; return procs(&g_compute, c, i, 1); }
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v2_t *i) { (void)d; return procs(&g_compute, c, i, 1); }
EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v1_t *i) { (void)d; return procs(&g_graphics, c, i, 0); }
EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v2_t *i) { (void)d; return procs(&g_graphics, c, i, 1); }
EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v2_t *i) { (void)d; return procs(&g_graphics, c, i, 1); }
EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v1_t *i) { (void)d; return procs(&g_mps, c, i, 0); }
EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v2_t *i) { (void)d; return procs(&g_mps, c, i, 1); }
EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v2_t *i) { (void)d; return procs(&g_mps, c, i, 1); }

EXPORT nvmlReturn_t nvmlDeviceGetRunningProcessDetailList(nvmlDevice_t d, nvmlProcessDetailList_v1_t *pl)
{
    (void)d;
    if (!pl)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (pl->version != STRUCT_VERSION(nvmlProcessDetailList_v1_t, 1))
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const struct plist *l = pl->mode == 0 ? &g_compute : pl->mode == 1 ? &g_graphics : pl->mode == 2 ? &g_mps : NULL;
    if (!l)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (pl->numProcArrayEntries < l->n || (!pl->procArray && l->n)) {
        pl->numProcArrayEntries = l->n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned i = 0; i < l->n; i++) {
        nvmlProcessDetail_v1_t *p = &pl->procArray[i];
        p->pid = l->pid[i];
        p->usedGpuMemory = l->val[i];
        p->gi = p->ci = 0xFFFFFFFFu;
        p->cc = 0;
    }
    pl->numProcArrayEntries = l->n;
    return 0;
}

EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlProcessUtilizationSample_t *u, unsigned int *n,
                                                    unsigned long long since)
{
    (void)d;
    (void)since;
    if (!n)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!g_util.n)
        return NVML_ERROR_NOT_FOUND;
    if (!u || *n < g_util.n) {
        *n = g_util.n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned i = 0; i < g_util.n; i++)
        u[i] = (nvmlProcessUtilizationSample_t){g_util.pid[i], 1000 + i, (unsigned)g_util.val[i], 5, 0, 0};
    *n = g_util.n;
    return 0;
}

EXPORT nvmlReturn_t nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t d, nvmlProcessesUtilizationInfo_v1_t *info)
{
    (void)d;
    if (!info)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (info->version != STRUCT_VERSION(nvmlProcessesUtilizationInfo_v1_t, 1))
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (!g_util.n)
        return NVML_ERROR_NOT_FOUND;
    if (!info->procUtilArray || info->processSamplesCount < g_util.n) {
        info->processSamplesCount = g_util.n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned i = 0; i < g_util.n; i++)
        info->procUtilArray[i] = (nvmlProcessUtilizationInfo_v1_t){1000 + i, g_util.pid[i], (unsigned)g_util.val[i], 5, 0, 0, 0, 0};
    info->processSamplesCount = g_util.n;
    info->lastSeenTimeStamp = 1000 + g_util.n;
    return 0;
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) { (void)d; u->gpu = 87; u->memory = 40; return 0; }
