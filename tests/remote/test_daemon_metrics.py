"""The daemon's metrics as the node agent exports them (``/metrics``): re-read from the control
socket on every scrape, labelled with the node, ``xpupool_remote_daemon_up`` 0 and nothing stale when
the daemon does not answer. Daemon backend: the fake libcuda TEST DOUBLE."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from xpupool.remote import daemon as d
from xpupool.remote.metrics import DaemonMetricsCollector
from xpupool.remote.testing import LocalRig

pytestmark = pytest.mark.native


def _scrape(collector: DaemonMetricsCollector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # duck-typed Collector
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_agent_exports_the_daemons_metrics_with_its_node(rig: LocalRig) -> None:
    rig.grant("alloc-x")
    run = subprocess.run([str(d.native_dir() / "remote" / "tests" / "t_remote_driver"), "alloc", "8"],
                         env=rig.client_env(rig.token("alloc-x")), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    refused = subprocess.run([str(d.native_dir() / "remote" / "tests" / "t_remote_driver"), "alloc", "1"],
                             env=rig.client_env(rig.token("alloc-unknown")), capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 3
    assert rig.wait_idle()
    got = _scrape(DaemonMetricsCollector(rig.control, node="gpu-7"))
    assert got[("xpupool_remote_daemon_up", frozenset({("node", "gpu-7")}))] == 1
    errors = {dict(labels)["reason"]: v for (name, labels), v in got.items()
              if name == "xpupool_remote_session_errors_total"}
    assert errors["refused_auth"] == 1 and sum(errors.values()) == 1, errors
    assert all(dict(labels).get("node") == "gpu-7" for _, labels in got)
    assert got[("xpupool_remote_api_calls_total", frozenset({("node", "gpu-7"), ("api", "cuMemAlloc_v2")}))] >= 1


def test_a_silent_daemon_reads_as_down_without_stale_values(tmp_path: Path) -> None:
    got = _scrape(DaemonMetricsCollector(d.Control(tmp_path / "no-daemon.sock", timeout_s=0.5), node="gpu-7"))
    assert got == {("xpupool_remote_daemon_up", frozenset({("node", "gpu-7")})): 0}
