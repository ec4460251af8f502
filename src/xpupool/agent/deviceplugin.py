"""Kubelet device plugin (``deviceplugin/v1beta1``) for ``xpupool.io/vxpu`` over grpc.aio.

Resource accounting: each healthy card is advertised as ``slots_per_card`` device IDs
``"<card uuid>::<slot>"`` (default 10, i.e. at most 10 containers share one card). The pod syntax
asks ``xpupool.io/vxpu: N`` for N cards, so the kubelet takes N slot IDs; the compute share and
device memory of each slice are accounted by the xpupool scheduler's ledger, not by the kubelet
(``xpupool.io/vxpu-core`` / ``-memory`` are not advertised; the kubelet drops extended resources a
node does not advertise from its admission check). Slots of an unhealthy card are advertised
``Unhealthy`` so the kubelet stops counting them.

Lifecycle (:class:`DevicePluginServer`): serve our socket first, then ``Register`` with
``kubelet.sock`` (the kubelet dials back the endpoint). A kubelet restart deletes every socket in
the directory and recreates ``kubelet.sock``: the server polls for its own socket and for the
identity ``(st_dev, st_ino, st_ctime_ns)`` of ``kubelet.sock``, restarts its gRPC server when its
socket is gone and registers again when the identity changed. Registration failures are retried
with a fixed back-off; nothing is kept on local disk.

``Allocate`` finds the pod through an :class:`AllocationResolver` (see
:mod:`xpupool.agent.allocation` for the rules) and answers with the wiring of the scheduler's cards;
when it cannot (no matching pod, unhealthy card, remote allocation) the RPC fails with
``FAILED_PRECONDITION`` and the message, which the kubelet puts on the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from xpupool._generated.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from xpupool.agent.allocation import (
    ANN_ALLOCATED,
    PendingPod,
    RuntimePaths,
    card_of_slot,
    choose_pod,
    claim_annotation,
    container_wiring,
    pending_pods,
    slot_id,
)
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.kubeapi import ApiError, PodApi
from xpupool.core.request import RES_VXPU
from xpupool.core.status import Status

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_SOCKET = "xpupool-vxpu.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


@dataclass(frozen=True, slots=True)
class ResolveOutcome:
    """The pod an Allocate serves, or why none could be chosen."""

    pod: PendingPod | None
    error: str = ""


class AllocationResolver(Protocol):
    async def pending(self) -> list[PendingPod]:
        """Pods on this node carrying an allocation (claimed or not)."""
        ...

    async def resolve(self, device_ids: Sequence[str], cards_of_ids: frozenset[int]) -> ResolveOutcome:
        """Choose and durably claim the pod served by an Allocate of ``device_ids``. Idempotent for
        a repeated call with the same IDs. Never raises for "no pod": returns an error outcome."""
        ...


class ApiAllocationResolver:
    """:class:`AllocationResolver` over the apiserver: lists the node's pods, claims with the pod's
    resourceVersion and retries on conflict (another container of the node claimed it first)."""

    def __init__(self, api: PodApi, *, node: str, attempts: int = 3) -> None:
        self._api = api
        self._node = node
        self._attempts = attempts

    async def pending(self) -> list[PendingPod]:
        pods, problems = pending_pods(await self._api.list_pods_on_node(self._node), node=self._node)
        for problem in problems:
            log.warning("ignoring pod: %s", problem)
        return pods

    async def resolve(self, device_ids: Sequence[str], cards_of_ids: frozenset[int]) -> ResolveOutcome:
        for _ in range(self._attempts):
            try:
                pods = await self.pending()
            except (TimeoutError, ApiError, OSError) as exc:
                return ResolveOutcome(None, f"cannot list pods on {self._node}: {exc}")
            pod = choose_pod(pods, device_ids=device_ids, cards_of_ids=cards_of_ids)
            if pod is None:
                return ResolveOutcome(
                    None,
                    f"no pod on {self._node} has an unclaimed xpupool allocation for "
                    f"{len(device_ids)} card(s); was it scheduled by xpupool?",
                )
            if pod.claimed_ids == frozenset(device_ids):
                return ResolveOutcome(pod)
            try:
                await self._api.patch_pod_annotations(
                    pod.namespace,
                    pod.name,
                    {ANN_ALLOCATED: claim_annotation(device_ids)},
                    resource_version=pod.resource_version,
                )
            except ApiError as exc:
                if exc.status == 409:
                    continue  # someone changed the pod; list again
                return ResolveOutcome(None, f"cannot claim {pod.key}: {exc}")
            return ResolveOutcome(pod)
        return ResolveOutcome(None, f"gave up claiming a pod after {self._attempts} conflicts")


class RegionWriter(Protocol):
    """Writes the per-container shared region the shim reads (layout: native/include/xpushim_region.h,
    Python mirror: ``xpupool.agent.shim_region``). Called by ``Allocate`` before the container
    exists; must be idempotent (the kubelet may repeat ``Allocate``). A non-ok Status fails the
    ``Allocate`` (fail closed: a managed container never starts without its limits)."""

    def write(self, *, path: Path, pod: PendingPod, cards: Sequence[DeviceInfo]) -> Status: ...


class VxpuDevicePlugin(api_pb2_grpc.DevicePluginServicer):
    """The ``DevicePlugin`` service. Feed it discoveries with :meth:`update_devices`."""

    def __init__(
        self,
        *,
        node: str,
        resolver: AllocationResolver,
        slots_per_card: int = 10,
        paths: RuntimePaths | None = None,
        create_region_dirs: bool = True,
        region_writer: RegionWriter | None = None,
    ) -> None:
        if slots_per_card < 1:
            raise ValueError("slots_per_card must be >= 1")
        self._node = node
        self._resolver = resolver
        self._slots = slots_per_card
        self._paths = paths or RuntimePaths()
        self._create_dirs = create_region_dirs
        self._region_writer = region_writer
        self._cards: dict[int, DeviceInfo] = {}
        self._by_uuid: dict[str, DeviceInfo] = {}
        self._advertised: tuple[tuple[str, str, int | None], ...] = ()
        self._version = 0
        self._closed = False
        self._changed = asyncio.Condition()

    @property
    def slots_per_card(self) -> int:
        return self._slots

    @property
    def version(self) -> int:
        """Bumped on every change of the advertised list (ID, health, NUMA)."""
        return self._version

    def advertised(self) -> tuple[tuple[str, str, int | None], ...]:
        return self._advertised

    async def update_devices(self, devices: Sequence[DeviceInfo]) -> bool:
        """Replace the card list; streams a new ListAndWatch response iff the advertised list changed."""
        self._cards = {d.index: d for d in devices}
        self._by_uuid = {d.uuid: d for d in devices}
        advertised = tuple(
            (slot_id(d.uuid, s), HEALTHY if d.healthy else UNHEALTHY, d.numa_node)
            for d in sorted(devices, key=lambda d: d.index)
            for s in range(self._slots)
        )
        if advertised == self._advertised:
            return False
        async with self._changed:
            self._advertised = advertised
            self._version += 1
            self._changed.notify_all()
        return True

    async def close(self) -> None:
        """End every ListAndWatch stream (server shutdown)."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    def reopen(self) -> None:
        self._closed = False

    def _changed_since(self, sent: int) -> bool:
        return self._closed or self._version != sent

    def _response(self) -> api_pb2.ListAndWatchResponse:
        devices = []
        for ident, health, numa in self._advertised:
            device = api_pb2.Device(ID=ident, health=health)
            if numa is not None:
                device.topology.nodes.append(api_pb2.NUMANode(ID=numa))
            devices.append(device)
        return api_pb2.ListAndWatchResponse(devices=devices)

    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        sent = -1
        while True:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._changed_since, sent))
                if self._closed:
                    return
                sent = self._version
                response = self._response()
            yield response

    async def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        try:
            pods = [p for p in await self._resolver.pending() if not p.claimed_ids]
        except Exception as exc:  # a hint only: never fail the kubelet's allocation for it
            log.warning("GetPreferredAllocation: cannot list pending pods: %s", exc)
            pods = []
        pods.sort(key=lambda p: (p.created, p.key))
        responses = []
        for creq in request.container_requests:
            responses.append(
                api_pb2.ContainerPreferredAllocationResponse(
                    deviceIDs=self._prefer(
                        list(creq.available_deviceIDs),
                        list(creq.must_include_deviceIDs),
                        creq.allocation_size,
                        pods,
                    )
                )
            )
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    def _prefer(self, available: list[str], must: list[str], size: int, pods: list[PendingPod]) -> list[str]:
        """Slots on the cards of the oldest unclaimed pod of this size, else spread over cards."""
        for pod in pods:
            if len(pod.allocation.cards) != size or must:
                continue
            chosen: list[str] = []
            for index in pod.allocation.cards:
                card = self._cards.get(index)
                slot = next((a for a in available if card and card_of_slot(a) == card.uuid and a not in chosen), None)
                if slot is None:
                    break
                chosen.append(slot)
            if len(chosen) == size:
                return chosen
        chosen = list(must)
        used_cards = {card_of_slot(c) for c in chosen}
        for ident in available:  # one slot per card first
            if len(chosen) >= size:
                break
            if ident not in chosen and card_of_slot(ident) not in used_cards:
                chosen.append(ident)
                used_cards.add(card_of_slot(ident))
        for ident in available:
            if len(chosen) >= size:
                break
            if ident not in chosen:
                chosen.append(ident)
        return chosen[:size]

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.AllocateResponse:
        responses = []
        for creq in request.container_requests:
            ids = list(creq.devices_ids)
            unknown = [i for i in ids if card_of_slot(i) not in self._by_uuid]
            if unknown:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"unknown device IDs {unknown}; the card list changed",
                )
            cards = frozenset(self._by_uuid[card_of_slot(i)].index for i in ids)
            outcome = await self._resolver.resolve(ids, cards)
            if outcome.pod is None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, outcome.error)
            assert outcome.pod is not None
            result = container_wiring(
                pod=outcome.pod,
                node=self._node,
                device_ids=ids,
                devices_by_index=self._cards,
                paths=self._paths,
            )
            if result.wiring is None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "; ".join(result.errors))
            assert result.wiring is not None
            wiring = result.wiring
            if self._create_dirs:
                os.makedirs(wiring.region_host_dir, exist_ok=True)
                # Only this container mounts the directory; its user may be non-root.
                os.chmod(wiring.region_host_dir, 0o777)
            if self._region_writer is not None:
                region_cards = [self._cards[i] for i in outcome.pod.allocation.cards]
                region = Path(wiring.region_host_dir) / self._paths.region_file
                written = self._region_writer.write(path=region, pod=outcome.pod, cards=region_cards)
                if not written.ok:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, written.message())
            log.info("allocated %s to %s (cards %s)", ids, outcome.pod.key, list(outcome.pod.allocation.cards))
            responses.append(
                api_pb2.ContainerAllocateResponse(
                    envs=wiring.envs,
                    mounts=[api_pb2.Mount(container_path=c, host_path=h, read_only=ro) for c, h, ro in wiring.mounts],
                    devices=[
                        api_pb2.DeviceSpec(container_path=c, host_path=h, permissions=p) for c, h, p in wiring.devices
                    ],
                    annotations=wiring.annotations,
                )
            )
        return api_pb2.AllocateResponse(container_responses=responses)

    async def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class DevicePluginServer:
    """Serves :class:`VxpuDevicePlugin` on ``plugin_dir/socket_name`` and keeps it registered.

    :meth:`run` loops until ``stop`` is set: (re)start the gRPC server when its socket is missing,
    (re)register when ``kubelet.sock`` appeared or changed identity, poll every ``poll_s``.
    ``registrations`` counts successful registrations (observability and tests).
    """

    def __init__(
        self,
        plugin: VxpuDevicePlugin,
        *,
        plugin_dir: Path = DEVICE_PLUGIN_DIR,
        socket_name: str = DEFAULT_SOCKET,
        resource_name: str = RES_VXPU,
        poll_s: float = 0.05,
        retry_s: float = 1.0,
        register_timeout_s: float = 5.0,
    ) -> None:
        self.plugin = plugin
        self._dir = Path(plugin_dir)
        self._socket_name = socket_name
        self._resource = resource_name
        self._poll_s = poll_s
        self._retry_s = retry_s
        self._register_timeout_s = register_timeout_s
        self._server: grpc.aio.Server | None = None
        self._registered_identity: tuple[int, int, int] | None = None
        self.registrations = 0
        self.last_status: Status = Status.error("not registered yet")

    @property
    def socket_path(self) -> Path:
        return self._dir / self._socket_name

    @property
    def kubelet_socket(self) -> Path:
        return self._dir / KUBELET_SOCKET

    async def start_server(self) -> None:
        """Serve on our socket (replacing a stale socket file)."""
        await self.stop_server()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.plugin.reopen()
        server = grpc.aio.server()
        api_pb2_grpc.add_DevicePluginServicer_to_server(self.plugin, server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix://{self.socket_path}")
        await server.start()
        self._server = server

    async def stop_server(self) -> None:
        if self._server is not None:
            await self.plugin.close()
            await self._server.stop(grace=0.2)
            self._server = None

    async def register(self) -> Status:
        """One ``Register`` call to the kubelet; the outcome as a Status (never raises for RPC errors)."""
        request = api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=self._socket_name,
            resource_name=self._resource,
            options=api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True),
        )
        try:
            async with grpc.aio.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
                stub = api_pb2_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
                await stub.Register(request, timeout=self._register_timeout_s)
        except grpc.aio.AioRpcError as exc:
            return Status.error(
                f"kubelet refused registration of {self._resource}: {exc.code().name}: {exc.details()}",
                plugin="deviceplugin",
            )
        return Status.success()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                if self._server is None or not self.socket_path.exists():
                    if self._server is not None:
                        log.info(
                            "device plugin socket %s vanished (kubelet restart?); serving again",
                            self.socket_path,
                        )
                    await self.start_server()
                    self._registered_identity = None
                identity = _identity(self.kubelet_socket)
                if identity is not None and identity != self._registered_identity:
                    status = await self.register()
                    self.last_status = status
                    if status.ok:
                        self._registered_identity = identity
                        self.registrations += 1
                        log.info("registered %s with the kubelet (%d)", self._resource, self.registrations)
                    else:
                        log.warning("%s; retrying in %.1f s", status.message(), self._retry_s)
                        await _wait(stop, self._retry_s)
                        continue
                await _wait(stop, self._poll_s)
        finally:
            await self.stop_server()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def devices_by_index(devices: Sequence[DeviceInfo]) -> Mapping[int, DeviceInfo]:
    return {d.index: d for d in devices}
