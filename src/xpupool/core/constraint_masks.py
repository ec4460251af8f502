"""Constraints evaluated over the whole cluster at once: node masks (filters) and scores.

Called by :class:`~xpupool.core.framework.Scheduler` for every request, after the resource fit:

* :func:`constraint_cuts` yields ``(mask, reason)`` pairs, one per hard rule, in kube-scheduler's
  words (the framework counts the nodes each removes for the pending message): cordons, untolerated
  NoSchedule/NoExecute taints, node selector + required node affinity, required pod affinity, pod
  anti-affinity (the pod's own and existing pods' symmetric rules) and DoNotSchedule topology
  spread. Nothing is yielded for a request without constraints on an untainted cluster.
* :func:`preference_scores` returns the soft rules as points to add to the policy's total
  (kube-scheduler's default plugin weights: TaintToleration 3, NodeAffinity 2, PodTopologySpread 2,
  InterPodAffinity 2, each normalised to 0..100 over the feasible nodes), or None when no soft
  rule applies — so the placement policies' figures are untouched for unconstrained pods.

Node-static masks come cached from :class:`~xpupool.core.nodeattrs.NodeAttributes`; per-node pod
counts from :class:`~xpupool.core.podindex.PodIndex` (kept current by the ledger). Everything is
numpy over ``num_nodes``; per rule the cost is O(nodes), independent of the number of pods.

Semantics follow kube-scheduler (NodeUnschedulable, TaintToleration, NodeAffinity,
InterPodAffinity, PodTopologySpread) including its corner cases: an empty node selector term
matches no node; a spread selector that is empty counts no pods but the pod still matches it;
the first pod of a self-affine group may go anywhere with the topology keys. One deliberate
difference: pods that are terminating still count toward spread until they are gone (the ledger
keeps them while they hold cards); kube-scheduler skips them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np

from xpupool.core.cluster import BoolArray, ClusterState, FloatArray, IntArray
from xpupool.core.constraints import (
    TAINT_NOT_READY,
    TAINT_UNREACHABLE,
    Constraints,
    LabelSelector,
    PodAffinityTerm,
    PreferredTerm,
    SpreadConstraint,
    Toleration,
    Unsatisfiable,
)
from xpupool.core.model import Request
from xpupool.core.nodeattrs import Column, NodeAttributes

#: kube-scheduler's default score plugin weights
WEIGHT_TAINTS = 3.0
WEIGHT_NODE_AFFINITY = 2.0
WEIGHT_SPREAD = 2.0
WEIGHT_POD_AFFINITY = 2.0
#: above this many distinct untolerated taints the pending message names them as one group
_TAINTS_NAMED = 8


def constraint_cuts(state: ClusterState, request: Request) -> Iterator[tuple[BoolArray, str]]:
    """Hard rules as node masks with the reason shown for the nodes each removes."""
    c = request.constraints
    if state.node_constraints:
        attrs = state.node_attrs
        yield attrs.schedulable(c.tolerations), "were unschedulable"
        yield from _taint_cuts(attrs, c)
    if not c.empty:
        yield from _own_cuts(state, request)
    if state.pod_index.anti_terms:
        existing = _existing_anti_affinity(state, state.node_attrs, request)
        if existing is not None:
            yield existing, "didn't satisfy existing pods anti-affinity rules"


def _own_cuts(state: ClusterState, request: Request) -> Iterator[tuple[BoolArray, str]]:
    c = request.constraints
    attrs = state.node_attrs
    affinity = attrs.node_affinity(c)
    if affinity is not None:
        yield affinity, "didn't match Pod's node affinity/selector"
    if not c.has_pod_terms:
        return
    labels = dict(request.labels)
    if c.affinity:
        yield _pod_affinity(state, attrs, request, labels), "didn't match pod affinity rules"
    if c.anti_affinity:
        yield _pod_anti_affinity(state, attrs, request), "didn't match pod anti-affinity rules"
    hard = [s for s in c.spread if s.when_unsatisfiable is Unsatisfiable.DO_NOT_SCHEDULE]
    if hard:
        yield _spread(state, attrs, request, labels, hard), "didn't match pod topology spread constraints"


def constraint_mask(state: ClusterState, request: Request) -> BoolArray:
    """AND of every :func:`constraint_cuts` mask (all nodes when nothing constrains)."""
    mask = np.ones(state.num_nodes, dtype=bool)
    for cut, _ in constraint_cuts(state, request):
        mask &= cut
    return mask


def remote_device_nodes(state: ClusterState) -> BoolArray:
    """Nodes that may serve new remote vXPUs: not cordoned, not tainted not-ready/unreachable.
    (The pod does not run there, so its tolerations of other taints do not matter.)"""
    if not state.node_constraints:
        return np.ones(state.num_nodes, dtype=bool)
    attrs = state.node_attrs
    mask = ~attrs.unschedulable
    for j, taint in enumerate(attrs.taints):
        if taint.key in (TAINT_NOT_READY, TAINT_UNREACHABLE):
            mask &= ~attrs.taint_matrix[:, j]
    return mask


def _taint_cuts(attrs: NodeAttributes, c: Constraints) -> Iterator[tuple[BoolArray, str]]:
    bad = attrs.untolerated_hard_taints(c.tolerations)
    if len(bad) > _TAINTS_NAMED:
        yield attrs.tolerated_taints(c.tolerations), "had untolerated taints"
        return
    for j in bad:
        yield ~attrs.taint_matrix[:, j], f"had untolerated taint {attrs.taints[j]}"


# --------------------------------------------------------------------------- pod terms
def _query_of(term: PodAffinityTerm, namespace: str) -> tuple[tuple[LabelSelector, frozenset[str] | None], ...]:
    assert term.selector is not None
    return ((term.selector, term.namespace_set(namespace)),)


def _domain_totals(col: Column, counts: IntArray | FloatArray, eligible: BoolArray | None = None) -> FloatArray:
    """Sum of ``counts`` per domain (value of the column) over ``eligible`` nodes having the key."""
    sel = col.present if eligible is None else col.present & eligible
    totals = np.bincount(col.ids[sel], weights=counts[sel], minlength=len(col.vocab))
    return np.asarray(totals, dtype=np.float64)


def _per_node(col: Column, per_domain: FloatArray) -> FloatArray:
    """A per-domain value looked up for every node (0 where the node lacks the key)."""
    if not len(per_domain):
        return np.zeros(len(col.ids))
    out: FloatArray = np.where(col.present, per_domain[np.maximum(col.ids, 0)], 0.0)
    return out


def _pod_affinity(state: ClusterState, attrs: NodeAttributes, request: Request, labels: Mapping[str, str]) -> BoolArray:
    terms = request.constraints.affinity
    has_keys = np.ones(state.num_nodes, dtype=bool)
    for term in terms:
        has_keys &= attrs.column(term.topology_key).present
    if any(t.selector is None for t in terms):
        return np.zeros(state.num_nodes, dtype=bool)  # a term without selector matches no pod
    query = tuple(clause for t in terms for clause in _query_of(t, request.namespace))
    counts = state.pod_index.counts(query)  # pods matching ALL terms
    exist = np.ones(state.num_nodes, dtype=bool)
    anywhere = False
    for term in terms:
        col = attrs.column(term.topology_key)
        totals = _domain_totals(col, counts)
        anywhere = anywhere or bool(totals.any())
        exist &= _per_node(col, totals) > 0
    if not anywhere and all(t.matches_pod(request.namespace, request.namespace, labels) for t in terms):
        return has_keys  # the first pod of a group that is affine to itself
    return has_keys & exist


def _pod_anti_affinity(state: ClusterState, attrs: NodeAttributes, request: Request) -> BoolArray:
    ok = np.ones(state.num_nodes, dtype=bool)
    for term in request.constraints.anti_affinity:
        if term.selector is None:
            continue  # matches no pod
        col = attrs.column(term.topology_key)
        counts = state.pod_index.counts(_query_of(term, request.namespace))
        ok &= ~(_per_node(col, _domain_totals(col, counts)) > 0)
    return ok


def _existing_anti_affinity(state: ClusterState, attrs: NodeAttributes, request: Request) -> BoolArray | None:
    """Nodes not refused by an existing pod's anti-affinity; None when no such term matches."""
    ok: BoolArray | None = None
    for term, counts in state.pod_index.anti_terms_matching(request.namespace, request.labels):
        col = attrs.column(term.topology_key)
        blocked = _per_node(col, _domain_totals(col, counts)) > 0
        ok = ~blocked if ok is None else ok & ~blocked
    return ok


