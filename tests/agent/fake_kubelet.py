"""A kubelet-protocol peer for device plugin tests (fake at the wire, real unix sockets).

It serves ``/v1beta1.Registration/Register`` on ``<dir>/kubelet.sock`` and, like the kubelet,
dials the plugin back on the registered endpoint: it reads the plugin options and keeps a
``ListAndWatch`` stream open, recording every device list it receives. :meth:`restart` mimics a
kubelet restart: stop serving, delete every socket in the directory, serve a new ``kubelet.sock``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc

from xpupool._generated.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc


class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    def __init__(self, plugin_dir: Path, *, refuse: str = "") -> None:
        self.dir = plugin_dir
        self.refuse = refuse
        self.registrations: list[api_pb2.RegisterRequest] = []
        self.options: list[api_pb2.DevicePluginOptions] = []
        self.lists: list[api_pb2.ListAndWatchResponse] = []
        self.list_event = asyncio.Event()
        self.registered = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._channels: list[grpc.aio.Channel] = []

    @property
    def socket(self) -> Path:
        return self.dir / "kubelet.sock"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix://{self.socket}")
        await self._server.start()

    async def stop(self) -> None:
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await task
        self._watchers.clear()
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def restart(self) -> None:
        """What a kubelet restart looks like from a plugin: all sockets deleted, new kubelet.sock."""
        await self.stop()
        for path in self.dir.iterdir():
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
                self.list_event.set()

    async def next_list(self, count_before: int, timeout_s: float = 5.0) -> api_pb2.ListAndWatchResponse:
        """Wait until more than ``count_before`` device lists arrived; return the latest."""

        async def wait() -> None:
            while len(self.lists) <= count_before:
                self.list_event.clear()
                await self.list_event.wait()

        await asyncio.wait_for(wait(), timeout_s)
        return self.lists[-1]
