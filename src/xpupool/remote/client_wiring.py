"""The CPU-only node's side of remote vXPUs: what a container placed remote receives.

Called by the node agent's pairing (``PreStartContainer``) for a container whose allocation's cards
are on another node. :meth:`RemoteClientWiring.prepare`:

1. reads the GPU node's published remote endpoint, token endpoint and CA (node annotations
   :data:`~xpupool.remote.served.ANN_REMOTE`, :data:`~xpupool.remote.served.ANN_REMOTE_CA`);
2. asks that node's agent for a session token for the pod (HTTPS, the CA above, authenticated with
   this agent's service-account token for :data:`~xpupool.remote.served.REMOTE_AUDIENCE`);
3. writes the token and the CA in a per-container host directory;
4. returns the container's wiring: the client ``libcuda.so.1``/``libnvidia-ml.so.1`` (mounted
   read-only, preloaded so every ``dlopen("libcuda.so.1")`` gets them), the endpoint, the token file
   and the CA (mounted read-only).

:meth:`RemoteClientWiring.refresh` re-issues tokens before they expire (a new process in the
container connects with the current file) and forgets containers whose pods are gone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import ssl
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import aiohttp

from xpupool.agent.allocation import PodSlice, Wiring
from xpupool.agent.kubeapi import ApiError
from xpupool.core.status import Status
from xpupool.remote.served import ANN_REMOTE, ANN_REMOTE_CA, TOKEN_PATH

log = logging.getLogger(__name__)

CLIENT_LIBS = ("libcuda.so.1", "libnvidia-ml.so.1")


class NodeGetter(Protocol):
    async def get_node(self, name: str) -> dict[str, Any]: ...


class PodGetter(Protocol):
    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class RemotePaths:
    """Host and container paths of the client libraries and the per-container session files."""

    client_host_dir: str = "/var/lib/xpupool/remote-client"
    client_container_dir: str = "/usr/local/xpupool/remote"
    files_host_root: str = "/var/lib/xpupool/remote-sessions"
    files_container_dir: str = "/run/xpupool/remote"


@dataclasses.dataclass(slots=True)
class _Live:
    part: PodSlice
    gpu_node: str
    issued_s: float
    ttl_s: int


class RemoteClientWiring:
    """See the module docstring."""

    def __init__(self, *, nodes: NodeGetter, pods: PodGetter, sa_token_path: Path, paths: RemotePaths | None = None,
                 timeout_s: float = 10.0, wall_clock: Callable[[], float] = time.time) -> None:
        self._nodes = nodes
        self._pods = pods
        self._sa_token = sa_token_path
        self.paths = paths or RemotePaths()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._now = wall_clock
        self._live: dict[str, _Live] = {}

    async def _issue(self, part: PodSlice, gpu_node: str) -> tuple[dict[str, Any] | None, Status]:
        try:
            node = await self._nodes.get_node(gpu_node)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            return None, Status.error(f"cannot read node {gpu_node}: {exc}")
        ann = (node.get("metadata") or {}).get("annotations") or {}
        try:
            remote = json.loads(ann[ANN_REMOTE])
            ca = str(ann[ANN_REMOTE_CA])
            issuer, server_name = str(remote["issuer"]), str(remote["serverName"])
        except (KeyError, ValueError, TypeError):
            return None, Status.error(f"node {gpu_node} does not serve remote vXPUs (no {ANN_REMOTE} annotation)")
        try:
            bearer = self._sa_token.read_text().strip()
        except OSError as exc:
            return None, Status.error(f"cannot read this agent's token for remote vXPUs: {exc}")
        ctx = ssl.create_default_context(cadata=ca)
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as http, http.post(
                issuer + TOKEN_PATH, json={"namespace": part.namespace, "pod": part.name},
                headers={"Authorization": f"Bearer {bearer}"}, ssl=ctx, server_hostname=server_name,
            ) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            return None, Status.error(f"token endpoint of {gpu_node} ({issuer}) unreachable: {exc}")
        if resp.status != 200:
            return None, Status.error(f"{gpu_node} refused a session token for {part.key}: "
                                      f"{(body or {}).get('error', resp.status)}")
        return body, Status.success()

    def _write(self, region_dir: str, answer: dict[str, Any]) -> Path:
        d = Path(self.paths.files_host_root) / region_dir
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        for name, text in (("token", str(answer["token"])), ("ca.pem", str(answer["ca"]))):
            tmp = d / f".{name}.tmp"
            tmp.write_text(text)
            os.chmod(tmp, 0o444)  # the container may run as any user; the mount is read-only
            os.replace(tmp, d / name)
        return d

    async def prepare(self, part: PodSlice, region_dir: str) -> tuple[Wiring | None, Status]:
        """The wiring of one container of a remote pod (``region_dir``: the pairing's per-container name)."""
        gpu_node = part.allocation.device_node
        answer, status = await self._issue(part, gpu_node)
        if answer is None:
            return None, status
        host_dir = self._write(region_dir, answer)
        self._live[region_dir] = _Live(part, gpu_node, self._now(), int(answer.get("expiresInSeconds", 3600)))
        p = self.paths
        libs = " ".join(str(PurePosixPath(p.client_container_dir) / lib) for lib in CLIENT_LIBS)
        files = PurePosixPath(p.files_container_dir)
        envs = {
            "LD_PRELOAD": libs,
            "XPUPOOL_REMOTE_ENDPOINT": str(answer["endpoint"]),
            "XPUPOOL_REMOTE_TOKEN_FILE": str(files / "token"),
            "XPUPOOL_REMOTE_CA": str(files / "ca.pem"),
            "XPUPOOL_REMOTE_SERVER_NAME": str(answer["serverName"]),
            "XPUPOOL_REMOTE_NODE": gpu_node,
            "XPUPOOL_POD": part.key,
            "XPUPOOL_CONTAINER": part.container,
            "XPUPOOL_MEMORY_LIMIT_MIB": ",".join(str(m) for m in part.allocation.device_memory_mib),
            "XPUPOOL_CORE_LIMIT_PCT": str(-(-part.allocation.share_milli // 10)),
            "NVIDIA_VISIBLE_DEVICES": "void",  # no local GPU: only the remote one
        }
        mounts = [(p.client_container_dir, p.client_host_dir, True), (p.files_container_dir, str(host_dir), True)]
        log.info("%s container %s: remote vXPU on %s via %s", part.key, part.container, gpu_node, answer["endpoint"])
        return Wiring(envs=envs, mounts=mounts, region_host_dir=str(host_dir)), Status.success()

    async def refresh(self) -> list[str]:
        """Re-issue tokens past half their life; forget containers whose pods are gone. Returns what
        was refreshed (pod keys)."""
        refreshed: list[str] = []
        for region_dir, live in list(self._live.items()):
            try:
                pod = await self._pods.get_pod(live.part.namespace, live.part.name)
                gone = (pod.get("metadata") or {}).get("uid") != live.part.uid
            except ApiError as exc:
                if exc.status != 404:
                    continue
                gone = True
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue
            if gone:
                shutil.rmtree(Path(self.paths.files_host_root) / region_dir, ignore_errors=True)
                del self._live[region_dir]
                continue
            if self._now() - live.issued_s < live.ttl_s / 2:
                continue
            answer, status = await self._issue(live.part, live.gpu_node)
            if answer is None:
                log.warning("%s: cannot refresh its remote vXPU token: %s", live.part.key, status.message())
                continue
            self._write(region_dir, answer)
            live.issued_s = self._now()
            refreshed.append(live.part.key)
        return refreshed
