/*
 * Wire layouts of the catalogue's `custom` entries, in one place for both sides (client_custom.c
 * encodes, srv_custom.c decodes). All integers little-endian (xpur_wire.h). "id" is a handle id.
 *
 *  context       PrimaryCtxRetain  in: i32 dev                         out: u64 ctx id
 *                CtxCreate_v2      in: u32 flags, i32 dev              out: u64 ctx id
 *                CtxDestroy_v2     in: u64 ctx id
 *                CtxSetCurrent     in: u64 ctx id (0: none)            (sent lazily, fire-and-forget)
 *  memory        MemAllocPitch_v2  in: u64 width, u64 height, u32 elem out: u64 ptr, u64 pitch
 *                PointerGetAttribute(s)  in: u32 n, n x i32 attr, u64 ptr   out: n x (i32 status, u64 value)
 *                MemPool{Set,Get}Attribute  in: u64 pool, i32 attr [, u64 value]  out (get): u64 value
 *                MemSetAccess      in: u64 ptr, u64 size, u32 n, n x CUmemAccessDesc
 *  copies        HtoD*             in: u64 dst, u64 bytes, u64 stream; bulk: the bytes (fire-and-forget)
 *                DtoH*             in: u64 src, u64 bytes, u64 stream; reply bulk: bytes + i32 final status
 *                2D (any)          in: CUDA_MEMCPY2D with host pointers zeroed and memory types resolved,
 *                                  u64 stream; H2D rows packed in the bulk; D2H rows packed in the reply
 *                                  bulk (+ i32 final status)
 *  capture       StreamGetCaptureInfo_v2/_v3  in: u64 stream  out: i32 status, u64 id, u64 graph id
 *                ThreadExchangeStreamCaptureMode  in: i32 mode  out: i32 previous mode
 *                StreamAddCallback/LaunchHostFunc  in: u64 stream (the server synchronises the stream,
 *                                  the client then runs the callback)
 *  modules       every load        in: u8 kind, 32 B SHA-256, u64 size; bulk: the image or nothing
 *                                  out: u64 module/library id; status XPUR_STATUS_NEED_IMAGE asks for
 *                                  the image (the client resends the call with it)
 *                GetFunction / LibraryGetKernel  in: u64 module/library id, string name
 *                KernelGetFunction in: u64 kernel id
 *                                  out: u64 id, u32 nparams (XPUR_PARAMS_UNKNOWN), nparams x (u32 offset,
 *                                  u32 size)
 *  launches      LaunchKernel / Cooperative  in: u64 function id, 6 x u32 grid/block, u32 shared bytes,
 *                                  u64 stream, u32 flags (XPUR_LAUNCH_*), u32 n bytes, the packed
 *                                  parameter buffer (layout from GetFunction, or the caller's `extra`)
 *                LaunchKernelEx    the same, then u32 nattrs, nattrs x CUlaunchAttribute (event handles
 *                                  as ids)
 *                OccupancyMaxPotentialBlockSize(WithFlags)  in: u64 func, u64 smem, i32 limit, u32 flags
 *                                  out: i32 minGrid, i32 block
 *  graphs        GraphInstantiateWithParams  in: u64 graph, u64 flags, u64 upload stream
 *                                  out: u64 exec id, i32 result
 *                Device{Get,Set}GraphMemAttribute  in: i32 dev, i32 attr [, u64 value]  out: u64 value
 */
#ifndef XPUR_CUSTOM_WIRE_H
#define XPUR_CUSTOM_WIRE_H

#include <stdint.h>

enum xpur_image_kind { XPUR_IMAGE_MODULE = 1, XPUR_IMAGE_LIBRARY = 2, XPUR_IMAGE_FATBINARY = 3 };

/* reply status (never returned to applications): the module image is not cached, send it */
#define XPUR_STATUS_NEED_IMAGE 0x7fff0001
#define XPUR_PARAMS_UNKNOWN 0xffffffffu
#define XPUR_LAUNCH_EXTRA_BUFFER 1u /* the caller passed CU_LAUNCH_PARAM_BUFFER_POINTER */
#define XPUR_MAX_POINTER_ATTRS 32
#define XPUR_MAX_ACCESS_DESCS 64
#define XPUR_MAX_LAUNCH_ATTRS 32

/* bytes of each CUpointer_attribute value (0: not supported remotely) */
static inline unsigned xpur_pointer_attr_size(int attr)
{
    switch (attr) {
    case 1:  /* CONTEXT (translated to an id) */
    case 3:  /* DEVICE_POINTER */
    case 4:  /* HOST_POINTER (always NULL for server memory) */
    case 7:  /* BUFFER_ID */
    case 11: /* RANGE_START_ADDR */
    case 12: /* RANGE_SIZE */
    case 14: /* ALLOWED_HANDLE_TYPES */
    case 17: /* MEMPOOL_HANDLE (translated to an id) */
    case 18: /* MAPPING_SIZE */
    case 19: /* MAPPING_BASE_ADDR */
    case 20: /* MEMORY_BLOCK_ID */
        return 8;
    case 2:  /* MEMORY_TYPE */
    case 6:  /* SYNC_MEMOPS */
    case 8:  /* IS_MANAGED */
    case 9:  /* DEVICE_ORDINAL */
    case 10: /* IS_LEGACY_CUDA_IPC_CAPABLE */
    case 13: /* MAPPED */
    case 15: /* IS_GPU_DIRECT_RDMA_CAPABLE */
    case 16: /* ACCESS_FLAGS */
    case 21: /* IS_HW_DECOMPRESS_CAPABLE */
        return 4;
    default: /* 5 P2P_TOKENS: no peer access across the network */
        return 0;
    }
}

/* bytes of each CUmemPool_attribute value */
static inline unsigned xpur_mempool_attr_size(int attr)
{
    switch (attr) {
    case 1: /* REUSE_FOLLOW_EVENT_DEPENDENCIES */
    case 2: /* REUSE_ALLOW_OPPORTUNISTIC */
    case 3: /* REUSE_ALLOW_INTERNAL_DEPENDENCIES */
        return 4;
    case 4: /* RELEASE_THRESHOLD */
    case 5: /* RESERVED_MEM_CURRENT */
    case 6: /* RESERVED_MEM_HIGH */
    case 7: /* USED_MEM_CURRENT */
    case 8: /* USED_MEM_HIGH */
        return 8;
    default:
        return 0;
    }
}

#endif
