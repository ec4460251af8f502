/*
 * Quota paths that used to be bypassed, against the fake libcuda.so.1 TEST DOUBLE (which
 * frees VMM memory only when the last mapping and reference are gone, releases pool memory
 * at synchronisation per the release threshold, and reserves graph memory when a graph
 * runs). Region quota 1024 MiB, no compute share.
 *   vmm          cuMemRelease of a still-mapped allocation keeps its charge until unmap
 *   graphnode    memory-allocation nodes added with cuGraphAddNode / _v2 are charged
 *   poolrelease  memory a stream-ordered pool returns at synchronisation is uncharged
 *                (no false OUT_OF_MEMORY), memory it keeps (release threshold) stays charged
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <string.h>
#include "t_common.h"

uint64_t fake_cuda_phys_used(void);

static CUmemAllocationProp dev_prop(void)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    return prop;
}

static void mode_vmm(void)
{
    uint64_t u0 = used();
    CUmemAllocationProp prop = dev_prop();
    CUmemGenericAllocationHandle h[3];
    CUdeviceptr va[3];
    int made = 0;
    /* the pattern of the reported bypass: create, map, release (still mapped), repeat */
    for (int i = 0; i < 3; i++) {
        CUresult rc = cuMemCreate(&h[i], 800 * MIB, &prop, 0);
        if (rc != CUDA_SUCCESS) {
            CHECK(rc == CUDA_ERROR_OUT_OF_MEMORY, "refusal is OUT_OF_MEMORY (%d)", (int)rc);
            break;
        }
        made++;
        CHECK(cuMemAddressReserve(&va[i], 800 * MIB, 0, 0, 0) == CUDA_SUCCESS, "reserve VA");
        CHECK(cuMemMap(va[i], 800 * MIB, 0, h[i], 0) == CUDA_SUCCESS, "map");
        CHECK(cuMemRelease(h[i]) == CUDA_SUCCESS, "release while mapped (legal: freed at unmap)");
    }
    CHECK(made == 1, "three 800 MiB creates under a 1 GiB quota: only the first may succeed (%d did)", made);
    CHECK(used() == u0 + 800 * MIB, "the mapped allocation stays charged after cuMemRelease");
    CHECK(fake_cuda_phys_used() >= 800 * MIB, "and the (fake) device still holds it");
    CHECK(cuMemUnmap(va[0], 800 * MIB) == CUDA_SUCCESS, "unmap");
    CHECK(used() == u0, "uncharged when the last mapping goes (%llu MiB)", (unsigned long long)((used() - u0) / MIB));
    /* a retained handle keeps it alive too */
    CHECK(cuMemCreate(&h[1], 800 * MIB, &prop, 0) == CUDA_SUCCESS, "create after unmap");
    CHECK(cuMemMap(va[0], 800 * MIB, 0, h[1], 0) == CUDA_SUCCESS, "map");
    CUmemGenericAllocationHandle again;
    CHECK(cuMemRetainAllocationHandle(&again, (void *)(uintptr_t)va[0]) == CUDA_SUCCESS && again == h[1], "retain");
    CHECK(cuMemUnmap(va[0], 800 * MIB) == CUDA_SUCCESS && cuMemRelease(h[1]) == CUDA_SUCCESS, "unmap, release once");
    CHECK(used() == u0 + 800 * MIB, "one reference left: still charged");
    CHECK(cuMemRelease(again) == CUDA_SUCCESS && used() == u0, "last reference released: uncharged");
    CHECK(cuMemAddressFree(va[0], 800 * MIB) == CUDA_SUCCESS, "free VA");
    printf("vmm ok\n");
}

static CUgraphNodeParams alloc_node(size_t bytes)
{
    CUgraphNodeParams p;
    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_MEM_ALLOC;
    p.alloc.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.alloc.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.alloc.poolProps.location.id = 0;
    p.alloc.bytesize = bytes;
    return p;
}

