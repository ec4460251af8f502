"""Pod and Node JSON -> the core's placement constraints (:mod:`xpupool.core.constraints`).

Pod fields read: ``metadata.labels``; ``spec.nodeSelector``; ``spec.affinity`` (node affinity
required/preferred, pod affinity and anti-affinity required/preferred, with ``namespaces``,
``namespaceSelector`` (absent: the pod's namespace; ``{}``: all namespaces),
``matchLabelKeys``/``mismatchLabelKeys`` merged into the selector the way the apiserver does);
``spec.tolerations``; ``spec.schedulingGates``; ``spec.topologySpreadConstraints`` (with
``minDomains``, ``nodeAffinityPolicy``, ``nodeTaintsPolicy``, ``matchLabelKeys``).

Node fields read: ``spec.taints``, ``spec.unschedulable``, and the Ready condition: Ready=False
or Unknown adds the ``node.kubernetes.io/not-ready`` / ``unreachable`` NoSchedule taint the node
lifecycle controller would add (so a dead node is avoided even where that controller is slow).

Never raises on bad input: what cannot be represented is reported in ``errors`` (the pod is then
refused with that message, never scheduled with a constraint silently dropped); everything that
could be read is still returned, so other schedulers' pods still count for affinity and spread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xpupool.core.constraints import (
    TAINT_NOT_READY,
    TAINT_UNREACHABLE,
    Constraints,
    Effect,
    LabelSelector,
    NodeSelectorTerm,
    Operator,
    PodAffinityTerm,
    PreferredTerm,
    Requirement,
    SpreadConstraint,
    Taint,
    Toleration,
    Unsatisfiable,
    WeightedPodAffinityTerm,
    labels_of,
)
from xpupool.kube.transport import JsonDict


def _requirement(raw: Any, errors: list[str], where: str) -> Requirement | None:
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: expected an object")
        return None
    try:
        op = Operator(str(raw.get("operator", "")))
    except ValueError:
        errors.append(f"{where}: unknown operator {raw.get('operator')!r}")
        return None
    values = raw.get("values") or []
    return Requirement(str(raw.get("key", "")), op, tuple(str(v) for v in values))


def _node_term(raw: Any, errors: list[str], where: str) -> NodeSelectorTerm:
    raw = raw if isinstance(raw, Mapping) else {}
    exprs = [_requirement(r, errors, f"{where}.matchExpressions") for r in raw.get("matchExpressions") or []]
    fields = [_requirement(r, errors, f"{where}.matchFields") for r in raw.get("matchFields") or []]
    return NodeSelectorTerm(tuple(r for r in exprs if r), tuple(r for r in fields if r))


def label_selector(raw: Any, errors: list[str], where: str) -> LabelSelector | None:
    """A ``metav1.LabelSelector``; None for a missing one (which selects nothing)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: expected a label selector")
        return None
    exprs = [_requirement(r, errors, f"{where}.matchExpressions") for r in raw.get("matchExpressions") or []]
    match_labels = raw.get("matchLabels") or {}
    return LabelSelector(labels_of({str(k): str(v) for k, v in match_labels.items()}), tuple(r for r in exprs if r))


def _with_label_keys(
    selector: LabelSelector | None, pod_labels: Mapping[str, str], match_keys: Any, mismatch_keys: Any
) -> LabelSelector | None:
    """``matchLabelKeys`` -> ``key In (pod's value)``; ``mismatchLabelKeys`` -> ``key NotIn``."""
    extra: list[Requirement] = []
    for key in match_keys or []:
        if key in pod_labels:
            extra.append(Requirement(str(key), Operator.IN, (pod_labels[key],)))
    for key in mismatch_keys or []:
        if key in pod_labels:
            extra.append(Requirement(str(key), Operator.NOT_IN, (pod_labels[key],)))
    if not extra or selector is None:
        return selector
    return LabelSelector(selector.match_labels, selector.match_expressions + tuple(extra))


