/*
 * cudacompat: the private export tables the runtime asks for with cuGetExportTable.
 *
 * Each table is a static array of function pointers (the runtime keeps the pointer for the life
 * of the process). Slot 0 of most tables is the table's size in bytes; the runtime checks it
 * before calling a slot, so the sizes below are the smallest that cover every slot it was seen
 * to call. Slots we have no implementation for trap: counted, traced, CUDA_ERROR_NOT_SUPPORTED.
 * Observations and guesses per slot: cudacompat.h and docs/cudart-compat.md.
 */
#include "cc_internal.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

enum table_id { T_DIAG, T_CUDART, T_TOOLS_HOOKS, T_TOOLS_TLS, T_TOOLS_13, T_CLS, T_CTX_WRAPPER, T_INTEGRITY, T_COUNT };
#define MAX_SLOTS 13

static const struct {
    unsigned char uuid[16];
    const char *name;
} TABLE_IDS[T_COUNT] = {
    [T_DIAG] = {{0xf8, 0xcf, 0xf9, 0x51, 0x21, 0x46, 0x8b, 0x4e, 0xb9, 0xe2, 0xfb, 0x46, 0x9e, 0x7c, 0x0d, 0xd9},
                "DIAGNOSTICS"},
    [T_CUDART] = {{0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a, 0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd, 0x9d, 0xf9},
                  "CUDART_INTERFACE"},
    [T_TOOLS_HOOKS] = {{0xa0, 0x94, 0x79, 0x8c, 0x2e, 0x74, 0x2e, 0x74, 0x93, 0xf2, 0x08, 0x00, 0x20, 0x0c, 0x0a,
                        0x66},
                       "TOOLS_RUNTIME_CALLBACK_HOOKS"},
    [T_TOOLS_TLS] = {{0x42, 0xd8, 0x5a, 0x81, 0x23, 0xf6, 0xcb, 0x47, 0x82, 0x98, 0xf6, 0xe7, 0x8a, 0x3a, 0xec,
                      0xdc},
                     "TOOLS_TLS"},
    [T_TOOLS_13] = {{0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48, 0x8c, 0xa6, 0x41, 0xff, 0x73, 0x24, 0xc8,
                      0xf2},
                     "TOOLS_13"},
    [T_CLS] = {{0xc6, 0x93, 0x33, 0x6e, 0x11, 0x21, 0xdf, 0x11, 0xa8, 0xc3, 0x68, 0xf3, 0x55, 0xd8, 0x95, 0x93},
               "CONTEXT_LOCAL_STORAGE"},
    [T_CTX_WRAPPER] = {{0x26, 0x3e, 0x88, 0x60, 0x7c, 0xd2, 0x61, 0x43, 0x92, 0xf6, 0xbb, 0xd5, 0x00, 0x6d, 0xfa,
                        0x7e},
                       "CONTEXT_WRAPPER"},
    [T_INTEGRITY] = {{0xd4, 0x08, 0x20, 0x55, 0xbd, 0xe6, 0x70, 0x4b, 0x8d, 0x34, 0xba, 0x12, 0x3c, 0x66, 0xe1,
                      0xf2},
                     "INTEGRITY"},
};

static _Atomic uint64_t g_calls[T_COUNT][MAX_SLOTS];
static _Atomic uint64_t g_trapped;

static void count(enum table_id t, unsigned slot)
{
    atomic_fetch_add_explicit(&g_calls[t][slot], 1, memory_order_relaxed);
    cc_tracef("slot %s[%u]", TABLE_IDS[t].name, slot);
}

