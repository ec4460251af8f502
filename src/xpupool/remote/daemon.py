"""Running ``xpu-remoted`` and talking to its control socket (the GPU node's side of remoting).

* :func:`prepare_state` makes what a daemon needs once per node: an Ed25519 signing key and its public
  key (tokens), a private CA and a serving certificate for the node's names (TLS), directories for
  sockets, shim regions and the module cache. Idempotent: existing files are kept.
* :class:`DaemonProcess` starts the C daemon, waits for ``ready`` and reports its TCP port.
* :class:`Control` is the node agent's channel: ``grant`` says which allocation may use which card and
  shim region (its slice), ``revoke`` ends its sessions (the worker processes exit, which frees
  their GPU memory), ``sessions`` and ``metrics`` report.

Binaries are found next to the package in a source checkout (``native/build/...``) or through
``XPUPOOL_NATIVE_DIR`` (the image sets it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import re
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from xpupool.kube import certs
from xpupool.remote import tokens

REPO_ROOT = Path(__file__).resolve().parents[3]
_FIELD = re.compile(r"^[\x21-\x7e]{1,511}$")


class RemoteError(RuntimeError):
    """The daemon or its control socket answered with an error (the message says which)."""


def native_dir() -> Path:
    """Where the built native artefacts live: ``$XPUPOOL_NATIVE_DIR`` or ``native/build`` of a checkout."""
    env = os.environ.get("XPUPOOL_NATIVE_DIR")
    return Path(env) if env else REPO_ROOT / "native" / "build"


def daemon_binary() -> Path:
    return native_dir() / "remote" / "xpu-remoted"


def client_lib_dir() -> Path:
    """The directory holding the client ``libcuda.so.1`` (put first on the library path)."""
    return native_dir() / "remote" / "client"


def shim_library() -> Path:
    return native_dir() / "libxpushim.so"


@dataclasses.dataclass(frozen=True, slots=True)
class StateFiles:
    """Per-node daemon state under one directory."""

    root: Path

    @property
    def signing_key(self) -> Path:
        return self.root / "token-signing.pem"

    @property
    def token_keys(self) -> Path:
        return self.root / "token-keys.pem"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def tls_cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def tls_key(self) -> Path:
        return self.root / "tls.key"

    @property
    def control(self) -> Path:
        return self.root / "control.sock"

    @property
    def unix(self) -> Path:
        return self.root / "remoted.sock"

    @property
    def regions(self) -> Path:
        return self.root / "regions"

    @property
    def modules(self) -> Path:
        return self.root / "modules"


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def prepare_state(root: Path, *, hosts: Sequence[str], now: dt.datetime) -> StateFiles:
    """Create keys, TLS files and directories under ``root`` if missing; ``hosts`` go in the cert SANs."""
    st = StateFiles(root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    st.regions.mkdir(exist_ok=True)
    st.modules.mkdir(exist_ok=True, mode=0o700)
    if not st.signing_key.exists():
        key = tokens.new_signing_key()
        _write_private(st.signing_key, tokens.private_pem(key))
        st.token_keys.write_bytes(tokens.public_pem(key))
    if not st.tls_cert.exists():
        dns = [h for h in hosts if not _is_ip(h)] or ["localhost"]
        ips = [h for h in hosts if _is_ip(h)]
        bundle = certs.new_bundle(dns_names=dns, ip_addresses=ips, now=now, ca_common_name="xpupool-remote-ca")
        st.ca_cert.write_bytes(bundle.ca_cert_pem)
        st.tls_cert.write_bytes(bundle.cert_pem)
        _write_private(st.tls_key, bundle.key_pem)
    return st


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class Card:
    """A card the daemon serves: its UUID and the ``CUDA_VISIBLE_DEVICES`` value selecting it."""

    uuid: str
    visible: str = ""

    def arg(self) -> str:
        return f"{self.uuid}={self.visible}" if self.visible else self.uuid


@dataclasses.dataclass(frozen=True, slots=True)
class DaemonConfig:
    state: StateFiles
    node: str
    cards: tuple[Card, ...]
    listen: str | None = "127.0.0.1:0"
    unix: bool = True
    tls: bool = True
    shim: Path | None = None  # None: no libxpushim in the workers (tests of the daemon alone only)
    driver: str = "libcuda.so.1"
    max_sessions: int = 64
    max_bulk_mib: int = 64
    keepalive_ms: int = 1000
    idle_timeout_ms: int = 10_000
    handshake_timeout_ms: int = 5000
    log_level: int = 1

    def argv(self, binary: Path) -> list[str]:
        st = self.state
        argv = [str(binary), "--token-keys", str(st.token_keys), "--node", self.node, "--control", str(st.control),
                "--module-cache", str(st.modules), "--max-sessions", str(self.max_sessions),
                "--max-bulk-mib", str(self.max_bulk_mib), "--keepalive-ms", str(self.keepalive_ms),
                "--idle-timeout-ms", str(self.idle_timeout_ms), "--handshake-timeout-ms",
                str(self.handshake_timeout_ms), "--driver", self.driver, "--log", str(self.log_level)]
        for card in self.cards:
            argv += ["--card", card.arg()]
        if self.listen:
            argv += ["--listen", self.listen]
            tls = ["--tls-cert", str(st.tls_cert), "--tls-key", str(st.tls_key)]
            argv += tls if self.tls else ["--insecure-plaintext"]
        if self.unix:
            argv += ["--unix", str(st.unix)]
        argv += ["--shim", str(self.shim)] if self.shim else ["--no-shim"]
        return argv


class DaemonProcess:
    """A running ``xpu-remoted``; use as a context manager (stops it, and every session, on exit)."""

    def __init__(self, cfg: DaemonConfig, *, env: dict[str, str] | None = None, binary: Path | None = None,
                 stderr: IO[bytes] | int | None = None, startup_timeout_s: float = 15.0) -> None:
        self.cfg = cfg
        self.proc = subprocess.Popen(cfg.argv(binary or daemon_binary()), stdout=subprocess.PIPE, stderr=stderr,
                                     env=env, start_new_session=True)
        self.tcp_port: int | None = None
        ready = threading.Event()
        lines: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").strip()
                lines.append(line)
                m = re.match(r"listening tcp \S+:(\d+)", line)
                if m:
                    self.tcp_port = int(m.group(1))
                if line == "ready":
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(startup_timeout_s) or self.proc.poll() is not None:
            self.stop()
            raise RemoteError(f"xpu-remoted did not start: {' | '.join(lines)}")
        self.control = Control(cfg.state.control)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def endpoint(self) -> str:
        if self.tcp_port is None:
            raise RemoteError("the daemon has no TCP listener")
        host = (self.cfg.listen or "").rsplit(":", 1)[0] or "127.0.0.1"
        return f"{host}:{self.tcp_port}"

    @property
    def unix_endpoint(self) -> str:
        return f"unix:{self.cfg.state.unix}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclasses.dataclass(frozen=True, slots=True)
class SessionRow:
    session: int
    pid: int
    state: str
    alloc: str
    tenant: str
    card: str
    calls: int
    bytes_in: int
    bytes_out: int
    gpu_mem_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class GrantRow:
    alloc: str
    card: str
    region: str  # "-": none
    tenant: str


class Control:
    """The daemon's control socket (unix, mode 0600): one command per connection."""

    def __init__(self, path: Path, *, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def _ask(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout_s)
            s.connect(str(self.path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        answer = b"".join(chunks).decode()
        if answer.startswith("error"):
            raise RemoteError(f"xpu-remoted: {answer.strip()}")
        return answer

    def ping(self) -> None:
        self._ask("ping")

    def grant(self, *, alloc: str, card: str, region: Path | None, tenant: str) -> None:
        """Allow sessions of ``alloc`` on ``card``, their workers bound to shim ``region``."""
        fields = [alloc, card, str(region) if region else "-", tenant or "-"]
        for f in fields:
            if not _FIELD.match(f):
                raise ValueError(f"grant field {f!r} must be 1..511 printable characters without spaces")
        self._ask("grant " + " ".join(fields))

    def revoke(self, alloc: str) -> int:
        """Forget ``alloc`` and end its sessions; returns how many were ended."""
        answer = self._ask(f"revoke {alloc}")
        return int(answer.split()[1])

    def grants(self) -> list[GrantRow]:
        """Every grant the daemon holds (an agent rebuilds its view from these after a restart)."""
        return [GrantRow(*line.split()[:4]) for line in self._ask("grants").splitlines()
                if line and line != "end" and len(line.split()) >= 4]

    def sessions(self) -> list[SessionRow]:
        rows = []
        for line in self._ask("sessions").splitlines():
            if line == "end" or not line:
                continue
            f = line.split()
            rows.append(SessionRow(int(f[0]), int(f[1]), f[2], f[3], f[4], f[5], int(f[6]), int(f[7]), int(f[8]),
                                   int(f[9])))
        return rows

    def metrics(self) -> str:
        return self._ask("metrics")
