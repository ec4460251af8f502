/*
 * Module images handed to the driver carry no length: find it from the format, as the driver
 * must. Supported: ELF cubins (the furthest section or header), fatbin containers (header + fat
 * size), fatbin wrappers (magic + pointer to the container, as the toolchain emits them) and
 * NUL-terminated PTX text. Anything else is CUDA_ERROR_INVALID_IMAGE.
 */
#include <elf.h>
#include <string.h>

#include "client.h"

#define FATBIN_MAGIC 0xBA55ED50u
#define FATBIN_WRAPPER_MAGIC 0x466243B1u
#define MAX_IMAGE (1ull << 31)

static uint32_t rd32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static size_t elf_size(const unsigned char *p)
{
    Elf64_Ehdr eh;
    memcpy(&eh, p, sizeof eh);
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_shentsize != sizeof(Elf64_Shdr))
        return 0;
    uint64_t end = eh.e_ehsize;
    if (eh.e_phoff && eh.e_phnum)
        end = eh.e_phoff + (uint64_t)eh.e_phnum * eh.e_phentsize > end ? eh.e_phoff + (uint64_t)eh.e_phnum * eh.e_phentsize : end;
    uint64_t sh_end = eh.e_shoff + (uint64_t)eh.e_shnum * eh.e_shentsize;
    if (eh.e_shoff > MAX_IMAGE || sh_end > MAX_IMAGE)
        return 0;
    if (sh_end > end)
        end = sh_end;
    for (unsigned i = 0; i < eh.e_shnum; i++) {
        Elf64_Shdr sh;
        memcpy(&sh, p + eh.e_shoff + (uint64_t)i * sizeof sh, sizeof sh);
        if (sh.sh_type != SHT_NOBITS && sh.sh_offset + sh.sh_size > end)
            end = sh.sh_offset + sh.sh_size;
    }
    return end > MAX_IMAGE ? 0 : (size_t)end;
}

size_t xpur_image_size(const void *image, const void **start)
{
    const unsigned char *p = image;
    *start = image;
    uint32_t magic = rd32(p);
    if (magic == FATBIN_WRAPPER_MAGIC) { /* { magic, version, const void *data, ... } */
        const void *data;
        memcpy(&data, p + 8, sizeof data);
        if (!data)
            return 0;
        p = data;
        *start = data;
        magic = rd32(p);
    }
    if (magic == FATBIN_MAGIC) { /* { magic, u16 version, u16 header size, u64 fat size } */
        uint16_t hsize;
        uint64_t fsize;
        memcpy(&hsize, p + 6, 2);
        memcpy(&fsize, p + 8, 8);
        return hsize + fsize > MAX_IMAGE ? 0 : (size_t)(hsize + fsize);
    }
    if (memcmp(p, ELFMAG, SELFMAG) == 0)
        return elf_size(p);
    size_t n = strnlen((const char *)p, MAX_IMAGE);
    if (n && n < MAX_IMAGE && (memmem(p, n, ".version", 8) || memmem(p, n, ".target", 7)))
        return n + 1; /* PTX text with its terminator */
    return 0;
}
