/*
 * cudacompat: the runtime's driver handshake (export table d4082055-..., slot 1).
 *
 * At start-up the runtime calls slot 1 three times with (runtime version + 0, 1, 2, unix time,
 * &out[16]) and compares the answers with its own computation:
 *   version % 10 == 0: a fixed 128-bit value; % 10 == 1: the same with byte 7 = 24;
 *   version % 10 == 2: HMAC-MD2 with a fixed 16-byte key over
 *     u32 driver version, u32 runtime version, u32 pid, u32 thread (low 32 bits of pthread_self),
 *     u64 address of the CUDART_INTERFACE table, of this table and of this slot function,
 *     u64 unix time, then per device: 16-byte UUID, u32 PCI domain, bus and device id.
 * The fixed values, the key and the message layout come from public descriptions of the check
 * (ZLUDA documents it as the runtime's "anti-ZLUDA" hash, with a Windows thread id); the Linux
 * thread id, and that all three calls must match, were found by experiment against the real
 * libcudart 12.4.127 and 12.9.79. MD2 follows RFC 1319, HMAC RFC 2104 (block = key = 16 bytes).
 */
#define _GNU_SOURCE
#include "cc_internal.h"

#include <pthread.h>
#include <string.h>
#include <unistd.h>

/* RFC 1319, "PI_SUBST": a permutation of 0..255 built from the digits of pi */
static const unsigned char MD2_S[256] = {
    41,  46,  67,  201, 162, 216, 124, 1,   61,  54,  84,  161, 236, 240, 6,   19,  98,  167, 5,   243, 192, 199,
    115, 140, 152, 147, 43,  217, 188, 76,  130, 202, 30,  155, 87,  60,  253, 212, 224, 22,  103, 66,  111, 24,
    138, 23,  229, 18,  190, 78,  196, 214, 218, 158, 222, 73,  160, 251, 245, 142, 187, 47,  238, 122, 169, 104,
    121, 145, 21,  178, 7,   63,  148, 194, 16,  137, 11,  34,  95,  33,  128, 127, 93,  154, 90,  144, 50,  39,
    53,  62,  204, 231, 191, 247, 151, 3,   255, 25,  48,  179, 72,  165, 181, 209, 215, 94,  146, 42,  172, 86,
    170, 198, 79,  184, 56,  210, 150, 164, 125, 182, 118, 252, 107, 226, 156, 116, 4,   241, 69,  157, 112, 89,
    100, 113, 135, 32,  134, 91,  207, 101, 230, 45,  168, 2,   27,  96,  37,  173, 174, 176, 185, 246, 28,  70,
    97,  105, 52,  64,  126, 15,  85,  71,  163, 35,  221, 81,  175, 58,  195, 92,  249, 206, 186, 197, 234, 38,
    44,  83,  13,  110, 133, 40,  132, 9,   211, 223, 205, 244, 65,  129, 77,  82,  106, 220, 55,  200, 108, 193,
    171, 250, 36,  225, 123, 8,   12,  189, 177, 74,  120, 136, 149, 139, 227, 99,  232, 109, 233, 203, 213, 254,
    59,  0,   29,  57,  242, 239, 183, 14,  102, 88,  208, 228, 166, 119, 114, 248, 235, 117, 75,  10,  49,  68,
    80,  180, 143, 237, 31,  26,  219, 153, 141, 51,  159, 17,  131, 20,
};

struct md2 {
    unsigned char state[48], checksum[16], block[16];
    unsigned used, last;
};

static void md2_compress(struct md2 *m, const unsigned char *in, int update_checksum)
{
    for (int j = 0; j < 16; j++) {
        m->state[16 + j] = in[j];
        m->state[32 + j] = (unsigned char)(in[j] ^ m->state[j]);
        if (update_checksum)
            m->last = m->checksum[j] ^= MD2_S[in[j] ^ m->last];
    }
    unsigned t = 0;
    for (unsigned round = 0; round < 18; round++) {
        for (int k = 0; k < 48; k++)
            t = m->state[k] ^= MD2_S[t];
        t = (t + round) & 0xffu;
    }
}

static void md2_update(struct md2 *m, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len--) {
        m->block[m->used++] = *p++;
        if (m->used == 16) {
            md2_compress(m, m->block, 1);
            m->used = 0;
        }
    }
}

