"""One request syntax for every vendor, with validation that explains itself.

Pod syntax (per container; the adapter sums containers)::

    resources.limits:
      xpupool.io/vxpu: 2                  # cards (vXPUs)
      xpupool.io/vxpu-core: 30            # compute per card, percent, 1..100 (default 100)
      xpupool.io/vxpu-memory: 8192        # device memory per card, MiB
      xpupool.io/vxpu-memory-percent: 25  # ... or percent of the card (not both)
      nvidia.com/gpu: 1                   # whole-card form, same as vxpu with core 100, exclusive
    metadata.annotations:
      xpupool.io/vendor: nvidia|ascend|amd|emulated
      xpupool.io/model: H100,A100         # allowed card models
      xpupool.io/exclusive: "true"
      xpupool.io/remote: never|allowed|preferred|required
      xpupool.io/remote-mbps: "2000"
    metadata.labels:
      xpupool.io/queue: team-a
      xpupool.io/pod-group: job-17

Defaults we chose (documented in README): no memory given -> memory proportional to the compute
share (30 % core -> 30 % of the card's memory), so a slice never silently gets a whole card's memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from xpupool.core.memory_reserve import process_reserve_mib
from xpupool.core.model import WHOLE_CARD_MILLI, Device, Node, RemotePolicy, Request, Vendor

DOMAIN = "xpupool.io"
RES_VXPU = f"{DOMAIN}/vxpu"
RES_CORE = f"{DOMAIN}/vxpu-core"
RES_MEMORY = f"{DOMAIN}/vxpu-memory"
RES_MEMORY_PCT = f"{DOMAIN}/vxpu-memory-percent"
ANN_VENDOR = f"{DOMAIN}/vendor"
ANN_MODEL = f"{DOMAIN}/model"
ANN_EXCLUSIVE = f"{DOMAIN}/exclusive"
ANN_REMOTE = f"{DOMAIN}/remote"
ANN_REMOTE_MBPS = f"{DOMAIN}/remote-mbps"
LABEL_QUEUE = f"{DOMAIN}/queue"
LABEL_POD_GROUP = f"{DOMAIN}/pod-group"

#: Whole-card resource names of each vendor's own device plugin, mapped to (vendor, model or "").
WHOLE_CARD_RESOURCES: Mapping[str, tuple[Vendor, str]] = {
    "nvidia.com/gpu": (Vendor.NVIDIA, ""),
    "amd.com/gpu": (Vendor.AMD, ""),
    "huawei.com/Ascend910": (Vendor.ASCEND, "Ascend910"),
    "huawei.com/Ascend910B": (Vendor.ASCEND, "Ascend910B"),
    "huawei.com/Ascend310P": (Vendor.ASCEND, "Ascend310P"),
    f"{DOMAIN}/emulated-gpu": (Vendor.EMULATED, ""),
}

OUR_RESOURCES = frozenset({RES_VXPU, RES_CORE, RES_MEMORY, RES_MEMORY_PCT})

_QUANTITY = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


class QuantityError(ValueError):
    """A Kubernetes quantity string that cannot be parsed."""


def parse_quantity(value: str | int | float) -> float:
    """Parse a Kubernetes quantity (``"500m"``, ``"4Gi"``, ``"2"``) into base units."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    match = _QUANTITY.match(text)
    if not match:
        raise QuantityError(f"{value!r} is not a quantity")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix == "m":
        return number / 1000
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    raise QuantityError(f"{value!r} has an unknown unit {suffix!r}")


@dataclass(frozen=True, slots=True)
class ParseResult:
    """Either a request or the list of problems, each a sentence a user can act on."""

    request: Request | None
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.request is not None and not self.errors


def _integer(name: str, raw: str | int | float, errors: list[str]) -> int | None:
    try:
        value = parse_quantity(raw)
    except QuantityError:
        errors.append(f"{name}: {raw!r} is not a number")
        return None
    if value != int(value):
        errors.append(f"{name}: {raw!r} must be a whole number")
        return None
    return int(value)