def _spread_counts(state: ClusterState, constraint: SpreadConstraint, namespace: str) -> IntArray:
    selector = constraint.selector
    if selector is None or (not selector.match_labels and not selector.match_expressions):
        return np.zeros(state.num_nodes, dtype=np.int64)  # kube counts no pod for an empty selector
    return state.pod_index.counts(((selector, frozenset((namespace,))),))


def _spread_eligible(attrs: NodeAttributes, request: Request, constraint: SpreadConstraint,
                     has_keys: BoolArray) -> BoolArray:
    """Nodes whose domains count for ``constraint`` (node inclusion policies)."""
    eligible = has_keys
    c = request.constraints
    if constraint.honor_node_affinity:
        affinity = attrs.node_affinity(c)
        if affinity is not None:
            eligible = eligible & affinity
    if constraint.honor_node_taints:
        eligible = eligible & attrs.tolerated_taints(c.tolerations)
    return eligible


def _spread(state: ClusterState, attrs: NodeAttributes, request: Request, labels: Mapping[str, str],
            constraints: list[SpreadConstraint]) -> BoolArray:
    has_keys = np.ones(state.num_nodes, dtype=bool)
    for constraint in constraints:
        has_keys &= attrs.column(constraint.topology_key).present
    ok = has_keys.copy()
    for constraint in constraints:
        col = attrs.column(constraint.topology_key)
        eligible = _spread_eligible(attrs, request, constraint, has_keys)
        counts = _spread_counts(state, constraint, request.namespace)
        totals = _domain_totals(col, counts, eligible)
        domains = np.bincount(col.ids[eligible & col.present], minlength=len(col.vocab)) > 0
        count = int(domains.sum())
        minimum = float(totals[domains].min()) if count and count >= constraint.min_domains else 0.0
        self_match = 1.0 if constraint.selector is not None and constraint.selector.matches(labels) else 0.0
        ok &= _per_node(col, totals) + self_match - minimum <= constraint.max_skew
    return ok


