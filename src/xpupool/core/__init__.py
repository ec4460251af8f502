"""Pure domain core: devices, requests, the device ledger, the placement framework, queues.

Layer rule (checked by ``tests/core/test_layering.py``): modules here import only the standard
library and numpy. No I/O, no asyncio, no Kubernetes, no wall clock: time comes from an injected
:class:`~xpupool.core.clock.Clock`, randomness from an injected ``numpy.random.Generator``.

Data flow for one pod::

    Request (validated)  --Scheduler.place-->  PlacementResult(Status, Allocation | None)
            |                                        |
            v                                        v
    ClusterState (numpy ledger) <--- Statement (reserve / unreserve / commit)

The simulator (:mod:`xpupool.sim`) and the Kubernetes scheduler daemon (:mod:`xpupool.kube`) call
exactly the same :class:`~xpupool.core.framework.Scheduler`.
"""
