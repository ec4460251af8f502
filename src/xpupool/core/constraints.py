"""Kubernetes placement constraints as plain values, with the matching rules kube-scheduler uses.

What a pod may carry (all optional; the empty :class:`Constraints` constrains nothing):

* ``nodeSelector`` and required node affinity (``nodeSelectorTerms``: OR of terms, each an AND of
  ``matchExpressions`` on labels and ``matchFields`` on ``metadata.name``; operators In, NotIn,
  Exists, DoesNotExist, Gt, Lt), preferred node affinity (weighted terms, a score);
* tolerations against node taints (NoSchedule and NoExecute filter, PreferNoSchedule scores) and
  the node's ``unschedulable`` flag (tolerated like a ``node.kubernetes.io/unschedulable``
  NoSchedule taint, as kube-scheduler's NodeUnschedulable plugin does);
* scheduling gates (a gated pod is never placed);
* required pod affinity and anti-affinity terms (label selector, namespaces, topology key),
  preferred ones as a score, and topology spread constraints (``maxSkew``, ``minDomains``,
  DoNotSchedule filters, ScheduleAnyway scores, node affinity / taint policies).

This module is the model and the per-object matching rules (label selector vs labels, node
selector requirement vs a node, toleration vs taint). The vectorised evaluation over a whole
cluster is :mod:`xpupool.core.constraint_masks`. Semantics follow the Kubernetes API reference;
where the kube adapter cannot represent something (e.g. a ``namespaceSelector`` other than "all
namespaces") it refuses the pod with a message instead of guessing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The well-known label kube-scheduler uses for "per node" topologies.
LABEL_HOSTNAME = "kubernetes.io/hostname"
LABEL_ZONE = "topology.kubernetes.io/zone"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
FIELD_NODE_NAME = "metadata.name"

Labels = tuple[tuple[str, str], ...]


class Operator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"
    GT = "Gt"
    LT = "Lt"


class Effect(enum.StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


def parse_int64(text: str) -> int | None:
    """kube parses Gt/Lt operands and label values as base-10 int64; anything else never matches."""
    if not text or text.strip() != text or "_" in text:
        return None
    try:
        value = int(text, 10)
    except ValueError:
        return None
    return value if -(2**63) <= value < 2**63 else None


@dataclass(frozen=True, slots=True)
class Requirement:
    """One ``key operator values`` requirement (node selector or label selector expression)."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        op = self.operator
        if op is Operator.IN:
            return value is not None and value in self.values
        if op is Operator.NOT_IN:
            return value is None or value not in self.values
        if op is Operator.EXISTS:
            return value is not None
        if op is Operator.DOES_NOT_EXIST:
            return value is None
        # Gt / Lt: exactly one integer operand; the label must be an integer too
        if value is None or len(self.values) != 1:
            return False
        have, bound = parse_int64(value), parse_int64(self.values[0])
        if have is None or bound is None:
            return False
        return have > bound if op is Operator.GT else have < bound


@dataclass(frozen=True, slots=True)
class NodeSelectorTerm:
    """AND of label expressions and field expressions (only ``metadata.name``). An empty term
    matches no node (Kubernetes API rule)."""

    match_expressions: tuple[Requirement, ...] = ()
    match_fields: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_expressions and not self.match_fields

    def matches(self, node_name: str, labels: Mapping[str, str]) -> bool:
        if self.empty:
            return False
        fields = {FIELD_NODE_NAME: node_name}
        return all(r.matches(labels) for r in self.match_expressions) and all(
            r.matches(fields) for r in self.match_fields
        )


@dataclass(frozen=True, slots=True)
class PreferredTerm:
    weight: int
    term: NodeSelectorTerm


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: Effect = Effect.NO_SCHEDULE

    def __str__(self) -> str:
        return f"{{{self.key}: {self.value}}}" if self.value else f"{{{self.key}}}"


