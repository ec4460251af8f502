"""xpupool on the real test node: the node agent and the scheduler as host processes.

The agent runs on the host (same file system as the node's kubelet and containerd; the kubelet's
network namespace is not needed: it talks to the kubelet over unix sockets and to the node's
apiserver on the host side of the link), with emulated cards (no GPU here), its device plugin
in the kubelet's fixed ``/var/lib/kubelet/device-plugins``, the kubelet's PodResources socket, and
containerd's CDI spec directory. The scheduler is ``python -m xpupool.kube.scheduler`` against the
node's apiserver. Both are children of the node's control plane (logs beside the others, stopped
with it). The chart-installed DaemonSet is the operator path (tests/node of issue 7 §3); this
fixture isolates pairing from image building.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from xpupool.agent.cdi import device_name
from xpupool.agent.inventory import Inventory, published_inventory
from xpupool.agent.kubeapi import KubeApi
from xpupool.agent.podresources import HolderIndex, KubeletPodResources
from xpupool.core.request import RES_VXPU
from xpupool.kube.testing import free_port
from xpupool.kube.testing_node import DEVICE_PLUGIN_DIR, NodeCluster
from xpupool.kube.transport import NODES, AiohttpTransport

from .pods import pod_log

CARDS = 2
CARD_MIB = 81920
SLOTS_PER_CARD = 10
GC_INTERVAL_S = 2.0
GC_GRACE_S = 5.0


SHIM_LIBRARY = Path(__file__).resolve().parents[2] / "native" / "build" / "libxpushim.so"


class XpupoolNode:
    """``cards``: the emulated backend's card list (YAML flow mappings); ``install_shim`` copies the
    shim built by ``make native`` to the host directory the containers mount (what the chart's
    init container does from the xpupool image)."""

    def __init__(self, cluster: NodeCluster, *, cards: str | None = None, install_shim: bool = False) -> None:
        self.cluster = cluster
        self.root = cluster.host_root
        self.region_root = self.root / "regions"
        self.results = cluster.root / "xpupool-results.jsonl"
        shim_dir = self.root / "shim"
        shim_dir.mkdir(parents=True, exist_ok=True)
        if install_shim:
            assert SHIM_LIBRARY.exists(), f"{SHIM_LIBRARY} missing: run make native"
            shutil.copyfile(SHIM_LIBRARY, shim_dir / ".libxpushim.so.new")
            os.replace(shim_dir / ".libxpushim.so.new", shim_dir / "libxpushim.so")
        self.config = self.root / "emulated.yaml"
        cards = cards or f"{{model: EMU-80G, memory_mib: {CARD_MIB}, count: {CARDS}}}"
        self.config.write_text(f"cards:\n  - {cards}\n")
        cp = cluster.control_plane
        self.token_file = cluster.root / "xpupool-agent.token"
        self.token_file.write_text(cp.token)
        self.token_file.chmod(0o600)
        self._agent_starts = 0

    # ------------------------------------------------------------------ processes
    def agent_env(self, *, device_plugin: bool) -> dict[str, str]:
        cp = self.cluster.control_plane
        self.metrics_port = free_port()
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NODE_NAME": self.cluster.node_name,
            "XPUPOOL_KUBE_URL": cp.server,
            "XPUPOOL_KUBE_TOKEN_FILE": str(self.token_file),
            "XPUPOOL_KUBE_CA_FILE": str(cp.ca_file),
            "XPUPOOL_BACKENDS": "emulated",
            "XPUPOOL_EMULATED_CONFIG": str(self.config),
            "XPUPOOL_SLOTS_PER_CARD": str(SLOTS_PER_CARD),
            "XPUPOOL_INTERVAL_S": "1",
            "XPUPOOL_DEVICE_PLUGIN": "true" if device_plugin else "false",
            "XPUPOOL_PLUGIN_DIR": str(DEVICE_PLUGIN_DIR),
            "XPUPOOL_PODRESOURCES_SOCKET": str(self.cluster.pod_resources_socket),
            "XPUPOOL_CDI_SPEC_DIR": str(self.cluster.cdi_spec_dir),
            "XPUPOOL_SHIM_HOST_DIR": str(self.root / "shim"),
            "XPUPOOL_REGION_HOST_ROOT": str(self.region_root),
            "XPUPOOL_CARD_HOST_DIR": str(self.root / "cards"),
            "XPUPOOL_METRICS_HOST": "127.0.0.1",
            "XPUPOOL_METRICS_PORT": str(self.metrics_port),
            "XPUPOOL_GC_INTERVAL_S": str(GC_INTERVAL_S),
            "XPUPOOL_GC_GRACE_S": str(GC_GRACE_S),
        }

    def start(self) -> None:
        self.start_agent(device_plugin=True)
        cp = self.cluster.control_plane
        cp.spawn(
            "xpupool-scheduler",
            [sys.executable, "-m", "xpupool.kube.scheduler", "--kubeconfig", str(cp.kubeconfig), "--log-level", "INFO"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )

    def start_agent(self, *, device_plugin: bool) -> None:
        self._agent_starts += 1
        self.cluster.control_plane.spawn(
            "xpupool-agent", [sys.executable, "-m", "xpupool.agent"], env=self.agent_env(device_plugin=device_plugin)
        )

    def restart_agent(self, *, device_plugin: bool) -> None:
        self.cluster.control_plane.stop_process("xpupool-agent")
        self.start_agent(device_plugin=device_plugin)

    def stop(self) -> None:
        for name in ("xpupool-scheduler", "xpupool-agent"):
            self.cluster.control_plane.stop_process(name)

    def cluster_restart_kubelet(self) -> None:
        """Stop and start the real kubelet (its device-plugin sockets are deleted, allocations
        kept in its checkpoint). Uses the node fixture's own kubelet start."""
        self.cluster.control_plane.stop_process("kubelet")
        self.cluster._start_kubelet()
        deadline = time.monotonic() + 120
        while not self.cluster.node_ready() and time.monotonic() < deadline:
            time.sleep(0.5)

    # ------------------------------------------------------------------ observations
    def agent_log(self) -> str:
        path = self.cluster.control_plane.workdir / "xpupool-agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def registrations(self) -> int:
        return self.agent_log().count(f"registered {RES_VXPU} with the kubelet")

    async def wait_registrations(self, count: int, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.registrations() < count:
            assert time.monotonic() < deadline, self.cluster.control_plane.log_tail("xpupool-agent")
            await asyncio.sleep(0.5)

    async def allocatable(self) -> int:
        async with _transport(self.cluster) as transport:
            node = await transport.get(NODES, self.cluster.node_name)
        return int((node.get("status") or {}).get("allocatable", {}).get(RES_VXPU, "0"))

    async def wait_allocatable(self, count: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        seen = -1
        while time.monotonic() < deadline:
            seen = await self.allocatable()
            if seen == count:
                return
            await asyncio.sleep(0.5)
        agent = self.cluster.control_plane.log_tail("xpupool-agent")
        raise AssertionError(f"node allocatable {RES_VXPU} is {seen}, not {count}\n{agent}")

    async def inventory(self) -> Inventory | None:
        async with _transport(self.cluster) as transport:
            node = await transport.get(NODES, self.cluster.node_name)
        return published_inventory((node.get("metadata") or {}).get("annotations"))

    async def wait_serving(self, *, after_generation: int = 0, timeout_s: float = 120.0) -> Inventory:
        """The agent says the kubelet admits vXPU pods (inventory ``serving``), in a generation
        newer than ``after_generation`` (so a restart's not-serving phase has been seen)."""
        deadline = time.monotonic() + timeout_s
        inventory = None
        while time.monotonic() < deadline:
            inventory = await self.inventory()
            if inventory is not None and inventory.serving and inventory.generation > after_generation:
                return inventory
            await asyncio.sleep(0.3)
        agent = self.cluster.control_plane.log_tail("xpupool-agent")
        raise AssertionError(f"not serving after generation {after_generation}: {inventory}\n{agent}")

    async def wait_not_serving(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            inventory = await self.inventory()
            if inventory is not None and not inventory.serving:
                return
            assert time.monotonic() < deadline, f"still serving: {inventory}"
            await asyncio.sleep(0.3)

    async def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """The agent's /metrics samples: (name, labels, value)."""
        from prometheus_client.parser import text_string_to_metric_families

        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            text = await resp.text()
        return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]

    def log(self, namespace: str, name: str) -> str:
        return pod_log(self.cluster, namespace, name)

    async def wait_gone(self, path: Path, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while path.exists():
            assert time.monotonic() < deadline, f"{path} still there after {timeout_s:.0f} s"
            await asyncio.sleep(0.5)

    def specs(self) -> dict[str, dict[str, Any]]:
        """CDI device name -> spec, for every spec the agent wrote."""
        found: dict[str, dict[str, Any]] = {}
        for path in self.cluster.cdi_spec_dir.glob("xpupool.io-vxpu_*.json"):
            doc = json.loads(path.read_text())
            found[doc["devices"][0]["name"]] = doc
        return found

    def cdi_specs_for(self, pod: dict[str, Any]) -> list[str]:
        key = f"XPUPOOL_POD={pod['metadata']['namespace']}/{pod['metadata']['name']}"
        return [n for n, doc in self.specs().items() if key in doc["devices"][0]["containerEdits"].get("env", [])]

    async def wait_no_spec_for(self, pod: dict[str, Any], timeout_s: float = 60.0) -> None:
        """Until no CDI spec names ``pod`` (its IDs are no longer held: garbage collected)."""
        deadline = time.monotonic() + timeout_s
        while self.cdi_specs_for(pod):
            assert time.monotonic() < deadline, f"the CDI spec of deleted pod {pod['metadata']['name']} was kept"
            await asyncio.sleep(0.5)

    async def stale_specs(self, timeout_s: float = 60.0) -> list[str]:
        """Specs whose IDs no container holds, per the kubelet itself, once collection had time."""
        client, api = self.holders()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                held = {device_name(e.device_ids) for e in (await client.snapshot()).of_resource(RES_VXPU)}
                stale = sorted(set(self.specs()) - held)
                if not stale or time.monotonic() > deadline:
                    return stale
                await asyncio.sleep(1.0)
        finally:
            await client.close()
            await api.close()

    async def wait_idle(self, timeout_s: float = 120.0) -> None:
        """Until no container on the node holds xpupool.io/vxpu (earlier tests' pods are gone)."""
        client, api = self.holders()
        deadline = time.monotonic() + timeout_s
        try:
            while (await client.snapshot()).of_resource(RES_VXPU):
                assert time.monotonic() < deadline, "vXPU containers of earlier tests are still there"
                await asyncio.sleep(0.5)
        finally:
            await client.close()
            await api.close()

    def holders(self) -> tuple[HolderIndex, KubeApi]:
        """The kubelet's record of who holds which devices, asked the way the agent asks it."""
        cp = self.cluster.control_plane
        api = KubeApi(cp.server, token=cp.token, ca_path=cp.ca_file)
        return HolderIndex(
            KubeletPodResources(self.cluster.pod_resources_socket), api, node=self.cluster.node_name
        ), api

    def record(self, kind: str, data: dict[str, Any]) -> None:
        """Append a measured result (read by the report; printed with -s)."""
        line = json.dumps({"kind": kind, **data})
        with self.results.open("a") as out:
            out.write(line + "\n")
        print(line)


class _transport:
    """``async with _transport(cluster) as t``: an admin client of the node's apiserver."""

    def __init__(self, cluster: NodeCluster) -> None:
        from xpupool.kube.transport import KubeConfig

        self._t = AiohttpTransport(KubeConfig.from_file(cluster.control_plane.kubeconfig))

    async def __aenter__(self) -> AiohttpTransport:
        return self._t

    async def __aexit__(self, *exc: object) -> None:
        await self._t.close()
