"""Regenerates the checked-in protobuf stubs in :mod:`xpupool._generated` with grpcio-tools.

Contract: :func:`generate` writes ``api_pb2.py``, ``api_pb2.pyi`` and ``api_pb2_grpc.py`` for every
proto in :data:`PROTOS` under ``out_root`` (a ``src``-like root: module paths are kept), and
returns the list of files written. The checked-in stubs are exactly what ``generate(SRC_ROOT)``
writes; the drift test compares a fresh generation in a temporary directory byte for byte.

The stubs embed the generator's grpc version (``GRPC_GENERATED_VERSION``) and refuse to import on
an older grpcio runtime: regenerate with the lowest grpcio-tools the project supports.

Run ``python -m xpupool.agent.protogen`` to regenerate in place.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

#: The ``src`` directory that holds the ``xpupool`` package.
SRC_ROOT = Path(__file__).resolve().parents[2]

#: Protos, relative to :data:`SRC_ROOT` (their import path).
PROTOS = (
    "xpupool/_generated/deviceplugin/v1beta1/api.proto",
    "xpupool/_generated/podresources/v1/api.proto",
)


def generate(out_root: Path) -> list[Path]:
    """Generate stubs for :data:`PROTOS` into ``out_root``; raise ``RuntimeError`` if protoc fails."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # dev dependency only

    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        for proto in PROTOS:
            # Copy the proto so protoc sees the same relative path whatever out_root is.
            staged = tmp_root / "in" / proto
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SRC_ROOT / proto, staged)
            out = tmp_root / "out"
            out.mkdir(exist_ok=True)
            include = str(Path(protoc.__file__).parent / "_proto")
            args = [
                "grpc_tools.protoc",
                f"-I{tmp_root / 'in'}",
                f"-I{include}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                proto,
            ]
            rc = protoc.main(args)
            if rc != 0:
                raise RuntimeError(f"protoc failed ({rc}) for {proto}")
            stem = proto.removesuffix(".proto")
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
                src = out / f"{stem}{suffix}"
                dest = out_root / f"{stem}{suffix}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                written.append(dest)
    return written


def main() -> int:
    for path in generate(SRC_ROOT):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
