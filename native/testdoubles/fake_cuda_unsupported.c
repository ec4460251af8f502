/*
 * TEST DOUBLE — fake libcuda.so.1 entry points it has but does not implement (NOT a CUDA driver).
 *
 * Some libraries resolve a fixed list of driver symbols with dlsym and refuse to start when one
 * is missing (cuBLASLt 12.9 needs ~80, among them graph-node queries, the JIT linker and stream
 * memory operations). They exist here so such a library starts; calling one fails loudly with
 * CUDA_ERROR_NOT_SUPPORTED. Every definition is weak: the strict double of fake_libcuda.c replaces
 * any of them by defining the symbol.
 */
#include "fake_cuda_internal.h"

/* the original (unsuffixed) exports, which cuda.h maps to newer names */
#undef cuStreamGetCaptureInfo
CUresult cuStreamGetCaptureInfo_v2(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                                   const CUgraphNode **deps, size_t *n);
#undef cuGraphInstantiate
#undef cuGraphKernelNodeGetParams
#undef cuGraphExecKernelNodeSetParams
#undef cuStreamWaitValue32
#undef cuStreamBatchMemOp

#define WEAK FAKE_EXPORT __attribute__((weak))
#define UNSUPPORTED                                                                                    \
    do {                                                                                               \
        FAKE_COUNT();                                                                                  \
        return CUDA_ERROR_NOT_SUPPORTED;                                                               \
    } while (0)

/* ---- the original cuStreamGetCaptureInfo (CUDA 10.1 signature): fake_libcuda.c's capture model */
WEAK CUresult cuStreamGetCaptureInfo(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id)
{
    return cuStreamGetCaptureInfo_v2(s, st, id, NULL, NULL, NULL);
}

/* ---- graphs beyond what fake_libcuda.c models */
WEAK CUresult cuGraphInstantiate(CUgraphExec *e, CUgraph g, CUgraphNode *err, char *log, size_t n)
{
    (void)e, (void)g, (void)err, (void)log, (void)n;
    UNSUPPORTED;
}
WEAK CUresult cuGraphGetNodes(CUgraph g, CUgraphNode *nodes, size_t *n) { (void)g, (void)nodes, (void)n; UNSUPPORTED; }
WEAK CUresult cuGraphNodeGetType(CUgraphNode node, CUgraphNodeType *t) { (void)node, (void)t; UNSUPPORTED; }
WEAK CUresult cuGraphKernelNodeGetParams(CUgraphNode node, void *p) { (void)node, (void)p; UNSUPPORTED; }
WEAK CUresult cuGraphKernelNodeGetParams_v2(CUgraphNode node, CUDA_KERNEL_NODE_PARAMS *p) { (void)node, (void)p; UNSUPPORTED; }
WEAK CUresult cuGraphExecKernelNodeSetParams(CUgraphExec e, CUgraphNode node, const void *p)
{
    (void)e, (void)node, (void)p;
    UNSUPPORTED;
}
WEAK CUresult cuGraphExecKernelNodeSetParams_v2(CUgraphExec e, CUgraphNode node, const CUDA_KERNEL_NODE_PARAMS *p)
{
    (void)e, (void)node, (void)p;
    UNSUPPORTED;
}

/* ---- the JIT linker: nothing is ever compiled here */
WEAK CUresult cuLinkCreate_v2(unsigned n, CUjit_option *o, void **v, CUlinkState *s) { (void)n, (void)o, (void)v, (void)s; UNSUPPORTED; }
WEAK CUresult cuLinkAddData_v2(CUlinkState s, CUjitInputType t, void *d, size_t sz, const char *name, unsigned n,
                               CUjit_option *o, void **v)
{
    (void)s, (void)t, (void)d, (void)sz, (void)name, (void)n, (void)o, (void)v;
    UNSUPPORTED;
}
WEAK CUresult cuLinkComplete(CUlinkState s, void **cubin, size_t *size) { (void)s, (void)cubin, (void)size; UNSUPPORTED; }
WEAK CUresult cuLinkDestroy(CUlinkState s) { (void)s; UNSUPPORTED; }

/* ---- stream memory operations */
WEAK CUresult cuStreamWaitValue32(CUstream s, CUdeviceptr a, cuuint32_t v, unsigned f) { (void)s, (void)a, (void)v, (void)f; UNSUPPORTED; }
WEAK CUresult cuStreamWaitValue32_v2(CUstream s, CUdeviceptr a, cuuint32_t v, unsigned f) { (void)s, (void)a, (void)v, (void)f; UNSUPPORTED; }
WEAK CUresult cuStreamBatchMemOp(CUstream s, unsigned n, void *p, unsigned f) { (void)s, (void)n, (void)p, (void)f; UNSUPPORTED; }
WEAK CUresult cuStreamBatchMemOp_v2(CUstream s, unsigned n, CUstreamBatchMemOpParams *p, unsigned f) { (void)s, (void)n, (void)p, (void)f; UNSUPPORTED; }
