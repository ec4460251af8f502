"""A throw-away Kubernetes control plane (etcd + kube-apiserver, optionally kube-scheduler).

For tests and benchmarks only. Binaries come from ``hack/kube/build.sh`` (see
:func:`find_bin_dir`). Everything listens on 127.0.0.1 with free ports and lives in one
temporary directory:

  * etcd: in-memory-ish (``--unsafe-no-fsync``), watch progress notifications every 5 s;
  * kube-apiserver: serving certificate and service-account keys generated with
    ``cryptography``; a static token file with one user in ``system:masters``;
    ``--authorization-mode=RBAC``; the ``ServiceAccount`` admission plugin is disabled because
    no controller-manager creates ``default`` service accounts, and ``TaintNodesByCondition``
    because no node-lifecycle controller would ever lift its ``not-ready`` taint from new Nodes;
  * ConfigMaps are served without the watch cache and etcd is compacted every 5 s, so tests
    can provoke a real ``410 Gone`` on a ConfigMap watch;
  * a kubeconfig (server, token, CA) at :attr:`ControlPlane.kubeconfig`.

There is no kubelet. :class:`FakeKubelet` finishes graceful pod deletions (as a kubelet would
after the containers stop) so preemption and eviction can complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xpupool.kube.informer import Informer
from xpupool.kube.transport import PODS, ApiError, JsonDict, Resource, Transport, TransportError

#: Must match the versions pinned in hack/kube/{k8s,etcd}/go.mod (checked by a test).
PINNED = "k8s-v1.36.3_etcd-v3.6.16"
BINARIES = ("etcd", "kube-apiserver", "kube-scheduler")


def default_bin_dir() -> Path:
    """The cache dir ``hack/kube/build.sh`` writes to (same rule, same env vars)."""
    if os.environ.get("XPUPOOL_KUBE_CACHE"):
        return Path(os.environ["XPUPOOL_KUBE_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "xpupool" / "kube-bins" / PINNED


def find_bin_dir(required: tuple[str, ...] = ("etcd", "kube-apiserver")) -> tuple[Path, list[str]]:
    """``(bin dir, missing binaries)``; ``$XPUPOOL_KUBE_BIN_DIR`` overrides the cache dir."""
    override = os.environ.get("XPUPOOL_KUBE_BIN_DIR")
    bin_dir = Path(override) if override else default_bin_dir()
    missing = [b for b in required if not os.access(bin_dir / b, os.X_OK)]
    return bin_dir, missing


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_keys(workdir: Path, extra_ips: tuple[str, ...] = ()) -> tuple[Path, Path, Path, Path]:
    """Serving cert/key (self-signed CA, SANs 127.0.0.1/localhost + ``extra_ips``) and a
    service-account key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xpupool-test-apiserver")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                    *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = workdir / "apiserver.crt", workdir / "apiserver.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key, sa_pub = workdir / "sa.key", workdir / "sa.pub"
    sa_key.write_bytes(
        sa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    sa_pub.write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for f in (key_file, sa_key):
        f.chmod(0o600)
    return cert_file, key_file, sa_key, sa_pub


@dataclass(frozen=True)
class ApiserverOptions:
    """How the test kube-apiserver is set up.

    The defaults are the emulated-cluster profile described in the module docstring (loopback,
    no ServiceAccount admission, RBAC only). A cluster with a real node
    (:mod:`xpupool.kube.testing_node`) listens on an address the node can reach, keeps the
    ServiceAccount admission (pods get tokens), authorises kubelets with the Node authorizer and
    gives each node component its own static-token user.
    """

    address: str = "127.0.0.1"
    disabled_admission_plugins: tuple[str, ...] = ("ServiceAccount", "TaintNodesByCondition")
    enabled_admission_plugins: tuple[str, ...] = ()
    authorization_modes: tuple[str, ...] = ("RBAC",)
    #: ``(user name, groups)`` rows added to the token file; tokens land in ``ControlPlane.user_tokens``.
    users: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver. Use :meth:`start` / :meth:`stop` (or ``with``)."""

    bin_dir: Path
    workdir: Path
    options: ApiserverOptions = field(default_factory=ApiserverOptions)
    server: str = ""
    token: str = ""
    user_tokens: dict[str, str] = field(default_factory=dict)
    sa_key_file: Path = Path()
    ca_file: Path = Path()
    kubeconfig: Path = Path()
    etcd_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_s: float = 0.0

    @classmethod
    def start(
        cls,
        bin_dir: Path,
        *,
        workdir: Path | None = None,
        extra_apiserver_args: tuple[str, ...] = (),
        ready_timeout_s: float = 90.0,
        options: ApiserverOptions | None = None,
    ) -> ControlPlane:
        t0 = time.monotonic()
        work = workdir or Path(tempfile.mkdtemp(prefix="xpupool-kube-"))
        work.mkdir(parents=True, exist_ok=True)
        cp = cls(bin_dir=bin_dir, workdir=work, options=options or ApiserverOptions())
        try:
            cp._start_etcd()
            cp._start_apiserver(extra_apiserver_args, ready_timeout_s)
        except BaseException:
            cp.stop()
            raise
        cp.started_s = time.monotonic() - t0
        return cp

    # -- processes -------------------------------------------------------------------------
    def spawn(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``args`` as process ``name`` (log: ``<workdir>/<name>.log``), stopped by :meth:`stop`."""
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_detach_and_die_with_parent
        )
        log.close()
        self.processes[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        data = self.workdir / "etcd"
        self.spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=xpupool-test",
                f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=xpupool-test=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--watch-progress-notify-interval=5s",
                "--quota-backend-bytes=4294967296",
            ],
        )
        self.wait_ready(lambda: _http_ok(f"{self.etcd_url}/health"), "etcd", 30.0)

    def _start_apiserver(self, extra: tuple[str, ...], timeout_s: float) -> None:
        opts = self.options
        extra_ips = () if opts.address == "127.0.0.1" else (opts.address,)
        cert, key, sa_key, sa_pub = _write_keys(self.workdir, extra_ips)
        self.sa_key_file = sa_key
        self.token = secrets.token_hex(24)
        rows = [f'{self.token},xpupool-admin,xpupool-admin-uid,"system:masters"']
        for user, groups in opts.users:
            self.user_tokens[user] = secrets.token_hex(24)
            rows.append(f'{self.user_tokens[user]},{user},{user}-uid,"{",".join(groups)}"')
        tokens = self.workdir / "tokens.csv"
        tokens.write_text("\n".join(rows) + "\n")
        tokens.chmod(0o600)
        port = free_port()
        self.server = f"https://{opts.address}:{port}"
        self.ca_file = cert
        admission = []
        if opts.disabled_admission_plugins:
            admission.append(f"--disable-admission-plugins={','.join(opts.disabled_admission_plugins)}")
        if opts.enabled_admission_plugins:
            admission.append(f"--enable-admission-plugins={','.join(opts.enabled_admission_plugins)}")
        self.spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={opts.address}",
                f"--advertise-address={opts.address}",
                f"--secure-port={port}",
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
                f"--token-auth-file={tokens}",
                f"--authorization-mode={','.join(opts.authorization_modes)}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                *admission,
                "--enable-priority-and-fairness=false",
                "--max-requests-inflight=3000",
                "--max-mutating-requests-inflight=1000",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={self.workdir / 'certs'}",
                # ConfigMaps bypass the watch cache and etcd is compacted every 5 s, so a watch
                # from an old RV gets a genuine 410 Gone (the informer tests use ConfigMaps).
                "--watch-cache-sizes=configmaps#0",
                "--etcd-compaction-interval=5s",
                "-v=0",
                *extra,
            ],
        )
        self.wait_ready(self._ready, "kube-apiserver", timeout_s)
        self.kubeconfig = self.write_kubeconfig(self.workdir / "kubeconfig", "xpupool-admin", self.token)

    def write_kubeconfig(self, path: Path, user: str, token: str) -> Path:
        """A kubeconfig for ``user`` (static ``token``) that trusts this apiserver's CA."""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: xpupool-test\n"
            f"clusters:\n- name: xpupool-test\n  cluster:\n    server: {self.server}\n"
            f"    certificate-authority: {self.ca_file}\n"
            f"users:\n- name: {user}\n  user:\n    token: {token}\n"
            "contexts:\n- name: xpupool-test\n  context:\n"
            f"    cluster: xpupool-test\n    user: {user}\n"
        )
        path.chmod(0o600)
        return path

    def _ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_ready(self, probe: Callable[[], bool], name: str, timeout_s: float) -> None:
        """Poll ``probe`` until true; fail early (with the log tail) if process ``name`` exits."""
        deadline = time.monotonic() + timeout_s
        proc = self.processes[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            if probe():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s:\n{self.log_tail(name)}")

    def start_kube_scheduler(self, *, qps: int = 5000, name: str = "kube-scheduler") -> subprocess.Popen[bytes]:
        """Start upstream kube-scheduler (profile ``default-scheduler``) against this apiserver.

        ``qps``/burst replace the 50/100 defaults so the comparison measures the scheduler, not
        its client-side rate limiter (ours is unlimited by default too).
        """
        config = self.workdir / "kube-scheduler.yaml"
        config.write_text(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
            f"clientConnection:\n  kubeconfig: {self.kubeconfig}\n  qps: {qps}\n  burst: {qps}\n"
            "leaderElection:\n  leaderElect: false\n"
        )
        proc = self.spawn(
            name,
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--config={config}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'sched-certs'}",
                "-v=0",
            ],
        )
        return proc

    def stop_process(self, name: str, *, timeout_s: float = 10.0) -> None:
        """SIGTERM process ``name``'s group, SIGKILL after ``timeout_s``; no-op if not running."""
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop_process(name)
        if os.environ.get("XPUPOOL_KEEP_KUBE_WORKDIR"):
            return
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _detach_and_die_with_parent() -> None:
    """Child set-up: own process group (clean group kill), SIGKILL when the test process dies."""
    os.setsid()
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class FakeKubelet:
    """Stands in for the kubelets of emulated nodes: completes graceful pod deletions.

    Without a kubelet, a bound pod deleted with a grace period stays ``Terminating`` forever.
    This watches pods and, for every pod with ``deletionTimestamp`` on a node, issues the final
    delete (grace 0, UID precondition) - what a kubelet does once containers have stopped.
    """

    def __init__(self, transport: Transport, *, delay_s: float = 0.0) -> None:
        self._transport = transport
        self.informer = Informer(self._transport, PODS)
        self.informer.add_handler(self._on_event)
        self._delay_s = delay_s
        self._tasks: set[asyncio.Task[None]] = set()
        self.finalized = 0

    def _on_event(self, etype: str, old: JsonDict | None, new: JsonDict | None) -> None:
        if new is None:
            return
        meta = new.get("metadata") or {}
        spec = new.get("spec") or {}
        if meta.get("deletionTimestamp") and spec.get("nodeName"):
            task = asyncio.get_running_loop().create_task(
                self._finish(str(meta["namespace"]), str(meta["name"]), str(meta["uid"]))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _finish(self, namespace: str, name: str, uid: str) -> None:
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        try:
            await self._transport.delete(PODS, name, namespace=namespace, grace_period_s=0, uid=uid)
            self.finalized += 1
        except (ApiError, TransportError):
            pass  # already gone, or re-created: nothing to finish

    async def run(self) -> None:
        await self.informer.run()


_SHARED: ControlPlane | None = None


def shared_control_plane(bin_dir: Path) -> ControlPlane:
    """One control plane per process (test session), stopped at interpreter exit.

    Several test directories' session fixtures share it, so a full run starts one apiserver.
    """
    global _SHARED
    if _SHARED is None:
        import atexit

        _SHARED = ControlPlane.start(bin_dir)
        atexit.register(_SHARED.stop)
    return _SHARED


def missing_binaries_message(bin_dir: Path, missing: list[str]) -> str:
    return (
        f"kube test binaries missing from {bin_dir}: {', '.join(missing)}. "
        "Build them with `make kube-bins` (hack/kube/build.sh)."
    )


def control_plane_for_tests() -> tuple[ControlPlane | None, str]:
    """The shared control plane, or ``(None, why)`` when the binaries are missing.

    Callers (pytest fixtures) fail on ``why`` when ``$CI`` or ``$REQUIRE_E2E`` is set and skip
    otherwise: CI must never silently skip the real-apiserver layer.
    """
    bin_dir, missing = find_bin_dir()
    if missing:
        return None, missing_binaries_message(bin_dir, missing)
    return shared_control_plane(bin_dir), ""


def tests_must_not_skip() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("REQUIRE_E2E"))


