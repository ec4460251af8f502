"""Fixtures for tests against a real kube-apiserver + etcd (marker ``e2e_apiserver``).

The control plane is started once per test session (shared with ``tests/e2e``) on loopback
with free ports. Missing binaries FAIL the tests when ``$CI`` or ``$REQUIRE_E2E`` is set; on a
developer machine without them the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from xpupool.kube.testing import ControlPlane, find_bin_dir, missing_binaries_message, shared_control_plane
from xpupool.kube.transport import NAMESPACES, AiohttpTransport, KubeConfig


def _require() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("REQUIRE_E2E"))


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
def kubeconfig(control_plane: ControlPlane) -> KubeConfig:
    return KubeConfig.from_file(control_plane.kubeconfig)


@pytest.fixture
async def transport(kubeconfig: KubeConfig) -> AsyncIterator[AiohttpTransport]:
    t = AiohttpTransport(kubeconfig)
    yield t
    await t.close()


@pytest.fixture
async def namespace(transport: AiohttpTransport) -> AsyncIterator[str]:
    """A fresh namespace per test (deleted afterwards; nothing finalises it, which is fine)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    await transport.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