static void md2_final(struct md2 *m, unsigned char out[16])
{
    unsigned char pad[16];
    unsigned n = 16 - m->used;
    memset(pad, (int)n, sizeof pad);
    md2_update(m, pad, n);
    unsigned char sum[16];
    memcpy(sum, m->checksum, sizeof sum);
    md2_compress(m, sum, 0);
    memcpy(out, m->state, 16);
}

void cc_hmac_md2(const unsigned char key[16], const void *msg, size_t len, unsigned char out[16])
{
    struct md2 m;
    unsigned char pad[16], inner[16];
    memset(&m, 0, sizeof m);
    for (int i = 0; i < 16; i++)
        pad[i] = key[i] ^ 0x36;
    md2_update(&m, pad, sizeof pad);
    md2_update(&m, msg, len);
    md2_final(&m, inner);
    memset(&m, 0, sizeof m);
    for (int i = 0; i < 16; i++)
        pad[i] = key[i] ^ 0x5c;
    md2_update(&m, pad, sizeof pad);
    md2_update(&m, inner, sizeof inner);
    md2_final(&m, out);
}

static const unsigned char HANDSHAKE_KEY[16] = {0x14, 0x6a, 0xdd, 0xae, 0x53, 0xa9, 0xa7, 0x52,
                                                0xaa, 0x08, 0x41, 0x36, 0x0b, 0xf5, 0x5a, 0x9f};
/* little-endian bytes of the fixed answer for runtime version % 10 == 0 */
static const unsigned char FIXED_ANSWER[16] = {0x5c, 0x67, 0xcb, 0x03, 0x1c, 0x18, 0x41, 0x33,
                                               0xe8, 0xd1, 0x4c, 0x1f, 0xaa, 0x83, 0xd3, 0x8e};

#define MAX_HASHED_DEVICES 64

struct __attribute__((packed)) head {
    uint32_t driver_version, runtime_version, pid, thread;
    uint64_t cudart_table, integrity_table, slot_fn, unix_time_s;
};
struct __attribute__((packed)) device_part {
    unsigned char uuid[16];
    uint32_t pci_domain, pci_bus, pci_device;
};

CUresult cc_integrity_answer(unsigned runtime_version, uint64_t unix_time_s, unsigned char out[16],
                             const void *cudart_table, const void *integrity_table, const void *slot_fn)
{
    const struct cudacompat_backend *b = cc_backend();
    if (!out || !b)
        return CUDA_ERROR_INVALID_VALUE;
    if (runtime_version % 10 < 2) {
        memcpy(out, FIXED_ANSWER, 16);
        if (runtime_version % 10 == 1)
            out[7] = 24;
        return CUDA_SUCCESS;
    }
    int n = 0;
    CUresult rc = b->device_get_count(&n);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (n < 0 || n > MAX_HASHED_DEVICES)
        return CUDA_ERROR_INVALID_VALUE;
    struct {
        struct head h;
        struct device_part d[MAX_HASHED_DEVICES];
    } __attribute__((packed)) msg;
    msg.h.driver_version = (uint32_t)b->driver_version;
    msg.h.runtime_version = runtime_version;
    msg.h.pid = (uint32_t)getpid();
    msg.h.thread = (uint32_t)(uintptr_t)pthread_self();
    msg.h.cudart_table = (uint64_t)(uintptr_t)cudart_table;
    msg.h.integrity_table = (uint64_t)(uintptr_t)integrity_table;
    msg.h.slot_fn = (uint64_t)(uintptr_t)slot_fn;
    msg.h.unix_time_s = unix_time_s;
    for (int d = 0; d < n; d++) {
        CUuuid u;
        int dom = 0, bus = 0, dev = 0;
        if ((rc = b->device_get_uuid(&u, d)) != CUDA_SUCCESS ||
            (rc = b->device_get_attribute(&dom, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, d)) != CUDA_SUCCESS ||
            (rc = b->device_get_attribute(&bus, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, d)) != CUDA_SUCCESS ||
            (rc = b->device_get_attribute(&dev, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, d)) != CUDA_SUCCESS)
            return rc;
        memcpy(msg.d[d].uuid, u.bytes, 16);
        msg.d[d].pci_domain = (uint32_t)dom;
        msg.d[d].pci_bus = (uint32_t)bus;
        msg.d[d].pci_device = (uint32_t)dev;
    }
    cc_hmac_md2(HANDSHAKE_KEY, &msg, sizeof msg.h + (size_t)n * sizeof msg.d[0], out);
    return CUDA_SUCCESS;
}