def _memory_mib(name: str, raw: str | int | float, errors: list[str]) -> int | None:
    """Device memory: a plain number is MiB; a quantity with a unit (``16Gi``) is bytes."""
    text = str(raw).strip()
    if text and text[-1].isalpha():
        try:
            return int(parse_quantity(text) // 2**20)
        except QuantityError:
            errors.append(f"{name}: {raw!r} is not a memory size (use MiB, or a unit such as 16Gi)")
            return None
    return _integer(name, raw, errors)


def _truthy(raw: str) -> bool | None:
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    return None


def parse_request(
    *,
    name: str,
    resources: Mapping[str, str | int | float],
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    cpu_milli: int = 0,
    memory_mib: int = 0,
    priority: int = 0,
    namespace: str = "default",
) -> ParseResult:
    """Turn a pod's summed resource limits + metadata into a :class:`Request`.

    Never raises for bad input: every problem becomes a message in ``errors``.
    """
    annotations = annotations or {}
    labels = labels or {}
    errors: list[str] = []

    vendor: Vendor | None = None
    models: list[str] = []
    count = 0
    share_pct: int | None = None
    exclusive = False

    whole = [(k, v) for k, v in resources.items() if k in WHOLE_CARD_RESOURCES]
    ours = {k: v for k, v in resources.items() if k in OUR_RESOURCES}
    unknown_ours = [k for k in resources if k.startswith(f"{DOMAIN}/") and k not in OUR_RESOURCES
                    and k not in WHOLE_CARD_RESOURCES]
    for key in unknown_ours:
        errors.append(f"{key}: unknown resource; use one of {', '.join(sorted(OUR_RESOURCES))}")
    if len(whole) > 1:
        errors.append("ask for one kind of whole card per pod, got " + ", ".join(k for k, _ in whole))
    if whole and ours:
        errors.append(f"{whole[0][0]} and {RES_VXPU}* cannot be mixed in one pod; use {RES_VXPU} alone")

    if whole:
        key, raw = whole[0]
        vendor, model = WHOLE_CARD_RESOURCES[key]
        if model:
            models.append(model)
        value = _integer(key, raw, errors)
        if value is not None:
            count = value
        share_pct = 100
        exclusive = True
    elif ours:
        value = _integer(RES_VXPU, ours.get(RES_VXPU, 0), errors)
        count = value if value is not None else 0
        if RES_VXPU not in ours:
            errors.append(f"{RES_CORE}/{RES_MEMORY} need {RES_VXPU} (how many cards)")
        if RES_CORE in ours:
            share_pct = _integer(RES_CORE, ours[RES_CORE], errors)

    device_memory_mib = 0
    device_memory_pct = 0
    if RES_MEMORY in ours:
        parsed_mib = _memory_mib(RES_MEMORY, ours[RES_MEMORY], errors)
        device_memory_mib = parsed_mib or 0
        if parsed_mib is not None and parsed_mib <= 0:
            errors.append(f"{RES_MEMORY}: must be positive (at least 1 MiB), got {parsed_mib}")
    if RES_MEMORY_PCT in ours:
        device_memory_pct = _integer(RES_MEMORY_PCT, ours[RES_MEMORY_PCT], errors) or 0
        if not 1 <= device_memory_pct <= 100:
            errors.append(f"{RES_MEMORY_PCT}: must be 1..100, got {device_memory_pct}")
    if RES_MEMORY in ours and RES_MEMORY_PCT in ours:
        errors.append(f"give {RES_MEMORY} or {RES_MEMORY_PCT}, not both")

    if count < 0:
        errors.append(f"number of cards must not be negative, got {count}")
    if share_pct is None:
        share_pct = 100 if count else 0
    elif count and not 1 <= share_pct <= 100:
        errors.append(f"{RES_CORE}: compute share is 1..100 percent of a card, got {share_pct}")
    elif count > 1 and share_pct < 100:
        errors.append(
            f"{RES_CORE}: a share below 100 is for one card; {count} cards at {share_pct}% "
            f"would be {count * share_pct}% of one card - ask for 1 card or 100% each"
        )

    if ANN_VENDOR in annotations:
        raw_vendor = annotations[ANN_VENDOR].strip().lower()
        try:
            chosen = Vendor(raw_vendor)
        except ValueError:
            errors.append(
                f"{ANN_VENDOR}: unknown vendor {raw_vendor!r}; known: {', '.join(v.value for v in Vendor)}"
            )
        else:
            if vendor is not None and chosen is not vendor:
                errors.append(f"{ANN_VENDOR}: {chosen} contradicts the {vendor} resource")
            vendor = chosen
    if ANN_MODEL in annotations:
        models.extend(m.strip() for m in re.split(r"[,|]", annotations[ANN_MODEL]) if m.strip())

    if ANN_EXCLUSIVE in annotations:
        flag = _truthy(annotations[ANN_EXCLUSIVE])
        if flag is None:
            errors.append(f"{ANN_EXCLUSIVE}: expected true or false, got {annotations[ANN_EXCLUSIVE]!r}")
        elif flag:
            exclusive = True
    remote = RemotePolicy.NEVER
    if ANN_REMOTE in annotations:
        try:
            remote = RemotePolicy(annotations[ANN_REMOTE].strip().lower())
        except ValueError:
            errors.append(
                f"{ANN_REMOTE}: expected one of {', '.join(p.value for p in RemotePolicy)}, "
                f"got {annotations[ANN_REMOTE]!r}"
            )
    remote_mbps = 1_000
    if ANN_REMOTE_MBPS in annotations:
        parsed = _integer(ANN_REMOTE_MBPS, annotations[ANN_REMOTE_MBPS], errors)
        if parsed is not None:
            if parsed <= 0:
                errors.append(f"{ANN_REMOTE_MBPS}: must be positive, got {parsed}")
            remote_mbps = parsed
    if count == 0 and ((vendor is not None and ANN_VENDOR in annotations) or remote is not RemotePolicy.NEVER):
        errors.append("vendor or remote settings given but no cards requested")
    if cpu_milli < 0 or memory_mib < 0:
        errors.append("cpu and memory requests must not be negative")

    queue = labels.get(LABEL_QUEUE, "default") or "default"
    pod_group = labels.get(LABEL_POD_GROUP, "")
    if errors:
        return ParseResult(None, tuple(errors))
    if count and device_memory_mib == 0 and device_memory_pct == 0 and share_pct < 100 and not exclusive:
        device_memory_pct = share_pct
    request = Request(
        name=name,
        namespace=namespace,
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        count=count,
        share_milli=share_pct * 10 if count else 0,
        device_memory_mib=device_memory_mib,
        device_memory_pct=device_memory_pct,
        vendor=vendor,
        models=tuple(dict.fromkeys(models)),
        exclusive=exclusive,
        remote=remote,
        remote_mbps=remote_mbps,
        priority=priority,
        queue=queue,
        pod_group=pod_group,
        vxpu_slots=count if ours else 0,
    )
    return ParseResult(request)


def validate_against_pool(request: Request, nodes: Iterable[Node]) -> tuple[str, ...]:
    """Problems that make ``request`` impossible on this pool whatever else runs there.

    Used by the webhook (refuse early, with a message) and by the scheduler to mark a pod
    UnschedulableAndUnresolvable instead of retrying forever.
    """
    errors: list[str] = []
    if request.count == 0:
        return ()
    if not 1 <= request.share_milli <= WHOLE_CARD_MILLI:
        errors.append(f"compute share must be 1..100 %, got {request.share_milli / 10:g} %")
    if request.device_memory_mib < 0:
        errors.append(f"device memory must not be negative, got {request.device_memory_mib} MiB")
    matching_cards_per_node: list[int] = []
    largest_card_mib = 0
    fits_a_process = False  # some matching card gives the slice more than one per-process reserve
    vendors_seen: set[Vendor] = set()
    models_seen: set[str] = set()
    for node in nodes:
        n = 0
        for device in node.devices:
            vendors_seen.add(device.vendor)
            models_seen.add(device.model)
            if request.vendor is not None and device.vendor is not request.vendor:
                continue
            if request.models and device.model not in request.models:
                continue
            n += 1
            largest_card_mib = max(largest_card_mib, device.memory_mib)
            fits_a_process |= _slice_mib(request, device) > process_reserve_mib(device.vendor, device.model)
        matching_cards_per_node.append(n)
    most = max(matching_cards_per_node, default=0)
    if most == 0:
        wanted = request.vendor.value if request.vendor else "any vendor"
        if request.models:
            wanted += " model " + "|".join(request.models)
        errors.append(
            f"no card of {wanted} in the pool (vendors: {', '.join(sorted(vendors_seen)) or 'none'}; "
            f"models: {', '.join(sorted(models_seen)) or 'none'})"
        )
    elif request.count > most and request.remote is RemotePolicy.NEVER:
        errors.append(f"asks for {request.count} cards but the largest node has {most} matching cards")
    if most and request.device_memory_mib > largest_card_mib:
        errors.append(
            f"asks for {request.device_memory_mib} MiB per card but the largest matching card has "
            f"{largest_card_mib} MiB"
        )
    elif most and not fits_a_process:
        errors.append(
            "device memory per card is not more than the per-process reserve (a process's context, modules and "
            "local memory, charged to the slice; xpupool.core.memory_reserve): no process could start in it"
        )
    return tuple(errors)


def _slice_mib(request: Request, device: Device) -> int:
    """Device memory the request gets on ``device`` (the shim's quota)."""
    if request.device_memory_mib > 0:
        return request.device_memory_mib
    if request.device_memory_pct > 0:
        return device.memory_mib * request.device_memory_pct // 100
    return device.memory_mib
