"""Fixtures and a raw client for tests against the real kube-apiserver (marker ``e2e_apiserver``).

Same policy as ``tests/kube/conftest.py``: the shared control plane of ``xpupool.kube.testing``;
missing binaries fail under ``$CI``/``$REQUIRE_E2E`` and skip (with the reason) otherwise.
:class:`RawApi` adds what these tests need beyond the scheduler's Transport: ``dryRun=All``
creates and the raw HTTP status of refusals.
"""

from __future__ import annotations

import json
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from xpupool.kube.testing import ControlPlane, find_bin_dir, missing_binaries_message, shared_control_plane
from xpupool.kube.transport import KubeConfig

PLURALS = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Node": ("/api/v1", "nodes", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Service": ("/api/v1", "services", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Pod": ("/api/v1", "pods", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "MutatingWebhookConfiguration": ("/apis/admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", False),
    "ValidatingAdmissionPolicy": ("/apis/admissionregistration.k8s.io/v1", "validatingadmissionpolicies", False),
    "ValidatingAdmissionPolicyBinding": (
        "/apis/admissionregistration.k8s.io/v1",
        "validatingadmissionpolicybindings",
        False,
    ),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "XPUQueue": ("/apis/xpupool.io/v1alpha1", "xpuqueues", False),
}


def _require() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("REQUIRE_E2E"))


class RawApi:
    def __init__(self, config: KubeConfig) -> None:
        self.config = config
        ctx = config.ssl_context()
        self._ssl = ctx if isinstance(ctx, ssl.SSLContext) else False
        auth = config.credentials.header() if config.credentials else f"Bearer {config.token}"
        self._session = aiohttp.ClientSession(headers={"Authorization": auth or ""})

    async def close(self) -> None:
        await self._session.close()

    def path(self, kind: str, namespace: str | None = None, name: str | None = None) -> str:
        base, plural, namespaced = PLURALS[kind]
        path = base + (f"/namespaces/{namespace}" if namespaced and namespace else "") + f"/{plural}"
        return path + (f"/{name}" if name else "")

    async def request(
        self, method: str, path: str, body: Any = None, *, dry_run: bool = False, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        params = {"dryRun": "All"} if dry_run else None
        data = None if body is None else json.dumps(body)
        async with self._session.request(
            method,
            self.config.server + path,
            data=data,
            params=params,
            ssl=self._ssl,
            headers={"Content-Type": content_type},
        ) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else {})

    async def create(
        self, obj: dict[str, Any], *, dry_run: bool = False, namespace: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        ns = namespace or obj.get("metadata", {}).get("namespace")
        return await self.request("POST", self.path(obj["kind"], ns), obj, dry_run=dry_run)


@pytest.fixture(scope="session")
def control_plane() -> ControlPlane:
    bin_dir, missing = find_bin_dir()
    if missing:
        message = missing_binaries_message(bin_dir, missing)
        if _require():
            pytest.fail(message + " ($CI/$REQUIRE_E2E is set, so this is a failure, not a skip)")
        pytest.skip(message + " (skipped because neither $CI nor $REQUIRE_E2E is set)")
    return shared_control_plane(bin_dir)


@pytest.fixture
async def raw_api(control_plane: ControlPlane) -> AsyncIterator[RawApi]:
    api = RawApi(KubeConfig.from_file(control_plane.kubeconfig))
    yield api
    await api.close()


@pytest.fixture
async def e2e_namespace(raw_api: RawApi) -> AsyncIterator[str]:
    name = f"xp-{uuid.uuid4().hex[:10]}"
    status, body = await raw_api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert status == 201, body
    yield name
    await raw_api.request("DELETE", raw_api.path("Namespace", name=name))
