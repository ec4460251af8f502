"""The openb trace files wherever they are: the workspace, the installed package, a download cache.

``xpupool simulate`` must work right after ``pip install``, with no workspace around it:

1. ``$XPUPOOL_TRACES`` or a ``shared/traces`` folder near the working directory (developers, tests,
   CI: :func:`xpupool.sim.openb.trace_dir`), when the file is there;
2. the wheel's own copy of the default pod list and the GPU node list
   (``xpupool/sim/data/*.csv.gz``, put there at build time by ``setup.py``; CC BY 4.0, see
   ``xpupool/sim/data/TRACE-NOTICE.md``);
3. the download cache (``$XPUPOOL_CACHE``, else ``$XDG_CACHE_HOME/xpupool`` or ``~/.cache/xpupool``,
   then ``traces/alibaba-gpu-2023/csv``);
4. a download from the trace's public source into that cache (``$XPUPOOL_OPENB_SOURCE`` replaces
   the base URL, e.g. with a mirror), checked against the SHA-256 of the published file; offline,
   or with other bytes, :func:`locate` raises :class:`TraceUnavailable` with one line that says
   what to do.

Only the files listed in :data:`SHA256` are offered: they are the ones this project checked.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from xpupool.sim.openb import trace_dir

GPU_NODES = "openb_node_list_gpu_node.csv"
PACKAGED = (GPU_NODES, "openb_pod_list_default.csv")
#: the cluster-trace-gpu-v2023 csv folder of alibaba/clusterdata
DEFAULT_SOURCE = "https://raw.githubusercontent.com/alibaba/clusterdata/master/cluster-trace-gpu-v2023/csv/"
SOURCE_ENV = "XPUPOOL_OPENB_SOURCE"

#: SHA-256 of each published CSV (as in alibaba/clusterdata, cluster-trace-gpu-v2023/csv)
SHA256: dict[str, str] = {
    "openb_node_list_all_node.csv": "5a85c2af79c66a1efff8bbcbda430400aae56d8431370d738480967e1a9c6b15",
    "openb_node_list_gpu_node.csv": "2beca64b4d3dfa342036a34b56a495c6cef9225db836c81f541282cb1df320b5",
    "openb_pod_list_cpu0.csv": "1bc3fd9ee5c1468ccd018f624d9222746e08d59f963f66b925804734271c0eaa",
    "openb_pod_list_cpu037.csv": "8ed554026d041b15ff21ddc104d9a21dbd9a93c496262fa23ef7b5be27e220dc",
    "openb_pod_list_cpu050.csv": "747f43247bffc2b0bb081d7f61f0705ca8d390dafc0b647e642c92f3baf3ba1e",
    "openb_pod_list_cpu072.csv": "f8a2b031461b54d7b9f06d55473c2371eb3357b78a255c646bdca5e0833a8a2f",
    "openb_pod_list_cpu100.csv": "bec1c33fbdde61fd463877534ec79b393aec73e1cbb22d55fab9f166ac480982",
    "openb_pod_list_cpu200.csv": "b7e9d8a1a601da84d6e0b4110b19ef5001be5e4796d33e7b82f166ba95161f87",
    "openb_pod_list_cpu235.csv": "87bebd4d012faa8305ce1fd82737f51cf03361aac28b75d42e34aa656d7f4ee0",
    "openb_pod_list_cpu250.csv": "134c21ff96d57533df8a37b67632972884fec9396e77cd0898ddc370cc8e607d",
    "openb_pod_list_cpu300.csv": "76528825f40ee662cb098b3b6e683c1efd9f87a0c8af7e628df1f32c639636d1",
    "openb_pod_list_default.csv": "1ee7ed79c27a3b0861cda8ddba86a004c6aba904caafa329a76ae93ca63834a8",
    "openb_pod_list_gpushare100.csv": "12dbc07d6a49bf8641e2275a2ff5bf7be74b5df7d148d531e135b140b95f9a3d",
    "openb_pod_list_gpushare20.csv": "9be2d0efb52e242c32e23dd184cc5fcc1983478c6c9c02cbb6b4b62925c0ffcd",
    "openb_pod_list_gpushare40.csv": "d83ce79a4eb6987524bedbb0c65e41aed3a36bf6c1b78b86234c3687a07e1d40",
    "openb_pod_list_gpushare80.csv": "88b6649369ced40d0fde287d2498ea61ff4b05fccba8bdc95daf6042f2f8431e",
    "openb_pod_list_gpuspec05.csv": "8f1c0ef7e4e511e982bd2818898ba22ee6d273bf5fce124b7ace285b5928cf4e",
    "openb_pod_list_gpuspec10.csv": "2dc7e4cb9480484f08539720b433a9ec9ab5d76b396f3f7557c53a2ff78a7611",
    "openb_pod_list_gpuspec20.csv": "6b9b89ab8913c1c074e994e98f548cf1a872fc5f76f2442ca8cd514a478b00a9",
    "openb_pod_list_gpuspec25.csv": "9d030679a2ccd7e27a7ec9ff15baff34480d22a0012515691fc187e3f35ee68c",
    "openb_pod_list_gpuspec33.csv": "eca4f746db1e5b25864ad021b55ece3943e101a3ebd4574d09dcb95c46117652",
    "openb_pod_list_multigpu20.csv": "d9ec6f6c74fb980cc0b81239470c6353fceea077ea9abd610003b604c7cc2b01",
    "openb_pod_list_multigpu30.csv": "a5e479c6444b1d83eef848159cf00c3cfa13441b2d1e2c113c391b91f1cc5b11",
    "openb_pod_list_multigpu50.csv": "206f2f5959db30ecb7c44e7f13197c8ec50b7a35558ad3777cc3662ef0fe5373",
}


class TraceUnavailable(Exception):
    """A trace file is neither here, nor packaged, nor cached, and cannot be downloaded (one line)."""


def pods_name(variant: str) -> str:
    return f"openb_pod_list_{variant}.csv"


def variants() -> list[str]:
    prefix = "openb_pod_list_"
    return sorted(n[len(prefix):-4] for n in SHA256 if n.startswith(prefix))


def cache_dir() -> Path:
    root = os.environ.get("XPUPOOL_CACHE")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xpupool"
    return base / "traces" / "alibaba-gpu-2023" / "csv"


def packaged(name: str) -> Path | None:
    """The wheel's gzip copy of ``name``, or None."""
    path = Path(str(resources.files("xpupool.sim") / "data" / f"{name}.gz"))
    return path if path.is_file() else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(name: str, *, source: str | None = None, timeout_s: float = 60.0) -> Path:
    """Download ``name`` into the cache (verified, atomically renamed into place)."""
    if name not in SHA256:
        raise TraceUnavailable(f"{name} is not a known openb trace file (variants: {', '.join(variants())})")
    base = source or os.environ.get(SOURCE_ENV) or DEFAULT_SOURCE
    url = base.rstrip("/") + "/" + name
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TraceUnavailable(
            f"cannot download {name} from {url} ({reason}): offline? Put the file in {cache_dir()}, set "
            f"XPUPOOL_TRACES to a folder with alibaba-gpu-2023/csv/, or pass --trace"
        ) from None
    if _sha256(data) != SHA256[name]:
        raise TraceUnavailable(f"{url} did not serve the published {name} (SHA-256 differs); nothing was cached")
    target = cache_dir() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, prefix=f".{name}.") as tmp:
        tmp.write(data)
    Path(tmp.name).replace(target)
    return target


def locate(name: str, *, download: bool = True) -> Path:
    """Where ``name`` can be read now (see the module docstring for the order)."""
    for path in (trace_dir() / "csv" / name, packaged(name), cache_dir() / name):
        if path is not None and path.is_file():
            return path
    if not download:
        raise TraceUnavailable(f"{name} is not on this machine")
    return fetch(name)
