"""A kubelet-protocol peer for device plugin tests (fake at the wire, real unix sockets).

Registration side: it serves ``/v1beta1.Registration/Register`` on ``<dir>/kubelet.sock`` and,
like the kubelet, dials the plugin back on the registered endpoint: it reads the plugin options and
keeps a ``ListAndWatch`` stream open, recording every device list it receives. :meth:`restart`
mimics a kubelet restart: stop serving, delete every socket in the directory, serve a new
``kubelet.sock`` (and a new PodResources socket); allocations survive, as with the kubelet's
checkpoint.

Device manager side (modelled on k8s.io/kubernetes v1.36.3 ``pkg/kubelet/cm/devicemanager``):
:meth:`admit` picks free healthy IDs *by count only* (shuffled: it knows nothing of the
scheduler's cards), calls ``Allocate`` per container and records the allocation;
:meth:`start_container` calls ``PreStartContainer`` (when the plugin asked for it) with the
recorded IDs and then plays the container runtime: it applies the ``Allocate`` env/mounts and,
like containerd's CRI plugin, refreshes the CDI registry and injects each CDI device
(:func:`apply_cdi`; an unresolvable name fails the container). :meth:`remove_pod` frees the IDs.
The PodResources service on ``<root>/pod-resources/kubelet.sock`` answers ``Get`` (and counts
``List`` calls, which the agent must never make) from that record, with the kubelet's rate limit
(burst, then ``RESOURCE_EXHAUSTED``) when ``burst`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from xpupool._generated.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from xpupool._generated.podresources.v1 import api_pb2 as pr_pb2
from xpupool._generated.podresources.v1 import api_pb2_grpc as pr_grpc
from xpupool.core.request import RES_VXPU

CDI_NAME = re.compile(
    r"^(?P<kind>[A-Za-z][A-Za-z0-9_.-]*/[A-Za-z][A-Za-z0-9_.-]*)=(?P<name>[A-Za-z0-9][A-Za-z0-9_.:-]*)$"
)
CDI_VERSIONS = {"0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0"}


@dataclass
class Assignment:
    namespace: str
    pod: str
    container: str
    resource: str
    ids: list[str]
    response: api_pb2.ContainerAllocateResponse | None = None


@dataclass
class Container:
    """What the runtime stand-in created: env, mounts (container -> (host, read-only)), devices."""

    env: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, tuple[str, bool]] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)


class ContainerStartError(Exception):
    """The kubelet (PreStartContainer failed) or the runtime (CDI) refused to create the container."""


class FakePodResources(pr_grpc.PodResourcesListerServicer):
    """``v1.PodResourcesLister/List`` over the fake kubelet's allocation record."""

    def __init__(self, kubelet: FakeKubelet) -> None:
        self._kubelet = kubelet
        self.calls = 0
        self.list_calls = 0
        self.delay_s = 0.0  # answer time (the record is read when the call arrives, as the kubelet does)
        self.burst: int | None = None
        self._tokens: list[float] = []

    async def _limit(self, context: grpc.aio.ServicerContext) -> None:
        self.calls += 1
        if self.burst is not None:
            now = time.monotonic()
            self._tokens = [t for t in self._tokens if now - t < 0.1]
            if len(self._tokens) >= self.burst:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rejected by rate limit")
            self._tokens.append(now)

    def _pod(self, namespace: str, name: str, record: list[Assignment]) -> pr_pb2.PodResources:
        containers: dict[str, list[Assignment]] = {}
        for a in record:
            if (a.namespace, a.pod) == (namespace, name):
                containers.setdefault(a.container, []).append(a)
        return pr_pb2.PodResources(
            name=name,
            namespace=namespace,
            containers=[
                pr_pb2.ContainerResources(
                    name=c,
                    devices=[pr_pb2.ContainerDevices(resource_name=a.resource, device_ids=a.ids) for a in held],
                )
                for c, held in containers.items()
            ],
        )

    async def List(
        self, request: pr_pb2.ListPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> pr_pb2.ListPodResourcesResponse:
        self.list_calls += 1
        await self._limit(context)
        record = list(self._kubelet.assignments)
        pods = sorted({(a.namespace, a.pod) for a in record})
        return pr_pb2.ListPodResourcesResponse(pod_resources=[self._pod(ns, name, record) for ns, name in pods])

    async def Get(
        self, request: pr_pb2.GetPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> pr_pb2.GetPodResourcesResponse:
        """Like the kubelet: an unknown pod is an error ("... not found")."""
        await self._limit(context)
        record = list(self._kubelet.assignments)  # read when the call arrives, as the kubelet does
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        key = (request.pod_namespace, request.pod_name)
        if key not in {(a.namespace, a.pod) for a in record} and key not in self._kubelet.known_pods:
            await context.abort(
                grpc.StatusCode.UNKNOWN, f"pod {request.pod_name} in namespace {request.pod_namespace} not found"
            )
        return pr_pb2.GetPodResourcesResponse(pod_resources=self._pod(*key, record))

    async def GetAllocatableResources(
        self, request: pr_pb2.AllocatableResourcesRequest, context: grpc.aio.ServicerContext
    ) -> pr_pb2.AllocatableResourcesResponse:
        """Healthy devices of the connected plugin (none before it registers after a restart)."""
        await self._limit(context)
        ids = sorted(self._kubelet.allocatable_ids)
        return pr_pb2.AllocatableResourcesResponse(
            devices=[pr_pb2.ContainerDevices(resource_name=RES_VXPU, device_ids=ids)] if ids else []
        )


class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    def __init__(self, plugin_dir: Path, *, refuse: str = "", seed: int = 7, cdi_dir: Path | None = None) -> None:
        self.dir = plugin_dir
        self.refuse = refuse
        self.cdi_dir = cdi_dir
        self.registrations: list[api_pb2.RegisterRequest] = []
        self.options: list[api_pb2.DevicePluginOptions] = []
        self.lists: list[api_pb2.ListAndWatchResponse] = []
        self.list_event = asyncio.Event()
        self.registered = asyncio.Event()
        self.assignments: list[Assignment] = []
        self.allocatable_ids: set[str] = set()  # healthy IDs the connected plugin listed
        self.known_pods: set[tuple[str, str]] = set()  # given to this kubelet (admitted or not)
        self.podresources = FakePodResources(self)
        self.rng = random.Random(seed)
        self._server: grpc.aio.Server | None = None
        self._pr_server: grpc.aio.Server | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._channels: list[grpc.aio.Channel] = []
        self._endpoint = ""

    @property
    def socket(self) -> Path:
        return self.dir / "kubelet.sock"

    @property
    def podresources_socket(self) -> Path:
        return self.dir / "pod-resources" / "kubelet.sock"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix://{self.socket}")
        await self._server.start()
        self.podresources_socket.parent.mkdir(exist_ok=True)
        self._pr_server = grpc.aio.server()
        pr_grpc.add_PodResourcesListerServicer_to_server(self.podresources, self._pr_server)
        self._pr_server.add_insecure_port(f"unix://{self.podresources_socket}")
        await self._pr_server.start()

    async def stop(self) -> None:
        self.allocatable_ids = set()
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await task
        self._watchers.clear()
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        for server in (self._server, self._pr_server):
            if server is not None:
                await server.stop(grace=None)
        self._server = self._pr_server = None

    async def restart(self) -> None:
        """What a kubelet restart looks like from a plugin: all sockets deleted, new kubelet.sock."""
        await self.stop()
        for directory in (self.dir, self.podresources_socket.parent):
            for path in directory.iterdir():
                if path.is_socket():
                    path.unlink()
        self.registered.clear()
        await self.start()

    def plugin_stub(self, endpoint: str) -> api_pb2_grpc.DevicePluginStub:
        channel = grpc.aio.insecure_channel(f"unix://{self.dir / endpoint}")
        self._channels.append(channel)
        return api_pb2_grpc.DevicePluginStub(channel)

    async def Register(self, request: api_pb2.RegisterRequest, context: grpc.aio.ServicerContext) -> api_pb2.Empty:
        if self.refuse:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.refuse)
        if request.version != "v1beta1":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported version {request.version}")
        self.registrations.append(request)
        self._endpoint = request.endpoint
        stub = self.plugin_stub(request.endpoint)
        # The kubelet dials back during/just after Register: the plugin must already serve.
        self.options.append(await stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5))
        self._watchers.append(asyncio.create_task(self._watch(stub)))
        self.registered.set()
        return api_pb2.Empty()

    async def _watch(self, stub: api_pb2_grpc.DevicePluginStub) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for response in stub.ListAndWatch(api_pb2.Empty()):
                self.lists.append(response)
                self.allocatable_ids = {d.ID for d in response.devices if d.health == "Healthy"}
                self.list_event.set()

    async def next_list(self, count_before: int, timeout_s: float = 5.0) -> api_pb2.ListAndWatchResponse:
        """Wait until more than ``count_before`` device lists arrived; return the latest."""

        async def wait() -> None:
            while len(self.lists) <= count_before:
                self.list_event.clear()
                await self.list_event.wait()

        await asyncio.wait_for(wait(), timeout_s)
        return self.lists[-1]

    # ------------------------------------------------------------------ device manager
    def free_ids(self) -> list[str]:
        taken = {i for a in self.assignments if a.resource == RES_VXPU for i in a.ids}
        latest = self.lists[-1] if self.lists else api_pb2.ListAndWatchResponse()
        return [d.ID for d in latest.devices if d.health == "Healthy" and d.ID not in taken]

    def hold(self, namespace: str, pod: str, container: str, resource: str, ids: Sequence[str]) -> None:
        """Record devices (of any plugin, e.g. ``nvidia.com/gpu``) for a container."""
        self.known_pods.add((namespace, pod))
        self.assignments.append(Assignment(namespace, pod, container, resource, list(ids)))

    async def admit(self, pod: dict[str, Any]) -> list[Assignment]:
        """Admission: IDs by count for every vXPU container, one ``Allocate`` each, recorded."""
        meta, spec = pod["metadata"], pod["spec"]
        self.known_pods.add((meta["namespace"], meta["name"]))
        ordered = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
        ordered += spec.get("containers") or []
        stub = self.plugin_stub(self._endpoint)
        made = []
        for c in ordered:
            count = int((c.get("resources") or {}).get("limits", {}).get(RES_VXPU, 0))
            if count <= 0:
                continue
            free = self.free_ids()
            if len(free) < count:
                raise ContainerStartError(f"UnexpectedAdmissionError: requested {count}, available {len(free)}")
            ids = self.rng.sample(free, count)
            assignment = Assignment(meta["namespace"], meta["name"], c["name"], RES_VXPU, ids)
            self.assignments.append(assignment)  # recorded before Allocate returns, as podDevices
            response = await stub.Allocate(
                api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)])
            )
            assignment.response = response.container_responses[0]
            made.append(assignment)
        return made

    async def start_container(self, namespace: str, pod: str, container: str) -> Container:
        """PreStartContainer (if asked for) then create the container as a CDI-capable runtime."""
        key = (namespace, pod, container, RES_VXPU)
        (assignment,) = [a for a in self.assignments if (a.namespace, a.pod, a.container, a.resource) == key]
        if self.options and self.options[-1].pre_start_required:
            stub = self.plugin_stub(self._endpoint)
            try:
                await stub.PreStartContainer(api_pb2.PreStartContainerRequest(devices_ids=assignment.ids), timeout=30)
            except grpc.aio.AioRpcError as exc:
                raise ContainerStartError(f"PreStartContainer failed: {exc.details()}") from exc
        assert assignment.response is not None
        made = Container(
            env=dict(assignment.response.envs),
            mounts={m.container_path: (m.host_path, m.read_only) for m in assignment.response.mounts},
            devices={d.container_path: d.host_path for d in assignment.response.devices},
        )
        if self.cdi_dir is not None:
            for device in assignment.response.cdi_devices:
                apply_cdi(made, device.name, self.cdi_dir)
        return made

    def remove_pod(self, namespace: str, pod: str) -> None:
        """The pod ended: its devices are free again (UpdateAllocatedDevices)."""
        self.assignments = [a for a in self.assignments if (a.namespace, a.pod) != (namespace, pod)]
        self.known_pods.discard((namespace, pod))


