"""The remoting catalogue is the single definition of the wire: the checked-in generated C and Python
are exactly what the generator writes from it, and the catalogue's own rules hold."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from xpupool._generated.remote import protocol
from xpupool.remote import catalogue, codegen


def test_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    assert written
    for fresh in written:
        checked_in = codegen.REPO_ROOT / fresh.relative_to(tmp_path)
        assert checked_in.exists(), f"{checked_in} missing: run python -m xpupool.remote.codegen"
        assert checked_in.read_text() == fresh.read_text(), (
            f"{checked_in.relative_to(codegen.REPO_ROOT)} drifted from native/remote/catalogue.yaml: "
            "run python -m xpupool.remote.codegen"
        )


def test_catalogue_size_and_modes() -> None:
    cat = catalogue.load()
    counts = cat.counts()
    assert len(cat.apis) >= 150
    assert counts["sync"] + counts["async"] + counts["custom"] >= 120, counts
    # every entry the real libcudart 12 resolves for memory, streams, events, modules and launches
    for name in ("cuMemAlloc_v2", "cuMemcpyHtoD_v2", "cuMemcpyDtoHAsync_v2", "cuStreamCreate", "cuEventRecord",
                 "cuLibraryLoadData", "cuLibraryGetKernel", "cuLaunchKernel", "cuLaunchKernel_ptsz",
                 "cuStreamSynchronize_ptsz", "cuGraphLaunch"):
        assert cat.by_name(name)


def test_fire_and_forget_calls_have_no_outputs_but_client_handles() -> None:
    for api in catalogue.load().apis:
        if api.mode is catalogue.Mode.ASYNC:
            outs = [p for p in api.params if p.direction is catalogue.Dir.OUT]
            assert all(p.wire == "handle" for p in outs), api.name


def test_python_header_layout_is_the_c_one() -> None:
    assert struct.calcsize(protocol.HEADER_FORMAT) == 32
    assert protocol.MAGIC == 0x52555058
    assert len(protocol.HEADER_FIELDS) == 10
    ids = [a[0] for a in protocol.APIS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{id: 1, name: cuA, mode: async, proto: \"CUdeviceptr *p\"}", "async calls cannot have outputs"),
        ("{id: 1, name: cuA, mode: sync, proto: \"void *p\"}", "no generated codec"),
        ("{id: 1, name: cuA, mode: sync, proto: \"size_t n\"}\n  - {id: 1, name: cuB, mode: sync, proto: \"\"}",
         "already used"),
        ("{id: 1, name: cuA, mode: sync, range: \"p:n\", proto: \"size_t n\"}", "unknown parameter"),
        ("{id: 1, name: cuA, mode: sync, optional: \"n\", proto: \"size_t n\"}", "not outputs"),
    ],
)
def test_inconsistent_catalogues_are_refused(tmp_path: Path, entry: str, message: str) -> None:
    text = catalogue.CATALOGUE_PATH.read_text()
    head = text[: text.index("\napis:\n")]
    path = tmp_path / "c.yaml"
    path.write_text(head + "\napis:\n  - " + entry + "\n")
    with pytest.raises(catalogue.CatalogueError, match=message):
        catalogue.load(path)
