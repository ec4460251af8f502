"""Builds xpupool's container images without a Docker engine, cached by a hash of their inputs.

Test/CI tooling (``make image``; the node tests call :func:`ensure_image`). What it does:

  1. **Base**: no registry is reachable from CI, so the ``BASE_IMAGE`` the Containerfiles expect
     (Debian 12, like ``debian:bookworm-slim``) is made from Debian packages with ``mmdebstrap``
     (``minbase``; the host's apt sources), cached as a rootfs tarball keyed by suite, variant,
     sources and mmdebstrap version, and committed into buildah's storage.
  2. **Image**: ``buildah bud`` (vfs storage, chroot isolation: no daemon, no overlay mounts) of
     ``deploy/image/Containerfile`` (``xpupool``: tagged exactly as the chart's default image
     reference) or ``deploy/image/workload.Containerfile`` (``workload``: the TEST-DOUBLE GPU
     workload), pushed to an OCI archive keyed by the hash of the Containerfile, the base and
     every file the Containerfile copies (``git ls-files`` of its inputs).
  3. The archive is what :meth:`xpupool.kube.testing_node.NodeCluster.import_image` takes.

The host's CA bundle is handed to pip inside the build as the ``pip-ca`` build secret (CI
reaches PyPI through a TLS-intercepting proxy). Build times are appended to
``<cache>/build-times.txt``. buildah and mmdebstrap are apt-installed when missing (as root).

Cache: ``$XPUPOOL_IMAGE_CACHE`` or ``${XDG_CACHE_HOME:-~/.cache}/xpupool/images``; a lock file
there makes a concurrent build wait.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART = REPO_ROOT / "deploy" / "helm" / "xpupool"
SUITE = "bookworm"
VARIANT = "minbase"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TOOLS = {"buildah": "buildah", "mmdebstrap": "mmdebstrap"}


@dataclass(frozen=True)
class ImageRecipe:
    """One image: its Containerfile and the repository paths its COPY instructions read."""

    key: str
    containerfile: str
    inputs: tuple[str, ...]


RECIPES = {
    "xpupool": ImageRecipe("xpupool", "deploy/image/Containerfile", ("native", "src", "pyproject.toml", "README.md")),
    "workload": ImageRecipe(
        "workload", "deploy/image/workload.Containerfile", ("native", "deploy/image/workload/xpu_probe.c")
    ),
}
#: The test-double workload image's repository (the tag is its input hash).
WORKLOAD_REPOSITORY = "localhost/xpupool/testdouble-workload"


@dataclass(frozen=True)
class BuiltImage:
    name: str
    archive: Path
    built_s: float  # 0.0 when it came from the cache


def cache_dir() -> Path:
    if os.environ.get("XPUPOOL_IMAGE_CACHE"):
        return Path(os.environ["XPUPOOL_IMAGE_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "xpupool" / "images"


def chart_image_reference() -> str:
    """``image.repository:appVersion`` from the chart's defaults: what ``helm install`` runs."""
    import yaml

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    tag = values["image"].get("tag") or chart["appVersion"]
    return f"{values['image']['repository']}:{tag}"


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _apt_sources() -> Path:
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    return deb822 if deb822.exists() else Path("/etc/apt/sources.list")


def _tool_version(tool: str) -> bytes:
    return subprocess.run([tool, "--version"], capture_output=True, check=True).stdout


def base_key() -> str:
    return _sha256(SUITE.encode(), VARIANT.encode(), _apt_sources().read_bytes(), _tool_version("mmdebstrap"))[:16]


