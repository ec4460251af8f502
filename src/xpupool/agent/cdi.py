"""CDI specs: how one vXPU container receives its own slice from the container runtime.

The device plugin's ``Allocate`` answers with a CDI device name derived only from the device IDs
the kubelet allocated (:func:`qualified_name`: ``xpupool.io/vxpu=v<digest of the sorted IDs>``);
``PreStartContainer`` learns which pod and container hold those IDs and writes the spec of that
name here, before the runtime creates the container. The runtime resolves the name at
``CreateContainer`` (containerd >= 1.7 with ``enable_cdi``, on by default in 2.x, calls the CDI
registry's ``Refresh`` right before injecting; CRI-O likewise) and applies the edits: device nodes,
environment, mounts.

Spec format: CDI ``cdiVersion`` 0.5.0 (the oldest that allows ``deviceNodes[].hostPath``; understood
by the CDI library of containerd 1.7.0 and later), ``kind`` ``xpupool.io/vxpu``, one device per
file, file name ``xpupool.io-vxpu_<name>.json`` (the CDI convention for transient specs) in a
spec directory the runtime scans (``/var/run/cdi`` by default: tmpfs, so nothing survives a
reboot, when every container is created, and its PreStart runs, again).

Writes are atomic: the document goes to a dot-file without the ``.json`` suffix (the registry only
reads ``*.json``/``*.yaml``) and is renamed into place, so a runtime never reads half a spec.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from xpupool.core.status import Status

CDI_VENDOR = "xpupool.io"
CDI_CLASS = "vxpu"
CDI_KIND = f"{CDI_VENDOR}/{CDI_CLASS}"
CDI_VERSION = "0.5.0"
DEFAULT_SPEC_DIR = Path("/var/run/cdi")
_PREFIX = f"{CDI_VENDOR}-{CDI_CLASS}_"


def device_name(device_ids: Iterable[str]) -> str:
    """The CDI device name for a set of device IDs (order and duplicates do not matter).

    Starts with a letter so that CDI 0.3/0.4 parsers accept it too."""
    digest = hashlib.sha256("\n".join(sorted(set(device_ids))).encode()).hexdigest()
    return f"v{digest[:32]}"


def qualified_name(device_ids: Iterable[str]) -> str:
    """``xpupool.io/vxpu=<device_name>``: what ``Allocate`` returns in ``cdi_devices``."""
    return f"{CDI_KIND}={device_name(device_ids)}"


@dataclass(frozen=True, slots=True)
class DeviceNode:
    path: str  # in the container
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True, slots=True)
class Mount:
    """One bind mount into the container (CDI ``containerEdits.mounts``)."""

    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class ContainerEdits:
    """What the runtime adds to one container (CDI ``containerEdits``)."""

    env: Mapping[str, str] = field(default_factory=dict)
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()


def spec_document(name: str, edits: ContainerEdits) -> dict[str, object]:
    """The CDI spec (JSON object) defining device ``name`` (pure, deterministic)."""
    container_edits: dict[str, object] = {}
    if edits.env:
        container_edits["env"] = [f"{k}={v}" for k, v in sorted(edits.env.items())]
    if edits.device_nodes:
        container_edits["deviceNodes"] = [
            {"path": d.path, "hostPath": d.host_path, "permissions": d.permissions} for d in edits.device_nodes
        ]
    if edits.mounts:
        container_edits["mounts"] = [
            {
                "hostPath": m.host_path,
                "containerPath": m.container_path,
                "type": "bind",
                "options": ["ro" if m.read_only else "rw", "nosuid", "nodev", "bind"],
            }
            for m in edits.mounts
        ]
    return {
        "cdiVersion": CDI_VERSION,
        "kind": CDI_KIND,
        "devices": [{"name": name, "containerEdits": container_edits}],
    }


def spec_file_name(name: str) -> str:
    return f"{_PREFIX}{name}.json"


class CdiSpecDir:
    """The agent's CDI specs in one spec directory (only files it named; others are never touched)."""

    def __init__(self, root: Path = DEFAULT_SPEC_DIR) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / spec_file_name(name)

    def write(self, name: str, edits: ContainerEdits) -> Status:
        """Write (or replace) the spec of device ``name`` atomically; idempotent."""
        text = json.dumps(spec_document(name, edits), indent=1, sort_keys=True) + "\n"
        target = self.path(name)
        temporary = self.root / f".{spec_file_name(name)}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if target.read_text() == text:
                    os.utime(target)  # keep it young for garbage collection
                    return Status.success()
            temporary.write_text(text)
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            return Status.error(f"cannot write CDI spec {target}: {exc}", plugin="cdi")
        return Status.success()

    def remove(self, name: str) -> bool:
        """Delete the spec of ``name``; True when a file was removed."""
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def names(self) -> dict[str, float]:
        """Device names of the specs present, with their modification time (seconds)."""
        found: dict[str, float] = {}
        if not self.root.is_dir():
            return found
        for path in self.root.glob(f"{_PREFIX}*.json"):
            with contextlib.suppress(FileNotFoundError):
                found[path.name[len(_PREFIX) : -len(".json")]] = path.stat().st_mtime
        return found

    def read(self, name: str) -> dict[str, object] | None:
        try:
            doc = json.loads(self.path(name).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return doc if isinstance(doc, dict) else None


@dataclass(frozen=True, slots=True)
class RuntimeSupport:
    """Whether a node's container runtime injects CDI devices the kubelet passes (``CDIDevices``)."""

    supported: bool
    reason: str


_RUNTIME = re.compile(r"^(?P<name>[a-z0-9.-]+)://v?(?P<major>\d+)\.(?P<minor>\d+)")


def runtime_support(runtime_version: str) -> RuntimeSupport:
    """Judge ``Node.status.nodeInfo.containerRuntimeVersion`` (e.g. ``containerd://2.2.9``).

    containerd 2.x: CDI on by default (``enable_cdi``). containerd 1.7: only with
    ``enable_cdi = true`` in its CRI plugin config, which the kubelet cannot see, so accepted with
    that condition stated. CRI-O >= 1.23: always on. Anything else (containerd <= 1.6, cri-dockerd,
    unknown) is refused: the container would start without its slice."""
    match = _RUNTIME.match(runtime_version.strip())
    if match is None:
        return RuntimeSupport(False, f"container runtime {runtime_version!r} is not one known to inject CDI devices")
    name, version = match["name"], (int(match["major"]), int(match["minor"]))
    if name == "containerd":
        if version >= (2, 0):
            return RuntimeSupport(True, f"{runtime_version}: CDI on unless enable_cdi = false")
        if version >= (1, 7):
            return RuntimeSupport(True, f"{runtime_version}: needs enable_cdi = true in the CRI plugin config")
        return RuntimeSupport(False, f"{runtime_version} cannot inject CDI devices (containerd >= 1.7 needed)")
    if name == "cri-o":
        if version >= (1, 23):
            return RuntimeSupport(True, f"{runtime_version}: CDI always on")
        return RuntimeSupport(False, f"{runtime_version} cannot inject CDI devices (CRI-O >= 1.23 needed)")
    return RuntimeSupport(False, f"container runtime {runtime_version} does not inject CDI devices from the kubelet")
