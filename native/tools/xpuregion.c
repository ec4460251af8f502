/*
 * Small CLI used by the native tests (the node agent uses the Python writer):
 *   xpuregion create PATH [ndev=1] [mem_mib=N] [req=BP] [lim=BP] [prio=N] [period_us=N]
 *                         [card=PATH] [slot=N] [key=N] [uuid=STR]
 *   xpuregion set PATH [dev=0] key=value...      (live resize, seqlock on generation)
 *   xpuregion get PATH field [dev=0]             (prints one usage/config number)
 *   xpuregion card PATH                          (creates a card region)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "xpushim_region.h"

static void *map(const char *path, size_t size, int create)
{
    int fd = open(path, O_RDWR | (create ? O_CREAT | O_TRUNC : 0), 0644);
    if (fd < 0) { perror(path); exit(2); }
    if (create && ftruncate(fd, (off_t)size) != 0) { perror("ftruncate"); exit(2); }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) { perror("mmap"); exit(2); }
    return p;
}

static const char *arg(int argc, char **argv, const char *k, const char *def)
{
    size_t n = strlen(k);
    for (int i = 3; i < argc; i++)
        if (strncmp(argv[i], k, n) == 0 && argv[i][n] == '=')
            return argv[i] + n + 1;
    return def;
}
static unsigned long long num(int argc, char **argv, const char *k, unsigned long long def)
{
    const char *v = arg(argc, argv, k, NULL);
    return v ? strtoull(v, NULL, 0) : def;
}

static void apply(struct xpu_device_entry *e, int argc, char **argv)
{
    const char *v;
    if ((v = arg(argc, argv, "mem_mib", NULL))) e->mem_limit = strtoull(v, NULL, 0) * 1024ull * 1024ull;
    if ((v = arg(argc, argv, "mem_bytes", NULL))) e->mem_limit = strtoull(v, NULL, 0);
    if ((v = arg(argc, argv, "req", NULL))) e->share_request_bp = (uint32_t)strtoul(v, NULL, 0);
    if ((v = arg(argc, argv, "lim", NULL))) e->share_limit_bp = (uint32_t)strtoul(v, NULL, 0);
    if ((v = arg(argc, argv, "prio", NULL))) e->priority = (uint32_t)strtoul(v, NULL, 0);
    if ((v = arg(argc, argv, "period_us", NULL))) e->period_us = (uint32_t)strtoul(v, NULL, 0);
    if ((v = arg(argc, argv, "slot", NULL))) e->card_slot = (uint32_t)strtoul(v, NULL, 0);
    if ((v = arg(argc, argv, "card", NULL))) snprintf(e->card_path, sizeof e->card_path, "%s", v);
    if ((v = arg(argc, argv, "uuid", NULL))) snprintf(e->uuid, sizeof e->uuid, "%s", v);
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: xpuregion create|set|get|card PATH ...\n"); return 2; }
    const char *cmd = argv[1], *path = argv[2];
    if (strcmp(cmd, "create") == 0) {
        struct xpu_region *r = map(path, sizeof *r, 1);
        memset(r, 0, sizeof *r);
        r->hdr.magic = XPU_REGION_MAGIC;
        r->hdr.version = XPU_REGION_VERSION;
        r->hdr.header_size = sizeof r->hdr;
        r->hdr.total_size = sizeof *r;
        r->hdr.ndevices = (uint32_t)num(argc, argv, "ndev", 1);
        r->hdr.nslots = XPU_MAX_SLOTS;
        r->hdr.device_offset = offsetof(struct xpu_region, dev);
        r->hdr.device_stride = sizeof(struct xpu_device_entry);
        r->hdr.slot_offset = offsetof(struct xpu_region, slot);
        r->hdr.slot_stride = sizeof(struct xpu_slot);
        r->hdr.container_key = num(argc, argv, "key", 1);
        for (uint32_t d = 0; d < r->hdr.ndevices && d < XPU_MAX_DEVICES; d++) {
            r->dev[d].ordinal = d;
            apply(&r->dev[d], argc, argv);
        }
        r->hdr.generation = 2;
        return 0;
    }
    if (strcmp(cmd, "card") == 0) {
        struct xpu_card *c = map(path, sizeof *c, 1);
        memset(c, 0, sizeof *c);
        c->hdr.magic = XPU_CARD_MAGIC;
        c->hdr.version = XPU_CARD_VERSION;
        c->hdr.header_size = sizeof c->hdr;
        c->hdr.total_size = sizeof *c;
        c->hdr.ntenants = XPU_MAX_TENANTS;
        c->hdr.tenant_offset = offsetof(struct xpu_card, tenant);
        c->hdr.tenant_stride = sizeof(struct xpu_card_tenant);
        c->hdr.generation = 2;
        return 0;
    }
    struct xpu_region *r = map(path, sizeof *r, 0);
    unsigned d = (unsigned)num(argc, argv, "dev", 0);
    if (strcmp(cmd, "set") == 0) {
        atomic_fetch_add(&r->hdr.generation, 1); /* odd: writing */
        apply(&r->dev[d], argc, argv);
        atomic_fetch_add(&r->hdr.generation, 1); /* even: done */
        return 0;
    }
    if (strcmp(cmd, "get") == 0 && argc >= 4) {
        const char *f = argv[3];
        struct xpu_device_entry *e = &r->dev[d];
        unsigned long long v;
        if (!strcmp(f, "mem_used")) v = atomic_load(&e->mem_used);
        else if (!strcmp(f, "mem_peak")) v = atomic_load(&e->mem_peak);
        else if (!strcmp(f, "oom_events")) v = atomic_load(&e->oom_events);
        else if (!strcmp(f, "accounting_errors")) v = atomic_load(&e->accounting_errors);
        else if (!strcmp(f, "gpu_time_ns")) v = atomic_load(&e->gpu_time_ns);
        else if (!strcmp(f, "throttle_ns")) v = atomic_load(&e->throttle_ns);
        else if (!strcmp(f, "launches")) v = atomic_load(&e->launches);
        else if (!strcmp(f, "reaped_bytes")) v = atomic_load(&e->reaped_bytes);
        else if (!strcmp(f, "effective_share_bp")) v = atomic_load(&e->effective_share_bp);
        else if (!strcmp(f, "active_slots")) {
            v = 0;
            for (unsigned s = 0; s < XPU_MAX_SLOTS; s++) v += atomic_load(&r->slot[s].state) == XPU_SLOT_ACTIVE;
        } else { fprintf(stderr, "unknown field %s\n", f); return 2; }
        printf("%llu\n", v);
        return 0;
    }
    fprintf(stderr, "bad command\n");
    return 2;
}
