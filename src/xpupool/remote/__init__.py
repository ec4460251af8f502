"""Remote vXPUs: a pod on a CPU-only node runs its CUDA work on a GPU elsewhere in the pool.

The data path is C (``native/remote``): a client ``libcuda.so.1`` in the pod and the ``xpu-remoted``
daemon on the GPU node, speaking the protocol generated from ``native/remote/catalogue.yaml``. This
package is the control-plane side and the build-time tooling:

* :mod:`~xpupool.remote.catalogue` / :mod:`~xpupool.remote.codegen` — the API catalogue and the
  generator of the C codecs (build time only; nothing here runs on the data path);
* :mod:`~xpupool.remote.tokens` — Ed25519 session tokens (mint; the daemon verifies in C);
* :mod:`~xpupool.remote.daemon` — running the daemon and its control socket (grants, revocation,
  sessions, metrics).
"""
