"""CustomResourceDefinition of xpupool: ``XPUQueue`` (group ``xpupool.io``).

This module is the single source of the CRD. The Helm chart ships the rendered YAML in
``deploy/helm/xpupool/crds/`` (regenerate with ``python -m xpupool.kube.crds deploy/helm/xpupool/crds``;
``tests/deploy/test_crds.py`` fails when the files drift from this module).

``XPUQueue`` (cluster-scoped, short name ``xq``) is a node in the queue tree (semantics in
:mod:`xpupool.core.quota`, mapping in :mod:`xpupool.kube.queues`):

* ``parent`` names the parent queue (absent: a root); pods run in leaf queues only;
* ``weight`` is the fair-share weight among siblings; ``priority`` orders siblings;
* ``quota`` lists per-resource (optionally per-card-model) ``guaranteed`` and ``limit`` amounts;
* ``borrowing.borrow``: may use idle capacity beyond its guarantee; ``borrowing.lend``: its idle
  guarantee may be used by others (false: kept reserved, never borrowed, never reclaimed);
* ``reclaim.reclaimable``: its pods above the guarantee may be preempted;
  ``reclaim.reclaimGuarantee``: may preempt borrowers to get its guarantee back;
* who may use it (:mod:`xpupool.core.queue_access`): ``namespaces`` and/or ``namespaceSelector``
  (neither: no namespace); ``defaultForNamespaces``: pods of those namespaces without the
  ``xpupool.io/queue`` label land here;
* ``status`` is written by the scheduler: per resource allocated, borrowed, pending, guaranteed,
  limit and fair share; running and pending pods; a ``Valid`` condition saying what is wrong with
  the tree.

There is no ``XPUPool`` CRD: it described node pools with their own sharing and remote policy,
but no code read it; ``docs/kubernetes.md`` says why it was removed and what replaces it.

Quota units (the same as the request syntax): ``xpupool.io/vxpu`` cards, ``xpupool.io/vxpu-core``
percent of one card (100 = a whole card), ``xpupool.io/vxpu-memory`` MiB (a plain number) or a
quantity with a unit (``80Gi``), ``cpu`` and ``memory`` as Kubernetes quantities.

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
    "description": "Namespaces whose labels match (a standard label selector; kubernetes.io/metadata.name "
    "carries the name). An empty selector matches every namespace.",
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
                "x-kubernetes-validations": [
                    {
                        "rule": "self.operator in ['Exists', 'DoesNotExist'] ? (!has(self.values) || "
                        "size(self.values) == 0) : (has(self.values) && size(self.values) > 0)",
                        "message": "In and NotIn need values; Exists and DoesNotExist take none",
                    },
                ],
            },
        },
    },
}


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
    spec: dict[str, Any] = {
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
    spec["properties"].update({
        "namespaces": {
            "type": "array",
            "maxItems": 1024,
            "items": _NAME,
            "x-kubernetes-list-type": "set",
            "description": "Namespaces whose pods may use this queue (or namespaceSelector; neither: none).",
        },
        "namespaceSelector": _LABEL_SELECTOR,
        "defaultForNamespaces": {
            "type": "boolean",
            "default": False,
            "description": "Pods of the namespaces this queue admits that name no queue land here.",
        },
    })
    usage_entry = {
        "type": "object",
        "required": ["resource", "model"],
        "properties": {
            "resource": {"type": "string", "enum": QUOTA_RESOURCES},
            "model": {"type": "string", "maxLength": 128},
            "allocated": _QUANTITY,
            "borrowed": {**_QUANTITY, "description": "Allocated above the guarantee."},
            "pending": {**_QUANTITY, "description": "Asked by pods of the queue that wait."},
            "guaranteed": _QUANTITY,
            "limit": _QUANTITY,
            "fairShare": {**_QUANTITY, "description": "Entitlement now, from guarantees, weights and demand."},
        },
    }
    status = {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "resources": {
                "type": "array",
                "maxItems": 256,
                "items": usage_entry,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["resource", "model"],
            },
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
    """The CRDs as JSON-ready dicts."""
    age = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    return [
        _crd(
            "XPUQueue",
            "xpuqueues",
            "xq",
            _queue_schema(),
            [
                {"name": "Parent", "type": "string", "jsonPath": ".spec.parent"},
                {"name": "Weight", "type": "integer", "jsonPath": ".spec.weight"},
                {"name": "Running", "type": "integer", "jsonPath": ".status.runningPods"},
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
