"""Fixtures for tests on the real node (marker ``e2e_node``): kubelet + containerd + runc.

``node_cluster`` starts ONE :class:`xpupool.kube.testing_node.NodeCluster` for the whole session
(its own etcd/apiserver/controller-manager/scheduler, a node in a network namespace) on first use
and stops it at the end, then checks that nothing was left on the machine. Needs root and the
binaries of ``make node``; when they are missing the tests FAIL under ``$CI``/``$REQUIRE_E2E`` and
are skipped (with the reason) otherwise.

How a test gets a pod onto the node: create it in ``node_namespace`` with
``spec.nodeName = node_cluster.node_name`` (or let a scheduler place it: kube-scheduler runs),
with an image imported into the node (``node_cluster.import_image(archive)``, or the
``busybox_image`` fixture) and ``imagePullPolicy: IfNotPresent``/``Never``: no registry is
reachable.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from xpupool.kube import testing_images
from xpupool.kube.testing import tests_must_not_skip
from xpupool.kube.testing_node import NodeCluster, leftovers, node_prerequisites
from xpupool.kube.transport import NAMESPACES, AiohttpTransport, KubeConfig


def _cannot_run(why: str) -> None:
    if tests_must_not_skip():
        pytest.fail(why + " ($CI/$REQUIRE_E2E is set, so this is a failure, not a skip)")
    pytest.skip(why + " (skipped because neither $CI nor $REQUIRE_E2E is set)")


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    kube_dir, node_dir, missing = node_prerequisites()
    if missing:
        _cannot_run("the real test node cannot start here; missing: " + "; ".join(missing))
    node = NodeCluster.start(kube_dir, node_dir)
    yield node
    node.stop()
    left = [] if node.kept_for_debugging else leftovers(node.root, node.host_snapshot.absent_paths)
    assert not left, f"the test node left things behind: {left}"


@pytest.fixture(scope="session")
def node_kubeconfig(node_cluster: NodeCluster) -> KubeConfig:
    return KubeConfig.from_file(node_cluster.control_plane.kubeconfig)


@pytest.fixture
async def node_transport(node_kubeconfig: KubeConfig) -> AsyncIterator[AiohttpTransport]:
    transport = AiohttpTransport(node_kubeconfig)
    yield transport
    await transport.close()


@pytest.fixture
async def node_namespace(node_cluster: NodeCluster, node_transport: AiohttpTransport) -> AsyncIterator[str]:
    """A fresh namespace, ready for pods (its ``default`` ServiceAccount exists); deleted after
    the test (the namespace controller runs, so its pods really go)."""
    name = f"n-{uuid.uuid4().hex[:10]}"
    await node_transport.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    node_cluster.wait_namespace_ready(name)
    yield name
    await node_transport.delete(NAMESPACES, name)


@pytest.fixture(scope="session")
def busybox_image(node_cluster: NodeCluster) -> str:
    """Name of a static-busybox image (``sh``, ``cat``, ``nc``...) imported into the node."""
    return node_cluster.import_busybox_image()


def _built_image(which: str) -> testing_images.BuiltImage:
    """The image's OCI archive (``make image`` builds it; built here, minutes, if it is stale)."""
    try:
        return testing_images.ensure_image(which)
    except (RuntimeError, OSError) as err:
        _cannot_run(f"cannot build the {which} image: {err}")
        raise


@pytest.fixture(scope="session")
def xpupool_image_archive() -> testing_images.BuiltImage:
    """deploy/image/Containerfile, built daemonless and tagged as the chart's default image."""
    return _built_image("xpupool")


@pytest.fixture(scope="session")
def xpupool_image(node_cluster: NodeCluster, xpupool_image_archive: testing_images.BuiltImage) -> str:
    """The xpupool image imported into the node; returns its name (the chart's default)."""
    node_cluster.import_image(xpupool_image_archive.archive)
    return xpupool_image_archive.name


@pytest.fixture(scope="session")
def workload_image(node_cluster: NodeCluster) -> str:
    """The TEST-DOUBLE workload image (xpu-probe + fake libcuda/libnvidia-ml) imported into the
    node; returns its name."""
    built = _built_image("workload")
    node_cluster.import_image(built.archive)
    return built.name
