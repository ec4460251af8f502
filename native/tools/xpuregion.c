/*
 * Small CLI used by the native tests in place of the node agent (the agent uses the Python
 * writer, xpupool.agent.shim_region); layouts from xpushim_layout.def.
 *   xpuregion create DIR [ndev=1] [mem_mib=N|mem_bytes=N] [reserve_mib=N] [req=BP] [lim=BP]
 *                        [prio=N] [period_us=N] [card=DIR] [slot=N] [key=N] [uuid=STR]
 *            container region directory: config (0644) + usage (0666); with card=, the
 *            tenant slot is assigned in the card policy like the agent does
 *   xpuregion set DIR [dev=0] key=value...     live resize (seqlock on the config generation,
 *                                              and on the card policy when the device has one)
 *   xpuregion get DIR field [dev=0]            one usage/config number
 *   xpuregion pid DIR CONTAINER_PID HOST_PID   record a host pid (the agent resolves them)
 *   xpuregion card DIR [uuid=STR]              card region directory: policy + tenant files
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "xpushim_region.h"

static void *map(const char *dir, const char *name, size_t size, int create, mode_t mode)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | (create ? O_CREAT | O_TRUNC : 0), mode);
    if (fd < 0) { perror(path); exit(2); }
    if (create && (ftruncate(fd, (off_t)size) != 0 || fchmod(fd, mode) != 0)) { perror("ftruncate"); exit(2); }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) { perror("mmap"); exit(2); }
    return p;
}

static void mkdirs(const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) { perror(dir); exit(2); }
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

static void apply(struct xpu_dev_config *e, int argc, char **argv)
{
    const char *v;
    if ((v = arg(argc, argv, "mem_mib", NULL))) e->mem_limit = strtoull(v, NULL, 0) * 1024ull * 1024ull;
    if ((v = arg(argc, argv, "mem_bytes", NULL))) e->mem_limit = strtoull(v, NULL, 0);
    if ((v = arg(argc, argv, "reserve_mib", NULL))) e->process_reserve = strtoull(v, NULL, 0) * 1024ull * 1024ull;
    if ((v = arg(argc, argv, "req", NULL))) e->share_request_bp = (uint32_t)strtoul(v, NULL, 0);
    if ((v = arg(argc, argv, "lim", NULL))) e->share_limit_bp = (uint32_t)strtoul(v, NULL, 0);
    if ((v = arg(argc, argv, "prio", NULL))) e->priority = (uint32_t)strtoul(v, NULL, 0);
    if ((v = arg(argc, argv, "period_us", NULL))) e->period_us = (uint32_t)strtoul(v, NULL, 0);
    if ((v = arg(argc, argv, "slot", NULL))) e->card_slot = (uint32_t)strtoul(v, NULL, 0);
    if ((v = arg(argc, argv, "card", NULL))) snprintf(e->card_dir, sizeof e->card_dir, "%s", v);
    if ((v = arg(argc, argv, "uuid", NULL))) snprintf(e->uuid, sizeof e->uuid, "%s", v);
}

/* what the agent writes into the card policy for a container's device entry */
static void assign_tenant(const struct xpu_dev_config *e, uint64_t key)
{
    if (!e->card_dir[0] || e->card_slot >= XPU_MAX_TENANTS)
        return;
    struct xpu_card_policy *p = map(e->card_dir, XPU_POLICY_FILE, sizeof *p, 0, 0);
    atomic_fetch_add(&p->hdr.generation, 1);
    struct xpu_policy_tenant *t = &p->tenant[e->card_slot];
    t->owner_key = key;
    t->request_bp = e->share_request_bp;
    t->limit_bp = e->share_limit_bp;
    t->priority = e->priority;
    atomic_fetch_add(&p->hdr.generation, 1);
    munmap(p, sizeof *p);
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: xpuregion create|set|get|pid|card DIR ...\n"); return 2; }
    const char *cmd = argv[1], *dir = argv[2];
    if (strcmp(cmd, "create") == 0) {
        mkdirs(dir);
        struct xpu_config *c = map(dir, XPU_CONFIG_FILE, sizeof *c, 1, 0644);
        struct xpu_usage *u = map(dir, XPU_USAGE_FILE, sizeof *u, 1, 0666);
        c->hdr.magic = XPU_CONFIG_MAGIC;
        c->hdr.version = XPU_LAYOUT_VERSION;
        c->hdr.header_size = sizeof c->hdr;
        c->hdr.total_size = sizeof *c;
        c->hdr.ndevices = (uint32_t)num(argc, argv, "ndev", 1);
        c->hdr.device_offset = offsetof(struct xpu_config, dev);
        c->hdr.device_stride = sizeof(struct xpu_dev_config);
        c->hdr.npids = XPU_MAX_SLOTS;
        c->hdr.pid_offset = offsetof(struct xpu_config, pid);
        c->hdr.pid_stride = sizeof(struct xpu_pid_entry);
        c->hdr.container_key = num(argc, argv, "key", 1);
        for (uint32_t d = 0; d < c->hdr.ndevices && d < XPU_MAX_DEVICES; d++) {
            c->dev[d].ordinal = d;
            apply(&c->dev[d], argc, argv);
            assign_tenant(&c->dev[d], c->hdr.container_key);
        }
        c->hdr.generation = 2;
        u->hdr.magic = XPU_USAGE_MAGIC;
        u->hdr.version = XPU_LAYOUT_VERSION;
        u->hdr.header_size = sizeof u->hdr;
        u->hdr.total_size = sizeof *u;
        u->hdr.ndevices = XPU_MAX_DEVICES;
        u->hdr.nslots = XPU_MAX_SLOTS;
        u->hdr.device_offset = offsetof(struct xpu_usage, dev);
        u->hdr.device_stride = sizeof(struct xpu_dev_usage);
        u->hdr.slot_offset = offsetof(struct xpu_usage, slot);
        u->hdr.slot_stride = sizeof(struct xpu_slot);
        return 0;
    }
    if (strcmp(cmd, "card") == 0) {
        mkdirs(dir);
        struct xpu_card_policy *p = map(dir, XPU_POLICY_FILE, sizeof *p, 1, 0644);
        p->hdr.magic = XPU_CARD_MAGIC;
        p->hdr.version = XPU_LAYOUT_VERSION;
        p->hdr.header_size = sizeof p->hdr;
        p->hdr.total_size = sizeof *p;
        p->hdr.ntenants = XPU_MAX_TENANTS;
        p->hdr.tenant_offset = offsetof(struct xpu_card_policy, tenant);
        p->hdr.tenant_stride = sizeof(struct xpu_policy_tenant);
        snprintf(p->hdr.uuid, sizeof p->hdr.uuid, "%s", arg(argc, argv, "uuid", ""));
        p->hdr.generation = 2;
        for (unsigned i = 0; i < XPU_MAX_TENANTS; i++) {
            char name[32];
            snprintf(name, sizeof name, "%s%02u", XPU_TENANT_FILE_PREFIX, i);
            struct xpu_tenant_state *t = map(dir, name, sizeof *t, 1, 0666);
            t->magic = XPU_TENANT_MAGIC;
            t->version = XPU_LAYOUT_VERSION;
            t->slot = i;
            munmap(t, sizeof *t);
        }
        return 0;
    }
    struct xpu_config *c = map(dir, XPU_CONFIG_FILE, sizeof *c, 0, 0);
    struct xpu_usage *u = map(dir, XPU_USAGE_FILE, sizeof *u, 0, 0);
    unsigned d = (unsigned)num(argc, argv, "dev", 0);
    if (d >= XPU_MAX_DEVICES) { fprintf(stderr, "bad device index\n"); return 2; }
    if (strcmp(cmd, "set") == 0) {
        atomic_fetch_add(&c->hdr.generation, 1); /* odd: writing */
        apply(&c->dev[d], argc, argv);
        atomic_fetch_add(&c->hdr.generation, 1); /* even: done */
        assign_tenant(&c->dev[d], c->hdr.container_key);
        return 0;
    }
    if (strcmp(cmd, "pid") == 0 && argc >= 5) {
        int cpid = atoi(argv[3]), hpid = atoi(argv[4]);
        for (unsigned i = 0; i < XPU_MAX_SLOTS; i++)
            if (c->pid[i].pid == 0 || c->pid[i].pid == cpid) {
                c->pid[i].host_pid = hpid;
                c->pid[i].pid = cpid;
                return 0;
            }
        fprintf(stderr, "pid table full\n");
        return 2;
    }
    if (strcmp(cmd, "get") == 0 && argc >= 4) {
        const char *f = argv[3];
        struct xpu_dev_usage *e = &u->dev[d];
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
        else if (!strcmp(f, "mem_limit")) v = c->dev[d].mem_limit;
        else if (!strcmp(f, "active_slots")) {
            v = 0;
            for (unsigned s = 0; s < XPU_MAX_SLOTS; s++) v += atomic_load(&u->slot[s].state) == XPU_SLOT_ACTIVE;
        } else { fprintf(stderr, "unknown field %s\n", f); return 2; }
        printf("%llu\n", v);
        return 0;
    }
    fprintf(stderr, "bad command\n");
    return 2;
}
