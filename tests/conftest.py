"""Fixtures for tests against a real kube-apiserver + etcd (marker ``e2e_apiserver``).

The control plane is started once per test session, only when a test asks for it (``tests/kube``,
``tests/e2e``), on loopback with free ports. Missing binaries FAIL the tests when ``$CI`` or
``$REQUIRE_E2E`` is set; on a developer machine without them the tests are skipped with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from xpupool.kube.testing import ControlPlane, control_plane_for_tests, tests_must_not_skip
from xpupool.kube.transport import NAMESPACES, AiohttpTransport, KubeConfig


@pytest.fixture(scope="session")
def control_plane() -> ControlPlane:
    cp, why = control_plane_for_tests()
    if cp is None:
        if tests_must_not_skip():
            pytest.fail(why + " ($CI/$REQUIRE_E2E is set, so this is a failure, not a skip)")
        pytest.skip(why + " (skipped because neither $CI nor $REQUIRE_E2E is set)")
    return cp


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
    """A fresh namespace per test (left behind: no namespace controller runs to finalise it)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    await transport.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
