"""The remoted CUDA driver API catalogue: loading, wire-kind inference and validation.

``native/remote/catalogue.yaml`` is the single definition of what crosses the wire. This module turns
it into typed records for the generator (:mod:`xpupool.remote.codegen`) and the coverage report.
It runs at build time and in tests only; nothing here is on the data path.

Wire kinds of a parameter are inferred from its C type (``unsigned int`` -> ``u32``, ``CUstream`` ->
a stream handle, ``CUdeviceptr *`` -> an output device pointer, ``const CUmemAllocationProp *`` -> an
input struct copied by value...). A type the rules do not know is an error for ``sync``/``async``
entries: such calls must be ``custom`` (hand-written codecs) or ``local``.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from pathlib import Path
from typing import Any

import yaml

#: Repository root (``src/xpupool/remote`` -> three levels up).
REPO_ROOT = Path(__file__).resolve().parents[3]
CATALOGUE_PATH = REPO_ROOT / "native" / "remote" / "catalogue.yaml"


class Mode(enum.StrEnum):
    LOCAL = "local"
    SYNC = "sync"
    ASYNC = "async"
    CUSTOM = "custom"
    UNSUPPORTED = "unsupported"


#: C scalar type -> wire kind.
SCALARS: dict[str, str] = {
    "unsigned int": "u32",
    "int": "i32",
    "size_t": "u64",
    "unsigned long long": "u64",
    "cuuint64_t": "u64",
    "float": "f32",
    "unsigned char": "u8",
    "unsigned short": "u16",
    "CUdevice": "dev",
    "CUdeviceptr": "dptr",
}

#: Enumerations (int-sized on every ABI the driver supports) travel as i32.
ENUMS = frozenset({
    "CUdevice_attribute", "CUlimit", "CUfunc_cache", "CUsharedconfig", "CUfunction_attribute",
    "CUstreamCaptureMode", "CUstreamCaptureStatus", "CUmemAllocationGranularity_flags", "CUstreamAttrID",
    "CUfunctionLoadingState", "CUmemPool_attribute", "CUgraphMem_attribute", "CUpointer_attribute",
})

#: Opaque driver handles -> handle kind (ids are tagged per kind, see ``protocol.handles``).
HANDLES: dict[str, str] = {
    "CUstream": "stream", "CUevent": "event", "CUmodule": "module", "CUfunction": "func",
    "CUlibrary": "library", "CUkernel": "kernel", "CUgraph": "graph", "CUgraphExec": "gexec",
    "CUmemoryPool": "pool", "CUcontext": "ctx", "CUmemGenericAllocationHandle": "vmm",
}

#: Plain structs copied by value. Pointer fields a client could set are cleared on the server
#: (the server never dereferences a client address).
PODS: dict[str, tuple[str, ...]] = {
    "CUmemPoolProps": ("win32SecurityAttributes",),
    "CUmemAllocationProp": ("win32HandleMetaData",),
    "CUstreamAttrValue": (),
    "CUuuid": (),
}


class Dir(enum.StrEnum):
    IN = "in"
    OUT = "out"


@dataclasses.dataclass(frozen=True, slots=True)
class Param:
    """One C parameter: ``ctype`` is the base type without qualifiers and ``*``."""

    name: str
    decl: str            # the declaration exactly as written in the catalogue
    ctype: str
    const: bool
    stars: int
    direction: Dir | None = None
    wire: str | None = None      # u8 u16 u32 i32 u64 f32 dev dptr handle cstr pod
    handle: str | None = None    # handle kind for wire == "handle"
    optional: bool = False       # an output the caller may pass as NULL (the driver then skips it)


@dataclasses.dataclass(frozen=True, slots=True)
class Track:
    """Server bookkeeping of a device range (see the catalogue header)."""

    action: str
    ptr: str
    size: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """A device range checked before the call: ``ptr`` spans ``size_arg * scale`` bytes."""

    ptr: str
    size_arg: str
    scale: int


@dataclasses.dataclass(frozen=True, slots=True)
class Range2D:
    ptr: str
    pitch: str
    width: str
    height: str
    elem: int


@dataclasses.dataclass(frozen=True, slots=True)
class Api:
    id: int
    name: str
    mode: Mode
    params: tuple[Param, ...]
    noctx: bool = False
    pt: str | None = None
    syncpoint: bool = False
    track: Track | None = None
    ranges: tuple[Range, ...] = ()
    range2d: Range2D | None = None
    destroys: str | None = None
    hook: bool = False
    backend: str | None = None

    @property
    def server_symbol(self) -> str:
        """The backend entry the daemon calls for this API."""
        return self.backend or self.name

    @property
    def alias(self) -> str | None:
        """The per-thread default-stream export (``cuLaunchKernel_ptsz``), if any."""
        return f"{self.name}_{self.pt}" if self.pt else None

    @property
    def exports(self) -> tuple[str, ...]:
        return (self.name, self.alias) if self.alias else (self.name,)

    @property
    def remoted(self) -> bool:
        return self.mode in (Mode.SYNC, Mode.ASYNC, Mode.CUSTOM)

    @property
    def generic(self) -> bool:
        """Codecs generated (sync/async) rather than hand-written."""
        return self.mode in (Mode.SYNC, Mode.ASYNC)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise CatalogueError(f"{self.name}: no parameter {name!r}")

    def c_params(self) -> str:
        return ", ".join(p.decl for p in self.params) if self.params else "void"

    def c_args(self) -> str:
        return ", ".join(p.name for p in self.params)


@dataclasses.dataclass(frozen=True, slots=True)
class Protocol:
    magic: int
    version: int
    header: tuple[tuple[str, str], ...]
    types: dict[str, int]
    flags: dict[str, int]
    limits: dict[str, int]
    handles: dict[str, int]
    errors: dict[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Catalogue:
    protocol: Protocol
    apis: tuple[Api, ...]

    def by_name(self, name: str) -> Api:
        for a in self.apis:
            if name in a.exports:
                return a
        raise KeyError(name)

    def counts(self) -> dict[str, int]:
        out = {m.value: 0 for m in Mode}
        for a in self.apis:
            out[a.mode.value] += 1
        return out


class CatalogueError(ValueError):
    """The catalogue is inconsistent; the message names the entry."""


def parse_param(decl: str) -> Param:
    """Split ``const CUmemPoolProps *poolProps`` into type, qualifiers, pointer depth and name."""
    text = decl.strip()
    m = re.fullmatch(r"(.*?)\s*([A-Za-z_]\w*)", text.replace("*", " "))
    if not m or not m.group(1).strip():
        raise CatalogueError(f"cannot parse parameter {decl!r}")
    ctype = " ".join(m.group(1).split())
    const = ctype.startswith("const ")
    if const:
        ctype = ctype[len("const "):]
    return Param(name=m.group(2), decl=text, ctype=ctype, const=const, stars=text.count("*"))


def _split_params(proto: str) -> list[str]:
    proto = proto.strip()
    if not proto or proto == "void":
        return []
    return [p.strip() for p in proto.split(",")]


def infer(api_name: str, p: Param, generic: bool) -> Param:
    """Attach direction and wire kind; raise for types a generated codec cannot carry."""
    t = p.ctype
    if p.stars == 0:
        if t in SCALARS:
            return dataclasses.replace(p, direction=Dir.IN, wire=SCALARS[t])
        if t in ENUMS:
            return dataclasses.replace(p, direction=Dir.IN, wire="i32")
        if t in HANDLES:
            return dataclasses.replace(p, direction=Dir.IN, wire="handle", handle=HANDLES[t])
    elif p.stars == 1:
        if p.const and t == "char":
            return dataclasses.replace(p, direction=Dir.IN, wire="cstr")
        if p.const and t in PODS:
            return dataclasses.replace(p, direction=Dir.IN, wire="pod")
        if not p.const:
            if t in SCALARS:
                return dataclasses.replace(p, direction=Dir.OUT, wire=SCALARS[t])
            if t in ENUMS:
                return dataclasses.replace(p, direction=Dir.OUT, wire="i32")
            if t in HANDLES:
                return dataclasses.replace(p, direction=Dir.OUT, wire="handle", handle=HANDLES[t])
            if t in PODS:
                return dataclasses.replace(p, direction=Dir.OUT, wire="pod")
    if generic:
        raise CatalogueError(f"{api_name}: parameter {p.decl!r} has no generated codec; make the entry custom")
    return p


def _mark_optional(api: str, params: tuple[Param, ...], text: str) -> tuple[Param, ...]:
    """``optional: "a b"``: outputs ``a`` and ``b`` may be NULL (cuModuleGetGlobal's dptr/bytes)."""
    names = set(text.split())
    outs = {p.name for p in params if p.direction is Dir.OUT}
    if names - outs:
        raise CatalogueError(f"{api}: optional names {sorted(names - outs)}, which are not outputs")
    return tuple(dataclasses.replace(p, optional=True) if p.name in names else p for p in params)


def _track(api: str, text: str | None) -> Track | None:
    if not text:
        return None
    parts = text.split(":")
    actions = {"alloc": 3, "free": 2, "global": 3, "reserve": 3, "unreserve": 3, "map": 3, "unmap": 3}
    if parts[0] not in actions or len(parts) != actions[parts[0]]:
        raise CatalogueError(f"{api}: bad track {text!r}")
    return Track(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def _ranges(api: str, text: str | None) -> tuple[Range, ...]:
    if not text:
        return ()
    out = []
    for item in text.split(","):
        ptr, _, expr = item.partition(":")
        size_arg, _, scale = expr.partition("*")
        if not ptr or not size_arg:
            raise CatalogueError(f"{api}: bad range {item!r}")
        out.append(Range(ptr, size_arg, int(scale) if scale else 1))
    return tuple(out)


def _range2d(api: str, text: str | None) -> Range2D | None:
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 5:
        raise CatalogueError(f"{api}: bad range2d {text!r}")
    return Range2D(parts[0], parts[1], parts[2], parts[3], int(parts[4]))


def _validate(api: Api) -> None:
    names = {p.name for p in api.params}
    if api.mode is Mode.ASYNC:
        for p in api.params:
            if p.direction is Dir.OUT and p.wire != "handle":
                raise CatalogueError(f"{api.name}: async calls cannot have outputs ({p.decl})")
    for r in api.ranges:
        for n in (r.ptr, r.size_arg):
            if n not in names:
                raise CatalogueError(f"{api.name}: range names unknown parameter {n!r}")
        if api.param(r.ptr).wire != "dptr":
            raise CatalogueError(f"{api.name}: range on non-pointer {r.ptr!r}")
    if api.range2d:
        for n in (api.range2d.ptr, api.range2d.pitch, api.range2d.width, api.range2d.height):
            if n not in names:
                raise CatalogueError(f"{api.name}: range2d names unknown parameter {n!r}")
    if api.track:
        for tn in (api.track.ptr, api.track.size):
            if tn is not None and tn not in names:
                raise CatalogueError(f"{api.name}: track names unknown parameter {tn!r}")
    if api.destroys and api.destroys not in names and api.destroys not in HANDLES.values():
        raise CatalogueError(f"{api.name}: destroys unknown parameter {api.destroys!r}")
    if api.pt and api.pt not in ("ptsz", "ptds"):
        raise CatalogueError(f"{api.name}: pt must be ptsz or ptds")


def _destroyed_param(api_name: str, params: tuple[Param, ...], text: str | None) -> str | None:
    """``destroys`` names a parameter, or a handle kind (the single parameter of that kind)."""
    if not text:
        return None
    for p in params:
        if p.name == text:
            return p.name
    matches = [p.name for p in params if p.handle == text and p.direction is Dir.IN]
    if len(matches) != 1:
        raise CatalogueError(f"{api_name}: destroys {text!r} matches {matches}")
    return matches[0]


def load(path: Path = CATALOGUE_PATH) -> Catalogue:
    """Load and validate the catalogue (unique ids and names, codecs for every generic entry)."""
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    pr = doc["protocol"]
    protocol = Protocol(
        magic=int(pr["magic"]), version=int(pr["version"]),
        header=tuple((str(f), str(t)) for f, t in pr["header"]),
        types={str(k): int(v) for k, v in pr["types"].items()},
        flags={str(k): int(v) for k, v in pr["flags"].items()},
        limits={str(k): int(v) for k, v in pr["limits"].items()},
        handles={str(k): int(v) for k, v in pr["handles"].items()},
        errors={str(k): int(v) for k, v in pr["errors"].items()},
    )
    if set(protocol.handles) != set(HANDLES.values()):
        raise CatalogueError("protocol.handles must list exactly the handle kinds catalogue.py knows")
    apis: list[Api] = []
    seen_ids: dict[int, str] = {}
    seen_names: set[str] = set()
    for raw in doc["apis"]:
        name = str(raw["name"])
        mode = Mode(raw["mode"])
        generic = mode in (Mode.SYNC, Mode.ASYNC)
        params = tuple(infer(name, parse_param(d), generic) for d in _split_params(str(raw.get("proto", ""))))
        params = _mark_optional(name, params, str(raw.get("optional", "")))
        api = Api(
            id=int(raw["id"]), name=name, mode=mode, params=params,
            noctx=bool(raw.get("noctx", False)), pt=raw.get("pt"), syncpoint=bool(raw.get("syncpoint", False)),
            track=_track(name, raw.get("track")), ranges=_ranges(name, raw.get("range")),
            range2d=_range2d(name, raw.get("range2d")), destroys=_destroyed_param(name, params, raw.get("destroys")),
            hook=bool(raw.get("hook", False)), backend=raw.get("backend"),
        )
        if api.backend and (api.alias or not api.generic):
            raise CatalogueError(f"{name}: backend is for generated entries without a per-thread alias")
        if api.hook and not api.generic:
            raise CatalogueError(f"{name}: hook is for generated (sync/async) entries")
        if not 1 <= api.id <= 1023:
            raise CatalogueError(f"{name}: id {api.id} outside 1..1023")
        if api.id in seen_ids:
            raise CatalogueError(f"{name}: id {api.id} already used by {seen_ids[api.id]}")
        for export in api.exports:
            if export in seen_names:
                raise CatalogueError(f"{export} listed twice")
            seen_names.add(export)
        seen_ids[api.id] = name
        _validate(api)
        apis.append(api)
    return Catalogue(protocol=protocol, apis=tuple(apis))
