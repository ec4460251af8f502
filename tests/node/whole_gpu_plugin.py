"""A STAND-IN for the NVIDIA device plugin (test double): advertises ``nvidia.com/gpu`` with the
given card UUIDs as device IDs, exactly as the NVIDIA plugin names its devices, and answers
``Allocate`` with nothing (there is no GPU to wire). Registers with the real kubelet so that the
kubelet's own allocation record (PodResources) holds real ``nvidia.com/gpu`` device IDs, which is
what the xpupool agent reads to learn which cards another plugin holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from xpupool._generated.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc

RESOURCE = "nvidia.com/gpu"


class WholeGpuPlugin(api_pb2_grpc.DevicePluginServicer):
    def __init__(self, plugin_dir: Path, uuids: Sequence[str], *, socket_name: str = "test-whole-gpu.sock") -> None:
        self.dir = plugin_dir
        self.uuids = list(uuids)
        self.socket = plugin_dir / socket_name
        self.allocated: list[list[str]] = []
        self._server: grpc.aio.Server | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._server = grpc.aio.server()
        api_pb2_grpc.add_DevicePluginServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix://{self.socket}")
        await self._server.start()
        async with grpc.aio.insecure_channel(f"unix://{self.dir / 'kubelet.sock'}") as channel:
            await api_pb2_grpc.RegistrationStub(channel).Register(
                api_pb2.RegisterRequest(
                    version="v1beta1",
                    endpoint=self.socket.name,
                    resource_name=RESOURCE,
                    options=api_pb2.DevicePluginOptions(),
                ),
                timeout=10,
            )

    async def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            await self._server.stop(grace=0.5)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions()

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        yield api_pb2.ListAndWatchResponse(devices=[api_pb2.Device(ID=u, health="Healthy") for u in self.uuids])
        await self._stop.wait()

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.AllocateResponse:
        for creq in request.container_requests:
            self.allocated.append(list(creq.devices_ids))
        return api_pb2.AllocateResponse(
            container_responses=[api_pb2.ContainerAllocateResponse() for _ in request.container_requests]
        )
