"""A minimal RFC 6902 applier (add / replace / remove) used to check the webhook's patches the way
the apiserver applies them: the path must exist (or its parent, for add) or the patch fails."""

from __future__ import annotations

import copy
from typing import Any


class PatchError(Exception):
    pass


def _segments(path: str) -> list[str]:
    if not path.startswith("/"):
        raise PatchError(f"bad path {path!r}")
    return [s.replace("~1", "/").replace("~0", "~") for s in path.split("/")[1:]]


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _segments(op["path"])
        target = doc
        for seg in parents:
            try:
                target = target[int(seg)] if isinstance(target, list) else target[seg]
            except (KeyError, IndexError, ValueError) as exc:
                raise PatchError(f"{op['path']}: parent missing") from exc
        kind = op["op"]
        if isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if kind == "add":
                target.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                target[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del target[index]
            else:
                raise PatchError(f"unsupported op {kind}")
        else:
            if kind == "add":
                target[last] = copy.deepcopy(op["value"])
            elif kind == "replace":
                if last not in target:
                    raise PatchError(f"{op['path']}: replace of a missing member")
                target[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del target[last]
            else:
                raise PatchError(f"unsupported op {kind}")
    return doc
