"""Authentication and admission: a connection without a valid session token for this node, this card
and a granted allocation is refused before the worker loads any driver (0 backend loads, 0 calls).
Daemon backend: the fake libcuda TEST DOUBLE."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from xpupool.remote import daemon as d
from xpupool.remote import tokens
from xpupool.remote.testing import LocalRig

pytestmark = pytest.mark.native


def _count_devices(rig: LocalRig, token: str | None, **kw: str) -> subprocess.CompletedProcess[str]:
    """A client that only calls cuInit + cuDeviceGetCount (t_remote_driver alloc needs cuInit first)."""
    return subprocess.run([str(d.native_dir() / "remote" / "tests" / "t_remote_driver"), "alloc", "1"],
                          env=rig.client_env(token, **kw), capture_output=True, text=True, timeout=30)


def _other_key(tmp_path: Path) -> Path:
    path = tmp_path / "other.pem"
    path.write_bytes(tokens.private_pem(tokens.new_signing_key()))
    return path


@pytest.mark.parametrize(
    "case",
    ["no token", "garbage", "expired", "signed by another key", "another card", "another node", "not granted",
     "not yet valid"],
)
def test_refused_before_any_driver_call(rig: LocalRig, tmp_path: Path, case: str) -> None:
    rig.grant("alloc-ok")
    now = int(time.time())
    token: str | None = {
        "no token": lambda: None,
        "garbage": lambda: "xpr1.bm9wZQ.AAAA",
        "expired": lambda: rig.token("alloc-ok", now_s=now - 700, ttl_s=600),
        "signed by another key": lambda: rig.token("alloc-ok", key_path=_other_key(tmp_path)),
        "another card": lambda: rig.token("alloc-ok", card="GPU-99999999-1111-2222-3333-444444444449"),
        "another node": lambda: rig.token("alloc-ok", node="gpu-node-2"),
        "not granted": lambda: rig.token("alloc-unknown"),
        "not yet valid": lambda: rig.token("alloc-ok", now_s=now + 3600),
    }[case]()
    run = _count_devices(rig, token)
    assert run.returncode == 3, run.stdout + run.stderr  # cuInit failed
    if token is not None:
        assert "refused" in run.stderr
    time.sleep(0.2)  # the worker exits right after refusing; the supervisor reaps it
    assert rig.metric("xpupool_remote_backend_loads_total") == 0
    assert rig.metric("xpupool_remote_api_calls_total") == 0
    refused = 0 if token is None else 1  # without a token the client does not even connect
    assert rig.metric("xpupool_remote_session_errors_total") == refused  # the refusal, by reason
    assert rig.metric("xpupool_remote_session_errors_total", reason="refused_auth") == refused
    # the same daemon still serves a valid token
    ok = _count_devices(rig, rig.token("alloc-ok"))
    assert ok.returncode == 0, ok.stderr
    assert rig.metric("xpupool_remote_backend_loads_total") == 1


def test_revoking_a_grant_ends_its_sessions_and_refuses_new_ones(rig: LocalRig) -> None:
    rig.grant("alloc-r")
    token = rig.token("alloc-r")
    holder = subprocess.Popen([str(d.native_dir() / "remote" / "tests" / "t_remote_driver"), "loop"],
                              env=rig.client_env(token), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "READY"
        assert rig.control.revoke("alloc-r") == 1
        out, _ = holder.communicate(timeout=10)
        assert "error 46" in out  # CUDA_ERROR_DEVICE_UNAVAILABLE: the session is gone, never a hang
    finally:
        holder.kill()
    assert _count_devices(rig, token).returncode == 3
    time.sleep(0.2)
    # a revoked session is not an error; the refused reconnection is
    assert rig.metric("xpupool_remote_session_errors_total", reason="worker_crashed") == 0
    assert rig.metric("xpupool_remote_session_errors_total", reason="refused_auth") == 1


def test_plaintext_tcp_needs_an_explicit_opt_in(rig: LocalRig) -> None:
    """A client never sends its token in clear over TCP unless told the network is isolated."""
    rig.grant("alloc-p")
    env = rig.client_env(rig.token("alloc-p"))
    env.pop("XPUPOOL_REMOTE_CA")
    run = subprocess.run([str(d.native_dir() / "remote" / "tests" / "t_remote_driver"), "alloc", "1"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 3
    assert "refusing to send the token in clear" in run.stderr