@dataclass(frozen=True, slots=True)
class Toleration:
    """``operator`` is Equal (the default) or Exists; an empty ``effect`` matches every effect;
    an empty ``key`` with Exists matches every taint."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect.value:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.operator in ("Equal", "") and self.value == taint.value


def tolerated(tolerations: tuple[Toleration, ...], taint: Taint) -> bool:
    return any(t.tolerates(taint) for t in tolerations)


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """``matchLabels`` AND ``matchExpressions``. The empty selector matches every pod; a term
    *without* a selector is represented by ``None`` and matches none."""

    match_labels: Labels = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        return all(r.matches(labels) for r in self.match_expressions)


@dataclass(frozen=True, slots=True)
class PodAffinityTerm:
    """Pods matching ``selector`` in ``namespaces`` (empty: the pod's own namespace;
    ``all_namespaces``: every namespace), counted per value of ``topology_key``."""

    selector: LabelSelector | None
    topology_key: str
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False

    def namespace_set(self, own_namespace: str) -> frozenset[str] | None:
        """The namespaces whose pods count (None: all of them)."""
        if self.all_namespaces:
            return None
        return frozenset(self.namespaces or (own_namespace,))

    def matches_pod(self, own_namespace: str, namespace: str, labels: Mapping[str, str]) -> bool:
        if self.selector is None:
            return False
        allowed = self.namespace_set(own_namespace)
        return (allowed is None or namespace in allowed) and self.selector.matches(labels)


@dataclass(frozen=True, slots=True)
class WeightedPodAffinityTerm:
    weight: int
    term: PodAffinityTerm


class Unsatisfiable(enum.StrEnum):
    DO_NOT_SCHEDULE = "DoNotSchedule"
    SCHEDULE_ANYWAY = "ScheduleAnyway"


@dataclass(frozen=True, slots=True)
class SpreadConstraint:
    """A topology spread constraint. ``honor_node_affinity`` (nodeAffinityPolicy, default Honor)
    and ``honor_node_taints`` (nodeTaintsPolicy, default Ignore) choose which nodes' domains count."""

    max_skew: int
    topology_key: str
    when_unsatisfiable: Unsatisfiable = Unsatisfiable.DO_NOT_SCHEDULE
    selector: LabelSelector | None = None
    min_domains: int = 1
    honor_node_affinity: bool = True
    honor_node_taints: bool = False


@dataclass(frozen=True, slots=True)
class Constraints:
    """Everything beyond resources that decides where a pod may (or prefers to) run."""

    node_selector: Labels = ()
    #: required node affinity: OR of terms (None: no requirement)
    required_terms: tuple[NodeSelectorTerm, ...] | None = None
    preferred_terms: tuple[PreferredTerm, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    gates: tuple[str, ...] = ()
    affinity: tuple[PodAffinityTerm, ...] = ()
    anti_affinity: tuple[PodAffinityTerm, ...] = ()
    preferred_affinity: tuple[WeightedPodAffinityTerm, ...] = ()
    preferred_anti_affinity: tuple[WeightedPodAffinityTerm, ...] = ()
    spread: tuple[SpreadConstraint, ...] = ()

    # derived flags, so the hot path asks one attribute instead of ten
    empty: bool = field(init=False, default=True)
    has_pod_terms: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        pod_terms = bool(
            self.affinity or self.anti_affinity or self.preferred_affinity or self.preferred_anti_affinity
            or self.spread
        )
        object.__setattr__(self, "has_pod_terms", pod_terms)
        object.__setattr__(
            self,
            "empty",
            not (
                pod_terms or self.node_selector or self.required_terms is not None or self.preferred_terms
                or self.tolerations or self.gates
            ),
        )

    def node_matches(self, node_name: str, labels: Mapping[str, str]) -> bool:
        """nodeSelector AND required node affinity (kube's ``RequiredNodeAffinity.Match``)."""
        for key, value in self.node_selector:
            if labels.get(key) != value:
                return False
        if self.required_terms is None:
            return True
        return any(t.matches(node_name, labels) for t in self.required_terms)


NO_CONSTRAINTS = Constraints()


def labels_of(mapping: Mapping[str, str]) -> Labels:
    """A pod's labels in the canonical (sorted, hashable) form the core stores."""
    return tuple(sorted(mapping.items()))
