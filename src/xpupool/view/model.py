"""The pool snapshot: what the live CLI, the web page and the view service's metrics show.

Plain frozen values, built by :func:`xpupool.view.build.build_snapshot` from apiserver objects and
the agents' metrics, rendered by :mod:`xpupool.view.tables` (terminal), served as JSON by
:mod:`xpupool.view.server` (web page) and exported by :mod:`xpupool.view.metrics` (Prometheus).

Units are in the names: ``_pct`` is percent of one card's compute (a 30 % slice is 30.0),
``_mib`` MiB, ``_milli`` thousandths (cpu cores or cards), ``_s`` seconds. Live figures from the
agent are ``None`` when no agent answered (never a made-up 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SliceView:
    """One pod's share of one card (a whole-card pod is a 100 % slice)."""

    namespace: str
    pod: str
    queue: str
    share_pct: float
    memory_mib: int
    phase: str
    #: the node the pod runs on when it is not the card's node (remote vXPU)
    remote_from: str | None = None
    #: live, from the agent's shim metrics
    memory_used_mib: float | None = None
    utilization_pct: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"


@dataclass(frozen=True, slots=True)
class CardView:
    index: int
    uuid: str
    vendor: str
    model: str
    memory_mib: int
    healthy: bool
    slices: tuple[SliceView, ...] = ()
    #: live card sample from the agent (vendor utilisation, memory in use)
    utilization_pct: float | None = None
    memory_used_mib: float | None = None

    @property
    def allocated_pct(self) -> float:
        return sum(s.share_pct for s in self.slices)

    @property
    def allocated_memory_mib(self) -> int:
        return sum(s.memory_mib for s in self.slices)

    @property
    def free_pct(self) -> float:
        return max(0.0, 100.0 - self.allocated_pct)

    @property
    def free_memory_mib(self) -> int:
        return max(0, self.memory_mib - self.allocated_memory_mib)


@dataclass(frozen=True, slots=True)
class OtherPod:
    """A pod bound to the node holding cards it did not get from xpupool (kube-scheduler's
    whole-GPU pods): the kubelet chose its cards, so they are counted, not drawn on a card."""

    namespace: str
    pod: str
    cards: int


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    schedulable: bool
    cards: tuple[CardView, ...]
    cpu_milli: int
    memory_mib: int
    cpu_requested_milli: int = 0
    other_pods: tuple[OtherPod, ...] = ()
    #: True/False when an agent was asked for live figures, None when none was asked
    agent_reachable: bool | None = None
    #: the kubelet's Ready condition is not False
    ready: bool = True

    @property
    def free_pct(self) -> float:
        return sum(c.free_pct for c in self.cards if c.healthy)


@dataclass(frozen=True, slots=True)
class PendingView:
    """A pod waiting for xpupool, with the reason the scheduler gave (``PodScheduled=False``)."""

    namespace: str
    pod: str
    queue: str
    request: str
    reason: str
    waiting_s: float
    priority: int = 0
    pod_group: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"


@dataclass(frozen=True, slots=True)
class Amounts:
    """Accelerator compute in cards (fractions): what the queue views show; the XPUQueue's
    status has every resource, per card model too (``kubectl get xpuqueue -o yaml``)."""

    cards: float = 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    """A queue's hard cap in cards; ``None`` is unlimited."""

    cards: float | None = None


@dataclass(frozen=True, slots=True)
class QueueView:
    name: str
    weight: float
    guarantee: Amounts
    limit: Limits
    used: Amounts
    borrowed: Amounts
    running: int
    pending: int
    declared: bool = True
    oldest_pending_s: float = 0.0
    #: False for a declared queue whose status the scheduler has not written yet (figures are 0)
    reported: bool = True
    parent: str = ""


@dataclass(frozen=True, slots=True)
class RemoteView:
    """A remote vXPU: the pod runs on ``client_node``, its cards are on ``device_node``."""

    namespace: str
    pod: str
    client_node: str
    device_node: str
    cards: tuple[int, ...]
    share_pct: float
    memory_mib: int
    bandwidth_mbps: int
    #: why the session cannot work ("" = nothing known against it): device_node_missing,
    #: device_node_not_ready, card_unhealthy
    problem: str = ""


@dataclass(frozen=True, slots=True)
class Totals:
    nodes: int
    cards: int
    healthy_cards: int
    allocated_cards: float
    free_cards: float
    #: cards with nothing on them (a whole-card pod can still start there)
    idle_cards: int
    slices: int
    pending: int
    remote: int


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    taken_at: str
    nodes: tuple[NodeView, ...]
    pending: tuple[PendingView, ...]
    queues: tuple[QueueView, ...]
    remote: tuple[RemoteView, ...]
    totals: Totals
    #: problems met while building (an agent that did not answer, an unreadable allocation)
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def node(self, name: str) -> NodeView | None:
        return next((n for n in self.nodes if n.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """The full snapshot as JSON-ready data (``-o json``, ``/api/snapshot``): every field plus
        the derived per-card and per-node figures, so a client never recomputes them."""
        data = asdict(self)
        for node_data, node in zip(data["nodes"], self.nodes, strict=True):
            node_data["free_pct"] = round(node.free_pct, 3)
            for card_data, card in zip(node_data["cards"], node.cards, strict=True):
                card_data["allocated_pct"] = round(card.allocated_pct, 3)
                card_data["allocated_memory_mib"] = card.allocated_memory_mib
                card_data["free_pct"] = round(card.free_pct, 3)
                card_data["free_memory_mib"] = card.free_memory_mib
        return data