def input_files(paths: tuple[str, ...]) -> list[str]:
    """Files the build context holds under ``paths``: tracked plus untracked-not-ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "--", *paths],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted({f for f in out.splitlines() if (REPO_ROOT / f).is_file()})


def image_key(recipe: ImageRecipe) -> str:
    parts = [recipe.containerfile.encode(), (REPO_ROOT / recipe.containerfile).read_bytes(), base_key().encode()]
    for name in input_files(recipe.inputs):
        parts += [name.encode(), (REPO_ROOT / name).read_bytes()]
    return _sha256(*parts)[:16]


def image_name(recipe: ImageRecipe, key: str) -> str:
    return chart_image_reference() if recipe.key == "xpupool" else f"{WORKLOAD_REPOSITORY}:{key}"


def archive_path(recipe: ImageRecipe, key: str) -> Path:
    return cache_dir() / f"{recipe.key}-{key}.oci.tar"


def cached_image(which: str) -> BuiltImage | None:
    """The cached archive for the current sources, or ``None`` (no tool needed to answer)."""
    recipe = RECIPES[which]
    if shutil.which("mmdebstrap") is None:
        return None
    key = image_key(recipe)
    archive = archive_path(recipe, key)
    return BuiltImage(image_name(recipe, key), archive, 0.0) if archive.exists() else None


# ------------------------------------------------------------------------------ building
def _log(message: str) -> None:
    print(f"xpupool images: {message}", file=sys.stderr, flush=True)


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"missing {', '.join(missing)}: install them (apt-get install -y {' '.join(missing)})")
    _log(f"installing Debian packages: {' '.join(missing)}")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(cmd, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True)
        subprocess.run(cmd, check=True)


@contextmanager
def _locked() -> Iterator[None]:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _buildah(*args: str, capture: bool = False, check: bool = True) -> str:
    storage = cache_dir() / "buildah"
    cmd = [
        "buildah",
        f"--root={storage / 'storage'}",
        f"--runroot={storage / 'run'}",
        "--storage-driver=vfs",
        *args,
    ]
    done = subprocess.run(cmd, check=check, text=True, stdout=subprocess.PIPE if capture else sys.stderr)
    return done.stdout.strip() if capture else ""


def _record(what: str, seconds: float) -> None:
    with open(cache_dir() / "build-times.txt", "a") as f:
        f.write(f"{what} {seconds:.0f} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")


def _base_image() -> str:
    """The mmdebstrap base, committed into buildah storage; returns its local name."""
    key = base_key()
    name = f"localhost/xpupool/debian-base:{SUITE}-{key}"
    present = _buildah("images", "--quiet", "--filter", f"reference={name}", capture=True)
    if present:
        return name
    rootfs = cache_dir() / f"base-{SUITE}-{VARIANT}-{key}.tar"
    if not rootfs.exists():
        _log(f"making the {SUITE} base with mmdebstrap (once per sources change)")
        t0 = time.monotonic()
        tmp = rootfs.with_name(rootfs.name + ".tmp")
        subprocess.run(
            ["mmdebstrap", f"--variant={VARIANT}", "--mode=root", "--format=tar", SUITE, str(tmp), str(_apt_sources())],
            check=True,
            stdout=sys.stderr,
        )
        tmp.replace(rootfs)
        _record(f"base-{SUITE}", time.monotonic() - t0)
    container = _buildah("from", "scratch", capture=True)
    try:
        _buildah("add", container, str(rootfs), "/")
        _buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", container)
        _buildah("config", "--cmd", "/bin/bash", container)
        _buildah("commit", "--quiet", container, name)
    finally:
        _buildah("rm", container, capture=True, check=False)
    return name


def ensure_image(which: str) -> BuiltImage:
    """The image's OCI archive for the current sources: from the cache, else built now."""
    recipe = RECIPES[which]
    ensure_tools()
    with _locked():
        key = image_key(recipe)
        archive = archive_path(recipe, key)
        name = image_name(recipe, key)
        if archive.exists():
            return BuiltImage(name, archive, 0.0)
        t0 = time.monotonic()
        base = _base_image()
        _log(f"building {name} from {recipe.containerfile} (buildah, vfs); minutes on a cold cache")
        args = [
            "bud",
            "--isolation=chroot",
            "--layers=false",
            f"--build-arg=BASE_IMAGE={base}",
            f"--file={REPO_ROOT / recipe.containerfile}",
            f"--tag={name}",
        ]
        if HOST_CA_BUNDLE.exists():
            args.append(f"--secret=id=pip-ca,src={HOST_CA_BUNDLE}")
        _buildah(*args, str(REPO_ROOT))
        tmp = archive.with_name(archive.name + ".tmp")
        tmp.unlink(missing_ok=True)
        _buildah("push", "--quiet", name, f"oci-archive:{tmp}:{name}")
        tmp.replace(archive)
        # vfs keeps full copies of every layer: drop the image, keep only the archive.
        _buildah("rmi", "--force", name)
        built_s = time.monotonic() - t0
        _record(f"{which}-{key}", built_s)
        for stale in cache_dir().glob(f"{recipe.key}-*.oci.tar"):
            if stale != archive:
                stale.unlink(missing_ok=True)
        return BuiltImage(name, archive, built_s)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build xpupool images without a Docker engine (cached).")
    parser.add_argument("images", nargs="+", choices=sorted(RECIPES))
    args = parser.parse_args()
    try:
        ensure_tools()
    except (RuntimeError, subprocess.CalledProcessError) as err:
        if os.environ.get("CI") or os.environ.get("REQUIRE_E2E"):
            raise
        _log(f"WARNING: not building images ({err}); the node tests that need them will skip")
        return
    for which in args.images:
        built = ensure_image(which)
        size_mib = built.archive.stat().st_size / 2**20
        how = f"built in {built.built_s:.0f} s" if built.built_s else "cached"
        _log(f"{which}: {built.name} ({size_mib:.0f} MiB archive, {how})")
        print(f"{built.name} {built.archive}")


if __name__ == "__main__":
    main()
