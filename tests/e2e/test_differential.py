"""Differential test: xpupool and the real kube-scheduler agree on where pods may run.

Seeded random cases (``diffcases.py``): small clusters with random node labels, taints (NoSchedule,
NoExecute, PreferNoSchedule), cordons, CPU/memory/whole-GPU capacity and running pods (some with
anti-affinity of their own), and one probe pod per case with random node selectors, required and
preferred node affinity (every operator, matchFields), tolerations (Exists/Equal, with and without
effect, the empty-key wildcard, the cordon toleration), pod affinity and anti-affinity (hostname,
zone, a custom key; matchLabelKeys), topology spread (maxSkew, minDomains, node inclusion policies,
matchLabelKeys, ScheduleAnyway) and scheduling gates.

All cases live in one real apiserver (isolated by case label, namespace and topology values) and
are decided in two phases on the identical cluster: upstream kube-scheduler v1.36 first, then the
xpupool daemon, each probe a fresh pod. A probe's answer is *feasible* (bound), *infeasible*
(``PodScheduled=False/Unschedulable``) or *gated* (``SchedulingGated``, never bound). The two
answers must be equal for every case, except the differences we keep on purpose, which the
generator builds into a few cases and this test asserts explicitly:

* ``node-not-ready``: a node reporting Ready=False carries, for us, the ``node.kubernetes.io/
  not-ready:NoSchedule`` taint the node lifecycle controller adds; this control plane runs no such
  controller (and ``TaintNodesByCondition`` admission is off), so kube-scheduler binds there and
  we refuse with that taint in the message.
* ``namespace-selector``: a pod affinity term with a labelled ``namespaceSelector`` is refused by
  xpupool with a message (we do not watch Namespace labels), whatever kube-scheduler decides.

Not generated because they differ on purpose without being interesting here: the node ``pods``
capacity (kube-scheduler counts pods, we do not), terminating pods in spread counts, and nodes
outside the daemon's ``--node-selector``.

Size: ``XPUPOOL_DIFF_CASES`` (default 600), seed ``XPUPOOL_DIFF_SEED`` (default 20261201).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
from diffcases import NAMESPACE_SELECTOR, NOT_READY, PROBE_LABEL, Case, generate, probe_pod

from xpupool.kube.scheduler import KubeScheduler, SchedulerConfig
from xpupool.kube.testing import ControlPlane, create_all
from xpupool.kube.transport import NAMESPACES, NODES, PODS, AiohttpTransport, ApiError, JsonDict

pytestmark = pytest.mark.e2e_apiserver

CASES = int(os.environ.get("XPUPOOL_DIFF_CASES", "600"))
SEED = int(os.environ.get("XPUPOOL_DIFF_SEED", "20261201"))
FEASIBLE, INFEASIBLE, GATED = "feasible", "infeasible", "gated"


def outcome(pod: JsonDict) -> tuple[str, str] | None:
    """``(answer, message)`` once the scheduler has decided, else None."""
    if pod["spec"].get("nodeName"):
        return FEASIBLE, pod["spec"]["nodeName"]
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            if cond.get("reason") == "SchedulingGated":
                return GATED, cond.get("message", "")
            if cond.get("reason") == "Unschedulable":
                return INFEASIBLE, cond.get("message", "")
    return None


async def decide(
    transport: AiohttpTransport, cases: list[Case], name: str, scheduler: str, timeout_s: float = 240
) -> dict[str, tuple[str, str]]:
    """Create one probe per case for ``scheduler``; wait until each is decided (a gated probe is
    decided once it has stayed unbound for a few seconds after every other answer came in)."""
    await create_all(transport, PODS, [probe_pod(c, name, scheduler) for c in cases], concurrency=48)
    by_ns = {c.namespace: c.id for c in cases}
    deadline = time.monotonic() + timeout_s
    answers: dict[str, tuple[str, str]] = {}
    settled_at: float | None = None
    while True:
        pods = (await transport.list(PODS, label_selector=f"{PROBE_LABEL}=true")).items
        answers = {}
        for pod in pods:
            case = by_ns.get(pod["metadata"]["namespace"])
            if case is not None and pod["metadata"]["name"] == name:
                got = outcome(pod)
                if got is not None:
                    answers[case] = got
        undecided = len(cases) - len(answers)
        gated_only = all(a[0] == GATED for a in answers.values()) is False and undecided == 0
        if undecided == 0 or gated_only:
            settled_at = settled_at or time.monotonic()
            if time.monotonic() - settled_at > 3.0:  # gated pods must still be unbound now
                return answers
        assert time.monotonic() < deadline, f"{scheduler}: {undecided} probes undecided after {timeout_s:.0f} s"
        await asyncio.sleep(0.5)


async def delete_probes(transport: AiohttpTransport, cases: list[Case], name: str) -> None:
    sem = asyncio.Semaphore(48)

    async def one(case: Case) -> None:
        async with sem:
            with contextlib.suppress(ApiError):
                await transport.delete(PODS, name, namespace=case.namespace, grace_period_s=0)

    await asyncio.gather(*(one(c) for c in cases))
    deadline = time.monotonic() + 60
    while (await transport.list(PODS, label_selector=f"{PROBE_LABEL}=true", limit=1)).items:
        assert time.monotonic() < deadline, "probes not deleted"
        await asyncio.sleep(0.2)


async def test_xpupool_agrees_with_kube_scheduler_on_feasibility(
    control_plane: ControlPlane, transport: AiohttpTransport
) -> None:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    run = uuid.uuid4().hex[:4]
    cases = generate(SEED, CASES, run)
    await create_all(transport, NAMESPACES, [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": c.namespace}} for c in cases
    ], concurrency=48)
    await create_all(transport, NODES, [n for c in cases for n in c.nodes], concurrency=48)
    await create_all(transport, PODS, [p for c in cases for p in c.existing], concurrency=48)
    timings["create cluster"] = time.monotonic() - t0

    t1 = time.monotonic()
    kube = control_plane.start_kube_scheduler(name=f"kube-scheduler-diff-{run}")
    try:
        theirs = await decide(transport, cases, "probe-kube", "default-scheduler")
    finally:
        kube.terminate()
        kube.wait(timeout=15)
    await delete_probes(transport, cases, "probe-kube")
    timings["kube-scheduler phase"] = time.monotonic() - t1

    t2 = time.monotonic()
    name = f"xpupool-diff-{run}"
    # The random nodes are nvidia.com/gpu + GFD nodes (kube-scheduler's view): opt into modelling them.
    config = SchedulerConfig(scheduler_name=name, preemption=False, queue_crd=False, retry_backoff_s=(0.5, 5.0),
                             guess_whole_cards=True)
    from xpupool.plugins.profiles import build_scheduler_for

    def policy(state, pods):  # type: ignore[no-untyped-def]
        return build_scheduler_for("xpupool", models=state.models, population=pods)

    from xpupool.core.cluster import ClusterState

    daemon = KubeScheduler(transport, scheduler=policy(ClusterState([]), []), scheduler_factory=policy, config=config)
    task = asyncio.create_task(daemon.run())
    try:
        ours = await decide(transport, cases, "probe-xp", name)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await daemon.stop()
    timings["xpupool phase"] = time.monotonic() - t2

    disagreements: list[str] = []
    deliberate: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    features: Counter[str] = Counter()
    checks: dict[str, Callable[[tuple[str, str], tuple[str, str]], bool]] = {
        NOT_READY: lambda k, x: k[0] == FEASIBLE and x[0] == INFEASIBLE and "node.kubernetes.io/not-ready" in x[1],
        NAMESPACE_SELECTOR: lambda k, x: x[0] == INFEASIBLE and "namespaceSelector with labels is not supported"
        in x[1],
    }
    for case in cases:
        k, x = theirs[case.id], ours[case.id]
        if case.deliberate:
            deliberate[case.deliberate] += 1
            if not checks[case.deliberate](k, x):
                disagreements.append(f"{case.id} ({case.deliberate}): kube {k}, xpupool {x}")
            continue
        answers[k[0]] += 1
        features.update(set(case.features))
        if k[0] != x[0]:
            disagreements.append(f"{case.id} {case.features}: kube-scheduler {k}, xpupool {x}")
    print(f"\n{len(cases)} cases (seed {SEED}): kube-scheduler answers {dict(answers)}; deliberate "
          f"differences {dict(deliberate)}; features {dict(features)}; "
          + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    assert not disagreements, f"{len(disagreements)} disagreement(s):\n" + "\n".join(disagreements[:20])
    assert answers[FEASIBLE] > len(cases) // 5 and answers[INFEASIBLE] > len(cases) // 5, answers  # both matter
    assert all(deliberate[d] > 0 for d in checks), deliberate
