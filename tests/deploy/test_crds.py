"""The CRDs: chart files match :mod:`xpupool.kube.crds`, schemas are structural, and example and
broken objects validate (or not) against them with jsonschema. CEL rules
(``x-kubernetes-validations``) need a real apiserver: see ``test_chart_apiserver.py``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from xpupool.kube import crds

from .helm import CHART, ROOT

EXAMPLES = ROOT / "deploy" / "examples"


def schema_of(kind: str) -> dict[str, Any]:
    (crd,) = [c for c in crds.crds() if c["spec"]["names"]["kind"] == kind]
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def json_schema(schema: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema: drop the x-kubernetes-* extensions."""
    if isinstance(schema, dict):
        return {k: json_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if isinstance(schema, list):
        return [json_schema(v) for v in schema]
    return schema


def errors(kind: str, obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(json_schema(schema_of(kind)))
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj))


def test_chart_crds_are_generated_from_the_module(tmp_path: Path) -> None:
    written = crds.write(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    for fresh in written:
        assert (CHART / "crds" / fresh.name).read_text() == fresh.read_text(), (
            f"{fresh.name} drifted: run python -m xpupool.kube.crds deploy/helm/xpupool/crds"
        )


@pytest.mark.parametrize("kind", ["XPUQueue"])
def test_schemas_are_structural_and_valid_json_schema(kind: str) -> None:
    schema = schema_of(kind)
    assert crds.structural_problems(schema) == []
    jsonschema.Draft202012Validator.check_schema(json_schema(schema))
    (crd,) = [c for c in crds.crds() if c["spec"]["names"]["kind"] == kind]
    assert crd["spec"]["scope"] == "Cluster" and crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_structural_checker_catches_the_usual_mistakes() -> None:
    bad = {
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "both": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "typed-anyof": {
                "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
                "x-kubernetes-int-or-string": True,
            },
            "list": {
                "type": "array",
                "items": {"type": "object", "properties": {"k": {"type": "string"}}},
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["k"],
            },
            "ref": {"$ref": "#/x", "type": "object"},
        },
    }
    problems = crds.structural_problems(bad)
    assert ".untyped: missing type" in problems
    assert ".both: properties and additionalProperties together" in problems
    assert ".typed-anyof.anyOf[0]: type not allowed here" in problems
    assert ".list: list-map key k must be required or defaulted" in problems
    assert ".ref: $ref is not allowed" in problems


def test_examples_validate() -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "queues.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["XPUQueue"] * 4
    for doc in docs:
        assert errors(doc["kind"], doc) == [], doc["metadata"]["name"]


def test_broken_objects_are_rejected_with_the_field() -> None:
    queue = list(yaml.safe_load_all((EXAMPLES / "queues.yaml").read_text()))[1]  # vision: every section
    cases = [
        ("spec/weight", lambda q: q["spec"].__setitem__("weight", 0)),
        ("spec/quota/0/resource", lambda q: q["spec"]["quota"][0].__setitem__("resource", "nvidia.com/gpu")),
        ("spec/quota/0/guaranteed", lambda q: q["spec"]["quota"][0].__setitem__("guaranteed", "lots")),
        ("spec/parent", lambda q: q["spec"].__setitem__("parent", "Not_A_Name")),
        ("spec/borrowing/borrow", lambda q: q["spec"]["borrowing"].__setitem__("borrow", "yes")),
        ("", lambda q: q.pop("spec")),
    ]
    for field, mutate in cases:
        broken = copy.deepcopy(queue)
        mutate(broken)
        found = errors("XPUQueue", broken)
        assert found and found[0].startswith(f"{field}:"), (field, found)
    selector = copy.deepcopy(queue)
    selector["spec"]["namespaceSelector"] = {"matchExpressions": [{"key": "team", "operator": "Near"}]}
    assert errors("XPUQueue", selector)[0].startswith("spec/namespaceSelector/matchExpressions/0/operator:")


def test_there_is_no_xpupool_crd() -> None:
    """XPUPool was removed (no code read it): the chart must not install it."""
    assert [c["spec"]["names"]["kind"] for c in crds.crds()] == ["XPUQueue"]
    assert not list((CHART / "crds").glob("*xpupools*"))
