"""End to end on a real kube-apiserver: 100 emulated nodes, 1000 fractional pods, gangs,
priorities, queues, preemption, and a scheduler SIGKILLed in the middle of a burst.

The scheduler runs as a separate process (``python -m xpupool.kube.scheduler``), exactly as it
is deployed, with its own scheduler name and node pool so tests sharing the apiserver stay apart.
Correctness is judged only from what the apiserver holds afterwards: every bound pod's
``xpupool.io/allocation`` annotation, summed per card, must stay within the card (compute
<= 100 %, memory <= card memory), and must name the node the pod is bound to.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpupool.kube.objects import ANN_ALLOCATION, ANN_POD_GROUP_MIN
from xpupool.kube.testing import ControlPlane, FakeKubelet, create_all, declare_queues, fake_node, fake_pod
from xpupool.kube.transport import EVENTS, NODES, PODS, PRIORITY_CLASSES, AiohttpTransport, JsonDict

pytestmark = pytest.mark.e2e_apiserver

CARD_MIB = 81920
CARDS = 4


class SchedulerProcess:
    """``python -m xpupool.kube.scheduler`` for one pool; restartable; SIGKILL-able."""

    def __init__(self, cp: ControlPlane, name: str, pool: str, *extra: str) -> None:
        self.cp, self.name, self.pool, self.extra = cp, name, pool, extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = cp.workdir / f"sched-{name}.log"

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xpupool.kube.scheduler",
                "--kubeconfig",
                str(self.cp.kubeconfig),
                "--scheduler-name",
                self.name,
                "--node-selector",
                f"xpupool.test/pool={self.pool}",
                "--log-level",
                "WARNING",
                *self.extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        out.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-30:]) if self.log.exists() else ""


@pytest.fixture
def sched_factory(control_plane: ControlPlane) -> Iterator[list[SchedulerProcess]]:
    made: list[SchedulerProcess] = []
    yield made
    for s in made:
        s.stop()


async def make_pool(transport: AiohttpTransport, pool: str, nodes: int) -> None:
    await create_all(
        transport,
        NODES,
        [
            fake_node(f"{pool}-{i:03d}", cards=CARDS, card_memory_mib=CARD_MIB, labels={"xpupool.test/pool": pool})
            for i in range(nodes)
        ],
    )


async def ensure_priority_classes(transport: AiohttpTransport) -> None:
    for name, value in (("xp-low", 100), ("xp-high", 1000)):
        try:
            await transport.create(
                PRIORITY_CLASSES,
                {
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": {"name": name},
                    "value": value,
                },
            )
        except Exception as exc:  # already there from another test
            assert "AlreadyExists" in str(exc) or "409" in str(exc), exc


async def pods_of(transport: AiohttpTransport, namespace: str) -> list[JsonDict]:
    return (await transport.list(PODS, namespace=namespace)).items


async def wait_until(
    transport: AiohttpTransport,
    namespace: str,
    predicate,
    timeout_s: float,  # type: ignore[no-untyped-def]
    what: str,
    sched: SchedulerProcess | None = None,
) -> list[JsonDict]:
    deadline = time.monotonic() + timeout_s
    while True:
        pods = await pods_of(transport, namespace)
        if predicate(pods):
            return pods
        if time.monotonic() > deadline:
            bound = sum(1 for p in pods if p["spec"].get("nodeName"))
            raise AssertionError(
                f"{what}: not reached in {timeout_s:.0f} s ({bound}/{len(pods)} bound)\n"
                + (sched.tail() if sched else "")
            )
        await asyncio.sleep(0.25)


def assert_within_capacity(
    pods: list[JsonDict], *, include_unbound: bool = False
) -> dict[tuple[str, int], tuple[int, int]]:
    """Sum every bound pod's annotation per card; fail on any over-commit or node mismatch.

    ``include_unbound`` also counts annotated pods not bound yet (annotate-before-bind mode: the
    scheduler's reservations must be consistent even before the binds land).
    """
    per_card: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    for pod in pods:
        node = pod["spec"].get("nodeName")
        raw = (pod["metadata"].get("annotations") or {}).get(ANN_ALLOCATION)
        if not node and not (include_unbound and raw):
            continue
        assert raw, f"{pod['metadata']['name']} bound without an allocation annotation"
        alloc = json.loads(raw)
        node = node or alloc["node"]
        assert alloc["node"] == node, f"{pod['metadata']['name']}: annotation {alloc['node']} != bound {node}"
        for card, mem in zip(alloc["cards"], alloc["memoryMiB"], strict=True):
            entry = per_card[(node, card)]
            entry[0] += alloc["shareMilli"]
            entry[1] += mem
            entry[2] += 1
            if alloc["shareMilli"] >= 1000:
                entry[2] += 1000  # a whole card is exclusive: any other tenant makes this > 1000
    for (node, card), (share, mem, tenants) in per_card.items():
        assert 0 <= card < CARDS, f"{node} has no card {card}"
        assert share <= 1000, f"{node} card {card}: compute over-committed ({share} milli)"
        assert mem <= CARD_MIB, f"{node} card {card}: memory over-committed ({mem} MiB)"
        assert tenants < 2000 and not (tenants > 1000 and tenants != 1001), f"{node} card {card}: exclusive shared"
    return {k: (v[0], v[1]) for k, v in per_card.items()}


def mixed_pods(namespace: str, scheduler: str, count: int, *, queues: bool = True) -> list[JsonDict]:
    """Mixed sizes: 10/25/40 % slices, whole cards and 2-card pods; about 79 % of 400 cards for 1000."""
    pods = []
    for i in range(count):
        kind = i % 50
        queue = ("team-a", "team-b", "team-c")[i % 3] if queues else "default"
        labels = {"xpupool.io/queue": queue}
        prio = "xp-high" if i % 5 == 0 else "xp-low"
        if kind < 20:
            spec = {"vxpu": 1, "core_pct": 10}
        elif kind < 35:
            spec = {"vxpu": 1, "core_pct": 25}
        elif kind < 45:
            spec = {"vxpu": 1, "core_pct": 40}
        elif kind < 49:
            spec = {"vxpu": 1, "core_pct": 100}
        else:
            spec = {"vxpu": 2, "core_pct": 100}
        pods.append(fake_pod(namespace, f"p{i:04d}", scheduler=scheduler, priority_class=prio, labels=labels, **spec))  # type: ignore[arg-type]
    return pods


async def test_burst_1000_pods_on_100_nodes_with_gangs(
    control_plane: ControlPlane,
    transport: AiohttpTransport,
    namespace: str,
    sched_factory: list[SchedulerProcess],
) -> None:
    await ensure_priority_classes(transport)
    # queues: with the XPUQueue CRD installed a namespace may use only the queues that admit it
    await declare_queues(transport, {q: {} for q in ("team-a", "team-b", "team-c")}, namespaces=[namespace])
    pool = namespace
    await make_pool(transport, pool, 100)
    name = f"xp-{namespace}"
    sched = SchedulerProcess(control_plane, name, pool)
    sched_factory.append(sched)
    sched.start()
    start = time.monotonic()
    pods = mixed_pods(namespace, name, 1000)
    def gang(group: str, members: int, core_pct: int, min_member: int) -> list[JsonDict]:
        return [
            fake_pod(namespace, f"{group}-{i}", scheduler=name, vxpu=1, core_pct=core_pct,
                     labels={"xpupool.io/pod-group": group}, annotations={ANN_POD_GROUP_MIN: str(min_member)})
            for i in range(members)
        ]

    pods += gang("g1", 8, 100, 8)  # 8 whole cards, all or nothing, can fit -> all bound
    pods += gang("g2", 4, 10, 6)  # needs 6 members, only 4 exist -> none may be bound
    await create_all(transport, PODS, pods, concurrency=32)
    created_s = time.monotonic() - start

    final = await wait_until(
        transport,
        namespace,
        lambda ps: sum(1 for p in ps if p["spec"].get("nodeName")) >= 1008,
        120,
        "1008 pods bound",
        sched,
    )
    elapsed = time.monotonic() - start
    print(f"\n1008 pods bound {elapsed:.1f} s after the burst began (creation took {created_s:.1f} s)")
    usage = assert_within_capacity(final)
    bound = {p["metadata"]["name"] for p in final if p["spec"].get("nodeName")}
    assert all(f"g1-{i}" in bound for i in range(8)), "gang g1 not fully bound"
    assert not any(f"g2-{i}" in bound for i in range(4)), "gang g2 partially bound"
    assert len([p for p in final if p["metadata"]["name"].startswith("p") and p["spec"].get("nodeName")]) == 1000
    total_share = sum(s for s, _ in usage.values())
    # milli: 400 x 10 %, 300 x 25 %, 200 x 40 %, 80 whole, 20 x 2 whole, gang g1 8 whole
    assert total_share == 400 * 100 + 300 * 250 + 200 * 400 + 80 * 1000 + 20 * 2000 + 8 * 1000
    # gang g2 is explained to the user (events are written asynchronously, after the binds)
    deadline = time.monotonic() + 60
    while True:
        events = (await transport.list(EVENTS, namespace=namespace)).items
        if any(e["regarding"]["name"].startswith("g2-") and "/g2: " in e["note"] for e in events):
            break
        assert time.monotonic() < deadline, "no event explains why gang g2 waits"
        await asyncio.sleep(0.5)
    sched.stop()


async def test_preemption_evicts_lower_priority(
    control_plane: ControlPlane,
    transport: AiohttpTransport,
    namespace: str,
    sched_factory: list[SchedulerProcess],
) -> None:
    await ensure_priority_classes(transport)
    await declare_queues(transport, {"other": {}}, namespaces=[namespace])  # queues: admit this namespace
    pool = namespace
    await make_pool(transport, pool, 2)  # 8 cards
    name = f"xp-{namespace}"
    sched = SchedulerProcess(control_plane, name, pool)
    sched_factory.append(sched)
    kubelet = FakeKubelet(transport)
    kubelet_task = asyncio.create_task(kubelet.run())
    try:
        sched.start()
        low = [
            fake_pod(namespace, f"low-{i}", scheduler=name, vxpu=1, core_pct=100, priority_class="xp-low")
            for i in range(8)
        ]
        await create_all(transport, PODS, low)
        await wait_until(
            transport,
            namespace,
            lambda ps: sum(1 for p in ps if p["spec"].get("nodeName")) == 8,
            60,
            "8 low pods bound",
            sched,
        )
        # A low-priority pod of another, empty queue waits first: DRF would put its queue ahead,
        # but it must neither preempt (no declared guarantee to reclaim) nor take the room the
        # high-priority pods evicted for.
        await transport.create(
            PODS,
            fake_pod(
                namespace,
                "other-queue",
                scheduler=name,
                vxpu=1,
                core_pct=100,
                priority_class="xp-low",
                labels={"xpupool.io/queue": "other"},
            ),
        )
        await asyncio.sleep(1.0)
        high = [
            fake_pod(namespace, f"high-{i}", scheduler=name, vxpu=1, core_pct=100, priority_class="xp-high")
            for i in range(2)
        ]
        await create_all(transport, PODS, high)
        final = await wait_until(
            transport,
            namespace,
            lambda ps: all(p["spec"].get("nodeName") for p in ps if p["metadata"]["name"].startswith("high")),
            60,
            "high-priority pods bound",
            sched,
        )
        names = {p["metadata"]["name"] for p in final}
        assert len([n for n in names if n.startswith("low-")]) == 6  # exactly two victims
        other = next(p for p in final if p["metadata"]["name"] == "other-queue")
        assert not other["spec"].get("nodeName")
        assert_within_capacity(final)
        events = (await transport.list(EVENTS, namespace=namespace)).items
        preempted = [e for e in events if e["reason"] == "Preempted"]
        assert len(preempted) == 2 and all("high-" in e["note"] for e in preempted)
    finally:
        kubelet_task.cancel()
        await asyncio.gather(kubelet_task, return_exceptions=True)
        sched.stop()


@pytest.mark.parametrize("mode", ["atomic", "annotate-before-bind"])
async def test_sigkill_mid_burst_never_overcommits(
    control_plane: ControlPlane,
    transport: AiohttpTransport,
    namespace: str,
    sched_factory: list[SchedulerProcess],
    mode: str,
) -> None:
    pool = namespace
    await make_pool(transport, pool, 100)
    name = f"xp-{namespace}"
    extra = ("--annotate-before-bind",) if mode == "annotate-before-bind" else ()
    pods = mixed_pods(namespace, name, 1000, queues=False)
    for p in pods:
        p["spec"].pop("priorityClassName", None)
    await create_all(transport, PODS, pods, concurrency=32)
    # First run: binds throttled to 150/s so the SIGKILL lands mid-burst, with binds queued and
    # in flight (64 concurrent) - the state a crash leaves behind.
    sched = SchedulerProcess(control_plane, name, pool, *extra, "--bind-qps", "150")
    sched_factory.append(sched)
    sched.start()
    await wait_until(
        transport,
        namespace,
        lambda ps: sum(1 for p in ps if p["spec"].get("nodeName")) >= 300,
        120,
        "300 pods bound before the kill",
        sched,
    )
    sched.kill()
    at_kill = await pods_of(transport, namespace)
    assert_within_capacity(at_kill, include_unbound=True)
    bound_at_kill = sum(1 for p in at_kill if p["spec"].get("nodeName"))
    annotated_unbound = sum(
        1
        for p in at_kill
        if not p["spec"].get("nodeName") and ANN_ALLOCATION in (p["metadata"].get("annotations") or {})
    )
    assert 300 <= bound_at_kill < 1000, "the kill must land mid-burst"
    restarted = SchedulerProcess(control_plane, name, pool, *extra)
    sched_factory.append(restarted)
    restarted.start()
    final = await wait_until(
        transport,
        namespace,
        lambda ps: sum(1 for p in ps if p["spec"].get("nodeName")) == 1000,
        180,
        "all 1000 bound after restart",
        restarted,
    )
    assert_within_capacity(final)
    print(
        f"\n[{mode}] SIGKILL with {bound_at_kill} bound ({annotated_unbound} annotated, unbound); "
        "after restart 1000 bound, no card over-committed"
    )


async def test_leader_sigkilled_standby_takes_over(
    control_plane: ControlPlane,
    transport: AiohttpTransport,
    namespace: str,
    sched_factory: list[SchedulerProcess],
) -> None:
    """Two replicas with --leader-elect (as the Helm chart runs them). SIGKILL the leader in the
    middle of a burst: the standby takes over after the lease expires and binds the rest, with
    no card over-committed."""
    from xpupool.kube.transport import LEASES

    pool = namespace
    await make_pool(transport, pool, 20)
    name = f"xp-{namespace}"
    lease = (
        "--leader-elect",
        "--lease-namespace",
        namespace,
        "--lease-name",
        "sched",
        "--lease-duration-s",
        "4",
        "--renew-deadline-s",
        "3",
        "--retry-period-s",
        "0.5",
    )
    replicas = []
    for identity in ("r1", "r2"):
        proc = SchedulerProcess(control_plane, f"{name}", pool, *lease, "--identity", identity, "--bind-qps", "40")
        proc.log = control_plane.workdir / f"sched-{name}-{identity}.log"
        sched_factory.append(proc)
        replicas.append(proc)
        proc.start()
    pods = mixed_pods(namespace, name, 200, queues=False)
    for p in pods:
        p["spec"].pop("priorityClassName", None)
    await create_all(transport, PODS, pods)
    await wait_until(
        transport,
        namespace,
        lambda ps: sum(1 for p in ps if p["spec"].get("nodeName")) >= 40,
        60,
        "40 pods bound by the first leader",
    )
    holder = (await transport.get(LEASES, "sched", namespace=namespace))["spec"]["holderIdentity"]
    leader = replicas[0] if holder == "r1" else replicas[1]
    leader.kill()
    killed_at = time.monotonic()
    at_kill = sum(1 for p in await pods_of(transport, namespace) if p["spec"].get("nodeName"))
    assert at_kill < 200, "the kill must land mid-burst"
    final = await wait_until(
        transport,
        namespace,
        lambda ps: sum(1 for p in ps if p["spec"].get("nodeName")) == 200,
        90,
        "all 200 bound by the standby",
    )
    took = time.monotonic() - killed_at
    new_holder = (await transport.get(LEASES, "sched", namespace=namespace))["spec"]["holderIdentity"]
    assert new_holder != holder
    assert_within_capacity(final)
    print(f"\nleader {holder} SIGKILLed at {at_kill}/200 bound; {new_holder} finished the burst {took:.1f} s later")


async def test_kube_scheduler_whole_gpu_pods_are_in_our_ledger(
    control_plane: ControlPlane,
    transport: AiohttpTransport,
    namespace: str,
    sched_factory: list[SchedulerProcess],
) -> None:
    """Coexistence: kube-scheduler places whole-GPU pods (``nvidia.com/gpu``) first; our
    scheduler then sees them in its ledger and gives fractional pods only the remaining cards."""
    from xpupool.kube.testing import find_bin_dir

    _, missing = find_bin_dir(("kube-scheduler",))
    assert not missing, "kube-scheduler binary missing (make kube-bins)"
    pool = namespace
    nodes = []
    for i in range(2):
        node = fake_node(f"{pool}-{i}", cards=4, card_memory_mib=CARD_MIB, labels={"xpupool.test/pool": pool})
        for key in ("capacity", "allocatable"):
            node["status"][key]["nvidia.com/gpu"] = "4"  # what the NVIDIA device plugin would advertise
        nodes.append(node)
    await create_all(transport, NODES, nodes)
    kube = control_plane.start_kube_scheduler(name=f"kube-scheduler-{namespace}")
    try:
        # kube-scheduler sees every node in the cluster: pin its pods to our pool
        foreign = []
        for i in range(5):
            pod = fake_pod(namespace, f"whole-{i}", scheduler="default-scheduler", whole_gpus=1)
            pod["spec"]["nodeSelector"] = {"xpupool.test/pool": pool}
            foreign.append(pod)
        await create_all(transport, PODS, foreign)
        await wait_until(
            transport,
            namespace,
            lambda ps: sum(1 for p in ps if p["spec"].get("nodeName")) == 5,
            60,
            "kube-scheduler bound 5 whole-GPU pods",
        )
    finally:
        kube.terminate()
        kube.wait(timeout=15)
    name = f"xp-{namespace}"
    sched = SchedulerProcess(control_plane, name, pool)
    sched_factory.append(sched)
    sched.start()
    ours = [fake_pod(namespace, f"half-{i}", scheduler=name, vxpu=1, core_pct=50) for i in range(8)]
    await create_all(transport, PODS, ours)
    final = await wait_until(
        transport,
        namespace,
        lambda ps: sum(1 for p in ps if p["metadata"]["name"].startswith("half") and p["spec"].get("nodeName")) == 6,
        60,
        "6 half-card pods bound on the 3 cards kube-scheduler left",
        sched,
    )
    await asyncio.sleep(2.0)  # the other two must stay pending
    final = await pods_of(transport, namespace)
    bound_half = [p for p in final if p["metadata"]["name"].startswith("half") and p["spec"].get("nodeName")]
    assert len(bound_half) == 6
    for node in (f"{pool}-0", f"{pool}-1"):
        whole = sum(1 for p in final if p["metadata"]["name"].startswith("whole") and p["spec"].get("nodeName") == node)
        cards = {
            c
            for p in bound_half
            if p["spec"]["nodeName"] == node
            for c in json.loads(p["metadata"]["annotations"][ANN_ALLOCATION])["cards"]
        }
        assert whole + len(cards) <= 4, f"{node}: {whole} whole-GPU pods + our cards {sorted(cards)} > 4 cards"
