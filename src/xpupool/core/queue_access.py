"""Which queue a pod runs in: the cluster owner's decision, checked by one pure function.

A pod names a queue with the label ``xpupool.io/queue``. Anyone who can create a pod can set a
label, so the label is only a *wish*: :func:`resolve_queue` decides, from what the cluster owner
declared on the ``XPUQueue`` objects, whether the pod's namespace may use that queue, and which
queue a pod without the label gets. The admission webhook calls it to refuse a pod early with a
clear message; the scheduler calls the **same function** again before it queues a pod, so a pod
created while the webhook was down (or before a queue was narrowed) is never scheduled under a
queue its namespace may not use.

Rules (:class:`QueueAccess` is the owner-side declaration on each queue):

* a queue admits a namespace listed in ``namespaces`` or whose labels match ``selector``
  (``kubernetes.io/metadata.name`` is on every namespace, so a selector can match names too);
  a declared queue with neither admits **no** namespace (closed by default);
* the queue named by the label must exist, be a leaf (pods run in leaf queues only; inner queues
  only aggregate guarantees and limits) and admit the pod's namespace;
* without the label: the one leaf queue that admits the namespace and is marked
  ``default_for_namespaces``; several such queues are a configuration conflict the pod is told
  about (it must then name one); none: the queue ``default``;
* ``default`` that no ``XPUQueue`` declares is implicit, open to every namespace, with no guarantee
  and no limit: a cluster without queue objects works as before. An owner closes it by declaring
  an ``XPUQueue`` named ``default`` (e.g. with an empty namespace list, or a limit);
* ``enforced=False`` (no ``XPUQueue`` CRD installed, or the simulator): every label is accepted
  and unknown queues get defaults. With the CRD installed the scheduler enforces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from xpupool.core.status import Code, Status

DEFAULT_QUEUE = "default"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One ``matchExpressions`` entry of a Kubernetes label selector."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes label selector: every ``match_labels`` pair and every requirement must hold.

    An empty selector matches everything (Kubernetes semantics); callers that mean "no selector"
    use ``None`` instead.
    """

    match_labels: tuple[tuple[str, str], ...] = ()
    requirements: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.requirements
        )

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.requirements:
            if r.operator in ("In", "NotIn"):
                parts.append(f"{r.key} {r.operator.lower()} ({','.join(sorted(r.values))})")
            else:
                parts.append(("" if r.operator == "Exists" else "!") + r.key)
        return ",".join(parts) or "<everything>"


@dataclass(frozen=True, slots=True)
class QueueAccess:
    """Which namespaces may use a queue (declared by the cluster owner on the ``XPUQueue``)."""

    namespaces: frozenset[str] = frozenset()
    selector: LabelSelector | None = None
    default_for_namespaces: bool = False
    #: every namespace (the implicit ``default`` queue, and queues in the simulator)
    everyone: bool = False

    def admits(self, namespace: str, labels: Mapping[str, str]) -> bool:
        if self.everyone or namespace in self.namespaces:
            return True
        if self.selector is None:
            return False
        return self.selector.matches({NAMESPACE_NAME_LABEL: namespace, **labels})

    def describe(self) -> str:
        if self.everyone:
            return "every namespace"
        parts = []
        if self.namespaces:
            parts.append("namespaces " + ", ".join(sorted(self.namespaces)))
        if self.selector is not None:
            parts.append(f"namespaces labelled {self.selector.describe()}")
        return " and ".join(parts) or "no namespace"


OPEN = QueueAccess(everyone=True)
CLOSED = QueueAccess()


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """What :func:`resolve_queue` needs to know of one queue."""

    name: str
    access: QueueAccess = OPEN
    leaf: bool = True
    children: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QueueChoice:
    """The outcome: ``queue`` to run in when ``status`` is Success, else why not."""

    queue: str | None
    status: Status = field(default_factory=Status.success)
    defaulted: bool = False


def _refuse(message: str) -> QueueChoice:
    # Unresolvable: no other node or cycle changes the answer; only the owner or the pod can.
    return QueueChoice(None, Status(Code.UNSCHEDULABLE_AND_UNRESOLVABLE, (message,), "queue-access"))


def resolve_queue(
    *,
    namespace: str,
    namespace_labels: Mapping[str, str],
    requested: str | None,
    queues: Mapping[str, QueueEntry],
    enforced: bool = True,
) -> QueueChoice:
    """The queue a pod of ``namespace`` asking for ``requested`` (the label; None or "" when
    absent) runs in, or a refusal whose message tells the user what to do. Pure.

    ``queues`` holds the declared queues; ``default`` is implicit (open) when not declared.
    """
    wanted = (requested or "").strip()
    if not enforced:
        return QueueChoice(wanted or DEFAULT_QUEUE, defaulted=not wanted)
    catalogue = dict(queues)
    catalogue.setdefault(DEFAULT_QUEUE, QueueEntry(DEFAULT_QUEUE, OPEN))
    usable = sorted(n for n, q in catalogue.items() if q.leaf and q.access.admits(namespace, namespace_labels))
    hint = f"queues namespace {namespace} may use: {', '.join(usable)}" if usable else (
        f"no queue admits namespace {namespace}; ask the cluster owner to add it to an XPUQueue")
    if wanted:
        entry = catalogue.get(wanted)
        if entry is None:
            return _refuse(f"queue {wanted!r} does not exist ({hint})")
        if not entry.leaf:
            return _refuse(
                f"queue {wanted!r} has child queues ({', '.join(entry.children)}); pods run in leaf queues ({hint})"
            )
        if not entry.access.admits(namespace, namespace_labels):
            return _refuse(
                f"namespace {namespace} may not use queue {wanted!r} (it admits {entry.access.describe()}; {hint})"
            )
        return QueueChoice(wanted)
    defaults = sorted(n for n in usable if catalogue[n].access.default_for_namespaces)
    if len(defaults) > 1:
        return _refuse(
            f"namespace {namespace} has several default queues ({', '.join(defaults)}); "
            f"set the label xpupool.io/queue to one of them"
        )
    if defaults:
        return QueueChoice(defaults[0], defaulted=True)
    if DEFAULT_QUEUE in usable:
        return QueueChoice(DEFAULT_QUEUE, defaulted=True)
    return _refuse(f"no default queue for namespace {namespace} ({hint}); set the label xpupool.io/queue")


def entries(specs: Iterable[tuple[str, str, QueueAccess]]) -> dict[str, QueueEntry]:
    """Build :class:`QueueEntry` values from ``(name, parent, access)`` triples (leaf = no child)."""
    triples = list(specs)
    children: dict[str, list[str]] = {}
    for name, parent, _ in triples:
        if parent:
            children.setdefault(parent, []).append(name)
    return {
        name: QueueEntry(name, access, leaf=name not in children, children=tuple(sorted(children.get(name, []))))
        for name, _, access in triples
    }
