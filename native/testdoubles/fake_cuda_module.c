/*
 * TEST DOUBLE — fake libcuda.so.1 modules, libraries and functions (NOT a CUDA driver).
 *
 * Module images (fatbin, cubin ELF, PTX text) are measured and recorded, never compiled;
 * functions are recorded by name (any name resolves: the double cannot read compressed fatbins)
 * and launching them only advances the simulated timeline of fake_libcuda.c. What a library
 * loads and looks up is counted, so a test can show how far cuBLAS or CuPy got.
 */
#include "fake_cuda_internal.h"

#include "cudacompat.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MOD_MAGIC 0x584d4f44u /* "XMOD" */
#define FN_MAGIC 0x5846554eu  /* "XFUN" */

#define MAX_GLOBALS 64
#define GLOBAL_BYTES (64 * 1024) /* the double cannot read a global's size from the image */

struct fake_global {
    char name[128];
    CUdeviceptr ptr;
};
struct fake_module {
    uint32_t magic;
    size_t image_bytes;
    int is_library;
    pthread_mutex_t mu;
    struct fake_global globals[MAX_GLOBALS];
    int nglobals;
};
struct fake_function {
    uint32_t magic;
    struct fake_module *module;
    char name[256];
    int attrs[16];
};

static _Atomic uint64_t g_image_bytes;

static size_t image_size(const void *image)
{
    const unsigned char *p = image;
    size_t fat = cudacompat_fatbin_size(image);
    if (fat)
        return fat;
    uint32_t magic;
    memcpy(&magic, p, 4);
    if (magic == 0x466243B1u) { /* an nvcc fatbin wrapper: its data is the fatbin */
        const void *data;
        memcpy(&data, p + 8, sizeof data);
        return data ? cudacompat_fatbin_size(data) : 0;
    }
    if (p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F') { /* cubin: up to the section table's end */
        uint64_t shoff;
        uint16_t shentsize, shnum;
        memcpy(&shoff, p + 0x28, 8);
        memcpy(&shentsize, p + 0x3a, 2);
        memcpy(&shnum, p + 0x3c, 2);
        return (size_t)(shoff + (uint64_t)shentsize * shnum);
    }
    return strlen((const char *)image) + 1; /* PTX text */
}

static CUresult load(CUmodule *module, const void *image, int is_library)
{
    if (!module || !image)
        return CUDA_ERROR_INVALID_VALUE;
    size_t n = image_size(image);
    if (n == 0)
        return CUDA_ERROR_INVALID_IMAGE;
    struct fake_module *m = calloc(1, sizeof *m);
    if (!m)
        return CUDA_ERROR_OUT_OF_MEMORY;
    m->magic = MOD_MAGIC;
    pthread_mutex_init(&m->mu, NULL);
    m->image_bytes = n;
    m->is_library = is_library;
    g_image_bytes += n;
    *module = (CUmodule)m;
    fake_cuda_trace("%s %p: %zu-byte image", is_library ? "library" : "module", (void *)m, n);
    return CUDA_SUCCESS;
}

FAKE_EXPORT uint64_t fake_cuda_module_image_bytes(void) { return g_image_bytes; }

FAKE_EXPORT CUresult cuModuleLoadData(CUmodule *module, const void *image)
{
    FAKE_COUNT();
    return load(module, image, 0);
}
FAKE_EXPORT CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned n, CUjit_option *o, void **v)
{
    (void)n;
    (void)o;
    (void)v;
    FAKE_COUNT();
    return load(module, image, 0);
}
FAKE_EXPORT CUresult cuModuleLoadFatBinary(CUmodule *module, const void *fatbin)
{
    FAKE_COUNT();
    return load(module, fatbin, 0);
}

static int is_module(const void *m) { return m && ((const struct fake_module *)m)->magic == MOD_MAGIC; }

