"""``XPUQueue`` objects (CRD ``xpuqueues.xpupool.io``) -> core :class:`~xpupool.core.queues.QueueSpec`.

Mapping (what the core's flat queue book supports today):

* ``spec.weight``, ``spec.priority`` -> ``weight``, ``priority``;
* ``spec.quota[]`` entries with an empty ``model``: ``guaranteed`` -> ``quota``, ``limit`` ->
  ``limit``, per resource: ``cpu`` (milli-cores), ``memory`` (MiB), ``xpupool.io/vxpu-core``
  (percent of a card -> milli-cards) or ``xpupool.io/vxpu`` (cards -> milli-cards); a resource
  without a limit is unlimited, without a guarantee is guaranteed nothing;
* ``spec.borrowing.borrow`` -> ``borrowing``; ``spec.reclaim.reclaimable`` -> ``reclaimable``.

Not mapped yet (reported by :func:`queue_spec` as warnings): ``parent`` (the core book is flat:
every queue is a leaf), per-model quota entries, ``xpupool.io/vxpu-memory`` quota.
"""

from __future__ import annotations

from xpupool.core.model import WHOLE_CARD_MILLI
from xpupool.core.queues import UNLIMITED, QueueSpec, Resources
from xpupool.core.request import QuantityError, parse_quantity
from xpupool.kube.transport import JsonDict, Resource

XPUQUEUES = Resource("xpupool.io", "v1alpha1", "xpuqueues", False, "XPUQueue")


def _amount(resource: str, raw: object) -> tuple[str, int] | None:
    try:
        value = parse_quantity(raw)  # type: ignore[arg-type]
    except (QuantityError, TypeError):
        return None
    if resource == "cpu":
        return "cpu_milli", round(value * 1000)
    if resource == "memory":
        return "memory_mib", int(value // 2**20)
    if resource == "xpupool.io/vxpu-core":
        return "xpu_milli", int(value * WHOLE_CARD_MILLI // 100)
    if resource == "xpupool.io/vxpu":
        return "xpu_milli", int(value * WHOLE_CARD_MILLI)
    return None


def queue_spec(obj: JsonDict) -> tuple[QueueSpec, list[str]]:
    """The core spec of one XPUQueue, plus warnings about what could not be mapped."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    name = str(meta.get("name"))
    warnings: list[str] = []
    if spec.get("parent"):
        warnings.append(f"queue {name}: parent {spec['parent']!r} ignored (flat queues only)")
    quota = {"cpu_milli": 0, "memory_mib": 0, "xpu_milli": 0}
    limit = {"cpu_milli": UNLIMITED.cpu_milli, "memory_mib": UNLIMITED.memory_mib, "xpu_milli": UNLIMITED.xpu_milli}
    for entry in spec.get("quota") or []:
        resource = str(entry.get("resource", ""))
        if entry.get("model"):
            warnings.append(f"queue {name}: per-model quota for {entry['model']!r} ignored")
            continue
        for field, target in (("guaranteed", quota), ("limit", limit)):
            if field not in entry:
                continue
            mapped = _amount(resource, entry[field])
            if mapped is None:
                warnings.append(f"queue {name}: {resource} {field} {entry[field]!r} not supported")
                continue
            target[mapped[0]] = mapped[1]
    return (
        QueueSpec(
            name=name,
            quota=Resources(**quota),
            limit=Resources(**limit),
            weight=float(spec.get("weight", 1) or 1),
            priority=int(spec.get("priority", 0) or 0),
            borrowing=bool((spec.get("borrowing") or {}).get("borrow", True)),
            reclaimable=bool((spec.get("reclaim") or {}).get("reclaimable", True)),
        ),
        warnings,
    )
