"""``xpupool simulate`` on a fresh install and on variants that are not packaged.

* The wheel is built from this checkout (its build hook copies the default openb variant and the
  GPU node list in, from ../shared/traces), installed into a new virtualenv in a temporary folder,
  and ``xpupool simulate`` runs from an empty directory with no trace folder anywhere: it must
  replay the packaged trace and give exactly the figure the workspace's trace gives.
* Other variants come from the trace's public source into a cache. Here the "public source" is a
  local HTTP server over the shared trace folder (``XPUPOOL_OPENB_SOURCE``): the download is
  verified and cached, a second run works with the server gone; wrong bytes are refused and
  nothing is cached; with no server at all the user gets one clear line, not a traceback.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpupool.sim.openb import trace_dir
from xpupool.sim.openb_data import SHA256, pods_name

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--seeds", "42", "--policy", "random", "--jobs", "1", "--no-compare-published"]


def shared_csv() -> Path:
    folder = trace_dir() / "csv"
    if not (folder / pods_name("default")).is_file():
        pytest.fail(f"the openb trace is missing ({folder}); tests read it from ../shared/traces or $XPUPOOL_TRACES")
    return folder


def clean_env(tmp: Path, source: str) -> dict[str, str]:
    """No trace folder reachable: no $XPUPOOL_TRACES, a fresh cache, downloads only from ``source``."""
    env = {k: v for k, v in os.environ.items() if k not in ("XPUPOOL_TRACES", "VIRTUAL_ENV", "PYTHONPATH")}
    env.update(XPUPOOL_CACHE=str(tmp / "cache"), XPUPOOL_OPENB_SOURCE=source, COLUMNS="100", NO_COLOR="1")
    return env


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/csv/"  # nothing listens there once the socket is closed


@pytest.fixture
def source_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a copy of the shared csv folder (the test can alter the copy)."""
    served = tmp_path / "served"
    shutil.copytree(shared_csv(), served)
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def simulate(python: str, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "xpupool.cli.main", "simulate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def unallocated(summary_file: Path) -> float:
    value: float = json.loads(summary_file.read_text())["policies"]["random"]["unallocated_pct_at_100"]["mean"]
    return value


def test_wheel_in_a_fresh_venv_simulates_the_packaged_trace_from_an_empty_directory(tmp_path: Path) -> None:
    shared_csv()
    wheels = tmp_path / "wheels"
    env = {**os.environ, "XPUPOOL_REQUIRE_TRACE_DATA": "1"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(ROOT)], env=env, capture_output=True, text=True, timeout=300,
                           check=False)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("xpupool-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", str(wheel)],
                             capture_output=True, text=True, timeout=600, check=False)
    assert install.returncode == 0, install.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run([str(venv / "bin" / "xpupool"), "simulate", *QUICK, "--json", str(tmp_path / "fresh.json")],
                         cwd=empty, env=clean_env(tmp_path, closed_port_url()), capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "openb_pod_list_default.csv" in run.stdout and not (tmp_path / "cache").exists()  # nothing downloaded
    assert list(empty.iterdir()) == []
    # the live views need the cluster clients (the kube extra): one clear line, no traceback
    status = subprocess.run([str(venv / "bin" / "xpupool"), "status", "--kubeconfig", str(empty / "none")],
                            cwd=empty, capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 2 and "pip install 'xpupool[kube]'" in status.stdout, status.stdout + status.stderr
    # the packaged copy is the workspace's trace: the same replay gives the same figure
    here = simulate(sys.executable, ROOT, dict(os.environ), *QUICK, "--json", str(tmp_path / "workspace.json"))
    assert here.returncode == 0, here.stderr
    assert unallocated(tmp_path / "fresh.json") == unallocated(tmp_path / "workspace.json")


def test_other_variants_are_downloaded_verified_and_cached(tmp_path: Path,
                                                          source_server: tuple[str, Path]) -> None:
    url, _ = source_server
    empty = tmp_path / "empty"
    empty.mkdir()
    first = simulate(sys.executable, empty, clean_env(tmp_path, url), *QUICK, "--variant", "gpushare40")
    assert first.returncode == 0, first.stdout + first.stderr
    cached = tmp_path / "cache" / "traces" / "alibaba-gpu-2023" / "csv" / pods_name("gpushare40")
    assert cached.is_file() and cached.read_bytes() == (shared_csv() / pods_name("gpushare40")).read_bytes()
    assert "openb_pod_list_gpushare40.csv" in first.stdout
    # the cache serves the next run: the source may be gone
    again = simulate(sys.executable, empty, clean_env(tmp_path, closed_port_url()), *QUICK, "--variant", "gpushare40")
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_source_serving_other_bytes_is_refused_and_nothing_is_cached(
        tmp_path: Path, source_server: tuple[str, Path]) -> None:
    url, served = source_server
    name = pods_name("cpu050")
    (served / name).write_text((served / name).read_text().replace("openb-pod-0001", "openb-pod-9999"))
    run = simulate(sys.executable, tmp_path, clean_env(tmp_path, url), *QUICK, "--variant", "cpu050")
    assert run.returncode == 2
    assert "SHA-256 differs" in run.stdout and "Traceback" not in run.stdout + run.stderr
    assert not (tmp_path / "cache" / "traces" / "alibaba-gpu-2023" / "csv" / name).exists()


def test_offline_is_one_clear_line(tmp_path: Path) -> None:
    run = simulate(sys.executable, tmp_path, clean_env(tmp_path, closed_port_url()), *QUICK, "--variant",
                   "multigpu50")
    assert run.returncode == 2
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("trace not available: cannot download"), run.stdout
    assert "offline?" in lines[0] and "Traceback" not in run.stderr
    unknown = simulate(sys.executable, tmp_path, clean_env(tmp_path, closed_port_url()), *QUICK, "--variant", "nope")
    assert unknown.returncode == 2 and "unknown variant 'nope'" in unknown.stdout + unknown.stderr


def test_pinned_checksums_are_the_shared_trace_files() -> None:
    import hashlib

    folder = shared_csv()
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.csv")}
    assert on_disk == SHA256