# --------------------------------------------------------------------------- scores
def _normalised(raw: FloatArray, feasible: BoolArray, *, reverse: bool = False) -> FloatArray:
    """0..100 over the feasible nodes (higher raw = higher score, or lower with ``reverse``)."""
    out = np.zeros(len(raw))
    if not feasible.any():
        return out
    values = raw[feasible]
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        out[feasible] = 100.0
        return out
    scaled = (values - low) / (high - low)
    out[feasible] = 100.0 * (1.0 - scaled if reverse else scaled)
    return out


def _static_points(attrs: NodeAttributes, tolerations: tuple[Toleration, ...],
                   preferred: tuple[PreferredTerm, ...]) -> FloatArray | None:
    """PreferNoSchedule taints and preferred node affinity: they depend on the node set only, so
    they are normalised over all nodes (not the feasible ones, as kube-scheduler does) and cached
    per (tolerations, preferred terms). A cheap approximation on purpose: only scores, never
    feasibility, and the same ordering whenever the feasible nodes span the range."""
    total: FloatArray | None = None
    everywhere = np.ones(attrs.num_nodes, dtype=bool)
    if attrs.has_soft_taints:
        total = WEIGHT_TAINTS * _normalised(attrs.prefer_no_schedule(tolerations), everywhere, reverse=True)
    if preferred:
        points = WEIGHT_NODE_AFFINITY * _normalised(attrs.preferred_affinity(preferred), everywhere)
        total = points if total is None else total + points
    return total


def preference_scores(state: ClusterState, request: Request, feasible: BoolArray) -> FloatArray | None:
    """Soft rules as points to add to the policy's score (None: no soft rule applies)."""
    c = request.constraints
    attrs = state.node_attrs if state.node_constraints or not c.empty else None
    total: FloatArray | None = None

    def add(points: FloatArray) -> None:
        nonlocal total
        total = points if total is None else total + points

    if attrs is not None:
        static = attrs.static_preferences(c.tolerations, c.preferred_terms, _static_points)
        if static is not None:
            add(static)
    if c.empty or attrs is None:
        return total
    soft = [s for s in c.spread if s.when_unsatisfiable is Unsatisfiable.SCHEDULE_ANYWAY]
    if soft:
        add(WEIGHT_SPREAD * _spread_score(state, attrs, request, soft, feasible))
    if c.preferred_affinity or c.preferred_anti_affinity:
        raw = np.zeros(state.num_nodes)
        for weighted, sign in [(w, 1.0) for w in c.preferred_affinity] + [(w, -1.0) for w in c.preferred_anti_affinity]:
            term = weighted.term
            if term.selector is None:
                continue
            col = attrs.column(term.topology_key)
            counts = state.pod_index.counts(_query_of(term, request.namespace))
            raw += sign * weighted.weight * _per_node(col, _domain_totals(col, counts))
        add(WEIGHT_POD_AFFINITY * _normalised(raw, feasible))
    return total


def _spread_score(state: ClusterState, attrs: NodeAttributes, request: Request,
                  constraints: list[SpreadConstraint], feasible: BoolArray) -> FloatArray:
    """Fewer matching pods in the node's domains scores higher (kube: weighted by log(domains+2));
    nodes lacking a topology key score lowest."""
    has_keys = np.ones(state.num_nodes, dtype=bool)
    for constraint in constraints:
        has_keys &= attrs.column(constraint.topology_key).present
    raw = np.zeros(state.num_nodes)
    for constraint in constraints:
        col = attrs.column(constraint.topology_key)
        eligible = _spread_eligible(attrs, request, constraint, has_keys)
        counts = _spread_counts(state, constraint, request.namespace)
        totals = _domain_totals(col, counts, eligible)
        domains = int((np.bincount(col.ids[eligible & col.present], minlength=len(col.vocab)) > 0).sum())
        raw += _per_node(col, totals) * math.log(domains + 2) + (constraint.max_skew - 1)
    scores = _normalised(raw, feasible & has_keys, reverse=True)
    return scores
