"""A real one-node Kubernetes cluster for tests: kubelet + containerd + runc, as root.

For tests and benchmarks only (like :mod:`xpupool.kube.testing`, whose :class:`ControlPlane` it
reuses). What runs, and where:

  * on the host: etcd, kube-apiserver (on ``HOST_IP``, ServiceAccount admission on, Node + RBAC
    authorisation, ``--enable-aggregator-routing`` so the apiserver reaches webhooks through their
    endpoints: there is no kube-proxy on the host), kube-controller-manager (DaemonSets,
    Deployments, endpoints, garbage collection, service-account tokens, node lifecycle) and
    kube-scheduler (DaemonSet and Deployment pods are placed by the default scheduler);
  * in the network namespace ``NETNS`` (the node's "machine"): containerd 2.x (CRI, CDI, runc),
    kubelet (node ``NODE_NAME`` at ``NODE_IP``), kube-proxy (iptables; the ``kubernetes`` Service
    at 10.0.0.1 reaches the apiserver from pods), CNI bridge + host-local for pod IPs in
    ``POD_CIDR`` (routed from the host, so tests reach pod IPs directly);
  * cgroup v1 with the cgroupfs driver (this machine's kernel has no cgroup v2 controllers):
    kubelet ``failCgroupV1: false``; every pod and node process lives under the cgroup
    ``CGROUP_PARENT``, so teardown can freeze and kill the whole tree.

Isolation: all state (etcd, containerd root/state, kubelet root dir, pod logs, CNI IPAM, CDI spec
dir, host paths for charts) lives under one temporary root; sockets, ports and iptables rules are
the instance's own. The network namespace, veth and cgroup names are fixed, so a machine-wide
lock (``LOCK_FILE``, flock) makes a second worktree's node wait instead of breaking this one; the
lock holder also cleans up what a crashed run left behind (``STATE_FILE``). Teardown leaves no
process, mount, cgroup, network namespace or link, and restores the kernel tunables the kubelet
sets (``vm.overcommit_memory``, ``kernel.panic``, ...).

Binaries: ``hack/kube/build.sh kubelet kube-controller-manager kube-proxy`` (plus the control
plane) and ``hack/node/build.sh`` (containerd, runc shim, ctr; Debian runc, CNI plugins,
iptables). ``make node`` runs both. No registry is reachable: the pause image is built here from
``hack/node/pause/pause.c`` and every image a test runs is imported with :meth:`NodeCluster.import_image`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpupool.kube import testing_oci
from xpupool.kube.testing import ApiserverOptions, ControlPlane, find_bin_dir, free_port

#: Must match hack/node/containerd/go.mod (checked by a test).
CONTAINERD_PIN = "containerd-v2.3.7"
KUBE_BINARIES = ("etcd", "kube-apiserver", "kube-scheduler", "kubelet", "kube-controller-manager", "kube-proxy")
CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")
#: Debian packages hack/node/build.sh installs: the files the node uses from them.
HOST_TOOLS = {
    "runc": Path("/usr/sbin/runc"),
    "containernetworking-plugins": Path("/usr/lib/cni/bridge"),
    "iptables": Path("/usr/sbin/iptables"),
    "conntrack": Path("/usr/sbin/conntrack"),
    "busybox-static": Path("/bin/busybox"),
}
CNI_BIN_DIR = Path("/usr/lib/cni")

NODE_NAME = "xpupool-node"
NETNS = "xpupool-node"
HOST_LINK = "xpn-host"
HOST_IP = "10.213.0.1"
NODE_IP = "10.213.0.2"
POD_CIDR = "10.214.0.0/24"
SERVICE_CIDR = "10.0.0.0/24"
CGROUP_PARENT = "xpupool-node"
PAUSE_IMAGE = "localhost/xpupool/pause:local"
#: A shell-and-coreutils image (Debian's static busybox) for tests that need a command in a pod.
BUSYBOX_IMAGE = "localhost/xpupool/busybox:local"
BUSYBOX_APPLETS = ("sh", "cat", "env", "ls", "sleep", "nc", "wget", "grep", "test", "echo", "id", "mount", "ip")
#: Fixed host paths the kubelet/containerd/CNI create whatever their root dirs say (the device
#: plugin socket dir is a compile-time constant of the kubelet): removed on stop when this
#: instance created them.
HOST_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/usr/libexec/kubernetes"),
    Path("/var/lib/cni"),
    Path("/run/containerd"),
)
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
LOCK_FILE = Path("/run/xpupool-node.lock")
STATE_FILE = Path("/run/xpupool-node.json")
#: Kernel tunables the kubelet's container manager sets on start (restored on stop).
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
_REPO_ROOT = Path(__file__).resolve().parents[3]
PAUSE_SOURCE = _REPO_ROOT / "hack" / "node" / "pause" / "pause.c"


def default_node_bin_dir() -> Path:
    """The cache dir ``hack/node/build.sh`` writes to (same rule, same env vars)."""
    if os.environ.get("XPUPOOL_NODE_CACHE"):
        return Path(os.environ["XPUPOOL_NODE_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "xpupool" / "node-bins" / CONTAINERD_PIN


def node_prerequisites() -> tuple[Path, Path, list[str]]:
    """``(kube bin dir, node bin dir, what is missing)``; empty list = a node can start here."""
    kube_dir, missing = find_bin_dir(KUBE_BINARIES)
    node_dir = Path(os.environ.get("XPUPOOL_NODE_BIN_DIR") or default_node_bin_dir())
    problems = [f"{b} (make kube-bins node)" for b in missing]
    problems += [f"{b} (make node)" for b in CONTAINERD_BINARIES if not os.access(node_dir / b, os.X_OK)]
    problems += [f"{path} (Debian package {pkg}; make node)" for pkg, path in HOST_TOOLS.items() if not path.exists()]
    if os.geteuid() != 0:
        problems.append("root (kubelet, containerd and network namespaces need it)")
    if not Path("/sys/fs/cgroup/pids").is_dir():
        problems.append("cgroup v1 hierarchies under /sys/fs/cgroup (this harness configures cgroup v1 only)")
    if shutil.which("gcc") is None or not PAUSE_SOURCE.exists():
        problems.append(f"gcc and {PAUSE_SOURCE} (the pause image is built at start)")
    return kube_dir, node_dir, problems


# ------------------------------------------------------------------------------ host plumbing
def _run(*args: str, check: bool = True, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout_s)


def _netns_exec(*args: str) -> list[str]:
    """``args`` run inside the node's network namespace (mount namespace stays the host's, so
    kubelet and containerd see each other's mounts)."""
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *args]


