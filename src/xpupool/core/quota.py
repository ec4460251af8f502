"""Hierarchical queues and quota: guarantees and limits down a tree, borrowing, reclaim, fair share.

The model (the shape of Kueue cohorts, Volcano hierarchical queues and KAI queues)::

    <cluster>                         capacity = every card, CPU and memory of the pool
      research   guaranteed 8 H100, limit 16          (inner queue: aggregates its children)
        vision   guaranteed 2 cards, lend: false      (leaf: pods run here)
        nlp      guaranteed 6 cards
      prod       guaranteed 8 cards, borrow: false

* **Resource dimensions** (:class:`Resources`): ``cpu_milli``, ``memory_mib``, ``xpu_milli``
  (compute, 1000 = one card) and ``device_memory_mib`` (vXPU memory), each also **per card
  model** (``xpu_milli@H100``): a quota entry with a model counts only what runs on that model.
* **Usage** of a queue is the sum over its subtree (conservation: a parent's usage is exactly the
  sum of its children's; a pod is charged to its leaf and every ancestor).
* **Limits** are hard caps at every level: a pod is admitted only if no queue on its path would
  exceed its limit, so a child can never take its parent above the parent's limit.
* **Guarantees**: a queue within its guarantee at every level of its path is *entitled*: the
  quota gate never refuses it; when the cards are held by borrowers, reclaim (preemption of their
  pods) gets the room back.
* **Borrowing**: above its guarantee a queue (``borrowing``) may use what its parent has left:
  the siblings' idle guarantees that they lend (``lending``) and any unguaranteed room, within
  the parent's limit (at the top: the cluster). A queue that does not lend keeps its idle
  guarantee reserved (nobody else may borrow it, so it never has to reclaim).
* **Reclaim**: a pod of queue P may preempt pods of queue V when P's path stays within its
  guarantees after placing the pod (``reclaim_guarantee``), V is ``reclaimable`` and V's branch
  below the common ancestor holds more than its guarantee in a dimension P needs and is
  guaranteed: only borrowed capacity is ever taken back.
* **Governed dimensions**: borrowing rules apply to the dimensions some queue declares a
  guarantee for. A dimension nobody guarantees (often ``cpu``) is limited only by limits and by
  the cluster itself.
* **Fair share** (:meth:`QueueBook.fair_shares`): top-down per level: each child gets
  min(guarantee, demand), the rest is split by weight among children that want more (capped at
  their demand and limit); non-lending idle guarantees are withheld. Ordering of pending pods uses
  the weighted dominant share level by level (hierarchical DRF).

Everything is pure: the caller feeds usage (:meth:`QueueBook.charge`) from the pods it knows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xpupool.core.model import Allocation, Request
from xpupool.core.queue_access import DEFAULT_QUEUE, OPEN, QueueAccess, QueueEntry
from xpupool.core.status import Code, Status

if TYPE_CHECKING:
    from xpupool.core.cluster import ClusterState

CPU = "cpu_milli"
MEMORY = "memory_mib"
XPU = "xpu_milli"
DEVICE_MEMORY = "device_memory_mib"
BASE_DIMS = (CPU, MEMORY, XPU, DEVICE_MEMORY)
_MODEL_SEP = "@"


def model_dim(dim: str, model: str) -> str:
    """The per-model form of an accelerator dimension (``xpu_milli@H100``)."""
    return f"{dim}{_MODEL_SEP}{model}"


def split_dim(dim: str) -> tuple[str, str]:
    """``xpu_milli@H100`` -> (``xpu_milli``, ``H100``); a base dimension -> (dim, "")."""
    base, _, model = dim.partition(_MODEL_SEP)
    return base, model


_DIM_WORDS = {CPU: "cpu (milli)", MEMORY: "memory (MiB)", XPU: "vxpu compute (milli-cards)",
              DEVICE_MEMORY: "vxpu-memory (MiB)"}


def describe_dim(dim: str) -> str:
    base, model = split_dim(dim)
    return _DIM_WORDS.get(base, base) + (f" on {model}" if model else "")


class Resources:
    """An immutable resource vector; absent dimensions are 0 (see the module docstring)."""

    __slots__ = ("_dims",)
    _dims: dict[str, int]

    def __init__(
        self,
        cpu_milli: int = 0,
        memory_mib: int = 0,
        xpu_milli: int = 0,
        device_memory_mib: int = 0,
        *,
        by_model: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        dims = {CPU: cpu_milli, MEMORY: memory_mib, XPU: xpu_milli, DEVICE_MEMORY: device_memory_mib}
        for model, (xpu, memory) in (by_model or {}).items():
            dims[model_dim(XPU, model)] = xpu
            dims[model_dim(DEVICE_MEMORY, model)] = memory
        self._dims = {k: int(v) for k, v in dims.items() if v}

    @classmethod
    def from_dims(cls, dims: Mapping[str, int]) -> Resources:
        out = cls.__new__(cls)
        out._dims = {k: int(v) for k, v in dims.items() if v}
        return out

    @property
    def cpu_milli(self) -> int:
        return self._dims.get(CPU, 0)

    @property
    def memory_mib(self) -> int:
        return self._dims.get(MEMORY, 0)

    @property
    def xpu_milli(self) -> int:
        return self._dims.get(XPU, 0)

    @property
    def device_memory_mib(self) -> int:
        return self._dims.get(DEVICE_MEMORY, 0)

    def get(self, dim: str) -> int:
        return self._dims.get(dim, 0)

    def dims(self) -> Mapping[str, int]:
        """Non-zero dimensions (a copy)."""
        return dict(self._dims)

    def __iter__(self) -> Iterator[str]:
        return iter(self._dims)

    def __add__(self, other: Resources) -> Resources:
        merged = dict(self._dims)
        for k, v in other._dims.items():
            merged[k] = merged.get(k, 0) + v
        return Resources.from_dims(merged)

    def __sub__(self, other: Resources) -> Resources:
        merged = dict(self._dims)
        for k, v in other._dims.items():
            merged[k] = merged.get(k, 0) - v
        return Resources.from_dims(merged)

    def scaled(self, factor: int) -> Resources:
        return Resources.from_dims({k: v * factor for k, v in self._dims.items()})

    def maximum(self, other: Resources) -> Resources:
        keys = set(self._dims) | set(other._dims)
        return Resources.from_dims({k: max(self.get(k), other.get(k)) for k in keys})

    def fits_in(self, other: Resources) -> bool:
        """Every dimension of ``self`` is at most that of ``other`` (absent = 0)."""
        return all(v <= other.get(k) for k, v in self._dims.items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Resources) and self._dims == other._dims

    def __hash__(self) -> int:
        return hash(frozenset(self._dims.items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in sorted(self._dims.items()))
        return f"Resources({inner})"

    @staticmethod
    def of(request: Request) -> Resources:
        """What ``request`` will be charged, as far as it is known before placement: device
        memory given as a percentage and the card model are known only from the allocation
        (:func:`usage_of`). With exactly one allowed model, the model dimensions are included."""
        memory = request.count * request.device_memory_mib
        by_model = {request.models[0]: (request.gpu_milli_total, memory)} if len(request.models) == 1 else None
        return Resources(request.cpu_milli, request.memory_mib, request.gpu_milli_total, memory, by_model=by_model)


class Limits:
    """Upper bounds per dimension; a dimension that is not listed is unbounded."""

    __slots__ = ("_dims",)
    _dims: dict[str, int]

    def __init__(self, dims: Mapping[str, int] | None = None) -> None:
        self._dims = {k: int(v) for k, v in (dims or {}).items()}

    @classmethod
    def of(cls, resources: Resources, *, dims: Iterable[str] = BASE_DIMS[:3]) -> Limits:
        """Bounds taken from ``resources`` for ``dims`` (default cpu, memory, compute)."""
        return cls({d: resources.get(d) for d in dims})

    def get(self, dim: str) -> int | None:
        return self._dims.get(dim)

    def dims(self) -> Mapping[str, int]:
        return dict(self._dims)

    def exceeded_by(self, amount: Resources) -> list[str]:
        """Dimensions in which ``amount`` is above the bound."""
        return [d for d, bound in self._dims.items() if amount.get(d) > bound]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Limits) and self._dims == other._dims

    def __hash__(self) -> int:
        return hash(frozenset(self._dims.items()))

    def __repr__(self) -> str:
        return f"Limits({', '.join(f'{k}={v}' for k, v in sorted(self._dims.items()))})"


UNLIMITED = Limits()


def usage_of(state: ClusterState, request: Request, allocation: Allocation) -> Resources:
    """The exact charge of a placed pod: its CPU and memory, each card's compute and memory,
    also under the card's model."""
    xpu = len(allocation.cards) * allocation.share_milli
    memory = sum(allocation.device_memory_mib)
    by_model: dict[str, tuple[int, int]] = {}
    if allocation.cards:
        dev = state.node_index.get(allocation.device_node)
        for card, card_memory in zip(allocation.cards, allocation.device_memory_mib, strict=True):
            model = _card_model(state, dev, card)
            if model:
                had = by_model.get(model, (0, 0))
                by_model[model] = (had[0] + allocation.share_milli, had[1] + card_memory)
    return Resources(request.cpu_milli, request.memory_mib, xpu, memory, by_model=by_model)


