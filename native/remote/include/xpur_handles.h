/*
 * Client-visible handle ids (shared by client and daemon).
 *
 * A handle the application sees (CUstream, CUevent, CUmodule...) is a 64-bit id, never a server
 * address: bits 56..63 hold the kind tag (protocol.handles in the catalogue), bit 55 is set when
 * the daemon assigned the id (objects the driver returns: modules, functions, pools...) and clear
 * when the client did (objects created fire-and-forget: streams, events, graphs), bits 0..54 a
 * counter that is never reused within a session. The null handle (0) and the stream sentinels
 * CU_STREAM_LEGACY (1) / CU_STREAM_PER_THREAD (2) pass through unchanged.
 */
#ifndef XPUR_HANDLES_H
#define XPUR_HANDLES_H

#include <stdint.h>

#define XPUR_H_KIND_SHIFT 56
#define XPUR_H_SERVER_BIT (1ull << 55)
#define XPUR_H_COUNTER_MASK ((1ull << 55) - 1)

static inline unsigned xpur_h_kind(uint64_t id) { return (unsigned)(id >> XPUR_H_KIND_SHIFT); }
static inline uint64_t xpur_h_make(unsigned kind, int server, uint64_t counter)
{
    return ((uint64_t)kind << XPUR_H_KIND_SHIFT) | (server ? XPUR_H_SERVER_BIT : 0) | (counter & XPUR_H_COUNTER_MASK);
}
/* stream sentinels and the null handle: not table entries */
static inline int xpur_h_is_special(uint64_t id) { return id <= 2; }

#endif
