"""EventRecorder against a real apiserver: events.k8s.io/v1 Events about pods, deduplicated."""

from __future__ import annotations

import pytest

from xpupool.core.clock import ManualClock
from xpupool.kube.events import EventRecorder
from xpupool.kube.testing import fake_pod
from xpupool.kube.transport import EVENTS, PODS, AiohttpTransport

pytestmark = pytest.mark.e2e_apiserver


async def test_events_written_and_deduplicated(transport: AiohttpTransport, namespace: str) -> None:
    pod = await transport.create(PODS, fake_pod(namespace, "p", vxpu=1, core_pct=30))
    clock = ManualClock(0.0)
    rec = EventRecorder(transport, clock=clock, instance="test", dedupe_s=60)
    rec.pod_event(pod, reason="FailedScheduling", note="0/3 nodes available: 3 node(s) lack 1 card(s)", warning=True)
    rec.pod_event(pod, reason="FailedScheduling", note="0/3 nodes available: 3 node(s) lack 1 card(s)", warning=True)
    clock.advance(61)
    rec.pod_event(pod, reason="FailedScheduling", note="0/3 nodes available: 3 node(s) lack 1 card(s)", warning=True)
    rec.pod_event(pod, reason="Scheduled", note="assigned to n1")
    await rec.flush()
    events = (await transport.list(EVENTS, namespace=namespace)).items
    reasons = sorted(e["reason"] for e in events)
    assert reasons == ["FailedScheduling", "FailedScheduling", "Scheduled"], [e.get("note") for e in events]
    failed = next(e for e in events if e["reason"] == "FailedScheduling")
    assert failed["type"] == "Warning"
    assert failed["regarding"]["uid"] == pod["metadata"]["uid"]
    assert failed["reportingController"] == "xpupool.io/scheduler"
