/*
 * xpu-probe: what a GPU container sees, printed as ONE JSON line on stdout.
 *
 * A stand-in for a CUDA application in xpupool's node tests (workload image, with the fake
 * libcuda/libnvidia-ml TEST DOUBLES) and, unchanged, on a real GPU host (bench/gpu). It reports
 * the configuration the container received and what the driver API and NVML say:
 *   pod       POD_NAME / POD_NAMESPACE / POD_UID (the test passes them via the downward API)
 *   env       every variable named CUDA_*, NVIDIA_*, XPUPOOL_*, XPUSHIM_*, LD_PRELOAD
 *   cuda      cuInit, driver version, per device: uuid, cuDeviceTotalMem; cuMemGetInfo on the
 *             chosen device's primary context
 *   nvml      per device: uuid, name, memory total/used/free (nvmlDeviceGetMemoryInfo)
 *   copy      optional: --copy-mib MiB of a pattern copied host -> device -> host (cuMemcpyHtoD,
 *             cuMemcpyDtoH into a second buffer) and compared byte for byte; the buffer is freed
 *   alloc     optional: one cuMemAlloc of --alloc-mib MiB, and/or --fill-chunk-mib MiB chunks
 *             until the driver refuses (result codes: 2 = CUDA_ERROR_OUT_OF_MEMORY)
 * Then it keeps its context and allocations for --hold-s seconds (a pod stays Running while a
 * test looks at its neighbour) and exits 0. Errors are reported in the JSON, never as a crash.
 *
 * Build: cc -std=c11 -O2 -I<cuda.h dir> xpu_probe.c -o xpu-probe -lcuda -ldl
 * (NVML is dlopen'ed, as monitoring tools do, so no NVML headers or link-time library.)
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define MAX_DEVICES 16
#define MAX_CHUNKS 4096
#define MIB (1024ull * 1024ull)

/* ------------------------------------------------------------------ JSON output */
static void json_str(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void json_key(const char *k, int *first)
{
    if (!*first)
        putchar(',');
    *first = 0;
    json_str(k);
    putchar(':');
}

static void uuid_str(const unsigned char b[16], char out[48])
{
    snprintf(out, 48, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
             b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

/* ------------------------------------------------------------------ NVML (dlopen) */
typedef int nvml_ret;
typedef void *nvml_dev;
typedef struct {
    unsigned long long total, free, used;
} nvml_mem;

static void report_nvml(void)
{
    int first = 1;
    printf("{");
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    json_key("loaded", &first);
    printf(h ? "true" : "false");
    if (!h) {
        json_key("error", &first);
        json_str(dlerror());
        printf("}");
        return;
    }
    nvml_ret (*init)(void) = (nvml_ret(*)(void))dlsym(h, "nvmlInit_v2");
    nvml_ret (*count)(unsigned int *) = (nvml_ret(*)(unsigned int *))dlsym(h, "nvmlDeviceGetCount_v2");
    nvml_ret (*handle)(unsigned int, nvml_dev *) =
        (nvml_ret(*)(unsigned int, nvml_dev *))dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
    nvml_ret (*meminfo)(nvml_dev, nvml_mem *) = (nvml_ret(*)(nvml_dev, nvml_mem *))dlsym(h, "nvmlDeviceGetMemoryInfo");
    nvml_ret (*uuid)(nvml_dev, char *, unsigned int) =
        (nvml_ret(*)(nvml_dev, char *, unsigned int))dlsym(h, "nvmlDeviceGetUUID");
    nvml_ret (*name)(nvml_dev, char *, unsigned int) =
        (nvml_ret(*)(nvml_dev, char *, unsigned int))dlsym(h, "nvmlDeviceGetName");
    if (!init || !count || !handle || !meminfo || !uuid || !name) {
        json_key("error", &first);
        json_str("missing NVML symbols");
        printf("}");
        return;
    }
    nvml_ret rc = init();
    json_key("init", &first);
    printf("%d", rc);
    unsigned int n = 0;
    if (rc == 0)
        rc = count(&n);
    json_key("device_count", &first);
    printf("%u", rc == 0 ? n : 0);
    json_key("devices", &first);
    printf("[");
    for (unsigned int i = 0; rc == 0 && i < n && i < MAX_DEVICES; i++) {
        nvml_dev d = NULL;
        nvml_mem m = {0, 0, 0};
        char u[96] = "", nm[96] = "";
        int df = 1;
        nvml_ret hr = handle(i, &d);
        printf("%s{", i ? "," : "");
        json_key("index", &df);
        printf("%u", i);
        if (hr == 0) {
            nvml_ret mr = meminfo(d, &m);
            uuid(d, u, sizeof u);
            name(d, nm, sizeof nm);
            json_key("uuid", &df);
            json_str(u);
            json_key("name", &df);
            json_str(nm);
            json_key("memory_result", &df);
            printf("%d", mr);
            json_key("memory_total_bytes", &df);
            printf("%llu", m.total);
            json_key("memory_used_bytes", &df);
            printf("%llu", m.used);
            json_key("memory_free_bytes", &df);
            printf("%llu", m.free);
        } else {
            json_key("handle_result", &df);
            printf("%d", hr);
        }
        printf("}");
    }
    printf("]}");
}

/* ------------------------------------------------------------------ driver API */
struct options {
    int device;
    unsigned long long copy_mib;       /* round trip of this many MiB, data compared (0: none) */
    unsigned long long alloc_mib;      /* one allocation of this size (0: none) */
    unsigned long long fill_chunk_mib; /* allocate chunks until refused (0: none) */
    unsigned int hold_s;
};

static CUdeviceptr g_chunks[MAX_CHUNKS];

/* Host -> device -> host of `mib` MiB of a position-dependent pattern, compared on return. */
static void report_copy(unsigned long long mib)
{
    size_t n = (size_t)(mib * MIB);
    unsigned char *src = malloc(n), *dst = malloc(n);
    CUdeviceptr d = 0;
    CUresult ar = CUDA_ERROR_OUT_OF_MEMORY, hr = CUDA_ERROR_NOT_INITIALIZED, dr = CUDA_ERROR_NOT_INITIALIZED;
    size_t mismatches = n;
    if (src && dst) {
        for (size_t i = 0; i < n; i++)
            src[i] = (unsigned char)((i * 2654435761u) >> 13);
        memset(dst, 0, n);
        ar = cuMemAlloc(&d, n);
        if (ar == CUDA_SUCCESS) {
            hr = cuMemcpyHtoD(d, src, n);
            if (hr == CUDA_SUCCESS)
                dr = cuMemcpyDtoH(dst, d, n);
            if (dr == CUDA_SUCCESS) {
                mismatches = 0;
                for (size_t i = 0; i < n; i++)
                    mismatches += src[i] != dst[i];
            }
            cuMemFree(d);
        }
    }
    printf("{\"mib\":%llu,\"alloc_result\":%d,\"h2d_result\":%d,\"d2h_result\":%d,\"mismatched_bytes\":%zu}",
           mib, (int)ar, (int)hr, (int)dr, mismatches);
    free(src);
    free(dst);
}

static void report_cuda(const struct options *o)
{
    int first = 1;
    printf("{");
    CUresult rc = cuInit(0);
    json_key("init", &first);
    printf("%d", (int)rc);
    if (rc != CUDA_SUCCESS) {
        printf("}");
        return;
    }
    int version = 0, n = 0;
    cuDriverGetVersion(&version);
    json_key("driver_version", &first);
    printf("%d", version);
    rc = cuDeviceGetCount(&n);
    json_key("device_count", &first);
    printf("%d", rc == CUDA_SUCCESS ? n : 0);
    json_key("devices", &first);
    printf("[");
    for (int i = 0; rc == CUDA_SUCCESS && i < n && i < MAX_DEVICES; i++) {
        CUdevice d;
        CUuuid u;
        size_t total = 0;
        char us[48] = "";
        int df = 1;
        cuDeviceGet(&d, i);
        if (cuDeviceGetUuid(&u, d) == CUDA_SUCCESS)
            uuid_str((const unsigned char *)u.bytes, us);
        CUresult tr = cuDeviceTotalMem(&total, d);
        printf("%s{", i ? "," : "");
        json_key("index", &df);
        printf("%d", i);
        json_key("uuid", &df);
        json_str(us);
        json_key("total_mem_result", &df);
        printf("%d", (int)tr);
        json_key("total_mem_bytes", &df);
        printf("%zu", total);
        printf("}");
    }
    printf("]");
    if (rc != CUDA_SUCCESS || o->device >= n) {
        json_key("error", &first);
        json_str("no such device");
        printf("}");
        return;
    }
    CUdevice dev;
    CUcontext ctx;
    cuDeviceGet(&dev, o->device);
    CUresult cr = cuDevicePrimaryCtxRetain(&ctx, dev);
    if (cr == CUDA_SUCCESS)
        cr = cuCtxSetCurrent(ctx);
    json_key("context_result", &first);
    printf("%d", (int)cr);
    size_t free_b = 0, total_b = 0;
    CUresult mr = cuMemGetInfo(&free_b, &total_b);
    json_key("mem_get_info", &first);
    printf("{\"result\":%d,\"free_bytes\":%zu,\"total_bytes\":%zu}", (int)mr, free_b, total_b);
    if (o->copy_mib) {
        json_key("copy", &first);
        report_copy(o->copy_mib);
    }
    if (o->alloc_mib) {
        CUdeviceptr p = 0;
        CUresult ar = cuMemAlloc(&p, (size_t)(o->alloc_mib * MIB));
        json_key("alloc", &first);
        printf("{\"mib\":%llu,\"result\":%d}", o->alloc_mib, (int)ar);
        if (ar == CUDA_SUCCESS)
            g_chunks[0] = p; /* kept until exit, like a live tensor */
    }
    if (o->fill_chunk_mib) {
        unsigned int got = 0;
        CUresult fr = CUDA_SUCCESS;
        for (unsigned int i = 1; i < MAX_CHUNKS; i++) {
            fr = cuMemAlloc(&g_chunks[i], (size_t)(o->fill_chunk_mib * MIB));
            if (fr != CUDA_SUCCESS)
                break;
            got++;
        }
        size_t f2 = 0, t2 = 0;
        cuMemGetInfo(&f2, &t2);
        json_key("fill", &first);
        printf("{\"chunk_mib\":%llu,\"chunks\":%u,\"allocated_mib\":%llu,\"stop_result\":%d,"
               "\"free_bytes_after\":%zu}",
               o->fill_chunk_mib, got, got * o->fill_chunk_mib, (int)fr, f2);
    }
    printf("}");
}

/* ------------------------------------------------------------------ main */
static int env_selected(const char *kv)
{
    static const char *prefixes[] = {"CUDA_", "NVIDIA_", "XPUPOOL_", "XPUSHIM_", "LD_PRELOAD=", "LD_LIBRARY_PATH="};
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
        if (strncmp(kv, prefixes[i], strlen(prefixes[i])) == 0)
            return 1;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: xpu-probe [--device N] [--copy-mib MIB] [--alloc-mib MIB] [--fill-chunk-mib MIB] [--hold-s S]\n");
}

int main(int argc, char **argv)
{
    struct options o = {0, 0, 0, 0, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (strcmp(a, "--device") == 0)
            o.device = atoi(v);
        else if (strcmp(a, "--copy-mib") == 0)
            o.copy_mib = strtoull(v, NULL, 10);
        else if (strcmp(a, "--alloc-mib") == 0)
            o.alloc_mib = strtoull(v, NULL, 10);
        else if (strcmp(a, "--fill-chunk-mib") == 0)
            o.fill_chunk_mib = strtoull(v, NULL, 10);
        else if (strcmp(a, "--hold-s") == 0)
            o.hold_s = (unsigned int)strtoul(v, NULL, 10);
        else {
            usage();
            return 2;
        }
        i++;
    }
    int first = 1;
    printf("{");
    json_key("probe", &first);
    printf("\"xpu-probe\"");
    json_key("schema", &first);
    printf("1");
    json_key("pod", &first);
    printf("{\"name\":");
    json_str(getenv("POD_NAME"));
    printf(",\"namespace\":");
    json_str(getenv("POD_NAMESPACE"));
    printf(",\"uid\":");
    json_str(getenv("POD_UID"));
    printf("}");
    json_key("env", &first);
    printf("{");
    int ef = 1;
    for (char **e = environ; *e; e++) {
        if (!env_selected(*e))
            continue;
        const char *eq = strchr(*e, '=');
        char key[256];
        size_t kl = (size_t)(eq - *e) < sizeof key - 1 ? (size_t)(eq - *e) : sizeof key - 1;
        memcpy(key, *e, kl);
        key[kl] = 0;
        json_key(key, &ef);
        json_str(eq + 1);
    }
    printf("}");
    json_key("cuda", &first);
    report_cuda(&o);
    json_key("nvml", &first);
    report_nvml();
    printf("}\n");
    fflush(stdout);
    if (o.hold_s)
        sleep(o.hold_s);
    return 0;
}
