"""Architecture rules: the core is pure (stdlib + numpy, no wall clock, no global RNG)."""

from __future__ import annotations

import ast
from pathlib import Path

import xpupool

SRC = Path(xpupool.__file__).parent
ALLOWED_CORE = {"numpy", "xpupool"}
STDLIB_OK = {"__future__", "collections", "dataclasses", "enum", "typing", "re", "math", "itertools", "functools"}
FORBIDDEN_CALLS = {"time.time", "time.monotonic", "datetime.now", "random.random", "np.random.seed",
                   "asyncio.sleep"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_only_stdlib_and_numpy() -> None:
    for path in (SRC / "core").glob("*.py"):
        extra = _imports(path) - ALLOWED_CORE - STDLIB_OK
        assert not extra, f"{path.name} imports {extra}"


def test_core_and_plugins_never_read_the_wall_clock_or_global_rng() -> None:
    for folder in ("core", "plugins"):
        for path in (SRC / folder).glob("*.py"):
            text = path.read_text()
            for call in FORBIDDEN_CALLS:
                assert call + "(" not in text, f"{path.name} calls {call}"


def test_plugins_do_not_import_adapters() -> None:
    for path in (SRC / "plugins").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("xpupool."):
                layer = node.module.split(".")[1]
                assert layer in {"core", "plugins"}, f"{path.name} imports {node.module}"
