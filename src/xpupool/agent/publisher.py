"""Publishes the inventory (and rate-limited utilisation) on the agent's own Node.

Contract of :meth:`InventoryPublisher.publish`:

* idempotent: it patches only when the annotation text it would write differs from what the
  apiserver holds (a restarted agent with unchanged cards writes nothing);
* stateless across restarts: the first call (and the first after any API error) reads the
  published inventory from the Node and continues its generation (see :mod:`.inventory`);
* utilisation is written together with an inventory change, or alone when
  ``utilization_interval_s`` passed since the last utilisation write (injected monotonic clock);
* API failures raise (transport errors); the caller retries on its next tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.inventory import (
    ANN_INVENTORY,
    ANN_UTILIZATION,
    Inventory,
    build_inventory,
    parse_inventory,
    utilization_document,
)
from xpupool.agent.kubeapi import NodeApi


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    inventory: Inventory
    inventory_patched: bool
    utilization_patched: bool


def _rfc3339_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class InventoryPublisher:
    def __init__(
        self,
        api: NodeApi,
        *,
        node: str,
        slots_per_card: int,
        utilization_interval_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], str] = _rfc3339_now,
    ) -> None:
        self._api = api
        self._node = node
        self._slots = slots_per_card
        self._interval_s = utilization_interval_s
        self._monotonic = monotonic
        self._wall = wall_clock
        self._published_text: str | None = None
        self._published: Inventory | None = None
        self._known = False
        self._last_util_s: float | None = None

    async def _read_published(self) -> None:
        node = await self._api.get_node(self._node)
        annotations = node.get("metadata", {}).get("annotations") or {}
        self._published_text = annotations.get(ANN_INVENTORY)
        self._published = parse_inventory(self._published_text).inventory
        self._known = True

    async def publish(
        self,
        devices: Sequence[DeviceInfo],
        errors: Sequence[str],
        held: Mapping[str, Sequence[str]] | None = None,
        *,
        serving: bool = True,
    ) -> PublishOutcome:
        try:
            if not self._known:
                await self._read_published()
            inventory = build_inventory(
                node=self._node,
                devices=devices,
                errors=errors,
                slots_per_card=self._slots,
                published=self._published,
                held=held,
                serving=serving,
            )
            text = inventory.to_json()
            patch: dict[str, str | None] = {}
            if text != self._published_text:
                patch[ANN_INVENTORY] = text
            now = self._monotonic()
            util_due = self._last_util_s is None or now - self._last_util_s >= self._interval_s
            if patch or util_due:
                patch[ANN_UTILIZATION] = utilization_document(
                    inventory=inventory, devices=devices, sampled_at=self._wall()
                )
            if patch:
                await self._api.patch_node_annotations(self._node, patch)
            if ANN_INVENTORY in patch:
                self._published_text, self._published = text, inventory
            if ANN_UTILIZATION in patch:
                self._last_util_s = now
            return PublishOutcome(inventory, ANN_INVENTORY in patch, ANN_UTILIZATION in patch)
        except Exception:
            self._known = False  # re-read the Node next time: someone else may have written it
            raise