def _pod_term(raw: Any, pod_labels: Mapping[str, str], errors: list[str], where: str) -> PodAffinityTerm | None:
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: expected a pod affinity term")
        return None
    topology_key = str(raw.get("topologyKey") or "")
    if not topology_key:
        errors.append(f"{where}: topologyKey is required")
        return None
    selector = _with_label_keys(
        label_selector(raw.get("labelSelector"), errors, f"{where}.labelSelector"),
        pod_labels,
        raw.get("matchLabelKeys"),
        raw.get("mismatchLabelKeys"),
    )
    all_namespaces = False
    ns_selector = raw.get("namespaceSelector")
    if ns_selector is not None:
        if isinstance(ns_selector, Mapping) and not ns_selector.get("matchLabels") and not ns_selector.get(
            "matchExpressions"
        ):
            all_namespaces = True
        else:
            errors.append(
                f"{where}: namespaceSelector with labels is not supported by xpupool "
                "(list the namespaces in `namespaces`, or use {} for all namespaces)"
            )
    namespaces = tuple(str(n) for n in raw.get("namespaces") or [])
    return PodAffinityTerm(selector, topology_key, namespaces, all_namespaces)


def _weighted_terms(
    raw: Any, pod_labels: Mapping[str, str], errors: list[str], where: str
) -> list[WeightedPodAffinityTerm]:
    out: list[WeightedPodAffinityTerm] = []
    for i, item in enumerate(raw or []):
        if not isinstance(item, Mapping):
            continue
        term = _pod_term(item.get("podAffinityTerm"), pod_labels, errors, f"{where}[{i}]")
        if term is not None:
            out.append(WeightedPodAffinityTerm(int(item.get("weight") or 0), term))
    return out


def _spread(raw: Any, pod_labels: Mapping[str, str], errors: list[str], where: str) -> SpreadConstraint | None:
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: expected a topology spread constraint")
        return None
    try:
        when = Unsatisfiable(str(raw.get("whenUnsatisfiable") or "DoNotSchedule"))
        max_skew = int(raw.get("maxSkew") or 0)
        min_domains = int(raw.get("minDomains") or 1)
    except (ValueError, TypeError):
        errors.append(f"{where}: maxSkew/minDomains/whenUnsatisfiable not understood")
        return None
    if max_skew < 1 or min_domains < 1:
        errors.append(f"{where}: maxSkew and minDomains must be at least 1")
        return None
    policies = []
    for field, default in (("nodeAffinityPolicy", "Honor"), ("nodeTaintsPolicy", "Ignore")):
        value = str(raw.get(field) or default)
        if value not in ("Honor", "Ignore"):
            errors.append(f"{where}.{field}: expected Honor or Ignore, got {value!r}")
            value = default
        policies.append(value == "Honor")
    selector = label_selector(raw.get("labelSelector"), errors, f"{where}.labelSelector")
    keys = [k for k in raw.get("matchLabelKeys") or [] if k in pod_labels]
    if keys and selector is not None:  # merged as matchLabels (kube leaves a missing selector alone)
        merged = dict(selector.match_labels) | {str(k): pod_labels[k] for k in keys}
        selector = LabelSelector(labels_of(merged), selector.match_expressions)
    return SpreadConstraint(
        max_skew=max_skew,
        topology_key=str(raw.get("topologyKey") or ""),
        when_unsatisfiable=when,
        selector=selector,
        min_domains=min_domains,
        honor_node_affinity=policies[0],
        honor_node_taints=policies[1],
    )


