from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from xpupool.kube import certs
from xpupool.kube.webhook import WebhookState, make_app

NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client that trusts only ``ca_pem`` and checks the server name (what the apiserver does)."""
    return ssl.create_default_context(cadata=ca_pem.decode())


@dataclass
class Served:
    url: str
    state: WebhookState
    bundle: certs.CertBundle
    tls: certs.ReloadableServerContext


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """The webhook app on 127.0.0.1 over real HTTPS, with a certificate from :mod:`certs`."""
    bundle = certs.new_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"], now=dt.datetime.now(dt.UTC))
    tls = certs.ReloadableServerContext(bundle.cert_pem, bundle.key_pem)
    state = WebhookState()
    runner = web.AppRunner(make_app(state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    port = runner.addresses[0][1]
    yield Served(f"https://127.0.0.1:{port}", state, bundle, tls)
    await runner.cleanup()
