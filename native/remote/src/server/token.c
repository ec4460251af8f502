#include "token.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TOKEN 4096
#define CLOCK_SKEW_S 30

int xpur_token_load_keys(const char *pem_path, EVP_PKEY **keys, int max)
{
    FILE *f = fopen(pem_path, "r");
    if (!f)
        return 0;
    int n = 0;
    while (n < max) {
        EVP_PKEY *k = PEM_read_PUBKEY(f, NULL, NULL, NULL);
        if (!k)
            break;
        if (EVP_PKEY_id(k) != EVP_PKEY_ED25519) {
            EVP_PKEY_free(k);
            continue;
        }
        keys[n++] = k;
    }
    fclose(f);
    return n;
}

static int b64url_val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* unpadded base64url; returns decoded length or -1 */
static long b64url_decode(const char *s, size_t n, unsigned char *out, size_t cap)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_val(s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits >= 6)
        return -1;
    return (long)o;
}

static int claim(const char *claims, const char *key, char *dst, size_t cap)
{
    size_t kl = strlen(key);
    for (const char *p = claims; *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
            size_t vl = len - kl - 1;
            if (vl >= cap)
                return -1;
            memcpy(dst, p + kl + 1, vl);
            dst[vl] = 0;
            return 0;
        }
        p = e ? e + 1 : p + len;
    }
    return -1;
}

static int claim_int(const char *claims, const char *key, int64_t *v)
{
    char buf[32], *end;
    if (claim(claims, key, buf, sizeof buf) || !buf[0])
        return -1;
    long long x = strtoll(buf, &end, 10);
    if (*end)
        return -1;
    *v = x;
    return 0;
}

enum xpur_token_result xpur_token_verify(const char *token, EVP_PKEY *const *keys, int nkeys, int64_t now_s,
                                         const char *node, struct xpur_claims *out)
{
    memset(out, 0, sizeof *out);
    size_t len = strnlen(token, MAX_TOKEN + 1);
    if (len > MAX_TOKEN || strncmp(token, "xpr1.", 5) != 0)
        return XPUR_TOKEN_MALFORMED;
    const char *dot = strchr(token + 5, '.');
    if (!dot || strchr(dot + 1, '.'))
        return XPUR_TOKEN_MALFORMED;
    unsigned char sig[64];
    long sl = b64url_decode(dot + 1, len - (size_t)(dot + 1 - token), sig, sizeof sig);
    if (sl != 64)
        return XPUR_TOKEN_MALFORMED;
    size_t signed_len = (size_t)(dot - token);
    int ok = 0;
    for (int i = 0; i < nkeys && !ok; i++) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        if (md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, keys[i]) == 1 &&
            EVP_DigestVerify(md, sig, 64, (const unsigned char *)token, signed_len) == 1)
            ok = 1;
        EVP_MD_CTX_free(md);
    }
    if (!ok)
        return XPUR_TOKEN_BAD_SIGNATURE;
    /* signature good: now the claims are the control plane's words */
    char claims[MAX_TOKEN];
    long cl = b64url_decode(token + 5, (size_t)(dot - token - 5), (unsigned char *)claims, sizeof claims - 1);
    if (cl < 0)
        return XPUR_TOKEN_MALFORMED;
    claims[cl] = 0;
    if (memchr(claims, 0, (size_t)cl))
        return XPUR_TOKEN_MALFORMED;
    char v[8];
    if (claim(claims, "v", v, sizeof v) || strcmp(v, "1") || claim(claims, "sub", out->sub, sizeof out->sub) ||
        claim(claims, "alloc", out->alloc, sizeof out->alloc) || claim(claims, "card", out->card, sizeof out->card) ||
        claim(claims, "node", out->node, sizeof out->node) || claim(claims, "jti", out->jti, sizeof out->jti) ||
        claim_int(claims, "exp", &out->exp) || !out->alloc[0] || !out->card[0])
        return XPUR_TOKEN_MALFORMED;
    if (claim_int(claims, "nbf", &out->nbf))
        out->nbf = 0;
    if (now_s >= out->exp)
        return XPUR_TOKEN_EXPIRED;
    if (out->nbf > now_s + CLOCK_SKEW_S)
        return XPUR_TOKEN_NOT_YET_VALID;
    if (node && node[0] && strcmp(node, out->node) != 0)
        return XPUR_TOKEN_WRONG_NODE;
    return XPUR_TOKEN_OK;
}

const char *xpur_token_result_str(enum xpur_token_result r)
{
    switch (r) {
    case XPUR_TOKEN_OK:
        return "ok";
    case XPUR_TOKEN_MALFORMED:
        return "malformed token";
    case XPUR_TOKEN_BAD_SIGNATURE:
        return "token signature not valid for this daemon";
    case XPUR_TOKEN_EXPIRED:
        return "token expired";
    case XPUR_TOKEN_NOT_YET_VALID:
        return "token not yet valid";
    case XPUR_TOKEN_WRONG_NODE:
        return "token issued for another node";
    }
    return "?";
}
