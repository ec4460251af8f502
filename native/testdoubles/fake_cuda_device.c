/*
 * TEST DOUBLE — fake libcuda.so.1 devices (NOT a CUDA driver).
 *
 * FAKE_NDEVICES identical devices shaped like a compute capability 8.0 card (the attribute
 * values a runtime reads to fill cudaDeviceProp), PCI bus 0x10 + ordinal. The driver version is
 * 12090 unless FAKE_CUDA_DRIVER_VERSION says otherwise (a 13.x runtime refuses a 12.x driver).
 */
#include "fake_cuda_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_driver_version = 12090;
static pthread_once_t g_version_once = PTHREAD_ONCE_INIT;

static void read_version(void)
{
    const char *v = getenv("FAKE_CUDA_DRIVER_VERSION"); /* test double: env read once */
    if (v && atoi(v) >= 11000)
        g_driver_version = atoi(v);
}

int fake_cuda_driver_version(void)
{
    pthread_once(&g_version_once, read_version);
    return g_driver_version;
}

int fake_cuda_valid_device(CUdevice dev) { return dev >= 0 && dev < FAKE_NDEVICES; }

FAKE_EXPORT CUresult cuDriverGetVersion(int *v)
{
    if (!v)
        return CUDA_ERROR_INVALID_VALUE;
    *v = fake_cuda_driver_version();
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetCount(int *n)
{
    if (!n)
        return CUDA_ERROR_INVALID_VALUE;
    *n = FAKE_NDEVICES;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGet(CUdevice *d, int ordinal)
{
    if (!d)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(ordinal))
        return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "xpupool fake GPU (test double) %d", dev);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetUuid(CUuuid *u, CUdevice d)
{
    /* GPU-00000000-1111-2222-3333-44444444444<d>: the UUIDs the shim's region tests configure */
    static const unsigned char base[16] = {0, 0, 0, 0, 0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44, 0x44, 0x44, 0x44, 0x40};
    if (!u)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(d))
        return CUDA_ERROR_INVALID_DEVICE;
    memcpy(u->bytes, base, 16);
    u->bytes[15] = (char)(0x40 + d);
    return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d) { return cuDeviceGetUuid(u, d); }

FAKE_EXPORT CUresult cuDeviceGetPCIBusId(char *id, int len, CUdevice dev)
{
    if (!id || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(id, (size_t)len, "00000000:%02X:00.0", 0x10 + dev);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetByPCIBusId(CUdevice *dev, const char *id)
{
    unsigned dom, bus, slot, fn;
    if (!dev || !id || sscanf(id, "%x:%x:%x.%x", &dom, &bus, &slot, &fn) != 4)
        return CUDA_ERROR_INVALID_VALUE;
    if (dom != 0 || slot != 0 || bus < 0x10 || bus >= 0x10 + FAKE_NDEVICES)
        return CUDA_ERROR_INVALID_DEVICE;
    *dev = (CUdevice)(bus - 0x10);
    return CUDA_SUCCESS;
}

/* the attribute values that differ from 0 (every other valid attribute reads 0) */
static int attribute(CUdevice_attribute a, CUdevice dev)
{
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: return 64;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: return 2147483647;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: return 65535;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: return 65535;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: return 49152;
    case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: return 65536;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: return 32;
    case CU_DEVICE_ATTRIBUTE_MAX_PITCH: return 2147483647;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: return 65536;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: return 1410000;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT: return 512;
    case CU_DEVICE_ATTRIBUTE_GPU_OVERLAP: return 1;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: return 108;
    case CU_DEVICE_ATTRIBUTE_INTEGRATED: return 0;
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: return 1;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_MODE: return CU_COMPUTEMODE_DEFAULT;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE1D_WIDTH: return 131072;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_WIDTH: return 131072;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE2D_HEIGHT: return 65536;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_WIDTH: return 16384;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_HEIGHT: return 16384;
    case CU_DEVICE_ATTRIBUTE_MAXIMUM_TEXTURE3D_DEPTH: return 16384;
    case CU_DEVICE_ATTRIBUTE_SURFACE_ALIGNMENT: return 512;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: return 1;
    case CU_DEVICE_ATTRIBUTE_ECC_ENABLED: return 1;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: return 0x10 + dev;
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: return 0;
    case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: return 0;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: return 1215000;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: return 5120;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: return 41943040;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: return 2048;
    case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: return 3;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: return 1;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: return 8;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: return 0;
    case CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: return 167936;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: return 65536;
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY: return 1;
    case CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD_GROUP_ID: return dev;
    case CU_DEVICE_ATTRIBUTE_SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO: return 2;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_PREEMPTION_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM: return 1;
    case CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH: return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: return 166912;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: return 32;
    case CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE: return 31457280;
    case CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE: return 134213632;
    case CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK: return 1024;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES: return CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: return 1;
    default: return 0;
    }
}

FAKE_EXPORT CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice dev)
{
    if (!v || (int)a <= 0 || a >= CU_DEVICE_ATTRIBUTE_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *v = attribute(a, dev);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceComputeCapability(int *major, int *minor, CUdevice dev)
{
    if (!major || !minor)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *major = 8;
    *minor = 0;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetP2PAttribute(int *v, CUdevice_P2PAttribute a, CUdevice src, CUdevice dst)
{
    (void)a;
    if (!v)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(src) || !fake_cuda_valid_device(dst) || src == dst)
        return CUDA_ERROR_INVALID_DEVICE;
    *v = 0; /* no peer access between the fake devices */
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceCanAccessPeer(int *can, CUdevice dev, CUdevice peer)
{
    if (!can)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(dev) || !fake_cuda_valid_device(peer))
        return CUDA_ERROR_INVALID_DEVICE;
    *can = 0;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetTexture1DLinearMaxWidth(size_t *w, CUarray_format f, unsigned ch, CUdevice dev)
{
    (void)f;
    (void)ch;
    if (!w)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *w = 1u << 27;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev)
{
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    return cuDeviceGetMemPool(pool, dev);
}

/* CUDA 13: which atomic operations work between host and device / between peers: none here */
FAKE_EXPORT CUresult cuDeviceGetHostAtomicCapabilities(unsigned *caps, const unsigned *ops, unsigned n, CUdevice dev)
{
    if ((!caps || !ops) && n)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    for (unsigned i = 0; i < n; i++)
        caps[i] = 0;
    return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuDeviceGetP2PAtomicCapabilities(unsigned *caps, const unsigned *ops, unsigned n, CUdevice src,
                                                      CUdevice dst)
{
    if ((!caps || !ops) && n)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fake_cuda_valid_device(src) || !fake_cuda_valid_device(dst))
        return CUDA_ERROR_INVALID_DEVICE;
    for (unsigned i = 0; i < n; i++)
        caps[i] = 0;
    return CUDA_SUCCESS;
}
