"""``xpupool status|pods|queues`` against the real apiserver, pods placed by the real scheduler daemon.

The CLI runs as a subprocess, as a user runs it, with the test cluster's kubeconfig. What it shows
is compared with what the apiserver holds: every slice sits on the card its pod's allocation names,
with that share and memory; live figures are the agent's; pending pods carry the scheduler's own
reason; queue usage adds up the pods of each queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest

from .livepool import AGENT_CARD_USED_MIB, AGENT_UTILIZATION_PCT, SLICE_SHARE_BP, SLICE_USED_MIB, LivePool

pytestmark = [pytest.mark.e2e_apiserver, pytest.mark.asyncio(loop_scope="package")]


async def cli(pool: LivePool, *args: str, columns: int = 80) -> str:
    """Run ``xpupool <args>`` against the test cluster; returns stdout (fails on a non-zero exit)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xpupool.cli.main", *args, "--kubeconfig", str(pool.kubeconfig),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, (out.decode(), err.decode())
    return out.decode()


async def snapshot(pool: LivePool, *extra: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await cli(pool, "status", "-o", "json", "--scheduler-name", pool.scheduler_name,
                                                *extra))
    return data


async def test_status_shows_every_slice_on_the_card_its_allocation_names(pool: LivePool) -> None:
    snap = await snapshot(pool, "--agents", "direct")
    nodes = {n["name"]: n for n in snap["nodes"] if n["name"].startswith(pool.namespace)}
    assert set(nodes) == {*pool.gpu_nodes, pool.cpu_node}
    shown = {}
    for node in nodes.values():
        for card in node["cards"]:
            for s in card["slices"]:
                shown[(f"{s['namespace']}/{s['pod']}", node["name"], card["index"])] = s
            assert card["free_pct"] == pytest.approx(100 - sum(s["share_pct"] for s in card["slices"]))
            assert card["free_memory_mib"] == card["memory_mib"] - sum(s["memory_mib"] for s in card["slices"])
    expected = {}
    for key, alloc in pool.allocations.items():
        for card, mib in zip(alloc["cards"], alloc["memoryMiB"], strict=True):
            expected[(key, alloc["deviceNode"], card)] = (alloc["shareMilli"] / 10, mib)
    assert {k: (s["share_pct"], s["memory_mib"]) for k, s in shown.items()} == expected
    # the whole-card pod holds two full cards; the remote notebook is a session from the CPU node
    train = [s for k, s in shown.items() if k[0].endswith("/train-c")]
    assert [s["share_pct"] for s in train] == [100.0, 100.0]
    (remote,) = [r for r in snap["remote"] if r["namespace"] == pool.namespace]
    assert (remote["pod"], remote["client_node"], remote["bandwidth_mbps"]) == ("notebook", pool.cpu_node, 2000)
    assert remote["device_node"] == pool.allocations[f"{pool.namespace}/notebook"]["deviceNode"]
    # live figures: the agent of gpu0 answered (card samples, per-slice shim usage); gpu1 has none
    gpu0, gpu1 = nodes[pool.gpu_nodes[0]], nodes[pool.gpu_nodes[1]]
    assert gpu0["agent_reachable"] is True and gpu1["agent_reachable"] is None
    assert {(c["utilization_pct"], c["memory_used_mib"]) for c in gpu0["cards"]} == {
        (AGENT_UTILIZATION_PCT, AGENT_CARD_USED_MIB)}
    assert {c["utilization_pct"] for c in gpu1["cards"]} == {None}
    live = {k[0]: s for k, s in shown.items() if k[1] == pool.gpu_nodes[0]}
    assert sorted(live) == list(pool.sliced_pods) and pool.sliced_pods
    for s in live.values():
        assert (s["memory_used_mib"], s["utilization_pct"]) == (SLICE_USED_MIB, SLICE_SHARE_BP / 100)


