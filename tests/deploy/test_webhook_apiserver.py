"""The admission webhook called by a real kube-apiserver, and its certificate keeper writing a real
Secret and webhook configuration (marker ``e2e_apiserver``).

The test webhook configuration points at our HTTPS server on 127.0.0.1 and matches only the
test's namespace, so other tests sharing the control plane never reach it. Its matchConditions
are the chart's own, so the chart's CEL selection runs in the apiserver here."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from xpupool.kube import certs
from xpupool.kube.testing import ControlPlane, declare_queues
from xpupool.kube.transport import AiohttpTransport, KubeConfig
from xpupool.kube.webhook import (
    ANN_REQUEST,
    CertKeeper,
    QueueCache,
    WebhookSettings,
    WebhookState,
    make_app,
    serve,
)

from .apiserver import RawApi
from .helm import render

pytestmark = pytest.mark.e2e_apiserver


def chart_webhook() -> dict[str, Any]:
    (config,) = [d for d in render() if d["kind"] == "MutatingWebhookConfiguration"]
    return config["webhooks"][0]  # type: ignore[no-any-return]


def vxpu_pod(name: str, core: int = 30) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "resources": {
                        "limits": {
                            "xpupool.io/vxpu": "1",
                            "xpupool.io/vxpu-core": str(core),
                            "xpupool.io/vxpu-memory": "4096",
                        }
                    },
                }
            ]
        },
    }


@pytest.fixture
async def https_webhook() -> AsyncIterator[tuple[str, certs.CertBundle, WebhookState]]:
    bundle = certs.new_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"], now=dt.datetime.now(dt.UTC))
    tls = certs.ReloadableServerContext(bundle.cert_pem, bundle.key_pem)
    state = WebhookState()
    runner = web.AppRunner(make_app(state))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context).start()
    yield f"https://127.0.0.1:{runner.addresses[0][1]}/mutate", bundle, state
    await runner.cleanup()


async def test_apiserver_mutates_and_refuses_through_the_webhook(
    raw_api: RawApi,
    e2e_namespace: str,
    https_webhook: tuple[str, certs.CertBundle, WebhookState],
    transport: AiohttpTransport,
) -> None:
    url, bundle, state = https_webhook
    hook = chart_webhook()
    hook["clientConfig"] = {"url": url, "caBundle": base64.b64encode(bundle.ca_cert_pem).decode()}
    hook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": e2e_namespace}}
    name = f"xpupool-test-{e2e_namespace}"
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook],
    }
    status, body = await raw_api.create(config)
    assert status == 201, body
    try:
        pods = raw_api.path("Pod", e2e_namespace)
        # The apiserver picks up new webhook configurations asynchronously: wait until it calls us.
        for _ in range(100):
            status, probe = await raw_api.request("POST", pods, vxpu_pod("probe"), dry_run=True)
            if probe.get("spec", {}).get("schedulerName") == "xpupool":
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"the apiserver never called the webhook: {status} {probe}")

        status, created = await raw_api.request("POST", pods, vxpu_pod("trainer"))
        assert status == 201, created
        _, stored = await raw_api.request("GET", raw_api.path("Pod", e2e_namespace, "trainer"))
        assert stored["spec"]["schedulerName"] == "xpupool"
        assert stored["metadata"]["labels"]["xpupool.io/managed"] == "true"
        assert '"shareMilli":300' in stored["metadata"]["annotations"][ANN_REQUEST]
        env = {e["name"] for e in stored["spec"]["containers"][0]["env"]}
        assert env == {"XPUPOOL_POD_NAME", "XPUPOOL_POD_NAMESPACE", "XPUPOOL_POD_UID"}

        dry_before = state.stats.dry_run
        status, dry = await raw_api.request("POST", pods, vxpu_pod("dry"), dry_run=True)
        assert status == 201 and dry["spec"]["schedulerName"] == "xpupool"
        assert (await raw_api.request("GET", raw_api.path("Pod", e2e_namespace, "dry")))[0] == 404
        assert state.stats.dry_run == dry_before + 1

        status, refused = await raw_api.request("POST", pods, vxpu_pod("greedy", core=150))
        assert status == 400, refused
        assert 'admission webhook "pods.xpupool.io" denied the request' in refused["message"]
        assert "compute share is 1..100 percent of a card, got 150" in refused["message"]

        # Queues: the cluster owner's XPUQueues (read by the webhook's QueueCache from this
        # apiserver) decide which queue a namespace may use; the pod's label is only a wish.
        closed, home = f"closed-{e2e_namespace}", f"home-{e2e_namespace}"
        await declare_queues(transport, {closed: {}}, namespaces=[])
        await declare_queues(transport, {home: {"defaultForNamespaces": True}}, namespaces=[e2e_namespace])
        cache = QueueCache(transport)
        await cache.refresh()
        state.queues = cache.catalogue
        spoof = vxpu_pod("spoof")
        spoof["metadata"]["labels"] = {"xpupool.io/queue": closed}
        status, refused = await raw_api.request("POST", pods, spoof)
        assert status == 400, refused
        assert f"namespace {e2e_namespace} may not use queue '{closed}'" in refused["message"]
        assert f"queues namespace {e2e_namespace} may use: default, {home}" in refused["message"]
        status, created = await raw_api.request("POST", pods, vxpu_pod("defaulted"))
        assert status == 201, created
        assert created["metadata"]["labels"]["xpupool.io/queue"] == home
        assert f'"queue":"{home}"' in created["metadata"]["annotations"][ANN_REQUEST]

        reviews = state.stats.reviews
        plain = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "plain"},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
        }
        status, created = await raw_api.request("POST", pods, plain)
        assert status == 201 and created["spec"]["schedulerName"] == "default-scheduler"
        assert state.stats.reviews == reviews  # matchConditions kept it away from the webhook
    finally:
        await raw_api.request("DELETE", raw_api.path("MutatingWebhookConfiguration", name=name))


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def _inert_webhook_config(name: str) -> dict[str, Any]:
    """A MutatingWebhookConfiguration that matches no namespace: a place to publish the CA."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "inert.xpupool.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": {"url": "https://127.0.0.1:1/mutate"},
                "namespaceSelector": {"matchLabels": {"xpupool.io/never": "true"}},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            }
        ],
    }