FAKE_EXPORT CUresult cuModuleUnload(CUmodule module)
{
    FAKE_COUNT();
    if (!is_module(module))
        return CUDA_ERROR_INVALID_HANDLE;
    struct fake_module *m = (struct fake_module *)module;
    for (int i = 0; i < m->nglobals; i++)
        fake_devmem_unmap(m->globals[i].ptr);
    m->magic = 0;
    pthread_mutex_destroy(&m->mu);
    free(m);
    return CUDA_SUCCESS;
}

static CUresult get_function(CUfunction *f, void *module, const char *name)
{
    if (!f || !name)
        return CUDA_ERROR_INVALID_VALUE;
    if (!is_module(module))
        return CUDA_ERROR_INVALID_HANDLE;
    struct fake_function *fn = calloc(1, sizeof *fn);
    if (!fn)
        return CUDA_ERROR_OUT_OF_MEMORY;
    fn->magic = FN_MAGIC;
    fn->module = module;
    strncpy(fn->name, name, sizeof fn->name - 1);
    *f = (CUfunction)fn; /* owned by the module for the life of the process (never freed) */
    fake_cuda_trace("function %s in %p", fn->name, module);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuModuleGetFunction(CUfunction *f, CUmodule module, const char *name)
{
    FAKE_COUNT();
    return get_function(f, module, name);
}

/* a module's __device__ variable: GLOBAL_BYTES of zeroed device memory per (module, name), made
 * on first lookup (the runtime looks up every variable it registered when a module loads) */
static CUresult get_global(CUdeviceptr *ptr, size_t *bytes, void *module, const char *name)
{
    if (!name)
        return CUDA_ERROR_INVALID_VALUE;
    if (!is_module(module))
        return CUDA_ERROR_INVALID_HANDLE;
    struct fake_module *m = module;
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&m->mu);
    int i = 0;
    while (i < m->nglobals && strcmp(m->globals[i].name, name) != 0)
        i++;
    if (i == m->nglobals) {
        if (m->nglobals == MAX_GLOBALS || strlen(name) >= sizeof m->globals[0].name) {
            rc = CUDA_ERROR_NOT_FOUND;
        } else {
            strcpy(m->globals[i].name, name);
            m->globals[i].ptr = fake_devmem_map(GLOBAL_BYTES);
            m->nglobals++;
        }
    }
    if (rc == CUDA_SUCCESS) {
        if (ptr)
            *ptr = m->globals[i].ptr;
        if (bytes)
            *bytes = GLOBAL_BYTES;
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

FAKE_EXPORT CUresult cuModuleGetGlobal(CUdeviceptr *ptr, size_t *bytes, CUmodule module, const char *name)
{
    FAKE_COUNT();
    return get_global(ptr, bytes, module, name);
}

FAKE_EXPORT CUresult cuLibraryGetGlobal(CUdeviceptr *ptr, size_t *bytes, CUlibrary lib, const char *name)
{
    FAKE_COUNT();
    return get_global(ptr, bytes, lib, name);
}

FAKE_EXPORT CUresult cuModuleGetLoadingMode(CUmoduleLoadingMode *mode)
{
    if (!mode)
        return CUDA_ERROR_INVALID_VALUE;
    *mode = CU_MODULE_LAZY_LOADING;
    return CUDA_SUCCESS;
}

/* libraries (CUDA 12 context-independent loading): a library is a module here */
FAKE_EXPORT CUresult cuLibraryLoadData(CUlibrary *lib, const void *code, CUjit_option *jo, void **jv, unsigned njo,
                                       CUlibraryOption *lo, void **lv, unsigned nlo)
{
    (void)jo;
    (void)jv;
    (void)njo;
    (void)lo;
    (void)lv;
    (void)nlo;
    FAKE_COUNT();
    return load((CUmodule *)lib, code, 1);
}

FAKE_EXPORT CUresult cuLibraryUnload(CUlibrary lib)
{
    FAKE_COUNT();
    return cuModuleUnload((CUmodule)lib);
}

FAKE_EXPORT CUresult cuLibraryGetModule(CUmodule *m, CUlibrary lib)
{
    if (!m)
        return CUDA_ERROR_INVALID_VALUE;
    if (!is_module(lib))
        return CUDA_ERROR_INVALID_HANDLE;
    *m = (CUmodule)lib;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuLibraryGetKernel(CUkernel *k, CUlibrary lib, const char *name)
{
    FAKE_COUNT();
    return get_function((CUfunction *)k, lib, name);
}

FAKE_EXPORT CUresult cuKernelGetFunction(CUfunction *f, CUkernel k)
{
    FAKE_COUNT();
    if (!f)
        return CUDA_ERROR_INVALID_VALUE;
    if (!k || ((struct fake_function *)k)->magic != FN_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    *f = (CUfunction)k;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuKernelGetLibrary(CUlibrary *lib, CUkernel k)
{
    if (!lib)
        return CUDA_ERROR_INVALID_VALUE;
    if (!k || ((struct fake_function *)k)->magic != FN_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    *lib = (CUlibrary)((struct fake_function *)k)->module;
    return CUDA_SUCCESS;
}

static int is_function(const void *f) { return f && ((const struct fake_function *)f)->magic == FN_MAGIC; }

static int function_attribute(const struct fake_function *fn, CUfunction_attribute a)
{
    if ((unsigned)a < 16 && fn->attrs[a])
        return fn->attrs[a];
    switch (a) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: return 1024;
    case CU_FUNC_ATTRIBUTE_NUM_REGS: return 32;
    case CU_FUNC_ATTRIBUTE_PTX_VERSION: return 80;
    case CU_FUNC_ATTRIBUTE_BINARY_VERSION: return 80;
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: return 49152;
    default: return 0;
    }
}

FAKE_EXPORT CUresult cuFuncGetAttribute(int *v, CUfunction_attribute a, CUfunction f)
{
    FAKE_COUNT();
    if (!v || (unsigned)a >= CU_FUNC_ATTRIBUTE_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    if (!is_function(f))
        return CUDA_ERROR_INVALID_HANDLE;
    *v = function_attribute((const struct fake_function *)f, a);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v)
{
    if ((unsigned)a >= CU_FUNC_ATTRIBUTE_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    if (!is_function(f))
        return CUDA_ERROR_INVALID_HANDLE;
    if ((unsigned)a < 16)
        ((struct fake_function *)f)->attrs[a] = v;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuKernelGetAttribute(int *v, CUfunction_attribute a, CUkernel k, CUdevice dev)
{
    (void)dev;
    return cuFuncGetAttribute(v, a, (CUfunction)k);
}

FAKE_EXPORT CUresult cuKernelSetAttribute(CUfunction_attribute a, int v, CUkernel k, CUdevice dev)
{
    (void)dev;
    return cuFuncSetAttribute((CUfunction)k, a, v);
}

FAKE_EXPORT CUresult cuFuncSetCacheConfig(CUfunction f, CUfunc_cache c)
{
    (void)c;
    return is_function(f) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

FAKE_EXPORT CUresult cuFuncGetName(const char **name, CUfunction f)
{
    if (!name)
        return CUDA_ERROR_INVALID_VALUE;
    if (!is_function(f))
        return CUDA_ERROR_INVALID_HANDLE;
    *name = ((const struct fake_function *)f)->name;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuFuncGetModule(CUmodule *m, CUfunction f)
{
    if (!m)
        return CUDA_ERROR_INVALID_VALUE;
    if (!is_function(f))
        return CUDA_ERROR_INVALID_HANDLE;
    *m = (CUmodule)((const struct fake_function *)f)->module;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, CUfunction f, int block_size,
                                                                 size_t dyn_shared)
{
    (void)dyn_shared;
    if (!blocks || block_size <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!is_function(f))
        return CUDA_ERROR_INVALID_HANDLE;
    *blocks = 2048 / block_size > 32 ? 32 : 2048 / block_size;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int *blocks, CUfunction f, int block_size,
                                                                          size_t dyn_shared, unsigned flags)
{
    (void)flags;
    return cuOccupancyMaxActiveBlocksPerMultiprocessor(blocks, f, block_size, dyn_shared);
}
