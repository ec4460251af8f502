"""A small fake Kubernetes API server (aiohttp on loopback) for the agent's four calls.

Implements: ``GET/PATCH /api/v1/nodes/{name}`` (merge patch of annotations), ``GET /api/v1/pods``
with ``fieldSelector=spec.nodeName=<node>``, ``GET /api/v1/namespaces/{ns}/pods/{name}``. Every
write bumps a global resourceVersion. ``requests`` records ``(method, path)`` for assertions.
Nodes report a container runtime (``status.nodeInfo.containerRuntimeVersion``) like a kubelet does.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


class FakeApiServer:
    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_next: list[int] = []
        self.token = "test-token"
        self._rv = 100
        self._server: TestServer | None = None

    def _bump(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)

    def add_node(
        self, name: str, annotations: dict[str, str] | None = None, *, runtime: str = "containerd://2.2.9"
    ) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "annotations": annotations or {}},
            "status": {"nodeInfo": {"containerRuntimeVersion": runtime}},
        }
        self._bump(node)
        self.nodes[name] = node

    def add_pod(
        self,
        namespace: str,
        name: str,
        *,
        node: str,
        annotations: dict[str, str],
        uid: str,
        created: str,
        phase: str = "Pending",
        containers: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "namespace": namespace,
                "name": name,
                "uid": uid,
                "creationTimestamp": created,
                "annotations": annotations,
            },
            "spec": {"nodeName": node, "containers": containers or [vxpu_container("main", 1)]},
            "status": {"phase": phase},
        }
        self._bump(pod)
        self.pods[(namespace, name)] = pod
        return pod

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.make_url("")).rstrip("/")

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api/v1/nodes/{name}", self._get_node)
        app.router.add_patch("/api/v1/nodes/{name}", self._patch_node)
        app.router.add_get("/api/v1/pods", self._list_pods)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._get_pod)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized")
        if self.fail_next:
            return _status(self.fail_next.pop(0), "injected failure")
        return await handler(request)  # type: ignore[no-any-return]

    async def _get_node(self, request: web.Request) -> web.Response:
        node = self.nodes.get(request.match_info["name"])
        return web.json_response(node) if node else _status(404, "node not found")

    async def _patch_node(self, request: web.Request) -> web.Response:
        if request.content_type != "application/merge-patch+json":
            return _status(415, f"unsupported patch type {request.content_type}")
        node = self.nodes.get(request.match_info["name"])
        if node is None:
            return _status(404, "node not found")
        _merge(node, json.loads(await request.text()))
        self._bump(node)
        return web.json_response(node)

    async def _list_pods(self, request: web.Request) -> web.Response:
        selector = request.query.get("fieldSelector", "")
        items = list(self.pods.values())
        if selector.startswith("spec.nodeName="):
            wanted = selector.split("=", 1)[1]
            items = [p for p in items if p["spec"].get("nodeName") == wanted]
        elif selector:
            return _status(400, f"unsupported fieldSelector {selector}")
        return web.json_response(
            {"kind": "PodList", "metadata": {"resourceVersion": str(self._rv)}, "items": copy.deepcopy(items)}
        )

    async def _get_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get((request.match_info["ns"], request.match_info["name"]))
        return web.json_response(copy.deepcopy(pod)) if pod else _status(404, "pod not found")


def vxpu_container(name: str, cards: int) -> dict[str, Any]:
    """A container spec asking for ``cards`` vXPUs."""
    return {"name": name, "image": "workload", "resources": {"limits": {"xpupool.io/vxpu": str(cards)}}}


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _status(code: int, message: str) -> web.Response:
    return web.json_response(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code},
        status=code,
    )