def _card_model(state: ClusterState, node: int | None, card: int) -> str:
    if node is None:
        return ""
    for device in state.nodes[node].devices:
        if device.index == card:
            return device.model
    return ""


def cluster_capacity(state: ClusterState) -> Resources:
    """Everything the pool holds, per dimension (healthy or not: quota is about entitlement)."""
    by_model: dict[str, tuple[int, int]] = {}
    xpu = memory = 0
    for node in state.nodes:
        for device in node.devices:
            had = by_model.get(device.model, (0, 0))
            by_model[device.model] = (had[0] + 1000, had[1] + device.memory_mib)
            xpu += 1000
            memory += device.memory_mib
    return Resources(int(state.cpu_capacity.sum()), int(state.memory_capacity.sum()), xpu, memory,
                     by_model=by_model)


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """One queue of the tree (see the module docstring). ``quota`` is the guarantee.

    Pods run in leaves; an inner queue's guarantee and limit bound its whole subtree.
    """

    name: str
    quota: Resources = field(default_factory=Resources)
    limit: Limits = UNLIMITED
    weight: float = 1.0
    priority: int = 0
    borrowing: bool = True
    reclaimable: bool = True
    parent: str = ""
    lending: bool = True
    reclaim_guarantee: bool = True
    access: QueueAccess = OPEN


