"""Loaders for the Alibaba ``openb`` GPU-sharing trace (cluster-trace-gpu-v2023, used by FGD).

The trace is third-party data: it is read from where it lies (``--trace``/``--nodes``, the
``XPUPOOL_TRACES`` directory, the wheel's packaged copy of the default variant or the download cache:
:mod:`xpupool.sim.openb_data`), never copied into the repository. Files may be gzip-compressed.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from xpupool.core.model import WHOLE_CARD_MILLI, Device, Node, Request, Vendor

#: card memory per openb model in MiB (G2/G3 are anonymised; the trace has no GPU memory ask,
#: so these only matter for reports)
OPENB_CARD_MIB: dict[str, int] = {
    "T4": 16_384, "P100": 16_384, "V100M16": 16_384, "V100M32": 32_768, "A10": 24_576,
    "G2": 32_768, "G3": 32_768,
}

DEFAULT_TRACE_DIR = Path("..") / "shared" / "traces" / "alibaba-gpu-2023"


def trace_dir() -> Path:
    """Where the openb trace lives: ``$XPUPOOL_TRACES/alibaba-gpu-2023`` or ``../shared/traces/...``."""
    root = os.environ.get("XPUPOOL_TRACES")
    if root:
        return Path(root) / "alibaba-gpu-2023"
    for base in (Path.cwd(), *Path.cwd().parents):
        candidate = base / "shared" / "traces" / "alibaba-gpu-2023"
        if candidate.is_dir():
            return candidate
        sibling = base.parent / "shared" / "traces" / "alibaba-gpu-2023"
        if sibling.is_dir():
            return sibling
    return DEFAULT_TRACE_DIR


def default_nodes_file() -> Path:
    return trace_dir() / "csv" / "openb_node_list_gpu_node.csv"


def pods_file(variant: str) -> Path:
    return trace_dir() / "csv" / f"openb_pod_list_{variant}.csv"


class TraceError(ValueError):
    """A trace file that cannot be read as the openb format; the message names file and line."""


def _rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """CSV rows with their line numbers; a missing column is a :class:`TraceError` up front."""
    with gzip.open(path, "rt", newline="") if path.suffix == ".gz" else path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}: missing column(s) {', '.join(missing)}")
        for row in reader:
            yield reader.line_num, row


def load_nodes(path: Path) -> list[Node]:
    """``sn,cpu_milli,memory_mib,gpu,model`` -> nodes; every card is 1000 milli."""
    nodes: list[Node] = []
    for line, row in _rows(path, ("sn", "cpu_milli", "memory_mib", "gpu")):
        try:
            gpus = int(row["gpu"])
            model = row.get("model", "") or ""
            devices = tuple(
                Device(index=i, vendor=Vendor.NVIDIA, model=model, memory_mib=OPENB_CARD_MIB.get(model, 32_768))
                for i in range(gpus)
            )
            nodes.append(Node(name=row["sn"], cpu_milli=int(row["cpu_milli"]), memory_mib=int(row["memory_mib"]),
                              devices=devices))
        except (ValueError, TypeError) as err:  # TypeError: a short row leaves a field None
            raise TraceError(f"{path}:{line}: {err}") from None
    return nodes


def load_pods(path: Path) -> list[Request]:
    """Pod list -> requests. Blank ``gpu_spec`` = any model; qos, phase and times are ignored."""
    pods: list[Request] = []
    for line, row in _rows(path, ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")):
        try:
            count = int(row["num_gpu"])
            milli = int(row["gpu_milli"]) if count else 0
            spec = (row.get("gpu_spec") or "").strip()
            models: Sequence[str] = tuple(m for m in spec.split("|") if m) if spec else ()
            pods.append(Request(
                name=row["name"],
                cpu_milli=int(row["cpu_milli"]),
                memory_mib=int(row["memory_mib"]),
                count=count,
                share_milli=milli,
                models=tuple(models),
                exclusive=count > 0 and milli >= WHOLE_CARD_MILLI,
            ))
        except (ValueError, TypeError) as err:  # TypeError: a short row leaves a field None
            raise TraceError(f"{path}:{line}: {err}") from None
    return pods