# ---------------------------------------------------------------------- object factories
def fake_node(
    name: str,
    *,
    cards: int = 4,
    card_memory_mib: int = 81920,
    model: str = "H100",
    cpu: str = "64",
    memory: str = "512Gi",
    inventory: str = "annotation",
    labels: dict[str, str] | None = None,
) -> JsonDict:
    """A Node as an emulated cluster has it: Ready, capacity == allocatable, no kubelet behind.

    ``inventory="annotation"``: cards in the ``xpupool.io/inventory`` annotation (the format our
    node agent publishes) and ``xpupool.io/vxpu`` in allocatable (10 slots per card: what the
    kubelet advertises once the agent's device plugin registered); ``"extended-resource"``:
    ``nvidia.com/gpu`` in allocatable plus the GPU feature discovery labels (what the NVIDIA device
    plugin + GFD publish; kube-scheduler can place whole-GPU pods on these; our scheduler models
    them only with ``guess_whole_cards``).
    """
    import json

    resources = {"cpu": cpu, "memory": memory, "pods": "1000"}
    meta: JsonDict = {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}}
    if inventory == "annotation":
        devices = [
            {
                "uuid": f"GPU-{name}-{i}",
                "index": i,
                "vendor": "nvidia",
                "model": model,
                "memoryMiB": card_memory_mib,
                "healthy": True,
                "healthReason": "",
                "topologyGroup": 0,
            }
            for i in range(cards)
        ]
        doc = {
            "schemaVersion": 1,
            "generation": 1,
            "node": name,
            "slotsPerCard": 10,
            "contentHash": "sha256:emulated",
            "devices": devices,
            "errors": [],
        }
        meta["annotations"] = {"xpupool.io/inventory": json.dumps(doc)}
        if cards:
            resources["xpupool.io/vxpu"] = str(10 * cards)
    else:
        resources["nvidia.com/gpu"] = str(cards)
        meta["labels"].update({"nvidia.com/gpu.product": model, "nvidia.com/gpu.memory": str(card_memory_mib)})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta,
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "emulated"}],
        },
    }


