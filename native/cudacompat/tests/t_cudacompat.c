/*
 * Unit tests of cudacompat against a toy backend (no driver, no runtime): the HMAC-MD2 of the
 * runtime's handshake on a published known answer, the cuGetProcAddress version ladder and
 * statuses, the export tables' size words, context-local storage and its destructors.
 */
#define _GNU_SOURCE
#include "cc_internal.h"

#include <stdio.h>
#include <string.h>

static int g_failed, g_passed;
#define CHECK(cond, ...)                                                                               \
    do {                                                                                               \
        if (cond) {                                                                                    \
            g_passed++;                                                                                \
        } else {                                                                                       \
            g_failed++;                                                                                \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                \
            printf(__VA_ARGS__);                                                                       \
            printf("\n");                                                                              \
        }                                                                                              \
    } while (0)

/* ------------------------------------------------------------------ toy backend */

static const char *const EXPORTS[] = {
    "cuMemAlloc", "cuMemAlloc_v2", "cuLaunchKernel", "cuLaunchKernel_ptsz", "cuStreamGetCaptureInfo_v2",
    "cuStreamGetCaptureInfo_v2_ptsz", "cuGraphInstantiate_v2", "cuGraphInstantiateWithFlags", "cuCtxCreate_v4",
    "cuMemcpyHtoD_v2", "cuMemcpyHtoD_v2_ptds", "cuGetProcAddress", "cuGetProcAddress_v2", "cuBrandNewEntryPoint",
};
static char g_fn_space[sizeof EXPORTS / sizeof EXPORTS[0]];

static void *lookup(const char *name)
{
    for (size_t i = 0; i < sizeof EXPORTS / sizeof EXPORTS[0]; i++)
        if (strcmp(EXPORTS[i], name) == 0)
            return &g_fn_space[i];
    return NULL;
}
static const char *name_of(void *p)
{
    for (size_t i = 0; i < sizeof EXPORTS / sizeof EXPORTS[0]; i++)
        if (p == &g_fn_space[i])
            return EXPORTS[i];
    return "(none)";
}