def _cgroup_dirs(*, create: bool = False) -> list[Path]:
    """``/sys/fs/cgroup/<controller>/CGROUP_PARENT`` for every v1 controller hierarchy."""
    out = []
    for hierarchy in sorted(Path("/sys/fs/cgroup").iterdir()):
        if hierarchy.name == "unified" or not (hierarchy / "cgroup.procs").exists():
            continue
        target = hierarchy / CGROUP_PARENT
        if create and not target.exists():
            target.mkdir()
            if hierarchy.name == "cpuset":  # a v1 cpuset cgroup starts empty: inherit the root's
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (target / knob).write_text((hierarchy / knob).read_text())
        if target.exists():
            out.append(target)
    return out


def _cgroup_pids(root: Path) -> set[int]:
    pids: set[int] = set()
    for procs in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def kill_cgroup_tree(timeout_s: float = 20.0) -> None:
    """Freeze, SIGKILL and wait out every process under ``CGROUP_PARENT``, then remove its cgroups."""
    freezer = Path("/sys/fs/cgroup/freezer") / CGROUP_PARENT
    pids_root = Path("/sys/fs/cgroup/pids") / CGROUP_PARENT
    deadline = time.monotonic() + timeout_s
    while pids_root.exists() and time.monotonic() < deadline:
        pids = _cgroup_pids(pids_root)
        if not pids:
            break
        # Frozen tasks cannot fork between the listing and the kill; SIGKILL is delivered on thaw.
        with contextlib.suppress(OSError):
            (freezer / "freezer.state").write_text("FROZEN")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            (freezer / "freezer.state").write_text("THAWED")
        time.sleep(0.1)
    for top in _cgroup_dirs():
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def join_cgroup(pid: int, name: str) -> None:
    """Put ``pid`` (a node daemon) in ``CGROUP_PARENT/<name>`` of the pids and freezer hierarchies
    so teardown finds it and everything it forks (containerd's shims, for one)."""
    for controller in ("pids", "freezer"):
        target = Path("/sys/fs/cgroup") / controller / CGROUP_PARENT / name
        target.mkdir(parents=True, exist_ok=True)
        (target / "cgroup.procs").write_text(str(pid))


