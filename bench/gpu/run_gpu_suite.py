"""GPU verification of libxpushim — one command, JSON results. NOT run yet: needs a GPU host.

    .venv/bin/python bench/gpu/run_gpu_suite.py --out bench/gpu/results-$(hostname).json

Target host: H100, driver 580 / CUDA 13, PyTorch 2.11 (cu130), CuPy optional. The script builds
``native`` (``make -C native``), creates container/card regions with ``xpupool.agent.shim_region``
and runs ``bench/gpu/worker.py`` probes in child processes under ``LD_PRELOAD=libxpushim.so``.
Every number it writes is recorded with card, driver, CUDA and torch versions and the date.

Checks and goals (docs/isolation.md, "GPU verification"):
  quota      torch caching allocator, expandable segments (VMM), cudaMallocAsync backend and two
             processes sharing one quota: OOM at the quota (+ one 64 MiB chunk), never above;
             mem_get_info / cupy / nvidia-smi show the slice; nvidia-smi lists only our pids
  share      achieved share at 10/30/50/70/90 % targets, kernels and CUDA graphs: goal +-3 points
  burst      A (30 %, limit 80 %) alone >= 77 %; next to B (50 %) both ~50 %
  priority   overcommitted 60+60: high tier ~60 %, low tier ~40 %; high-tier p99 latency
  overhead   launch-bound loop: shim (no region / memory only / compute limit 100 %) vs no shim,
             same run: goal <= 1 % added wall time
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from xpupool.agent import shim_region as sr  # noqa: E402

WORKER = Path(__file__).with_name("worker.py")
SHIM = ROOT / "native" / "build" / "libxpushim.so"
MIB = 1024 * 1024


def run_probe(region: Path | None, *args: str, env_extra: dict[str, str] | None = None,
              shim: bool = True, timeout: float = 600) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop(sr.ENV_REGION, None)
    env.pop("LD_PRELOAD", None)
    if shim:
        env["LD_PRELOAD"] = str(SHIM)
    if region is not None:
        env[sr.ENV_REGION] = str(region)
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, str(WORKER), *args], env=env, capture_output=True, text=True,
                         timeout=timeout, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": out.stderr[-2000:], "rc": out.returncode}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def start_probe(region: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, LD_PRELOAD=str(SHIM), **{sr.ENV_REGION: str(region)})
    return subprocess.Popen([sys.executable, str(WORKER), *args], env=env, stdout=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = p.communicate(timeout=600)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": "no output"}


def gpu_uuid() -> str:
    q = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader", "-i", "0"],
                       capture_output=True, text=True, check=True)
    return q.stdout.strip()


def environment() -> dict[str, Any]:
    def q(field: str) -> str:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader", "-i", "0"],
                           capture_output=True, text=True, check=False)
        return r.stdout.strip()

    info: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(), "host": platform.node(),
                            "gpu": q("name"), "driver": q("driver_version"), "uuid": q("uuid")}
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    except ImportError:
        info["torch"] = "missing"
    return info


def region(tmp: Path, name: str, uuid: str, *, mem_mib: int = 0, req: int = 0, lim: int = 0, prio: int = 0,
           card: Path | None = None, slot: int = 0, key: int = 1) -> Path:
    path = tmp / name
    cfg = sr.DeviceConfig(uuid=uuid, mem_limit_bytes=mem_mib * MIB, share_request_bp=req, share_limit_bp=lim,
                          priority=prio, card_path=str(card) if card else "", card_slot=slot)
    sr.ShimRegion.create(path, [cfg], container_key=key).close()
    return path


def check_quota(tmp: Path, uuid: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    quota = 4096
    r = region(tmp, "q", uuid, mem_mib=quota)
    res["meminfo"] = run_probe(r, "meminfo")
    res["meminfo_ok"] = res["meminfo"].get("torch_total") == quota * MIB
    for conf in ("", "expandable_segments:True", "backend:cudaMallocAsync"):
        r = region(tmp, "q", uuid, mem_mib=quota)
        got = run_probe(r, "fill", str(quota), env_extra={"PYTORCH_CUDA_ALLOC_CONF": conf} if conf else None)
        got["within_quota"] = bool(got.get("oom")) and got.get("allocated_mib", 1 << 30) <= quota
        res[f"fill[{conf or 'default'}]"] = got
    r = region(tmp, "q", uuid, mem_mib=quota)
    holder = start_probe(r, "hold", "2048", "30")
    assert holder.stdout is not None
    holder.stdout.readline()
    second = run_probe(r, "fill", str(quota))
    res["two_processes"] = {"second_allocated_mib": second.get("allocated_mib"),
                            "ok": second.get("oom") and second.get("allocated_mib", 1 << 30) <= quota - 2048}
    res["meminfo_with_neighbour"] = run_probe(r, "meminfo")
    holder.kill()
    holder.wait()
    after = run_probe(r, "fill", str(quota))
    res["after_kill9_allocated_mib"] = after.get("allocated_mib")
    return res


def calibrate(tmp: Path, cycles: int) -> float:
    solo = run_probe(None, "spin", "5", str(cycles), shim=False)
    return float(solo["wall_s"]) / float(solo["kernels"])  # seconds per kernel, GPU alone


def share_of(result: dict[str, Any], per_kernel_s: float) -> float:
    return 100.0 * float(result["kernels"]) * per_kernel_s / float(result["wall_s"])


def check_share(tmp: Path, uuid: str, cycles: int) -> dict[str, Any]:
    per_kernel = calibrate(tmp, cycles)
    res: dict[str, Any] = {"per_kernel_us": per_kernel * 1e6, "targets": {}}
    for target in (10, 30, 50, 70, 90):
        row = {}
        for probe in ("spin", "graph"):
            r = region(tmp, "s", uuid, req=target * 100, lim=target * 100)
            got = run_probe(r, probe, "10", str(cycles))
            s = share_of(got, per_kernel) if "kernels" in got else float("nan")
            row[probe] = {"achieved_pct": s, "within_3pt": abs(s - target) <= 3.0}
        res["targets"][str(target)] = row
    return res


def check_burst_priority(tmp: Path, uuid: str, cycles: int) -> dict[str, Any]:
    per_kernel = calibrate(tmp, cycles)
    card = tmp / "card"
    res: dict[str, Any] = {}
    sr.CardRegion.create(card, uuid).close()
    a = region(tmp, "a", uuid, req=3000, lim=8000, card=card, slot=0, key=11)
    b = region(tmp, "b", uuid, req=5000, lim=5000, card=card, slot=1, key=22)
    res["a_alone_pct"] = share_of(run_probe(a, "spin", "10", str(cycles)), per_kernel)
    pb = start_probe(b, "spin", "10", str(cycles))
    ra = run_probe(a, "spin", "10", str(cycles))
    rb = finish(pb)
    res["a_with_b_pct"] = share_of(ra, per_kernel)
    res["b_with_a_pct"] = share_of(rb, per_kernel)
    sr.CardRegion.create(card, uuid).close()
    hi = region(tmp, "hi", uuid, req=6000, lim=6000, prio=1, card=card, slot=0, key=11)
    lo = region(tmp, "lo", uuid, req=6000, lim=6000, prio=0, card=card, slot=1, key=22)
    plo = start_probe(lo, "spin", "10", str(cycles))
    rhi = run_probe(hi, "spin", "10", str(cycles))
    rlo = finish(plo)
    res["priority_high_pct"] = share_of(rhi, per_kernel)
    res["priority_low_pct"] = share_of(rlo, per_kernel)
    plo = start_probe(lo, "spin", "10", str(cycles))
    res["priority_high_latency"] = run_probe(hi, "latency", "8", str(cycles // 10))
    finish(plo)
    res["solo_latency"] = run_probe(None, "latency", "8", str(cycles // 10), shim=False)
    return res


def check_overhead(tmp: Path, uuid: str, n: int) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"no_shim": [], "shim_unmanaged": [], "shim_memory_only": [],
                                    "shim_limit_100pct": []}
    mem_only = region(tmp, "m", uuid, mem_mib=1 << 20)
    limited = region(tmp, "l", uuid, req=10000, lim=10000)
    for _ in range(5):  # interleaved, same machine, same run
        runs["no_shim"].append(run_probe(None, "launchbound", str(n), shim=False)["wall_s"])
        runs["shim_unmanaged"].append(run_probe(None, "launchbound", str(n))["wall_s"])
        runs["shim_memory_only"].append(run_probe(mem_only, "launchbound", str(n))["wall_s"])
        runs["shim_limit_100pct"].append(run_probe(limited, "launchbound", str(n))["wall_s"])
    med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    base = med["no_shim"]
    return {"median_wall_s": med, "overhead_pct": {k: 100.0 * (v / base - 1.0) for k, v in med.items()},
            "goal_pct": 1.0, "launches": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "gpu" / "results.json"))
    ap.add_argument("--cycles", type=int, default=1_000_000, help="spin kernel length in GPU clock cycles")
    ap.add_argument("--launches", type=int, default=200_000)
    ap.add_argument("--only", nargs="*", default=["quota", "share", "burst", "overhead"])
    args = ap.parse_args()
    subprocess.run(["make", "-s", "-C", str(ROOT / "native"), f"PYTHON={sys.executable}", "all"], check=True)
    results: dict[str, Any] = {"environment": environment(), "label": "gpu"}
    uuid = gpu_uuid()
    with tempfile.TemporaryDirectory(prefix="xpushim-gpu-") as d:
        tmp = Path(d)
        if "quota" in args.only:
            results["quota"] = check_quota(tmp, uuid)
        if "share" in args.only:
            results["share"] = check_share(tmp, uuid, args.cycles)
        if "burst" in args.only:
            results["burst_priority"] = check_burst_priority(tmp, uuid, args.cycles)
        if "overhead" in args.only:
            results["overhead"] = check_overhead(tmp, uuid, args.launches)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
