/*
 * TEST DOUBLE — fake libnvidia-ml.so.1 for CPU-only CI. NOT NVML.
 * Two devices with fixed UUIDs, 80 GiB each with 10 GiB used by three *host* processes
 * (pids 1001..1003, as other tenants on the card would appear), 87 % utilisation.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
struct nvmlDevice_st { int idx; };
static struct nvmlDevice_st g_dev[2] = {{0}, {1}};
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gi, ci; } nvmlProcessInfo_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;

#define GIB (1024ull * 1024 * 1024)
EXPORT nvmlReturn_t nvmlInit(void) { return 0; }
EXPORT nvmlReturn_t nvmlInit_v2(void) { return 0; }
EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int f) { (void)f; return 0; }
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
EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) { (void)d; m->total = 80 * GIB; m->reserved = GIB / 2; m->used = 10 * GIB; m->free = 70 * GIB - GIB / 2; return 0; }
static nvmlReturn_t procs(unsigned int *c, void *infos, int v2)
{
    if (*c < 3 || !infos) { *c = 3; return 7; }
    for (unsigned i = 0; i < 3; i++) {
        if (v2) { nvmlProcessInfo_v2_t *p = &((nvmlProcessInfo_v2_t *)infos)[i]; p->pid = 1001 + i; p->usedGpuMemory = 3 * GIB; p->gi = p->ci = 0xFFFFFFFFu; }
        else { nvmlProcessInfo_v1_t *p = &((nvmlProcessInfo_v1_t *)infos)[i]; p->pid = 1001 + i; p->usedGpuMemory = 3 * GIB; }
    }
    *c = 3;
    return 0;
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v1_t *i) { (void)d; return procs(c, i, 0); }
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v2_t *i) { (void)d; return procs(c, i, 1); }
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v2_t *i) { (void)d; return procs(c, i, 1); }
EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) { (void)d; u->gpu = 87; u->memory = 40; return 0; }