static CUcontext g_current = (CUcontext)0x1000;
static CUresult count(int *n) { *n = 1; return CUDA_SUCCESS; }
static CUresult uuid(CUuuid *u, CUdevice d) { memset(u->bytes, 0x11 * (d + 1), 16); return CUDA_SUCCESS; }
static CUresult attribute(int *v, CUdevice_attribute a, CUdevice d) { *v = (int)a + d; return CUDA_SUCCESS; }
static CUresult retain(CUcontext *c, CUdevice d) { *c = (CUcontext)(uintptr_t)(0x2000 + d); return CUDA_SUCCESS; }
static CUresult current(CUcontext *c) { *c = g_current; return CUDA_SUCCESS; }
static int g_loads;
static CUresult load(CUmodule *m, const void *image) { g_loads++; *m = (CUmodule)(uintptr_t)image; return CUDA_SUCCESS; }
static CUresult launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                       unsigned shm, CUstream s, void **p, void **x)
{
    (void)f, (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shm, (void)s, (void)p, (void)x;
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ tests */

static void test_hmac_md2(void)
{
    /* the published sample of the runtime's handshake (driver 12020, runtime 0x2B4A, one device) */
    static const unsigned char key[16] = {0x14, 0x6a, 0xdd, 0xae, 0x53, 0xa9, 0xa7, 0x52,
                                          0xaa, 0x08, 0x41, 0x36, 0x0b, 0xf5, 0x5a, 0x9f};
    struct __attribute__((packed)) {
        uint32_t dv, rv, pid, tid;
        uint64_t cudart, integrity, fn, time;
        unsigned char uuid[16];
        uint32_t dom, bus, dev;
    } m = {12020, 0x2B4A, 0x4D08, 0x2B78, 0x00007FF8C80717F0ull, 0x00007FF8C825E4B0ull, 0x00007FF8C7DD0AD0ull,
           0x64A365EEull, {0x67, 0x22, 0xCB, 0xCF, 0xC6, 0x61, 0xF2, 0x92, 0x74, 0xD6, 0xED, 0x23, 0x2A, 0x32, 0x13, 0x1C},
           0, 4, 0};
    static const unsigned char want[16] = {0x7a, 0x70, 0x14, 0xf2, 0x28, 0x46, 0xc3, 0xa7,
                                           0x84, 0xcd, 0xbf, 0x42, 0x33, 0x31, 0xf1, 0xea};
    unsigned char got[16];
    cc_hmac_md2(key, &m, sizeof m, got);
    CHECK(memcmp(got, want, 16) == 0, "HMAC-MD2 known answer");
}

static void expect(const char *sym, int ver, cuuint64_t flags, const char *want, CUdriverProcAddressQueryResult st_want)
{
    void *fn = (void *)1;
    CUdriverProcAddressQueryResult st = 99;
    CUresult rc = cudacompat_get_proc_address(sym, &fn, ver, flags, &st);
    if (want) {
        CHECK(rc == CUDA_SUCCESS && st == CU_GET_PROC_ADDRESS_SUCCESS && fn == lookup(want), "%s@%d/%llu -> %s (got %s)",
              sym, ver, (unsigned long long)flags, want, name_of(fn));
    } else {
        CHECK(rc == CUDA_ERROR_NOT_FOUND && st == st_want && fn == NULL, "%s@%d/%llu -> status %d (got rc %d st %d)",
              sym, ver, (unsigned long long)flags, (int)st_want, (int)rc, (int)st);
    }
}

static void test_procaddr(void)
{
    const int ok = CU_GET_PROC_ADDRESS_SUCCESS;
    expect("cuMemAlloc", 2000, 0, "cuMemAlloc", ok);
    expect("cuMemAlloc", 3020, 0, "cuMemAlloc_v2", ok);
    expect("cuMemAlloc", 12090, 2, "cuMemAlloc_v2", ok); /* no per-thread variant: the legacy one */
    expect("cuLaunchKernel", 4000, 0, "cuLaunchKernel", ok);
    expect("cuLaunchKernel", 12000, 0, "cuLaunchKernel", ok);
    expect("cuLaunchKernel", 12000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, "cuLaunchKernel", ok);
    expect("cuLaunchKernel", 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuLaunchKernel_ptsz", ok);
    expect("cuLaunchKernel", 4000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuLaunchKernel", ok);
    expect("cuMemcpyHtoD", 7000, 2, "cuMemcpyHtoD_v2_ptds", ok);
    expect("cuStreamGetCaptureInfo", 11030, 0, "cuStreamGetCaptureInfo_v2", ok);
    expect("cuStreamGetCaptureInfo", 11030, 2, "cuStreamGetCaptureInfo_v2_ptsz", ok);
    expect("cuGraphInstantiate", 11000, 0, "cuGraphInstantiate_v2", ok);
    expect("cuGraphInstantiate", 12000, 0, "cuGraphInstantiateWithFlags", ok);
    expect("cuCtxCreate", 12090, 0, "cuCtxCreate_v4", ok);
    expect("cuGetProcAddress", 11030, 0, "cuGetProcAddress", ok);
    expect("cuGetProcAddress", 12000, 0, "cuGetProcAddress_v2", ok);
    expect("cuBrandNewEntryPoint", 99000, 0, "cuBrandNewEntryPoint", ok); /* newer than the headers: exact name */
    expect("cuStreamGetCaptureInfo", 10010, 0, NULL, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND); /* backend lacks v1 */
    expect("cuCtxCreate", 1000, 0, NULL, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
    expect("cuDoesNotExist", 12000, 0, NULL, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    expect("", 0, 0, NULL, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    void *fn;
    CHECK(cudacompat_get_proc_address(NULL, &fn, 12000, 0, NULL) == CUDA_ERROR_INVALID_VALUE, "NULL symbol");
    CHECK(cudacompat_get_proc_address("cuMemAlloc", NULL, 12000, 0, NULL) == CUDA_ERROR_INVALID_VALUE, "NULL pfn");
    CHECK(cudacompat_get_proc_address("cuMemAlloc", &fn, 12000, 0, NULL) == CUDA_SUCCESS && fn == lookup("cuMemAlloc_v2"),
          "4-argument ABI (no status)");
}

static const unsigned char *uuid_of(const char *hex, unsigned char out[16])
{
    for (int i = 0; i < 16; i++)
        sscanf(hex + 2 * i, "%2hhx", &out[i]);
    return out;
}

static int g_dtor_calls;
static void *g_dtor_value;
static void dtor(CUcontext ctx, void *key, void *value)
{
    (void)ctx;
    (void)key;
    g_dtor_calls++;
    g_dtor_value = value;
}

static void test_tables(void)
{
    static const struct {
        const char *uuid;
        size_t size_bytes; /* 0: no size word */
    } known[] = {
        {"f8cff95121468b4eb9e2fb469e7c0dd9", 24}, {"6bd5fb6c5bf4e74a8987d93912fd9df9", 104},
        {"a094798c2e742e7493f20800200c0a66", 56}, {"42d85a8123f6cb478298f6e78a3aecdc", 32},
        {"21318c60971432488ca641ff7324c8f2", 32}, {"c693336e1121df11a8c368f355d89593", 0},
        {"263e88607cd2614392f6bbd5006dfa7e", 32}, {"d4082055bde6704b8d34ba123c66e1f2", 24},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        CUuuid id;
        const void *t = NULL;
        uuid_of(known[i].uuid, (unsigned char *)id.bytes);
        CHECK(cudacompat_get_export_table(&t, &id) == CUDA_SUCCESS && t, "table %s", known[i].uuid);
        if (t && known[i].size_bytes)
            CHECK(((const uintptr_t *)t)[0] == known[i].size_bytes, "size word of %s: %zu", known[i].uuid,
                  (size_t)((const uintptr_t *)t)[0]);
    }
    CUuuid unknown;
    const void *t = (const void *)1;
    memset(unknown.bytes, 0x5a, 16);
    CHECK(cudacompat_get_export_table(&t, &unknown) == CUDA_ERROR_INVALID_VALUE && t == NULL, "unknown table");
    CHECK(cudacompat_get_export_table(NULL, &unknown) == CUDA_ERROR_INVALID_VALUE, "NULL out");

    /* CUDART_INTERFACE slot 2: the primary context comes from the backend */
    CUuuid id;
    uuid_of("6bd5fb6c5bf4e74a8987d93912fd9df9", (unsigned char *)id.bytes);
    cudacompat_get_export_table(&t, &id);
    CUcontext ctx = NULL;
    CHECK(((CUresult(*)(CUcontext *, CUdevice))((void *const *)t)[2])(&ctx, 1) == CUDA_SUCCESS &&
              ctx == (CUcontext)0x2001, "primary context of device 1");
    CHECK(cudacompat_slot_calls(&id, 2) == 1, "slot call counted");
    /* slot 1: a fatbin wrapper is unwrapped and handed to the backend */
    struct __attribute__((aligned(8))) {
        uint32_t magic;
        uint16_t version, header_size;
        uint64_t files_size;
        unsigned char payload[48];
    } fatbin = {0xBA55ED50u, 1, 16, 48, {0}};
    struct {
        uint32_t magic, version;
        const void *data, *extra;
    } wrapper = {0x466243B1u, 1, &fatbin, NULL};
    CUmodule mod = NULL;
    CHECK(((CUresult(*)(CUmodule *, const void *))((void *const *)t)[1])(&mod, &wrapper) == CUDA_SUCCESS &&
              mod == (CUmodule)&fatbin && g_loads == 1, "module from a fatbin wrapper");
    wrapper.magic = 0;
    CHECK(((CUresult(*)(CUmodule *, const void *))((void *const *)t)[1])(&mod, &wrapper) == CUDA_ERROR_INVALID_IMAGE,
          "a bad wrapper is refused");
    CHECK(cudacompat_fatbin_size(&fatbin) == 64, "fatbin size = header + payload");
    uint64_t traps = cudacompat_trapped_calls();
    CHECK(((CUresult(*)(void))((void *const *)t)[3])() == CUDA_ERROR_NOT_SUPPORTED, "unknown slot traps");
    CHECK(cudacompat_trapped_calls() == traps + 1, "trap counted");

    /* CONTEXT_LOCAL_STORAGE */
    uuid_of("c693336e1121df11a8c368f355d89593", (unsigned char *)id.bytes);
    cudacompat_get_export_table(&t, &id);
    CUresult (*insert)(CUcontext, void *, void *, void (*)(CUcontext, void *, void *)) =
        (CUresult(*)(CUcontext, void *, void *, void (*)(CUcontext, void *, void *)))((void *const *)t)[0];
    CUresult (*remove)(CUcontext, void *) = (CUresult(*)(CUcontext, void *))((void *const *)t)[1];
    CUresult (*get)(void **, CUcontext, void *) = (CUresult(*)(void **, CUcontext, void *))((void *const *)t)[2];
    void *v = NULL;
    int key1, key2, val1, val2;
    CHECK(get(&v, NULL, &key1) == CUDA_ERROR_INVALID_VALUE, "absent key");
    CHECK(insert(NULL, &key1, &val1, dtor) == CUDA_SUCCESS, "insert into the current context");
    CHECK(get(&v, g_current, &key1) == CUDA_SUCCESS && v == &val1, "NULL context means the current one");
    CHECK(insert((CUcontext)0x3000, &key2, &val2, dtor) == CUDA_SUCCESS, "insert into another context");
    CHECK(get(&v, NULL, &key2) == CUDA_ERROR_INVALID_VALUE, "keys are per context");
    CHECK(remove((CUcontext)0x3000, &key2) == CUDA_SUCCESS && get(&v, (CUcontext)0x3000, &key2) != CUDA_SUCCESS,
          "remove");
    cudacompat_context_destroyed(g_current);
    CHECK(g_dtor_calls == 1 && g_dtor_value == &val1, "destroying the context runs its destructor once");
    CHECK(get(&v, NULL, &key1) == CUDA_ERROR_INVALID_VALUE, "and forgets the entry");
    g_current = NULL;
    CHECK(get(&v, NULL, &key1) == CUDA_ERROR_INVALID_CONTEXT, "no current context");

    /* INTEGRITY: the fixed answers for runtime version % 10 == 0 and 1 */
    uuid_of("d4082055bde6704b8d34ba123c66e1f2", (unsigned char *)id.bytes);
    cudacompat_get_export_table(&t, &id);
    CUresult (*check)(unsigned, uint64_t, unsigned char *) =
        (CUresult(*)(unsigned, uint64_t, unsigned char *))((void *const *)t)[1];
    unsigned char a[16], b[16], c[16], d[16];
    CHECK(check(12090, 1, a) == CUDA_SUCCESS && check(12091, 1, b) == CUDA_SUCCESS, "fixed answers");
    CHECK(a[0] == 0x5c && a[15] == 0x8e && b[7] == 24 && memcmp(a, b, 7) == 0, "fixed answer bytes");
    CHECK(check(12092, 1, c) == CUDA_SUCCESS && check(12092, 2, d) == CUDA_SUCCESS && memcmp(c, d, 16) != 0,
          "the computed answer depends on the time it is asked for");
}

static void test_errors(void)
{
    const char *str = (const char *)1;
    CHECK(cudacompat_error_name(CUDA_ERROR_OUT_OF_MEMORY, &str) == CUDA_SUCCESS && strcmp(str, "CUDA_ERROR_OUT_OF_MEMORY") == 0,
          "error name");
    CHECK(cudacompat_error_string(CUDA_ERROR_INVALID_VALUE, &str) == CUDA_SUCCESS && strstr(str, "parameters") != NULL,
          "error description from cuda.h");
    CHECK(cudacompat_error_name(CUDA_SUCCESS, &str) == CUDA_SUCCESS && strcmp(str, "CUDA_SUCCESS") == 0, "success");
    CHECK(cudacompat_error_string((CUresult)123456, &str) == CUDA_ERROR_INVALID_VALUE && str == NULL, "unknown code");
    CHECK(cudacompat_error_name(CUDA_ERROR_UNKNOWN, NULL) == CUDA_ERROR_INVALID_VALUE, "NULL out");
}

int main(void)
{
    struct cudacompat_backend b = {
        .abi = CUDACOMPAT_ABI,
        .driver_version = 12090,
        .lookup = lookup,
        .device_get_count = count,
        .device_get_uuid = uuid,
        .device_get_attribute = attribute,
        .primary_ctx_retain = retain,
        .ctx_get_current = current,
        .module_load_data = load,
        .launch_kernel = launch,
    };
    void *fn;
    CHECK(cudacompat_get_proc_address("cuMemAlloc", &fn, 12000, 0, NULL) == CUDA_ERROR_NOT_FOUND,
          "nothing resolves before a backend is installed");
    struct cudacompat_backend incomplete = b;
    incomplete.lookup = NULL;
    CHECK(cudacompat_install(&incomplete) == -1, "an incomplete backend is refused");
    CHECK(cudacompat_install(&b) == 0, "install");
    test_hmac_md2();
    test_procaddr();
    test_tables();
    test_errors();
    printf("cudacompat: passed %d, failed %d\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