static CUresult trap(enum table_id t, unsigned slot)
{
    count(t, slot);
    atomic_fetch_add_explicit(&g_trapped, 1, memory_order_relaxed);
    cc_tracef("export table %s slot %u: not implemented (trapped)", TABLE_IDS[t].name, slot);
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* one distinct trap per (table, slot) so a trace names the slot that was called */
#define TRAP(t, s)                                                                                     \
    static CUresult trap_##t##_##s(void) { return trap(t, s); }
TRAP(T_CUDART, 3)
TRAP(T_CUDART, 4)
TRAP(T_CUDART, 5)
TRAP(T_CUDART, 10)
TRAP(T_CUDART, 11)
TRAP(T_TOOLS_HOOKS, 1)
TRAP(T_TOOLS_HOOKS, 3)
TRAP(T_TOOLS_HOOKS, 4)
TRAP(T_TOOLS_HOOKS, 5)
TRAP(T_TOOLS_TLS, 1)
TRAP(T_TOOLS_TLS, 2)
TRAP(T_TOOLS_TLS, 3)
TRAP(T_TOOLS_13, 1)
TRAP(T_TOOLS_13, 2)
TRAP(T_TOOLS_13, 3)
TRAP(T_CLS, 3)
TRAP(T_CTX_WRAPPER, 1)
TRAP(T_INTEGRITY, 2)

#define SIZE_WORD(nslots) ((const void *)(uintptr_t)((nslots) * sizeof(void *)))
#define FN(f) ((const void *)(f))

/* ------------------------------------------------------------------ DIAGNOSTICS */

/* slot 1: the runtime's logger; 13.x reports start-up failures through it */
static CUresult diag_log(const char *component, int level, const char *fmt, va_list ap)
{
    count(T_DIAG, 1);
    char msg[384];
    if (!fmt)
        return CUDA_SUCCESS;
    vsnprintf(msg, sizeof msg, fmt, ap);
    cc_tracef("runtime log [%s/%d]: %s", component ? component : "?", level, msg);
    return CUDA_SUCCESS;
}

/* slot 2: called after a size check, arguments unknown; nothing to do */
static CUresult diag_slot2(void)
{
    count(T_DIAG, 2);
    return CUDA_SUCCESS;
}

static const void *const DIAG_TABLE[] = {SIZE_WORD(3), FN(diag_log), FN(diag_slot2)};

/* ------------------------------------------------------------------ CUDART_INTERFACE */

#define FATBINC_MAGIC 0x466243B1u /* __fatBinC_Wrapper_t emitted by nvcc */
#define FATBIN_MAGIC 0xBA55ED50u

struct fatbinc_wrapper {
    uint32_t magic, version;
    const void *data; /* fatbin header */
    const void *filename_or_fatbins;
};

struct fatbin_header {
    uint32_t magic;
    uint16_t version, header_size;
    uint64_t files_size;
};

size_t cudacompat_fatbin_size(const void *image)
{
    struct fatbin_header h;
    if (!image)
        return 0;
    memcpy(&h, image, sizeof h);
    if (h.magic != FATBIN_MAGIC || h.header_size < sizeof h)
        return 0;
    return (size_t)h.header_size + (size_t)h.files_size;
}

static CUresult load_fatbin(CUmodule *module, const void *fatbin)
{
    if (!module || !fatbin || !cudacompat_fatbin_size(fatbin))
        return CUDA_ERROR_INVALID_IMAGE;
    return cc_backend()->module_load_data(module, fatbin);
}

static const void *unwrap(const struct fatbinc_wrapper *w)
{
    if (!w || w->magic != FATBINC_MAGIC || (w->version != 1 && w->version != 2))
        return NULL;
    return w->data;
}

/* slot 1: module from an nvcc fatbin wrapper (__cudaRegisterFatBinary) */
static CUresult cudart_module_from_wrapper(CUmodule *module, const struct fatbinc_wrapper *w)
{
    count(T_CUDART, 1);
    cc_tracef("CUDART_INTERFACE slot 1: module from wrapper %p", (const void *)w);
    return load_fatbin(module, unwrap(w));
}

/* slot 2: the device's primary context */
static CUresult cudart_primary_context(CUcontext *ctx, CUdevice dev)
{
    count(T_CUDART, 2);
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    return cc_backend()->primary_ctx_retain(ctx, dev);
}

/* slot 6: like slot 1, with two pointers and a count the runtime passes for host-variable
 * registration (guessed; traced so a non-trivial use is seen) */
static CUresult cudart_module_from_wrapper_ex(CUmodule *module, const struct fatbinc_wrapper *w, void *a3, void *a4,
                                              size_t a5)
{
    count(T_CUDART, 6);
    cc_tracef("CUDART_INTERFACE slot 6: module from wrapper %p (%p %p %zu)", (const void *)w, a3, a4, a5);
    return load_fatbin(module, unwrap(w));
}

/* slot 7: notification with one integer argument; nothing to do */
static void cudart_slot7(size_t arg)
{
    count(T_CUDART, 7);
    cc_tracef("CUDART_INTERFACE slot 7 (%zu)", arg);
}

/* slot 8: module from a bare fatbin header */
static CUresult cudart_module_from_fatbin(const void *fatbin, CUmodule *module, void *a3, void *a4, unsigned a5)
{
    count(T_CUDART, 8);
    cc_tracef("CUDART_INTERFACE slot 8: module from fatbin %p (%p %p %u)", fatbin, a3, a4, a5);
    return load_fatbin(module, fatbin);
}

/* slot 9: launch with an extra-argument buffer only */
static CUresult cudart_launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                              unsigned bz, unsigned shared_bytes, CUstream stream, void **extra)
{
    count(T_CUDART, 9);
    return cc_backend()->launch_kernel(f, gx, gy, gz, bx, by, bz, shared_bytes, stream, NULL, extra);
}

