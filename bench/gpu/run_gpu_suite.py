"""GPU verification of libxpushim — one command, JSON results. NOT run yet: needs a GPU host.

    .venv/bin/python bench/gpu/run_gpu_suite.py --out bench/gpu/results-$(hostname).json \\
        [--python-cu12 /path/to/venv-cu12/bin/python] [--python-cu13 /path/to/venv-cu13/bin/python]

Target host: H100/H200, driver 580 / CUDA 13, PyTorch 2.x with cu12 and cu13 wheels (two
interpreters; the default is this one), CuPy optional. The script builds ``native`` (``make -C
native``), writes container and card regions with the node agent's code
(``xpupool.agent.shim_region``, ``xpupool.core.memory_reserve``) and runs ``bench/gpu/worker.py``
probes in child processes under ``LD_PRELOAD=libxpushim.so``. Every result is recorded with card,
driver, CUDA, torch versions and the date. A check that cannot run (no NCCL, one GPU, no triton)
records why instead of a number.

Checks (``--only``) and goals (docs/isolation.md, "GPU verification"):
  intercept  PyTorch cu12 and cu13: matmul, captured graph, NCCL all_reduce run under the shim;
             resolver swaps > 0 and misses == 0; the region counted the launches
  quota      torch caching allocator, expandable segments (VMM), cudaMallocAsync backend, two
             processes sharing one quota: OOM at the quota, never above; views show the slice
  driver     driver API on the real driver: stream-ordered pool released at sync is no false
             OUT_OF_MEMORY; cuMemRelease while mapped keeps the memory (and the charge)
  uncounted  real per-process memory (NVML, outside the shim) vs the region's charge (reserve
             included): the reserve covers the context; two slices filling the card to their quotas
             both get them, no driver OOM
  capture    torch.cuda.graph capture with a 30 % share (capture valid, share held on replay),
             torch.compile(mode="reduce-overhead") when available
  share      achieved share at 10/30/50/70/90 % for kernels, graphs and 2 streams: goal +-3 points
  burst      A (30 %, limit 80 %) alone >= 77 %; next to B (50 %) both ~50 %; priority 60+60
  overhead   launch-bound loop, 1 and 4 streams: shim (no region / memory only / 100 % share) vs no
             shim, same run: goal <= 1 % added wall time
  smi        what nvidia-smi shows inside a slice and which NVML calls it makes (LD_DEBUG bindings)
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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from xpupool.agent import shim_region as sr  # noqa: E402
from xpupool.core.memory_reserve import process_reserve_mib  # noqa: E402
from xpupool.core.model import Vendor  # noqa: E402

WORKER = Path(__file__).with_name("worker.py")
SHIM = ROOT / "native" / "build" / "libxpushim.so"
MIB = 1024 * 1024
ALL = ["intercept", "quota", "driver", "uncounted", "capture", "share", "burst", "overhead", "smi"]


def _env(region: Path | None, shim: bool, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(sr.ENV_REGION, None)
    env.pop("LD_PRELOAD", None)
    if shim:
        env["LD_PRELOAD"] = str(SHIM)
    if region is not None:
        env[sr.ENV_REGION] = str(region)
    env.update(extra or {})
    return env


def run_probe(region: Path | None, *args: str, env_extra: dict[str, str] | None = None, shim: bool = True,
              python: str = sys.executable, timeout: float = 600) -> dict[str, Any]:
    out = subprocess.run([python, str(WORKER), *args], env=_env(region, shim, env_extra), capture_output=True,
                         text=True, timeout=timeout, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout)[-2000:], "rc": out.returncode}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def start_probe(region: Path | None, *args: str, shim: bool = True) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), *args], env=_env(region, shim, None),
                            stdout=subprocess.PIPE, text=True)


def ready(p: subprocess.Popen[str]) -> dict[str, Any]:
    assert p.stdout is not None
    line = p.stdout.readline()
    return json.loads(line) if line.startswith("{") else {"error": "probe did not start"}


def finish(p: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = p.communicate(timeout=600)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": "no output"}


def smi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, check=False, env=env)


def gpu_query(field: str, index: int = 0) -> str:
    return smi(f"--query-gpu={field}", "--format=csv,noheader,nounits", "-i", str(index)).stdout.strip()


def environment(pythons: dict[str, str]) -> dict[str, Any]:
    cuda = re.search(r"CUDA Version: ([\d.]+)", smi().stdout or "")
    info: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(), "host": platform.node(),
                            "gpu": gpu_query("name"), "driver": gpu_query("driver_version"),
                            "uuid": gpu_query("uuid"), "gpus": len(smi("-L").stdout.splitlines()),
                            "cuda_driver": cuda.group(1) if cuda else "unknown"}
    for label, py in pythons.items():
        r = subprocess.run([py, "-c", "import torch, json; print(json.dumps([torch.__version__, torch.version.cuda]))"],
                           capture_output=True, text=True, check=False)
        info[f"torch_{label}"] = json.loads(r.stdout) if r.returncode == 0 else f"missing ({py})"
    return info


def region(tmp: Path, name: str, uuid: str, *, mem_mib: int = 0, req: int = 0, lim: int = 0, prio: int = 0,
           card: Path | None = None, slot: int = 0, key: int = 1, reserve_mib: int | None = None) -> Path:
    """A container region as the agent writes it (reserve from the core rule unless given); with a
    card, the slot is assigned in the card policy like ``ShimRegionWriter`` does."""
    path = tmp / name
    reserve = process_reserve_mib(Vendor.NVIDIA) if reserve_mib is None else reserve_mib
    cfg = sr.DeviceConfig(uuid=uuid, mem_limit_bytes=mem_mib * MIB, process_reserve_bytes=reserve * MIB,
                          share_request_bp=req, share_limit_bp=lim, priority=prio,
                          card_dir=str(card) if card else "", card_slot=slot)
    sr.ShimRegion.create(path, [cfg], container_key=key).close()
    if card is not None:
        c = sr.CardRegion(card)
        try:
            c.assign_tenant(slot, owner_key=key, request_bp=req, limit_bp=lim or req, priority=prio)
        finally:
            c.close()
    return path


def snapshot(path: Path) -> sr.RegionSnapshot:
    with sr.ShimRegion.open(path) as reg:
        return reg.snapshot()


# ---------------------------------------------------------------- checks


def check_intercept(tmp: Path, uuid: str, pythons: dict[str, str]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for label, py in pythons.items():
        r = region(tmp, f"i-{label}", uuid, mem_mib=32768, req=10000, lim=10000)
        got = run_probe(r, "intercept", python=py)
        d = snapshot(r).devices[0]
        got["region_launches"], got["region_gpu_time_s"] = d.launches, d.gpu_time_ns / 1e9
        resolver = got.get("resolver", {})
        got["ok"] = (got.get("matmul") is True and got.get("graph") is True and resolver.get("swaps", 0) > 0
                     and resolver.get("misses", 1) == 0 and d.launches > 0)
        res[label] = got
    return res


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
        got["region_peak_mib"] = snapshot(r).devices[0].mem_peak_bytes // MIB
        res[f"fill[{conf or 'default'}]"] = got
    r = region(tmp, "q", uuid, mem_mib=quota)
    holder = start_probe(r, "hold", "2048", "30")
    ready(holder)
    second = run_probe(r, "fill", str(quota))
    res["two_processes"] = {"second_allocated_mib": second.get("allocated_mib"),
                            "ok": second.get("oom") and second.get("allocated_mib", 1 << 30) <= quota - 2048}
    res["meminfo_with_neighbour"] = run_probe(r, "meminfo")
    holder.kill()
    holder.wait()
    after = run_probe(r, "fill", str(quota))
    res["after_kill9_allocated_mib"] = after.get("allocated_mib")
    return res


def check_driver(tmp: Path, uuid: str) -> dict[str, Any]:
    """The pool false-OOM and the release-after-map bypass, on the real driver (1 GiB quota)."""
    pool = run_probe(region(tmp, "dp", uuid, mem_mib=1024, reserve_mib=0), "drv_pool", "600")
    pool["ok"] = pool.get("alloc_after_release_rc") == 0
    r = region(tmp, "dv", uuid, mem_mib=1024, reserve_mib=0)
    vmm = run_probe(r, "drv_vmm", "800", "3")
    vmm["ok"] = vmm.get("created") == 1  # the mapped 800 MiB stays charged after cuMemRelease
    # the real driver's side of the rule: memory released while mapped is still in use
    steps = vmm.get("steps") or [{}]
    before, after = vmm.get("free_mib_before"), steps[0].get("free_mib_after_release")
    vmm["driver_kept_mapped_memory"] = (isinstance(before, int) and isinstance(after, int)
                                        and before - after >= vmm.get("size_mib", 0) * 0.9)
    unmanaged = run_probe(None, "drv_vmm", "800", "3")  # the same without a region: what the card allows
    return {"pool_release_at_sync": pool, "release_after_map": vmm, "release_after_map_unmanaged": unmanaged}


def nvml_process_used_mib(pid: int) -> int | None:
    """Real device memory of a host pid, from NVML outside the shim (ground truth)."""
    out = smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits", env=_env(None, False, None))
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return int(parts[1])
    return None


def check_uncounted(tmp: Path, uuid: str) -> dict[str, Any]:
    res: dict[str, Any] = {"reserve_mib": process_reserve_mib(Vendor.NVIDIA)}
    r = region(tmp, "u", uuid, mem_mib=16384)
    holder = start_probe(r, "hold", "1024", "20")
    info = ready(holder)
    time.sleep(1.0)
    pid = int(info.get("pid", 0))
    real = nvml_process_used_mib(pid)
    charged = [p.mem_used_bytes[0] // MIB for p in snapshot(r).processes if p.pid == pid]
    holder.kill()
    holder.wait()
    res["process"] = {"nvml_used_mib": real, "charged_mib": charged[0] if charged else None,
                      "torch_reserved_mib": info.get("reserved_mib")}
    if real is not None and charged:
        res["process"]["context_overhead_mib"] = real - int(info.get("reserved_mib", 0))
        res["process"]["reserve_covers_context"] = charged[0] >= real
    # two slices whose quotas add up to the card's schedulable memory (total - driver reserved)
    total = int(gpu_query("memory.total") or 0)
    reserved = int(gpu_query("memory.reserved") or 0) if gpu_query("memory.reserved").isdigit() else 0
    usable = total - reserved
    res["card"] = {"total_mib": total, "driver_reserved_mib": reserved, "usable_mib": usable}
    if usable > 0:
        half = usable // 2
        a = region(tmp, "ua", uuid, mem_mib=half, key=11)
        b = region(tmp, "ub", uuid, mem_mib=half, key=22)
        pa, pb = start_probe(a, "fill", str(half)), start_probe(b, "fill", str(half))
        fa, fb = finish(pa), finish(pb)
        goal = half - process_reserve_mib(Vendor.NVIDIA) - 128  # the reserve, one chunk and rounding
        res["two_slices_fill_the_card"] = {
            "quota_mib": half, "a": fa, "b": fb,
            "ok": all(f.get("allocated_mib", 0) >= goal and "out of memory" in f.get("error", "").lower()
                      for f in (fa, fb)),
        }
    return res


def calibrate(cycles: int) -> float:
    solo = run_probe(None, "spin", "5", str(cycles), shim=False)
    return float(solo["wall_s"]) / float(solo["kernels"])  # seconds per kernel, GPU alone


def share_of(result: dict[str, Any], per_kernel_s: float) -> float:
    if "kernels" not in result:
        return float("nan")
    return 100.0 * float(result["kernels"]) * per_kernel_s / float(result["wall_s"])


def check_capture(tmp: Path, uuid: str, cycles: int) -> dict[str, Any]:
    per_kernel = calibrate(cycles)
    r = region(tmp, "c", uuid, req=3000, lim=3000)
    got = run_probe(r, "capture", "10", str(cycles))
    got["achieved_pct"] = share_of(got, per_kernel)
    got["ok"] = got.get("capture_ok") is True and abs(got["achieved_pct"] - 30.0) <= 3.0
    return got


def check_share(tmp: Path, uuid: str, cycles: int) -> dict[str, Any]:
    per_kernel = calibrate(cycles)
    res: dict[str, Any] = {"per_kernel_us": per_kernel * 1e6, "targets": {}}
    for target in (10, 30, 50, 70, 90):
        row = {}
        for probe, args in (("spin", ()), ("graph", ()), ("mstream", ("2",))):
            r = region(tmp, "s", uuid, req=target * 100, lim=target * 100)
            got = run_probe(r, probe, "10", str(cycles), *args)
            s = share_of(got, per_kernel)
            d = snapshot(r).devices[0]
            metered = d.gpu_time_ns / 1e9 / float(got.get("wall_s", float("nan")))
            row[probe] = {"achieved_pct": s, "within_3pt": abs(s - target) <= 3.0, "metered_pct": 100 * metered}
        res["targets"][str(target)] = row
    return res


def check_burst_priority(tmp: Path, uuid: str, cycles: int) -> dict[str, Any]:
    per_kernel = calibrate(cycles)
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
    out: dict[str, Any] = {"goal_pct": 1.0, "launches": n}
    mem_only = region(tmp, "m", uuid, mem_mib=1 << 20)
    limited = region(tmp, "l", uuid, req=10000, lim=10000)
    for streams in ("1", "4"):
        runs: dict[str, list[float]] = {"no_shim": [], "shim_unmanaged": [], "shim_memory_only": [],
                                        "shim_limit_100pct": []}
        for _ in range(5):  # interleaved, same machine, same run
            runs["no_shim"].append(run_probe(None, "launchbound", str(n), streams, shim=False)["wall_s"])
            runs["shim_unmanaged"].append(run_probe(None, "launchbound", str(n), streams)["wall_s"])
            runs["shim_memory_only"].append(run_probe(mem_only, "launchbound", str(n), streams)["wall_s"])
            runs["shim_limit_100pct"].append(run_probe(limited, "launchbound", str(n), streams)["wall_s"])
        med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
        base = med["no_shim"]
        out[f"streams_{streams}"] = {"median_wall_s": med,
                                     "overhead_pct": {k: 100.0 * (v / base - 1.0) for k, v in med.items()}}
    return out


def check_smi(tmp: Path, uuid: str) -> dict[str, Any]:
    """nvidia-smi inside a slice: what it shows, and the NVML entry points it asks for."""
    r = region(tmp, "smi", uuid, mem_mib=8192)
    holder = start_probe(r, "hold", "1024", "30")
    info = ready(holder)
    env = _env(r, True, {"LD_DEBUG": "bindings"})
    res: dict[str, Any] = {"holder_pid": info.get("pid")}
    for name, args in (("default", ()), ("query", ("-q", "-d", "MEMORY,PIDS,UTILIZATION")),
                       ("apps", ("--query-compute-apps=pid,used_memory", "--format=csv,noheader"))):
        out = smi(*args, env=env)
        calls = sorted(set(re.findall(r"symbol `(nvml\w+)'", out.stderr)))
        res[name] = {"stdout": out.stdout[-4000:], "nvml_calls": calls}
    res["nvml_calls_all"] = sorted({c for k in ("default", "query", "apps") for c in res[k]["nvml_calls"]})
    holder.kill()
    holder.wait()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "gpu" / "results.json"))
    ap.add_argument("--cycles", type=int, default=1_000_000, help="spin kernel length in GPU clock cycles")
    ap.add_argument("--launches", type=int, default=200_000)
    ap.add_argument("--python-cu12", default=sys.executable, help="interpreter with a PyTorch cu12 wheel")
    ap.add_argument("--python-cu13", default=None, help="interpreter with a PyTorch cu13 wheel")
    ap.add_argument("--only", nargs="*", default=ALL, choices=ALL)
    args = ap.parse_args()
    subprocess.run(["make", "-s", "-C", str(ROOT / "native"), f"PYTHON={sys.executable}", "all"], check=True)
    pythons = {"cu12": args.python_cu12}
    if args.python_cu13:
        pythons["cu13"] = args.python_cu13
    results: dict[str, Any] = {"environment": environment(pythons), "label": "gpu", "checks": args.only}
    uuid = str(results["environment"]["uuid"])
    with tempfile.TemporaryDirectory(prefix="xpushim-gpu-") as d:
        tmp = Path(d)
        steps = {
            "intercept": lambda: check_intercept(tmp, uuid, pythons),
            "quota": lambda: check_quota(tmp, uuid),
            "driver": lambda: check_driver(tmp, uuid),
            "uncounted": lambda: check_uncounted(tmp, uuid),
            "capture": lambda: check_capture(tmp, uuid, args.cycles),
            "share": lambda: check_share(tmp, uuid, args.cycles),
            "burst": lambda: check_burst_priority(tmp, uuid, args.cycles),
            "overhead": lambda: check_overhead(tmp, uuid, args.launches),
            "smi": lambda: check_smi(tmp, uuid),
        }
        for name in args.only:
            try:
                results[name] = steps[name]()
            except Exception as e:  # one broken check must not lose the others' results
                results[name] = {"error": repr(e)[:2000]}
            Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