async def test_pods_lists_pending_pods_with_the_schedulers_reason(pool: LivePool) -> None:
    data = json.loads(await cli(pool, "pods", "-o", "json", "--scheduler-name", pool.scheduler_name))
    pending = {p["pod"]: p for p in data["pending"] if p["namespace"] == pool.namespace}
    assert set(pending) == set(pool.pending)
    for name, reason in pool.pending_reasons.items():
        assert pending[name]["reason"] == reason
    assert "exceed its limit" in pending["over-quota"]["reason"]
    assert pending["over-quota"]["queue"] == pool.queue
    assert pending["huge"]["request"] == "1×50% 999999MiB"
    table = await cli(pool, "pods", "--scheduler-name", pool.scheduler_name)
    words = table.split()
    for name, reason in pool.pending_reasons.items():
        assert any(name in w for w in words), table
        folded = "".join(table.split())  # reasons fold over several lines in their column
        assert all(word in folded for word in reason.split()), reason


async def test_queues_add_up_the_pods_of_each_queue(pool: LivePool) -> None:
    data = json.loads(await cli(pool, "queues", "-o", "json", "--scheduler-name", pool.scheduler_name))
    queues = {q["name"]: q for q in data["queues"]}
    train = queues[pool.queue]
    assert train["declared"] and train["reported"] and train["weight"] == 2
    assert (train["guarantee"]["cards"], train["limit"]["cards"]) == (0.5, 1.0)
    assert (train["used"]["cards"], train["borrowed"]["cards"]) == (0.5, 0.0)  # 30 % + 20 %
    assert (train["running"], train["pending"]) == (2, 1)
    research = queues[f"research-{pool.namespace}"]  # declared, nothing guaranteed: all borrowed
    assert research["declared"] and research["used"]["cards"] == 2.0 and research["borrowed"]["cards"] == 2.0
    assert (research["running"], research["pending"]) == (1, 0)


async def test_every_live_table_fits_80_columns_without_cutting_a_cell(pool: LivePool) -> None:
    outputs = {
        "status": await cli(pool, "status", pool.gpu_nodes[0], "--agents", "direct", "--scheduler-name",
                            pool.scheduler_name),
        "status-remote": await cli(pool, "status", pool.cpu_node, "--agents", "off", "--scheduler-name",
                                   pool.scheduler_name),
        "pods": await cli(pool, "pods", "--scheduler-name", pool.scheduler_name),
        "queues": await cli(pool, "queues", "--scheduler-name", pool.scheduler_name),
    }
    for name, text in outputs.items():
        assert "…" not in text, (name, text)
        assert max(len(line) for line in text.splitlines()) <= 80, (name, text)
    for key in pool.sliced_pods:  # every slice of gpu0 is on screen, with the agent's live use
        assert key.split("/", 1)[1] in outputs["status"]
    assert f"{SLICE_USED_MIB}" in outputs["status"] and "agent ok" in outputs["status"]
    assert "notebook" in outputs["status-remote"] and pool.cpu_node in outputs["status-remote"]


async def test_an_agent_the_apiserver_will_not_proxy_is_a_warning_not_a_failure(pool: LivePool) -> None:
    """From outside the cluster the CLI reaches agents through the apiserver's pod proxy; the
    apiserver refuses loopback pod IPs, so here that path fails: the CLI says so and still shows
    the pool, with no made-up live figures."""
    snap = await snapshot(pool, "--agents", "proxy")
    gpu0 = next(n for n in snap["nodes"] if n["name"] == pool.gpu_nodes[0])
    assert gpu0["agent_reachable"] is False
    assert all(s["memory_used_mib"] is None for c in gpu0["cards"] for s in c["slices"])
    assert any(w.startswith(f"agent on {pool.gpu_nodes[0]}: HTTP") for w in snap["warnings"]), snap["warnings"]
    assert sum(len(c["slices"]) for c in gpu0["cards"]) >= 1


async def test_watch_prints_a_fresh_snapshot_per_interval(pool: LivePool) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xpupool.cli.main", "status", "-o", "json", "--watch", "--interval", "0.5",
        "--agents", "off", "--scheduler-name", pool.scheduler_name, "--kubeconfig", str(pool.kubeconfig),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "80"})
    try:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        second = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
    finally:
        proc.terminate()
        await proc.wait()
    for snap in (first, second):  # one whole document per line
        assert {n["name"] for n in snap["nodes"]} >= {*pool.gpu_nodes, pool.cpu_node}
    assert second["taken_at"] >= first["taken_at"]
