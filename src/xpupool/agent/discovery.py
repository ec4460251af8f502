"""Vendor-neutral device discovery: the :class:`Backend` Protocol, its result types and a registry.

Data flow::

    Backend.discover()  ->  Discovery(devices, errors)  ->  inventory.build_inventory(...)
        (one per vendor: NVML, npu-smi/DCMI, amd-smi/amdsmi, emulated YAML)

Contracts:

* ``discover`` never raises for expected trouble (driver missing, tool absent, a card that does
  not answer): it returns a :class:`Discovery` whose ``errors`` explain what went wrong and whose
  ``devices`` hold what could be read. A card that is present but failing is reported with
  ``healthy=False`` and a ``health_reason``, never silently dropped: the scheduler must see it.
* Devices are identified by ``uuid`` (stable across reboots and driver reloads), never by position;
  ``index`` is the vendor's own index used in ``*_VISIBLE_DEVICES``.
* Backends are synchronous (the vendor libraries are) and cheap enough to call every few seconds;
  the agent runs them in a worker thread.
* Vendor libraries are imported lazily inside the backend so the agent starts on nodes without them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from xpupool.core.model import Vendor


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One physical card as seen by the node agent.

    ``memory_mib`` is the card's total memory minus what the driver reserves (the schedulable
    size); ``memory_used_mib`` and ``utilization_pct`` are live samples (None when the backend
    cannot read them). ``device_paths`` are the host device nodes a container needs for this card.
    """

    uuid: str
    index: int
    vendor: Vendor
    model: str
    memory_mib: int
    healthy: bool = True
    health_reason: str = ""
    memory_used_mib: int | None = None
    utilization_pct: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    numa_node: int | None = None
    topology_group: int = 0
    device_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Discovery:
    """What one backend found: devices plus human-readable problems (empty when all went well)."""

    vendor: Vendor
    devices: tuple[DeviceInfo, ...] = ()
    errors: tuple[str, ...] = field(default_factory=tuple)


class Backend(Protocol):
    """One vendor's discovery. See the module docstring for the contract."""

    @property
    def vendor(self) -> Vendor: ...

    def discover(self) -> Discovery:
        """Read the cards now. Never raises for driver/tool problems (see module docstring)."""
        ...


BackendFactory = Callable[[Mapping[str, Any]], Backend]

_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Register ``factory`` under ``name``; a second registration of a name is a bug."""
    if name in _REGISTRY:
        raise ValueError(f"backend {name!r} registered twice")
    _REGISTRY[name] = factory


def backend_names() -> tuple[str, ...]:
    _ensure_builtin()
    return tuple(sorted(_REGISTRY))


def make_backend(name: str, options: Mapping[str, Any] | None = None) -> Backend:
    """Build the backend registered as ``name``; unknown names are a configuration error
    (``KeyError`` with the known names), reported at start-up, not at first use."""
    _ensure_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown device backend {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    return factory(options or {})


def _ensure_builtin() -> None:
    if _REGISTRY:
        return
    # Imported here to keep module import order simple (each module registers itself).
    from xpupool.agent import amd, ascend, emulated, nvidia

    for module in (nvidia, ascend, amd, emulated):
        register_backend(module.BACKEND_NAME, module.make)
