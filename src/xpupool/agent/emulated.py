"""The ``emulated`` vendor: cards described in a YAML file, for demos, kwok clusters and tests.

Config (``/etc/xpupool/emulated.yaml`` by default)::

    cards:
      - model: EMU-80G          # required
        memory_mib: 81920       # required, > 0
        count: 4                # default 1
        topology_group: 0       # default 0
        healthy: true           # default true; flip to false to demo health handling
        utilization_pct: 0      # optional fixed sample
        memory_used_mib: 0      # optional fixed sample
        uuids: [GPU-...]        # optional, one per card: the UUIDs a (test-double) driver reports

UUIDs are ``EMU-<node>-<index>`` so they are stable across agent restarts and distinct across nodes,
unless ``uuids`` names them (emulated cards standing in for the devices of the test-double
``libcuda``, whose UUIDs the shim matches its limits to).
Editing the file changes what the next ``discover`` returns (no restart needed). A missing or
invalid file is a :class:`Discovery` error, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xpupool.agent.discovery import DeviceInfo, Discovery
from xpupool.core.model import Vendor

BACKEND_NAME = "emulated"
DEFAULT_CONFIG = "/etc/xpupool/emulated.yaml"


class EmulatedCard(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    memory_mib: int = Field(gt=0)
    count: int = Field(default=1, ge=0, le=64)
    topology_group: int = Field(default=0, ge=0)
    healthy: bool = True
    utilization_pct: int | None = Field(default=None, ge=0, le=100)
    memory_used_mib: int | None = Field(default=None, ge=0)
    uuids: list[str] | None = None

    @model_validator(mode="after")
    def _one_uuid_per_card(self) -> EmulatedCard:
        if self.uuids is not None and len(self.uuids) != self.count:
            raise ValueError(f"uuids names {len(self.uuids)} cards, count is {self.count}")
        return self


class EmulatedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cards: list[EmulatedCard] = Field(default_factory=list)


def devices_from_config(config: EmulatedConfig, *, node_name: str) -> list[DeviceInfo]:
    """Expand the config into devices with stable UUIDs (pure)."""
    devices: list[DeviceInfo] = []
    for card in config.cards:
        for n in range(card.count):
            index = len(devices)
            devices.append(
                DeviceInfo(
                    uuid=card.uuids[n] if card.uuids else f"EMU-{node_name}-{index}",
                    index=index,
                    vendor=Vendor.EMULATED,
                    model=card.model,
                    memory_mib=card.memory_mib,
                    healthy=card.healthy,
                    health_reason="" if card.healthy else "marked unhealthy in the emulated config",
                    memory_used_mib=card.memory_used_mib,
                    utilization_pct=card.utilization_pct,
                    topology_group=card.topology_group,
                )
            )
    return devices


class EmulatedBackend:
    """Reads ``config_path`` on every :meth:`discover`."""

    def __init__(self, config_path: str | Path, *, node_name: str) -> None:
        self._path = Path(config_path)
        self._node_name = node_name

    @property
    def vendor(self) -> Vendor:
        return Vendor.EMULATED

    def discover(self) -> Discovery:
        try:
            raw = yaml.safe_load(self._path.read_text()) or {}
            config = EmulatedConfig.model_validate(raw)
        except OSError as exc:
            return Discovery(Vendor.EMULATED, (), (f"emulated config {self._path}: {exc.strerror or exc}",))
        except yaml.YAMLError as exc:
            return Discovery(Vendor.EMULATED, (), (f"emulated config {self._path} is not YAML: {exc}",))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            return Discovery(Vendor.EMULATED, (), (f"emulated config {self._path}: {problems}",))
        devices = devices_from_config(config, node_name=self._node_name)
        errors = tuple(f"card {d.index} ({d.uuid}): {d.health_reason}" for d in devices if not d.healthy)
        return Discovery(Vendor.EMULATED, tuple(devices), errors)


def make(options: Mapping[str, Any]) -> EmulatedBackend:
    return EmulatedBackend(options.get("config", DEFAULT_CONFIG), node_name=str(options.get("node_name", "node")))
