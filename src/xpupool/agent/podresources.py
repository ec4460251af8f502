"""Who holds which device IDs, asked of the kubelet itself (PodResources API v1, ``List``).

The kubelet serves ``v1.PodResourcesLister`` on ``<kubelet root>/pod-resources/kubelet.sock``
(root only). Facts this module relies on, read in k8s.io/kubernetes v1.36.3
(``pkg/kubelet/cm/devicemanager/manager.go``, ``pkg/kubelet/apis/podresources/server_v1.go``) and
checked on a real kubelet by ``tests/node/test_pairing*.py``:

* the device manager records a container's device IDs when the pod is admitted (``Allocate``),
  before any container is created, and ``PreStartContainer`` is called from
  ``GetDeviceRunContainerOptions`` on every container start (restarts included), after that
  record: a ``List`` made while serving ``PreStartContainer`` names the container that holds the
  IDs the kubelet just passed;
* ``List`` answers for active pods only (``KubeletPodResourcesListUseActivePods``, on by default
  since 1.34) and first drops the devices of terminated pods (``UpdateAllocatedDevices``), so one
  device ID is held by at most one listed container at a time; an ID freed by an ended pod and
  given to a new one is listed for the new one only;
* non-restartable init containers are not listed: their IDs are reused by the pod's app
  containers (``devicesToReuse``), so they resolve to the app container that reused them;
* the server is rate limited (100 requests/s, burst 10; ``RESOURCE_EXHAUSTED`` beyond).

:class:`KubeletPodResources` therefore coalesces: one ``List`` in flight at a time, and the callers
that arrive while it runs share the *next* one (never an answer that started before they asked);
``RESOURCE_EXHAUSTED`` and ``UNAVAILABLE`` (kubelet restarting) are retried with a short back-off.
Transport failure after the retries raises :class:`PodResourcesError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from xpupool._generated.podresources.v1 import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
_RETRIED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


class PodResourcesError(Exception):
    """The kubelet's PodResources API could not be reached or refused the call."""


@dataclass(frozen=True, slots=True)
class ContainerDevices:
    """Device IDs of one resource held by one container, as the kubelet records them."""

    namespace: str
    pod: str
    container: str
    resource: str
    device_ids: frozenset[str]

    @property
    def pod_key(self) -> str:
        return f"{self.namespace}/{self.pod}"


@dataclass(frozen=True, slots=True)
class HolderLookup:
    """The container holding a set of device IDs, or why there is none."""

    holder: ContainerDevices | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class HolderSnapshot:
    """One ``List`` answer, flattened to (pod, container, resource) entries that hold devices."""

    entries: tuple[ContainerDevices, ...] = ()

    def of_resource(self, resource: str) -> list[ContainerDevices]:
        return [e for e in self.entries if e.resource == resource]

    def find(self, resource: str, device_ids: Iterable[str]) -> HolderLookup:
        """The container holding exactly ``device_ids`` of ``resource``.

        Exact match first. Otherwise, when every ID is held by one and the same container (a
        non-restartable init container's IDs reused by an app container that holds more), that
        container. Anything else (IDs held by nobody, or spread over several containers) is an
        error: the kubelet's record does not name one container, so nothing is guessed."""
        wanted = frozenset(device_ids)
        if not wanted:
            return HolderLookup(None, "no device IDs given")
        candidates = self.of_resource(resource)
        for entry in candidates:
            if entry.device_ids == wanted:
                return HolderLookup(entry)
        owners = {(e.namespace, e.pod, e.container): e for e in candidates if e.device_ids & wanted}
        if len(owners) == 1:
            (entry,) = owners.values()
            if wanted <= entry.device_ids:
                return HolderLookup(entry)
        if not owners:
            return HolderLookup(
                None,
                f"the kubelet lists no container holding {resource} {sorted(wanted)} "
                "(is the pod still active? xpupool.io/vxpu in a non-sidecar init container whose "
                "devices no app container reuses is not supported)",
            )
        named = ", ".join(f"{ns}/{pod}:{c}" for ns, pod, c in sorted(owners))
        return HolderLookup(None, f"{resource} {sorted(wanted)} are spread over containers {named}")


def snapshot_from_response(response: api_pb2.ListPodResourcesResponse) -> HolderSnapshot:
    entries: list[ContainerDevices] = []
    for pod in response.pod_resources:
        for container in pod.containers:
            by_resource: dict[str, set[str]] = {}
            for devices in container.devices:
                by_resource.setdefault(devices.resource_name, set()).update(devices.device_ids)
            for resource, ids in sorted(by_resource.items()):
                if ids:
                    entries.append(ContainerDevices(pod.namespace, pod.name, container.name, resource, frozenset(ids)))
    return HolderSnapshot(tuple(entries))


class DeviceHolders(Protocol):
    async def snapshot(self) -> HolderSnapshot:
        """The kubelet's current record, from a query that started after this call began.
        Raises :class:`PodResourcesError` when the kubelet cannot be asked."""
        ...


class KubeletPodResources:
    """:class:`DeviceHolders` over the kubelet's unix socket (see the module docstring)."""

    def __init__(
        self,
        socket_path: Path = DEFAULT_SOCKET,
        *,
        timeout_s: float = 5.0,
        attempts: int = 6,
        backoff_s: float = 0.05,
    ) -> None:
        self._socket = Path(socket_path)
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._channel: grpc.aio.Channel | None = None
        self._lock = asyncio.Lock()
        self._next: asyncio.Future[HolderSnapshot] | None = None
        self.calls = 0  # List calls made (observability and tests)

    @property
    def socket_path(self) -> Path:
        return self._socket

    def _stub(self) -> api_pb2_grpc.PodResourcesListerStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(f"unix://{self._socket}")
        return api_pb2_grpc.PodResourcesListerStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def snapshot(self) -> HolderSnapshot:
        if self._next is None:
            batch: asyncio.Future[HolderSnapshot] = asyncio.get_running_loop().create_future()
            batch.add_done_callback(_consume)
            self._next = batch
            asyncio.create_task(self._run(batch))  # noqa: RUF006  (the future keeps the result)
        return await asyncio.shield(self._next)

    async def _run(self, batch: asyncio.Future[HolderSnapshot]) -> None:
        async with self._lock:
            if self._next is batch:
                self._next = None  # callers from now on need a List that starts after them
            try:
                batch.set_result(await self._list())
            except Exception as exc:
                batch.set_exception(exc)

    async def _list(self) -> HolderSnapshot:
        last = ""
        for attempt in range(self._attempts):
            if not self._socket.exists():
                raise PodResourcesError(f"the kubelet's PodResources socket {self._socket} does not exist")
            try:
                self.calls += 1
                response = await self._stub().List(api_pb2.ListPodResourcesRequest(), timeout=self._timeout_s)
                return snapshot_from_response(response)
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                if exc.code() not in _RETRIED:
                    break
                await asyncio.sleep(self._backoff_s * (2**attempt))
        raise PodResourcesError(f"kubelet PodResources List on {self._socket} failed: {last}")


def _consume(future: asyncio.Future[HolderSnapshot]) -> None:
    """Mark a batch's exception as retrieved (every waiter already got it)."""
    if not future.cancelled():
        with contextlib.suppress(Exception):
            future.exception()


def device_ids_of(entries: Sequence[ContainerDevices]) -> frozenset[str]:
    return frozenset(i for e in entries for i in e.device_ids)
