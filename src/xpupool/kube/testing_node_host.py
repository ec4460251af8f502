"""Machine-level plumbing of the test node (:mod:`xpupool.kube.testing_node`): what it touches on
the host outside its own root, and how that is set up, found and removed again.

The names here are fixed (network namespace, veth, cgroup parent, lock and state files), so only
one test node runs on a machine at a time: :class:`MachineLock` serialises them, and the lock
holder removes what a crashed instance left (:func:`clean_stale_instance`). :func:`leftovers`
lists anything an instance left behind; it is empty after a clean stop. Test tooling only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NETNS = "xpupool-node"
HOST_LINK = "xpn-host"
HOST_IP = "10.213.0.1"
NODE_IP = "10.213.0.2"
POD_CIDR = "10.214.0.0/24"
CGROUP_PARENT = "xpupool-node"
LOCK_FILE = Path("/run/xpupool-node.lock")
#: The kubelet's device-plugin directory is a compile-time constant, whatever --root-dir says.
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
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
#: Kernel tunables the kubelet's container manager sets on start (restored on stop).
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
STATE_FILE = Path("/run/xpupool-node.json")


def run(*args: str, check: bool = True, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout_s)


def netns_exec(*args: str) -> list[str]:
    """``args`` run inside the node's network namespace (mount namespace stays the host's, so
    kubelet and containerd see each other's mounts)."""
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *args]


def cgroup_dirs(*, create: bool = False) -> list[Path]:
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
    for top in cgroup_dirs():
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


def unmount_under(root: Path, *, include_root: bool = True) -> None:
    """Lazily unmount every mount point below ``root`` (and ``root`` itself), deepest first."""
    prefix = str(root).rstrip("/")
    for _ in range(5):
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if (include_root and point == prefix) or point.startswith(prefix + "/"):
                points.append(point)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            run("umount", "-l", point, check=False)


def remove_tree(root: Path) -> None:
    """``rm -rf --one-file-system``: never follows a mount that failed to go into the host's files
    (containerd unpacks images under the root: many files)."""
    run("rm", "-rf", "--one-file-system", str(root), check=False, timeout_s=600)


def _netns_exists() -> bool:
    return Path(f"/run/netns/{NETNS}").exists()


def remove_network() -> None:
    if _netns_exists():
        run("ip", "netns", "delete", NETNS, check=False)
    if Path(f"/sys/class/net/{HOST_LINK}").exists():
        run("ip", "link", "delete", HOST_LINK, check=False)


def create_network() -> None:
    """Namespace ``NETNS`` joined to the host by a veth pair; pod CIDR routed through it."""
    run("ip", "netns", "add", NETNS)
    run("ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", "xpn-node")
    run("ip", "link", "set", "xpn-node", "netns", NETNS)
    run("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_LINK)
    run("ip", "link", "set", HOST_LINK, "up")
    inside = ["ip", "netns", "exec", NETNS]
    run(*inside, "ip", "link", "set", "lo", "up")
    run(*inside, "ip", "link", "set", "xpn-node", "name", "eth0")
    run(*inside, "ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
    run(*inside, "ip", "link", "set", "eth0", "up")
    run(*inside, "ip", "route", "add", "default", "via", HOST_IP)
    # The node routes for its pods; the bridge's traffic goes through iptables (kube-proxy).
    run(*inside, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    run(*inside, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", check=False)
    run("ip", "route", "add", POD_CIDR, "via", NODE_IP, "dev", HOST_LINK)


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
        remove_tree(root)
        remove_container_log_links(root)
    remove_network()
    if state.get("host"):
        HostSnapshot.from_json(state["host"]).restore()
    STATE_FILE.unlink(missing_ok=True)


def remove_container_log_links(root: Path) -> None:
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
    found += [f"cgroup {d}" for d in cgroup_dirs()]
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


def refuse_foreign_kubelet() -> None:
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


def save_state(root: Path, pids: list[int], host: HostSnapshot) -> None:
    STATE_FILE.write_text(json.dumps({"root": str(root), "pids": pids, "host": host.to_json()}))
