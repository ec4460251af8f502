"""The chart and the CRDs against a real kube-apiserver (marker ``e2e_apiserver``).

Rendered objects are created with ``dryRun=All`` (the apiserver runs validation, including CEL
compilation of the webhook's matchConditions and the agent policy, but stores nothing, so the
shared control plane is not affected). The CRDs are installed for real and their CEL rules are
exercised with dry-run creates."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from xpupool.kube import crds

from .apiserver import RawApi
from .helm import render

pytestmark = pytest.mark.e2e_apiserver
EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


async def install_crds(api: RawApi) -> None:
    for crd in crds.crds():
        status, body = await api.create(crd)
        if status == 409:  # installed by an earlier test: replace with this version
            path = api.path("CustomResourceDefinition", name=crd["metadata"]["name"])
            _, live = await api.request("GET", path)
            crd = {**crd, "metadata": {**crd["metadata"], "resourceVersion": live["metadata"]["resourceVersion"]}}
            status, body = await api.request("PUT", path, crd)
        assert status in (200, 201), body
    for crd in crds.crds():
        path = api.path("CustomResourceDefinition", name=crd["metadata"]["name"])
        for _ in range(100):
            _, live = await api.request("GET", path)
            conditions = {c["type"]: c["status"] for c in (live.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"{crd['metadata']['name']} never became Established: {live.get('status')}")


async def test_rendered_chart_passes_apiserver_validation(raw_api: RawApi, e2e_namespace: str) -> None:
    docs = render("agent.backends={emulated,nvidia}", "webhook.adoptWholeCardResources=true", namespace=e2e_namespace)
    assert len(docs) > 20
    for doc in docs:
        status, body = await raw_api.create(doc, dry_run=True, namespace=e2e_namespace)
        assert status == 201, f"{doc['kind']} {doc['metadata']['name']}: {body.get('message', body)}"


async def test_crds_install_and_enforce_their_rules(raw_api: RawApi) -> None:
    await install_crds(raw_api)
    examples = list(yaml.safe_load_all((EXAMPLES / "queues.yaml").read_text()))
    for doc in examples:
        status, body = await raw_api.create(doc, dry_run=True)
        assert status == 201, body.get("message", body)
    # Defaults are applied by the apiserver (structural schema).
    status, created = await raw_api.create(examples[1], dry_run=True)
    assert created["spec"]["quota"][0]["model"] == "" and created["spec"]["priority"] == 0
    assert created["spec"]["borrowing"] == {"borrow": True, "lend": False}
    status, created = await raw_api.create(examples[2], dry_run=True)
    assert created["spec"]["defaultForNamespaces"] is True and created["spec"]["namespaces"] == ["nlp-dev", "nlp-prod"]

    queue = examples[2]  # nlp: namespaces, quota with cpu and memory entries

    def broken(mutate: Any) -> dict[str, Any]:
        obj = copy.deepcopy(queue)
        mutate(obj)
        return obj

    cases = [
        (broken(lambda q: q["spec"].__setitem__("parent", "")), "omit parent for a root queue"),
        (
            broken(lambda q: q["spec"]["quota"][2].__setitem__("model", "H100")),
            "model applies to xpupool.io/ resources only",
        ),
        (
            broken(lambda q: q["spec"]["quota"].append({"resource": "xpupool.io/vxpu"})),
            "give guaranteed, limit or both",
        ),
        (broken(lambda q: q["spec"]["quota"].append(dict(q["spec"]["quota"][0]))), "Duplicate value"),
        (broken(lambda q: q["spec"].__setitem__("weight", 0)), "spec.weight"),
        (broken(lambda q: q["spec"]["namespaces"].append("nlp-dev")), "Duplicate value"),
        (broken(lambda q: q["spec"]["namespaces"].append("Not_A_Namespace")), "spec.namespaces"),
        (
            broken(lambda q: q["spec"].__setitem__(
                "namespaceSelector", {"matchExpressions": [{"key": "team", "operator": "In"}]})),
            "In and NotIn need values",
        ),
    ]
    for obj, message in cases:
        status, body = await raw_api.create(obj, dry_run=True)
        assert status == 422, (message, body)
        assert message in body["message"], body["message"]


async def test_xpupool_objects_are_refused_because_the_crd_is_gone(raw_api: RawApi) -> None:
    """XPUPool was removed (no code read it): the apiserver has no such resource, so applying one
    fails loudly instead of being stored and ignored."""
    await install_crds(raw_api)
    status, discovery = await raw_api.request("GET", "/apis/xpupool.io/v1alpha1")
    assert status == 200, discovery
    kinds = {r["kind"] for r in discovery["resources"]}
    assert "XPUQueue" in kinds and "XPUPool" not in kinds
