"""Remote vXPUs on a GPU host — one command, JSON results. NOT run yet: needs a GPU host.

    .venv/bin/python bench/gpu/remote_pytorch.py --out bench/gpu/remote-$(hostname).json

Needs: an NVIDIA GPU and driver, ``pip install torch torchvision transformers`` in the venv,
``make -C native`` and ``make -C native/remote`` (the script runs them). Daemon and client run on the
same host over TCP loopback (TLS) — the software overhead of remoting, not a network's.

What it does, in one invocation:
  1. starts ``xpu-remoted`` on the first GPU (the real ``libcuda.so.1``, ``libxpushim`` loaded in the
     worker with a region granting the whole card), grants a session and mints a token;
  2. runs ``bench/gpu/remote_model.py`` natively, then through the remoting client (``LD_PRELOAD`` of
     the client ``libcuda.so.1``/``libnvidia-ml.so.1``, as a pod on a CPU-only node gets it):
     ResNet-50 and BERT-base inference, batch 1 and 32, fixed seeds, 20 warm-up + 100 timed steps;
  3. compares outputs (native vs remote, same weights and inputs) and reports slowdowns
     (goals, issue 8 §7: <= 1.25x at batch 1, <= 1.05x at batch 32);
  4. reports the driver calls PyTorch made through the client: calls per API (daemon metrics),
     entry points that answered NOT_SUPPORTED, and cuGetProcAddress lookups nothing answered
     (the coverage of the catalogue for these models).
Records card, driver, CUDA, torch versions and the date with every figure.
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
from xpupool.remote import daemon as d  # noqa: E402
from xpupool.remote import tokens  # noqa: E402

MODEL = Path(__file__).with_name("remote_model.py")
GOALS = {1: 1.25, 32: 1.05}


def gpu_info() -> dict[str, str]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,uuid,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout.splitlines()[0]
    name, driver, uuid, mem = (x.strip() for x in out.split(","))
    return {"card": name, "driver": driver, "uuid": uuid, "memory": mem}


def run_model(env: dict[str, str], outdir: Path, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(MODEL), "--out", str(outdir / f"{tag}.pt"), "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--dtype", args.dtype]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
    if run.returncode or not lines:
        return {"error": run.stderr[-4000:], "rc": run.returncode}
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr_tail"] = run.stderr[-20000:]
    return result


def compare(outdir: Path) -> dict[str, Any]:
    import torch

    native = torch.load(outdir / "native.pt")
    remote = torch.load(outdir / "remote.pt")
    report = {}
    for key, a in native.items():
        b = remote[key]
        diff = (a.float() - b.float()).abs().max().item()
        report[key] = {"max_abs_diff": diff, "allclose_1e-3": bool(torch.allclose(a.float(), b.float(), rtol=1e-3,
                                                                                   atol=1e-3))}
    return report


def coverage(metrics: str, stderr: str) -> dict[str, Any]:
    calls = {m.group(1): int(float(m.group(2))) for m in
             re.finditer(r'^xpupool_remote_api_calls_total\{api="([^"]+)"\} (\S+)$', metrics, re.M)}
    unsupported = sorted(set(re.findall(r"(\w+) is not available on a remote vXPU", stderr)))
    unresolved = sorted(set(re.findall(r"cudacompat: .*(?:unresolved|not found)[^\n]*?(cu\w+)", stderr)))
    return {"calls_by_api": dict(sorted(calls.items(), key=lambda kv: -kv[1])), "apis_called": len(calls),
            "unsupported_called": unsupported, "unresolved_lookups": unresolved}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    args = ap.parse_args()
    for target in (ROOT / "native", ROOT / "native" / "remote"):
        subprocess.run(["make", "-s", "-C", str(target), f"PYTHON={sys.executable}", "all"], check=True)
    info = gpu_info()
    import torch

    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **info, "cuda": torch.version.cuda, "torch": torch.__version__, "host": platform.node(),
        "transport": "TCP loopback, TLS 1.3", "dtype": args.dtype,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state = d.prepare_state(root / "state", hosts=["127.0.0.1"], now=dt.datetime.now(dt.UTC))
        region = root / "region"
        sr.ShimRegion.create(region, [sr.DeviceConfig(uuid=info["uuid"])], container_key=1).close()
        cfg = d.DaemonConfig(state=state, node="gpu-bench", cards=(d.Card(info["uuid"], info["uuid"]),),
                             shim=d.shim_library(), listen="127.0.0.1:0")
        native_env = dict(os.environ)
        result["native"] = run_model(native_env, root, "native", args)
        with d.DaemonProcess(cfg) as daemon:
            daemon.control.grant(alloc="bench", card=info["uuid"], region=region, tenant="bench")
            key = tokens.load_signing_key(state.signing_key)
            tok = tokens.mint(key, tenant="bench", alloc="bench", card=info["uuid"], node="gpu-bench",
                              now_s=int(time.time()), ttl_s=7200)
            lib = d.client_lib_dir()
            remote_env = dict(os.environ, XPUPOOL_REMOTE_ENDPOINT=daemon.endpoint, XPUPOOL_REMOTE_TOKEN=tok,
                              XPUPOOL_REMOTE_CA=str(state.ca_cert), XPUPOOL_REMOTE_LOG="2",
                              LD_PRELOAD=f"{lib}/libcuda.so.1 {lib}/libnvidia-ml.so.1",
                              LD_LIBRARY_PATH=f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}")
            result["remote"] = run_model(remote_env, root, "remote", args)
            result["coverage"] = coverage(daemon.control.metrics(), result["remote"].get("stderr_tail", ""))
        for r in ("native", "remote"):
            if isinstance(result.get(r), dict):
                result[r].pop("stderr_tail", None)
        if "error" not in result["native"] and "error" not in result["remote"]:
            result["outputs"] = compare(root)
            slow = {}
            for key, t_native in result["native"]["median_ms"].items():
                ratio = result["remote"]["median_ms"][key] / t_native
                batch = int(key.rsplit("_bs", 1)[1])
                slow[key] = {"native_ms": t_native, "remote_ms": result["remote"]["median_ms"][key],
                             "slowdown": round(ratio, 3), "goal": GOALS.get(batch),
                             "met": ratio <= GOALS.get(batch, float("inf"))}
            result["slowdown"] = slow
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k in ("card", "driver", "slowdown", "outputs")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