def fake_pod(
    namespace: str,
    name: str,
    *,
    scheduler: str = "xpupool",
    vxpu: int = 0,
    core_pct: int | None = None,
    memory_mib: int | None = None,
    whole_gpus: int = 0,
    cpu: str = "100m",
    priority_class: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> JsonDict:
    """A pod asking for ``vxpu`` vXPUs (``core_pct``/``memory_mib`` each) or ``whole_gpus`` cards."""
    limits: dict[str, str] = {}
    if vxpu:
        limits["xpupool.io/vxpu"] = str(vxpu)
        if core_pct is not None:
            limits["xpupool.io/vxpu-core"] = str(core_pct)
        if memory_mib is not None:
            limits["xpupool.io/vxpu-memory"] = str(memory_mib)
    if whole_gpus:
        limits["nvidia.com/gpu"] = str(whole_gpus)
    container: JsonDict = {
        "name": "main",
        "image": "registry.invalid/none:0",
        "resources": {"requests": {"cpu": cpu, **limits}, "limits": limits} if limits else {"requests": {"cpu": cpu}},
    }
    spec: JsonDict = {"schedulerName": scheduler, "containers": [container], "terminationGracePeriodSeconds": 1}
    if priority_class:
        spec["priorityClassName"] = priority_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}, "annotations": annotations or {}},
        "spec": spec,
    }


