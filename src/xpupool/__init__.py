"""xpupool: one shared pool of GPUs and NPUs for a Kubernetes cluster.

Layout (see docs/ARCHITECTURE.md):

* ``xpupool.core``    pure domain: devices, requests, ledger, placement framework, queues. No I/O.
* ``xpupool.plugins`` placement policies (filter/score/pick) registered by name.
* ``xpupool.sim``     trace loaders and the replay simulator (same placement code as production).
* ``xpupool.kube``    Kubernetes adapters: scheduler daemon, webhook, CRDs.
* ``xpupool.agent``   node agent: vendor backends, device plugin, shim metrics.
* ``xpupool.view``    the pool snapshot shared by the live CLI, the web page and the pool metrics.
* ``xpupool.cli``     the ``xpupool`` command.
"""

__version__ = "0.1.0"