def unmount_under(root: Path) -> None:
    """Lazily unmount every mount point at or below ``root``, deepest first."""
    prefix = str(root).rstrip("/")
    for _ in range(5):
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            _run("umount", "-l", point, check=False)


def _netns_exists() -> bool:
    return Path(f"/run/netns/{NETNS}").exists()


def remove_network() -> None:
    if _netns_exists():
        _run("ip", "netns", "delete", NETNS, check=False)
    if Path(f"/sys/class/net/{HOST_LINK}").exists():
        _run("ip", "link", "delete", HOST_LINK, check=False)


def create_network() -> None:
    """Namespace ``NETNS`` joined to the host by a veth pair; pod CIDR routed through it."""
    _run("ip", "netns", "add", NETNS)
    _run("ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", "xpn-node")
    _run("ip", "link", "set", "xpn-node", "netns", NETNS)
    _run("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_LINK)
    _run("ip", "link", "set", HOST_LINK, "up")
    inside = ["ip", "netns", "exec", NETNS]
    _run(*inside, "ip", "link", "set", "lo", "up")
    _run(*inside, "ip", "link", "set", "xpn-node", "name", "eth0")
    _run(*inside, "ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
    _run(*inside, "ip", "link", "set", "eth0", "up")
    _run(*inside, "ip", "route", "add", "default", "via", HOST_IP)
    # The node routes for its pods; the bridge's traffic goes through iptables (kube-proxy).
    _run(*inside, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    _run(*inside, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", check=False)
    _run("ip", "route", "add", POD_CIDR, "via", NODE_IP, "dev", HOST_LINK)


@dataclass(frozen=True)
class HostSnapshot:
    """What the node changes on the host outside its root, captured before start: the kernel
    tunables the kubelet sets and which of ``HOST_PATHS`` did not exist yet."""

    sysctls: dict[str, str]
    absent_paths: tuple[str, ...]

    @classmethod
    def capture(cls) -> HostSnapshot:
        sysctls = {name: (Path("/proc/sys") / name).read_text().strip() for name in KUBELET_SYSCTLS}
        return cls(sysctls, tuple(str(p) for p in HOST_PATHS if not p.exists()))

    def restore(self) -> None:
        for name, value in self.sysctls.items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / name).write_text(value)
        for path in self.absent_paths:
            shutil.rmtree(path, ignore_errors=True)
        # Pre-existing CNI cache: drop only this network's results.
        for result in Path("/var/lib/cni/results").glob("xpupool-node-*"):
            result.unlink(missing_ok=True)

    def to_json(self) -> dict[str, Any]:
        return {"sysctls": self.sysctls, "absent_paths": list(self.absent_paths)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> HostSnapshot:
        return cls(dict(doc.get("sysctls", {})), tuple(doc.get("absent_paths", ())))


def clean_stale_instance() -> None:
    """Remove what a crashed instance left (call with the machine lock held)."""
    state: dict[str, Any] = {}
    if STATE_FILE.exists():
        with contextlib.suppress(ValueError, OSError):
            state = json.loads(STATE_FILE.read_text())
    root = Path(state["root"]) if state.get("root") else None
    for pid in state.get("pids", []):
        with contextlib.suppress(OSError):
            if root and str(root) in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                os.kill(int(pid), signal.SIGKILL)
    kill_cgroup_tree()
    if root:
        unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
        _remove_container_log_links(root)
    remove_network()
    if state.get("host"):
        HostSnapshot.from_json(state["host"]).restore()
    STATE_FILE.unlink(missing_ok=True)


def _remove_container_log_links(root: Path) -> None:
    """The kubelet links ``/var/log/containers/*.log`` (a fixed path) to the pod logs under root."""
    links = Path("/var/log/containers")
    if not links.is_dir():
        return
    for link in links.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(str(root)):
                link.unlink()


def leftovers(root: Path, absent_paths: tuple[str, ...] = ()) -> list[str]:
    """What an instance rooted at ``root`` left on the machine (empty after a clean stop);
    ``absent_paths``: host paths that did not exist before it started."""
    found = []
    if _netns_exists():
        found.append(f"network namespace {NETNS}")
    if Path(f"/sys/class/net/{HOST_LINK}").exists():
        found.append(f"link {HOST_LINK}")
    found += [f"cgroup {d}" for d in _cgroup_dirs()]
    prefix = str(root)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4].startswith(prefix):
            found.append(f"mount {line.split()[4]}")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if prefix in (proc / "cmdline").read_text(errors="replace"):
                    found.append(f"process {proc.name}")
    if root.exists():
        found.append(f"directory {root}")
    found += [f"host path {p}" for p in absent_paths if Path(p).exists()]
    if STATE_FILE.exists():
        found.append(f"state file {STATE_FILE}")
    return found


class MachineLock:
    """The machine-wide flock serialising test nodes (fixed netns/veth/cgroup names)."""

    def __init__(self, path: Path = LOCK_FILE) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, timeout_s: float) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TimeoutError(f"another test node holds {self.path} for more than {timeout_s:.0f} s") from None
                if not told:
                    print(f"xpupool test node: waiting for {self.path} (another worktree's node)", file=sys.stderr)
                    told = True
                time.sleep(1.0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------------------------ the cluster
@dataclass
class NodeCluster:
    """A running control plane + one real node. :meth:`start`, then :meth:`stop` (or ``with``).

    Attributes tests use: ``control_plane`` (``.kubeconfig`` for the admin, ``.server``),
    ``node_name``, ``node_ip``, ``kubelet_root_dir`` (``device-plugins/kubelet.sock`` and
    ``pod-resources/kubelet.sock`` below it), ``cdi_spec_dir`` (scanned by containerd for CDI
    specs), ``host_root`` (an empty directory for charts' hostPath state, e.g. the agent's
    ``hostRoot``), ``containerd_socket``.
    """

    kube_bin_dir: Path
    node_bin_dir: Path
    root: Path
    control_plane: ControlPlane
    node_name: str = NODE_NAME
    node_ip: str = NODE_IP
    started_s: float = 0.0
    _lock: MachineLock = field(default_factory=MachineLock)
    _host: HostSnapshot = field(default_factory=lambda: HostSnapshot({}, ()))

    @property
    def kubelet_root_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def device_plugin_dir(self) -> Path:
        """``/var/lib/kubelet/device-plugins``: fixed in the kubelet, whatever ``--root-dir`` says."""
        return DEVICE_PLUGIN_DIR

    @property
    def pod_resources_socket(self) -> Path:
        return self.kubelet_root_dir / "pod-resources" / "kubelet.sock"

    @property
    def cdi_spec_dir(self) -> Path:
        return self.root / "cdi"

    @property
    def host_root(self) -> Path:
        return self.root / "host"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def logs_dir(self) -> Path:
        return self.control_plane.workdir

    @property
    def host_snapshot(self) -> HostSnapshot:
        return self._host

    @property
    def kept_for_debugging(self) -> bool:
        """``$XPUPOOL_KEEP_KUBE_WORKDIR`` set: :meth:`stop` keeps the logs and state directory."""
        return bool(os.environ.get("XPUPOOL_KEEP_KUBE_WORKDIR"))

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        kube_bin_dir: Path,
        node_bin_dir: Path,
        *,
        lock_timeout_s: float = 1800.0,
        ready_timeout_s: float = 120.0,
    ) -> NodeCluster:
        t0 = time.monotonic()
        lock = MachineLock()
        lock.acquire(lock_timeout_s)
        host = HostSnapshot.capture()
        root: Path | None = None
        try:
            clean_stale_instance()
            _refuse_foreign_kubelet()
            root = Path(tempfile.mkdtemp(prefix="xpn-"))
            root.chmod(0o755)
            _save_state(root, [], host)
            create_network()
            cp = ControlPlane.start(
                kube_bin_dir,
                workdir=root / "control-plane",
                options=ApiserverOptions(
                    address=HOST_IP,
                    disabled_admission_plugins=(),
                    enabled_admission_plugins=("NodeRestriction",),
                    authorization_modes=("Node", "RBAC"),
                    users=(
                        (f"system:node:{NODE_NAME}", ("system:nodes",)),
                        ("system:kube-controller-manager", ()),
                        ("system:kube-proxy", ()),
                    ),
                ),
                extra_apiserver_args=_apiserver_node_args(root),
                ready_timeout_s=ready_timeout_s,
            )
        except BaseException:
            remove_network()
            if root is not None:
                shutil.rmtree(root, ignore_errors=True)
            STATE_FILE.unlink(missing_ok=True)
            lock.release()
            raise
        node = cls(kube_bin_dir, node_bin_dir, root, cp, _lock=lock, _host=host)
        try:
            node._start_controller_manager()
            cp.start_kube_scheduler(qps=100)
            node._start_containerd(ready_timeout_s)
            node.import_image(node._build_pause_image())
            node._start_kubelet()
            node._start_kube_proxy()
            node._wait_node_ready(ready_timeout_s)
            node._wait_service_account("default", ready_timeout_s)
        except BaseException:
            node.stop()
            raise
        node.started_s = time.monotonic() - t0
        return node

    def _record_pids(self) -> None:
        _save_state(self.root, [p.pid for p in self.control_plane.processes.values()], self._host)

    def stop(self) -> None:
        """Stop everything and remove every trace; safe to call on a half-started cluster."""
        cp = self.control_plane
        keep = self.kept_for_debugging
        steps: list[tuple[str, Callable[[], None]]] = [
            ("kube-proxy", lambda: cp.stop_process("kube-proxy")),
            ("kubelet", lambda: cp.stop_process("kubelet")),
            # Containers, their shims and containerd itself all live under CGROUP_PARENT.
            ("pods", kill_cgroup_tree),
            ("containerd", lambda: cp.stop_process("containerd")),
            ("mounts", lambda: unmount_under(self.root)),
            # Before the network goes: the apiserver's shutdown talks to its own (veth) address.
            ("control plane", cp.stop),
            ("network", remove_network),
            ("host", self._host.restore),
            ("log links", lambda: _remove_container_log_links(self.root)),
        ]
        if not keep:
            steps.append(("root", lambda: shutil.rmtree(self.root, ignore_errors=True)))
        try:
            for what, step in steps:
                t0 = time.monotonic()
                step()
                if time.monotonic() - t0 > 3.0:  # a slow teardown step is a clue, say which
                    print(f"xpupool test node: stopping {what} took {time.monotonic() - t0:.1f} s", file=sys.stderr)
            if keep:
                print(f"xpupool test node: logs kept under {self.root}", file=sys.stderr)
            STATE_FILE.unlink(missing_ok=True)
        finally:
            self._lock.release()

    def __enter__(self) -> NodeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- components ------------------------------------------------------------------------
    def _kubeconfig_for(self, user: str, file_name: str) -> Path:
        cp = self.control_plane
        return cp.write_kubeconfig(cp.workdir / file_name, user, cp.user_tokens[user])

    def _start_controller_manager(self) -> None:
        cp = self.control_plane
        kubeconfig = self._kubeconfig_for("system:kube-controller-manager", "kcm.kubeconfig")
        port = free_port()
        cp.spawn(
            "kube-controller-manager",
            [
                str(self.kube_bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={cp.workdir / 'kcm-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--root-ca-file={cp.ca_file}",
                f"--service-account-private-key-file={cp.sa_key_file}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--cluster-name=xpupool-test",
                "--controllers=*",
                # Quick garbage collection of terminated pods and fast node-status reaction.
                "--terminated-pod-gc-threshold=50",
                "-v=1",
            ],
        )
        self._record_pids()

    def _start_containerd(self, timeout_s: float) -> None:
        cp = self.control_plane
        for sub in ("cni/net.d", "cni/ipam", "cdi", "host"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        _cgroup_dirs(create=True)
        (self.root / "cni/net.d/10-xpupool-node.conflist").write_text(json.dumps(self._cni_config(), indent=1))
        config = self.root / "containerd.toml"
        config.write_text(self._containerd_config())
        env = {"PATH": f"{self.node_bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root)}
        proc = cp.spawn("containerd", _netns_exec(str(self.node_bin_dir / "containerd"), f"--config={config}"), env=env)
        join_cgroup(proc.pid, "containerd")
        self._record_pids()
        cp.wait_ready(lambda: self._ctr_ok("version"), "containerd", timeout_s)

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "xpupool-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.root / "cni/ipam"),
                    },
                }
            ],
        }

    def _containerd_config(self) -> str:
        r = self.root
        return f"""version = 3
root = "{r}/containerd/root"
state = "{r}/containerd/state"
temp = "{r}/containerd/tmp"

[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  level = "info"

[plugins.'io.containerd.internal.v1.opt']
  path = "{r}/containerd/opt"
[plugins.'io.containerd.nri.v1.nri']
  socket_path = "{r}/nri.sock"
  plugin_path = "{r}/nri/plugins"
  plugin_config_path = "{r}/nri/conf.d"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  # CDI is always on in containerd 2.x; the agent writes its specs here.
  cdi_spec_dirs = ["{self.cdi_spec_dir}"]
  netns_mounts_under_state_dir = true
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which the CI machines do not grant even to
  # root: never ask runc to go below containerd's own value (the kubelet asks -998 for pause).
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{HOST_TOOLS["runc"]}"
        Root = "{r}/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{r}/cni/net.d"

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
"""

    def ctr(self, *args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
        """``ctr`` against this node's containerd, namespace ``k8s.io`` (the CRI's)."""
        return _run(
            str(self.node_bin_dir / "ctr"),
            f"--address={self.containerd_socket}",
            "--namespace=k8s.io",
            *args,
            timeout_s=timeout_s,
        )

    def _ctr_ok(self, *args: str) -> bool:
        if not self.containerd_socket.exists():
            return False
        try:
            self.ctr(*args, timeout_s=10)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False
        return True

    def import_image(self, archive: Path) -> None:
        """Import an OCI/docker image archive into the node's containerd (what a pull would do).

        The image keeps the name recorded in the archive, so pods refer to it by that name with
        ``imagePullPolicy: IfNotPresent`` (or ``Never``).
        """
        self.ctr("images", "import", str(archive))

    def images(self) -> list[str]:
        out = self.ctr("images", "list", "--quiet").stdout
        return [line for line in out.splitlines() if line.strip()]

    def _build_pause_image(self) -> Path:
        binary = self.root / "build" / "pause"
        binary.parent.mkdir(parents=True, exist_ok=True)
        _run("gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(PAUSE_SOURCE))
        archive = self.root / "build" / "pause.oci.tar"
        testing_oci.write_image(
            archive, PAUSE_IMAGE, [testing_oci.ImageFile(binary, "/pause", 0o755)], entrypoint=["/pause"]
        )
        return archive

    def import_busybox_image(self) -> str:
        """Import ``BUSYBOX_IMAGE`` (``/bin/sh`` and friends) and return its name."""
        archive = self.root / "build" / "busybox.oci.tar"
        if not archive.exists():
            testing_oci.write_image(
                archive,
                BUSYBOX_IMAGE,
                [testing_oci.ImageFile(HOST_TOOLS["busybox-static"], "/bin/busybox", 0o755)],
                entrypoint=["/bin/sh"],
                links={f"/bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS},
            )
            self.import_image(archive)
        return BUSYBOX_IMAGE

    def _start_kubelet(self) -> None:
        cp = self.control_plane
        kubelet_root = self.kubelet_root_dir
        kubelet_root.mkdir(parents=True, exist_ok=True)
        client_ca, _ = _kubelet_client_ca(self.root / "pki")
        kubeconfig = self._kubeconfig_for(f"system:node:{NODE_NAME}", "kubelet.kubeconfig")
        config = self.root / "kubelet.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    # This kernel has cgroup v1 only; kubelet >= 1.35 refuses it unless told.
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": f"/{CGROUP_PARENT}",
                    "cgroupsPerQOS": True,
                    "enforceNodeAllocatable": ["pods"],
                    "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
                    "address": NODE_IP,
                    "port": 10250,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": 10248,
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(client_ca)},
                    },
                    "authorization": {"mode": "Webhook"},
                    "podLogsDir": str(self.root / "pod-logs"),
                    "volumePluginDir": str(self.root / "volume-plugins"),
                    "staticPodPath": str(self.root / "manifests"),
                    "failSwapOn": False,
                    "protectKernelDefaults": False,
                    # Not below the inherited value: CAP_SYS_RESOURCE may be missing (see containerd).
                    "oomScoreAdj": 0,
                    "makeIPTablesUtilChains": False,
                    "resolvConf": "/etc/resolv.conf",
                    "clusterDomain": "cluster.local",
                    "maxPods": 110,
                    "serializeImagePulls": False,
                    "nodeStatusUpdateFrequency": "5s",
                    "syncFrequency": "10s",
                    "fileCheckFrequency": "5s",
                    # The disk is shared with the rest of the machine: evict on memory only.
                    "evictionHard": {"memory.available": "100Mi"},
                    "imageGCHighThresholdPercent": 100,
                    "shutdownGracePeriod": "0s",
                    "containerLogMaxSize": "10Mi",
                }
            )
        )
        (self.root / "manifests").mkdir(exist_ok=True)
        proc = cp.spawn(
            "kubelet",
            _netns_exec(
                str(self.kube_bin_dir / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={kubelet_root}",
                f"--cert-dir={kubelet_root / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "-v=2",
            ),
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root)},
        )
        join_cgroup(proc.pid, "kubelet")
        self._record_pids()

    def _start_kube_proxy(self) -> None:
        cp = self.control_plane
        kubeconfig = self._kubeconfig_for("system:kube-proxy", "kube-proxy.kubeconfig")
        config = self.root / "kube-proxy.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(kubeconfig)},
                    "mode": "iptables",
                    "oomScoreAdj": 0,
                    "hostnameOverride": NODE_NAME,
                    "bindAddress": NODE_IP,
                    "clusterCIDR": POD_CIDR,
                    "healthzBindAddress": "127.0.0.1:10256",
                    "metricsBindAddress": "127.0.0.1:10249",
                    # Leave the machine-global conntrack tunables alone.
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                }
            )
        )
        proc = cp.spawn(
            "kube-proxy",
            _netns_exec(str(self.kube_bin_dir / "kube-proxy"), f"--config={config}", "-v=1"),
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root)},
        )
        join_cgroup(proc.pid, "kube-proxy")
        self._record_pids()

    # -- API helpers (sync: used during start-up and by tests that need no event loop) -------
    def api_get(self, path: str) -> dict[str, Any] | None:
        """GET ``path`` as the admin; ``None`` on 404."""
        cp = self.control_plane
        ctx = ssl.create_default_context(cafile=str(cp.ca_file))
        req = urllib.request.Request(cp.server + path, headers={"Authorization": f"Bearer {cp.token}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def node_ready(self) -> bool:
        try:
            node = self.api_get(f"/api/v1/nodes/{NODE_NAME}")
        except OSError:
            return False
        conditions = (node or {}).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _wait_node_ready(self, timeout_s: float) -> None:
        self.control_plane.wait_ready(self.node_ready, "kubelet", timeout_s)

    def _wait_service_account(self, namespace: str, timeout_s: float) -> None:
        """Pods are admitted only once the controller-manager made the namespace's ``default``
        ServiceAccount and ``kube-root-ca.crt`` ConfigMap (ServiceAccount admission is on)."""

        def ready() -> bool:
            sa = self.api_get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
            ca = self.api_get(f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt")
            return sa is not None and ca is not None

        self.control_plane.wait_ready(ready, "kube-controller-manager", timeout_s)

    def wait_namespace_ready(self, namespace: str, timeout_s: float = 60.0) -> None:
        self._wait_service_account(namespace, timeout_s)

    def log_tail(self, name: str, lines: int = 60) -> str:
        """Last lines of a component's log: etcd, kube-apiserver, kube-controller-manager,
        kube-scheduler, containerd, kubelet, kube-proxy."""
        return self.control_plane.log_tail(name, lines)


def _refuse_foreign_kubelet() -> None:
    """The kubelet's device-plugin directory is machine-wide and cleared on start: never run
    next to a real kubelet (e.g. on a developer's Kubernetes node)."""
    import socket

    sock_path = DEVICE_PLUGIN_DIR / "kubelet.sock"
    if not sock_path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(sock_path))
        except OSError:
            return  # a stale socket file, nobody serves it
    raise RuntimeError(f"a kubelet already serves {sock_path} on this machine; the test node will not start here")


def _save_state(root: Path, pids: list[int], host: HostSnapshot) -> None:
    STATE_FILE.write_text(json.dumps({"root": str(root), "pids": pids, "host": host.to_json()}))


def _apiserver_node_args(root: Path) -> tuple[str, ...]:
    cert, key = _kubelet_client_cert(root / "pki")
    return (
        # No kube-proxy on the host: reach webhook (and aggregated API) services through their
        # endpoints' pod IPs, which the host routes into the node.
        "--enable-aggregator-routing=true",
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-client-certificate={cert}",
        f"--kubelet-client-key={key}",
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _kubelet_client_ca(pki: Path) -> tuple[Path, Path]:
    """The CA the kubelet trusts for client certificates (only the apiserver's is signed)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_file, key_file = pki / "kubelet-client-ca.crt", pki / "kubelet-client-ca.key"
    if cert_file.exists():
        return cert_file, key_file
    pki.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xpupool-test-kubelet-client-ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def _kubelet_client_cert(pki: Path) -> tuple[Path, Path]:
    """The apiserver's client certificate for kubelet calls (logs, exec): ``system:masters``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert_file, ca_key_file = _kubelet_client_ca(pki)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-kubelet-client"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=2))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = pki / "apiserver-kubelet-client.crt", pki / "apiserver-kubelet-client.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return cert_file, key_file
