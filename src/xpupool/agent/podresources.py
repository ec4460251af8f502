"""Who holds which device IDs, asked of the kubelet itself (PodResources API v1, per-pod ``Get``).

The kubelet serves ``v1.PodResourcesLister`` on ``<kubelet root>/pod-resources/kubelet.sock``
(root only). Facts this module relies on, read in k8s.io/kubernetes v1.36.3
(``pkg/kubelet/cm/devicemanager/manager.go``, ``pkg/kubelet/apis/podresources/server_v1.go``) and
checked on a real kubelet by ``tests/node/test_pairing.py``:

* the device manager records a container's device IDs when the pod is admitted (``Allocate``),
  before any container is created, and ``PreStartContainer`` is called from
  ``GetDeviceRunContainerOptions`` on every container start (restarts included), after that
  record: a query made while serving ``PreStartContainer`` names the container holding the IDs;
* ``Get(namespace, name)`` answers from that record for one pod (GA and on in 1.36); the kubelet
  knows every pod it was given, admitted or not (``GetPodByName`` on its pod manager);
* **``List`` is never called.** It runs ``UpdateAllocatedDevices`` first, which, when a pod has
  just ended, rebuilds the allocated set from the recorded allocations and so drops an
  allocation in flight (the device manager calls the plugin's ``Allocate`` outside its lock): the
  kubelet then gives the same device ID to two pods (kubernetes/kubernetes PR #137534, open for
  v1.36). Seen on the real node: a PreStart ``List`` during a burst of admissions made two pods
  hold one slot ID. ``Get`` and ``GetAllocatableResources`` do not run it;
* non-restartable init containers are not listed in answers: their IDs are reused by the pod's
  app containers (``devicesToReuse``), so they resolve to the app container that reused them;
* the server is rate limited (100 requests/s, burst 10; ``RESOURCE_EXHAUSTED`` beyond): retried.

:class:`HolderIndex` builds the node's record from one ``Get`` per relevant pod: the pods bound to
this node (from the apiserver) whose containers request extended resources. Answers that cover
every such container are cached by pod UID (an admitted pod's devices never change); the others
are asked again next time. Snapshots are coalesced: one in flight at a time, and callers that
arrive while it runs share the *next* one, never an answer that started before they asked.
Transport failure after the retries raises :class:`PodResourcesError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from xpupool._generated.podresources.v1 import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
_RETRIED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
#: Resources that are not device-plugin resources (no ``Get`` needed for pods asking only these).
_NATIVE = ("cpu", "memory", "ephemeral-storage", "pods")


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
    pod_uid: str = ""

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
    """The kubelet's record, flattened to (pod, container, resource) entries that hold devices."""

    entries: tuple[ContainerDevices, ...] = ()

    def of_resource(self, resource: str) -> list[ContainerDevices]:
        return [e for e in self.entries if e.resource == resource]

    def find(self, resource: str, device_ids: Iterable[str]) -> HolderLookup:
        """The container holding exactly ``device_ids`` of ``resource``.

        Exact match, or (a non-restartable init container's IDs reused by an app container that
        holds more) the one container holding all of them. Refused when the record does not name
        one container: IDs held by nobody, spread over several containers, or **held by two
        pods** (the kubelet gave one ID twice: then the IDs cannot tell the containers apart, so
        neither is served rather than one receiving the other's slice)."""
        wanted = frozenset(device_ids)
        if not wanted:
            return HolderLookup(None, "no device IDs given")
        owners = {(e.namespace, e.pod, e.container): e for e in self.of_resource(resource) if e.device_ids & wanted}
        pods = {(ns, pod) for ns, pod, _ in owners}
        if len(pods) > 1:
            named = ", ".join(f"{ns}/{pod}" for ns, pod in sorted(pods))
            return HolderLookup(
                None,
                f"the kubelet records {resource} {sorted(wanted)} for more than one pod ({named}); it gave one "
                "device ID twice (a kubelet race when a PodResources List runs during admissions: "
                "kubernetes/kubernetes#137534); refusing to guess: delete one of the pods",
            )
        exact = [e for e in owners.values() if e.device_ids == wanted]
        if exact:
            return HolderLookup(exact[0])
        if len(owners) == 1:
            (entry,) = owners.values()
            if wanted <= entry.device_ids:
                return HolderLookup(entry)
        if not owners:
            return HolderLookup(
                None,
                f"no container of the pods on this node holds {resource} {sorted(wanted)}, says the kubelet "
                "(is the pod still active? "
                "xpupool.io/vxpu in a non-sidecar init container whose devices no app container reuses is "
                "not supported)",
            )
        named = ", ".join(f"{ns}/{pod}:{c}" for ns, pod, c in sorted(owners))
        return HolderLookup(None, f"{resource} {sorted(wanted)} are spread over containers {named}")


