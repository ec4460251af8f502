"""The scheduler never places what the node's kubelet would refuse (or the shim could not seat).

* a card holds at most ``max_tenants`` slices (the agent's slots per card, never more than the
  shim's tenant table);
* a pod asking for ``xpupool.io/vxpu`` goes only to a node whose kubelet advertises them
  (``Node.vxpu_slots``: the agent's device plugin serves them) and has enough of them left;
* a card held whole through another device plugin is never sliced.

Each refusal leaves the pod pending with a reason that says which rule kept it off each node.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pools import gpu_node, share

from xpupool.core.cluster import ClusterState
from xpupool.core.framework import Profile, Scheduler
from xpupool.core.model import Node


def scheduler() -> Scheduler:
    return Scheduler(Profile("test"), rng=np.random.default_rng(0))


def with_cards(node: Node, **changes: object) -> Node:
    return dataclasses.replace(node, devices=tuple(dataclasses.replace(d, **changes) for d in node.devices))


def test_a_card_takes_no_more_slices_than_its_tenant_slots() -> None:
    node = dataclasses.replace(with_cards(gpu_node("n", cards=1), max_tenants=3), vxpu_slots=3)
    state = ClusterState([node])
    sched = scheduler()
    for i in range(3):
        assert sched.schedule(state, share(f"p{i}", 5, vxpu_slots=1)).status.ok
    refused = sched.schedule(state, share("p3", 5, vxpu_slots=1))
    assert not refused.status.ok
    assert "1 node(s) lack 1 card(s) with 5% compute, the memory and a tenant slot free" in refused.status.reasons
    state.release("p0")
    assert sched.schedule(state, share("p3", 5, vxpu_slots=1)).status.ok


def test_vxpu_pods_go_only_where_the_kubelet_admits_them() -> None:
    unserved = dataclasses.replace(gpu_node("no-agent", cards=2), vxpu_slots=0)
    served = dataclasses.replace(gpu_node("agent", cards=2), vxpu_slots=2)
    state = ClusterState([unserved, served])
    sched = scheduler()
    placed = [sched.schedule(state, share(f"p{i}", 10, vxpu_slots=1)) for i in range(3)]
    assert [r.allocation.node if r.allocation else None for r in placed] == ["agent", "agent", None]
    reasons = placed[2].status.reasons
    assert any("1 node(s) are not served by the xpupool node agent" in r for r in reasons), reasons
    assert any("1 node(s) have no xpupool.io/vxpu slot left" in r for r in reasons), reasons
    # A pod that asks the kubelet for nothing of ours (whole cards through another plugin) is not held back.
    assert sched.schedule(state, share("whole-ish", 10)).allocation is not None
    # Simulated nodes (vxpu_slots None) are not checked.
    assert scheduler().schedule(ClusterState([gpu_node("sim")]), share("s", 10, vxpu_slots=1)).status.ok


def test_cards_held_by_another_device_plugin_are_never_sliced() -> None:
    node = gpu_node("n", cards=2)
    held = dataclasses.replace(node.devices[0], held_by=("ml/train-0 (nvidia.com/gpu)",))
    state = ClusterState([dataclasses.replace(node, devices=(held, node.devices[1]))])
    sched = scheduler()
    cards = {sched.schedule(state, share(f"p{i}", 40)).allocation.cards for i in range(2)}  # type: ignore[union-attr]
    assert cards == {(1,)}
    assert not sched.schedule(state, share("p2", 40)).status.ok  # card 1 is full, card 0 is held
