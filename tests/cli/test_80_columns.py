"""Every table the CLI prints stays whole in an 80-column terminal: no cell cut to "…", no line
wider than the terminal. The live views (status, pods, queues) are checked the same way against
a real cluster in tests/view/test_live_cli.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rich.cells import cell_len

from xpupool.kube.testing import tests_must_not_skip as must_not_skip
from xpupool.sim.genai import genai_trace_dir


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "xpupool.cli.main", *args], capture_output=True, text=True,
                          timeout=600, check=False, env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def assert_fits_80(text: str) -> None:
    assert "…" not in text, text
    wide = [line for line in text.splitlines() if cell_len(line) > 80]
    assert not wide, "\n".join(wide)


def test_demo_fits_80_columns() -> None:
    text = run("demo")
    assert_fits_80(text)
    assert "urgent-serving" in text and "llm-finetune" in text and "Per-card slices" in text


def test_simulate_fits_80_columns_with_the_published_comparison() -> None:
    text = run("simulate", "--seeds", "42", "--policy", "random", "--jobs", "1")
    assert_fits_80(text)
    assert "FGD pub." in text and "random" in text


def test_timeshare_fits_80_columns() -> None:
    if genai_trace_dir() is None:
        if must_not_skip():
            pytest.fail("the GenAI trace is missing in CI (set XPUPOOL_TRACES)")
        pytest.skip("GenAI trace not on this machine (set XPUPOOL_TRACES)")
    text = run("timeshare")
    assert_fits_80(text)
    assert text.count("shared-") >= 3 and "gain" in text  # one transposed table per card size