def entries_of(pod: api_pb2.PodResources, *, pod_uid: str = "") -> list[ContainerDevices]:
    entries: list[ContainerDevices] = []
    for container in pod.containers:
        by_resource: dict[str, set[str]] = {}
        for devices in container.devices:
            by_resource.setdefault(devices.resource_name, set()).update(devices.device_ids)
        for resource, ids in sorted(by_resource.items()):
            if ids:
                entries.append(
                    ContainerDevices(pod.namespace, pod.name, container.name, resource, frozenset(ids), pod_uid)
                )
    return entries


class DeviceHolders(Protocol):
    async def snapshot(self) -> HolderSnapshot:
        """The kubelet's record, from queries that started after this call began.
        Raises :class:`PodResourcesError` when the kubelet cannot be asked."""
        ...

    async def allocatable(self, resource: str) -> frozenset[str]:
        """Device IDs of ``resource`` the kubelet would allocate now (registered, healthy)."""
        ...


class KubeletPodResources:
    """Client of the kubelet's PodResources socket: ``Get`` and ``GetAllocatableResources`` only
    (see the module docstring for why never ``List``)."""

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
        self.calls = 0  # RPCs made (observability and tests)

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

    async def _call(self, what: str, request: Any, method: str) -> Any:
        last = ""
        for attempt in range(self._attempts):
            if not self._socket.exists():
                raise PodResourcesError(f"the kubelet's PodResources socket {self._socket} does not exist")
            try:
                self.calls += 1
                return await getattr(self._stub(), method)(request, timeout=self._timeout_s)
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                if exc.code() not in _RETRIED:
                    raise PodResourcesError(f"kubelet PodResources {what} failed: {last}") from exc
                await asyncio.sleep(self._backoff_s * (2**attempt))
        raise PodResourcesError(f"kubelet PodResources {what} on {self._socket} failed: {last}")

    async def get(self, namespace: str, name: str, *, pod_uid: str = "") -> list[ContainerDevices] | None:
        """Devices held by the containers of pod ``namespace/name``; ``None`` when the kubelet
        does not know the pod."""
        request = api_pb2.GetPodResourcesRequest(pod_name=name, pod_namespace=namespace)
        try:
            response = await self._call(f"Get {namespace}/{name}", request, "Get")
        except PodResourcesError as exc:
            if "not found" in str(exc):
                return None
            raise
        return entries_of(response.pod_resources, pod_uid=pod_uid)

    async def allocatable(self, resource: str) -> frozenset[str]:
        """Device IDs of ``resource`` the kubelet would allocate now (registered and healthy:
        ``GetAllocatableResources``)."""
        response = await self._call(
            "GetAllocatableResources", api_pb2.AllocatableResourcesRequest(), "GetAllocatableResources"
        )
        return frozenset(i for d in response.devices if d.resource_name == resource for i in d.device_ids)


class NodePods(Protocol):
    async def list_pods_on_node(self, node: str) -> list[dict[str, Any]]:
        """All pods with ``spec.nodeName == node``."""
        ...


def device_requests(pod: Mapping[str, Any]) -> dict[str, set[str]]:
    """Extended (device-plugin) resources each container of ``pod`` requests: container -> names."""
    spec = pod.get("spec") or {}
    wanted: dict[str, set[str]] = {}
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        resources = c.get("resources") or {}
        names = {
            str(n)
            for n in {**(resources.get("requests") or {}), **(resources.get("limits") or {})}
            if "/" in str(n) and not str(n).startswith(("hugepages-", "kubernetes.io/")) and str(n) not in _NATIVE
        }
        if names:
            wanted[str(c.get("name", ""))] = names
    return wanted


