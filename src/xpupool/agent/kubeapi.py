"""The few Kubernetes API calls the node agent makes, over aiohttp.

The agent needs four calls (read its Node, merge-patch its Node's annotations, list the pods bound
to its Node, read one pod); it never writes pods. A direct aiohttp client keeps the DaemonSet free
of the scheduler's informer machinery. :class:`NodeApi` and :class:`PodApi` are the Protocols the
rest of the agent depends on; :class:`KubeApi` implements both against a real apiserver
(in-cluster service account or an explicit URL/token/CA), and tests run it against a fake
apiserver on a loopback socket.

Errors: a non-2xx answer raises :class:`ApiError` (``status`` 409 = optimistic-concurrency
conflict, 404 = gone); connection problems raise ``aiohttp.ClientError``. Callers treat both as
transient and retry with backoff: they are transport failures, not expected outcomes.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """The apiserver answered with a non-2xx status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class NodeApi(Protocol):
    async def get_node(self, name: str) -> dict[str, Any]:
        """The Node object as JSON; :class:`ApiError` 404 when absent."""
        ...

    async def patch_node_annotations(self, name: str, annotations: Mapping[str, str | None]) -> dict[str, Any]:
        """Merge-patch ``metadata.annotations`` (``None`` deletes a key); returns the updated Node."""
        ...


class PodApi(Protocol):
    async def list_pods_on_node(self, node: str) -> list[dict[str, Any]]:
        """All pods with ``spec.nodeName == node`` (one consistent list)."""
        ...

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """The Pod as JSON; :class:`ApiError` 404 when absent."""
        ...


class KubeApi:
    """aiohttp client for :class:`NodeApi` and :class:`PodApi`.

    ``token_path`` is re-read on every request (bound service-account tokens rotate hourly).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        token_path: str | Path | None = None,
        ca_path: str | Path | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._token = token
        self._token_path = Path(token_path) if token_path else None
        self._ssl: ssl.SSLContext | None = None
        if self._base.startswith("https://"):
            self._ssl = ssl.create_default_context(cafile=str(ca_path) if ca_path else None)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KubeApi:
        """In-cluster (service account) unless ``XPUPOOL_KUBE_URL`` is set: then that URL with the
        token in ``XPUPOOL_KUBE_TOKEN_FILE`` (re-read per request) and the CA in
        ``XPUPOOL_KUBE_CA_FILE`` (an agent run as a host service rather than a DaemonSet pod)."""
        env = os.environ if env is None else env
        url = env.get("XPUPOOL_KUBE_URL")
        if not url:
            return cls.in_cluster()
        return cls(url, token_path=env.get("XPUPOOL_KUBE_TOKEN_FILE"), ca_path=env.get("XPUPOOL_KUBE_CA_FILE"))

    @classmethod
    def in_cluster(cls) -> KubeApi:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", token_path=SA_DIR / "token", ca_path=SA_DIR / "ca.crt")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self._token
        if self._token_path is not None:
            token = self._token_path.read_text().strip()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        data = None if body is None else json.dumps(body)
        async with self._session.request(
            method,
            self._base + path,
            params=params,
            data=data,
            ssl=self._ssl if self._ssl is not None else True,
            headers=self._headers(content_type),
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                message = text
                with contextlib.suppress(json.JSONDecodeError, AttributeError):
                    message = json.loads(text).get("message", text)
                raise ApiError(resp.status, message)
            result: dict[str, Any] = json.loads(text) if text else {}
            return result

    async def get_node(self, name: str) -> dict[str, Any]:
        return await self._request("GET", f"/api/v1/nodes/{name}")

    async def patch_node_annotations(self, name: str, annotations: Mapping[str, str | None]) -> dict[str, Any]:
        body = {"metadata": {"annotations": dict(annotations)}}
        return await self._request("PATCH", f"/api/v1/nodes/{name}", body=body, content_type=MERGE_PATCH)

    async def list_pods_on_node(self, node: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params = {"fieldSelector": f"spec.nodeName={node}", "limit": "500"}
        while True:
            page = await self._request("GET", "/api/v1/pods", params=params)
            items.extend(page.get("items", []))
            cont = page.get("metadata", {}).get("continue")
            if not cont:
                return items
            params = {**params, "continue": cont}

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    async def review(self, token: str, *, audience: str) -> dict[str, Any]:
        """Hook (remote): the ``status`` of a TokenReview (who presents ``token`` for ``audience``)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [audience]}}
        result = await self._request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=body,
                                     content_type="application/json")
        status: dict[str, Any] = result.get("status") or {}
        return status
