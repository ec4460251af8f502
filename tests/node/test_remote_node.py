"""A remote vXPU on the real node: a pod on a CPU-only node runs its CUDA work on a card elsewhere.

The real node (kubelet + containerd + runc) is the CPU-only node: the chart is installed with
``remote.enabled`` and the emulated backend holding NO card, so its agent (a DaemonSet pod from the
built image) advertises only ``remote::<n>`` slots, and its init container copies the image's
remoting client to the host. The "GPU node" is a Node object on the node's apiserver (no kubelet
behind it; the test keeps its lease fresh) whose inventory annotation lists one card of the fake
``libcuda`` TEST DOUBLE; its side of the product runs in this test on the host, as the GPU node's
agent would run it: ``xpu-remoted`` (workers with ``libxpushim``, backend = the test double, device
memory = host memory) listening on the host address the pods reach, and the agent's remote role
(:class:`xpupool.remote.agent_role.RemoteRole`: endpoints + CA published on the Node, the HTTPS
token endpoint, grants, revocation of gone pods every second).

The path checked: webhook -> xpupool scheduler places the pod remote (allocation: pod on the CPU
node, card on the GPU node) -> the kubelet admits it on a remote slot -> PreStartContainer: the
agent gets a session token from the GPU side (its bound service-account token reviewed by the
apiserver) and wires client library, endpoint, token and CA through CDI -> ``xpu-probe`` in the
TEST-DOUBLE workload image talks authenticated TLS to the daemon: one device whose memory is the
slice's quota, 64 MiB host->device->host with the bytes compared, allocations refused with
OUT_OF_MEMORY at the quota; processes with a wrong or no token get a clear error at once. Deleting
the pod revokes the grant: the session ends and the slice's region is removed. Before the GPU side
serves tokens, a remote pod is not started: the kubelet reports the agent's reason (token endpoint
unreachable) in the container's waiting state, and nothing is granted.

CPU-tested only: nothing here touches a GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.kubeapi import KubeApi
from xpupool.agent.regions import ShimRegionWriter
from xpupool.core.model import Vendor
from xpupool.kube.objects import ANN_ALLOCATION
from xpupool.kube.testing import fake_node, free_port
from xpupool.kube.testing_images import BuiltImage
from xpupool.kube.testing_node import NodeCluster
from xpupool.kube.testing_node_host import HOST_IP
from xpupool.kube.testing_oci import read_file
from xpupool.kube.transport import NODES, PODS, AiohttpTransport, Resource
from xpupool.remote.agent_role import RemoteRole, RemoteSettings
from xpupool.remote.served import ANN_REMOTE
from xpupool.remote.testing import FAKE_CARD_UUID, LocalRig, build_native, local_rig

from .pods import pod_log, vxpu_pod, wait_pod
from .test_helm_node import CHART, eventually, helm, node_values

pytestmark = pytest.mark.e2e_node

RELEASE = "xpr"
NAMESPACE = "xpupool-remote"
LEASES = Resource("coordination.k8s.io", "v1", "leases", True, "Lease")
#: The test double's device 0 (native/testdoubles): 16 GiB of host-backed "device" memory.
CARD_MIB = 16384
SLICE_MIB = 2048
#: What libxpushim charges per process on NVIDIA cards before any allocation (core/memory_reserve).
RESERVE_MIB = 512
REMOTE_SLOTS = 4
MIB = 1024 * 1024
#: No taint the chart's Deployments tolerate: nothing but remote vXPU placement lands on the fake node.
FAKE_NODE_TAINT = {"key": "xpupool.io/test-no-kubelet", "value": "true", "effect": "NoSchedule"}

# stderr joins stdout in each step: the pod log interleaves the two streams in no fixed order
PROBE_SCRIPT = """
run() { s=$(date +%s%N); "$@" 2>&1; rc=$?; e=$(date +%s%N); echo "== rc=$rc ms=$(( (e - s) / 1000000 ))"; }
echo "== case no-token"
run env -u XPUPOOL_REMOTE_TOKEN_FILE timeout 30 xpu-probe
echo "== case wrong-token"
echo xpr1.bm9wZQ.AAAA > /tmp/wrong-token
run env XPUPOOL_REMOTE_TOKEN_FILE=/tmp/wrong-token timeout 30 xpu-probe
echo "== case session"
exec xpu-probe --copy-mib 64 --alloc-mib 1024 --fill-chunk-mib 128 --hold-s 600 2>&1
"""


@pytest.fixture(scope="module")
def remoting_build() -> None:
    """The host-side daemon, libxpushim and the test double (make is incremental)."""
    build_native()


class GpuNode:
    """The fake GPU node: its Node object, its daemon, and (:meth:`role`) its agent's remote role."""

    def __init__(self, name: str, rig: LocalRig, api: KubeApi, root: Path) -> None:
        self.name, self.rig, self.api, self.root = name, rig, api, root

    def role(self, *, agents: list[str]) -> RemoteRole:
        """The GPU node's agent side as the agent builds it from ``XPUPOOL_REMOTE_*`` (``agents``:
        the service accounts of the agents it issues tokens to)."""
        settings = RemoteSettings(daemon_state=str(self.rig.state.root), advertise_host=HOST_IP,
                                  daemon_port=int(self.rig.daemon.endpoint.rsplit(":", 1)[1]),
                                  issuer_port=free_port(), agents=agents)
        cards = {0: DeviceInfo(uuid=FAKE_CARD_UUID, index=0, vendor=Vendor.NVIDIA, model="TESTDOUBLE-16G",
                               memory_mib=CARD_MIB)}
        # the daemon's workers run on this host: the card directories' container path is the host's
        writer = ShimRegionWriter(region_root=self.root / "regions", card_host_dir=self.root / "cards",
                                  card_container_dir=str(self.root / "cards"))
        return RemoteRole(settings, node=self.name, nodes=self.api, pods=self.api, reviewer=self.api,
                          cards=lambda: cards, region_root=self.root / "regions", region_writer=writer)


