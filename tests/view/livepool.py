"""A small live pool on the real test apiserver, placed by the real scheduler daemon.

* nodes ``<ns>-gpu0`` (its cards published by a real node agent with the emulated backend, which
  also serves ``/metrics`` with per-slice shim usage from real shim region files),
  ``<ns>-gpu1`` (cards from the inventory annotation, no agent) and ``<ns>-cpu`` (no cards);
* an XPUQueue ``train-<ns>`` (guarantee 0.5 card, limit 1 card) and pods in it and in ``research``;
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
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from xpupool.agent.daemon import Agent, AgentSettings
from xpupool.agent.kubeapi import KubeApi
from xpupool.agent.metrics import metrics_app
from xpupool.agent.shim_region import DeviceConfig, ShimRegion
from xpupool.kube.crds import crds
from xpupool.kube.objects import ANN_ALLOCATION
from xpupool.kube.queues import XPUQUEUES
from xpupool.kube.testing import ControlPlane, create_all, fake_node, fake_pod
from xpupool.kube.transport import NODES, PODS, AiohttpTransport, ApiError, JsonDict, Resource

CRD = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", False, "CustomResourceDefinition")
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


async def ensure_crds(transport: AiohttpTransport) -> None:
    for crd in crds():
        try:
            await transport.create(CRD, crd)
        except ApiError as exc:
            assert exc.status == 409, exc
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        try:
            await transport.list(XPUQUEUES, limit=1)
            return
        except ApiError:
            assert asyncio.get_running_loop().time() < deadline, "XPUQueue CRD never served"
            await asyncio.sleep(0.2)


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
    await ensure_crds(transport)
    queue = f"train-{namespace}"
    await transport.create(XPUQUEUES, {
        "apiVersion": "xpupool.io/v1alpha1", "kind": "XPUQueue", "metadata": {"name": queue},
        "spec": {"weight": 2, "quota": [{"resource": "xpupool.io/vxpu-core", "guaranteed": 50, "limit": 100}]},
    })
    label = {"xpupool.test/pool": namespace}
    gpu = (f"{namespace}-gpu0", f"{namespace}-gpu1")
    await create_all(transport, NODES, [
        fake_node(gpu[0], cards=2, card_memory_mib=CARD_MIB, labels=label),
        fake_node(gpu[1], cards=2, card_memory_mib=CARD_MIB, labels=label),
        fake_node(f"{namespace}-cpu", cards=0, labels=label),
    ])
    # The node agent of gpu0: publishes its (emulated) cards before the scheduler starts.
    emulated = work / "emulated.yaml"
    emulated.write_text(f"cards:\n  - {{model: EMU-80G, memory_mib: {CARD_MIB}, count: 2, "
                        f"utilization_pct: {AGENT_UTILIZATION_PCT}, memory_used_mib: {AGENT_CARD_USED_MIB}}}\n")
    regions = work / "regions"
    settings = AgentSettings.from_env({
        "NODE_NAME": gpu[0], "XPUPOOL_BACKENDS": "emulated", "XPUPOOL_EMULATED_CONFIG": str(emulated),
        "XPUPOOL_DEVICE_PLUGIN": "false", "XPUPOOL_REGION_HOST_ROOT": str(regions),
        "XPUPOOL_CARD_HOST_DIR": str(work / "cards"), "XPUPOOL_PLUGIN_DIR": str(work),
    })
    kube = KubeApi(cp.server, token=cp.token, ca_path=cp.ca_file)
    agent = Agent(settings, node_api=kube, pod_api=kube, backends=settings.make_backends())
    await agent.tick()

    name = f"xpupool-{namespace}"
    log = open(work / "scheduler.log", "ab")  # noqa: SIM115 - handed to the child
    sched = subprocess.Popen(
        [sys.executable, "-m", "xpupool.kube.scheduler", "--kubeconfig", str(cp.kubeconfig), "--scheduler-name", name,
         "--node-selector", f"xpupool.test/pool={namespace}", "--policy", "binpack", "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    runner: web.AppRunner | None = None
    try:
        pool = LivePool(namespace, name, queue, cp.kubeconfig, gpu, f"{namespace}-cpu")
        q = {"xpupool.io/queue": queue}
        await create_all(transport, PODS, [
            fake_pod(namespace, "serve-a", scheduler=name, vxpu=1, core_pct=30, memory_mib=8192, labels=q),
            fake_pod(namespace, "serve-b", scheduler=name, vxpu=1, core_pct=20, memory_mib=20480, labels=q),
            fake_pod(namespace, "train-c", scheduler=name, vxpu=2, labels={"xpupool.io/queue": "research"}),
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
        # Shim regions of the slices on gpu0, as the device plugin writes them at Allocate and the
        # shims fill them; directory names start with the pod UID (see agent/regions.py).
        on_gpu0 = []
        for key, alloc in pool.allocations.items():
            if alloc["deviceNode"] != gpu[0]:
                continue
            pod = pool.bound[key.split("/", 1)[1]]
            configs = [DeviceConfig(ordinal=i, uuid=f"EMU-{gpu[0]}-{card}", mem_limit_bytes=mib << 20,
                                    share_request_bp=alloc["shareMilli"] * 10, share_limit_bp=alloc["shareMilli"] * 10)
                       for i, (card, mib) in enumerate(zip(alloc["cards"], alloc["memoryMiB"], strict=True))]
            region_dir = regions / f"{pod['metadata']['uid']}-0123456789ab"
            region_dir.mkdir(parents=True)
            with ShimRegion.create(region_dir / "region", configs, container_key=len(on_gpu0) + 1) as region:
                for i in range(len(configs)):
                    region.view.dev[i].mem_used = SLICE_USED_MIB << 20
                    region.view.dev[i].measured_share_bp = SLICE_SHARE_BP
            on_gpu0.append(key)
        pool.sliced_pods = tuple(sorted(on_gpu0))
        await agent.tick()  # learns the owners of the new slices
        runner = web.AppRunner(metrics_app(agent.collector, agent.slice_collector()))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        pool.agent_url = f"http://127.0.0.1:{port}/metrics"
        await _agent_pod(transport, namespace, gpu[0], port)
        yield pool
    finally:
        if runner is not None:
            await runner.cleanup()
        await kube.close()
        sched.send_signal(signal.SIGTERM)
        try:
            sched.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sched.kill()
            sched.wait()


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
