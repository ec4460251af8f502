"""The webhook's own metrics: reviews by outcome and answer latency, scraped over HTTP."""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from xpupool.kube.webhook_metrics import WebhookCollector, metrics_app

from .conftest import Served, client_context
from .test_webhook import FRACTION, container, pod, post, review


async def test_reviews_and_latency_are_exported(served: Served) -> None:
    await post(served, review(pod(container("main", FRACTION))))  # mutated
    await post(served, review(pod(container("main", {"xpupool.io/vxpu": 1, "xpupool.io/vxpu-core": 0}))))  # refused
    await post(served, review(pod(container("main"))))  # not ours: passed
    ssl = client_context(served.bundle.ca_cert_pem)
    async with aiohttp.ClientSession() as http, http.post(f"{served.url}/mutate", json={"nope": 1}, ssl=ssl) as resp:
        assert resp.status == 400  # not an AdmissionReview: error
    server = TestServer(metrics_app(WebhookCollector(served.state.stats, served.state.latency, lambda: [])),
                        host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/metrics")) as resp:
            text = await resp.text()
    finally:
        await server.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    def reviews(outcome: str) -> float:
        return samples[("xpupool_webhook_reviews_total", (("outcome", outcome),))]
    assert [reviews(o) for o in ("mutated", "refused", "passed", "error", "dry_run")] == [1, 1, 1, 1, 0]
    assert samples[("xpupool_webhook_review_seconds_count", ())] == 4
    assert samples[("xpupool_webhook_review_seconds_bucket", (("le", "+Inf"),))] == 4
    assert 0 < samples[("xpupool_webhook_review_seconds_sum", ())] < 4
    assert samples[("xpupool_webhook_pool_nodes", ())] == 0
