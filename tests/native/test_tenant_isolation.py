"""A tenant cannot raise its limits or forge a neighbour's arbitration inputs (issue 10 §7).

The agent writes two containers' regions on one card with the real writer; the mounts of tenant A
are exactly what :func:`xpupool.agent.regions.container_shim_wiring` returns, applied in a private
mount namespace over a minimal container root (bind-mounted ``/usr``, ``/lib``..., then ``chroot``)
the way a container runtime applies a CDI spec. Inside, a non-root tenant (uid 65534) and a root
tenant without capabilities try every write that would change a limit, a share, a priority or a
neighbour's demand: all fail and the host files stay byte for byte the same. The real shim (on the
fake libcuda TEST DOUBLE) still works there: it charges its own usage file, reads the card policy
and publishes its demand in its own tenant file.

Needs root and ``unshare -m`` (CI runs as root); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpupool.agent import shim_region as sr
from xpupool.agent.allocation import PodSlice, RuntimePaths
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.regions import ShimRegionWriter, container_key, container_shim_wiring
from xpupool.core.model import Allocation, Vendor

pytestmark = pytest.mark.native

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "native" / "build"
MIB = 1 << 20
CARD = DeviceInfo(uuid="EMU-iso-0", index=0, vendor=Vendor.EMULATED, model="EMU-40G", memory_mib=40960, device_paths=())
HOST_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")

PROBE = textwrap.dedent(
    """
    import json, os, sys
    region, card, mine, theirs = sys.argv[1:5]
    results = {}

    def attempt(name, fn):
        try:
            fn()
            results[name] = "written"
        except OSError as exc:
            results[name] = exc.strerror

    def overwrite(path):  # opening for writing is the attempt; the bytes written are the same
        with open(path, "r+b") as f:
            data = f.read(64)
            f.seek(0)
            f.write(data)

    attempt("config", lambda: overwrite(f"{region}/config"))
    attempt("usage", lambda: overwrite(f"{region}/usage"))
    attempt("policy", lambda: overwrite(f"{card}/policy"))
    attempt("own tenant file", lambda: overwrite(f"{card}/{mine}"))
    attempt("neighbour tenant file", lambda: overwrite(f"{card}/{theirs}"))
    attempt("replace config", lambda: os.rename(f"{region}/usage", f"{region}/config"))
    attempt("delete config", lambda: os.unlink(f"{region}/config"))
    attempt("chmod config", lambda: os.chmod(f"{region}/config", 0o666))
    attempt("new file next to config", lambda: open(f"{region}/config.new", "wb").close())
    attempt("replace policy", lambda: os.unlink(f"{card}/policy"))
    print(json.dumps(results))
    """
)


def _can_unshare() -> str:
    if os.geteuid() != 0:
        return "needs root to build a mount namespace"
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return "needs unshare and setpriv (util-linux)"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=10)
    return "" if probe.returncode == 0 else f"unshare -m refused: {probe.stderr.decode().strip()}"


@pytest.fixture(scope="module")
def build() -> Path:
    subprocess.run(
        ["make", "-s", "-C", str(ROOT / "native"), f"PYTHON={sys.executable}", "all"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return BUILD


@pytest.fixture
def container_root() -> Iterator[Path]:
    # pytest's tmp_path sits below a 0700 directory a tenant uid could not traverse
    root = Path(tempfile.mkdtemp(prefix="xpupool-ctr-", dir="/tmp"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _pod(uid: str, share_milli: int) -> PodSlice:
    return PodSlice(
        namespace="ns",
        name=uid,
        uid=uid,
        container="main",
        allocation=Allocation(
            pod=f"ns/{uid}", node="n1", device_node="n1", cards=(0,), share_milli=share_milli, device_memory_mib=(1024,)
        ),
    )


def _snapshot(paths: list[Path]) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in paths}


def test_a_tenant_cannot_raise_its_limits_or_forge_a_neighbours_demand(
    build: Path, tmp_path: Path, container_root: Path
) -> None:
    reason = _can_unshare()
    if reason:
        pytest.skip(reason)
    host = tmp_path / "host"
    paths = RuntimePaths(
        shim_host_dir=str(build),
        shim_container_dir="/opt/xpupool/lib",  # not below a directory bound from the host
        region_host_root=str(host / "regions"),
        card_host_dir=str(host / "cards"),
    )
    writer = ShimRegionWriter(region_root=host / "regions", card_host_dir=host / "cards")
    region_a = host / "regions" / "uid-a-000000000001" / "region"
    region_b = host / "regions" / "uid-b-000000000002" / "region"
    assert writer.write(path=region_a, pod=_pod("uid-a", 300), cards=[CARD]).ok
    assert writer.write(path=region_b, pod=_pod("uid-b", 500), cards=[CARD]).ok
    for d in (host, host / "regions", host / "cards"):
        os.chmod(d, 0o700)  # the host side is root-only; the container sees it through its mounts only
    wiring = container_shim_wiring(region_dir=region_a, paths=paths)
    assert wiring.status.ok, wiring.status.message()
    card_host = host / "cards" / "EMU-iso-0"
    card_ctr = "/run/xpupool/cards/EMU-iso-0"
    protected = [region_a / "config", card_host / "policy", card_host / "tenant-01", region_b / "config"]
    before = _snapshot(protected)

    # the container: a root file system with the host's binaries, the build tree at its own path,
    # then the shim's mounts in the order the wiring gives them
    script = ["set -e"]
    for d in HOST_DIRS:
        if Path(d).is_dir() and not Path(d).is_symlink():
            script += [f"mkdir -p {container_root}{d}", f"mount --rbind {d} {container_root}{d}"]
        elif Path(d).is_symlink():
            script.append(f"ln -s {os.readlink(d)} {container_root}{d}")
    script += [f"mkdir -p {container_root}/tmp {container_root}/proc {container_root}/dev",
               f"chmod 1777 {container_root}/tmp",
               f"mount -t proc proc {container_root}/proc",
               f"mount --rbind /dev {container_root}/dev",
               f"mkdir -p {container_root}{build}",
               f"mount --bind -o ro {build} {container_root}{build}"]
    for m in wiring.mounts:
        target = f"{container_root}{m.container_path}"
        if Path(m.host_path).is_dir():
            script.append(f"mkdir -p {target}")
        else:
            script.append(f"[ -e {target} ] || {{ mkdir -p $(dirname {target}); touch {target}; }}")
        script.append(f"mount --bind {m.host_path} {target}")
        if m.read_only:
            script.append(f"mount -o remount,bind,ro {target}")
    (container_root / "probe.py").write_text(PROBE)
    env = " ".join(f"{k}={v}" for k, v in wiring.envs.items())
    run_in = f"env -i PATH=/usr/bin:/bin XPUSHIM_LOG=0 LD_LIBRARY_PATH={build}/testdoubles {env}"
    probe_args = f"/usr/bin/python3 /probe.py /run/xpupool/shim/region {card_ctr} tenant-00 tenant-01"
    script += [
        f"echo NOBODY; chroot {container_root} setpriv --reuid 65534 --regid 65534 --clear-groups {probe_args}",
        f"echo NOCAPROOT; chroot {container_root} setpriv --bounding-set=-all --inh-caps=-all {probe_args}",
        # the real shim as the tenant: quota through its usage file, share through the card policy
        f"echo SHIM; chroot {container_root} setpriv --reuid 65534 --regid 65534 --clear-groups "
        f"{run_in} {build}/tests/t_cuda launch 1.5 1000",
        f"echo QUOTA; chroot {container_root} setpriv --reuid 65534 --regid 65534 --clear-groups "
        f"{run_in} {build}/tests/t_cuda try {2048 * MIB} || true",
    ]
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    parts = _split(out.stdout)
    sections = dict(zip(parts[0::2], parts[1::2], strict=True))
    nobody, noroot = json.loads(sections["NOBODY"]), json.loads(sections["NOCAPROOT"])
    for who, results in (("uid 65534", nobody), ("root without capabilities", noroot)):
        # what the tenant's own shims must write stays writable...
        assert results["usage"] == "written" and results["own tenant file"] == "written", (who, results)
        # ...and nothing that sets a limit, a share, a priority or a neighbour's demand is
        for attempt in ("config", "policy", "neighbour tenant file", "replace config", "delete config",
                        "chmod config", "new file next to config", "replace policy"):
            assert results[attempt] != "written", (who, attempt, results)
    assert nobody["config"] == "Permission denied" and noroot["config"] == "Read-only file system"
    assert _snapshot(protected) == before, "a refused write changed a protected file"

    # the shim worked under these mounts: it read the limits and the card policy...
    assert "share " in sections["SHIM"], sections["SHIM"]
    share = float(sections["SHIM"].split("share ")[-1].split()[0])
    assert 27 <= share <= 33, sections["SHIM"]  # 30 % from the agent's config and card policy
    assert "rc 2" in sections["QUOTA"]  # 2 GiB over the 1 GiB quota: CUDA_ERROR_OUT_OF_MEMORY
    # ...and published its demand in its own tenant file only, under its own owner key
    card = sr.CardRegion(card_host)
    try:
        views = {t.slot: t for t in card.tenants()}
        assert views[0].owner_key == container_key(region_a.parent.name) and views[0].effective_bp > 0
        assert views[1].last_demand_ns == 0  # the neighbour's demand is untouched
    finally:
        card.close()


def _split(stdout: str) -> list[str]:
    """``NAME`` marker lines followed by their output -> [NAME, text, NAME, text, ...]."""
    out: list[str] = []
    for line in stdout.splitlines():
        if line in ("NOBODY", "NOCAPROOT", "SHIM", "QUOTA"):
            out += [line, ""]
        elif out:
            out[-1] += line + "\n"
    return out
