"""Bind throughput: xpupool's scheduler vs upstream kube-scheduler on the same kind of apiserver.

A benchmark, not a test. For each scheduler, on a fresh throw-away control plane (etcd +
kube-apiserver built by ``make kube-bins``), so neither sees the other's objects:

  1. creates ``--nodes`` fake Nodes (``nvidia.com/gpu`` in status.allocatable, GFD labels);
  2. creates ``--pods`` whole-GPU pods (``nvidia.com/gpu: 1``) while NO scheduler runs;
  3. starts the scheduler as a separate process and records, from a watch, the moment each pod
     is seen bound.

Two figures per scheduler: **end to end** = from starting the scheduler process to the last bind
(start-up, initial lists, every decision and every bind), and the bind window = pods / (last bind
- first bind). With ``--constraints`` the cluster looks like a tainted GPU pool serving replicated
inference services: every node carries ``nvidia.com/gpu=present:NoSchedule`` and a zone (10
zones), every pod tolerates the taint, selects the pool by label, belongs to one of
``--services`` services with required hostname anti-affinity to its own replicas, prefers a
zone by node affinity and spreads over zones (ScheduleAnyway). kube-scheduler runs with client
QPS/burst raised from 50/100 to 5000 (its defaults would measure the rate limiter); ours has no
client-side limit by default. Both share the machine with the apiserver, etcd and this watcher.

    .venv/bin/python bench/kube/bind_throughput.py --nodes 5000 --pods 5000 --constraints --repeat 3

The order alternates between rounds. Prints the median ratios (kube-scheduler time / xpupool time
for end to end, xpupool rate / kube-scheduler rate for the bind window).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpupool.kube.testing import ControlPlane, create_all, fake_node, fake_pod, find_bin_dir
from xpupool.kube.transport import NAMESPACES, NODES, PODS, AiohttpTransport, KubeConfig


@dataclass
class Result:
    name: str
    pods: int
    first_s: float
    last_s: float
    start_s: float

    @property
    def window_s(self) -> float:
        return max(self.last_s - self.first_s, 1e-9)

    @property
    def pods_per_s(self) -> float:
        return (self.pods - 1) / self.window_s if self.pods > 1 else 0.0

    @property
    def end_to_end_s(self) -> float:
        return self.last_s - self.start_s


async def watch_binds(transport: AiohttpTransport, namespace: str, expected: int, timeout_s: float) -> list[float]:
    """Local time at which each pod of ``namespace`` was first seen with ``spec.nodeName``."""
    seen: dict[str, float] = {}
    listed = await transport.list(PODS, namespace=namespace)
    rv = listed.resource_version
    for pod in listed.items:
        if pod["spec"].get("nodeName"):
            seen[pod["metadata"]["name"]] = time.perf_counter()
    deadline = time.perf_counter() + timeout_s
    while len(seen) < expected:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(seen)}/{expected} pods bound after {timeout_s:.0f} s")
        async for event in transport.watch(PODS, namespace=namespace, resource_version=rv, timeout_s=60):
            obj = event.object
            rv = obj.get("metadata", {}).get("resourceVersion", rv)
            if event.type in ("ADDED", "MODIFIED") and obj["spec"].get("nodeName"):
                seen.setdefault(obj["metadata"]["name"], time.perf_counter())
                if len(seen) >= expected:
                    break
    return sorted(seen.values())


def bench_node(name: str, i: int, args: argparse.Namespace) -> dict[str, Any]:
    labels = {"xpupool.bench/pool": "gpu", "topology.kubernetes.io/zone": f"zone-{i % 10}"}
    node = fake_node(name, cards=args.gpus_per_node, inventory="extended-resource", labels=labels)
    if args.constraints:
        node["spec"] = {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]}
    return node


def bench_pod(namespace: str, i: int, scheduler_name: str, args: argparse.Namespace) -> dict[str, Any]:
    pod = fake_pod(namespace, f"p{i:05d}", scheduler=scheduler_name, whole_gpus=1)
    if not args.constraints:
        return pod
    service = f"svc-{i % args.services}"
    zone = "topology.kubernetes.io/zone"
    pod["metadata"]["labels"] = {"app": service}
    pod["spec"].update(
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        nodeSelector={"xpupool.bench/pool": "gpu"},
        affinity={
            "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": service}}, "topologyKey": "kubernetes.io/hostname"}]},
            "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [
                    {"key": zone, "operator": "In", "values": [f"zone-{i % 3}"]}]}}]},
        },
        topologySpreadConstraints=[{"maxSkew": 1, "topologyKey": zone, "whenUnsatisfiable": "ScheduleAnyway",
                                    "labelSelector": {"matchLabels": {"app": service}}}],
    )
    return pod


async def run_one(bin_dir: Path, name: str, args: argparse.Namespace) -> Result:
    """One scheduler on its own fresh control plane."""
    cp = ControlPlane.start(bin_dir)
    transport = AiohttpTransport(KubeConfig.from_file(cp.kubeconfig))
    try:
        ns = "bench"
        await transport.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        await create_all(transport, NODES, [bench_node(f"node-{i:05d}", i, args) for i in range(args.nodes)],
                         concurrency=64)
        scheduler_name = "default-scheduler" if name == "kube-scheduler" else "xpupool"
        await create_all(transport, PODS, [bench_pod(ns, i, scheduler_name, args) for i in range(args.pods)],
                         concurrency=64)
        start = time.perf_counter()
        if name == "kube-scheduler":
            proc = cp.start_kube_scheduler(qps=5000)
        else:
            log = open(cp.workdir / "xpupool-scheduler.log", "ab")  # noqa: SIM115
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
            proc = subprocess.Popen(
                [sys.executable, *profile, "-m", "xpupool.kube.scheduler", "--kubeconfig", str(cp.kubeconfig),
                 "--log-level", "WARNING", "--bind-concurrency", str(args.bind_concurrency)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            log.close()
        try:
            times = await watch_binds(transport, ns, args.pods, args.timeout_s)
        finally:
            proc.send_signal(signal.SIGINT if name == "xpupool" else signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return Result(name, len(times), times[0], times[-1], start)
    finally:
        await transport.close()
        cp.stop()


async def one_round(bin_dir: Path, args: argparse.Namespace, order: list[str]) -> dict[str, Result]:
    """Both schedulers, in ``order``, each on a fresh control plane."""
    results: dict[str, Result] = {}
    for name in order:
        r = results[name] = await run_one(bin_dir, name, args)
        print(
            f"  {r.name:15s} {r.pods} pods bound: start->last bind {r.end_to_end_s:6.2f} s "
            f"({r.pods / r.end_to_end_s:7.1f} pods/s); bind window {r.window_s:.2f} s ({r.pods_per_s:.1f} pods/s)",
            flush=True,
        )
    return results


async def amain(args: argparse.Namespace) -> int:
    bin_dir, missing = find_bin_dir(("etcd", "kube-apiserver", "kube-scheduler"))
    if missing:
        print(f"missing binaries in {bin_dir}: {missing}; run `make kube-bins`", file=sys.stderr)
        return 2
    order = args.order.split(",")
    ratios: list[float] = []
    e2e_ratios: list[float] = []
    rates: dict[str, list[float]] = {n: [] for n in order}
    for i in range(args.repeat):
        this = order if i % 2 == 0 or len(order) != 2 else order[::-1]  # alternate who goes first
        print(f"round {i + 1}/{args.repeat}: {' then '.join(this)}", flush=True)
        results = await one_round(bin_dir, args, this)
        for name, r in results.items():
            rates[name].append(r.pods / r.end_to_end_s)
        if "xpupool" in results and "kube-scheduler" in results:
            ratios.append(results["xpupool"].pods_per_s / results["kube-scheduler"].pods_per_s)
            e2e_ratios.append(results["kube-scheduler"].end_to_end_s / results["xpupool"].end_to_end_s)
    for name, values in rates.items():
        print(f"{name:15s} median {statistics.median(values):8.1f} pods/s start->last bind, {len(values)} round(s)")
    if ratios:
        print(
            f"xpupool vs kube-scheduler, start->last bind: median {statistics.median(e2e_ratios):.2f}x "
            f"(min {min(e2e_ratios):.2f}x, max {max(e2e_ratios):.2f}x); bind window: median "
            f"{statistics.median(ratios):.2f}x; {args.nodes} nodes x {args.gpus_per_node} GPUs, {args.pods} "
            f"whole-GPU pods, constraints {'on' if args.constraints else 'off'}, {len(ratios)} round(s)"
        )
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--gpus-per-node", type=int, default=16)
    p.add_argument("--pods", type=int, default=1500)
    p.add_argument("--bind-concurrency", type=int, default=64)
    p.add_argument("--order", default="kube-scheduler,xpupool", help="comma-separated, first round's order")
    p.add_argument("--repeat", type=int, default=5, help="rounds, each on a fresh control plane, order alternating")
    p.add_argument("--timeout-s", type=float, default=300)
    p.add_argument("--profile", default="", help="write a cProfile of the xpupool process here")
    p.add_argument("--constraints", action="store_true", help="tainted pool, anti-affinity, spread (see above)")
    p.add_argument("--services", type=int, default=16, help="replicated services (with --constraints)")
    args = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(amain(args)))


if __name__ == "__main__":
    main()