static void mode_graphnode(void)
{
    uint64_t u0 = used();
    CUgraph g;
    CUgraphNode n;
    CHECK(cuGraphCreate(&g, 0) == CUDA_SUCCESS, "graph");
    CUgraphNodeParams big = alloc_node(2000 * MIB), p = alloc_node(600 * MIB);
    CHECK(cuGraphAddNode(&n, g, NULL, 0, &big) == CUDA_ERROR_OUT_OF_MEMORY, "node larger than the quota refused");
    CHECK(cuGraphAddNode(&n, g, NULL, 0, &p) == CUDA_SUCCESS, "600 MiB allocation node");
    CUgraphExec e;
    CHECK(cuGraphInstantiateWithFlags(&e, g, 0) == CUDA_SUCCESS, "instantiate");
    CHECK(cuGraphLaunch(e, NULL) == CUDA_SUCCESS, "launch");
    CHECK(used() == u0 + 600 * MIB, "graph memory of cuGraphAddNode charged when it runs: %llu MiB",
          (unsigned long long)((used() - u0) / MIB));
    CUdeviceptr x;
    CHECK(cuMemAlloc(&x, 600 * MIB) == CUDA_ERROR_OUT_OF_MEMORY, "600 graph + 600 > 1024: refused");
    /* the _v2 entry point (edge data), found the way cudart finds it */
    CUresult (*add_v2)(CUgraphNode *, CUgraph, const CUgraphNode *, const CUgraphEdgeData *, size_t, CUgraphNodeParams *) =
        (CUresult(*)(CUgraphNode *, CUgraph, const CUgraphNode *, const CUgraphEdgeData *, size_t,
                     CUgraphNodeParams *))dlsym(RTLD_DEFAULT, "cuGraphAddNode_v2");
    CHECK(add_v2, "cuGraphAddNode_v2");
    CUgraph g2;
    CHECK(cuGraphCreate(&g2, 0) == CUDA_SUCCESS, "graph 2");
    CUgraphNodeParams p2 = alloc_node(700 * MIB);
    CHECK(add_v2(&n, g2, NULL, NULL, 0, &p2) == CUDA_SUCCESS, "700 MiB node via _v2 (fits alone)");
    CUgraphExec e2;
    CHECK(cuGraphInstantiateWithFlags(&e2, g2, 0) == CUDA_ERROR_OUT_OF_MEMORY, "instantiate refused: 600 + 700 > 1024");
    CHECK(cuGraphExecDestroy(e) == CUDA_SUCCESS && cuDeviceGraphMemTrim(0) == CUDA_SUCCESS && used() == u0, "trim");
    CHECK(cuGraphInstantiateWithFlags(&e2, g2, 0) == CUDA_SUCCESS, "fits after trim");
    CHECK(cuGraphLaunch(e2, NULL) == CUDA_SUCCESS && used() == u0 + 700 * MIB, "charged at launch");
    CHECK(cuGraphExecDestroy(e2) == CUDA_SUCCESS && cuGraphDestroy(g) == CUDA_SUCCESS && cuGraphDestroy(g2) == CUDA_SUCCESS,
          "teardown");
    printf("graphnode ok\n");
}

static void mode_poolrelease(void)
{
    uint64_t u0 = used();
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS, "stream");
    CUdeviceptr p, q;
    const char *how[] = {"cuStreamSynchronize", "cuEventSynchronize", "cuCtxSynchronize"};
    for (int i = 0; i < 3; i++) {
        CHECK(cuMemAllocAsync(&p, 600 * MIB, s) == CUDA_SUCCESS, "600 MiB from the default pool");
        CHECK(used() == u0 + 600 * MIB, "charged by the pool's reservation");
        CHECK(cuMemFreeAsync(p, s) == CUDA_SUCCESS, "free async");
        if (i == 0) {
            CHECK(cuStreamSynchronize(s) == CUDA_SUCCESS, "stream sync");
        } else if (i == 1) {
            CUevent ev;
            CHECK(cuEventCreate(&ev, 0) == CUDA_SUCCESS && cuEventRecord(ev, s) == CUDA_SUCCESS &&
                      cuEventSynchronize(ev) == CUDA_SUCCESS && cuEventDestroy(ev) == CUDA_SUCCESS, "event sync");
        } else {
            CHECK(cuCtxSynchronize() == CUDA_SUCCESS, "context sync");
        }
        CHECK(used() == u0, "%s: the pool returned its memory (release threshold 0), uncharged: %llu MiB", how[i],
              (unsigned long long)((used() - u0) / MIB));
        CHECK(cuMemAlloc(&q, 600 * MIB) == CUDA_SUCCESS, "%s: a 600 MiB request fits with the pool empty", how[i]);
        CHECK(cuMemFree(q) == CUDA_SUCCESS, "free");
    }
    /* a pool that keeps its memory (release threshold) stays charged: the memory is held */
    CUmemoryPool pool;
    CHECK(cuDeviceGetMemPool(&pool, 0) == CUDA_SUCCESS, "default pool");
    cuuint64_t keep = 1024 * MIB;
    CHECK(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep) == CUDA_SUCCESS, "threshold");
    CHECK(cuMemAllocAsync(&p, 600 * MIB, s) == CUDA_SUCCESS && cuMemFreeAsync(p, s) == CUDA_SUCCESS &&
              cuStreamSynchronize(s) == CUDA_SUCCESS, "alloc, free, sync");
    CHECK(used() == u0 + 600 * MIB, "kept by the pool: still charged");
    CHECK(cuMemAlloc(&q, 600 * MIB) == CUDA_ERROR_OUT_OF_MEMORY, "and it counts against the quota");
    CHECK(cuMemPoolTrimTo(pool, 0) == CUDA_SUCCESS && used() == u0, "trim gives it back");
    CHECK(cuStreamDestroy(s) == CUDA_SUCCESS, "teardown");
    printf("poolrelease ok\n");
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    map_region();
    CHECK(cuInit(0) == CUDA_SUCCESS, "cuInit");
    if (!strcmp(argv[1], "vmm"))
        mode_vmm();
    else if (!strcmp(argv[1], "graphnode"))
        mode_graphnode();
    else if (!strcmp(argv[1], "poolrelease"))
        mode_poolrelease();
    else
        return 2;
    return 0;
}
