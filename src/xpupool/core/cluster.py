"""The device ledger: free capacity of every node and card as numpy arrays.

Invariants (checked by property tests): for every node and card, ``0 <= free <= capacity``;
releasing an allocation restores exactly what reserving it took; a card held exclusively has no
other tenant. All mutation goes through :meth:`ClusterState.reserve` / :meth:`ClusterState.release`
(usually via a :class:`~xpupool.core.statement.Statement`).

Arrays are indexed ``[node]`` or ``[node, card_slot]``; nodes with fewer cards than the widest
node have padding slots with ``card_exists == False`` and zero capacity.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from xpupool.core.model import WHOLE_CARD_MILLI, Allocation, Node, Request, Vendor
from xpupool.core.nodeattrs import NodeAttributes
from xpupool.core.podindex import PodIndex
from xpupool.core.status import Status

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

VENDORS: tuple[Vendor, ...] = tuple(Vendor)
NO_LIMIT = 2**62
_STATE_IDS = itertools.count(1)  # identity of ledgers for plugin caches (never reused, unlike id())
_FIT_SHAPES = 64  # fit shapes kept per ledger (each costs N x slots booleans)


@dataclass(frozen=True, slots=True)
class Usage:
    """Totals for reports: compute in milli-cards, memory in MiB."""

    cards: int
    compute_capacity_milli: int
    compute_allocated_milli: int
    device_memory_capacity_mib: int
    device_memory_allocated_mib: int
    cards_in_use: int


class ClusterState:
    """Mutable ledger of free capacity. Cheap to copy (:meth:`copy`) for a per-cycle snapshot."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self.uid = next(_STATE_IDS)
        self.node_index: dict[str, int] = {n.name: i for i, n in enumerate(self.nodes)}
        if len(self.node_index) != len(self.nodes):
            raise ValueError("node names must be unique")
        n = len(self.nodes)
        g = max((len(node.devices) for node in self.nodes), default=0)
        g = max(g, 1)
        self.models: list[str] = sorted({d.model for node in self.nodes for d in node.devices})
        model_id = {m: i for i, m in enumerate(self.models)}
        self.cpu_capacity: IntArray = np.array([x.cpu_milli for x in self.nodes], dtype=np.int64)
        self.memory_capacity: IntArray = np.array([x.memory_mib for x in self.nodes], dtype=np.int64)
        self.bandwidth_capacity: IntArray = np.array([x.network_mbps for x in self.nodes], dtype=np.int64)
        self.card_exists: BoolArray = np.zeros((n, g), dtype=bool)
        self.card_healthy: BoolArray = np.zeros((n, g), dtype=bool)
        self.card_model: IntArray = np.full((n, g), -1, dtype=np.int64)
        self.card_vendor: IntArray = np.full((n, g), -1, dtype=np.int64)
        self.card_group: IntArray = np.zeros((n, g), dtype=np.int64)
        self.card_memory_capacity: IntArray = np.zeros((n, g), dtype=np.int64)
        self.card_index: IntArray = np.full((n, g), -1, dtype=np.int64)
        #: slices a card may hold (the node's kubelet slots per card / the shim's tenant table)
        self.card_tenant_limit: IntArray = np.full((n, g), NO_LIMIT, dtype=np.int64)
        #: held whole through another device plugin (never sliced, never placed on)
        self.card_held: BoolArray = np.zeros((n, g), dtype=bool)
        #: the node's kubelet admits xpupool.io/vxpu at all / how many are still free
        self.vxpu_served: BoolArray = np.array([x.vxpu_slots is None or x.vxpu_slots > 0 for x in self.nodes],
                                               dtype=bool)
        self.vxpu_slots_free: IntArray = np.array(
            [NO_LIMIT if x.vxpu_slots is None else x.vxpu_slots for x in self.nodes], dtype=np.int64
        )
        for i, node in enumerate(self.nodes):
            for j, dev in enumerate(node.devices):
                self.card_exists[i, j] = True
                self.card_healthy[i, j] = dev.healthy
                self.card_tenant_limit[i, j] = dev.max_tenants or NO_LIMIT
                self.card_held[i, j] = bool(dev.held_by)
                self.card_model[i, j] = model_id[dev.model]
                self.card_vendor[i, j] = VENDORS.index(dev.vendor)
                self.card_group[i, j] = dev.topology_group
                self.card_memory_capacity[i, j] = dev.memory_mib
                self.card_index[i, j] = dev.index
        self.card_count: IntArray = self.card_exists.sum(axis=1).astype(np.int64)
        self.has_cards: BoolArray = self.card_count > 0
        self.rack: list[str] = [x.rack for x in self.nodes]
        self.zone: list[str] = [x.zone for x in self.nodes]
        self.cpu_free: IntArray = self.cpu_capacity.copy()
        self.memory_free: IntArray = self.memory_capacity.copy()
        self.bandwidth_free: IntArray = self.bandwidth_capacity.copy()
        self.card_free_milli: IntArray = np.where(self.card_exists, WHOLE_CARD_MILLI, 0).astype(np.int64)
        self.card_memory_free: IntArray = self.card_memory_capacity.copy()
        self.card_tenants: IntArray = np.zeros((n, g), dtype=np.int64)
        self.card_exclusive: BoolArray = np.zeros((n, g), dtype=bool)
        #: live utilization 0..1 per card (from the node agent); NaN = unknown
        self.card_utilization: FloatArray = np.full((n, g), np.nan)
        #: some card has a utilisation sample (else load-aware scores are neutral)
        self.utilization_known = False
        #: bumped on every change of a node, so plugins can cache per-node derived values
        self.node_version: IntArray = np.zeros(n, dtype=np.int64)
        self.allocations: dict[str, tuple[Allocation, Request]] = {}
        #: pods holding cards on each node (device side), for policies that look at neighbours
        self.card_pods: list[set[str]] = [set() for _ in self.nodes]
        #: some node is tainted or cordoned (else the taint filters are skipped)
        self.node_constraints = any(x.taints or x.unschedulable for x in self.nodes)
        self._node_attrs: NodeAttributes | None = None
        #: every pod on its (host) node, by labels: inter-pod affinity and topology spread counts
        self.pod_index = PodIndex(n)
        #: per fit shape: (card_fit (N, G), fitting cards per node, node versions they saw)
        self._fits: dict[tuple[object, ...], tuple[BoolArray, IntArray, IntArray]] = {}
        #: derived from capacity only (never stale within a state): model masks, memory needs
        self._static_cache: dict[tuple[object, ...], npt.NDArray[np.generic]] = {}
        self._keys: IntArray | None = None
        self._key_versions: IntArray = np.full(n, -1, dtype=np.int64)
        self._group_ids: dict[tuple[object, ...], int] = {}
        self._static_rows: list[bytes] | None = None
        #: bumped when :meth:`node_groups` renumbers its ids (caches keyed by group id start over)
        self.group_epoch = 0

    # ------------------------------------------------------------------ queries
    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def slots(self) -> int:
        return int(self.card_exists.shape[1])

    @property
    def node_attrs(self) -> NodeAttributes:
        """Label columns, taints and cached constraint masks of the node set (built on first use,
        shared with snapshots: nodes never change within one state)."""
        if self._node_attrs is None:
            self._node_attrs = NodeAttributes(self.nodes)
        return self._node_attrs

    def copy(self) -> ClusterState:
        """A snapshot: arrays are copied, immutable node objects shared."""
        clone = object.__new__(ClusterState)
        for key, value in self.__dict__.items():
            if isinstance(value, np.ndarray):
                setattr(clone, key, value.copy())
            elif key == "_fits":  # its arrays are updated in place: the copy rebuilds its own
                setattr(clone, key, {})
            elif key == "card_pods":
                setattr(clone, key, [set(x) for x in value])
            elif isinstance(value, dict | list | PodIndex):  # PodIndex.copy is deep
                setattr(clone, key, value.copy())
            else:
                setattr(clone, key, value)
        clone.uid = next(_STATE_IDS)
        return clone

    def node_groups(self) -> tuple[IntArray, int]:
        """``(group, count)``: per node the id of its state (ids below ``count``). Nodes in the same
        group are equal in everything a node-local score may read: free and total capacity,
        every card's attributes and free share/memory, tenants, utilisation, and the shapes of the
        pods on its cards. So they score equally for any request, and the framework scores one of
        each group (at 10,000 nodes most are in a few states). Recomputed only for nodes whose
        ``node_version`` changed. An id keeps meaning the same state until stale ids pile up
        (more than twice the nodes): then ids are renumbered and ``group_epoch`` is bumped."""
        if self._static_rows is None:
            static = (self.card_exists, self.card_healthy, self.card_model, self.card_vendor, self.card_group,
                      self.card_memory_capacity, self.card_tenant_limit, self.card_held)
            self._static_rows = [b"".join(a[i].tobytes() for a in static) for i in range(self.num_nodes)]
        if self._keys is None or len(self._group_ids) > 2 * self.num_nodes + 1024:
            self._keys = np.zeros(self.num_nodes, dtype=np.int64)
            self._key_versions = np.full(self.num_nodes, -1, dtype=np.int64)
            self._group_ids = {}
            self.group_epoch += 1
        stale = np.nonzero(self.node_version != self._key_versions)[0]
        for i in stale.tolist():
            tenants = sorted((r.count, r.share_milli, r.exclusive) for r in
                             (self.allocations[p][1] for p in self.card_pods[i]))
            key = (
                self._static_rows[i], int(self.cpu_free[i]), int(self.memory_free[i]), int(self.bandwidth_free[i]),
                int(self.vxpu_slots_free[i]), bool(self.vxpu_served[i]),
                int(self.cpu_capacity[i]), int(self.memory_capacity[i]), self.card_free_milli[i].tobytes(),
                self.card_memory_free[i].tobytes(), self.card_tenants[i].tobytes(), self.card_exclusive[i].tobytes(),
                self.card_utilization[i].tobytes(), tuple(tenants),
            )
            self._keys[i] = self._group_ids.setdefault(key, len(self._group_ids))
        self._key_versions[stale] = self.node_version[stale]
        return self._keys, len(self._group_ids)

    def model_mask(self, request: Request) -> BoolArray:
        """Cards whose vendor/model/health match the request and that no other device plugin
        holds (capacity not considered). Cached per (vendor, models): callers must not modify
        the result."""
        key = ("model", request.vendor, request.models)
        hit = self._static_cache.get(key)
        if hit is None:
            mask = self.card_exists & self.card_healthy & ~self.card_held
            if request.vendor is not None:
                mask = mask & (self.card_vendor == VENDORS.index(request.vendor))
            if request.models:
                ids = [self.models.index(m) for m in request.models if m in self.models]
                mask = mask & np.isin(self.card_model, ids)
            hit = self._static_cache[key] = mask
        return hit  # type: ignore[return-value]

    def model_nodes(self, request: Request) -> BoolArray:
        """Nodes with at least one card of the request's vendor/model (cached)."""
        key = ("model-nodes", request.vendor, request.models)
        hit = self._static_cache.get(key)
        if hit is None:
            hit = self._static_cache[key] = np.asarray(self.model_mask(request).any(axis=1), dtype=bool)
        return hit  # type: ignore[return-value]

    def device_memory_needed(self, request: Request) -> IntArray:
        """Per-card device memory the request would take on each card slot (cached per memory
        ask: callers must not modify the result)."""
        key = ("memory", request.device_memory_mib, request.device_memory_pct, request.takes_whole_cards)
        hit = self._static_cache.get(key)
        if hit is None:
            if request.device_memory_mib > 0:
                hit = np.full(self.card_exists.shape, request.device_memory_mib, dtype=np.int64)
            elif request.device_memory_pct > 0:
                hit = self.card_memory_capacity * request.device_memory_pct // 100
            elif request.takes_whole_cards:
                hit = self.card_memory_capacity.copy()
            else:
                hit = np.zeros(self.card_exists.shape, dtype=np.int64)
            self._static_cache[key] = hit
        return hit  # type: ignore[return-value]

    def fitting_cards(self, request: Request) -> tuple[BoolArray, IntArray]:
        """``(card_fit, count)``: :meth:`card_fit` and its per-node sum, kept per fit shape and
        recomputed only for nodes whose ``node_version`` changed since the shape was last asked.
        Callers must not modify the results."""
        key = (request.vendor, request.models, request.takes_whole_cards, request.share_milli,
               request.device_memory_mib, request.device_memory_pct)
        entry = self._fits.pop(key, None)
        if entry is None:
            fit = self.card_fit(request)
            entry = (fit, fit.sum(axis=1).astype(np.int64), self.node_version.copy())
        else:
            fit, count, versions = entry
            stale = np.nonzero(self.node_version != versions)[0]
            if len(stale):
                rows = self.card_fit(request, stale)
                fit[stale] = rows
                count[stale] = rows.sum(axis=1)
                versions[stale] = self.node_version[stale]
        self._fits[key] = entry  # most recently used last
        if len(self._fits) > _FIT_SHAPES:
            self._fits.pop(next(iter(self._fits)))
        return entry[0], entry[1]

    def card_fit(self, request: Request, rows: IntArray | slice = slice(None)) -> BoolArray:
        """Cards that could take one vXPU of ``request`` now (of the nodes ``rows``; default all)."""
        mask = self.model_mask(request)[rows]
        if request.takes_whole_cards:
            whole: BoolArray = mask & (self.card_tenants[rows] == 0) & (self.card_free_milli[rows] >= WHOLE_CARD_MILLI)
            return whole
        return (
            mask
            & ~self.card_exclusive[rows]
            & (self.card_free_milli[rows] >= request.share_milli)
            & (self.card_memory_free[rows] >= self.device_memory_needed(request)[rows])
            & (self.card_tenants[rows] < self.card_tenant_limit[rows])
        )

    def host_fit(self, request: Request) -> BoolArray:
        """Nodes whose CPU and memory fit the pod itself."""
        return (self.cpu_free >= request.cpu_milli) & (self.memory_free >= request.memory_mib)

    def usage(self) -> Usage:
        cap = int(self.card_exists.sum()) * WHOLE_CARD_MILLI
        free = int(self.card_free_milli[self.card_exists].sum())
        return Usage(
            cards=int(self.card_exists.sum()),
            compute_capacity_milli=cap,
            compute_allocated_milli=cap - free,
            device_memory_capacity_mib=int(self.card_memory_capacity.sum()),
            device_memory_allocated_mib=int((self.card_memory_capacity - self.card_memory_free).sum()),
            cards_in_use=int((self.card_tenants > 0).sum()),
        )

    # ------------------------------------------------------------------ mutation
    def _slots_of(self, node: int, cards: Iterable[int]) -> list[int]:
        slots = []
        for card in cards:
            hits = np.nonzero(self.card_index[node] == card)[0]
            if len(hits) != 1:
                raise KeyError(f"node {self.nodes[node].name} has no card {card}")
            slots.append(int(hits[0]))
        return slots

    def check(self, allocation: Allocation, request: Request) -> Status:
        """Whether ``allocation`` fits the current free capacity (no mutation)."""
        if allocation.pod in self.allocations:
            return Status.error(f"pod {allocation.pod} already holds an allocation")
        host = self.node_index.get(allocation.node)
        dev = self.node_index.get(allocation.device_node)
        if host is None or dev is None:
            return Status.error(f"unknown node {allocation.node}/{allocation.device_node}")
        if self.cpu_free[host] < request.cpu_milli or self.memory_free[host] < request.memory_mib:
            return Status.unschedulable(f"node {allocation.node}: not enough cpu or memory")
        if allocation.is_remote and self.bandwidth_free[dev] < allocation.remote_mbps:
            return Status.unschedulable(f"node {allocation.device_node}: network bandwidth exhausted")
        try:
            slots = self._slots_of(dev, allocation.cards)
        except KeyError as err:
            return Status.error(str(err))
        if len(set(slots)) != len(slots):
            return Status.error("a card is listed twice")
        exclusive = request.takes_whole_cards
        for slot, mem in zip(slots, allocation.device_memory_mib, strict=True):
            if self.card_free_milli[dev, slot] < allocation.share_milli:
                return Status.unschedulable(f"card {slot} of {allocation.device_node}: compute exhausted")
            if self.card_memory_free[dev, slot] < mem:
                return Status.unschedulable(f"card {slot} of {allocation.device_node}: memory exhausted")
            if self.card_exclusive[dev, slot] or (exclusive and self.card_tenants[dev, slot] > 0):
                return Status.unschedulable(f"card {slot} of {allocation.device_node}: held exclusively")
        return Status.success()

    def reserve(self, allocation: Allocation, request: Request) -> Status:
        """Take the capacity of ``allocation``; refuses (no change) when it does not fit."""
        status = self.check(allocation, request)
        if not status.ok:
            return status
        self._apply(allocation, request, +1)
        self.allocations[allocation.pod] = (allocation, request)
        return status

    def release(self, pod: str) -> Allocation | None:
        """Give back what ``pod`` holds. Idempotent: releasing an unknown pod is a no-op."""
        held = self.allocations.pop(pod, None)
        if held is None:
            return None
        allocation, request = held
        self._apply(allocation, request, -1)
        return allocation

    def _apply(self, allocation: Allocation, request: Request, sign: int) -> None:
        host = self.node_index[allocation.node]
        dev = self.node_index[allocation.device_node]
        slots = self._slots_of(dev, allocation.cards)
        self.cpu_free[host] -= sign * request.cpu_milli
        self.memory_free[host] -= sign * request.memory_mib
        if allocation.is_remote:
            self.bandwidth_free[dev] -= sign * allocation.remote_mbps
        else:
            self.vxpu_slots_free[host] -= sign * request.vxpu_slots
        exclusive = request.takes_whole_cards
        for slot, mem in zip(slots, allocation.device_memory_mib, strict=True):
            self.card_free_milli[dev, slot] -= sign * allocation.share_milli
            self.card_memory_free[dev, slot] -= sign * mem
            self.card_tenants[dev, slot] += sign
            if exclusive:
                self.card_exclusive[dev, slot] = sign > 0
        if slots:
            if sign > 0:
                self.card_pods[dev].add(allocation.pod)
            else:
                self.card_pods[dev].discard(allocation.pod)
        if sign > 0:
            self.pod_index.add(
                allocation.pod, host, request.namespace, dict(request.labels), request.constraints.anti_affinity
            )
        else:
            self.pod_index.remove(allocation.pod)
        self.node_version[host] += 1
        if dev != host:
            self.node_version[dev] += 1

    def set_utilization(self, node: str, utilization: Sequence[float]) -> None:
        """Record live per-card utilization (0..1) reported by the node agent."""
        i = self.node_index[node]
        count = int(self.card_count[i])
        values = np.full(self.slots, np.nan)
        values[: min(count, len(utilization))] = np.clip(np.asarray(utilization[:count], dtype=float), 0, 1)
        self.card_utilization[i] = values
        self.utilization_known = self.utilization_known or not np.isnan(values).all()
        self.node_version[i] += 1
