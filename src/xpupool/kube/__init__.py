"""Kubernetes adapters: transport, informer, leader election, binder, events, scheduler daemon.

Layering: these modules translate API objects into :mod:`xpupool.core` values and core decisions
back into API writes. No placement policy lives here. Data flow of the scheduler daemon::

    apiserver --list/watch--> Informer(pods), Informer(nodes)
                                   |
                                   v
                 KubeScheduler: pending queue -> core Scheduler.place (pure)
                                   |
             patch pod annotation xpupool.io/allocation  (BEFORE bind)
                                   |
                      Binder: POST pods/{name}/binding (bounded, 409-aware)
                                   |
                 watch confirms nodeName -> assumed entry confirmed

The webhook (``webhook.py``), CRD models (``crds.py``) and certificate bootstrap (``certs.py``)
live here too but are independent of the scheduler.
"""
