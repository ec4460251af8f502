"""The node agent's API calls and its least-privilege confinement on a real kube-apiserver
(marker ``e2e_apiserver``).

The chart's agent RBAC and ValidatingAdmissionPolicy are installed for real (named after a
per-test release and matching only the per-test service account, so nothing else is affected);
the agent authenticates with a pod-bound service-account token (TokenRequest), which carries
the node name the policy checks, exactly as in a DaemonSet pod."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from xpupool.agent.allocation import ANN_ALLOCATION
from xpupool.agent.emulated import EmulatedConfig, devices_from_config
from xpupool.agent.inventory import ANN_INVENTORY, parse_inventory
from xpupool.agent.kubeapi import ApiError, KubeApi
from xpupool.agent.publisher import InventoryPublisher
from xpupool.kube.testing import ControlPlane

from .apiserver import RawApi
from .helm import render

pytestmark = pytest.mark.e2e_apiserver


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"team": "x"}}}


def bound_pod(name: str, node_name: str, allocation: dict[str, Any] | None = None) -> dict[str, Any]:
    annotations = {ANN_ALLOCATION: json.dumps(allocation)} if allocation else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"nodeName": node_name, "containers": [{"name": "main", "image": "busybox"}]},
    }


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_agent_rbac_and_policy_confine_it_to_its_node(
    control_plane: ControlPlane, raw_api: RawApi, e2e_namespace: str
) -> None:
    release = f"r{uuid.uuid4().hex[:8]}"
    sa = f"{release}-xpupool-agent"
    own, other = f"{release}-gpu-1", f"{release}-gpu-2"
    docs = render(
        "agent.backends={emulated}",
        "scheduler.enabled=false",
        "webhook.enabled=false",
        "view.enabled=false",
        namespace=e2e_namespace,
        release=release,
    )
    wanted = [
        d
        for d in docs
        if d["kind"]
        in (
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        )
    ]
    assert len(wanted) == 5
    created: list[dict[str, Any]] = []
    try:
        for doc in wanted:
            status, body = await raw_api.create(doc, namespace=e2e_namespace)
            assert status == 201, body
            created.append(doc)
        for name in (own, other):
            status, body = await raw_api.create(node(name))
            assert status == 201, body
        agent_spec = bound_pod("agent", own)
        agent_spec["spec"]["serviceAccountName"] = sa
        status, agent_pod = await raw_api.create(agent_spec, namespace=e2e_namespace)
        assert status == 201, agent_pod
        token_request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": "agent",
                    "uid": agent_pod["metadata"]["uid"],
                },
            },
        }
        status, token = await raw_api.request(
            "POST", raw_api.path("ServiceAccount", e2e_namespace, sa) + "/token", token_request
        )
        assert status == 201, token.get("message", token)
        agent = KubeApi(control_plane.server, token=token["status"]["token"], ca_path=control_plane.ca_file)
        try:
            # Its own Node: publishing works (and keeps working after the policy is active).
            cards = devices_from_config(
                EmulatedConfig.model_validate({"cards": [{"model": "EMU-40G", "memory_mib": 40960, "count": 2}]}),
                node_name=own,
            )
            published = await InventoryPublisher(agent, node=own, slots_per_card=10).publish(cards, [])
            assert published.inventory_patched
            _, live = await raw_api.request("GET", f"/api/v1/nodes/{own}")
            assert parse_inventory(live["metadata"]["annotations"][ANN_INVENTORY]).inventory == published.inventory

            # Another Node: RBAC allows patch on nodes, the policy refuses it.
            async def refused_elsewhere() -> bool:
                try:
                    await agent.patch_node_annotations(other, {"xpupool.io/inventory": "{}"})
                except ApiError as exc:
                    return exc.status == 403 and "may only change its own Node" in exc.message
                await raw_api.request(
                    "PATCH",
                    f"/api/v1/nodes/{other}",
                    {"metadata": {"annotations": {"xpupool.io/inventory": None}}},
                    content_type="application/merge-patch+json",
                )
                return False

            await eventually(refused_elsewhere)
            with pytest.raises(ApiError) as err:
                await agent.patch_node_annotations(own, {"team.io/owner": "mallory"})
            assert err.value.status == 403 and "only change xpupool.io/ annotations" in err.value.message
            assert (await agent.get_node(other))["metadata"]["name"] == other  # reads are not narrowed

            # Pods: the agent reads them (the pod a container start serves, the pods on its node)
            # and writes none: RBAC grants no pod write at all.
            alloc = {"node": own, "device_node": own, "cards": [1], "share_milli": 250, "device_memory_mib": [8192]}
            for name, on in (("job", own), ("foreign", other)):
                status, body = await raw_api.create(
                    bound_pod(name, on, {**alloc, "node": on, "device_node": on}), namespace=e2e_namespace
                )
                assert status == 201, body
            job = await agent.get_pod(e2e_namespace, "job")
            assert json.loads(job["metadata"]["annotations"][ANN_ALLOCATION])["cards"] == [1]
            assert {p["metadata"]["name"] for p in await agent.list_pods_on_node(own)} >= {"job", "agent"}
            async with aiohttp.ClientSession() as http, http.patch(
                f"{control_plane.server}/api/v1/namespaces/{e2e_namespace}/pods/job",
                data=json.dumps({"metadata": {"annotations": {"xpupool.io/x": "y"}}}),
                headers={
                    "Authorization": f"Bearer {token['status']['token']}",
                    "Content-Type": "application/merge-patch+json",
                },
                ssl=ssl.create_default_context(cafile=str(control_plane.ca_file)),
            ) as resp:
                assert resp.status == 403, await resp.text()
        finally:
            await agent.close()
    finally:
        for doc in reversed(created):
            ns = e2e_namespace if doc["kind"] == "ServiceAccount" else None
            await raw_api.request("DELETE", raw_api.path(doc["kind"], ns, doc["metadata"]["name"]))
        for name in (own, other):
            await raw_api.request("DELETE", f"/api/v1/nodes/{name}")