async def test_cert_keeper_bootstraps_rotates_and_publishes_the_ca(
    control_plane: ControlPlane, raw_api: RawApi, e2e_namespace: str
) -> None:
    name = f"xpupool-inert-{e2e_namespace}"
    inert = _inert_webhook_config(name)
    status, body = await raw_api.create(inert)
    assert status == 201, body
    transport = AiohttpTransport(KubeConfig.from_file(control_plane.kubeconfig))
    clock = Clock()

    def keeper() -> CertKeeper:
        return CertKeeper(
            transport,
            namespace=e2e_namespace,
            secret_name="wh-tls",
            service="wh",
            webhook_configuration=name,
            now=clock,
        )

    async def ca_bundle() -> list[x509.Certificate]:
        _, live = await raw_api.request("GET", raw_api.path("MutatingWebhookConfiguration", name=name))
        return x509.load_pem_x509_certificates(base64.b64decode(live["webhooks"][0]["clientConfig"]["caBundle"]))

    try:
        first = keeper()
        assert await first.sync() == "new-ca"
        assert first.bundle is not None and first.context is not None
        _, secret = await raw_api.request("GET", raw_api.path("Secret", e2e_namespace, "wh-tls"))
        assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt", "ca.key"}
        ca = x509.load_pem_x509_certificate(first.bundle.ca_cert_pem)
        assert await ca_bundle() == [ca]

        replica = keeper()  # a second replica adopts the stored bundle
        assert await replica.sync() == "kept" and replica.bundle == first.bundle

        clock.now += dt.timedelta(days=340)
        assert await first.sync() == "reissued-serving"
        assert first.bundle.ca_cert_pem == replica.bundle.ca_cert_pem
        assert first.bundle.cert_pem != replica.bundle.cert_pem
        assert first.context.loads == 2 and await ca_bundle() == [ca]
        assert await replica.sync() == "kept" and replica.bundle == first.bundle  # picks up the rotation

        clock.now += dt.timedelta(days=3300)
        assert await first.sync() == "new-ca"
        bundle_now = await ca_bundle()
        assert len(bundle_now) == 2 and bundle_now[1] == ca  # old CA kept during the switch
        assert bundle_now[0] == x509.load_pem_x509_certificate(first.bundle.ca_cert_pem)
    finally:
        await transport.close()
        await raw_api.request("DELETE", raw_api.path("MutatingWebhookConfiguration", name=name))


async def test_serve_bootstraps_tls_and_checks_the_pool_from_the_apiserver(
    control_plane: ControlPlane, raw_api: RawApi, e2e_namespace: str
) -> None:
    """The production entry point end to end: Secret + caBundle written, HTTPS served with the
    stored chain (verified by service DNS name), pool check fed by the real node list."""
    name = f"xpupool-serve-{e2e_namespace}"
    inert = _inert_webhook_config(name)
    assert (await raw_api.create(inert))[0] == 201
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = asyncio.Event()
    state = WebhookState()
    task = asyncio.create_task(
        serve(
            transport=AiohttpTransport(KubeConfig.from_file(control_plane.kubeconfig)),
            settings=WebhookSettings(pool_check="warn"),
            namespace=e2e_namespace,
            service="wh",
            secret_name="wh-tls",
            webhook_configuration=name,
            port=port,
            host="127.0.0.1",
            stop=stop,
            state=state,
        )
    )
    try:

        async def secret_ready() -> dict[str, Any] | None:
            status, secret = await raw_api.request("GET", raw_api.path("Secret", e2e_namespace, "wh-tls"))
            return secret if status == 200 else None

        secret = None
        for _ in range(100):
            secret = await secret_ready()
            if secret and state.pool() is not None:
                break
            await asyncio.sleep(0.1)
        assert secret is not None and state.pool() is not None
        ctx = ssl.create_default_context(cadata=base64.b64decode(secret["data"]["ca.crt"]).decode())
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "team-a",
                "operation": "CREATE",
                "object": {
                    "metadata": {"name": "p", "annotations": {"xpupool.io/vendor": "amd"}},
                    "spec": {"containers": [{"name": "m", "resources": {"limits": {"xpupool.io/vxpu": 1}}}]},
                },
            },
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"https://127.0.0.1:{port}/mutate", json=review, ssl=ctx, server_hostname=f"wh.{e2e_namespace}.svc"
            ) as resp,
        ):
            answer = (await resp.json())["response"]
        assert answer["allowed"] is True and answer["patchType"] == "JSONPatch"
        assert any("no card of amd in the pool" in w for w in answer["warnings"])
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await raw_api.request("DELETE", raw_api.path("MutatingWebhookConfiguration", name=name))