def apply_cdi(container: Container, qualified: str, spec_dir: Path) -> None:
    """Resolve ``vendor/class=name`` in ``spec_dir`` and apply its edits (env and mounts replace
    same-named entries, as the CDI library does). Raises ContainerStartError when unresolvable."""
    match = CDI_NAME.match(qualified)
    if match is None:
        raise ContainerStartError(f"invalid CDI device name {qualified!r}")
    found = []
    for path in sorted(spec_dir.glob("*.json")):
        spec = json.loads(path.read_text())
        if spec.get("cdiVersion") not in CDI_VERSIONS:
            raise ContainerStartError(f"{path}: unknown cdiVersion {spec.get('cdiVersion')!r}")
        if spec.get("kind") != match["kind"]:
            continue
        found += [d for d in spec.get("devices", []) if d.get("name") == match["name"]]
    if len(found) != 1:
        raise ContainerStartError(f"CDI device injection failed: unresolvable CDI devices {qualified} ({len(found)})")
    edits = found[0]["containerEdits"]
    for item in edits.get("env", []):
        key, value = item.split("=", 1)
        container.env[key] = value
    for mount in edits.get("mounts", []):
        container.mounts[mount["containerPath"]] = (mount["hostPath"], "ro" in mount.get("options", []))
    for node in edits.get("deviceNodes", []):
        container.devices[node["path"]] = node.get("hostPath", node["path"])
