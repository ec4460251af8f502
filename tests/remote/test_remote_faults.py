"""Faults end a session with an error, never a hang, and never leak a worker or its GPU memory.
Daemon backend: the fake libcuda TEST DOUBLE (CPU-tested)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpupool.agent import shim_region as sr
from xpupool.kube import testing as kube_testing
from xpupool.remote import daemon as d
from xpupool.remote.testing import FAKE_CARD_UUID, LocalRig, local_rig

pytestmark = pytest.mark.native
DRIVER = ["remote", "tests", "t_remote_driver"]
CLIENT_TIMEOUT_MS = 2500  # the client's default silence limit
MIB = 1024 * 1024


def _driver(*args: str) -> list[str]:
    return [str(d.native_dir().joinpath(*DRIVER)), *args]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its memory is already freed)
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


def _wait_until(cond: object, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if cond():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout_s} s")


def _start_loop(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line == "READY", line + (p.stderr.read() if p.stderr else "")
    return p


def _error_after(p: subprocess.Popen[str]) -> tuple[int, float, int]:
    out, err = p.communicate(timeout=30)
    m = re.search(r"error (\d+) after ([\d.]+) s\nthen (\d+)", out)
    assert m, out + err
    return int(m.group(1)), float(m.group(2)), int(m.group(3))


def test_daemon_sigkill_gives_the_client_an_error_within_3s(rig: LocalRig) -> None:
    rig.grant("alloc-k")
    loop = _start_loop(_driver("loop"), rig.client_env(rig.token("alloc-k")))
    workers = [s.pid for s in rig.control.sessions()]
    os.kill(rig.daemon.pid, signal.SIGKILL)
    code, after_s, then = _error_after(loop)
    assert code == 46 and then == 46  # CUDA_ERROR_DEVICE_UNAVAILABLE, and it stays so (no retry, no hang)
    assert after_s <= 3.0
    # the workers die with their supervisor (PR_SET_PDEATHSIG): nothing keeps GPU memory
    _wait_until(lambda: not any(_alive(pid) for pid in workers), 3.0)


def test_client_sigkill_reclaims_the_worker_and_its_memory(rig: LocalRig, tmp_path: Path) -> None:
    region = tmp_path / "region"
    sr.ShimRegion.create(region, [sr.DeviceConfig(uuid=FAKE_CARD_UUID, mem_limit_bytes=512 * MIB)],
                         container_key=7).close()
    rig.grant("alloc-c", region=region)
    token = rig.token("alloc-c")
    holder = _start_loop(_driver("hold", "384"), rig.client_env(token))
    (session,) = rig.control.sessions()
    assert session.gpu_mem_bytes == 384 * MIB
    holder.kill()
    holder.wait()
    reclaimed_s = _wait_until(lambda: not _alive(session.pid) and not rig.control.sessions(), 10.0)
    assert reclaimed_s <= 2.0  # a closed connection is noticed at once (grace applies to silent clients)
    # the slice's ledger has the memory back: a new session of the allocation gets 384 MiB again
    again = subprocess.run(_driver("alloc", "384"), env=rig.client_env(token), capture_output=True, text=True,
                           timeout=30)
    assert again.returncode == 0, again.stdout + again.stderr


@contextlib.contextmanager
def _netns() -> Iterator[tuple[str, str, str, str]]:
    """A network namespace joined to the host by a veth pair: (ns, host if, host ip, ns ip)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        why = "network-namespace fault test needs root and iproute2"
        if kube_testing.tests_must_not_skip():
            pytest.fail(why)
        pytest.skip(why)
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"xpr{tag}", f"xh{tag}", f"xc{tag}"
    octet = 1 + secrets.randbelow(250)
    host_ip, ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        ip("netns", "add", ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_if, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_network_cut_gives_the_client_an_error_within_3s_and_frees_the_worker_after_grace(
        native_build: Path, tmp_path: Path) -> None:
    grace_ms = 2000
    with _netns() as (ns, host_if, host_ip, _), local_rig(tmp_path / "state", listen=f"{host_ip}:0",
                                                          hosts=(host_ip,), idle_timeout_ms=grace_ms) as rig:
        rig.grant("alloc-n")
        env = rig.client_env(rig.token("alloc-n"))
        loop = _start_loop(["ip", "netns", "exec", ns, *_driver("loop")], env)
        (session,) = rig.control.sessions()
        subprocess.run(["ip", "link", "set", host_if, "down"], check=True)  # the cut: packets go nowhere
        cut = time.monotonic()
        code, after_s, then = _error_after(loop)
        assert code == 46 and then == 46
        assert after_s <= 3.0, after_s
        # the worker hears nothing from the client either: it ends after the idle grace
        _wait_until(lambda: not _alive(session.pid), grace_ms / 1000 + 2.0 - (time.monotonic() - cut))
