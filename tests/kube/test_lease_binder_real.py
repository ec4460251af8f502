"""Lease leader election and the binder against a real kube-apiserver.

Lease: two replicas with injected clocks; only one leads; the follower takes over only after the
leader's record has been unchanged for the lease duration *on the follower's clock*; a leader
whose renewals fail is fenced (``is_leader`` false) once the renew deadline passes, before the
follower may take over; release hands over at once.

Binder: a bind sets ``spec.nodeName`` and the annotations atomically; re-binding to the same node
is success (a retried bind whose answer was lost); binding to another node is CONFLICT; a
deleted pod is GONE; a UID mismatch (re-created pod) is GONE.
"""

from __future__ import annotations

import pytest

from xpupool.core.clock import ManualClock
from xpupool.kube.binder import Binder, BindOutcome
from xpupool.kube.lease import LeaderElector
from xpupool.kube.transport import LEASES, NODES, PODS, AiohttpTransport, JsonDict, TransportError

pytestmark = pytest.mark.e2e_apiserver


def elector(transport: AiohttpTransport, namespace: str, identity: str, clock: ManualClock) -> LeaderElector:
    return LeaderElector(
        transport,
        namespace=namespace,
        name="sched",
        identity=identity,
        clock=clock,
        lease_duration_s=15,
        renew_deadline_s=10,
        retry_period_s=2,
    )


async def test_lease_single_leader_takeover_and_release(transport: AiohttpTransport, namespace: str) -> None:
    clock_a, clock_b = ManualClock(1000.0), ManualClock(5000.0)  # unrelated clocks: never compared
    a = elector(transport, namespace, "a", clock_a)
    b = elector(transport, namespace, "b", clock_b)
    assert await a.try_acquire_or_renew() and a.is_leader()
    assert not await b.try_acquire_or_renew() and not b.is_leader()

    # a keeps renewing: b never takes over however long it waits
    for _ in range(10):
        clock_a.advance(2)
        clock_b.advance(2)
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()

    # a stops renewing (crash): b takes over only after a full lease duration on b's clock
    clock_b.advance(14)
    assert not await b.try_acquire_or_renew()
    clock_b.advance(2)
    assert await b.try_acquire_or_renew() and b.is_leader()
    lease = await transport.get(LEASES, "sched", namespace=namespace)
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1

    # a comes back: its write carries a stale resourceVersion or sees b holding -> not leader
    clock_a.advance(1)
    assert not await a.try_acquire_or_renew()
    assert not a.is_leader()

    # graceful release: a may take over immediately (after observing the released record)
    await b.release()
    assert not b.is_leader()
    assert await a.try_acquire_or_renew() and a.is_leader()


class FailingTransport:
    """Wraps a transport; every call fails while ``down`` (a partitioned leader)."""

    def __init__(self, inner: AiohttpTransport) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        attr = getattr(self.inner, name)

        async def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            if self.down:
                raise TransportError("partitioned")
            return await attr(*args, **kwargs)

        return call


async def test_leader_is_fenced_before_anyone_can_take_over(transport: AiohttpTransport, namespace: str) -> None:
    clock = ManualClock(0.0)
    flaky = FailingTransport(transport)
    a = LeaderElector(
        flaky,
        namespace=namespace,
        name="fence",
        identity="a",
        clock=clock,  # type: ignore[arg-type]
        lease_duration_s=15,
        renew_deadline_s=10,
        retry_period_s=2,
    )
    assert await a.try_acquire_or_renew() and a.is_leader()
    flaky.down = True
    clock.advance(9.9)
    assert not await a.try_acquire_or_renew()
    assert a.is_leader()  # still inside the renew deadline
    clock.advance(0.2)
    assert not a.is_leader()  # fenced at 10 s, while others must wait 15 s to take over


def pod_body(namespace: str, name: str) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"schedulerName": "xpupool", "containers": [{"name": "c", "image": "busybox"}]},
    }


async def test_binder_outcomes(transport: AiohttpTransport, namespace: str) -> None:
    for node in (f"{namespace}-n1", f"{namespace}-n2"):
        await transport.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    n1, n2 = f"{namespace}-n1", f"{namespace}-n2"
    binder = Binder(transport, concurrency=4)
    created = await transport.create(PODS, pod_body(namespace, "p"))
    uid = created["metadata"]["uid"]

    ok = await binder.bind(namespace, "p", n1, uid=uid, annotations={"xpupool.io/allocation": '{"v":1}'})
    assert ok.outcome is BindOutcome.BOUND
    pod = await transport.get(PODS, "p", namespace=namespace)
    assert pod["spec"]["nodeName"] == n1
    assert pod["metadata"]["annotations"]["xpupool.io/allocation"] == '{"v":1}'  # same write as the bind

    again = await binder.bind(namespace, "p", n1, uid=uid)
    assert again.outcome is BindOutcome.BOUND and "already" in again.message
    other = await binder.bind(namespace, "p", n2, uid=uid)
    assert other.outcome is BindOutcome.CONFLICT

    gone = await binder.bind(namespace, "nope", n1)
    assert gone.outcome is BindOutcome.GONE

    await transport.create(PODS, pod_body(namespace, "q"))
    stale = await binder.bind(namespace, "q", n1, uid="00000000-0000-0000-0000-000000000000")
    assert stale.outcome is BindOutcome.GONE
    q = await transport.get(PODS, "q", namespace=namespace)
    assert not q["spec"].get("nodeName")
