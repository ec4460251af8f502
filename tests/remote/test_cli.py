"""`xpupool remote daemon | token | run`: the quickest try-out, end to end, on the fake libcuda TEST
DOUBLE (the daemon's --test-double). CPU-tested."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from xpupool.remote import daemon as d

pytestmark = pytest.mark.native
XPUPOOL = [sys.executable, "-m", "xpupool.cli.main"]


def test_daemon_token_run(native_build: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    daemon = subprocess.Popen([*XPUPOOL, "remote", "daemon", "--test-double", "--listen", "127.0.0.1:0",
                               "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert daemon.stdout is not None
        port = None
        for line in daemon.stdout:
            m = re.match(r"listening tcp 127.0.0.1:(\d+)", line)
            port = int(m.group(1)) if m else port
            if line.strip() == "ready":
                break
        assert port, daemon.stderr.read() if daemon.stderr else ""
        tok = subprocess.run([*XPUPOOL, "remote", "token", "--state-dir", str(state), "--mem-mib", "512"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert tok.startswith("xpr1.")
        run = subprocess.run([*XPUPOOL, "remote", "run", "--endpoint", f"127.0.0.1:{port}", "--token", tok, "--ca",
                              str(state / "ca.pem"), "--", str(d.native_dir() / "remote" / "tests" / "t_remote_driver"),
                              "basic"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "total 512 MiB" in run.stdout  # the slice's quota, as the worker's libxpushim reports it
        over = subprocess.run([*XPUPOOL, "remote", "run", "--endpoint", f"127.0.0.1:{port}", "--token", tok, "--ca",
                               str(state / "ca.pem"), "--", str(d.native_dir() / "remote" / "tests" /
                                                               "t_remote_driver"), "alloc", "600"],
                              capture_output=True, text=True, timeout=60)
        assert over.returncode == 2, over.stdout + over.stderr
        metrics = subprocess.run([*XPUPOOL, "remote", "metrics", "--state-dir", str(state)], capture_output=True,
                                 text=True, check=True).stdout
        assert 'xpupool_remote_connections_total{result="admitted"} 2' in metrics
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=10)


def test_run_refuses_tcp_without_a_ca(tmp_path: Path) -> None:
    run = subprocess.run([*XPUPOOL, "remote", "run", "--endpoint", "10.0.0.1:7070", "--token", "x", "--", "true"],
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "needs --ca" in run.stdout + run.stderr
