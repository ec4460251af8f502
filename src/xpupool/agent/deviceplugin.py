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

Pairing (see :mod:`xpupool.agent.pairing`): ``Allocate`` is not told which pod it serves, so it
answers only with what follows from the device IDs themselves: the CDI device name
``xpupool.io/vxpu=<digest of the IDs>`` and a fail-closed baseline (:func:`allocate_defaults`).
The options set ``pre_start_required``: before each container start the kubelet calls
``PreStartContainer`` with the container's IDs, the plugin asks the kubelet's PodResources API who
holds them and writes that container's region and CDI spec; on failure the RPC fails with
``FAILED_PRECONDITION`` and the message, which the kubelet reports on the pod.

Slot IDs are capacity counters: the kubelet picks them by count, and a container's slice is on the
scheduler's cards, whatever card its slot IDs name. No preferred allocation is offered (the
kubelet cannot know the pod at that point either).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import grpc

from xpupool._generated.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from xpupool.agent.allocation import RuntimePaths, allocate_defaults, card_of_slot, slot_id
from xpupool.agent.cdi import qualified_name
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.pairing import Prepared
from xpupool.core.request import RES_VXPU
from xpupool.core.status import Status

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_SOCKET = "xpupool-vxpu.sock"
REMOTE_SLOT_CARD = "remote"  # slot IDs "remote::<n>"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


#: Options the plugin registers with and answers ``GetDevicePluginOptions`` with.
OPTIONS = api_pb2.DevicePluginOptions(pre_start_required=True, get_preferred_allocation_available=False)


class PreStartHandler(Protocol):
    async def prepare(self, device_ids: Sequence[str]) -> Prepared:
        """Write everything the container holding ``device_ids`` receives (see :class:`Pairing`)."""
        ...


class VxpuDevicePlugin(api_pb2_grpc.DevicePluginServicer):
    """The ``DevicePlugin`` service. Feed it discoveries with :meth:`update_devices`."""

    def __init__(
        self,
        *,
        node: str,
        pre_start: PreStartHandler,
        slots_per_card: int = 10,
        paths: RuntimePaths | None = None,
        remote_slots: int = 0,
    ) -> None:
        if slots_per_card < 1:
            raise ValueError("slots_per_card must be >= 1")
        # containers of this node that may use a vXPU on another node, so the kubelet
        # admits pods placed remote (a CPU-only node advertises only these)
        self._remote_slots = tuple(slot_id(REMOTE_SLOT_CARD, s) for s in range(max(0, remote_slots)))
        self._node = node
        self._pre_start = pre_start
        self._slots = slots_per_card
        self._paths = paths or RuntimePaths()
        self._cards: dict[int, DeviceInfo] = {}
        self._by_uuid: dict[str, DeviceInfo] = {}
        self._advertised: tuple[tuple[str, str, int | None], ...] = ()
        self._version = 0
        self._closed = False
        self._changed = asyncio.Condition()
        self.watchers = 0  # open ListAndWatch streams: 0 means no kubelet is connected
        self.on_watch_change: Callable[[], None] | None = None

    def cards(self) -> Mapping[int, DeviceInfo]:
        """The node's cards by index, as last discovered."""
        return self._cards

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
        ) + tuple((ident, HEALTHY, None) for ident in self._remote_slots)
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
        return OPTIONS

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        sent = -1
        self._watching(+1)
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(functools.partial(self._changed_since, sent))
                    if self._closed:
                        return
                    sent = self._version
                    response = self._response()
                yield response
        finally:
            self._watching(-1)  # the kubelet went away (restart) or the server stops

    def _watching(self, delta: int) -> None:
        self.watchers += delta
        if self.on_watch_change is not None:
            self.on_watch_change()

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.AllocateResponse:
        """Nothing pod-specific: the CDI device name of the IDs and the fail-closed baseline."""
        envs, mounts = allocate_defaults(self._paths)
        responses = []
        for creq in request.container_requests:
            ids = list(creq.devices_ids)
            unknown = [i for i in ids if card_of_slot(i) not in self._by_uuid and i not in self._remote_slots]
            if unknown or not ids:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"unknown device IDs {unknown}; the card list changed" if ids else "no device IDs",
                )
            responses.append(
                api_pb2.ContainerAllocateResponse(
                    envs=envs,
                    mounts=[api_pb2.Mount(container_path=c, host_path=h, read_only=ro) for c, h, ro in mounts],
                    cdi_devices=[api_pb2.CDIDevice(name=qualified_name(ids))],
                )
            )
        return api_pb2.AllocateResponse(container_responses=responses)

    async def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        prepared = await self._pre_start.prepare(list(request.devices_ids))
        if not prepared.status.ok:
            log.warning("PreStartContainer %s refused: %s", list(request.devices_ids), prepared.status.message())
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, prepared.status.message())
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
        self.on_change: Callable[[], None] | None = None

    @property
    def registered(self) -> bool:
        """Registered with the kubelet now serving ``kubelet.sock`` and connected back by it."""
        return (
            self._server is not None
            and self._registered_identity is not None
            and self._registered_identity == _identity(self.kubelet_socket)
            and self.plugin.watchers > 0
        )

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

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
            options=OPTIONS,
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
                    self._changed()
                identity = _identity(self.kubelet_socket)
                if identity is not None and identity != self._registered_identity:
                    status = await self.register()
                    self.last_status = status
                    if status.ok:
                        self._registered_identity = identity
                        self.registrations += 1
                        self._changed()
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
