/*
 * Fuzzes the daemon's frame decoder with the production code path: xpur_session_serve() reads
 * mutated frames from an in-memory connection, validates headers, runs every generated and
 * hand-written argument decoder and the handle/range checks, and calls a null backend (no driver,
 * labelled TEST DOUBLE in its generated file). Then the same for session tokens.
 *
 * Checks: no crash (ASan/UBSan abort on any memory error), every frame the session refuses leaves
 * the heap exactly as it was (nothing allocated before validation), and the loop really exercised
 * acceptance and refusal. Usage: fuzz_frames [frames] [seed] -> prints a summary line.
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"
#include "token.h"
#include "xpur_custom_wire.h"

/* the sanitizer runtime's heap counter (GCC ships the runtime, not always the header) */
size_t __sanitizer_get_current_allocated_bytes(void);

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static uint16_t k_apis[XPUR_API_ID_LIMIT];
static unsigned k_napis;

/* hand-written seeds for custom entries (layouts: xpur_custom_wire.h) */
static size_t custom_seed(uint16_t api, struct xpur_wbuf *w, uint8_t *bulk, uint32_t *bulk_len)
{
    *bulk_len = 0;
    switch (api) {
    case XPUR_API_cuDevicePrimaryCtxRetain:
        xpur_put_i32(w, 0);
        return 1;
    case XPUR_API_cuCtxSetCurrent:
    case XPUR_API_cuCtxDestroy_v2:
    case XPUR_API_cuStreamAddCallback:
    case XPUR_API_cuStreamGetCaptureInfo_v3:
        xpur_put_u64(w, 0);
        return 1;
    case XPUR_API_cuMemcpyHtoD_v2:
    case XPUR_API_cuMemcpyHtoDAsync_v2:
        xpur_put_u64(w, 0x1111111111111111ull);
        xpur_put_u64(w, 64);
        xpur_put_u64(w, 0);
        memset(bulk, 0x5a, 64);
        *bulk_len = 64;
        return 1;
    case XPUR_API_cuMemcpyDtoH_v2:
    case XPUR_API_cuMemcpyDtoHAsync_v2:
        xpur_put_u64(w, 0x1111111111111111ull);
        xpur_put_u64(w, 64);
        xpur_put_u64(w, 0);
        return 1;
    case XPUR_API_cuMemcpyAsync:
        xpur_put_u8(w, 3);
        xpur_put_u64(w, 0x1111111111111111ull);
        xpur_put_u64(w, 0x1111111111111111ull);
        xpur_put_u64(w, 16);
        xpur_put_u64(w, 0);
        return 1;
    case XPUR_API_cuModuleLoadData: {
        static const char ptx[] = ".version 8.0\n.target sm_80\n";
        unsigned int len = 0;
        unsigned char sha[32];
        EVP_Digest(ptx, sizeof ptx, sha, &len, EVP_sha256(), NULL);
        xpur_put_u8(w, XPUR_IMAGE_MODULE);
        xpur_put_bytes(w, sha, 32);
        xpur_put_u64(w, sizeof ptx);
        memcpy(bulk, ptx, sizeof ptx);
        *bulk_len = sizeof ptx;
        return 1;
    }
    case XPUR_API_cuModuleGetFunction:
        xpur_put_u64(w, 0);
        xpur_put_str(w, "kernel", 16);
        return 1;
    case XPUR_API_cuLaunchKernel:
    case XPUR_API_cuLaunchKernelEx:
        xpur_put_u64(w, 0);
        for (int i = 0; i < 6; i++)
            xpur_put_u32(w, 1);
        xpur_put_u32(w, 0);
        xpur_put_u64(w, 0);
        xpur_put_u32(w, XPUR_LAUNCH_EXTRA_BUFFER);
        xpur_put_u32(w, 16);
        xpur_put_u64(w, 7);
        xpur_put_u64(w, 9);
        if (api == XPUR_API_cuLaunchKernelEx) {
            CUlaunchAttribute a;
            memset(&a, 0, sizeof a);
            a.id = CU_LAUNCH_ATTRIBUTE_PRIORITY;
            xpur_put_u32(w, 1);
            xpur_put_bytes(w, &a, sizeof a);
        }
        return 1;
    case XPUR_API_cuPointerGetAttributes:
        xpur_put_u32(w, 2);
        xpur_put_i32(w, CU_POINTER_ATTRIBUTE_MEMORY_TYPE);
        xpur_put_i32(w, CU_POINTER_ATTRIBUTE_CONTEXT);
        xpur_put_u64(w, 0x1111111111111111ull);
        return 1;
    case XPUR_API_cuMemcpy2D_v2: {
        CUDA_MEMCPY2D c;
        memset(&c, 0, sizeof c);
        c.srcMemoryType = CU_MEMORYTYPE_HOST;
        c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
        c.dstDevice = 0x1111111111111111ull;
        c.dstPitch = 64;
        c.WidthInBytes = 16;
        c.Height = 2;
        xpur_put_bytes(w, &c, sizeof c);
        xpur_put_u64(w, 0);
        memset(bulk, 1, 32);
        *bulk_len = 32;
        return 1;
    }
    case XPUR_API_cuMemPoolSetAttribute:
        xpur_put_u64(w, 0);
        xpur_put_i32(w, 4);
        xpur_put_u64(w, 1 << 20);
        return 1;
    default:
        return 0;
    }
}

