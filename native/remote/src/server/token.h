/*
 * Session tokens: short-lived, signed by the control plane for one allocation.
 *
 *   xpr1.<base64url(claims)>.<base64url(Ed25519 signature over "xpr1.<base64url(claims)>")>
 *
 * claims are "key=value" lines: v=1, sub (tenant), alloc (allocation id), card (card UUID),
 * node (the daemon's node name: the audience), exp and nbf (Unix seconds), jti (random id).
 * Minted by xpupool.remote.tokens (Python, `cryptography`); verified here with OpenSSL libcrypto.
 */
#ifndef XPUR_TOKEN_H
#define XPUR_TOKEN_H

#include <stdint.h>

typedef struct evp_pkey_st EVP_PKEY;

struct xpur_claims {
    char sub[128];
    char alloc[128];
    char card[96];
    char node[128];
    char jti[64];
    int64_t exp, nbf;
};

enum xpur_token_result {
    XPUR_TOKEN_OK = 0,
    XPUR_TOKEN_MALFORMED,
    XPUR_TOKEN_BAD_SIGNATURE,
    XPUR_TOKEN_EXPIRED,
    XPUR_TOKEN_NOT_YET_VALID,
    XPUR_TOKEN_WRONG_NODE,
};

/* load every Ed25519 public key in a PEM file (rotation: several keys); returns the count */
int xpur_token_load_keys(const char *pem_path, EVP_PKEY **keys, int max);
/* verify signature, then claims; now_s: wall clock (Unix seconds); node: this daemon's node name */
enum xpur_token_result xpur_token_verify(const char *token, EVP_PKEY *const *keys, int nkeys, int64_t now_s,
                                         const char *node, struct xpur_claims *out);
const char *xpur_token_result_str(enum xpur_token_result r);

#endif