def pod_constraints(pod: JsonDict) -> tuple[Constraints, tuple[str, ...]]:
    """The pod's constraints and the problems found (empty when everything was understood)."""
    errors: list[str] = []
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    pod_labels: dict[str, str] = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    node_selector = labels_of({str(k): str(v) for k, v in (spec.get("nodeSelector") or {}).items()})
    affinity = spec.get("affinity") or {}
    node_aff = affinity.get("nodeAffinity") or {}
    required_terms: tuple[NodeSelectorTerm, ...] | None = None
    required = node_aff.get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is not None:
        terms = (required or {}).get("nodeSelectorTerms") or []
        required_terms = tuple(
            _node_term(t, errors, f"nodeAffinity.required.nodeSelectorTerms[{i}]") for i, t in enumerate(terms)
        )
    preferred = tuple(
        PreferredTerm(
            int(p.get("weight") or 0), _node_term(p.get("preference"), errors, f"nodeAffinity.preferred[{i}]")
        )
        for i, p in enumerate(node_aff.get("preferredDuringSchedulingIgnoredDuringExecution") or [])
        if isinstance(p, Mapping)
    )
    tolerations = []
    for t in spec.get("tolerations") or []:
        if isinstance(t, Mapping):
            tolerations.append(
                Toleration(
                    key=str(t.get("key") or ""),
                    operator=str(t.get("operator") or "Equal"),
                    value=str(t.get("value") or ""),
                    effect=str(t.get("effect") or ""),
                )
            )
    gates = tuple(str(g.get("name", "")) for g in spec.get("schedulingGates") or [] if isinstance(g, Mapping))
    pod_aff = affinity.get("podAffinity") or {}
    pod_anti = affinity.get("podAntiAffinity") or {}

    def required_pod_terms(block: Mapping[str, Any], name: str) -> tuple[PodAffinityTerm, ...]:
        raw = block.get("requiredDuringSchedulingIgnoredDuringExecution") or []
        terms = [_pod_term(t, pod_labels, errors, f"{name}.required[{i}]") for i, t in enumerate(raw)]
        return tuple(t for t in terms if t is not None)

    spread = [
        _spread(c, pod_labels, errors, f"topologySpreadConstraints[{i}]")
        for i, c in enumerate(spec.get("topologySpreadConstraints") or [])
    ]
    constraints = Constraints(
        node_selector=node_selector,
        required_terms=required_terms,
        preferred_terms=preferred,
        tolerations=tuple(tolerations),
        gates=gates,
        affinity=required_pod_terms(pod_aff, "podAffinity"),
        anti_affinity=required_pod_terms(pod_anti, "podAntiAffinity"),
        preferred_affinity=tuple(
            _weighted_terms(
                pod_aff.get("preferredDuringSchedulingIgnoredDuringExecution"), pod_labels, errors,
                "podAffinity.preferred",
            )
        ),
        preferred_anti_affinity=tuple(
            _weighted_terms(
                pod_anti.get("preferredDuringSchedulingIgnoredDuringExecution"), pod_labels, errors,
                "podAntiAffinity.preferred",
            )
        ),
        spread=tuple(s for s in spread if s is not None),
    )
    return constraints, tuple(errors)


def node_taints(node: JsonDict) -> tuple[tuple[Taint, ...], bool]:
    """``(taints, unschedulable)``; Ready=False/Unknown adds the lifecycle controller's taint."""
    spec = node.get("spec") or {}
    taints: list[Taint] = []
    for raw in spec.get("taints") or []:
        if not isinstance(raw, Mapping):
            continue
        try:
            effect = Effect(str(raw.get("effect") or ""))
        except ValueError:
            continue  # not an effect the scheduler acts on
        taints.append(Taint(str(raw.get("key") or ""), str(raw.get("value") or ""), effect))
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") != "Ready" or cond.get("status") == "True":
            continue
        key = TAINT_NOT_READY if cond.get("status") == "False" else TAINT_UNREACHABLE
        if not any(t.key == key and t.effect is Effect.NO_SCHEDULE for t in taints):
            taints.append(Taint(key, "", Effect.NO_SCHEDULE))
    return tuple(taints), bool(spec.get("unschedulable"))
