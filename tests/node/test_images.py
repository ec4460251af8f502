"""The images built without a Docker engine (deploy/image) and what runs from them on the node.

* The shim the xpupool image ships loads in common CUDA images: its glibc symbol-version needs
  stay at or below the stated floor (GLIBC_FLOOR, docs/operator-guide.md) and it needs nothing
  beyond libc/libdl/libpthread. The same holds for the remote-vXPU client libraries (they also go
  into customers' CUDA containers): OpenSSL is linked in, and none of its symbols is exported.
* The TEST-DOUBLE workload image runs on the real node and its probe reports, as one JSON line,
  the pod identity the downward API passed and what the fake driver/NVML answer.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import tempfile

import pytest

from xpupool.kube import testing_images, testing_oci
from xpupool.kube.testing_node import NodeCluster
from xpupool.kube.transport import PODS, AiohttpTransport

from .pods import pod_log, wait_pod

pytestmark = pytest.mark.e2e_node

#: Oldest glibc the shim supports: UBI 8 / RHEL 8 (2.28); Ubuntu 20.04 has 2.31, Debian 10 2.28.
GLIBC_FLOOR = (2, 28)
SHIM_PATH = "/opt/xpupool/lib/libxpushim.so"
ALLOWED_NEEDED = {"libc.so.6", "libdl.so.2", "libpthread.so.0", "ld-linux-x86-64.so.2"}


def _dynamic_needs(library: bytes) -> tuple[set[tuple[int, ...]], set[str]]:
    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(library)
        f.flush()
        versions = subprocess.run(["readelf", "-V", "--wide", f.name], capture_output=True, text=True, check=True)
        dynamic = subprocess.run(["readelf", "-d", "--wide", f.name], capture_output=True, text=True, check=True)
    glibc = {tuple(int(x) for x in v.split(".")) for v in re.findall(r"Name: GLIBC_([0-9.]+)", versions.stdout)}
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic.stdout))
    return glibc, needed


def test_shim_in_image_needs_at_most_the_glibc_floor(xpupool_image_archive: testing_images.BuiltImage) -> None:
    shim = testing_oci.read_file(xpupool_image_archive.archive, SHIM_PATH)
    assert shim[:4] == b"\x7fELF"
    glibc, needed = _dynamic_needs(shim)
    assert glibc, "no GLIBC version needs found: not a glibc-linked library?"
    assert max(glibc) <= GLIBC_FLOOR, f"shim needs GLIBC_{'.'.join(map(str, max(glibc)))} > floor {GLIBC_FLOOR}"
    assert needed <= ALLOWED_NEEDED, needed


#: The remote-vXPU client (copied to CPU-only nodes and mounted into containers placed remote) and
#: what each may need from the container: nothing beyond glibc, and NVML only the client libcuda.
REMOTE_CLIENT = {
    "/opt/xpupool/lib/remote/libcuda.so.1": ("cu", ALLOWED_NEEDED),
    "/opt/xpupool/lib/remote/libnvidia-ml.so.1": ("nvml", ALLOWED_NEEDED | {"libcuda.so.1"}),
}


@pytest.mark.parametrize("path", sorted(REMOTE_CLIENT))
def test_remote_client_in_image_needs_at_most_the_glibc_floor(
    xpupool_image_archive: testing_images.BuiltImage, path: str
) -> None:
    library = testing_oci.read_file(xpupool_image_archive.archive, path)
    assert library[:4] == b"\x7fELF"
    glibc, needed = _dynamic_needs(library)
    prefix, allowed = REMOTE_CLIENT[path]
    assert glibc and max(glibc) <= GLIBC_FLOOR, f"{path} needs GLIBC_{'.'.join(map(str, max(glibc)))}"
    assert needed <= allowed, needed  # no libssl/libcrypto from the container: linked in
    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(library)
        f.flush()
        nm = subprocess.run(["nm", "-D", "--defined-only", f.name], capture_output=True, text=True, check=True)
    exported = [line.split()[-1] for line in nm.stdout.splitlines() if line.strip()]
    assert exported and all(name.startswith(prefix) for name in exported), [
        n for n in exported if not n.startswith(prefix)][:10]


def test_image_ships_the_remote_daemon_where_the_cli_finds_it(
    xpupool_image_archive: testing_images.BuiltImage,
) -> None:
    """`xpupool remote daemon` runs $XPUPOOL_NATIVE_DIR/remote/xpu-remoted (the image sets the dir)."""
    daemon = testing_oci.read_file(xpupool_image_archive.archive, "/opt/xpupool/lib/remote/xpu-remoted")
    assert daemon[:4] == b"\x7fELF"
    containerfile = (testing_images.REPO_ROOT / "deploy" / "image" / "Containerfile").read_text()
    assert "XPUPOOL_NATIVE_DIR=/opt/xpupool/lib " in containerfile


def test_image_is_tagged_as_the_chart_references(xpupool_image_archive: testing_images.BuiltImage) -> None:
    assert xpupool_image_archive.name == testing_images.chart_image_reference()
    with tarfile.open(xpupool_image_archive.archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())
    names = {m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]}
    assert xpupool_image_archive.name in names or xpupool_image_archive.name.rsplit(":", 1)[1] in names


async def test_workload_probe_reports_its_pod_and_the_test_double_driver(
    node_cluster: NodeCluster, node_transport: AiohttpTransport, node_namespace: str, workload_image: str
) -> None:
    downward = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
    ]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {
            "nodeName": node_cluster.node_name,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": workload_image,
                    "imagePullPolicy": "Never",
                    "command": ["xpu-probe", "--fill-chunk-mib", "4096"],
                    "env": downward,
                }
            ],
        },
    }
    created = await node_transport.create(PODS, pod, namespace=node_namespace)
    done = await wait_pod(node_transport, node_namespace, "probe", ("Succeeded", "Failed"))
    log = pod_log(node_cluster, node_namespace, "probe")
    assert done["status"]["phase"] == "Succeeded", (done["status"], log)
    report = json.loads(log.strip().splitlines()[-1])
    assert report["pod"] == {"name": "probe", "namespace": node_namespace, "uid": created["metadata"]["uid"]}
    assert report["env"]["LD_LIBRARY_PATH"] == "/opt/xpupool-testdoubles/lib"
    cuda, nvml = report["cuda"], report["nvml"]
    assert cuda["init"] == 0 and cuda["device_count"] == 2
    # Without the shim the test double's own budget is all there is: filling stops at OOM (2).
    assert cuda["fill"]["stop_result"] == 2 and cuda["fill"]["chunks"] >= 1
    assert nvml["loaded"] and nvml["device_count"] == 2
    assert {d["uuid"] for d in nvml["devices"]} == {d["uuid"] for d in cuda["devices"]}