async def create_all(
    transport: Transport, resource: Resource, bodies: list[JsonDict], *, concurrency: int = 32
) -> None:
    """Create every object, ``concurrency`` at a time (order within the window is not kept)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(body: JsonDict) -> None:
        async with sem:
            await transport.create(resource, body)

    await asyncio.gather(*(one(b) for b in bodies))


async def declare_queues(transport: Transport, queues: Mapping[str, JsonDict], *, namespaces: Sequence[str]) -> None:
    """Install the XPUQueue CRD (if missing) and create or replace ``queues`` (name -> spec) so that
    ``namespaces`` may use them: with the CRD installed the scheduler lets a pod use only the
    queues its namespace is admitted to (test helper; queue names are cluster-wide)."""
    from xpupool.kube.crds import crds
    from xpupool.kube.queues import XPUQUEUES

    crd_res = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", False, "CustomResourceDefinition")
    for crd in crds():
        try:
            await transport.create(crd_res, crd)
        except ApiError as exc:
            if exc.status != 409:
                raise
    deadline = asyncio.get_running_loop().time() + 20
    while True:  # served a moment after it is established
        try:
            await transport.list(XPUQUEUES, limit=1)
            break
        except ApiError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
    for name, spec in queues.items():
        body: JsonDict = {"apiVersion": "xpupool.io/v1alpha1", "kind": "XPUQueue", "metadata": {"name": name},
                          "spec": {**spec, "namespaces": sorted({*spec.get("namespaces", []), *namespaces})}}
        try:
            await transport.create(XPUQUEUES, body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            live = await transport.get(XPUQUEUES, name)
            merged = sorted({*((live.get("spec") or {}).get("namespaces") or []), *body["spec"]["namespaces"]})
            await transport.patch(XPUQUEUES, name, {"spec": {**spec, "namespaces": merged}})
