"""Pairing: which pod and container a ``PreStartContainer`` serves, and what that container gets.

``Allocate`` is not told which pod it serves, so it answers with nothing pod-specific: a CDI device
name derived from the device IDs the kubelet allocated (:func:`xpupool.agent.cdi.qualified_name`).
The kubelet calls ``PreStartContainer(device IDs)`` before creating each container, after it
recorded the allocation; :meth:`Pairing.prepare` then:

1. asks the kubelet which container holds exactly those IDs (:mod:`xpupool.agent.podresources`:
   the kubelet's own record through per-pod ``Get``, no guessing, no timing assumptions; IDs the
   kubelet recorded for two pods are refused, never guessed);
2. reads that pod from the apiserver (its UID, ``spec`` and ``xpupool.io/allocation``; one GET per
   container start, so never stale, whatever happened to an earlier pod of the same name);
3. computes the container's part of the allocation and its wiring (:mod:`xpupool.agent.allocation`);
4. writes the container's shim region (limits written by the agent, read-only for the tenant) and
   takes the mounts that expose it from :func:`xpupool.agent.regions.container_shim_wiring`;
5. writes the CDI spec of the device name (:mod:`xpupool.agent.cdi`), which the runtime resolves
   when the kubelet creates the container right after ``PreStartContainer`` returns;
6. records the slice's owner in the :class:`SliceIndex` (pod and namespace labels for metrics).

Every step is idempotent: a container restart (``PreStartContainer`` again, same IDs) rewrites the
same spec and keeps the region the shims may have mapped. Failures are returned as a
:class:`~xpupool.core.status.Status`; the plugin fails the RPC with its message, the kubelet does
not create the container, shows the message on the pod and retries with back-off.

:meth:`Pairing.collect_garbage` removes specs whose IDs no container holds any more (the kubelet
reuses IDs after a pod ends; a reused set gets a fresh spec at its next ``PreStartContainer``) once
older than ``grace_s``, under the same per-name lock as ``prepare``, and rebuilds the slice index
from the kubelet's record (so a restarted agent labels running slices again).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from xpupool.agent.allocation import (
    PodSlice,
    RuntimePaths,
    Wiring,
    card_of_slot,
    container_slice,
    container_wiring,
    region_dir_name,
)
from xpupool.agent.cdi import CdiSpecDir, device_name
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.kubeapi import ApiError
from xpupool.agent.podresources import DeviceHolders, HolderSnapshot, PodResourcesError
from xpupool.agent.regions import container_shim_wiring
from xpupool.core.request import RES_VXPU, WHOLE_CARD_RESOURCES
from xpupool.core.status import Status

log = logging.getLogger(__name__)


class PodLookup(Protocol):
    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """The Pod as JSON; :class:`~xpupool.agent.kubeapi.ApiError` 404 when absent."""
        ...


class RegionWriter(Protocol):
    """Writes the per-container shared region the shim reads (layout: native/include/xpushim_region.h,
    Python mirror: ``xpupool.agent.shim_region``). Called before the container exists; must be
    idempotent (a container restart calls it again). A non-ok Status fails the container start
    (fail closed: a managed container never starts without its limits)."""

    def write(self, *, path: Path, pod: PodSlice, cards: Sequence[DeviceInfo]) -> Status: ...


class RemoteWiring(Protocol):
    """Hook (remote): the wiring of a container whose cards are on another node
    (:class:`xpupool.remote.client_wiring.RemoteClientWiring`)."""

    async def prepare(self, part: PodSlice, region_dir: str) -> tuple[Wiring | None, Status]: ...


@dataclass(frozen=True, slots=True)
class SliceOwner:
    """Who a slice (one container's region) belongs to."""

    namespace: str
    pod: str
    container: str
    pod_uid: str
    device_name: str


class SliceIndex:
    """Region directory name -> :class:`SliceOwner`, for the agent's metrics (pod and namespace
    labels per slice). Read with :meth:`owner` / :meth:`owners`; filled by :class:`Pairing`."""

    def __init__(self) -> None:
        self._owners: dict[str, SliceOwner] = {}

    def owner(self, region_dir: str) -> SliceOwner | None:
        return self._owners.get(region_dir)

    def owners(self) -> dict[str, SliceOwner]:
        return dict(self._owners)

    def record(self, region_dir: str, owner: SliceOwner) -> None:
        self._owners[region_dir] = owner

    def replace(self, owners: Mapping[str, SliceOwner]) -> None:
        self._owners = dict(owners)


@dataclass(frozen=True, slots=True)
class Prepared:
    """Outcome of one ``PreStartContainer``: the slice served, or why none."""

    status: Status
    slice: PodSlice | None = None
    device_name: str = ""
    region_dir: str = ""


class Pairing:
    """See the module docstring. ``devices`` returns the node's current cards by index."""

    def __init__(
        self,
        *,
        node: str,
        holders: DeviceHolders,
        pods: PodLookup,
        specs: CdiSpecDir,
        devices: Callable[[], Mapping[int, DeviceInfo]],
        paths: RuntimePaths | None = None,
        region_writer: RegionWriter | None = None,
        create_region_dirs: bool = True,
        index: SliceIndex | None = None,
        resource: str = RES_VXPU,
        wall_clock: Callable[[], float] = time.time,
        remote: RemoteWiring | None = None,
    ) -> None:
        self._node = node
        self._holders = holders
        self._pods = pods
        self.specs = specs
        self._devices = devices
        self._paths = paths or RuntimePaths()
        self._region_writer = region_writer
        self._create_dirs = create_region_dirs
        self.index = index or SliceIndex()
        self._resource = resource
        self._now = wall_clock
        self._remote = remote
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def prepare(self, device_ids: Sequence[str]) -> Prepared:
        """Everything the container holding ``device_ids`` needs, written before it is created."""
        name = device_name(device_ids)
        try:
            snapshot = await self._holders.snapshot()
        except PodResourcesError as exc:
            return Prepared(Status.error(f"cannot ask the kubelet who holds {sorted(device_ids)}: {exc}"))
        found = snapshot.find(self._resource, device_ids)
        if found.holder is None:
            return Prepared(Status.error(found.error))
        holder = found.holder
        try:
            pod = await self._pods.get_pod(holder.namespace, holder.pod)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Prepared(Status.error(f"cannot read pod {holder.pod_key} from the apiserver: {exc}"))
        result = container_slice(pod, container=holder.container, node=self._node)
        if result.slice is None:
            return Prepared(Status.error("; ".join(result.errors)))
        part = result.slice
        if part.allocation.is_remote and self._remote is not None:  # the card is on another node
            return await self._prepare_remote(part, device_ids, name)
        devices = self._devices()
        wiring_result = container_wiring(
            pod=part, node=self._node, device_ids=device_ids, devices_by_index=devices, paths=self._paths
        )
        if wiring_result.wiring is None:
            return Prepared(Status.error("; ".join(wiring_result.errors)), part)
        wiring = wiring_result.wiring
        async with self._lock(name):
            if self._create_dirs:
                try:
                    os.makedirs(wiring.region_host_dir, exist_ok=True)
                except OSError as exc:
                    return Prepared(Status.error(f"cannot create {wiring.region_host_dir}: {exc}"), part)
            region = Path(wiring.region_host_dir) / self._paths.region_file
            if self._region_writer is not None:
                written = self._region_writer.write(
                    path=region, pod=part, cards=[devices[i] for i in part.allocation.cards]
                )
                if not written.ok:
                    return Prepared(written, part)
                shim = container_shim_wiring(region_dir=region, paths=self._paths)
                if not shim.status.ok:
                    return Prepared(shim.status, part)
                wiring = dataclasses.replace(
                    wiring,
                    envs={**wiring.envs, **shim.envs},
                    mounts=[(m.container_path, m.host_path, m.read_only) for m in shim.mounts],
                )
            status = self.specs.write(name, wiring.edits())
            if not status.ok:
                return Prepared(status, part)
        region_dir = Path(wiring.region_host_dir).name
        self.index.record(region_dir, SliceOwner(part.namespace, part.name, part.container, part.uid, name))
        log.info(
            "%s container %s (kubelet IDs %s): cards %s, CDI device %s, region %s",
            part.key,
            part.container,
            sorted(device_ids),
            list(part.allocation.cards),
            name,
            region_dir,
        )
        return Prepared(Status.success(), part, name, region_dir)

    async def _prepare_remote(self, part: PodSlice, device_ids: Sequence[str], name: str) -> Prepared:
        """Hook (remote): a container whose cards are on another node gets the remoting client."""
        assert self._remote is not None
        region_dir = region_dir_name(part.uid, sorted(device_ids))
        wiring, status = await self._remote.prepare(part, region_dir)
        if wiring is None:
            return Prepared(status, part)
        async with self._lock(name):
            status = self.specs.write(name, wiring.edits())
        if not status.ok:
            return Prepared(status, part)
        self.index.record(region_dir, SliceOwner(part.namespace, part.name, part.container, part.uid, name))
        return Prepared(Status.success(), part, name, region_dir)

    async def collect_garbage(self, *, grace_s: float = 120.0) -> list[str]:
        """Remove specs no container holds (older than ``grace_s``); rebuild the slice index.
        Returns the removed device names. Transport errors propagate (retried next tick)."""
        snapshot = await self._holders.snapshot()
        held = {device_name(e.device_ids): e for e in snapshot.of_resource(self._resource)}
        removed: list[str] = []
        for name, mtime in sorted(self.specs.names().items()):
            if name in held or self._now() - mtime < grace_s:
                continue
            async with self._lock(name):
                with contextlib.suppress(FileNotFoundError):
                    if self._now() - self.specs.path(name).stat().st_mtime < grace_s:
                        continue  # written again while we waited for the lock
                if self.specs.remove(name):
                    removed.append(name)
            self._locks.pop(name, None)
        self._rebuild_index(snapshot)
        return removed

    def _rebuild_index(self, snapshot: HolderSnapshot) -> None:
        owners: dict[str, SliceOwner] = {}
        for entry in snapshot.of_resource(self._resource):
            if not entry.pod_uid:
                continue
            ids = sorted(entry.device_ids)
            owners[region_dir_name(entry.pod_uid, ids)] = SliceOwner(
                entry.namespace, entry.pod, entry.container, entry.pod_uid, device_name(ids)
            )
        self.index.replace(owners)


@dataclass(frozen=True, slots=True)
class HeldCard:
    """A card held whole by a container of another device plugin (e.g. ``nvidia.com/gpu``)."""

    index: int
    uuid: str
    holders: tuple[str, ...]  # "namespace/pod (resource)"


def foreign_held_cards(
    snapshot: HolderSnapshot, devices: Sequence[DeviceInfo], *, own_resource: str = RES_VXPU
) -> tuple[list[HeldCard], list[str]]:
    """Cards that containers hold through another resource, matched by the device IDs the kubelet
    recorded: the card UUID itself (NVIDIA device plugin) or ``<uuid>::<n>`` (its time-slicing
    replicas). Returns the held cards and, for humans, IDs of whole-card resources no card matched."""
    by_uuid = {d.uuid: d for d in devices}
    holders: dict[str, set[str]] = {}
    unmatched: list[str] = []
    for entry in snapshot.entries:
        if entry.resource == own_resource:
            continue
        for device_id in sorted(entry.device_ids):
            uuid = device_id if device_id in by_uuid else card_of_slot(device_id)
            if uuid in by_uuid:
                holders.setdefault(uuid, set()).add(f"{entry.pod_key} ({entry.resource})")
            elif _is_card_resource(entry.resource):
                unmatched.append(f"{entry.resource} device {device_id} held by {entry.pod_key} matches no card")
    ordered = sorted(holders.items(), key=lambda item: by_uuid[item[0]].index)
    held = [HeldCard(by_uuid[u].index, u, tuple(sorted(h))) for u, h in ordered]
    return held, unmatched


def _is_card_resource(resource: str) -> bool:
    return resource in WHOLE_CARD_RESOURCES
