"""Placement framework: filter, score and card-pick plugins behind small Protocols.

One placement cycle for one request::

    FitContext (vectorised fits over all nodes and card slots)
      -> filters      (each returns a node mask; failures are counted per reason)
      -> scores       (each returns 0..100 per node, weighted sum; optional per-node card hint)
      -> select       (highest total; ties broken by the injected RNG, like kube-scheduler)
      -> pick cards   (hint from the winning score plugin, else the profile's card picker)
      -> Allocation   (not yet reserved: callers reserve through a Statement)

Contracts for plugin authors:

* Plugins are pure: read ``state`` and ``ctx``, never mutate them, never do I/O.
* ``filter`` returns a boolean array of shape ``(num_nodes,)``; it is only asked about nodes
  still feasible, but may compute over all of them (vectorised is cheaper than indexing).
* ``score`` returns floats in ``[0, 100]`` (higher is better) for every node; values of infeasible
  nodes are ignored. ``card_hint`` (optional) gives, per node, the card *slot* to use for a
  one-card request.
* Plugins may keep caches keyed by ``state.node_version`` (bumped on every change of a node).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from xpupool.core.cluster import BoolArray, ClusterState, FloatArray, IntArray
from xpupool.core.constraint_masks import constraint_cuts, constraint_mask, preference_scores, remote_device_nodes
from xpupool.core.constraints import NO_CONSTRAINTS
from xpupool.core.model import Allocation, RemotePolicy, Request
from xpupool.core.status import Code, Status


@dataclass(slots=True)
class FitContext:
    """Vectorised fit of one request against the whole cluster, computed once per cycle.

    ``card_fit[n, s]``: slot s of node n can take one vXPU. ``cards_ok[n]``: node n has enough
    such cards. ``host_ok[n]``: the pod's CPU/memory fit on node n. ``device_memory[n, s]``: MiB
    the request takes on that card. ``card_fit``, ``device_memory`` and ``model_ok`` are the
    ledger's cached arrays (kept incrementally): read them, never modify them.
    """

    request: Request
    card_fit: BoolArray
    cards_ok: BoolArray
    host_ok: BoolArray
    device_memory: IntArray
    model_ok: BoolArray

    @staticmethod
    def build(state: ClusterState, request: Request) -> FitContext:
        card_fit, fitting = state.fitting_cards(request)
        return FitContext(
            request=request,
            card_fit=card_fit,
            cards_ok=fitting >= request.count,  # count 0: every node
            host_ok=state.host_fit(request),
            device_memory=state.device_memory_needed(request),
            model_ok=state.model_nodes(request),
        )


@dataclass(frozen=True, slots=True)
class ScoreResult:
    scores: FloatArray
    card_hint: IntArray | None = None


@runtime_checkable
class FilterPlugin(Protocol):
    """Removes nodes. ``reason`` is shown to users for the nodes it removed."""

    name: str
    reason: str

    def filter(self, state: ClusterState, ctx: FitContext) -> BoolArray: ...


@runtime_checkable
class ScorePlugin(Protocol):
    """Ranks feasible nodes, 0..100, higher is better.

    A plugin whose class sets ``node_local = True`` promises that the score (and card hint) of
    node n depends only on node n's state and on the request's shape; the framework then caches
    its results per request shape, per node and per node state (:meth:`ClusterState.node_groups`),
    and asks it only about one node of each changed node's state it has not scored for that shape
    (it passes those as ``feasible``), which makes a decision cost O(changed nodes).

    A plugin may also define ``uniform_score(state) -> float | None``: a value (not None) means
    every node scores exactly that and there is no card hint (e.g. load-aware scoring before any
    utilisation is known), so the framework adds it without asking ``score``.
    """

    name: str

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult: ...


@runtime_checkable
class CardPicker(Protocol):
    """Chooses the card slots on the chosen node (``None`` when they do not fit after all)."""

    name: str

    def pick(self, state: ClusterState, ctx: FitContext, node: int) -> tuple[int, ...] | None: ...


# --------------------------------------------------------------------------- registry
PluginFactory = Callable[..., object]


class Registry:
    """Name -> factory for every plugin kind. Unknown names fail when a profile is built."""

    def __init__(self) -> None:
        self._factories: dict[str, PluginFactory] = {}

    def register(self, name: str) -> Callable[[PluginFactory], PluginFactory]:
        def deco(factory: PluginFactory) -> PluginFactory:
            if name in self._factories:
                raise ValueError(f"plugin {name!r} registered twice")
            self._factories[name] = factory
            return factory

        return deco

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, name: str, **args: object) -> object:
        try:
            factory = self._factories[name]
        except KeyError:
            raise KeyError(f"unknown plugin {name!r}; known: {', '.join(self.names())}") from None
        return factory(**args)


REGISTRY = Registry()


# --------------------------------------------------------------------------- default card picker
class BestFitCards:
    """Default picker: one card -> the fitting card with the least compute left (then least memory,
    then lowest live utilisation); several cards -> whole cards from one topology group when
    possible (the smallest group that suffices), else lowest slots."""

    name = "best-fit-cards"

    def pick(self, state: ClusterState, ctx: FitContext, node: int) -> tuple[int, ...] | None:
        fit = np.nonzero(ctx.card_fit[node])[0]
        count = ctx.request.count
        if len(fit) < count:
            return None
        if count == 1:
            free = state.card_free_milli[node, fit]
            mem = state.card_memory_free[node, fit]
            util = np.nan_to_num(state.card_utilization[node, fit], nan=0.0)
            order = np.lexsort((fit, util, mem, free))
            return (int(fit[order[0]]),)
        groups = state.card_group[node, fit]
        best: tuple[int, ...] | None = None
        for group in np.unique(groups):
            members = fit[groups == group]
            if len(members) >= count and (best is None or len(members) < len(best)):
                best = tuple(int(x) for x in members)
        if best is not None:
            return best[:count]
        return tuple(int(x) for x in fit[:count])


# --------------------------------------------------------------------------- profile + scheduler
@dataclass
class Profile:
    """Which plugins run, with weights. Built from names through the registry."""

    name: str
    filters: list[FilterPlugin] = field(default_factory=list)
    scores: list[tuple[ScorePlugin, float]] = field(default_factory=list)
    picker: CardPicker = field(default_factory=BestFitCards)
    #: truncate total scores to integers before choosing (kube-scheduler's int64 scores); the
    #: FGD artifact's baselines behave this way, so faithful replays set it.
    integer_scores: bool = False
    #: break ties by node order instead of the RNG
    first_on_tie: bool = False

    @staticmethod
    def from_names(
        name: str,
        *,
        scores: Mapping[str, float] | Sequence[str],
        filters: Sequence[str] = (),
        args: Mapping[str, Mapping[str, object]] | None = None,
        integer_scores: bool = False,
        first_on_tie: bool = False,
        registry: Registry = REGISTRY,
    ) -> Profile:
        args = args or {}
        weighted = dict(scores) if isinstance(scores, Mapping) else {s: 1.0 for s in scores}
        built_scores: list[tuple[ScorePlugin, float]] = []
        for plugin_name, weight in weighted.items():
            plugin = registry.create(plugin_name, **dict(args.get(plugin_name, {})))
            if not isinstance(plugin, ScorePlugin):
                raise TypeError(f"{plugin_name} is not a score plugin")
            built_scores.append((plugin, float(weight)))
        built_filters: list[FilterPlugin] = []
        for plugin_name in filters:
            plugin = registry.create(plugin_name, **dict(args.get(plugin_name, {})))
            if not isinstance(plugin, FilterPlugin):
                raise TypeError(f"{plugin_name} is not a filter plugin")
            built_filters.append(plugin)
        return Profile(name, built_filters, built_scores, integer_scores=integer_scores, first_on_tie=first_on_tie)


def shape_key(request: Request) -> tuple[object, ...]:
    """Everything a node-local score may read from a request (not its name, queue, priority)."""
    return (request.cpu_milli, request.memory_mib, request.count, request.share_milli, request.device_memory_mib,
            request.device_memory_pct, request.vendor, request.models, request.exclusive)


def _first_of_each_group(nodes: IntArray, groups: IntArray, count: int) -> IntArray:
    """The first node of each group among ``nodes`` (``groups``: their group ids, below ``count``).
    O(len(nodes) + count), no sort."""
    first = np.full(count, -1, dtype=np.int64)
    first[groups[::-1]] = nodes[::-1]  # the last write wins: the first node of each group
    found: IntArray = first[first >= 0]
    return found


class _ShapeCache:
    """Per (plugin, request shape): the score and card hint of every node, and of every node
    *state* the shape has met.

    Per node, entries are refreshed only for nodes whose ``node_version`` changed since the shape
    was last asked. A changed node's new values come from its :meth:`ClusterState.node_groups`
    group (nodes in one group are equal in everything a node-local plugin may read, so they score
    equally): the plugin is asked only about one feasible node of each group the shape has not
    scored yet. So a new shape costs ~150 plugin rows at 10,000 nodes (not 10,000), and a shape
    last asked long ago no more than the new states it has not seen. Group ids are stable until
    the ledger renumbers them (``group_epoch``), which empties the cache.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self.entries: dict[tuple[object, ...], _ShapeEntry] = {}
        self.state_uid = -1
        self.group_epoch = -1

    def score(self, plugin: ScorePlugin, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        if state.uid != self.state_uid:
            self.entries.clear()
            self.state_uid = state.uid
        key = (plugin.name, *shape_key(ctx.request))
        entry = self.entries.pop(key, None)
        new = entry is None
        if entry is None:
            entry = _ShapeEntry(state.num_nodes)
            stale = asked = np.flatnonzero(feasible)  # every node is stale: whole-array updates below
        else:
            stale = np.flatnonzero(state.node_version != entry.versions)
            asked = stale[feasible[stale]]
        if len(asked):
            groups, count = state.node_groups()
            if state.group_epoch != self.group_epoch:
                for other in self.entries.values():
                    other.forget_groups()
                entry.forget_groups()
                self.group_epoch = state.group_epoch
            entry.grow_groups(count)
            asked_groups = groups[asked]
            unscored = ~entry.group_known[asked_groups]
            if unscored.any():
                reps = _first_of_each_group(asked[unscored], asked_groups[unscored], count)
                ask = np.zeros(state.num_nodes, dtype=bool)
                ask[reps] = True
                fresh = plugin.score(state, ctx, ask)
                rep_groups = groups[reps]
                entry.group_scores[rep_groups] = fresh.scores[reps]
                entry.group_hints[rep_groups] = fresh.card_hint[reps] if fresh.card_hint is not None else -1
                entry.group_known[rep_groups] = True
            if new:  # infeasible nodes get a value too (ignored) but stay unseen (version -1)
                entry.scores = entry.group_scores[groups]
                entry.hints = entry.group_hints[groups]
                entry.versions = np.where(feasible, state.node_version, -1)
            else:
                entry.scores[asked] = entry.group_scores[asked_groups]
                entry.hints[asked] = entry.group_hints[asked_groups]
        if not new:
            # infeasible stale nodes were not refreshed: mark them unseen so they are when feasible
            entry.versions[stale] = -1
            entry.versions[asked] = state.node_version[asked]
        self.entries[key] = entry  # most recently used last
        if len(self.entries) > self.capacity:
            self.entries.pop(next(iter(self.entries)))
        return ScoreResult(entry.scores, entry.hints.astype(np.int64))  # scores: the cache's own array


class _ShapeEntry:
    """One (plugin, shape)'s cached values: per node (with the node versions they saw) and per
    node-state group (``group_known`` says which groups were scored)."""

    def __init__(self, num_nodes: int) -> None:
        self.versions: IntArray = np.full(num_nodes, -1, dtype=np.int64)
        self.scores: FloatArray = np.zeros(num_nodes)
        self.hints: npt.NDArray[np.int16] = np.full(num_nodes, -1, dtype=np.int16)  # card slots
        self.forget_groups()

    def forget_groups(self) -> None:
        self.group_scores: FloatArray = np.zeros(0)
        self.group_hints: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self.group_known: BoolArray = np.zeros(0, dtype=bool)

    def grow_groups(self, count: int) -> None:
        old = len(self.group_known)
        if old >= count:
            return
        size = max(count, 2 * old)
        self.group_scores = np.concatenate([self.group_scores, np.zeros(size - old)])
        self.group_hints = np.concatenate([self.group_hints, np.full(size - old, -1, dtype=np.int16)])
        self.group_known = np.concatenate([self.group_known, np.zeros(size - old, dtype=bool)])


@dataclass(frozen=True, slots=True)
class PlacementResult:
    status: Status
    allocation: Allocation | None = None
    feasible_nodes: int = 0


class Scheduler:
    """Places one request at a time with a :class:`Profile`. Pure: no I/O, RNG injected.

    :meth:`place` decides without mutating; :meth:`schedule` decides and reserves.
    """

    def __init__(self, profile: Profile, *, rng: np.random.Generator) -> None:
        self.profile = profile
        self.rng = rng
        self._cache = _ShapeCache()

    # ---------------------------------------------------------------- local
    def _feasible(self, state: ClusterState, ctx: FitContext) -> tuple[BoolArray, list[tuple[BoolArray, str]]]:
        """Nodes passing every filter, and the filters as ``(mask, reason)`` for :func:`_reasons`
        (counting per reason costs as much again: only done when nothing is feasible)."""
        request = ctx.request
        cuts: list[tuple[BoolArray, str]] = []
        if request.count > 0:
            cuts.append((state.has_cards, "have no accelerator"))
            cuts.append((ctx.model_ok, "have no card of the requested vendor/model"))
            cuts.append((ctx.cards_ok, f"lack {request.count} card(s) with {request.share_milli / 10:g}% compute, "
                                       "the memory and a tenant slot free"))
        if request.vxpu_slots > 0:
            cuts.append((state.vxpu_served, "are not served by the xpupool node agent (their kubelet advertises "
                                            "no xpupool.io/vxpu: no agent, not registered yet, or a runtime without "
                                            "CDI)"))
            cuts.append((state.vxpu_slots_free >= request.vxpu_slots, "have no xpupool.io/vxpu slot left (their "
                                                                       "kubelet would refuse the pod)"))
        cuts.append((state.cpu_free >= request.cpu_milli, "lack cpu"))
        cuts.append((state.memory_free >= request.memory_mib, "lack memory"))
        cuts.extend(constraint_cuts(state, request))
        cuts.extend((plugin.filter(state, ctx), plugin.reason) for plugin in self.profile.filters)
        feasible = cuts[0][0].copy()
        for mask, _ in cuts[1:]:
            feasible &= mask
        return feasible, cuts

    @staticmethod
    def _reasons(num_nodes: int, cuts: list[tuple[BoolArray, str]]) -> list[str]:
        """"N node(s) <reason>" for each filter, counting each node under the first that removed it."""
        reasons: list[str] = []
        left = np.ones(num_nodes, dtype=bool)
        for mask, why in cuts:
            removed = int((left & ~mask).sum())
            if removed:
                reasons.append(f"{removed} node(s) {why}")
            left &= mask
        return reasons

    def _select(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> tuple[int, IntArray | None]:
        candidates = np.nonzero(feasible)[0]
        if len(candidates) == 1 and not self.profile.scores:
            return int(candidates[0]), None
        total = np.zeros(state.num_nodes)
        hint: IntArray | None = None
        best_weight = -1.0
        for plugin, weight in self.profile.scores:
            uniform = getattr(plugin, "uniform_score", None)
            value = uniform(state) if uniform is not None else None
            if value is not None:
                total += weight * value  # what adding the all-equal scores would add, bit for bit
                continue
            if getattr(plugin, "node_local", False):
                result = self._cache.score(plugin, state, ctx, feasible)
            else:
                result = plugin.score(state, ctx, feasible)
            total += weight * result.scores
            if result.card_hint is not None and weight > best_weight:
                hint, best_weight = result.card_hint, weight
        preferences = preference_scores(state, ctx.request, feasible)
        if preferences is not None:
            total += preferences  # the pod's own wishes outrank the policy's (kube-scheduler's weights)
        values = total[candidates]
        if self.profile.integer_scores:
            values = np.floor(values + 1e-9)
        top = candidates[values >= values.max() - 1e-9]
        chosen = int(top[0]) if len(top) == 1 or self.profile.first_on_tie else int(self.rng.choice(top))
        return chosen, hint

    def _cards(self, state: ClusterState, ctx: FitContext, node: int, hint: IntArray | None) -> tuple[int, ...] | None:
        if ctx.request.count == 0:
            return ()
        if hint is not None and ctx.request.count == 1 and hint[node] >= 0 and ctx.card_fit[node, hint[node]]:
            return (int(hint[node]),)
        return self.profile.picker.pick(state, ctx, node)

    def _allocation(self, state: ClusterState, ctx: FitContext, host: int, dev: int,
                    slots: tuple[int, ...]) -> Allocation:
        request = ctx.request
        remote = host != dev
        return Allocation(
            pod=request.name,
            node=state.nodes[host].name,
            device_node=state.nodes[dev].name,
            cards=tuple(int(state.card_index[dev, s]) for s in slots),
            share_milli=request.share_milli,
            device_memory_mib=tuple(int(ctx.device_memory[dev, s]) for s in slots),
            remote_mbps=request.remote_mbps if remote else 0,
        )

    def place_local(self, state: ClusterState, request: Request, ctx: FitContext | None = None,
                    *, restrict: BoolArray | None = None) -> PlacementResult:
        """Best local placement; ``restrict`` limits the candidate nodes (preemption what-ifs)."""
        if request.constraints.gates:
            return PlacementResult(Status.gated(*request.constraints.gates))
        ctx = ctx or FitContext.build(state, request)
        feasible, cuts = self._feasible(state, ctx)
        if restrict is not None:
            feasible = feasible & restrict
        count = int(feasible.sum())
        if count == 0:
            reasons = self._reasons(state.num_nodes, cuts)
            return PlacementResult(Status.unschedulable(*(reasons or ["no node fits"])), None, 0)
        node, hint = self._select(state, ctx, feasible)
        slots = self._cards(state, ctx, node, hint)
        if slots is None:
            return PlacementResult(Status.error(f"card picker found no cards on {state.nodes[node].name}"))
        return PlacementResult(Status.success(), self._allocation(state, ctx, node, node, slots), count)

    # ---------------------------------------------------------------- remote
    def place_remote(self, state: ClusterState, request: Request) -> PlacementResult:
        """vXPUs on a GPU node, the pod on another node (CPU-only preferred).

        Device node: chosen by the profile's scores among nodes with the cards free and
        ``remote_mbps`` of network bandwidth left, neither cordoned nor not-ready (the pod's own
        constraints do not apply there: it does not run there). Pod node: fits CPU/memory and the
        pod's constraints, is not the device node; cost prefers the same rack, then the same zone,
        then CPU-only nodes, then most CPU left.
        """
        device_request = replace(request, cpu_milli=0, memory_mib=0, constraints=NO_CONSTRAINTS, labels=())
        ctx = FitContext.build(state, device_request)
        dev_ok = state.has_cards & ctx.cards_ok & (state.bandwidth_free >= request.remote_mbps)
        dev_ok &= remote_device_nodes(state)
        for plugin in self.profile.filters:
            dev_ok &= plugin.filter(state, ctx)
        host_ok = state.host_fit(request) & constraint_mask(state, request)
        if not dev_ok.any():
            return PlacementResult(Status.unschedulable("no GPU node has the cards and network bandwidth "
                                                        "free for a remote vXPU"))
        if not host_ok.any():
            return PlacementResult(Status.unschedulable("no node has the cpu/memory for the pod"))
        dev, hint = self._select(state, ctx, dev_ok)
        host_ok = host_ok.copy()
        host_ok[dev] = False
        if not host_ok.any():
            return PlacementResult(Status.unschedulable("no other node has the cpu/memory for the pod"))
        cost = np.full(state.num_nodes, 3.0)
        rack, zone = state.rack[dev], state.zone[dev]
        for i in np.nonzero(host_ok)[0]:
            if rack and state.rack[i] == rack:
                cost[i] = 0.0
            elif zone and state.zone[i] == zone:
                cost[i] = 1.0
        cost += np.where(state.has_cards, 0.5, 0.0)
        cost -= 0.1 * state.cpu_free / max(int(state.cpu_capacity.max()), 1)
        cost[~host_ok] = np.inf
        host = int(np.argmin(cost))
        slots = self._cards(state, ctx, dev, hint)
        if slots is None:
            return PlacementResult(Status.error("card picker found no cards for the remote vXPU"))
        return PlacementResult(Status.success(), self._allocation(state, ctx, host, dev, slots),
                               int(dev_ok.sum()))

    # ---------------------------------------------------------------- entry points
    def place(self, state: ClusterState, request: Request) -> PlacementResult:
        """Decide where ``request`` goes, honouring its remote policy and constraints (a pod with
        scheduling gates gets a GATED status, never a placement). Does not mutate ``state``."""
        if request.constraints.gates:
            return PlacementResult(Status.gated(*request.constraints.gates))
        policy = request.remote if request.count > 0 else RemotePolicy.NEVER
        if policy is RemotePolicy.REQUIRED:
            return self.place_remote(state, request)
        if policy is RemotePolicy.PREFERRED:
            result = self.place_remote(state, request)
            return result if result.status.ok else self.place_local(state, request)
        local = self.place_local(state, request)
        if local.status.ok or policy is RemotePolicy.NEVER:
            return local
        remote = self.place_remote(state, request)
        if remote.status.ok:
            return remote
        return PlacementResult(Status(Code.UNSCHEDULABLE, local.status.reasons + remote.status.reasons))

    def schedule(self, state: ClusterState, request: Request) -> PlacementResult:
        """:meth:`place` then reserve on ``state``."""
        result = self.place(state, request)
        if result.status.ok and result.allocation is not None:
            status = state.reserve(result.allocation, request)
            if not status.ok:
                return PlacementResult(status)
        return result

