"""Remote vXPUs wired by the node agents, against the real kube-apiserver + etcd (and the daemon on
the fake libcuda TEST DOUBLE; no kubelet: the CPU node's PreStart step is called directly).

A pod bound to a CPU-only node with an allocation whose card is on a GPU node: the CPU node's agent
asks the GPU node's agent for a session token (authenticated by a real bound service-account token
the apiserver reviews), the GPU node's agent grants the slice to its daemon (shim region written by
the same writer as local containers) and mints the token, the container's wiring carries the
client, endpoint, token and CA; the client program then runs on the slice. Deleting the pod ends
the session and frees the slice."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from xpupool.agent.allocation import container_slice
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.kubeapi import KubeApi
from xpupool.agent.regions import ShimRegionWriter
from xpupool.core.model import Allocation, Vendor
from xpupool.kube.objects import ANN_ALLOCATION, encode_allocation
from xpupool.kube.testing import ControlPlane, fake_node
from xpupool.kube.transport import NODES, PODS, AiohttpTransport, Resource
from xpupool.remote import daemon as d
from xpupool.remote.agent_role import RemoteRole, RemoteSettings
from xpupool.remote.client_wiring import RemoteClientWiring, RemotePaths
from xpupool.remote.served import REMOTE_AUDIENCE, RemoteServer
from xpupool.remote.testing import FAKE_CARD_UUID, LocalRig, local_rig

pytestmark = [pytest.mark.e2e_apiserver, pytest.mark.native]
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", True, "ServiceAccount")
MIB = 1024 * 1024


async def _pod(transport: AiohttpTransport, ns: str, name: str, node: str, *, sa: str = "default",
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "x"}
    if annotations:  # a workload: it asks for one vXPU
        container["resources"] = {"limits": {"xpupool.io/vxpu": "1"}}
    return await transport.create(PODS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [container]},
    })


async def _agent_token(transport: AiohttpTransport, ns: str, sa: str, pod: dict[str, Any], audience: str) -> str:
    """A bound service-account token, as the projected volume of an agent pod on that node holds."""
    answer = await transport._request(
        "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
              "spec": {"audiences": [audience], "expirationSeconds": 3600,
                       "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"],
                                          "uid": pod["metadata"]["uid"]}}})
    return str(answer["status"]["token"])


class Cluster:
    def __init__(self, rig: LocalRig, api: KubeApi, ns: str, gpu: str, cpu: str, root: Path) -> None:
        self.rig, self.api, self.ns, self.gpu, self.cpu, self.root = rig, api, ns, gpu, cpu, root


@pytest.fixture
async def cluster(control_plane: ControlPlane, transport: AiohttpTransport, namespace: str, native_build: Path,
                  tmp_path: Path) -> AsyncIterator[Cluster]:
    tag = uuid.uuid4().hex[:6]
    gpu, cpu = f"gpu-{tag}", f"cpu-{tag}"
    await transport.create(NODES, fake_node(gpu, cards=1))
    await transport.create(NODES, fake_node(cpu, cards=0))
    await transport.create(SERVICE_ACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                              "metadata": {"name": "xpupool-agent", "namespace": namespace}})
    api = KubeApi(control_plane.server, token=control_plane.token, ca_path=control_plane.ca_file)
    with local_rig(tmp_path / "state", node=gpu) as rig:
        yield Cluster(rig, api, namespace, gpu, cpu, tmp_path)
    await api.close()


def _server(c: Cluster, *, agents: frozenset[str]) -> RemoteServer:
    cards = {0: DeviceInfo(uuid=FAKE_CARD_UUID, index=0, vendor=Vendor.NVIDIA, model="fake", memory_mib=16384)}
    writer = ShimRegionWriter(region_root=c.root / "regions", card_host_dir=c.root / "cards",
                              card_container_dir=str(c.root / "cards"))  # the daemon runs on the host here
    return RemoteServer(node=c.gpu, control=c.rig.control, state=c.rig.state, pods=c.api, reviewer=c.api,
                        cards=lambda: cards, region_root=c.root / "regions", region_writer=writer, agents=agents,
                        endpoint=c.rig.daemon.endpoint)


def _host_env(wiring_envs: dict[str, str], paths: RemotePaths, files_host_dir: str) -> dict[str, str]:
    """The container's environment with container paths mapped back to host paths (no container here)."""
    env = dict(os.environ)
    for k, v in wiring_envs.items():
        env[k] = v.replace(paths.client_container_dir, paths.client_host_dir).replace(
            paths.files_container_dir, files_host_dir)
    return env