def _gpu_node_object(name: str) -> dict[str, Any]:
    node = fake_node(name, cards=1, card_memory_mib=CARD_MIB, model="TESTDOUBLE-16G", cpu="8", memory="32Gi")
    inventory = json.loads(node["metadata"]["annotations"]["xpupool.io/inventory"])
    inventory["devices"][0]["uuid"] = FAKE_CARD_UUID  # the card xpu-remoted serves
    node["metadata"]["annotations"]["xpupool.io/inventory"] = json.dumps(inventory)
    node["spec"] = {"taints": [FAKE_NODE_TAINT]}
    return node


async def _heartbeat(transport: AiohttpTransport, node: str) -> None:
    """Renew the fake node's lease, as a kubelet would: the node lifecycle controller keeps it Ready."""
    meta: dict[str, str] = {"name": node, "namespace": "kube-node-lease"}
    spec: dict[str, Any] = {"holderIdentity": node, "leaseDurationSeconds": 40}
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
    while True:
        spec["renewTime"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        try:
            current = await transport.get(LEASES, node, namespace="kube-node-lease")
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            await transport.replace(LEASES, node, lease, namespace="kube-node-lease")
        except Exception:  # absent (first beat) or a conflict: create / next beat
            meta.pop("resourceVersion", None)
            with contextlib.suppress(Exception):
                await transport.create(LEASES, lease, namespace="kube-node-lease")
        await asyncio.sleep(5)


@contextlib.contextmanager
def _daemon(root: Path, node: str) -> Iterator[LocalRig]:
    """xpu-remoted on the host address pods reach, serving the test double's device 0."""
    with local_rig(root, listen=f"{HOST_IP}:0", hosts=(HOST_IP,), node=node) as rig:
        yield rig


@pytest.fixture
async def gpu_node(node_cluster: NodeCluster, node_transport: AiohttpTransport, remoting_build: None,
                   tmp_path: Path) -> AsyncIterator[GpuNode]:
    name = f"gpu-{uuid.uuid4().hex[:6]}"
    await node_transport.create(NODES, _gpu_node_object(name))
    beat = asyncio.create_task(_heartbeat(node_transport, name))
    cp = node_cluster.control_plane
    api = KubeApi(cp.server, token=cp.token, ca_path=cp.ca_file)
    try:
        with _daemon(tmp_path / "remoted", name) as rig:
            yield GpuNode(name, rig, api, tmp_path)
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        await api.close()
        with contextlib.suppress(Exception):
            await node_transport.delete(LEASES, name, namespace="kube-node-lease")
        with contextlib.suppress(Exception):
            await node_transport.delete(NODES, name)


async def _upkeep(role: RemoteRole) -> None:
    """The GPU node's agent tick (publish, revoke grants of gone pods), every second."""
    while True:
        await role.tick()
        await asyncio.sleep(1.0)


def _sections(log: str) -> dict[str, tuple[dict[str, Any] | None, str, dict[str, int]]]:
    """Per ``== case`` block of the probe script: (the probe's JSON, other lines, rc/ms)."""
    out: dict[str, tuple[dict[str, Any] | None, str, dict[str, int]]] = {}
    case, report = "", None
    other: list[str] = []
    tail: dict[str, int] = {}
    for line in [*log.splitlines(), "== case end"]:
        if line.startswith("== case "):
            if case:
                out[case] = (report, "\n".join(other), tail)
            case, report, other, tail = line.split()[2], None, [], {}
        elif line.startswith("== rc="):
            tail = {k: int(v) for k, v in (kv.split("=") for kv in line[3:].split())}
        elif line.startswith('{"probe"'):
            report = json.loads(line)
        else:
            other.append(line)
    return out


def _remote_pod(name: str, image: str, command: list[str]) -> dict[str, Any]:
    """A pod asking for one remote vXPU (2 GiB, 50 %), running ``command`` in the workload image;
    created for the default scheduler, so the webhook must hand it to xpupool's."""
    pod = vxpu_pod(name, image, core_pct=50, memory_mib=SLICE_MIB, command=command, downward_env=True)
    pod["metadata"]["annotations"] = {"xpupool.io/remote": "required"}
    pod["spec"]["schedulerName"] = "default-scheduler"
    return pod


def _sessions_cli(gpu_node: GpuNode) -> str:
    """``xpupool remote sessions``: what an operator on the GPU node sees."""
    cli = Path(sys.executable).parent / "xpupool"
    return subprocess.run([str(cli), "remote", "sessions", "--state-dir", str(gpu_node.rig.state.root)],
                          capture_output=True, text=True, timeout=30, check=True).stdout


async def test_remote_vxpu_pod_on_the_cpu_only_real_node(
    node_cluster: NodeCluster,
    node_transport: AiohttpTransport,
    node_namespace: str,
    xpupool_image: str,
    xpupool_image_archive: BuiltImage,
    workload_image: str,
    gpu_node: GpuNode,
) -> None:
    host_root = node_cluster.host_root / "xpr-var-lib-xpupool"
    values = [
        "--set=agent.backends={emulated}",
        "--set-json=agent.emulated.cards=[]",  # a CPU-only node: no card at all
        f"--set-json=agent.nodeSelector={json.dumps({'kubernetes.io/hostname': node_cluster.node_name})}",
        *node_values(node_cluster, host_root),
        "--set=agent.intervalSeconds=1",
        "--set=remote.enabled=true",
        "--set=remote.server.enabled=false",  # this node serves no card: client side only
        f"--set=remote.slots={REMOTE_SLOTS}",
    ]
    upkeep: asyncio.Task[None] | None = None
    runner = None
    t_install = time.monotonic()
    helm(node_cluster, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", *values,
         "--wait", "--timeout=5m")
    try:
        async def agent_pod() -> dict[str, Any] | None:
            pods = await node_transport.list(PODS, namespace=NAMESPACE,
                                             label_selector="app.kubernetes.io/component=agent")
            ready = [p for p in pods.items if any(c.get("type") == "Ready" and c.get("status") == "True"
                                                  for c in p.get("status", {}).get("conditions", []))]
            return ready[0] if len(ready) == 1 else None

        agent = await eventually(agent_pod, "the CPU-only node's agent is ready")
        assert agent["spec"]["nodeName"] == node_cluster.node_name
        install_s = time.monotonic() - t_install

        # The init container installed the image's client libraries on the host.
        for lib in ("libcuda.so.1", "libnvidia-ml.so.1"):
            installed = (host_root / "remote-client" / lib).read_bytes()
            assert installed == read_file(xpupool_image_archive.archive, f"/opt/xpupool/lib/remote/{lib}")

        # The kubelet admits remote pods here: only remote slots, no card.
        async def remote_slots() -> bool:
            node = await node_transport.get(NODES, node_cluster.node_name)
            inventory = json.loads(node["metadata"].get("annotations", {}).get("xpupool.io/inventory", "{}"))
            allocatable = node["status"].get("allocatable", {}).get("xpupool.io/vxpu")
            return allocatable == str(REMOTE_SLOTS) and inventory.get("devices") == [] and bool(
                inventory.get("serving"))

        await eventually(remote_slots, f"the CPU-only node advertises {REMOTE_SLOTS} remote slots and serves them")

        # The GPU node's side: trust the chart's agent account, publish its endpoints.
        account = f"system:serviceaccount:{NAMESPACE}:{agent['spec']['serviceAccountName']}"
        role = gpu_node.role(agents=[account])
        assert role.server is not None
        await role.tick()
        published = await node_transport.get(NODES, gpu_node.name)
        assert json.loads(published["metadata"]["annotations"][ANN_REMOTE])["endpoint"] == role.server.endpoint

        # ---- the token endpoint does not answer yet: the container is refused, with the reason --
        unserved = _remote_pod("remote-unserved", workload_image, ["xpu-probe"])
        await node_transport.create(PODS, unserved, namespace=node_namespace)

        async def refused() -> str | None:
            live = await node_transport.get(PODS, "remote-unserved", namespace=node_namespace)
            for status in live.get("status", {}).get("containerStatuses") or []:
                message = str(((status.get("state") or {}).get("waiting") or {}).get("message", ""))
                if "unreachable" in message:
                    return message
            return None

        t_unserved = time.monotonic()
        message = await eventually(refused, "the kubelet reports why the remote container cannot start",
                                   timeout_s=120)
        unserved_s = time.monotonic() - t_unserved
        assert gpu_node.name in message and role.issuer_url in message, message
        assert gpu_node.rig.control.grants() == [] and gpu_node.rig.control.sessions() == []
        await node_transport.delete(PODS, "remote-unserved", namespace=node_namespace, grace_period_s=0)

        # ---- the token endpoint serves: a pod asking for a remote vXPU runs ------------------
        runner = await role.start_issuer(HOST_IP)
        upkeep = asyncio.create_task(_upkeep(role))
        pod = _remote_pod("remote-probe", workload_image, ["/bin/sh", "-c", PROBE_SCRIPT])
        t_pod = time.monotonic()
        created = await node_transport.create(PODS, pod, namespace=node_namespace)
        assert created["spec"]["schedulerName"] == "xpupool", "the webhook did not mutate the pod"
        running = await wait_pod(node_transport, node_namespace, "remote-probe", ("Running", "Failed", "Succeeded"),
                                 timeout_s=180)
        assert running["status"]["phase"] == "Running", running["status"]
        uid = running["metadata"]["uid"]
        allocation = json.loads(running["metadata"]["annotations"][ANN_ALLOCATION])
        assert running["spec"]["nodeName"] == node_cluster.node_name
        assert allocation["node"] == node_cluster.node_name and allocation["deviceNode"] == gpu_node.name, allocation

        async def probe_done() -> str | None:
            log = pod_log(node_cluster, node_namespace, "remote-probe")
            return log if '"copy"' in log.split("== case session")[-1] else None

        log = await eventually(probe_done, "the session's probe reported", timeout_s=120)
        pod_to_report_s = time.monotonic() - t_pod
        sections = _sections(log)

        # No token / a wrong one: a clear error at once, never a hang, nothing reached the card.
        for case in ("no-token", "wrong-token"):
            report, other, tail = sections[case]
            assert report is not None, (case, log)
            assert report["cuda"]["init"] != 0, (case, report["cuda"])
            assert tail["rc"] == 0 and tail["ms"] < 10_000, (case, tail)  # the probe itself ran to its end
            assert ("no session token" if case == "no-token" else "refused") in other, (case, other)
        assert gpu_node.rig.metric("xpupool_remote_session_errors_total", reason="refused_auth") == 1

        # The session: one device, the slice's memory, data verified, OOM at the quota.
        report, _, _ = sections["session"]
        assert report is not None, log
        env, cuda, nvml = report["env"], report["cuda"], report["nvml"]
        assert report["pod"]["uid"] == uid
        assert env["XPUPOOL_REMOTE_ENDPOINT"] == role.server.endpoint
        assert env["XPUPOOL_REMOTE_SERVER_NAME"] == gpu_node.name
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
        assert "/remote/libcuda.so.1" in env["LD_PRELOAD"]
        assert cuda["init"] == 0 and cuda["device_count"] == 1, cuda
        (device,) = cuda["devices"]
        assert device["uuid"] == FAKE_CARD_UUID
        assert device["total_mem_bytes"] == SLICE_MIB * MIB, device
        assert cuda["mem_get_info"]["total_bytes"] == SLICE_MIB * MIB, cuda["mem_get_info"]
        assert cuda["copy"] == {"mib": 64, "alloc_result": 0, "h2d_result": 0, "d2h_result": 0,
                                "mismatched_bytes": 0}, cuda["copy"]
        assert cuda["alloc"] == {"mib": 1024, "result": 0}
        fill = cuda["fill"]
        assert fill["stop_result"] == 2, fill  # CUDA_ERROR_OUT_OF_MEMORY from libxpushim in the worker
        held_mib = 1024 + fill["allocated_mib"]  # refused at the quota, less the per-process reserve
        assert SLICE_MIB - RESERVE_MIB - 128 < held_mib <= SLICE_MIB, fill
        assert nvml["device_count"] == 1 and nvml["devices"][0]["memory_total_bytes"] == SLICE_MIB * MIB, nvml

        # The daemon holds this pod's session on its slice.
        (session,) = gpu_node.rig.control.sessions()
        assert (session.alloc, session.tenant, session.card) == (uid, f"{node_namespace}/remote-probe",
                                                                FAKE_CARD_UUID)
        assert held_mib * MIB <= session.gpu_mem_bytes <= SLICE_MIB * MIB, session
        (grant,) = gpu_node.rig.control.grants()
        region = Path(grant.region)
        assert grant.alloc == uid and region.exists()
        assert gpu_node.rig.metric("xpupool_remote_api_calls_total", api="cuMemcpyHtoD_v2") >= 1
        assert gpu_node.rig.metric("xpupool_remote_sessions", state="active") == 1
        assert uid[:20] in _sessions_cli(gpu_node)

        # ---- deleting the pod ends the session and frees the slice --------------------------
        t_delete = time.monotonic()
        await node_transport.delete(PODS, "remote-probe", namespace=node_namespace)

        async def freed() -> bool:
            return not gpu_node.rig.control.sessions() and not gpu_node.rig.control.grants() and not region.exists()

        await eventually(freed, "the session ended, the grant was revoked and the slice's region removed",
                         timeout_s=60)
        delete_to_free_s = time.monotonic() - t_delete
        assert gpu_node.rig.metric("xpupool_remote_sessions", state="active") == 0
        assert _sessions_cli(gpu_node).strip().splitlines()[1:] == []  # the header only
        assert gpu_node.rig.metric("xpupool_remote_session_errors_total", reason="worker_crashed") == 0
        print(f"remote vXPU on the real node: helm install + agent ready {install_s:.1f} s, unserved pod -> "
              f"kubelet reports the reason {unserved_s:.1f} s, no/wrong token -> error "
              f"{sections['no-token'][2]['ms']}/{sections['wrong-token'][2]['ms']} ms, pod create -> probe report "
              f"{pod_to_report_s:.1f} s, pod delete -> session ended + slice freed {delete_to_free_s:.1f} s")
    finally:
        if upkeep is not None:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
        if runner is not None:
            await runner.cleanup()
        for name in ("remote-unserved", "remote-probe"):
            with contextlib.suppress(Exception):
                await node_transport.delete(PODS, name, namespace=node_namespace, grace_period_s=0)
        helm(node_cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout=3m")
