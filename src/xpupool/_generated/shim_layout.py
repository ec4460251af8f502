"""GENERATED from native/include/xpushim_layout.def by ``python -m xpupool.agent.layoutgen``:
do not edit. The layouts the C shim and the node agent share (see the definition for who
writes what)."""

from __future__ import annotations

import ctypes

XPU_LAYOUT_VERSION = 2
XPU_CONFIG_MAGIC = 0x32464e4f43555058  # "XPUCONF2" little endian
XPU_USAGE_MAGIC = 0x3247415355555058  # "XPUUSAG2"
XPU_CARD_MAGIC = 0x3244524143555058  # "XPUCARD2"
XPU_TENANT_MAGIC = 0x324e4554555058  # "XPUTEN2"
XPU_MAX_DEVICES = 16
XPU_MAX_SLOTS = 128
XPU_MAX_TENANTS = 32
XPU_UUID_LEN = 64
XPU_PATH_LEN = 192
XPU_SHARE_FULL = 10000  # basis points: 10000 = whole card
XPUSHIM_ENV_REGION = "XPUSHIM_REGION"
XPUSHIM_DEFAULT_REGION_PATH = "/run/xpupool/shim/region"
XPU_CONFIG_FILE = "config"
XPU_USAGE_FILE = "usage"
XPU_POLICY_FILE = "policy"
XPU_TENANT_FILE_PREFIX = "tenant-"  # + two decimal digits of the slot
XPU_POLICY_FAIL_OPEN_ON_BROKEN = 1  # default 0 = fail closed when the region is broken
XPU_SLOT_FREE = 0
XPU_SLOT_ACTIVE = 1
XPU_SLOT_REAPING = 2


class ConfigHeader(ctypes.Structure):
    """C ``struct xpu_config_header`` (256 bytes)."""

    _fields_ = (
        ("magic", ctypes.c_uint64),  # XPU_CONFIG_MAGIC
        ("version", ctypes.c_uint32),  # XPU_LAYOUT_VERSION
        ("header_size", ctypes.c_uint32),
        ("total_size", ctypes.c_uint64),
        ("generation", ctypes.c_uint64),  # seqlock: odd while the agent writes
        ("ndevices", ctypes.c_uint32),  # device entries in use (<= XPU_MAX_DEVICES)
        ("device_offset", ctypes.c_uint32),
        ("device_stride", ctypes.c_uint32),
        ("policy", ctypes.c_uint32),  # XPU_POLICY_*
        ("container_key", ctypes.c_uint64),  # nonzero id of the container, owner key in card policies
        ("npids", ctypes.c_uint32),  # XPU_MAX_SLOTS
        ("pid_offset", ctypes.c_uint32),
        ("pid_stride", ctypes.c_uint32),
        ("reserved0", ctypes.c_uint32),
        ("reserved1", ctypes.c_uint64 * 23),
    )


class DevConfig(ctypes.Structure):
    """C ``struct xpu_dev_config`` (512 bytes)."""

    _fields_ = (
        ("uuid", ctypes.c_char * 64),  # "GPU-xxxxxxxx-..." (NVML form); "" = match by ordinal
        ("ordinal", ctypes.c_uint32),  # in-container ordinal used when uuid is empty
        ("cfg_flags", ctypes.c_uint32),
        ("mem_limit", ctypes.c_uint64),  # bytes; 0 = no memory limit
        ("process_reserve", ctypes.c_uint64),  # bytes charged once per process using the device (context, modules, local memory, heap)
        ("share_request_bp", ctypes.c_uint32),  # guaranteed share, basis points; 0 = no compute limit
        ("share_limit_bp", ctypes.c_uint32),  # burst cap (>= request)
        ("priority", ctypes.c_uint32),  # higher value = served first
        ("period_us", ctypes.c_uint32),  # limiter window; 0 = default
        ("card_slot", ctypes.c_uint32),  # tenant slot in the card region
        ("reserved0", ctypes.c_uint32),
        ("card_dir", ctypes.c_char * 192),  # card region directory as the container sees it; "" = none
        ("reserved1", ctypes.c_uint64 * 26),
    )


class PidEntry(ctypes.Structure):
    """C ``struct xpu_pid_entry`` (16 bytes)."""

    _fields_ = (
        ("pid", ctypes.c_int32),  # 0 = unused
        ("host_pid", ctypes.c_int32),
        ("start_time", ctypes.c_uint64),  # /proc/<pid>/stat field 22 in the container's view
    )


class Config(ctypes.Structure):
    """C ``struct xpu_config`` (10496 bytes)."""

    _fields_ = (
        ("hdr", ConfigHeader),
        ("dev", DevConfig * 16),
        ("pid", PidEntry * 128),
    )


class UsageHeader(ctypes.Structure):
    """C ``struct xpu_usage_header`` (256 bytes)."""

    _fields_ = (
        ("magic", ctypes.c_uint64),  # XPU_USAGE_MAGIC
        ("version", ctypes.c_uint32),
        ("header_size", ctypes.c_uint32),
        ("total_size", ctypes.c_uint64),
        ("ndevices", ctypes.c_uint32),  # XPU_MAX_DEVICES
        ("nslots", ctypes.c_uint32),  # XPU_MAX_SLOTS
        ("device_offset", ctypes.c_uint32),
        ("device_stride", ctypes.c_uint32),
        ("slot_offset", ctypes.c_uint32),
        ("slot_stride", ctypes.c_uint32),
        ("lock_init", ctypes.c_uint32),  # 0 none, 1 initialising, 2 ready (shims initialise)
        ("reserved0", ctypes.c_uint32),
        ("reserved1", ctypes.c_uint64),
        ("lock", ctypes.c_uint8 * 64),  # pthread_mutex_t, process-shared + robust, opaque
        ("reserved2", ctypes.c_uint64 * 16),
    )