class QueueBook:
    """The queue tree with its usage. Pure; the caller charges the pods it knows.

    ``problems`` lists what was wrong with the declared tree and how it was read (an unknown
    parent makes a root, a cycle is cut, guarantees of children above their parent's).
    """

    def __init__(self, queues: Iterable[QueueSpec], capacity: Resources) -> None:
        self.queues: dict[str, QueueSpec] = {q.name: q for q in queues}
        self.queues.setdefault(DEFAULT_QUEUE, QueueSpec(DEFAULT_QUEUE))
        self.capacity = capacity
        self.problems: list[str] = []
        self.parent: dict[str, str] = {}
        for name, spec in sorted(self.queues.items()):
            parent = spec.parent
            if parent and parent not in self.queues:
                self.problems.append(f"queue {name}: parent {parent!r} does not exist; treated as a root")
                parent = ""
            self.parent[name] = parent
        for name in sorted(self.queues):
            seen = {name}
            up = self.parent[name]
            while up:
                if up in seen:
                    self.problems.append(f"queue {name}: parent chain loops back to {up!r}; {name} treated as a root")
                    self.parent[name] = ""
                    break
                seen.add(up)
                up = self.parent[up]
        self.children: dict[str, list[str]] = {"": []}
        for name in sorted(self.queues):
            self.children.setdefault(self.parent[name], []).append(name)
            self.children.setdefault(name, [])
        self.usage: dict[str, Resources] = {name: Resources() for name in self.queues}
        self.governed: frozenset[str] = frozenset(d for q in self.queues.values() for d in q.quota)
        #: effective guarantee: the declared one; where an inner queue declares none for a
        #: dimension, the sum of its children's (a grouping queue pools its children's guarantees)
        self.guarantee: dict[str, Resources] = {}
        for top in self.children[""]:
            self._effective_guarantee(top)
        self._model_dims = any(
            split_dim(d)[1] for q in self.queues.values() for d in (*q.quota, *q.limit.dims())
        )
        for parent, kids in self.children.items():
            bound = self.capacity if not parent else self.queues[parent].quota
            total = sum((self.guarantee[k] for k in kids), Resources())
            over = [d for d in total if total.get(d) > bound.get(d) and (not parent or bound.get(d))]
            if over:
                where = parent or "the cluster"
                self.problems.append(
                    f"guarantees of the children of {where} add up to more than it has in "
                    + ", ".join(describe_dim(d) for d in sorted(over))
                )

    def _effective_guarantee(self, name: str) -> Resources:
        kids = [self._effective_guarantee(k) for k in self.children.get(name, [])]
        declared = self.queues[name].quota
        pooled = sum(kids, Resources())
        self.guarantee[name] = Resources.from_dims(
            {d: declared.get(d) or pooled.get(d) for d in set(declared) | set(pooled)})
        return self.guarantee[name]

    # ------------------------------------------------------------------ structure
    def spec(self, name: str) -> QueueSpec:
        """The spec of ``name``; an unknown queue reads as ``default``."""
        return self.queues.get(name) or self.queues[DEFAULT_QUEUE]

    def is_leaf(self, name: str) -> bool:
        return not self.children.get(name)

    def path(self, name: str) -> list[str]:
        """``name`` and its ancestors, leaf first."""
        out = [self.spec(name).name]
        while self.parent[out[-1]]:
            out.append(self.parent[out[-1]])
        return out

    def entries(self) -> dict[str, QueueEntry]:
        """What :func:`~xpupool.core.queue_access.resolve_queue` needs of every queue."""
        return {
            n: QueueEntry(n, q.access, leaf=self.is_leaf(n), children=tuple(self.children.get(n, ())))
            for n, q in self.queues.items()
        }

    # ------------------------------------------------------------------ usage
    def charge(self, request: Request, amount: Resources | None = None, sign: int = 1) -> None:
        """Add (``sign`` 1) or remove (-1) ``amount`` (default: :meth:`Resources.of`) to the
        request's queue and every ancestor."""
        delta = (amount if amount is not None else Resources.of(request)).scaled(1 if sign > 0 else -1)
        for name in self.path(request.queue):
            self.usage[name] = self.usage[name] + delta

    def held(self, name: str, extra_on: str = "", extra: Resources | None = None) -> Resources:
        """What ``name``'s subtree keeps from its siblings: its usage, plus the idle guarantee of
        every queue in it that does not lend (with ``extra`` charged to leaf ``extra_on``)."""
        kids = self.children.get(name, [])
        spec = self.queues[name]
        if kids:
            own = sum((self.held(k, extra_on, extra) for k in kids), Resources())
        else:
            own = self.usage[name] + (extra if extra is not None and name == extra_on else Resources())
        return own if spec.lending else own.maximum(self.guarantee[name])

    def over_quota(self, name: str) -> bool:
        name = self.spec(name).name
        return not self.usage[name].fits_in(self.guarantee[name])

    def dominant_share(self, name: str) -> float:
        """DRF: the largest share of the cluster's base dimensions ``name`` holds, over its weight."""
        used = self.usage.get(name, Resources())
        shares = [used.get(d) / self.capacity.get(d) for d in BASE_DIMS if self.capacity.get(d) > 0]
        return max(shares, default=0.0) / max(self.spec(name).weight, 1e-9)

    def order_key(self, name: str) -> tuple[tuple[int, float], ...]:
        """Hierarchical DRF sort key: per level from the top, (-priority, weighted dominant share)."""
        return tuple((-self.spec(n).priority, self.dominant_share(n)) for n in reversed(self.path(name)))

    # ------------------------------------------------------------------ admission
    def gate(self, request: Request, amount: Resources | None = None) -> Status:
        """The quota gate (pure: nothing is charged).

        For every queue on the path: the limit is a hard cap; above its guarantee (in a governed
        dimension the pod uses) the queue must borrow and its parent must have the room.

        * Success: admit.
        * UNSCHEDULABLE: refused now, but the pod's leaf stays within its guarantee and may
          reclaim: preempting pods that borrowed (:meth:`may_reclaim`) can make the room; the
          preemption what-if re-runs this gate with the victims refunded.
        * WAIT: refused until usage goes down or the queues change.
        """
        charge = amount if amount is not None else Resources.of(request)
        leaf = self.spec(request.queue).name
        if not self.is_leaf(leaf):
            return Status(Code.UNSCHEDULABLE_AND_UNRESOLVABLE,
                          (f"queue {leaf} has child queues; pods run in leaf queues",), "quota")
        reason = self._refusal(leaf, charge)
        if reason is None:
            return Status.success()
        if self.entitled(leaf, charge):
            return Status(Code.UNSCHEDULABLE, (reason, f"queue {leaf} is within its guarantee: reclaim may "
                                                       "make room"), "quota")
        return Status(Code.WAIT, (reason,), "quota")

    def entitled(self, queue: str, amount: Resources) -> bool:
        """``amount`` more keeps ``queue`` within its guarantee (governed dimensions it uses) and
        the queue may reclaim it."""
        name = self.spec(queue).name
        after = self.usage[name] + amount
        needed = [d for d in amount if d in self.governed]
        return (self.queues[name].reclaim_guarantee and bool(needed)
                and all(after.get(d) <= self.guarantee[name].get(d) for d in needed))

    def _refusal(self, leaf: str, charge: Resources) -> str | None:
        for name in self.path(leaf):
            spec = self.queues[name]
            after = self.usage[name] + charge
            over = spec.limit.exceeded_by(after)
            if over:
                dim = over[0]
                return (f"queue {name} would exceed its limit of {describe_dim(dim)} "
                        f"({after.get(dim)} > {spec.limit.get(dim)})")
            above = [d for d in charge if d in self.governed and after.get(d) > self.guarantee[name].get(d)]
            if not above:
                continue
            if not spec.borrowing:
                return f"queue {name} is at its guarantee of {describe_dim(above[0])} and does not borrow"
            parent = self.parent[name]
            room = self._room(parent)
            siblings = sum((self.held(k, leaf, charge) for k in self.children[parent]), Resources())
            in_use = None if parent else sum((self.usage[k] for k in self.children[""]), charge)
            for dim in above:
                bound = room.get(dim)
                if bound is None or siblings.get(dim) <= bound:
                    continue
                if in_use is not None and in_use.get(dim) > bound:
                    continue  # the cluster is simply full: placement explains that better than quota
                return (f"queue {name}: nothing left to borrow under {parent or 'the cluster'} in "
                        f"{describe_dim(dim)} ({siblings.get(dim)} > {bound})")
        return None

    def _room(self, parent: str) -> Limits:
        if not parent:
            return Limits(self.capacity.dims())
        return self.queues[parent].limit

    def allowed_models(self, request: Request, models: Sequence[str]) -> tuple[tuple[str, ...] | None, Status]:
        """Card models on which the gate admits ``request`` (None: no model quota applies).

        Used before placement so a pod is steered away from models its queue has no quota left
        on; the exact charge is checked again after placement (:func:`usage_of`).
        """
        if not self._model_dims or request.count == 0:
            return None, Status.success()
        candidates = list(request.models) if request.models else list(models)
        allowed: list[str] = []
        first_failure: Status | None = None
        memory = request.count * request.device_memory_mib
        for model in candidates:
            charge = Resources(request.cpu_milli, request.memory_mib, request.gpu_milli_total, memory,
                               by_model={model: (request.gpu_milli_total, memory)})
            status = self.gate(request, charge)
            if status.ok:
                allowed.append(model)
            elif first_failure is None:
                first_failure = status
        if allowed:
            return tuple(allowed), Status.success()
        return (), first_failure or Status(Code.WAIT, ("no card model allowed",), "quota")

    # ------------------------------------------------------------------ reclaim
    def may_reclaim(self, preemptor: Request, amount: Resources, victim_queue: str) -> bool:
        """Whether a pending pod of ``preemptor.queue`` needing ``amount`` may preempt a pod of
        ``victim_queue`` to get its guarantee back (see the module docstring)."""
        mine = self.spec(preemptor.queue).name
        theirs = self.spec(victim_queue).name
        if mine == theirs or not self.queues[mine].reclaim_guarantee or not self.queues[theirs].reclaimable:
            return False
        my_path = self.path(mine)
        their_path = self.path(theirs)
        common = next((n for n in my_path if n in their_path), "")
        chain = my_path[: my_path.index(common)] if common else my_path
        branch = their_path[their_path.index(common) - 1] if common else their_path[-1]
        needed = [d for d in amount if d in self.governed]
        for name in chain:
            after = self.usage[name] + amount
            if any(after.get(d) > self.guarantee[name].get(d) for d in needed):
                return False
        leaf_quota = self.guarantee[mine]
        used = self.usage[branch]
        guarantee = self.guarantee[branch]
        return any(leaf_quota.get(d) > 0 and used.get(d) > guarantee.get(d) for d in needed)

    # ------------------------------------------------------------------ fair share
    def fair_shares(self, demand: Mapping[str, Resources]) -> dict[str, Resources]:
        """What each queue is entitled to now, given the leaves' ``demand`` (pending + running).

        Per dimension and per level: children get min(guarantee, demand) first (scaled down
        when the guarantees exceed what the parent got), non-lending children keep their whole
        guarantee reserved, the rest is water-filled by weight up to each child's demand and
        limit; then the same inside each child. Every queue (inner ones too) is in the result.
        """
        want: dict[str, Resources] = {}

        def subtree(name: str) -> Resources:
            kids = self.children.get(name, [])
            total = sum((subtree(k) for k in kids), Resources()) if kids else demand.get(name, Resources())
            bounded = {d: min(v, b) if (b := self.queues[name].limit.get(d)) is not None else v
                       for d, v in total.dims().items()}
            want[name] = Resources.from_dims(bounded)
            return want[name]

        for top in self.children[""]:
            subtree(top)
        shares: dict[str, Resources] = {}
        self._split("", self.capacity, want, shares)
        return shares

    def _split(self, parent: str, amount: Resources, want: Mapping[str, Resources],
               shares: dict[str, Resources]) -> None:
        kids = self.children.get(parent, [])
        if not kids:
            return
        dims = set(amount) | {d for k in kids for d in want[k]}
        given: dict[str, dict[str, float]] = {k: {} for k in kids}
        for dim in dims:
            total = float(amount.get(dim))
            wants = {k: float(want[k].get(dim)) for k in kids}
            floors = {k: min(float(self.guarantee[k].get(dim)), wants[k]) for k in kids}
            reserved = {k: float(self.guarantee[k].get(dim)) if not self.queues[k].lending else floors[k]
                        for k in kids}
            need = sum(reserved.values())
            scale = 1.0 if need <= total or need == 0 else total / need
            for k in kids:
                given[k][dim] = floors[k] * scale
            left = total - need * scale
            hungry = [k for k in kids if wants[k] - given[k][dim] > 1e-9]
            while left > 1e-9 and hungry:
                weights = sum(self.queues[k].weight for k in hungry)
                spent = 0.0
                for k in hungry:
                    portion = left * self.queues[k].weight / weights
                    extra = min(portion, wants[k] - given[k][dim])
                    given[k][dim] += extra
                    spent += extra
                left -= spent
                hungry = [k for k in hungry if wants[k] - given[k][dim] > 1e-9]
                if spent <= 1e-9:
                    break
        for k in kids:
            shares[k] = Resources.from_dims({d: int(v) for d, v in given[k].items()})
            self._split(k, shares[k], want, shares)
