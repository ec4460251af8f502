"""The Helm chart: ``helm lint --strict`` and ``helm template`` with the pinned helm, then the
rendered objects are checked for what the design promises (least-privilege RBAC, webhook
safety settings, DaemonSet wiring). Real-apiserver acceptance of the rendered objects is in
``test_chart_apiserver.py``."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from .helm import CHART, helm, helm_binary, render

VARIANTS = [
    (),
    ("agent.backends={emulated}", "serviceMonitor.enabled=true", "webhook.adoptWholeCardResources=true"),
    (
        "scheduler.preemption=false",
        "webhook.poolCheck=off",
        "webhook.replicas=1",
        "agent.restrictToOwnNode=false",
        "agent.shim.install=false",
        "webhook.excludedNamespaces={ci,infra}",
    ),
]


@pytest.mark.parametrize("sets", VARIANTS)
def test_lint_strict(sets: tuple[str, ...]) -> None:
    args = ["lint", str(CHART), "--strict"]
    for s in sets:
        args += ["--set", s]
    out = helm(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def rules(role: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    out = set()
    for rule in role["rules"]:
        for group in rule.get("apiGroups", []):
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb, ",".join(rule.get("resourceNames", []))))
    return out


def test_default_render_has_every_component() -> None:
    docs = render()
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Deployment",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    assert set(by_kind(docs, "Deployment")) == {"rel-xpupool-scheduler", "rel-xpupool-webhook"}
    for doc in docs:
        if doc["kind"] not in (
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ):
            assert doc["metadata"]["namespace"] == "xpupool-system", doc["metadata"]["name"]


def test_rbac_is_least_privilege() -> None:
    docs = render()
    cluster_roles, roles = by_kind(docs, "ClusterRole"), by_kind(docs, "Role")
    for role in [*cluster_roles.values(), *roles.values()]:
        for group, resource, verb, _ in rules(role):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]
    assert rules(cluster_roles["rel-xpupool-scheduler"]) == {
        ("", "pods", "get", ""),
        ("", "pods", "list", ""),
        ("", "pods", "watch", ""),
        ("", "pods", "patch", ""),
        ("", "pods/binding", "create", ""),
        ("", "pods/status", "patch", ""),
        ("", "pods/eviction", "create", ""),  # preemption through the Eviction API, never DELETE
        ("policy", "poddisruptionbudgets", "get", ""),
        ("policy", "poddisruptionbudgets", "list", ""),
        ("policy", "poddisruptionbudgets", "watch", ""),
        ("", "nodes", "get", ""),
        ("", "nodes", "list", ""),
        ("", "nodes", "watch", ""),
        ("events.k8s.io", "events", "create", ""),
        ("xpupool.io", "xpupools", "get", ""),
        ("xpupool.io", "xpupools", "list", ""),
        ("xpupool.io", "xpupools", "watch", ""),
        ("xpupool.io", "xpuqueues", "get", ""),
        ("xpupool.io", "xpuqueues", "list", ""),
        ("xpupool.io", "xpuqueues", "watch", ""),
    }
    # Leases only in the release namespace, get/update only on its own Lease.
    lease = roles["rel-xpupool-scheduler-lease"]
    assert lease["metadata"]["namespace"] == "xpupool-system"
    assert rules(lease) == {
        ("coordination.k8s.io", "leases", "create", ""),
        ("coordination.k8s.io", "leases", "get", "rel-xpupool-scheduler"),
        ("coordination.k8s.io", "leases", "update", "rel-xpupool-scheduler"),
    }
    assert not any(r[1] == "leases" for r in rules(cluster_roles["rel-xpupool-scheduler"]))
    assert rules(cluster_roles["rel-xpupool-agent"]) == {
        ("", "nodes", "get", ""),
        ("", "nodes", "patch", ""),
        ("", "pods", "list", ""),
        ("", "pods", "patch", ""),
    }
    assert rules(cluster_roles["rel-xpupool-webhook"]) == {
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get", "rel-xpupool"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch", "rel-xpupool"),
        ("", "nodes", "list", ""),
    }
    assert rules(roles["rel-xpupool-webhook"]) == {
        ("", "secrets", "create", ""),
        ("", "secrets", "get", "rel-xpupool-webhook-tls"),
        ("", "secrets", "update", "rel-xpupool-webhook-tls"),
    }
    no_preemption = by_kind(render("scheduler.preemption=false", "webhook.poolCheck=off"), "ClusterRole")
    assert ("", "pods/eviction", "create", "") not in rules(no_preemption["rel-xpupool-scheduler"])
    assert not any(r[1] == "poddisruptionbudgets" for r in rules(no_preemption["rel-xpupool-scheduler"]))
    assert ("", "nodes", "list", "") not in rules(no_preemption["rel-xpupool-webhook"])


def test_agent_is_confined_to_its_own_node_by_policy() -> None:
    docs = render()
    (policy,) = by_kind(docs, "ValidatingAdmissionPolicy").values()
    (binding,) = by_kind(docs, "ValidatingAdmissionPolicyBinding").values()
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["matchConditions"][0]["expression"] == (
        'request.userInfo.username == "system:serviceaccount:xpupool-system:rel-xpupool-agent"'
    )
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert not by_kind(render("agent.restrictToOwnNode=false"), "ValidatingAdmissionPolicy")


def test_webhook_configuration_is_safe_by_default() -> None:
    docs = render()
    (config,) = by_kind(docs, "MutatingWebhookConfiguration").values()
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] <= 10 and hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn"
    assert set(expr["values"]) == {"kube-system", "xpupool-system"}
    assert hook["clientConfig"]["service"] == {
        "name": "rel-xpupool-webhook",
        "namespace": "xpupool-system",
        "path": "/mutate",
        "port": 443,
    }
    assert "xpupool.io/" in hook["matchConditions"][0]["expression"]
    assert "nvidia.com/gpu" not in hook["matchConditions"][0]["expression"]
    adopt = by_kind(render("webhook.adoptWholeCardResources=true"), "MutatingWebhookConfiguration")
    assert "'nvidia.com/gpu'" in next(iter(adopt.values()))["webhooks"][0]["matchConditions"][0]["expression"]
    deployment = by_kind(docs, "Deployment")["rel-xpupool-webhook"]
    assert deployment["spec"]["replicas"] >= 2
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["XPUPOOL_WEBHOOK_CONFIGURATION"] == config["metadata"]["name"]
    assert env["XPUPOOL_WEBHOOK_SERVICE"] == "rel-xpupool-webhook"
    assert by_kind(docs, "PodDisruptionBudget")["rel-xpupool-webhook"]["spec"]["minAvailable"] == 1


def test_agent_daemonset_wiring() -> None:
    docs = render("agent.backends={emulated}")
    ds = by_kind(docs, "DaemonSet")["rel-xpupool-agent"]
    pod = ds["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["XPUPOOL_BACKENDS"]["value"] == "emulated"
    assert env["XPUPOOL_EMULATED_CONFIG"]["value"] == "/etc/xpupool/emulated.yaml"
    assert "NVIDIA_VISIBLE_DEVICES" not in env
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["device-plugins"]["hostPath"]["path"] == "/var/lib/kubelet/device-plugins"
    assert agent["securityContext"]["privileged"] is False
    config = by_kind(docs, "ConfigMap")["rel-xpupool-agent-emulated"]
    assert "EMU-80G" in config["data"]["emulated.yaml"]
    assert pod["initContainers"][0]["name"] == "install-shim"
    nvidia = by_kind(render(), "DaemonSet")["rel-xpupool-agent"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in nvidia["env"]} >= {"NVIDIA_VISIBLE_DEVICES", "XPUPOOL_BACKENDS"}


def test_every_container_has_resources_and_no_privilege_escalation() -> None:
    for doc in render("agent.backends={emulated}"):
        if doc["kind"] not in ("Deployment", "DaemonSet"):
            continue
        spec = doc["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], c["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]


def test_service_monitor_is_optional() -> None:
    assert not [d for d in render() if d["kind"] == "ServiceMonitor"]
    monitors = [d for d in render("serviceMonitor.enabled=true") if d["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"rel-xpupool-agent", "rel-xpupool-scheduler"}


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("webhook.poolCheck=maybe", "/webhook/poolCheck"),
        ("agent.backends={intel}", "/agent/backends/0"),
        ("agent.slotsPerCard=0", "/agent/slotsPerCard"),
        ("webhook.failurePolicy=Sometimes", "/webhook/failurePolicy"),
    ],
)
def test_values_schema_rejects_typos(bad: str, expected: str) -> None:
    done = subprocess.run(
        [helm_binary(), "lint", str(CHART), "--strict", "--set", bad],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode != 0
    assert expected in done.stdout + done.stderr