static size_t build_frame(uint8_t *buf, size_t cap, uint64_t *counter, uint64_t req, uint32_t session)
{
    struct xpur_wbuf w;
    xpur_wbuf_init(&w, buf + XPUR_HDR_SIZE, cap - XPUR_HDR_SIZE - 4096);
    uint8_t bulk[4096];
    uint32_t bulk_len = 0;
    uint16_t api = 0;
    for (int tries = 0; tries < 8 && !api; tries++) {
        uint16_t cand = k_apis[rnd() % k_napis];
        w.p = buf + XPUR_HDR_SIZE;
        if (xpur_fuzz_seed(cand, &w, counter) || custom_seed(cand, &w, bulk, &bulk_len))
            api = cand;
    }
    uint32_t len = (uint32_t)(w.p - (buf + XPUR_HDR_SIZE));
    uint16_t flags = xpur_api_info[api].mode == XPUR_M_ASYNC ? XPUR_F_NO_REPLY : 0;
    struct xpur_hdr h = {XPUR_MAGIC, XPUR_VERSION, XPUR_T_CALL, flags, api, 0, len, bulk_len, session, req};
    if (rnd() % 16 == 0) { /* a ping instead */
        h.type = XPUR_T_PING;
        h.api = 0;
        h.flags = 0;
        h.bulk = 0;
        bulk_len = 0;
    }
    xpur_hdr_encode(buf, &h);
    memcpy(buf + XPUR_HDR_SIZE + len, bulk, bulk_len);
    return XPUR_HDR_SIZE + len + bulk_len;
}

static size_t mutate(uint8_t *buf, size_t n, size_t cap)
{
    unsigned k = 1 + (unsigned)(rnd() % 4);
    for (unsigned i = 0; i < k; i++) {
        switch (rnd() % 8) {
        case 0: /* flip a bit anywhere */
            if (n)
                buf[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
            break;
        case 1: /* a random byte in the header */
            buf[rnd() % XPUR_HDR_SIZE] = (uint8_t)rnd();
            break;
        case 2: { /* a hostile length or bulk length */
            static const uint32_t v[] = {0, 1, 7, 8, 0xffff, 0x10000, 0x10001, 0x7fffffff, 0xffffffff, 64 << 20};
            xpur_le_put(buf + (rnd() % 2 ? 16 : 20), v[rnd() % 10], 4);
            break;
        }
        case 3: /* truncate */
            n = n > XPUR_HDR_SIZE ? XPUR_HDR_SIZE + rnd() % (n - XPUR_HDR_SIZE + 1) : rnd() % (n + 1);
            break;
        case 4: /* extend with noise */
            for (unsigned j = 0, m = (unsigned)(rnd() % 64); j < m && n < cap; j++)
                buf[n++] = (uint8_t)rnd();
            break;
        case 5: /* another api id */
            xpur_le_put(buf + 10, rnd() % 1100, 2);
            break;
        case 6: /* a random 64-bit value inside the arguments (handles, pointers, sizes) */
            if (n >= XPUR_HDR_SIZE + 8)
                xpur_le_put(buf + XPUR_HDR_SIZE + rnd() % (n - XPUR_HDR_SIZE - 7), rnd(), 8);
            break;
        default: /* a random 32-bit value inside the arguments (counts, lengths) */
            if (n >= XPUR_HDR_SIZE + 4)
                xpur_le_put(buf + XPUR_HDR_SIZE + rnd() % (n - XPUR_HDR_SIZE - 3), rnd() % 3 ? rnd() % 70000 : rnd(), 4);
        }
    }
    return n;
}

/* heap size when the session starts reading its current frame */
static size_t g_frame_heap;
static void on_frame(struct xpur_session *s)
{
    (void)s;
    g_frame_heap = __sanitizer_get_current_allocated_bytes();
}

static long fuzz_tokens(long n)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    EVP_PKEY *keys[1] = {k};
    long accepted = 0;
    const char *base = "xpr1.dj0xCnN1Yj10CmFsbG9jPWEKY2FyZD1jCm5vZGU9bgpleHA9OTk5OTk5OTk5OQpqdGk9eAo."
                       "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    char tok[512];
    for (long i = 0; i < n; i++) {
        size_t len = strlen(base);
        memcpy(tok, base, len + 1);
        for (unsigned j = 0, m = 1 + (unsigned)(rnd() % 6); j < m; j++) {
            size_t at = rnd() % len;
            tok[at] = (char)(rnd() % 3 ? "xpr1.=-_AZaz09\n"[rnd() % 15] : (char)rnd());
            if (rnd() % 20 == 0)
                tok[at] = 0;
        }
        struct xpur_claims cl;
        accepted += xpur_token_verify(tok, keys, 1, 1000, "n", &cl) == XPUR_TOKEN_OK;
    }
    EVP_PKEY_free(k);
    return accepted;
}