/* slot 12 (13.x): called while the runtime walks the environment, with (entry, name, name length,
 * ...) for variables of a private naming scheme; nothing to configure here */
static CUresult cudart_env_hook(const char *entry, const char *name, size_t name_len)
{
    count(T_CUDART, 12);
    cc_tracef("CUDART_INTERFACE slot 12: environment %.*s (%s)", (int)name_len, name ? name : "", entry ? entry : "");
    return CUDA_SUCCESS;
}

static const void *const CUDART_TABLE[] = {
    SIZE_WORD(13),
    FN(cudart_module_from_wrapper),
    FN(cudart_primary_context),
    FN(trap_T_CUDART_3),
    FN(trap_T_CUDART_4),
    FN(trap_T_CUDART_5),
    FN(cudart_module_from_wrapper_ex),
    FN(cudart_slot7),
    FN(cudart_module_from_fatbin),
    FN(cudart_launch),
    FN(trap_T_CUDART_10),
    FN(trap_T_CUDART_11),
    FN(cudart_env_hook),
};

/* ------------------------------------------------------------------ TOOLS_RUNTIME_CALLBACK_HOOKS */

/* zeroed memory the runtime keeps tool-callback state in; it lives as long as the process */
static uint64_t g_hooks_area[1024];
static unsigned char g_hooks_flags[16];

static void hooks_area(void **ptr, size_t *size)
{
    count(T_TOOLS_HOOKS, 2);
    if (ptr)
        *ptr = g_hooks_area;
    if (size)
        *size = sizeof g_hooks_area / sizeof g_hooks_area[0];
}

static void hooks_flags(void **ptr, size_t *size)
{
    count(T_TOOLS_HOOKS, 6);
    if (ptr)
        *ptr = g_hooks_flags;
    if (size)
        *size = 14; /* the runtime passes and expects 14 bytes */
}

static const void *const TOOLS_HOOKS_TABLE[] = {
    SIZE_WORD(7),          FN(trap_T_TOOLS_HOOKS_1), FN(hooks_area),  FN(trap_T_TOOLS_HOOKS_3),
    FN(trap_T_TOOLS_HOOKS_4), FN(trap_T_TOOLS_HOOKS_5), FN(hooks_flags),
};

/* ------------------------------------------------------------------ TOOLS_TLS */

static const void *const TOOLS_TLS_TABLE[] = {SIZE_WORD(4), FN(trap_T_TOOLS_TLS_1), FN(trap_T_TOOLS_TLS_2),
                                              FN(trap_T_TOOLS_TLS_3)};

/* ------------------------------------------------------------------ TOOLS_13 (21318c60-..., 13.x)
 * requested next to TOOLS_TLS at start-up (the runtime fails without it); no slot was seen called
 * without a tool attached */

static const void *const TOOLS_13_TABLE[] = {SIZE_WORD(4), FN(trap_T_TOOLS_13_1), FN(trap_T_TOOLS_13_2),
                                             FN(trap_T_TOOLS_13_3)};

/* ------------------------------------------------------------------ CONTEXT_LOCAL_STORAGE */

