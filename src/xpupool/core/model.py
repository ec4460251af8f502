"""Device, node and request model shared by every vendor.

Units are in the names: ``_milli`` is thousandths of a whole card's compute (1000 = one card;
the request syntax speaks percent in 1 % steps, i.e. multiples of 10 milli), ``_mib`` is MiB,
``_mbps`` is megabits per second, ``cpu_milli`` is thousandths of a CPU core.

All classes are frozen: the mutable state lives only in :class:`~xpupool.core.cluster.ClusterState`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from xpupool.core.constraints import NO_CONSTRAINTS, Constraints, Labels, Taint

WHOLE_CARD_MILLI = 1000


class Vendor(enum.StrEnum):
    NVIDIA = "nvidia"
    ASCEND = "ascend"
    AMD = "amd"
    EMULATED = "emulated"


class RemotePolicy(enum.StrEnum):
    """Whether a pod's vXPUs may live on another node than the pod (API remoting over TCP).

    ``never``: local cards only. ``allowed``: local first, remote when nothing local fits.
    ``preferred``: remote first (keeps local cards for pods that cannot go remote).
    ``required``: remote only (the pod's node has no accelerator).
    """

    NEVER = "never"
    ALLOWED = "allowed"
    PREFERRED = "preferred"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class Device:
    """One physical card.

    ``topology_group`` groups cards that talk fast to each other (NVLink island, HCCS ring, NUMA
    node); multi-card pods prefer one group. ``max_tenants`` caps the slices sharing the card
    (0: no cap; the node agent publishes its kubelet slots per card, never more than the shim's
    tenant table). ``held_by`` names pods holding the card whole through another device plugin
    (e.g. ``nvidia.com/gpu``, as the kubelet recorded it): such a card is never sliced.
    """

    index: int
    vendor: Vendor
    model: str
    memory_mib: int
    topology_group: int = 0
    healthy: bool = True
    max_tenants: int = 0
    held_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Node:
    """A schedulable node. CPU-only nodes are first-class (``devices == ()``).

    ``taints`` and ``unschedulable`` (cordoned) keep pods off unless they tolerate them
    (:mod:`xpupool.core.constraints`). ``vxpu_slots`` is the ``xpupool.io/vxpu`` the node's kubelet
    admits (its allocatable: the node agent's device plugin serves them); ``None`` when not
    checked (simulations), 0 when nothing serves them: pods asking for them never go there."""

    name: str
    cpu_milli: int
    memory_mib: int
    devices: tuple[Device, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    network_mbps: int = 25_000
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    vxpu_slots: int | None = None

    @property
    def rack(self) -> str:
        return self.labels.get("topology.kubernetes.io/rack", self.labels.get("rack", ""))

    @property
    def zone(self) -> str:
        return self.labels.get("topology.kubernetes.io/zone", self.labels.get("zone", ""))


@dataclass(frozen=True, slots=True)
class Request:
    """What one pod asks of the pool (containers already summed by the adapter).

    ``count`` cards, each with ``share_milli`` compute and ``memory_mib`` (or ``memory_pct`` of
    the card when ``memory_mib`` is 0 and ``memory_pct`` > 0) device memory. A whole-card request
    (``nvidia.com/gpu: 2``) is ``count=2, share_milli=1000, exclusive=True``. ``count == 0`` is a
    CPU-only pod. ``models`` empty means any model of ``vendor`` (``vendor`` None: any vendor).
    ``remote_mbps`` is the network bandwidth a remote vXPU reserves on the GPU node.
    ``labels`` are the pod's own labels (what other pods' affinity and spread selectors match);
    ``constraints`` are where it may run (node selector/affinity, tolerations, gates, pod
    (anti-)affinity, topology spread). ``vxpu_slots`` is the ``xpupool.io/vxpu`` its containers
    ask of the kubelet of the pod's node (admitted by count against :attr:`Node.vxpu_slots`).
    """

    name: str
    cpu_milli: int = 0
    memory_mib: int = 0
    count: int = 0
    share_milli: int = 0
    device_memory_mib: int = 0
    device_memory_pct: int = 0
    vendor: Vendor | None = None
    models: tuple[str, ...] = ()
    exclusive: bool = False
    remote: RemotePolicy = RemotePolicy.NEVER
    remote_mbps: int = 1_000
    priority: int = 0
    queue: str = "default"
    pod_group: str = ""
    namespace: str = "default"
    labels: Labels = ()
    constraints: Constraints = NO_CONSTRAINTS
    vxpu_slots: int = 0

    @property
    def is_sharing(self) -> bool:
        """A fractional pod: one card, less than the whole compute, not exclusive."""
        return self.count == 1 and self.share_milli < WHOLE_CARD_MILLI and not self.exclusive

    @property
    def gpu_milli_total(self) -> int:
        return self.count * self.share_milli

    @property
    def takes_whole_cards(self) -> bool:
        """Each of its cards is held alone (exclusive, or the full compute of the card)."""
        return self.exclusive or self.share_milli >= WHOLE_CARD_MILLI


@dataclass(frozen=True, slots=True)
class Allocation:
    """Where a request landed.

    ``node`` runs the pod. ``device_node`` holds the cards: equal to ``node`` for local vXPUs,
    another (GPU) node for remote ones. ``cards`` are device indexes on ``device_node``; every
    card gets ``share_milli`` compute and ``device_memory_mib`` memory.
    """

    pod: str
    node: str
    device_node: str
    cards: tuple[int, ...]
    share_milli: int
    device_memory_mib: tuple[int, ...]
    remote_mbps: int = 0

    @property
    def is_remote(self) -> bool:
        return self.node != self.device_node