async def test_remote_pod_gets_a_session_and_loses_it_when_deleted(cluster: Cluster,
                                                                   transport: AiohttpTransport) -> None:
    c = cluster
    agent_pod = await _pod(transport, c.ns, "agent-cpu", c.cpu, sa="xpupool-agent")
    token_file = c.root / "sa-token"
    token_file.write_text(await _agent_token(transport, c.ns, "xpupool-agent", agent_pod, REMOTE_AUDIENCE))
    alloc = Allocation(pod=f"{c.ns}/work", node=c.cpu, device_node=c.gpu, cards=(0,), share_milli=500,
                       device_memory_mib=(2048,), remote_mbps=1000)
    pod = await _pod(transport, c.ns, "work", c.cpu, annotations={ANN_ALLOCATION: encode_allocation(alloc)})

    # the GPU node's agent: publish, serve tokens (HTTPS with the daemon's certificate)
    settings = RemoteSettings(daemon_state=str(c.rig.state.root), advertise_host="127.0.0.1",
                              daemon_port=int(c.rig.daemon.endpoint.rsplit(":", 1)[1]), issuer_port=_free_port(),
                              agents=[f"system:serviceaccount:{c.ns}:xpupool-agent"])
    role = RemoteRole(settings, node=c.gpu, nodes=c.api, pods=c.api, reviewer=c.api, cards=lambda: {},
                      region_root=c.root / "regions", region_writer=None)
    role.server = _server(c, agents=frozenset(settings.agents))
    await role.tick()  # publishes the node annotations
    runner = await role.start_issuer("127.0.0.1")
    assert runner is not None
    try:
        # the CPU node's agent: PreStartContainer of the workload's container
        paths = RemotePaths(client_host_dir=str(d.client_lib_dir()), files_host_root=str(c.root / "sessions"))
        client = RemoteClientWiring(nodes=c.api, pods=c.api, sa_token_path=token_file, paths=paths)
        part = container_slice(pod, container="main", node=c.cpu).slice
        assert part is not None
        wiring, status = await client.prepare(part, "slice-1")
        assert status.ok, status.message()
        assert wiring is not None
        assert wiring.envs["XPUPOOL_REMOTE_SERVER_NAME"] == c.gpu
        assert (paths.client_container_dir, paths.client_host_dir, True) in wiring.mounts
        env = _host_env(wiring.envs, paths, wiring.region_host_dir)
        driver = str(d.native_dir() / "remote" / "tests" / "t_remote_driver")
        # the 2 GiB slice, held by the worker's libxpushim, which also charges the per-process
        # reserve (512 MiB for NVIDIA: the same rule as for local containers)
        run = subprocess.run([driver, "alloc", "1400"], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        _wait_no_sessions(c.rig)  # one session at a time: its worker has returned its charges
        over = subprocess.run([driver, "alloc", "1600"], env=env, capture_output=True, text=True, timeout=60)
        assert over.returncode == 2, over.stdout + over.stderr
        grants = c.rig.control.grants()
        assert [(g.alloc, g.card, g.tenant) for g in grants] == [(pod["metadata"]["uid"], FAKE_CARD_UUID,
                                                                 f"{c.ns}/work")]
        region = Path(grants[0].region)
        assert region.exists()

        # a live session, then the pod is deleted: the next reconcile revokes and ends it
        _wait_no_sessions(c.rig)  # the processes above are gone and their charges released
        loop = subprocess.Popen([driver, "loop"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert loop.stdout is not None and loop.stdout.readline().strip() == "READY"
        assert await role.server.reconcile() == []  # alive: kept
        await transport.delete(PODS, "work", namespace=c.ns)
        assert await role.server.reconcile() == [f"{c.ns}/work"]
        out, err = loop.communicate(timeout=15)
        assert "error 46" in out, (loop.returncode, out, err)
        assert c.rig.control.grants() == [] and not region.exists()
        assert c.rig.control.sessions() == []
        # the GPU node's agent exports the daemon's metrics: a revoked session is no error
        (collector,) = role.collectors()
        samples = {(s.name, s.labels.get("reason")): s.value for f in collector.collect() for s in f.samples
                   if s.labels.get("node") == c.gpu}
        assert samples[("xpupool_remote_daemon_up", None)] == 1
        assert samples[("xpupool_remote_session_errors_total", "worker_crashed")] == 0
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("case", ["another node's pod", "not an agent", "apiserver audience", "local allocation"])
async def test_token_endpoint_refuses(cluster: Cluster, transport: AiohttpTransport, case: str) -> None:
    c = cluster
    await transport.create(SERVICE_ACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                              "metadata": {"name": "someone", "namespace": c.ns}})
    agent_pod = await _pod(transport, c.ns, "agent-cpu", c.cpu, sa="xpupool-agent")
    other_pod = await _pod(transport, c.ns, "agent-other", f"other-{c.cpu}", sa="xpupool-agent")
    someone = await _pod(transport, c.ns, "someone", c.cpu, sa="someone")
    remote = Allocation(pod=f"{c.ns}/work", node=c.cpu, device_node=c.gpu, cards=(0,), share_milli=500,
                        device_memory_mib=(256,))
    local = Allocation(pod=f"{c.ns}/work", node=c.gpu, device_node=c.gpu, cards=(0,), share_milli=500,
                       device_memory_mib=(256,))
    pod_node = c.gpu if case == "local allocation" else c.cpu
    await _pod(transport, c.ns, "work", pod_node,
               annotations={ANN_ALLOCATION: encode_allocation(local if case == "local allocation" else remote)})
    caller_pod, sa, audience = {
        "another node's pod": (other_pod, "xpupool-agent", REMOTE_AUDIENCE),
        "not an agent": (someone, "someone", REMOTE_AUDIENCE),
        "apiserver audience": (agent_pod, "xpupool-agent", "https://kubernetes.default.svc"),
        "local allocation": (agent_pod, "xpupool-agent", REMOTE_AUDIENCE),
    }[case]
    if case == "local allocation":  # the caller is the agent of the node the pod is bound to
        caller_pod = await _pod(transport, c.ns, "agent-gpu", c.gpu, sa="xpupool-agent")
    bearer = await _agent_token(transport, c.ns, sa, caller_pod, audience)
    server = _server(c, agents=frozenset({f"system:serviceaccount:{c.ns}:xpupool-agent"}))
    decision, answer = await server.issue(bearer, c.ns, "work")
    assert not decision.status.ok and answer == {}
    assert decision.http == {"another node's pod": 403, "not an agent": 403, "apiserver audience": 401,
                             "local allocation": 409}[case], decision.status.message()
    assert c.rig.control.grants() == []  # nothing granted, no token minted


def _wait_no_sessions(rig: LocalRig, timeout_s: float = 10.0) -> None:
    t0 = time.monotonic()
    while rig.control.sessions() and time.monotonic() - t0 < timeout_s:
        time.sleep(0.05)
    assert rig.control.sessions() == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_remote_settings_from_env() -> None:
    s = RemoteSettings.from_env({"XPUPOOL_REMOTE_SLOTS": "8", "XPUPOOL_REMOTE_AGENTS": "a, b"})
    assert s.slots == 8 and s.agents == ["a", "b"] and s.enabled
    assert not RemoteSettings.from_env({}).enabled
    assert json.loads(json.dumps(s.model_dump()))["daemon_port"] == 7070
