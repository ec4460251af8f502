"""Entry point: ``python -m xpupool.kube.scheduler`` (flags -> config, transport, elector, daemon)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence

from xpupool.core.cluster import ClusterState
from xpupool.core.framework import Scheduler
from xpupool.core.model import Request
from xpupool.kube.lease import LeaderElector
from xpupool.kube.metrics import METRICS
from xpupool.kube.objects import SCHEDULER_NAME
from xpupool.kube.scheduler.config import MonotonicClock, SchedulerConfig
from xpupool.kube.scheduler.daemon import KubeScheduler


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m xpupool.kube.scheduler",
        description="The xpupool scheduler daemon: places spec.schedulerName: xpupool pods with the pure core.",
    )
    p.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, in-cluster, ~/.kube/config")
    p.add_argument("--policy", default="xpupool", help="placement policy (xpupool.plugins.profiles)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler-name", default=SCHEDULER_NAME)
    p.add_argument("--node-selector", default=None, help="label selector of the nodes to manage")
    p.add_argument("--bind-concurrency", type=int, default=64)
    p.add_argument("--bind-qps", type=float, default=None)
    p.add_argument("--annotate-before-bind", action="store_true")
    p.add_argument("--max-pods-per-cycle", type=int, default=256, help="0: decide every pending pod each cycle")
    p.add_argument("--no-preemption", action="store_true")
    p.add_argument("--leader-elect", action="store_true")
    p.add_argument("--lease-namespace", default="kube-system")
    p.add_argument("--lease-name", default="xpupool-scheduler")
    p.add_argument("--identity", default="")
    p.add_argument("--lease-duration-s", type=float, default=15.0)
    p.add_argument("--renew-deadline-s", type=float, default=10.0)
    p.add_argument("--retry-period-s", type=float, default=2.0)
    p.add_argument("--metrics-port", type=int, default=0, help="0: no metrics endpoint")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


async def amain(argv: Sequence[str] | None = None, *, ready: Callable[[KubeScheduler], None] | None = None) -> None:
    from xpupool.kube.transport import AiohttpTransport, KubeConfig
    from xpupool.plugins.profiles import build_scheduler_for

    args = _parse(argv)

    def policy_for(state: ClusterState, pods: list[Request]) -> Scheduler:
        """The configured policy for this cluster's card models and the pods seen so far."""
        return build_scheduler_for(args.policy, models=state.models, population=pods, seed=args.seed)

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transport = AiohttpTransport(KubeConfig.load(args.kubeconfig), max_connections=args.bind_concurrency + 16)
    clock = MonotonicClock()
    identity = args.identity or f"{socket.gethostname()}-{os.getpid()}"
    elector = None
    if args.leader_elect:
        elector = LeaderElector(
            transport,
            namespace=args.lease_namespace,
            name=args.lease_name,
            identity=identity,
            clock=clock,
            lease_duration_s=args.lease_duration_s,
            renew_deadline_s=args.renew_deadline_s,
            retry_period_s=args.retry_period_s,
        )
    config = SchedulerConfig(
        scheduler_name=args.scheduler_name,
        node_label_selector=args.node_selector,
        bind_concurrency=args.bind_concurrency,
        bind_qps=args.bind_qps,
        annotate_before_bind=args.annotate_before_bind,
        max_pods_per_cycle=args.max_pods_per_cycle,
        preemption=not args.no_preemption,
    )
    daemon = KubeScheduler(
        transport,
        scheduler=policy_for(ClusterState([]), []),
        scheduler_factory=policy_for,
        config=config,
        clock=clock,
        elector=elector,
        identity=identity,
    )
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="0.0.0.0", registry=METRICS.registry)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    if ready is not None:
        ready(daemon)
    try:
        await daemon.run()
    except asyncio.CancelledError:
        pass
    finally:
        await daemon.stop()
        await transport.close()


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(amain(argv))
