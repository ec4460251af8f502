"""The admission webhook over real HTTPS: an aiohttp server on loopback with a certificate from
``xpupool.kube.certs``; the client verifies it against the generated CA, like the apiserver."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import json
import ssl
import uuid
from typing import Any

import aiohttp
import pytest

from xpupool.core.model import Device, Node, Vendor
from xpupool.kube import certs
from xpupool.kube.webhook import ANN_REQUEST, LABEL_MANAGED, WebhookSettings, admit_pod

from .conftest import Served, client_context
from .jsonpatch_apply import apply_patch


def pod(*containers: dict[str, Any], annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "trainer", "namespace": "team-a"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": list(containers) or [container()], **spec},
    }


def container(name: str = "main", limits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "pytorch:2"}
    if limits is not None:
        c["resources"] = {"limits": limits}
    c.update(extra)
    return c


def review(
    obj: dict[str, Any], *, operation: str = "CREATE", dry_run: bool = False, namespace: str = "team-a"
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "object": obj,
            "dryRun": dry_run,
            "userInfo": {"username": "alice"},
        },
    }


async def post(served: Served, body: dict[str, Any], ca_pem: bytes | None = None) -> dict[str, Any]:
    ctx = client_context(ca_pem or served.bundle.ca_cert_pem)
    async with aiohttp.ClientSession() as http, http.post(f"{served.url}/mutate", json=body, ssl=ctx) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
    assert answer["response"]["uid"] == body["request"]["uid"]
    return answer["response"]


def patched(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["patchType"] == "JSONPatch"
    return apply_patch(obj, json.loads(base64.b64decode(response["patch"])))


FRACTION = {"xpupool.io/vxpu": 1, "xpupool.io/vxpu-core": 30, "xpupool.io/vxpu-memory": 8192}


async def test_valid_fractional_pod_is_mutated(served: Served) -> None:
    obj = pod(
        container("main", FRACTION, env=[{"name": "A", "value": "1"}]),
        container("sidecar"),
        annotations={"xpupool.io/vendor": "nvidia"},
    )
    response = await post(served, review(obj))
    assert response["allowed"] is True
    out = patched(obj, response)
    assert out["spec"]["schedulerName"] == "xpupool"
    assert out["metadata"]["labels"] == {LABEL_MANAGED: "true"}
    assert out["metadata"]["annotations"]["xpupool.io/vendor"] == "nvidia"
    normalized = json.loads(out["metadata"]["annotations"][ANN_REQUEST])
    assert normalized == {
        "v": 1,
        "count": 1,
        "shareMilli": 300,
        "deviceMemoryMiB": 8192,
        "deviceMemoryPercent": 0,
        "vendor": "nvidia",
        "models": [],
        "exclusive": False,
        "remote": "never",
        "remoteMbps": 1000,
        "queue": "default",
        "podGroup": "",
    }
    env = out["spec"]["containers"][0]["env"]
    assert env[0] == {"name": "A", "value": "1"}
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in env[1:]} == {
        "XPUPOOL_POD_NAME": "metadata.name",
        "XPUPOOL_POD_NAMESPACE": "metadata.namespace",
        "XPUPOOL_POD_UID": "metadata.uid",
    }
    assert "env" not in out["spec"]["containers"][1]  # only the vXPU container is wired
    assert served.state.stats.mutated == 1

    # Reinvocation (reinvocationPolicy: IfNeeded) on the mutated pod adds nothing.
    again = await post(served, review(out))
    assert again["allowed"] is True and "patch" not in again


async def test_requests_only_and_whole_card_forms_are_normalised(served: Served) -> None:
    obj = pod(
        {"name": "main", "image": "x", "resources": {"requests": {"xpupool.io/vxpu": "2", "cpu": "1"}}},
        schedulerName="default-scheduler",
    )
    out = patched(obj, await post(served, review(obj)))
    assert out["spec"]["containers"][0]["resources"]["limits"] == {"xpupool.io/vxpu": "2"}
    assert out["spec"]["schedulerName"] == "xpupool"
    assert json.loads(out["metadata"]["annotations"][ANN_REQUEST])["shareMilli"] == 1000

    served.state.settings = WebhookSettings(adopt_whole_card=True)
    whole = pod(container("main", {"huawei.com/Ascend910B": 2}))
    translated = patched(whole, await post(served, review(whole)))
    normalized = json.loads(translated["metadata"]["annotations"][ANN_REQUEST])
    assert (normalized["count"], normalized["exclusive"], normalized["vendor"]) == (2, True, "ascend")
    assert normalized["models"] == ["Ascend910B"]
    # Our device plugin must wire it, so the vendor resource becomes xpupool.io/vxpu.
    assert translated["spec"]["containers"][0]["resources"] == {"limits": {"xpupool.io/vxpu": 2}}
    assert {k: v for k, v in translated["metadata"]["annotations"].items() if k != ANN_REQUEST} == {
        "xpupool.io/exclusive": "true",
        "xpupool.io/vendor": "ascend",
        "xpupool.io/model": "Ascend910B",
    }
    again = await post(served, review(translated))
    assert again["allowed"] and "patch" not in again  # the translated pod normalises to the same request


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            pod(container("main", {"xpupool.io/vxpu": 1, "xpupool.io/vxpu-core": 150})),
            "compute share is 1..100 percent of a card, got 150",
        ),
        (
            pod(container("main", {"xpupool.io/vxpu": 2, "xpupool.io/vxpu-core": 30})),
            "a share below 100 is for one card",
        ),
        (pod(container("main", {"xpupool.io/vxpu": 1, "nvidia.com/gpu": 1})), "cannot be mixed in one pod"),
        (pod(container("main", {"xpupool.io/vxpu-cores": 1})), "xpupool.io/vxpu-cores: unknown resource"),
        (
            # Two vXPU containers are fine (one card each), but a fractional share is for one card.
            pod(
                container("a", {"xpupool.io/vxpu": 1, "xpupool.io/vxpu-core": 30}),
                container("b", {"xpupool.io/vxpu": 1, "xpupool.io/vxpu-core": 30}),
            ),
            "a share below 100 is for one card",
        ),
        (
            pod(container("main", {"xpupool.io/vxpu": 1}, securityContext={"privileged": True})),
            "privileged containers cannot share vXPUs",
        ),
        (pod(container("main", {"xpupool.io/vxpu": 1}), nodeName="gpu-1"), "spec.nodeName is set (gpu-1)"),
        (pod(container("main", {"xpupool.io/vxpu": 1}), schedulerName="volcano"), "spec.schedulerName is 'volcano'"),
        (
            pod(container("main", {"xpupool.io/vxpu": 1}), initContainers=[container("init", {"xpupool.io/vxpu": 1})]),
            "init containers cannot use vXPUs (init)",
        ),
        (
            pod(container("main", {"xpupool.io/vxpu": 1}), annotations={"xpupool.io/remote": "sometimes"}),
            "xpupool.io/remote: expected one of never, allowed, preferred, required",
        ),
    ],
)
async def test_malformed_pods_are_refused_with_the_reason(served: Served, obj: dict[str, Any], expected: str) -> None:
    response = await post(served, review(obj))
    assert response["allowed"] is False
    assert "patch" not in response
    assert response["status"]["code"] == 400
    message = response["status"]["message"]
    assert message.startswith("xpupool: pod team-a/trainer cannot use vXPUs: ")
    assert expected in message
    assert served.state.stats.refused == 1


async def test_dry_run_gets_the_same_answer_without_side_effects(served: Served) -> None:
    obj = pod(container("main", FRACTION))
    dry = await post(served, review(obj, dry_run=True))
    real = await post(served, review(obj))
    assert dry["allowed"] and dry["patch"] == real["patch"]
    assert (served.state.stats.dry_run, served.state.stats.reviews, served.state.stats.mutated) == (1, 1, 1)
    refused = await post(served, review(pod(container("main", {"xpupool.io/vxpu": -1})), dry_run=True))
    assert refused["allowed"] is False and served.state.stats.refused == 0


async def test_other_pods_and_operations_pass_untouched(served: Served) -> None:
    plain = pod(container("main", {"cpu": "1"}))
    for body in (
        review(plain),
        review(pod(container("m", FRACTION)), operation="UPDATE"),
        review(pod(container("m", FRACTION)), namespace="kube-system"),
    ):
        response = await post(served, body)
        assert response == {"uid": body["request"]["uid"], "allowed": True}
    assert served.state.stats.mutated == 0


async def test_garbage_is_a_400_not_a_crash(served: Served) -> None:
    ctx = client_context(served.bundle.ca_cert_pem)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/mutate", data=b"not json", ssl=ctx) as resp:
            assert resp.status == 400
        async with http.get(f"{served.url}/healthz", ssl=ctx) as resp:
            assert resp.status == 200
    assert served.state.stats.errors == 1


def test_pool_check_warns_by_default_and_can_deny() -> None:
    emulated = Node(
        name="kw-1",
        cpu_milli=8000,
        memory_mib=32768,
        devices=(Device(index=0, vendor=Vendor.EMULATED, model="EMU-40G", memory_mib=40960),),
    )
    obj = pod(
        container("main", {"xpupool.io/vxpu": 1, "xpupool.io/vxpu-memory": 8192}),
        annotations={"xpupool.io/vendor": "nvidia"},
    )
    request = review(obj)["request"]
    warned = admit_pod(request, settings=WebhookSettings(), pool=[emulated])
    assert warned.allowed and warned.warnings
    assert "no card of nvidia in the pool (vendors: emulated" in warned.warnings[0]
    denied = admit_pod(request, settings=WebhookSettings(pool_check="deny"), pool=[emulated])
    assert not denied.allowed and "no card of nvidia in the pool" in denied.message
    unknown_pool = admit_pod(request, settings=WebhookSettings(pool_check="deny"), pool=None)
    assert unknown_pool.allowed and not unknown_pool.warnings
    too_big = copy.deepcopy(request)
    too_big["object"]["metadata"]["annotations"] = {}
    too_big["object"]["spec"]["containers"][0]["resources"]["limits"]["xpupool.io/vxpu-memory"] = 65536
    assert (
        "largest matching card has 40960 MiB"
        in admit_pod(too_big, settings=WebhookSettings(pool_check="deny"), pool=[emulated]).message
    )


def test_whole_card_adoption_can_be_turned_off() -> None:
    request = review(pod(container("main", {"nvidia.com/gpu": 1})))["request"]
    assert admit_pod(request, settings=WebhookSettings(), pool=None).patch == ()  # default: vendor plugins keep them
    adopted = admit_pod(request, settings=dataclasses.replace(WebhookSettings(), adopt_whole_card=True), pool=None)
    assert adopted.allowed and adopted.patch


async def test_tls_is_verified_and_a_reloaded_chain_serves_new_handshakes(served: Served) -> None:
    """A client trusting another CA is refused; after reloading a chain from a new CA into the same
    SSLContext (rotation), new connections verify against the new CA only."""
    stranger = certs.new_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"], now=dt.datetime.now(dt.UTC))
    body = review(pod(container("main", FRACTION)))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await post(served, body, ca_pem=stranger.ca_cert_pem)

    served.tls.load(stranger.cert_pem, stranger.key_pem)
    assert served.tls.loads == 2
    assert (await post(served, body, ca_pem=stranger.ca_cert_pem))["allowed"] is True
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await post(served, body, ca_pem=served.bundle.ca_cert_pem)
    with pytest.raises(ssl.SSLError):
        served.tls.load(b"not a cert", stranger.key_pem)
    assert (await post(served, body, ca_pem=stranger.ca_cert_pem))["allowed"] is True  # old chain kept
