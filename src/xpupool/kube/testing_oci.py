"""Writes small OCI image archives (``oci-layout`` tar) from files on disk, for the test node.

No registry is reachable from the test machines, so images the node runs are made locally and
imported into containerd (``ctr images import``). This writer covers the one-layer case (the
pause image); the xpupool and workload images are built from their Containerfiles
(``deploy/image``). Standard library only and deterministic: the same files give the same
digests (mtime 0, uid/gid 0, sorted entries).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageFile:
    """``src`` on disk lands at absolute path ``dest`` in the image with permission ``mode``."""

    src: Path
    dest: str
    mode: int = 0o644


def _layer(files: list[ImageFile], links: dict[str, str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for dest in [f.dest for f in files] + list(links):
            parts = dest.strip("/").split("/")[:-1]
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for f in sorted(files, key=lambda f: f.dest):
            data = f.src.read_bytes()
            info = tarfile.TarInfo(f.dest.strip("/"))
            info.size, info.mode, info.mtime = len(data), f.mode, 0
            tar.addfile(info, io.BytesIO(data))
        for dest, target in sorted(links.items()):
            info = tarfile.TarInfo(dest.strip("/"))
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
            tar.addfile(info)
    return raw.getvalue()


def read_file(archive: Path, path: str) -> bytes:
    """The content of ``path`` in the (single-platform) image stored in OCI archive ``archive``,
    as the top-most layer holding it has it (whiteouts are not followed: test tooling)."""
    wanted = path.strip("/")
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> bytes:
            member = tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
            assert member is not None, digest
            return member.read()

        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        for layer in reversed(manifest["layers"]):
            with tarfile.open(fileobj=io.BytesIO(blob(layer["digest"])), mode="r:*") as layer_tar:
                for member in layer_tar:
                    if member.name.lstrip("./") == wanted and member.isfile():
                        data = layer_tar.extractfile(member)
                        assert data is not None
                        return data.read()
    raise FileNotFoundError(f"{path} not in {archive}")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    _add(tar, f"blobs/sha256/{digest}", data)
    return f"sha256:{digest}"


def write_image(
    out: Path, name: str, files: list[ImageFile], *, entrypoint: list[str], links: dict[str, str] | None = None
) -> str:
    """Write an archive holding image ``name`` (e.g. ``localhost/xpupool/pause:local``) with one
    layer made of ``files`` and symbolic ``links`` (path -> target); returns the manifest digest.

    The name is recorded as ``io.containerd.image.name`` so ``ctr images import`` registers the
    image under it. The archive is written to a temporary name and renamed (never half-written).
    """
    layer = _layer(files, links or {})
    diff_id = f"sha256:{hashlib.sha256(layer).hexdigest()}"
    compressed = gzip.compress(layer, mtime=0)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, mode="w") as tar:
        layer_digest = _blob(tar, compressed)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Entrypoint": entrypoint, "WorkingDir": "/"},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            },
            sort_keys=True,
        ).encode()
        config_digest = _blob(tar, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest,
                        "size": len(compressed),
                    }
                ],
            },
            sort_keys=True,
        ).encode()
        manifest_digest = _blob(tar, manifest)
        last = name.rsplit("/", 1)[-1]
        tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
                }
            ],
        }
        _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add(tar, "index.json", json.dumps(index, sort_keys=True).encode())
    tmp.replace(out)
    return manifest_digest
