"""The test-double workload image's checks, with the REAL driver, on one GPU host. NOT run yet.

    .venv/bin/python bench/gpu/run_workload_probe.py --out bench/gpu/probe-$(hostname).json

CI runs ``xpu-probe`` (deploy/image/workload/xpu_probe.c) on the real test node with FAKE
libcuda/libnvidia-ml; this script runs the same program, unchanged, against the host's NVIDIA
driver (outside Kubernetes: the agent's part is played by writing the container regions with
``xpupool.agent.shim_region``, exactly as the agent does at allocation), and records card, driver,
CUDA version and date with every result. One command, JSON out, exit 1 if a check failed.

Checks (issue 7 §5 on real hardware):
  bare         probe without the shim: the card's real totals (the baseline the others differ from)
  slice        shim + a 4 GiB / 30 % region: cuDeviceTotalMem, cuMemGetInfo and NVML all report
               4 GiB; filling in 256 MiB chunks stops with CUDA_ERROR_OUT_OF_MEMORY (2) at or below
               the quota; one allocation of quota + 1 GiB fails with 2
  neighbours   two probes at once on one card (4 GiB / 30 % holding 2 GiB, and 8 GiB / 50 %): each
               sees its own size, the second fills to its own quota, the first is unaffected, and a
               second process in the first container sees 2 GiB free (one quota per container)

Needs: an NVIDIA driver (``libcuda.so.1``, ``libnvidia-ml.so.1``, ``nvidia-smi``), a C compiler,
``make -C native`` done (or ``--shim PATH``, e.g. the glibc-2.28 build from the xpupool image:
``python -c 'from xpupool.kube import testing_images, testing_oci; ...'``), the dev venv
(``nvidia-cuda-runtime-cu12`` provides ``cuda.h``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from xpupool.agent import shim_region as sr  # noqa: E402

PROBE_SRC = ROOT / "deploy" / "image" / "workload" / "xpu_probe.c"
DEFAULT_SHIM = ROOT / "native" / "build" / "libxpushim.so"
MIB = 1024 * 1024
OOM = 2  # CUDA_ERROR_OUT_OF_MEMORY


def build_probe(out: Path) -> Path:
    import nvidia.cuda_runtime as cuda_runtime  # the dev dependency that ships cuda.h

    include = Path(next(iter(cuda_runtime.__path__))) / "include"
    binary = out / "xpu-probe"
    cc = os.environ.get("CC", "cc")
    subprocess.run(
        [cc, "-std=c11", "-O2", "-Wall", "-Wextra", f"-I{include}", str(PROBE_SRC), "-o", str(binary),
         "-l:libcuda.so.1", "-ldl"],
        check=True,
    )
    return binary


def host_info() -> dict[str, Any]:
    def q(field: str) -> str:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                              capture_output=True, text=True, check=False)
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "?"

    return {"date": dt.datetime.now(dt.UTC).isoformat(), "host": platform.node(), "gpu": q("name"),
            "driver": q("driver_version"), "uuid": q("uuid"), "memory_total": q("memory.total")}


def run(probe: Path, *args: str, shim: Path | None = None, region: Path | None = None,
        background: bool = False) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH", sr.ENV_REGION)}
    if shim is not None:
        env["LD_PRELOAD"] = str(shim)
    if region is not None:
        env[sr.ENV_REGION] = str(region)
    cmd = [str(probe), *args]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    return parse(done.stdout, done.returncode, done.stderr)


def parse(stdout: str, rc: int, stderr: str = "") -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if rc != 0 or not lines:
        return {"error": stderr[-2000:], "rc": rc}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def make_region(tmp: Path, name: str, uuid: str, mem_mib: int, share_pct: int, key: int) -> Path:
    path = tmp / name
    cfg = sr.DeviceConfig(uuid=uuid, mem_limit_bytes=mem_mib * MIB, share_request_bp=share_pct * 100,
                          share_limit_bp=share_pct * 100)
    sr.ShimRegion.create(path, [cfg], container_key=key).close()
    return path


def sizes(report: dict[str, Any]) -> dict[str, int]:
    cuda, nvml = report.get("cuda", {}), report.get("nvml", {})
    return {
        "cuDeviceTotalMem": (cuda.get("devices") or [{}])[0].get("total_mem_bytes", -1),
        "cuMemGetInfo_total": cuda.get("mem_get_info", {}).get("total_bytes", -1),
        "nvml_total": (nvml.get("devices") or [{}])[0].get("memory_total_bytes", -1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/gpu/probe-results.json"))
    parser.add_argument("--shim", type=Path, default=DEFAULT_SHIM)
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        print("no nvidia-smi: this script needs a GPU host with the NVIDIA driver", file=sys.stderr)
        return 2
    if not args.shim.exists():
        print(f"{args.shim} missing: run `make native` (or pass --shim)", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"host": host_info(), "shim": str(args.shim), "checks": {}}
    checks = result["checks"]
    with tempfile.TemporaryDirectory(prefix="xpu-probe-") as tmp_name:
        tmp = Path(tmp_name)
        probe = build_probe(tmp)
        bare = run(probe)
        checks["bare"] = {"report": bare, "ok": bare.get("cuda", {}).get("init") == 0}
        result["host"]["cuda_driver_version"] = bare.get("cuda", {}).get("driver_version")
        uuid = (bare.get("cuda", {}).get("devices") or [{}])[0].get("uuid", "")

        quota = 4096
        region_a = make_region(tmp, "a", uuid, quota, 30, key=11)
        filled = run(probe, "--fill-chunk-mib", "256", shim=args.shim, region=region_a)
        over = run(probe, "--alloc-mib", str(quota + 1024), shim=args.shim, region=region_a)
        seen = sizes(filled)
        fill = filled.get("cuda", {}).get("fill", {})
        checks["slice"] = {
            "sizes": seen,
            "fill": fill,
            "over_quota_result": over.get("cuda", {}).get("alloc", {}).get("result"),
            "ok": all(v == quota * MIB for v in seen.values())
            and fill.get("stop_result") == OOM
            and fill.get("allocated_mib", 1 << 30) <= quota
            and over.get("cuda", {}).get("alloc", {}).get("result") == OOM,
        }

        region_a = make_region(tmp, "a", uuid, quota, 30, key=11)
        region_b = make_region(tmp, "b", uuid, 2 * quota, 50, key=22)
        holder = run(probe, "--alloc-mib", "2048", "--hold-s", "20", shim=args.shim, region=region_a, background=True)
        assert holder.stdout is not None
        held = parse(holder.stdout.readline(), 0)
        time.sleep(0.5)
        second = run(probe, "--fill-chunk-mib", "256", shim=args.shim, region=region_b)
        view_a = run(probe, shim=args.shim, region=region_a)
        holder.kill()
        holder.wait()
        b_fill = second.get("cuda", {}).get("fill", {})
        checks["neighbours"] = {
            "a_sizes": sizes(held),
            "b_sizes": sizes(second),
            "b_fill": b_fill,
            "a_free_while_holding": view_a.get("cuda", {}).get("mem_get_info", {}).get("free_bytes"),
            "ok": all(v == quota * MIB for v in sizes(held).values())
            and view_a.get("cuda", {}).get("mem_get_info", {}).get("free_bytes") == (quota - 2048) * MIB
            and all(v == 2 * quota * MIB for v in sizes(second).values())
            and b_fill.get("stop_result") == OOM
            and b_fill.get("allocated_mib", 1 << 30) <= 2 * quota,
        }
    result["ok"] = all(c["ok"] for c in checks.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({name: c["ok"] for name, c in checks.items()}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
