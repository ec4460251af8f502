"""A small live pool on the real test apiserver, placed by the real scheduler daemon.

* nodes ``<ns>-gpu0`` (its cards published by a real node agent with the emulated backend and
  its device plugin registered with the in-repo fake kubelet over unix sockets: each pod the
  scheduler puts there is admitted (``Allocate``) and its container started (``PreStartContainer``,
  the pairing writes the shim region and records the slice's owner); the agent's ``/metrics``
  then carries per-slice usage written into those real region files, as a shim would),
  ``<ns>-gpu1`` (cards from the inventory annotation, no agent) and ``<ns>-cpu`` (no cards);
* XPUQueues ``train-<ns>`` (guarantee 0.5 card, limit 1 card) and ``research-<ns>`` (nothing
  guaranteed), open to the test namespace, with pods in them and in the implicit ``default``;
* ``python -m xpupool.kube.scheduler`` (a subprocess, as deployed) places them; one pod asks for
  more memory than any card has and one would exceed its queue's limit: both stay pending with
  the scheduler's reason in their ``PodScheduled`` condition;
* a notebook with ``xpupool.io/remote: required`` runs on the CPU node with its card elsewhere;
* an agent Pod object (labels of the chart's DaemonSet) on ``<ns>-gpu0`` whose ``podIP`` is
  127.0.0.1 and whose ``metrics`` port is the agent's, so the view finds it like in a cluster.

Nothing is asserted here; the tests compare what the views show with what the apiserver holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.fake_kubelet import FakeKubelet  # tests/agent: the in-repo fake kubelet
from aiohttp import web

from xpupool.agent.daemon import Agent, AgentSettings
from xpupool.agent.kubeapi import KubeApi
from xpupool.agent.metrics import metrics_app
from xpupool.agent.shim_region import ShimRegion
from xpupool.kube.objects import ANN_ALLOCATION
from xpupool.kube.queues import XPUQUEUES
from xpupool.kube.testing import ControlPlane, create_all, declare_queues, fake_node, fake_pod
from xpupool.kube.transport import NODES, PODS, AiohttpTransport, JsonDict

CARD_MIB = 81920
AGENT_UTILIZATION_PCT = 37
AGENT_CARD_USED_MIB = 12000
SLICE_USED_MIB = 3072
SLICE_SHARE_BP = 2500  # the shim's measured share of the card: 25 %


@dataclass
class LivePool:
    namespace: str
    scheduler_name: str
    queue: str
    kubeconfig: Path
    gpu_nodes: tuple[str, str]
    cpu_node: str
    agent_url: str = ""
    pending: tuple[str, ...] = ("huge", "over-quota")
    bound: dict[str, JsonDict] = field(default_factory=dict)
    #: namespace/pod -> allocation annotation as the apiserver holds it
    allocations: dict[str, JsonDict] = field(default_factory=dict)
    pending_reasons: dict[str, str] = field(default_factory=dict)
    sliced_pods: tuple[str, ...] = ()


async def _wait(transport: AiohttpTransport, pool: LivePool, *, pending: tuple[str, ...], timeout_s: float = 60.0
                ) -> None:
    """Until the 5 placeable pods are bound and ``pending`` carry the scheduler's reason."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        pods = (await transport.list(PODS, namespace=pool.namespace)).items
        bound = {p["metadata"]["name"]: p for p in pods if p["spec"].get("nodeName")}
        reasons = {}
        for p in pods:
            for cond in (p.get("status") or {}).get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    reasons[p["metadata"]["name"]] = cond["message"]
        if len(bound) >= 5 and set(pending) <= set(reasons):
            pool.bound = bound
            pool.pending_reasons = {k: v for k, v in reasons.items() if k in pool.pending}
            pool.allocations = {
                f"{pool.namespace}/{name}": json.loads(p["metadata"]["annotations"][ANN_ALLOCATION])
                for name, p in bound.items()
            }
            return
        assert asyncio.get_running_loop().time() < deadline, f"bound {sorted(bound)}, reasons {reasons}"
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def live_pool(cp: ControlPlane, transport: AiohttpTransport, namespace: str, work: Path) -> AsyncIterator[
        LivePool]:
    queue, research = f"train-{namespace}", f"research-{namespace}"
    await declare_queues(transport, {
        queue: {"weight": 2, "quota": [{"resource": "xpupool.io/vxpu-core", "guaranteed": 50, "limit": 100}]},
        research: {},
    }, namespaces=[namespace])
    label = {"xpupool.test/pool": namespace}
    gpu = (f"{namespace}-gpu0", f"{namespace}-gpu1")
    await create_all(transport, NODES, [
        fake_node(gpu[0], cards=2, card_memory_mib=CARD_MIB, labels=label),
        fake_node(gpu[1], cards=2, card_memory_mib=CARD_MIB, labels=label),
        fake_node(f"{namespace}-cpu", cards=0, labels=label),
    ])
    # gpu0 runs containerd 2 (CDI on): the agent serves its device plugin there
    await transport.patch(NODES, gpu[0], {"status": {"nodeInfo": {"containerRuntimeVersion": "containerd://2.1.4"}}},
                          subresource="status")
    async with contextlib.AsyncExitStack() as stack:
        yield await _start(stack, cp, transport, namespace, work, gpu, queue, research)


