/* SHA-256, the module images' identity on both ends: the client names an image by it, the daemon
 * checks the bytes it receives (and its disk cache) against it. */
#ifndef XPUR_DIGEST_H
#define XPUR_DIGEST_H

#include <openssl/evp.h>
#include <stddef.h>

/* 0, else -1 */
static inline int xpur_sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len = 0;
    return EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) == 1 && len == 32 ? 0 : -1;
}

#endif
