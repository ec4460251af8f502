"""The xpupool scheduler daemon: places ``spec.schedulerName: xpupool`` pods with the pure core.

Data flow::

    Informer(pods, all namespaces) --+--> cache.py: ledger accounting (every pod holding resources)
    Informer(nodes) -----------------+--> cache.py: ClusterState rebuild (node set or capacity changed)
    Informer(XPUQueues, if the CRD) -+--> queueing.py: queue specs
                                     |
             cycle.py (event loop, no await inside): pending pods -> core run_cycle (DRF across
             queues, quota gates, priority, FIFO, gangs all-or-nothing, Scheduler.place from
             policy.py; it reserves on the ledger) -> binding.py "assumes" each placement and
             spawns its bind task; unschedulable pods -> preemption.py (core plan_preemption ->
             evict victims; placed once they are gone) or explained (Event + PodScheduled)
                                     |
    binding.py: POST pods/binding carrying the ``xpupool.io/allocation`` annotation (the
    apiserver writes annotation and nodeName in ONE etcd write) -> watch confirms -> assumption
    dropped

Modules (one concern each): ``config`` (settings, clock), ``runtime`` (shared services and the
write gate), ``cache`` (informer handlers + ledger; its docstring states the ledger invariants),
``policy`` (the core scheduler, rebuilt from the live cluster), ``queueing`` (XPUQueue specs ->
QueueBook), ``cycle``, ``binding``, ``preemption``, ``daemon`` (:class:`KubeScheduler`: wiring
and lifecycle), ``cli`` (``python -m xpupool.kube.scheduler``).

Fencing: with a :class:`~xpupool.kube.lease.LeaderElector`, every API write is preceded by an
``is_leader()`` check, which turns false as soon as renewals have failed for the renew deadline.
"""

from xpupool.kube.scheduler.cli import amain, main
from xpupool.kube.scheduler.config import MonotonicClock, SchedulerConfig
from xpupool.kube.scheduler.daemon import KubeScheduler

__all__ = ["KubeScheduler", "MonotonicClock", "SchedulerConfig", "amain", "main"]
