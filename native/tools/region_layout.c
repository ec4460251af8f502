/* Prints the binary layout of xpushim_region.h as JSON; the Python mirror is checked
 * against this output (tests/agent/test_shim_region.py). */
#include <stddef.h>
#include <stdio.h>
#include "xpushim_region.h"

#define F(s, f) printf("  \"%s.%s\": [%zu, %zu],\n", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f))
#define S(s) printf("  \"sizeof.%s\": [0, %zu],\n", #s, sizeof(struct s))

int main(void)
{
    printf("{\n");
    S(xpu_region_header); S(xpu_device_entry); S(xpu_slot); S(xpu_region); S(xpu_card_header);
    S(xpu_card_tenant); S(xpu_card);
    F(xpu_region_header, magic); F(xpu_region_header, version); F(xpu_region_header, header_size);
    F(xpu_region_header, total_size); F(xpu_region_header, generation); F(xpu_region_header, ndevices);
    F(xpu_region_header, nslots); F(xpu_region_header, device_offset); F(xpu_region_header, device_stride);
    F(xpu_region_header, slot_offset); F(xpu_region_header, slot_stride); F(xpu_region_header, container_key);
    F(xpu_region_header, policy); F(xpu_region_header, lock_init); F(xpu_region_header, lock);
    F(xpu_device_entry, uuid); F(xpu_device_entry, ordinal); F(xpu_device_entry, cfg_flags);
    F(xpu_device_entry, mem_limit); F(xpu_device_entry, share_request_bp); F(xpu_device_entry, share_limit_bp);
    F(xpu_device_entry, priority); F(xpu_device_entry, period_us); F(xpu_device_entry, card_slot);
    F(xpu_device_entry, card_path); F(xpu_device_entry, mem_used); F(xpu_device_entry, mem_peak);
    F(xpu_device_entry, oom_events); F(xpu_device_entry, accounting_errors); F(xpu_device_entry, gpu_time_ns);
    F(xpu_device_entry, throttle_ns); F(xpu_device_entry, launches); F(xpu_device_entry, throttled_launches);
    F(xpu_device_entry, lim_tat_ns); F(xpu_device_entry, last_launch_ns); F(xpu_device_entry, effective_share_bp);
    F(xpu_device_entry, measured_share_bp); F(xpu_device_entry, reaped_bytes);
    F(xpu_slot, state); F(xpu_slot, pid); F(xpu_slot, start_time); F(xpu_slot, host_pid); F(xpu_slot, mem_used);
    F(xpu_card_header, magic); F(xpu_card_header, version); F(xpu_card_header, header_size);
    F(xpu_card_header, total_size); F(xpu_card_header, generation); F(xpu_card_header, ntenants);
    F(xpu_card_header, tenant_offset); F(xpu_card_header, tenant_stride); F(xpu_card_header, uuid);
    F(xpu_card_tenant, owner_key); F(xpu_card_tenant, request_bp); F(xpu_card_tenant, limit_bp);
    F(xpu_card_tenant, priority); F(xpu_card_tenant, effective_bp); F(xpu_card_tenant, last_demand_ns);
    F(xpu_card_tenant, gpu_time_ns);
    printf("  \"const.XPU_REGION_MAGIC\": [%llu, 0],\n", (unsigned long long)XPU_REGION_MAGIC);
    printf("  \"const.XPU_CARD_MAGIC\": [%llu, 0],\n", (unsigned long long)XPU_CARD_MAGIC);
    printf("  \"const.XPU_REGION_VERSION\": [%u, 0],\n", XPU_REGION_VERSION);
    printf("  \"const.XPU_CARD_VERSION\": [%u, 0],\n", XPU_CARD_VERSION);
    printf("  \"const.XPU_MAX_DEVICES\": [%d, 0],\n", XPU_MAX_DEVICES);
    printf("  \"const.XPU_MAX_SLOTS\": [%d, 0],\n", XPU_MAX_SLOTS);
    printf("  \"const.XPU_MAX_TENANTS\": [%d, 0]\n", XPU_MAX_TENANTS);
    printf("}\n");
    return 0;
}
