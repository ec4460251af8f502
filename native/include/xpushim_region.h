/*
 * xpushim shared-memory layouts, built from THE single definition xpushim_layout.def
 * (also the source of the Python mirror, see native/tools/gen_layout.py). Read that file
 * for what each file and field is and who writes it.
 */
#ifndef XPUSHIM_REGION_H
#define XPUSHIM_REGION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define XPU_ATOMIC(t) t
#else
#include <stdatomic.h>
#define XPU_ATOMIC(t) _Atomic t
#endif

#define XPU_T_u8 uint8_t
#define XPU_T_u32 uint32_t
#define XPU_T_i32 int32_t
#define XPU_T_u64 uint64_t
#define XPU_T_au32 XPU_ATOMIC(uint32_t)
#define XPU_T_au64 XPU_ATOMIC(uint64_t)
#define XPU_T_char char

#define XPU_STRUCT(name, size) struct name {
#define XPU_FIELD(type, name) XPU_T_##type name;
#define XPU_ARRAY(type, name, count) XPU_T_##type name[count];
#define XPU_NESTED(type, name, count) struct type name[count];
#define XPU_MEMBER(type, name) struct type name;
#define XPU_END(name) };
#include "xpushim_layout.def"
#undef XPU_STRUCT
#undef XPU_FIELD
#undef XPU_ARRAY
#undef XPU_NESTED
#undef XPU_MEMBER
#undef XPU_END

/* every struct has exactly the size the definition declares (no implicit padding) */
#ifndef __cplusplus
#define XPU_STRUCT(name, size) _Static_assert(sizeof(struct name) == (size), "size of " #name);
#define XPU_FIELD(type, name)
#define XPU_ARRAY(type, name, count)
#define XPU_NESTED(type, name, count)
#define XPU_MEMBER(type, name)
#define XPU_END(name)
#include "xpushim_layout.def"
#undef XPU_STRUCT
#undef XPU_FIELD
#undef XPU_ARRAY
#undef XPU_NESTED
#undef XPU_MEMBER
#undef XPU_END
#endif

#endif /* XPUSHIM_REGION_H */
