"""CustomResourceDefinitions of xpupool: ``XPUPool`` and ``XPUQueue`` (group ``xpupool.io``).

This module is the single source of the CRDs. The Helm chart ships the rendered YAML in
``deploy/helm/xpupool/crds/`` (regenerate with ``python -m xpupool.kube.crds deploy/helm/xpupool/crds``;
``tests/deploy/test_crds.py`` fails when the files drift from this module).

* ``XPUPool`` (cluster-scoped, short name ``xpool``): which nodes and cards form a pool and how
  they are shared (vendors, models, slots per card, smallest compute share, remote access).
* ``XPUQueue`` (cluster-scoped, short name ``xq``): a node in the queue tree. ``parent`` names the
  parent queue (empty: a root); ``weight`` is the fair-share weight among siblings; ``priority``
  orders siblings when reclaiming; ``quota`` lists per-resource (optionally per-card-model)
  ``guaranteed`` and ``limit`` amounts; ``borrowing`` says whether the queue may use idle quota of
  others and lend its own; ``reclaim`` whether its borrowed usage may be reclaimed and whether it
  may reclaim its guarantee from borrowers.

Quota units (the same as the request syntax): ``xpupool.io/vxpu`` cards, ``xpupool.io/vxpu-core``
percent of one card (100 = a whole card), ``xpupool.io/vxpu-memory`` MiB, ``cpu`` and ``memory``
as Kubernetes quantities.

Schemas are structural (every node typed, no ``$ref``, ``x-kubernetes-int-or-string`` for
quantities) with CEL rules (``x-kubernetes-validations``) for cross-field checks:
:func:`structural_problems` checks the structural rules offline.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

GROUP = "xpupool.io"
VERSION = "v1alpha1"
VENDORS = ["nvidia", "ascend", "amd", "emulated"]
QUOTA_RESOURCES = ["xpupool.io/vxpu", "xpupool.io/vxpu-core", "xpupool.io/vxpu-memory", "cpu", "memory"]

_QUANTITY: dict[str, Any] = {
    # The exact int-or-string form the apiserver accepts (anyOf branches carry only their type).
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": (
        r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
        r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
    ),
    "x-kubernetes-int-or-string": True,
}
_NAME = {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
_CONDITIONS: dict[str, Any] = {
    "type": "array",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
    "items": {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "maxLength": 316},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string", "maxLength": 1024},
            "message": {"type": "string", "maxLength": 32768},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        },
    },
}
_LABEL_SELECTOR: dict[str, Any] = {
    "type": "object",
    "description": "Nodes of the pool (a standard label selector; empty selects every node with cards).",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}


def _pool_schema() -> dict[str, Any]:
    spec = {
        "type": "object",
        "properties": {
            "nodeSelector": _LABEL_SELECTOR,
            "vendors": {
                "type": "array",
                "items": {"type": "string", "enum": VENDORS},
                "x-kubernetes-list-type": "set",
                "description": "Card vendors in the pool; empty means all.",
            },
            "models": {
                "type": "array",
                "items": {"type": "string", "maxLength": 128},
                "x-kubernetes-list-type": "set",
                "description": "Card models in the pool (inventory model names); empty means all.",
            },
            "sharing": {
                "type": "object",
                "properties": {
                    "mode": {"type": "string", "enum": ["Fractional", "WholeCard"], "default": "Fractional"},
                    "slotsPerCard": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 100,
                        "default": 10,
                        "description": "Most containers sharing one card.",
                    },
                    "minCorePercent": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 100,
                        "default": 1,
                        "description": "Smallest compute share a pod may ask on this pool.",
                    },
                },
            },
            "remote": {
                "type": "object",
                "properties": {
                    "enabled": {"type": "boolean", "default": False},
                    "maxMbpsPerNode": {"type": "integer", "minimum": 1},
                },
                "x-kubernetes-validations": [
                    {
                        "rule": "!has(self.maxMbpsPerNode) || self.enabled",
                        "message": "maxMbpsPerNode needs remote.enabled",
                    },
                ],
            },
        },
    }
    status = {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "nodes": {"type": "integer", "minimum": 0},
            "cards": {"type": "integer", "minimum": 0},
            "healthyCards": {"type": "integer", "minimum": 0},
            "capacity": {"type": "object", "additionalProperties": _QUANTITY},
            "allocated": {"type": "object", "additionalProperties": _QUANTITY},
            "conditions": _CONDITIONS,
        },
    }
    return _root(spec, status)


def _queue_schema() -> dict[str, Any]:
    quota_entry = {
        "type": "object",
        "required": ["resource"],
        "properties": {
            "resource": {"type": "string", "enum": QUOTA_RESOURCES},
            "model": {
                "type": "string",
                "maxLength": 128,
                "default": "",
                "description": "Card model this entry is for; empty: any model.",
            },
            "guaranteed": _QUANTITY,
            "limit": _QUANTITY,
        },
        "x-kubernetes-validations": [
            {
                "rule": "!has(self.model) || self.model == '' || self.resource.startsWith('xpupool.io/')",
                "message": "model applies to xpupool.io/ resources only",
            },
            {"rule": "has(self.guaranteed) || has(self.limit)", "message": "give guaranteed, limit or both"},
        ],
    }
    spec = {
        "type": "object",
        "properties": {
            "parent": {**_NAME, "description": "Parent queue; empty or absent: a root queue."},
            "weight": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1},
            "priority": {"type": "integer", "minimum": -1000, "maximum": 1000, "default": 0},
            "quota": {
                "type": "array",
                "maxItems": 64,
                "items": quota_entry,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["resource", "model"],
            },
            "borrowing": {
                "type": "object",
                "properties": {
                    "borrow": {
                        "type": "boolean",
                        "default": True,
                        "description": "May use idle quota of other queues beyond its guarantee.",
                    },
                    "lend": {
                        "type": "boolean",
                        "default": True,
                        "description": "Its idle guarantee may be used by other queues.",
                    },
                },
            },
            "reclaim": {
                "type": "object",
                "properties": {
                    "reclaimable": {
                        "type": "boolean",
                        "default": True,
                        "description": "Its pods above the guarantee may be preempted.",
                    },
                    "reclaimGuarantee": {
                        "type": "boolean",
                        "default": True,
                        "description": "May preempt borrowers to get its guarantee back.",
                    },
                },
            },
        },
        "x-kubernetes-validations": [
            {"rule": "!has(self.parent) || self.parent != ''", "message": "omit parent for a root queue"},
        ],
    }
    status = {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "allocated": {"type": "object", "additionalProperties": _QUANTITY},
            "pendingPods": {"type": "integer", "minimum": 0},
            "runningPods": {"type": "integer", "minimum": 0},
            "conditions": _CONDITIONS,
        },
    }
    schema = _root(spec, status)
    return schema


def _root(spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def _crd(kind: str, plural: str, short: str, schema: dict[str, Any], columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "xpupool"}},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["xpupool"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    """Both CRDs as JSON-ready dicts."""
    age = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    return [
        _crd(
            "XPUPool",
            "xpupools",
            "xpool",
            _pool_schema(),
            [
                {"name": "Cards", "type": "integer", "jsonPath": ".status.cards"},
                {"name": "Healthy", "type": "integer", "jsonPath": ".status.healthyCards"},
                {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes"},
                age,
            ],
        ),
        _crd(
            "XPUQueue",
            "xpuqueues",
            "xq",
            _queue_schema(),
            [
                {"name": "Parent", "type": "string", "jsonPath": ".spec.parent"},
                {"name": "Weight", "type": "integer", "jsonPath": ".spec.weight"},
                {"name": "Pending", "type": "integer", "jsonPath": ".status.pendingPods"},
                age,
            ],
        ),
    ]


def crd_yaml(crd: Mapping[str, Any]) -> str:
    header = "# Generated by python -m xpupool.kube.crds from src/xpupool/kube/crds.py. Do not edit.\n"
    return header + yaml.safe_dump(dict(crd), sort_keys=False, width=120)


def file_name(crd: Mapping[str, Any]) -> str:
    return f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.yaml"


def structural_problems(schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Violations of the Kubernetes structural-schema rules (the subset that applies to our
    schemas): every node has a ``type`` unless it is int-or-string or preserves unknown fields;
    ``anyOf``/``allOf``/``oneOf`` branches carry no ``type``, ``description``, ``default``,
    ``additionalProperties`` or ``nullable`` (except the exact int-or-string ``anyOf``); no
    ``$ref``/``definitions``; ``properties`` and ``additionalProperties`` never together; list-map
    keys required or defaulted; the root ``metadata`` is only ``type: object``."""
    problems: list[str] = []
    here = path or "<root>"
    for banned in ("$ref", "definitions", "dependencies", "id", "patternProperties", "uniqueItems"):
        if banned in schema:
            problems.append(f"{here}: {banned} is not allowed")
    int_or_string = schema.get("x-kubernetes-int-or-string") is True
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "type" not in schema and not int_or_string and not preserve:
        problems.append(f"{here}: missing type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{here}: properties and additionalProperties together")
    if schema.get("type") == "array" and "items" not in schema:
        problems.append(f"{here}: array without items")
    if schema.get("x-kubernetes-list-type") == "map":
        item = schema.get("items", {})
        for key in schema.get("x-kubernetes-list-map-keys", []):
            prop = item.get("properties", {}).get(key)
            if prop is None:
                problems.append(f"{here}: list-map key {key} is not a property of the items")
            elif key not in item.get("required", []) and "default" not in prop:
                problems.append(f"{here}: list-map key {key} must be required or defaulted")
    for keyword in ("anyOf", "allOf", "oneOf"):
        branches = schema.get(keyword, [])
        if keyword == "anyOf" and int_or_string and branches == [{"type": "integer"}, {"type": "string"}]:
            continue  # the one allowed use of type inside anyOf
        for i, branch in enumerate(branches):
            forbidden = {"type", "description", "default", "additionalProperties", "nullable"} & set(branch)
            if forbidden:
                problems.append(f"{here}.{keyword}[{i}]: {', '.join(sorted(forbidden))} not allowed here")
    for name, sub in (schema.get("properties") or {}).items():
        problems.extend(structural_problems(sub, f"{path}.{name}"))
    if isinstance(schema.get("additionalProperties"), Mapping):
        problems.extend(structural_problems(schema["additionalProperties"], f"{path}.*"))
    if isinstance(schema.get("items"), Mapping):
        problems.extend(structural_problems(schema["items"], f"{path}[]"))
    if not path:
        meta = (schema.get("properties") or {}).get("metadata", {})
        if set(meta) - {"type"}:
            problems.append(".metadata: only type: object is allowed at the root")
    return problems


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for crd in crds():
        path = directory / file_name(crd)
        path.write_text(crd_yaml(crd))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/helm/xpupool/crds")):
        print(p)
