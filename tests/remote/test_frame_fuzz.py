"""Fuzzing the daemon's frame decoder (ASan/UBSan build): 10^6 mutated frames through the worker's
real frame loop and every argument decoder, against a null backend (TEST DOUBLE, no driver), plus
10^5 mutated session tokens. 0 crashes (a sanitizer report aborts the run), every refused frame
leaves the heap unchanged (nothing allocated before validation)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from xpupool.remote import daemon as d

pytestmark = pytest.mark.native
FRAMES = int(os.environ.get("XPUPOOL_FUZZ_FRAMES", "1000000"))


def test_one_million_mutated_frames_no_crash_no_allocation_before_validation() -> None:
    subprocess.run(["make", "-s", "-C", str(d.REPO_ROOT / "native" / "remote"), f"PYTHON={sys.executable}", "fuzz"],
                   check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="halt_on_error=1")
    run = subprocess.run([str(d.native_dir() / "remote-asan" / "tests" / "fuzz_frames"), str(FRAMES), "1"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    m = re.search(r"frames (\d+) served (\d+) refused (\d+) alloc_before_validation (\d+) tokens (\d+) "
                  r"token_accepted (\d+)", run.stdout)
    assert m, run.stdout
    frames, served, refused, leaks, tokens, accepted = map(int, m.groups())
    assert frames == FRAMES == served + refused
    assert served > FRAMES // 5 and refused > FRAMES // 5  # both paths really exercised
    assert leaks == 0
    assert tokens == FRAMES // 10 and accepted == 0  # no mutated token passes the signature check
