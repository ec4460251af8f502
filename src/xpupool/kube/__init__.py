"""Kubernetes adapters: transport, informer, leader election, binder, events, scheduler daemon.

Layering: these modules translate API objects into :mod:`xpupool.core` values and core decisions
back into API writes. No placement policy lives here. Data flow of the scheduler daemon
(:mod:`xpupool.kube.scheduler`)::

    apiserver --list/watch--> Informer(pods), Informer(nodes), Informer(XPUQueues)
                                   |
                                   v
                 KubeScheduler cycle: core run_cycle (pure; reserves on the ledger)
                                   |
        Binder: POST pods/{name}/binding carrying the xpupool.io/allocation annotation
        (one etcd write sets annotation and nodeName; --annotate-before-bind: PATCH first)
                                   |
                 watch confirms nodeName -> assumed entry confirmed

The webhook (``webhook.py``), CRD models (``crds.py``) and certificate bootstrap (``certs.py``)
live here too but are independent of the scheduler. ``testing.py`` starts a throw-away control
plane for tests and benchmarks (binaries from ``hack/kube/build.sh``).
"""
