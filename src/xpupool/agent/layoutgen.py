"""Generates the Python mirror of the shim's shared layouts from their single definition.

The definition is ``native/include/xpushim_layout.def`` (C builds its structs from the same file
through X-macros). :func:`render` turns it into the source of :mod:`xpupool._generated.shim_layout`:
every ``#define`` as a constant of the same name, every ``XPU_STRUCT`` as a ``ctypes.Structure``
(natural alignment, like the C compiler; each declared size is checked when the module loads),
plus ``STRUCTS`` (C struct name -> class). The checked-in module is exactly what
:func:`render` returns; ``tests/agent/test_shim_region.py`` compares both and compares every
offset with what the C compiler lays out.

Run ``python -m xpupool.agent.layoutgen`` to regenerate in place.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: The ``src`` directory that holds the ``xpupool`` package.
SRC_ROOT = Path(__file__).resolve().parents[2]
DEFINITION = SRC_ROOT.parent / "native" / "include" / "xpushim_layout.def"
OUTPUT = SRC_ROOT / "xpupool" / "_generated" / "shim_layout.py"

_CTYPES = {
    "u8": "ctypes.c_uint8",
    "u32": "ctypes.c_uint32",
    "i32": "ctypes.c_int32",
    "u64": "ctypes.c_uint64",
    "au32": "ctypes.c_uint32",  # C11 _Atomic of the same size and alignment
    "au64": "ctypes.c_uint64",
    "char": "ctypes.c_char",
}
_DEFINE = re.compile(r"^#define\s+(\w+)\s+(.+?)\s*(?:/\*\s*(.*?)\s*\*/)?\s*$")
_MACRO = re.compile(
    r"^(XPU_STRUCT|XPU_FIELD|XPU_ARRAY|XPU_NESTED|XPU_MEMBER|XPU_END)\(([^)]*)\)\s*(?:/\*\s*(.*?)\s*(?:\*/)?)?$"
)


@dataclass
class _Struct:
    c_name: str
    size: int
    fields: list[tuple[str, str, str]] = field(default_factory=list)  # name, ctypes expression, comment


def class_name(c_name: str) -> str:
    """``xpu_dev_config`` -> ``DevConfig``."""
    return "".join(part.capitalize() for part in c_name.removeprefix("xpu_").split("_"))


def _value(raw: str) -> int | str:
    raw = raw.strip()
    if raw.startswith('"'):
        return raw.strip('"')
    return int(re.sub(r"[uUlL]+$", "", raw), 0)


def parse(text: str) -> tuple[dict[str, tuple[int | str, str]], list[_Struct]]:
    """Constants (name -> (value, comment)) and structs of a layout definition."""
    consts: dict[str, tuple[int | str, str]] = {}
    structs: list[_Struct] = []
    current: _Struct | None = None
    text = re.sub(r"/\*(?:(?!\*/).)*?\n(?:.|\n)*?\*/", "", text)  # drop multi-line comments

    def count(raw: str) -> int:
        raw = raw.strip()
        if raw in consts:
            value = consts[raw][0]
            if not isinstance(value, int):
                raise ValueError(f"{raw} is not a number")
            return value
        return int(raw, 0)

    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        d = _DEFINE.match(line)
        if d:
            consts[d.group(1)] = (_value(d.group(2)), d.group(3) or "")
            continue
        m = _MACRO.match(line)
        if not m:
            if line.startswith("/*"):
                continue
            raise ValueError(f"unexpected line in the layout definition: {line!r}")
        kind, args, comment = m.group(1), [a.strip() for a in m.group(2).split(",")], m.group(3) or ""
        if kind == "XPU_STRUCT":
            current = _Struct(args[0], count(args[1]))
        elif kind == "XPU_END":
            if current is None or args[0] != current.c_name:
                raise ValueError(f"XPU_END({args[0]}) does not close the open struct")
            structs.append(current)
            current = None
        elif current is None:
            raise ValueError(f"{kind} outside a struct")
        elif kind == "XPU_FIELD":
            current.fields.append((args[1], _CTYPES[args[0]], comment))
        elif kind == "XPU_ARRAY":
            current.fields.append((args[1], f"{_CTYPES[args[0]]} * {count(args[2])}", comment))
        elif kind == "XPU_NESTED":
            current.fields.append((args[1], f"{class_name(args[0])} * {count(args[2])}", comment))
        else:  # XPU_MEMBER
            current.fields.append((args[1], class_name(args[0]), comment))
    if current is not None:
        raise ValueError(f"struct {current.c_name} is not closed")
    return consts, structs


def render(text: str) -> str:
    """The source of the generated module for a layout definition."""
    consts, structs = parse(text)
    out = [
        '"""GENERATED from native/include/xpushim_layout.def by ``python -m xpupool.agent.layoutgen``:',
        "do not edit. The layouts the C shim and the node agent share (see the definition for who",
        'writes what)."""',
        "",
        "from __future__ import annotations",
        "",
        "import ctypes",
        "",
    ]
    for name, (value, comment) in consts.items():
        literal = f'"{value}"' if isinstance(value, str) else (hex(value) if value > 0xFFFF else str(value))
        out.append(f"{name} = {literal}" + (f"  # {comment}" if comment else ""))
    for st in structs:
        out += ["", "", f"class {class_name(st.c_name)}(ctypes.Structure):"]
        out += [f'    """C ``struct {st.c_name}`` ({st.size} bytes)."""', ""]
        out.append("    _fields_ = (")
        for fname, expr, comment in st.fields:
            out.append(f'        ("{fname}", {expr}),' + (f"  # {comment}" if comment else ""))
        out.append("    )")
    out += ["", "", "#: C struct name -> (class, size the definition declares)"]
    out += ["STRUCTS: dict[str, tuple[type[ctypes.Structure], int]] = {"]
    out += [f'    "{st.c_name}": ({class_name(st.c_name)}, {st.size}),' for st in structs]
    out += ["}", "", "for _name, (_cls, _size) in STRUCTS.items():", "    if ctypes.sizeof(_cls) != _size:"]
    out += ['        raise ImportError(f"struct {_name}: {ctypes.sizeof(_cls)} bytes, declared {_size}")', ""]
    return "\n".join(out)


def main() -> int:
    OUTPUT.write_text(render(DEFINITION.read_text()))
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
