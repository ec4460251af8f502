/* cudacompat internals shared by its translation units (not part of the public API). */
#pragma once

#include "cudacompat.h"

/* the installed backend, or NULL before cudacompat_install() */
const struct cudacompat_backend *cc_backend(void);

/* formatted line to the backend's trace hook, if any */
void cc_tracef(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* context-local storage (cc_cls.c) */
CUresult cc_cls_insert(CUcontext ctx, void *key, void *value, void (*dtor)(CUcontext, void *, void *));
CUresult cc_cls_remove(CUcontext ctx, void *key);
CUresult cc_cls_get(void **value, CUcontext ctx, void *key);

/* the runtime's driver handshake (cc_integrity.c): out receives 16 bytes */
CUresult cc_integrity_answer(unsigned runtime_version, uint64_t unix_time_s, unsigned char out[16],
                             const void *cudart_table, const void *integrity_table, const void *slot_fn);

/* HMAC-MD2 (RFC 2104 over RFC 1319), exposed for the known-answer self test */
void cc_hmac_md2(const unsigned char key[16], const void *msg, size_t len, unsigned char out[16]);
