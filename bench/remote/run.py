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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = ap.parse_args()
    n_rtt, n_launch, reps = (3000, 50_000, 2) if args.quick else (20_000, 300_000, 5)
    subprocess.run(["make", "-s", "-C", str(REPO / "native"), f"PYTHON={sys.executable}", "all"], check=True)
    subprocess.run(["make", "-s", "-C", str(REPO / "native" / "remote"), f"PYTHON={sys.executable}", "bench"],
                   check=True)
    res: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "machine": platform.machine()},
        "backend": "fake libcuda test double (CPU)",
    }
    p50, p99, p999 = _nums(r"p50 ([\d.]+) p99 ([\d.]+) p999 ([\d.]+)", _run([str(BENCH / "raw_tcp"), "pingpong",
                                                                            str(n_rtt)]))
    res["raw_tcp_pingpong_us"] = {"p50": p50, "p99": p99, "p999": p999}
    best, med = _nums(r"best (\d+) median (\d+)", _run([str(BENCH / "raw_tcp"), "stream", "64", str(reps)]))
    res["raw_tcp_stream_64mib_mbps"] = {"best": best, "median": med}
    client = str(BENCH / "bench_client")
    with tempfile.TemporaryDirectory() as tmp:
        for mode, tls in (("plaintext", False), ("tls", True)):
            with local_rig(Path(tmp) / mode, tls=tls) as rig:
                rig.grant("bench")
                env = rig.client_env(rig.token("bench"))
                if not tls:
                    env.pop("XPUPOOL_REMOTE_CA")
                    env["XPUPOOL_REMOTE_INSECURE"] = "1"
                a, b, c = _nums(r"p50 ([\d.]+) p99 ([\d.]+) p999 ([\d.]+)", _run([client, "rtt", str(n_rtt)], env))
                res[f"rtt_tcp_{mode}_us"] = {"p50": a, "p99": b, "p999": c}
                h2d_b, h2d_m, d2h_b, d2h_m = _nums(r"h2d_mbps best (\d+) median (\d+) d2h_mbps best (\d+) median (\d+)",
                                                   _run([client, "copy", "64", str(reps)], env))
                res[f"copy_64mib_tcp_{mode}_mbps"] = {"h2d_best": h2d_b, "h2d_median": h2d_m, "d2h_best": d2h_b,
                                                      "d2h_median": d2h_m}
                if not tls:
                    rate, issue, cpu = _nums(r"calls_per_s (\d+) issue_calls_per_s (\d+) client_cpu_us_per_call "
                                             r"([\d.]+)", _run([client, "launch", str(n_launch)], env))
                    res["launch_tcp_plaintext"] = {"calls_per_s": rate, "issue_calls_per_s": issue,
                                                   "client_cpu_us_per_call": cpu}
                    uenv = rig.client_env(rig.token("bench"), endpoint=rig.daemon.unix_endpoint)
                    a, b, c = _nums(r"p50 ([\d.]+) p99 ([\d.]+) p999 ([\d.]+)", _run([client, "rtt", str(n_rtt)],
                                                                                      uenv))
                    res["rtt_unix_us"] = {"p50": a, "p99": b, "p999": c}
    raw = res["raw_tcp_stream_64mib_mbps"]["median"]  # type: ignore[index]
    for mode in ("plaintext", "tls"):
        c = res[f"copy_64mib_tcp_{mode}_mbps"]
        res[f"copy_vs_raw_tcp_{mode}"] = {"h2d": round(c["h2d_median"] / raw, 3),  # type: ignore[index]
                                          "d2h": round(c["d2h_median"] / raw, 3)}  # type: ignore[index]
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