class HolderIndex:
    """:class:`DeviceHolders` from per-pod ``Get`` calls (see the module docstring)."""

    def __init__(self, client: KubeletPodResources, pods: NodePods, *, node: str) -> None:
        self.client = client
        self._pods = pods
        self._node = node
        self._cache: dict[str, list[ContainerDevices]] = {}  # pod UID -> complete answer
        self._lock = asyncio.Lock()
        self._next: asyncio.Future[HolderSnapshot] | None = None

    async def allocatable(self, resource: str) -> frozenset[str]:
        return await self.client.allocatable(resource)

    async def close(self) -> None:
        await self.client.close()

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
                self._next = None  # callers from now on need queries that start after them
            try:
                batch.set_result(await self._build())
            except Exception as exc:
                batch.set_exception(exc)

    async def _build(self) -> HolderSnapshot:
        try:
            pods = await self._pods.list_pods_on_node(self._node)
        except Exception as exc:  # transport: the caller reports it
            raise PodResourcesError(f"cannot list the pods of {self._node}: {exc}") from exc
        relevant: dict[str, tuple[Mapping[str, Any], dict[str, set[str]]]] = {}
        for pod in pods:
            meta = pod.get("metadata") or {}
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            wanted = device_requests(pod)
            if wanted:
                relevant[str(meta.get("uid", ""))] = (meta, wanted)
        for uid in set(self._cache) - set(relevant):
            del self._cache[uid]
        answers = {uid: self._cache[uid] for uid in relevant if uid in self._cache}
        answers.update(await self._ask({uid: relevant[uid] for uid in relevant if uid not in answers}))
        # A cached answer can be stale for a pod that ended before the apiserver says so (the
        # kubelet may already have given its IDs to a new pod): where two pods claim one ID, ask
        # the kubelet again about the cached ones before calling it a conflict.
        stale = {uid for uid in _conflicting(answers) if uid in self._cache}
        for uid in stale:
            del self._cache[uid]
            del answers[uid]
        answers.update(await self._ask({uid: relevant[uid] for uid in stale}))
        return HolderSnapshot(tuple(e for uid in relevant for e in answers.get(uid, ())))

    async def _ask(
        self, pods: Mapping[str, tuple[Mapping[str, Any], dict[str, set[str]]]]
    ) -> dict[str, list[ContainerDevices]]:
        """``Get`` each pod; cache complete answers (every container asking for extended resources
        holds devices: admitted, so they never change; not every extended resource is a
        device-plugin one - xpupool.io/vxpu-core is the scheduler's only - so one per container)."""
        uids = list(pods)
        answers = await asyncio.gather(
            *(
                self.client.get(str(pods[u][0].get("namespace", "")), str(pods[u][0].get("name", "")), pod_uid=u)
                for u in uids
            )
        )
        found: dict[str, list[ContainerDevices]] = {}
        for uid, answer in zip(uids, answers, strict=True):
            if answer is None:
                continue  # not on the kubelet (yet, or any more)
            found[uid] = answer
            if set(pods[uid][1]) <= {e.container for e in answer}:
                self._cache[uid] = answer
        return found


def _conflicting(answers: Mapping[str, list[ContainerDevices]]) -> set[str]:
    """Pod UIDs that share a (resource, device ID) with another pod."""
    owners: dict[tuple[str, str], set[str]] = {}
    for uid, entries in answers.items():
        for e in entries:
            for i in e.device_ids:
                owners.setdefault((e.resource, i), set()).add(uid)
    return {uid for uids in owners.values() if len(uids) > 1 for uid in uids}


def _consume(future: asyncio.Future[HolderSnapshot]) -> None:
    """Mark a batch's exception as retrieved (every waiter already got it)."""
    if not future.cancelled():
        with contextlib.suppress(Exception):
            future.exception()
