"""``XPUQueue`` objects (CRD ``xpuqueues.xpupool.io``) -> core :class:`~xpupool.core.quota.QueueSpec`.

Mapping (semantics in :mod:`xpupool.core.quota` and :mod:`xpupool.core.queue_access`):

* ``spec.parent``, ``spec.weight``, ``spec.priority`` -> ``parent``, ``weight``, ``priority``;
* ``spec.quota[]``: ``guaranteed`` -> ``quota``, ``limit`` -> ``limit`` per dimension:
  ``cpu`` (milli-cores), ``memory`` (MiB), ``xpupool.io/vxpu-core`` (percent of a card ->
  milli-cards), ``xpupool.io/vxpu`` (cards -> milli-cards), ``xpupool.io/vxpu-memory`` (a plain
  number is MiB, a quantity with a unit is bytes, as in the request syntax); with ``model`` the
  entry counts only cards of that model (``xpu_milli@H100``). ``vxpu`` and ``vxpu-core`` both
  measure compute, so giving both for one model is refused (the larger would silently win);
* ``spec.borrowing.borrow`` / ``lend`` -> ``borrowing`` / ``lending``;
  ``spec.reclaim.reclaimable`` / ``reclaimGuarantee`` -> ``reclaimable`` / ``reclaim_guarantee``;
* ``spec.namespaces``, ``spec.namespaceSelector``, ``spec.defaultForNamespaces`` -> ``access``
  (neither namespaces nor a selector: the queue admits no namespace).

Nothing is silently dropped: what cannot be mapped comes back as a warning (the scheduler puts
it in the queue's ``Valid`` condition).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from xpupool.core.model import WHOLE_CARD_MILLI
from xpupool.core.queue_access import (
    LabelRequirement,
    LabelSelector,
    Operator,
    QueueAccess,
    QueueChoice,
    QueueEntry,
    entries,
    resolve_queue,
)
from xpupool.core.quota import CPU, DEVICE_MEMORY, MEMORY, XPU, Limits, QueueSpec, Resources, model_dim
from xpupool.core.request import LABEL_QUEUE, QuantityError, parse_quantity
from xpupool.kube.transport import JsonDict, Resource

XPUQUEUES = Resource("xpupool.io", "v1alpha1", "xpuqueues", False, "XPUQueue")

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def amount(resource: str, raw: object) -> tuple[str, int] | None:
    """``(dimension, value in the dimension's unit)`` of one quota quantity, None if invalid."""
    try:
        value = parse_quantity(cast(Any, raw))
    except (QuantityError, TypeError, ValueError):
        return None
    if value < 0:
        return None
    if resource == "cpu":
        return CPU, round(value * 1000)
    if resource == "memory":
        return MEMORY, int(value // 2**20)
    if resource == "xpupool.io/vxpu-core":
        return XPU, round(value * WHOLE_CARD_MILLI / 100)
    if resource == "xpupool.io/vxpu":
        return XPU, round(value * WHOLE_CARD_MILLI)
    if resource == "xpupool.io/vxpu-memory":
        text = str(raw).strip()
        return DEVICE_MEMORY, int(value // 2**20) if text and text[-1].isalpha() else int(value)
    return None


def label_selector(raw: Mapping[str, Any] | None) -> tuple[LabelSelector | None, list[str]]:
    """A Kubernetes label selector object as a core :class:`LabelSelector` (None when absent)."""
    if raw is None:
        return None, []
    problems: list[str] = []
    requirements = []
    for expr in raw.get("matchExpressions") or []:
        operator = str(expr.get("operator", ""))
        if operator not in _OPERATORS:
            problems.append(f"namespaceSelector: unknown operator {operator!r}")
            continue
        requirements.append(LabelRequirement(str(expr.get("key", "")), cast(Operator, operator),
                                             frozenset(str(v) for v in expr.get("values") or [])))
    labels = tuple(sorted((str(k), str(v)) for k, v in (raw.get("matchLabels") or {}).items()))
    return LabelSelector(labels, tuple(requirements)), problems


def queue_spec(obj: JsonDict) -> tuple[QueueSpec, list[str]]:
    """The core spec of one XPUQueue, plus warnings about what could not be mapped."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    name = str(meta.get("name"))
    warnings: list[str] = []
    guaranteed: dict[str, int] = {}
    limits: dict[str, int] = {}
    compute_kind: dict[str, str] = {}
    for entry in spec.get("quota") or []:
        resource = str(entry.get("resource", ""))
        model = str(entry.get("model") or "")
        for field_name, target in (("guaranteed", guaranteed), ("limit", limits)):
            if field_name not in entry:
                continue
            mapped = amount(resource, entry[field_name])
            if mapped is None:
                warnings.append(f"queue {name}: {resource} {field_name} {entry[field_name]!r} is not a valid amount")
                continue
            dim, value = mapped
            if model:
                if dim in (CPU, MEMORY):
                    warnings.append(f"queue {name}: model {model!r} ignored on {resource}")
                else:
                    dim = model_dim(dim, model)
            if dim.startswith(XPU):
                seen = compute_kind.setdefault(f"{field_name}:{dim}", resource)
                if seen != resource:
                    warnings.append(f"queue {name}: both {seen} and {resource} give the {field_name} compute"
                                    f"{' on ' + model if model else ''}; {seen} is used")
                    continue
            target[dim] = value
    selector, problems = label_selector(spec.get("namespaceSelector"))
    warnings.extend(f"queue {name}: {p}" for p in problems)
    access = QueueAccess(
        namespaces=frozenset(str(n) for n in spec.get("namespaces") or []),
        selector=selector,
        default_for_namespaces=bool(spec.get("defaultForNamespaces", False)),
    )
    borrowing = spec.get("borrowing") or {}
    reclaim = spec.get("reclaim") or {}
    return (
        QueueSpec(
            name=name,
            parent=str(spec.get("parent") or ""),
            quota=Resources.from_dims(guaranteed),
            limit=Limits(limits),
            weight=float(spec.get("weight", 1) or 1),
            priority=int(spec.get("priority", 0) or 0),
            borrowing=bool(borrowing.get("borrow", True)),
            lending=bool(borrowing.get("lend", True)),
            reclaimable=bool(reclaim.get("reclaimable", True)),
            reclaim_guarantee=bool(reclaim.get("reclaimGuarantee", True)),
            access=access,
        ),
        warnings,
    )


@dataclass(frozen=True)
class QueueCatalogue:
    """The declared queues and the namespaces' labels: what deciding a pod's queue needs.

    Built from raw ``XPUQueue`` and ``Namespace`` objects by the webhook (periodic lists) and the
    scheduler (informers); :meth:`resolve` is :func:`~xpupool.core.queue_access.resolve_queue`
    for one pod. ``enforced`` is False when the XPUQueue CRD is not installed (every label is
    accepted, as without queues).
    """

    specs: Mapping[str, QueueSpec]
    warnings: Mapping[str, tuple[str, ...]]
    namespace_labels: Mapping[str, Mapping[str, str]]
    enforced: bool = True
    _entries: Mapping[str, QueueEntry] = field(default_factory=dict)

    @staticmethod
    def build(queues: Iterable[JsonDict], namespaces: Iterable[JsonDict], *, enforced: bool = True) -> QueueCatalogue:
        specs: dict[str, QueueSpec] = {}
        warnings: dict[str, tuple[str, ...]] = {}
        for obj in queues:
            spec, found = queue_spec(obj)
            specs[spec.name] = spec
            warnings[spec.name] = tuple(found)
        labels = {
            str((ns.get("metadata") or {}).get("name")): dict((ns.get("metadata") or {}).get("labels") or {})
            for ns in namespaces
        }
        table = entries((s.name, s.parent, s.access) for s in specs.values())
        return QueueCatalogue(specs, warnings, labels, enforced, table)

    def resolve(self, namespace: str, pod_labels: Mapping[str, str]) -> QueueChoice:
        """The queue of a pod in ``namespace`` with ``pod_labels`` (or why it may not run)."""
        return resolve_queue(
            namespace=namespace,
            namespace_labels=self.namespace_labels.get(namespace, {}),
            requested=pod_labels.get(LABEL_QUEUE),
            queues=self._entries,
            enforced=self.enforced,
        )


OPEN_CATALOGUE = QueueCatalogue({}, {}, {}, enforced=False)
