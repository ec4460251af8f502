"""A daemon on the fake ``libcuda`` TEST DOUBLE, for tests and CPU benchmarks (never a GPU claim).

:func:`local_rig` prepares a state directory, starts ``xpu-remoted`` whose workers load
``libxpushim`` and the test double from ``native/build/testdoubles`` (device memory there is real
host memory, so copies carry real data), and hands out grants, tokens and the environment a client
process needs (``LD_LIBRARY_PATH`` with the client ``libcuda.so.1`` first, endpoint, token, CA).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from xpupool.remote import daemon as d
from xpupool.remote import tokens

#: UUID of device 0 of the fake libcuda test double
FAKE_CARD_UUID = "GPU-00000000-1111-2222-3333-444444444440"
NODE = "gpu-node-1"


def build_native() -> None:
    """Build the shim, test doubles, cudacompat and the remoting binaries (make is incremental)."""
    for target in (d.REPO_ROOT / "native", d.REPO_ROOT / "native" / "remote"):
        subprocess.run(["make", "-s", "-C", str(target), f"PYTHON={sys.executable}", "all"], check=True,
                       stdout=subprocess.DEVNULL)


@dataclasses.dataclass
class LocalRig:
    """One daemon serving the test double's device 0 as card :data:`FAKE_CARD_UUID` of node :data:`NODE`."""

    state: d.StateFiles
    daemon: d.DaemonProcess

    @property
    def control(self) -> d.Control:
        return self.daemon.control

    def grant(self, alloc: str, *, region: Path | None = None, tenant: str = "tenant-a",
              card: str = FAKE_CARD_UUID) -> None:
        self.control.grant(alloc=alloc, card=card, region=region, tenant=tenant)

    def token(self, alloc: str, *, card: str = FAKE_CARD_UUID, node: str | None = None, ttl_s: int = 600,
              now_s: int | None = None, tenant: str = "tenant-a", key_path: Path | None = None) -> str:
        key = tokens.load_signing_key(key_path or self.state.signing_key)
        now = int(time.time()) if now_s is None else now_s
        return tokens.mint(key, tenant=tenant, alloc=alloc, card=card, node=node or self.daemon.cfg.node, now_s=now,
                           ttl_s=ttl_s)

    def client_env(self, token: str | None, *, endpoint: str | None = None, timeout_ms: int | None = None,
                   log: int = 1) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = str(d.client_lib_dir())
        env["XPUPOOL_REMOTE_ENDPOINT"] = endpoint or self.daemon.endpoint
        env["XPUPOOL_REMOTE_CA"] = str(self.state.ca_cert)
        env["XPUPOOL_REMOTE_LOG"] = str(log)
        if token is not None:
            env["XPUPOOL_REMOTE_TOKEN"] = token
        else:
            env.pop("XPUPOOL_REMOTE_TOKEN", None)
        if timeout_ms is not None:
            env["XPUPOOL_REMOTE_TIMEOUT_MS"] = str(timeout_ms)
        return env

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Wait until the daemon holds no session (every worker reaped, its metrics final)."""
        deadline = time.monotonic() + timeout_s
        while self.control.sessions():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include ``labels`` (0 when absent)."""
        total = 0.0
        for line in self.control.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head != name and not head.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total


@contextlib.contextmanager
def local_rig(root: Path, *, listen: str | None = "127.0.0.1:0", tls: bool = True, shim: bool = True,
              idle_timeout_ms: int = 10_000, keepalive_ms: int = 1000, log_level: int = 1,
              max_bulk_mib: int = 64, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
              node: str = NODE) -> Iterator[LocalRig]:
    state = d.prepare_state(root, hosts=[*hosts, node], now=dt.datetime.now(dt.UTC))
    cfg = d.DaemonConfig(state=state, node=node, cards=(d.Card(FAKE_CARD_UUID, "0"),), listen=listen, tls=tls,
                         shim=d.shim_library() if shim else None, idle_timeout_ms=idle_timeout_ms,
                         keepalive_ms=keepalive_ms, log_level=log_level, max_bulk_mib=max_bulk_mib)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(d.native_dir() / "testdoubles")
    env.pop("XPUSHIM_REGION", None)
    with d.DaemonProcess(cfg, env=env) as proc:
        yield LocalRig(state=state, daemon=proc)
