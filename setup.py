"""Build hook: put the default openb trace (CC BY 4.0) into the wheel, never into the repository.

Metadata lives in pyproject.toml. At build time ``build_py`` copies the default pod list and the GPU
node list, gzip-compressed (reproducibly: no timestamp), into ``xpupool/sim/data/`` of the build,
from ``$XPUPOOL_TRACES/alibaba-gpu-2023/csv`` or a ``shared/traces`` folder beside or above this
directory. Without them the wheel is built without the data (``xpupool simulate`` then downloads
the files on first use), unless ``XPUPOOL_REQUIRE_TRACE_DATA=1``, which makes that an error.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
FILES = ("openb_pod_list_default.csv", "openb_node_list_gpu_node.csv")


def trace_csv_dir() -> Path | None:
    candidates = []
    if os.environ.get("XPUPOOL_TRACES"):
        candidates.append(Path(os.environ["XPUPOOL_TRACES"]))
    for base in (HERE, *HERE.parents):
        candidates += [base / "shared" / "traces", base.parent / "shared" / "traces"]
    for root in candidates:
        folder = root / "alibaba-gpu-2023" / "csv"
        if all((folder / name).is_file() for name in FILES):
            return folder
    return None


class BuildPyWithTraces(build_py):
    def run(self) -> None:
        super().run()
        folder = trace_csv_dir()
        if folder is None:
            if os.environ.get("XPUPOOL_REQUIRE_TRACE_DATA") == "1":
                raise SystemExit("openb trace not found (set XPUPOOL_TRACES): the wheel would lack its trace")
            self.warn("openb trace not found: building without packaged trace data")
            return
        target = Path(self.build_lib) / "xpupool" / "sim" / "data"
        target.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            data = (folder / name).read_bytes()
            (target / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


setup(cmdclass={"build_py": BuildPyWithTraces})