static CUresult cls_insert(CUcontext ctx, void *key, void *value, void (*dtor)(CUcontext, void *, void *))
{
    count(T_CLS, 0);
    return cc_cls_insert(ctx, key, value, dtor);
}

static CUresult cls_remove(CUcontext ctx, void *key)
{
    count(T_CLS, 1);
    return cc_cls_remove(ctx, key);
}

static CUresult cls_get(void **value, CUcontext ctx, void *key)
{
    count(T_CLS, 2);
    return cc_cls_get(value, ctx, key);
}

static const void *const CLS_TABLE[] = {FN(cls_insert), FN(cls_remove), FN(cls_get), FN(trap_T_CLS_3)};

/* ------------------------------------------------------------------ CONTEXT_WRAPPER */

/* slot 2: our contexts are never wrapped */
static CUresult ctxw_unwrap(CUcontext ctx, unsigned *is_wrapped, CUcontext *unwrapped)
{
    (void)ctx;
    (void)unwrapped;
    count(T_CTX_WRAPPER, 2);
    if (is_wrapped)
        *is_wrapped = 0;
    return CUDA_SUCCESS;
}

/* slot 3: the runtime (driver version >= 12040) compares the answer with 1 to switch on a
 * feature; no arguments are used. Answer "off". */
static int ctxw_query(void)
{
    count(T_CTX_WRAPPER, 3);
    return 0;
}

static const void *const CTX_WRAPPER_TABLE[] = {SIZE_WORD(4), FN(trap_T_CTX_WRAPPER_1), FN(ctxw_unwrap),
                                                FN(ctxw_query)};

/* ------------------------------------------------------------------ INTEGRITY */

static CUresult integrity_check(unsigned runtime_version, uint64_t unix_time_s, unsigned char *out);
static const void *const INTEGRITY_TABLE[] = {SIZE_WORD(3), FN(integrity_check), FN(trap_T_INTEGRITY_2)};

static CUresult integrity_check(unsigned runtime_version, uint64_t unix_time_s, unsigned char *out)
{
    count(T_INTEGRITY, 1);
    return cc_integrity_answer(runtime_version, unix_time_s, out, CUDART_TABLE, INTEGRITY_TABLE,
                               INTEGRITY_TABLE[1]);
}

/* ------------------------------------------------------------------ lookup */

static const void *const *const TABLES[T_COUNT] = {
    [T_DIAG] = DIAG_TABLE, [T_CUDART] = CUDART_TABLE, [T_TOOLS_HOOKS] = TOOLS_HOOKS_TABLE,
    [T_TOOLS_TLS] = TOOLS_TLS_TABLE, [T_TOOLS_13] = TOOLS_13_TABLE, [T_CLS] = CLS_TABLE, [T_CTX_WRAPPER] = CTX_WRAPPER_TABLE,
    [T_INTEGRITY] = INTEGRITY_TABLE,
};

static int table_of(const CUuuid *id)
{
    for (int t = 0; t < T_COUNT; t++)
        if (memcmp(TABLE_IDS[t].uuid, id->bytes, 16) == 0)
            return t;
    return -1;
}

CUresult cudacompat_get_export_table(const void **table, const CUuuid *table_id)
{
    if (!table || !table_id)
        return CUDA_ERROR_INVALID_VALUE;
    *table = NULL;
    int t = table_of(table_id);
    if (t < 0) {
        const unsigned char *u = (const unsigned char *)table_id->bytes;
        cc_tracef("export table %02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x: unknown", u[0],
                  u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
        return CUDA_ERROR_INVALID_VALUE;
    }
    cc_tracef("export table %s requested", TABLE_IDS[t].name);
    *table = TABLES[t];
    return CUDA_SUCCESS;
}

uint64_t cudacompat_slot_calls(const CUuuid *table_id, unsigned slot)
{
    int t = table_id ? table_of(table_id) : -1;
    if (t < 0 || slot >= MAX_SLOTS)
        return 0;
    return atomic_load_explicit(&g_calls[t][slot], memory_order_relaxed);
}

uint64_t cudacompat_trapped_calls(void) { return atomic_load_explicit(&g_trapped, memory_order_relaxed); }