async def _start(stack: contextlib.AsyncExitStack, cp: ControlPlane, transport: AiohttpTransport, namespace: str,
                 work: Path, gpu: tuple[str, str], queue: str, research: str) -> LivePool:
    """Start the agent + kubelet of gpu0 and the scheduler, place the pods; ``stack`` undoes it all."""
    emulated = work / "emulated.yaml"
    emulated.write_text(f"cards:\n  - {{model: EMU-80G, memory_mib: {CARD_MIB}, count: 2, "
                        f"utilization_pct: {AGENT_UTILIZATION_PCT}, memory_used_mib: {AGENT_CARD_USED_MIB}}}\n")
    short = Path(tempfile.mkdtemp(prefix="xpv-"))  # unix socket paths must stay short
    stack.callback(shutil.rmtree, short, ignore_errors=True)
    kubelet = FakeKubelet(short, cdi_dir=short / "cdi")
    await kubelet.start()
    stack.push_async_callback(kubelet.stop)
    settings = AgentSettings.from_env({
        "NODE_NAME": gpu[0], "XPUPOOL_BACKENDS": "emulated", "XPUPOOL_EMULATED_CONFIG": str(emulated),
        "XPUPOOL_INTERVAL_S": "0.2", "XPUPOOL_PLUGIN_DIR": str(short),
        "XPUPOOL_REGION_HOST_ROOT": str(work / "regions"),
        "XPUPOOL_CARD_HOST_DIR": str(work / "cards"), "XPUPOOL_METRICS_HOST": "127.0.0.1", "XPUPOOL_METRICS_PORT": "0",
        "XPUPOOL_PODRESOURCES_SOCKET": str(short / "pod-resources" / "kubelet.sock"),
        "XPUPOOL_CDI_SPEC_DIR": str(short / "cdi"),
    })
    kube = KubeApi(cp.server, token=cp.token, ca_path=cp.ca_file)
    stack.push_async_callback(kube.close)
    agent = Agent(settings, node_api=kube, pod_api=kube, backends=settings.make_backends())
    stop = asyncio.Event()
    agent_task = asyncio.create_task(agent.run(stop))

    async def stop_agent() -> None:
        stop.set()
        await asyncio.gather(agent_task, return_exceptions=True)

    stack.push_async_callback(stop_agent)
    await kubelet.next_list(0)
    await _published(transport, gpu[0])  # its cards are on the Node before the scheduler starts

    name = f"xpupool-{namespace}"
    log = open(work / "scheduler.log", "ab")  # noqa: SIM115 - handed to the child
    sched = subprocess.Popen(
        [sys.executable, "-m", "xpupool.kube.scheduler", "--kubeconfig", str(cp.kubeconfig), "--scheduler-name", name,
         "--node-selector", f"xpupool.test/pool={namespace}", "--policy", "binpack", "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()

    def stop_scheduler() -> None:
        sched.send_signal(signal.SIGTERM)
        try:
            sched.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sched.kill()
            sched.wait()

    stack.callback(stop_scheduler)
    pool = LivePool(namespace, name, queue, cp.kubeconfig, gpu, f"{namespace}-cpu")
    q = {"xpupool.io/queue": queue}
    await create_all(transport, PODS, [
        fake_pod(namespace, "serve-a", scheduler=name, vxpu=1, core_pct=30, memory_mib=8192, labels=q),
        fake_pod(namespace, "serve-b", scheduler=name, vxpu=1, core_pct=20, memory_mib=20480, labels=q),
        fake_pod(namespace, "train-c", scheduler=name, vxpu=2, labels={"xpupool.io/queue": research}),
        fake_pod(namespace, "notebook", scheduler=name, vxpu=1, core_pct=25, memory_mib=4096,
                 annotations={"xpupool.io/remote": "required", "xpupool.io/remote-mbps": "2000"}),
        fake_pod(namespace, "infer-d", scheduler=name, vxpu=1, core_pct=10, memory_mib=2048),
        fake_pod(namespace, "huge", scheduler=name, vxpu=1, core_pct=50, memory_mib=999_999),
    ])
    await _wait(transport, pool, pending=("huge",))
    # only now the pod that would take the queue past its limit (30 % + 20 % + 60 % > 100 %)
    await transport.create(PODS, fake_pod(namespace, "over-quota", scheduler=name, vxpu=1, core_pct=60,
                                          memory_mib=4096, labels=q), namespace=namespace)
    await _wait(transport, pool, pending=pool.pending)
    await _queue_status(transport, queue, running=2, pending=1)
    # The kubelet of gpu0 admits and starts the pods placed there (Allocate, PreStartContainer: the
    # agent's pairing writes each shim region and records its owner); the "shim" reports usage in it.
    on_gpu0 = []
    for key, alloc in pool.allocations.items():
        if alloc["node"] != gpu[0]:
            continue
        pod = pool.bound[key.split("/", 1)[1]]
        await kubelet.admit(pod)
        started = await kubelet.start_container(namespace, pod["metadata"]["name"], "main")
        with ShimRegion.open(Path(started.mounts["/run/xpupool/shim"][0]) / "region") as region:
            for i in range(len(alloc["cards"])):
                region.usage.dev[i].mem_used = SLICE_USED_MIB << 20
                region.usage.dev[i].measured_share_bp = SLICE_SHARE_BP
        on_gpu0.append(key)
    pool.sliced_pods = tuple(sorted(on_gpu0))
    await asyncio.sleep(0.5)  # a tick or two: the agent learns the new pods' queue labels
    runner = web.AppRunner(metrics_app(agent.collector, agent.slice_collector()))
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    pool.agent_url = f"http://127.0.0.1:{port}/metrics"
    await _agent_pod(transport, namespace, gpu[0], port)
    return pool


async def _queue_status(transport: AiohttpTransport, name: str, *, running: int, pending: int,
                        timeout_s: float = 30.0) -> None:
    """Until the scheduler's status of XPUQueue ``name`` counts these pods (written every 5 s)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status = (await transport.get(XPUQUEUES, name)).get("status") or {}
        if (status.get("runningPods"), status.get("pendingPods")) == (running, pending):
            return
        assert asyncio.get_running_loop().time() < deadline, f"queue {name} status: {status}"
        await asyncio.sleep(0.2)


async def _published(transport: AiohttpTransport, node: str, timeout_s: float = 30.0) -> None:
    """Until the agent's inventory of ``node`` (emulated cards) is on the Node."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while "EMU-" not in json.dumps((await transport.get(NODES, node))["metadata"].get("annotations") or {}):
        assert asyncio.get_running_loop().time() < deadline, "the agent never published its inventory"
        await asyncio.sleep(0.1)


async def _agent_pod(transport: AiohttpTransport, namespace: str, node: str, port: int) -> None:
    """The DaemonSet pod as the apiserver would hold it: bound to ``node``, Running, with a pod IP."""
    body = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"agent-{node}", "namespace": namespace, "labels": {
            "app.kubernetes.io/part-of": "xpupool", "app.kubernetes.io/component": "agent"}},
        "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "registry.invalid/xpupool:0",
                                                   "ports": [{"name": "metrics", "containerPort": port}]}]},
    }
    await transport.create(PODS, body, namespace=namespace)
    await transport.patch(PODS, body["metadata"]["name"], {"status": {
        "phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}},
        namespace=namespace, subresource="status")
