"""One live pool (real apiserver + scheduler daemon + agent) shared by the view tests of this package.

Tests here run in the package's event loop (``loop_scope="package"``) because the pool's agent
serves ``/metrics`` from that loop.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from xpupool.kube.testing import ControlPlane
from xpupool.kube.transport import NAMESPACES, AiohttpTransport, KubeConfig

from .livepool import LivePool, live_pool


@pytest_asyncio.fixture(loop_scope="package", scope="package")
async def pool_transport(control_plane: ControlPlane) -> AsyncIterator[AiohttpTransport]:
    transport = AiohttpTransport(KubeConfig.from_file(control_plane.kubeconfig))
    yield transport
    await transport.close()


@pytest_asyncio.fixture(loop_scope="package", scope="package")
async def pool(control_plane: ControlPlane, pool_transport: AiohttpTransport,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LivePool]:
    namespace = f"v-{uuid.uuid4().hex[:8]}"
    await pool_transport.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": namespace}})
    async with live_pool(control_plane, pool_transport, namespace, tmp_path_factory.mktemp("livepool")) as p:
        yield p
