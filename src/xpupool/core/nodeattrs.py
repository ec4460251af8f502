"""Static node attributes as numpy columns: labels, names, taints, cordons.

Built once per :class:`~xpupool.core.cluster.ClusterState` node set (nodes are immutable: a
change of labels or taints is a new state) and shared by its snapshots. Every mask computed from
a constraint is cached by that constraint (they are frozen values), so the pods of one
Deployment pay for their node selector once per node set, not once per decision.

Label columns: ``ids[n]`` is the id of node n's value for the key in that key's vocabulary, -1
when the node lacks the key. Integer views (for Gt/Lt) are built per key on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from xpupool.core.constraints import (
    FIELD_NODE_NAME,
    TAINT_UNSCHEDULABLE,
    Constraints,
    Effect,
    Labels,
    NodeSelectorTerm,
    Operator,
    PreferredTerm,
    Requirement,
    Taint,
    Toleration,
    parse_int64,
    tolerated,
)
from xpupool.core.model import Node

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

_UNSCHEDULABLE_TAINT = Taint(TAINT_UNSCHEDULABLE, "", Effect.NO_SCHEDULE)
_HARD_EFFECTS = (Effect.NO_SCHEDULE, Effect.NO_EXECUTE)


class Column:
    """One label key across all nodes."""

    def __init__(self, values: Sequence[str | None]) -> None:
        self.vocab: dict[str, int] = {}
        ids = np.full(len(values), -1, dtype=np.int64)
        for i, value in enumerate(values):
            if value is not None:
                ids[i] = self.vocab.setdefault(value, len(self.vocab))
        self.ids: IntArray = ids
        self.present: BoolArray = ids >= 0
        self._ints: tuple[IntArray, BoolArray] | None = None

    def isin(self, values: Sequence[str]) -> BoolArray:
        wanted = [self.vocab[v] for v in values if v in self.vocab]
        if not wanted:
            return np.zeros(len(self.ids), dtype=bool)
        if len(wanted) == 1:
            return np.asarray(self.ids == wanted[0])
        lookup = np.zeros(len(self.vocab), dtype=bool)
        lookup[wanted] = True
        return self.present & lookup[np.maximum(self.ids, 0)]

    def ints(self) -> tuple[IntArray, BoolArray]:
        """Per node: the value as an int64 and whether it is one (kube's ParseInt rule)."""
        if self._ints is None:
            parsed = [parse_int64(v) for v in self.vocab]
            vocab_ok = np.array([p is not None for p in parsed] + [False], dtype=bool)
            vocab_int = np.array([p if p is not None else 0 for p in parsed] + [0], dtype=np.int64)
            safe = np.where(self.present, self.ids, len(parsed))  # absent -> the trailing "not an int"
            self._ints = (vocab_int[safe], vocab_ok[safe])
        return self._ints


class NodeAttributes:
    """Columns and cached constraint masks for one immutable node set."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = tuple(nodes)
        self.num_nodes = len(self.nodes)
        self._columns: dict[str, Column] = {}
        self._names = Column([n.name for n in self.nodes])
        self.unschedulable: BoolArray = np.array([n.unschedulable for n in self.nodes], dtype=bool)
        taints: dict[Taint, int] = {}
        for node in self.nodes:
            for taint in node.taints:
                taints.setdefault(taint, len(taints))
        self.taints: list[Taint] = list(taints)
        self.taint_matrix: BoolArray = np.zeros((self.num_nodes, len(self.taints)), dtype=bool)
        for i, node in enumerate(self.nodes):
            for taint in node.taints:
                self.taint_matrix[i, taints[taint]] = True
        self._hard = np.array([t.effect in _HARD_EFFECTS for t in self.taints], dtype=bool)
        self._soft = np.array([t.effect is Effect.PREFER_NO_SCHEDULE for t in self.taints], dtype=bool)
        #: no taint and no cordon anywhere: the taint filter is the identity
        self.untainted = not self.unschedulable.any() and not self._hard.any()
        self.has_soft_taints = bool(self._soft.any())
        self._cache: dict[object, object] = {}

    # ------------------------------------------------------------------ labels
    def column(self, key: str) -> Column:
        col = self._columns.get(key)
        if col is None:
            col = self._columns[key] = Column([n.labels.get(key) for n in self.nodes])
        return col

    def requirement(self, req: Requirement, *, field: bool = False) -> BoolArray:
        """Nodes matching one node-selector requirement (``field``: on ``metadata.name``)."""
        if field:
            if req.key != FIELD_NODE_NAME:
                return np.zeros(self.num_nodes, dtype=bool)
            col = self._names
        else:
            col = self.column(req.key)
        op = req.operator
        if op is Operator.IN:
            return col.isin(req.values)
        if op is Operator.NOT_IN:
            return ~col.isin(req.values)
        if op is Operator.EXISTS:
            return col.present.copy()
        if op is Operator.DOES_NOT_EXIST:
            return ~col.present
        bound = parse_int64(req.values[0]) if len(req.values) == 1 else None
        if bound is None or field:
            return np.zeros(self.num_nodes, dtype=bool)
        values, ok = col.ints()
        return ok & (values > bound if op is Operator.GT else values < bound)

    def term(self, term: NodeSelectorTerm) -> BoolArray:
        if term.empty:
            return np.zeros(self.num_nodes, dtype=bool)
        mask = np.ones(self.num_nodes, dtype=bool)
        for req in term.match_expressions:
            mask &= self.requirement(req)
        for req in term.match_fields:
            mask &= self.requirement(req, field=True)
        return mask

    def selector(self, pairs: Labels) -> BoolArray:
        mask = np.ones(self.num_nodes, dtype=bool)
        for key, value in pairs:
            mask &= self.column(key).isin((value,))
        return mask

    def node_affinity(self, constraints: Constraints) -> BoolArray | None:
        """nodeSelector AND required node affinity; None when the pod has neither."""
        if not constraints.node_selector and constraints.required_terms is None:
            return None
        key = ("affinity", constraints.node_selector, constraints.required_terms)
        hit = self._cache.get(key)
        if hit is None:
            mask = self.selector(constraints.node_selector)
            if constraints.required_terms is not None:
                either = np.zeros(self.num_nodes, dtype=bool)
                for term in constraints.required_terms:
                    either |= self.term(term)
                mask &= either
            hit = self._cache[key] = mask
        assert isinstance(hit, np.ndarray)
        return hit

    def preferred_affinity(self, terms: tuple[PreferredTerm, ...]) -> FloatArray:
        """Sum of the weights of the preferred terms each node matches."""
        key = ("preferred", terms)
        hit = self._cache.get(key)
        if hit is None:
            total = np.zeros(self.num_nodes)
            for pref in terms:
                total += pref.weight * self.term(pref.term)
            hit = self._cache[key] = total
        assert isinstance(hit, np.ndarray)
        return hit

    def static_preferences(
        self,
        tolerations: tuple[Toleration, ...],
        preferred: tuple[PreferredTerm, ...],
        compute: Callable[[NodeAttributes, tuple[Toleration, ...], tuple[PreferredTerm, ...]], FloatArray | None],
    ) -> FloatArray | None:
        """``compute(self, tolerations, preferred)`` cached (node-static score points)."""
        if not self.has_soft_taints and not preferred:
            return None
        key = ("points", tolerations, preferred)
        if key not in self._cache:
            self._cache[key] = compute(self, tolerations, preferred)
        hit = self._cache[key]
        assert hit is None or isinstance(hit, np.ndarray)
        return hit

    # ------------------------------------------------------------------ taints
    def untolerated_hard_taints(self, tolerations: tuple[Toleration, ...]) -> tuple[int, ...]:
        """Columns of the NoSchedule/NoExecute taints the tolerations do not cover."""
        key = ("hard", tolerations)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = tuple(
                j for j, t in enumerate(self.taints) if self._hard[j] and not tolerated(tolerations, t)
            )
        assert isinstance(hit, tuple)
        return hit

    def tolerated_taints(self, tolerations: tuple[Toleration, ...]) -> BoolArray:
        """Nodes whose NoSchedule/NoExecute taints are all tolerated (cordons not included)."""
        key = ("taints", tolerations)
        hit = self._cache.get(key)
        if hit is None:
            bad = list(self.untolerated_hard_taints(tolerations))
            hit = self._cache[key] = ~self.taint_matrix[:, bad].any(axis=1)
        assert isinstance(hit, np.ndarray)
        return hit

    def untolerated_taint(self, tolerations: tuple[Toleration, ...], node: int) -> Taint | None:
        """The first hard taint of ``node`` the tolerations do not cover (for messages)."""
        for j in np.nonzero(self.taint_matrix[node])[0]:
            taint = self.taints[int(j)]
            if taint.effect in _HARD_EFFECTS and not tolerated(tolerations, taint):
                return taint
        return None

    def schedulable(self, tolerations: tuple[Toleration, ...]) -> BoolArray:
        """Not cordoned, or the pod tolerates ``node.kubernetes.io/unschedulable:NoSchedule``."""
        if tolerated(tolerations, _UNSCHEDULABLE_TAINT):
            return np.ones(self.num_nodes, dtype=bool)
        return ~self.unschedulable

    def prefer_no_schedule(self, tolerations: tuple[Toleration, ...]) -> FloatArray:
        """Per node: how many PreferNoSchedule taints the pod does not tolerate."""
        key = ("soft", tolerations)
        hit = self._cache.get(key)
        if hit is None:
            bad = np.array(
                [soft and not tolerated(tolerations, t) for t, soft in zip(self.taints, self._soft, strict=True)],
                dtype=bool,
            )
            hit = self._cache[key] = self.taint_matrix[:, bad].sum(axis=1).astype(np.float64)
        assert isinstance(hit, np.ndarray)
        return hit