class DevUsage(ctypes.Structure):
    """C ``struct xpu_dev_usage`` (256 bytes)."""

    _fields_ = (
        ("mem_used", ctypes.c_uint64),  # bytes charged, all processes, reserves included
        ("mem_peak", ctypes.c_uint64),
        ("oom_events", ctypes.c_uint64),  # allocations refused by quota
        ("accounting_errors", ctypes.c_uint64),  # saturated subtractions, failed measurements
        ("gpu_time_ns", ctypes.c_uint64),  # measured GPU busy time
        ("throttle_ns", ctypes.c_uint64),  # time launches were held back
        ("launches", ctypes.c_uint64),
        ("throttled_launches", ctypes.c_uint64),
        ("lim_tat_ns", ctypes.c_uint64),  # limiter state: GCRA theoretical arrival time
        ("last_launch_ns", ctypes.c_uint64),  # CLOCK_MONOTONIC
        ("effective_share_bp", ctypes.c_uint32),  # share currently applied
        ("measured_share_bp", ctypes.c_uint32),  # recent measured share (EWMA)
        ("reaped_bytes", ctypes.c_uint64),  # released from dead processes
        ("reserved0", ctypes.c_uint64 * 20),
    )


class Slot(ctypes.Structure):
    """C ``struct xpu_slot`` (256 bytes)."""

    _fields_ = (
        ("state", ctypes.c_uint32),  # XPU_SLOT_*
        ("pid", ctypes.c_int32),  # pid in the container's pid namespace
        ("start_time", ctypes.c_uint64),  # /proc/<pid>/stat field 22, to detect pid reuse
        ("mem_used", ctypes.c_uint64 * 16),  # per device, its process reserve included
        ("reserve_mask", ctypes.c_uint32),  # devices whose process reserve this process was charged
        ("reserved0", ctypes.c_uint32),
        ("reserved1", ctypes.c_uint64 * 13),
    )


class Usage(ctypes.Structure):
    """C ``struct xpu_usage`` (37120 bytes)."""

    _fields_ = (
        ("hdr", UsageHeader),
        ("dev", DevUsage * 16),
        ("slot", Slot * 128),
    )


class CardHeader(ctypes.Structure):
    """C ``struct xpu_card_header`` (128 bytes)."""

    _fields_ = (
        ("magic", ctypes.c_uint64),  # XPU_CARD_MAGIC
        ("version", ctypes.c_uint32),
        ("header_size", ctypes.c_uint32),
        ("total_size", ctypes.c_uint64),
        ("generation", ctypes.c_uint64),  # seqlock: odd while the agent writes
        ("ntenants", ctypes.c_uint32),  # XPU_MAX_TENANTS
        ("tenant_offset", ctypes.c_uint32),
        ("tenant_stride", ctypes.c_uint32),
        ("reserved0", ctypes.c_uint32),
        ("uuid", ctypes.c_char * 64),
        ("reserved1", ctypes.c_uint64 * 2),
    )


class PolicyTenant(ctypes.Structure):
    """C ``struct xpu_policy_tenant`` (32 bytes)."""

    _fields_ = (
        ("owner_key", ctypes.c_uint64),  # container key holding the slot, 0 = free
        ("request_bp", ctypes.c_uint32),
        ("limit_bp", ctypes.c_uint32),  # burst cap; 0 = same as request
        ("priority", ctypes.c_uint32),
        ("reserved0", ctypes.c_uint32),
        ("reserved1", ctypes.c_uint64),
    )


class CardPolicy(ctypes.Structure):
    """C ``struct xpu_card_policy`` (1152 bytes)."""

    _fields_ = (
        ("hdr", CardHeader),
        ("tenant", PolicyTenant * 32),
    )


class TenantState(ctypes.Structure):
    """C ``struct xpu_tenant_state`` (64 bytes)."""

    _fields_ = (
        ("magic", ctypes.c_uint64),  # XPU_TENANT_MAGIC
        ("version", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
        ("owner_key", ctypes.c_uint64),  # container key of the writer; ignored unless it is the policy's
        ("last_demand_ns", ctypes.c_uint64),  # CLOCK_MONOTONIC of the latest launch
        ("effective_bp", ctypes.c_uint32),
        ("reserved0", ctypes.c_uint32),
        ("gpu_time_ns", ctypes.c_uint64),
        ("reserved1", ctypes.c_uint64 * 2),
    )


#: C struct name -> (class, size the definition declares)
STRUCTS: dict[str, tuple[type[ctypes.Structure], int]] = {
    "xpu_config_header": (ConfigHeader, 256),
    "xpu_dev_config": (DevConfig, 512),
    "xpu_pid_entry": (PidEntry, 16),
    "xpu_config": (Config, 10496),
    "xpu_usage_header": (UsageHeader, 256),
    "xpu_dev_usage": (DevUsage, 256),
    "xpu_slot": (Slot, 256),
    "xpu_usage": (Usage, 37120),
    "xpu_card_header": (CardHeader, 128),
    "xpu_policy_tenant": (PolicyTenant, 32),
    "xpu_card_policy": (CardPolicy, 1152),
    "xpu_tenant_state": (TenantState, 64),
}

for _name, (_cls, _size) in STRUCTS.items():
    if ctypes.sizeof(_cls) != _size:
        raise ImportError(f"struct {_name}: {ctypes.sizeof(_cls)} bytes, declared {_size}")
