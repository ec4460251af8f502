"""The node agent's remote-vXPU role, composed from :mod:`~xpupool.remote.served` (GPU nodes) and
:mod:`~xpupool.remote.client_wiring` (CPU-only nodes). A node may be both.

Settings come from ``XPUPOOL_REMOTE_*`` variables (:meth:`RemoteSettings.from_env`):

* client side (``XPUPOOL_REMOTE_SLOTS`` > 0): the device plugin advertises that many ``remote::<n>``
  slots so the kubelet admits pods placed remote; their containers are wired by
  :class:`~xpupool.remote.client_wiring.RemoteClientWiring`, which authenticates with the projected
  service-account token at ``XPUPOOL_REMOTE_SA_TOKEN`` (audience
  :data:`~xpupool.remote.served.REMOTE_AUDIENCE`);
* server side (``XPUPOOL_REMOTE_DAEMON_STATE`` set): this node runs ``xpu-remoted`` with that state
  directory; the agent publishes the daemon's endpoint, its token endpoint and CA on the Node, serves
  tokens (HTTPS on ``XPUPOOL_REMOTE_ISSUER_PORT`` with the daemon's certificate) to the agents named
  in ``XPUPOOL_REMOTE_AGENTS`` and revokes grants of pods that are gone.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.pairing import RegionWriter
from xpupool.remote.client_wiring import NodeGetter, RemoteClientWiring, RemotePaths
from xpupool.remote.daemon import Control, StateFiles
from xpupool.remote.metrics import DaemonMetricsCollector
from xpupool.remote.served import PodGetter, RemoteServer, TokenReviewer

log = logging.getLogger(__name__)


class NodePatcher(NodeGetter, Protocol):
    async def patch_node_annotations(self, name: str, annotations: Mapping[str, str | None]) -> dict[str, Any]: ...


class RemoteSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slots: int = Field(default=0, ge=0, le=1024)
    client_host_dir: str = RemotePaths().client_host_dir
    files_host_root: str = RemotePaths().files_host_root
    sa_token: str = "/var/run/secrets/xpupool/remote/token"
    daemon_state: str = ""
    advertise_host: str = ""
    daemon_port: int = Field(default=7070, ge=1, le=65535)
    issuer_port: int = Field(default=7071, ge=1, le=65535)
    agents: list[str] = Field(default_factory=list)
    token_ttl_s: int = Field(default=3600, ge=60)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RemoteSettings:
        mapping = {"XPUPOOL_REMOTE_SLOTS": "slots", "XPUPOOL_REMOTE_CLIENT_DIR": "client_host_dir",
                   "XPUPOOL_REMOTE_FILES_ROOT": "files_host_root", "XPUPOOL_REMOTE_SA_TOKEN": "sa_token",
                   "XPUPOOL_REMOTE_DAEMON_STATE": "daemon_state", "XPUPOOL_REMOTE_ADVERTISE_HOST": "advertise_host",
                   "XPUPOOL_REMOTE_DAEMON_PORT": "daemon_port", "XPUPOOL_REMOTE_ISSUER_PORT": "issuer_port",
                   "XPUPOOL_REMOTE_AGENTS": "agents", "XPUPOOL_REMOTE_TOKEN_TTL_S": "token_ttl_s"}
        raw: dict[str, Any] = {}
        for var, key in mapping.items():
            if var in env:
                raw[key] = [a.strip() for a in env[var].split(",") if a.strip()] if key == "agents" else env[var]
        return cls.model_validate(raw)

    @property
    def enabled(self) -> bool:
        return self.slots > 0 or bool(self.daemon_state)


class RemoteRole:
    """Both sides for one node; hooks for :class:`xpupool.agent.daemon.Agent`."""

    def __init__(self, settings: RemoteSettings, *, node: str, nodes: NodePatcher, pods: PodGetter,
                 reviewer: TokenReviewer, cards: Callable[[], Mapping[int, DeviceInfo]], region_root: Path,
                 region_writer: RegionWriter | None) -> None:
        self.settings = settings
        self.node = node
        self._nodes = nodes
        self.client: RemoteClientWiring | None = None
        self.server: RemoteServer | None = None
        self._published: dict[str, str] | None = None
        if settings.slots > 0:
            self.client = RemoteClientWiring(nodes=nodes, pods=pods, sa_token_path=Path(settings.sa_token),
                                             paths=RemotePaths(client_host_dir=settings.client_host_dir,
                                                               files_host_root=settings.files_host_root))
        if settings.daemon_state:
            if not settings.advertise_host or not settings.agents:
                raise ValueError("a remote vXPU server needs XPUPOOL_REMOTE_ADVERTISE_HOST and XPUPOOL_REMOTE_AGENTS")
            state = StateFiles(Path(settings.daemon_state))
            self.server = RemoteServer(node=node, control=Control(state.control), state=state, pods=pods,
                                       reviewer=reviewer, cards=cards, region_root=region_root,
                                       region_writer=region_writer, agents=frozenset(settings.agents),
                                       endpoint=f"{settings.advertise_host}:{settings.daemon_port}",
                                       ttl_s=settings.token_ttl_s)

    @property
    def issuer_url(self) -> str:
        host = self.settings.advertise_host
        return f"https://{'[' + host + ']' if ':' in host else host}:{self.settings.issuer_port}"

    async def tick(self) -> None:
        """Publish the server's annotations (when changed), revoke grants of gone pods, refresh tokens."""
        if self.server is not None:
            wanted = self.server.annotations(self.issuer_url)
            if wanted != self._published:
                await self._nodes.patch_node_annotations(self.node, dict(wanted))
                self._published = wanted
            await self.server.reconcile()
        if self.client is not None:
            await self.client.refresh()

    def collectors(self) -> list[DaemonMetricsCollector]:
        """Collectors for the agent's ``/metrics`` (the daemon's, on a node that serves remote vXPUs)."""
        if self.server is None:
            return []
        return [DaemonMetricsCollector(self.server.control, node=self.node)]

    def live_uids(self) -> set[str]:
        return self.server.live_uids() if self.server is not None else set()

    async def start_issuer(self, host: str = "0.0.0.0") -> web.AppRunner | None:
        """Serve the token endpoint with the daemon's certificate; the caller cleans the runner up."""
        if self.server is None:
            return None
        st = self.server.state
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(st.tls_cert, st.tls_key)
        runner = web.AppRunner(self.server.app())
        await runner.setup()
        await web.TCPSite(runner, host, self.settings.issuer_port, ssl_context=ctx).start()
        log.info("remote vXPU token endpoint on %s", self.issuer_url)
        return runner
