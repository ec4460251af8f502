"""Remoting benchmarks on CPU (loopback), each figure beside its raw-socket baseline from the same run.

    python bench/remote/run.py [--json out/remote_bench.json] [--quick]

Measures (daemon backend: the fake libcuda TEST DOUBLE, so these are transport/software figures,
never GPU figures):

* null call RTT (cuCtxGetFlags, a synchronous call whose reply carries one integer) over TCP
  loopback, plaintext and TLS, and over the unix socket; baseline: a 64 B / 16 B raw TCP ping-pong;
* fire-and-forget launch-shaped calls (cuLaunchKernel with a 64-byte parameter buffer) per second,
  and the client CPU per call;
* 64 MiB host-to-device and device-to-host copies; baseline: 64 MiB streamed one way over raw TCP.

Targets (issue 8 §6): RTT p50 <= 25 us and p99 <= 80 us; >= 100k launches/s; copies >= 75 % of raw
TCP. Benchmarks are not tests: the figures go to docs/benchmarks.md with the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from xpupool.remote import daemon as d  # noqa: E402
from xpupool.remote.testing import local_rig  # noqa: E402

BENCH = d.native_dir() / "remote" / "bench"


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stdout} {out.stderr[-2000:]}")
    return out.stdout


def _nums(pattern: str, text: str) -> list[float]:
    m = re.search(pattern, text)
    if not m:
        raise RuntimeError(f"no {pattern!r} in {text!r}")
    return [float(x) for x in m.groups()]


def _median(v: list[float]) -> float:
    v = sorted(v)
    return v[len(v) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    ap.add_argument("--rounds", type=int, default=7, help="alternating baseline/remote rounds per figure")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    n_rtt, n_launch = (2000, 50_000) if args.quick else (5000, 300_000)
    subprocess.run(["make", "-s", "-C", str(REPO / "native"), f"PYTHON={sys.executable}", "all"], check=True)
    subprocess.run(["make", "-s", "-C", str(REPO / "native" / "remote"), f"PYTHON={sys.executable}", "bench"],
                   check=True)
    res: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "machine": platform.machine()},
        "backend": "fake libcuda test double (CPU)",
        "method": f"{rounds} rounds, each the raw-socket baseline then the remote figure; medians of the rounds; "
                  "a copy figure is the best of 3 warm transfers in one process",
    }
    raw = str(BENCH / "raw_tcp")
    client = str(BENCH / "bench_client")
    pct = r"p50 ([\d.]+) p99 ([\d.]+) p999 ([\d.]+)"
    with tempfile.TemporaryDirectory() as tmp:
        for mode, tls in (("plaintext", False), ("tls", True)):
            with local_rig(Path(tmp) / mode, tls=tls) as rig:
                rig.grant("bench")
                env = rig.client_env(rig.token("bench"))
                if not tls:
                    env.pop("XPUPOOL_REMOTE_CA")
                    env["XPUPOOL_REMOTE_INSECURE"] = "1"
                uenv = rig.client_env(rig.token("bench"), endpoint=rig.daemon.unix_endpoint)
                rtt: dict[str, list[list[float]]] = {"raw": [], "remote": [], "unix": []}
                copy: dict[str, list[float]] = {"raw": [], "h2d": [], "d2h": []}
                for _ in range(rounds):
                    rtt["raw"].append(_nums(pct, _run([raw, "pingpong", str(n_rtt)])))
                    rtt["remote"].append(_nums(pct, _run([client, "rtt", str(n_rtt)], env)))
                    if not tls:
                        rtt["unix"].append(_nums(pct, _run([client, "rtt", str(n_rtt)], uenv)))
                    # 3 transfers per process, the best one: first-touch page faults are not the wire
                    copy["raw"].append(_nums(r"best (\d+) median (\d+)", _run([raw, "stream", "64", "3"]))[0])
                    h2d, _, d2h, _ = _nums(r"h2d_mbps best (\d+) median (\d+) d2h_mbps best (\d+) median (\d+)",
                                           _run([client, "copy", "64", "3"], env))
                    copy["h2d"].append(h2d)
                    copy["d2h"].append(d2h)
                for key, samples in rtt.items():
                    if samples:
                        res[f"rtt_{key}_{'tcp' if key != 'unix' else 'socket'}_{mode}_us"] = {
                            q: _median([s[i] for s in samples]) for i, q in enumerate(("p50", "p99", "p999"))}
                res[f"copy_64mib_{mode}_mbps"] = {k: _median(v) for k, v in copy.items()}
                res[f"copy_64mib_{mode}_vs_raw_tcp"] = {
                    d: round(_median([x / r for x, r in zip(copy[d], copy["raw"], strict=True)]), 3)
                    for d in ("h2d", "d2h")}
                if not tls:
                    rate, issue, cpu = _nums(r"calls_per_s (\d+) issue_calls_per_s (\d+) client_cpu_us_per_call "
                                             r"([\d.]+)", _run([client, "launch", str(n_launch)], env))
                    res["launch_tcp_plaintext"] = {"calls_per_s": rate, "issue_calls_per_s": issue,
                                                   "client_cpu_us_per_call": cpu}
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