int main(int argc, char **argv)
{
    long frames = argc > 1 ? atol(argv[1]) : 1000000;
    rng ^= argc > 2 ? strtoull(argv[2], NULL, 10) * 0x2545f4914f6cdd1dull : 0;
    for (unsigned i = 1; i < XPUR_API_ID_LIMIT; i++)
        if (xpur_api_info[i].name)
            k_apis[k_napis++] = (uint16_t)i;
    static struct xpur_backend be;
    xpur_null_backend(&be);
    struct xpur_session_config cfg = {.max_bulk = 1u << 20, .keepalive_ms = 0, .idle_timeout_ms = 0};
    static struct xpur_session s;
    if (xpur_session_init(&s, &cfg))
        return 1;
    s.be = &be;
    s.id = 0x12345678u;
    s.modules = xpur_module_cache_new(NULL);
    xpur_frame_hook = on_frame;
    uint64_t counter = 0, req = 0;
    long refused = 0, served = 0, leaks = 0;
    static uint8_t buf[256 * 1024];
    for (long i = 0; i < frames; i++) {
        s.last_request = 0; /* request ids are checked per connection: each buffer is a fresh stream */
        size_t n = build_frame(buf, sizeof buf, &counter, ++req, s.id);
        if (rnd() % 5) /* 80 % mutated, 20 % valid frames that move the session's state along */
            n = mutate(buf, n, sizeof buf);
        xpur_conn_mem(&s.conn, buf, n);
        s.rlen = s.roff = 0;
        s.ending = s.end_after_reply = 0;
        atomic_store(&s.stop, 0);
        uint64_t refusals = s.refusals;
        xpur_session_serve(&s);
        size_t before = g_frame_heap; /* the refused frame, if any, was the last one read */
        size_t after = __sanitizer_get_current_allocated_bytes();
        if (s.refusals != refusals) {
            refused++;
            if (after != before) {
                leaks++;
                if (leaks < 5)
                {
                    struct xpur_hdr h;
                    xpur_hdr_decode(buf, &h);
                    fprintf(stderr, "frame %ld (type %u api %u len %u bulk %u n %zu): refused but the heap changed by "
                            "%ld bytes\n", i, h.type, h.api, h.length, h.bulk, n, (long)after - (long)before);
                }
            }
        } else {
            served++;
        }
    }
    long tokens = frames / 10;
    long tok_ok = fuzz_tokens(tokens);
    xpur_session_destroy(&s);
    printf("frames %ld served %ld refused %ld alloc_before_validation %ld tokens %ld token_accepted %ld\n", frames,
           served, refused, leaks, tokens, tok_ok);
    return leaks || served == 0 || refused == 0 || tok_ok != 0 ? 1 : 0;
}
