"""``xpupool demo``: an emulated mixed pool and a stream of AI pods, end to end in the core.

Everything here runs the production placement code (Scheduler + queues + gangs + preemption +
remote vXPUs) on emulated nodes: NVIDIA and Ascend GPU nodes plus CPU-only nodes.
"""

from __future__ import annotations

import math

import numpy as np
from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from xpupool.core.cluster import ClusterState
from xpupool.core.frag import TargetWorkload
from xpupool.core.model import Device, Node, Request, Vendor
from xpupool.core.queues import PodGroup, QueueBook, QueueSpec, Resources, Running, run_cycle
from xpupool.core.request import parse_request
from xpupool.plugins.profiles import build_scheduler


def emulated_pool() -> list[Node]:
    """4 racks: H100 and A100 nodes, Ascend 910B nodes, L4 inference nodes, CPU-only nodes."""
    nodes: list[Node] = []

    def gpu_node(name: str, vendor: Vendor, model: str, cards: int, mib: int, rack: str, cpu: int = 128) -> Node:
        devices = tuple(Device(i, vendor, model, mib, topology_group=i // 4) for i in range(cards))
        return Node(name, cpu * 1000, cpu * 8 * 1024, devices, {"rack": rack, "zone": "z1"}, 100_000)

    for i in range(3):
        nodes.append(gpu_node(f"h100-{i}", Vendor.NVIDIA, "H100", 8, 81_920, "r1"))
    for i in range(2):
        nodes.append(gpu_node(f"a100-{i}", Vendor.NVIDIA, "A100", 4, 40_960, "r2", cpu=64))
    for i in range(2):
        nodes.append(gpu_node(f"l4-{i}", Vendor.NVIDIA, "L4", 2, 24_576, "r2", cpu=32))
    for i in range(2):
        nodes.append(gpu_node(f"ascend-{i}", Vendor.ASCEND, "Ascend910B", 8, 65_536, "r3"))
    for i in range(3):
        nodes.append(Node(f"cpu-{i}", 64_000, 256 * 1024, (), {"rack": "r1" if i == 0 else "r4", "zone": "z1"}))
    return nodes


def _pod(name: str, resources: dict[str, str], annotations: dict[str, str] | None = None,
         labels: dict[str, str] | None = None, cpu: int = 4000, mem: int = 16_384, priority: int = 0) -> Request:
    parsed = parse_request(name=name, resources=resources, annotations=annotations, labels=labels,
                           cpu_milli=cpu, memory_mib=mem, priority=priority)
    if parsed.request is None:
        raise ValueError(f"demo pod {name}: {parsed.errors}")
    return parsed.request


def pod_stream(count: int, rng: np.random.Generator) -> list[Request]:
    """A mix seen in real AI clusters: many small inference slices, some whole-card training,
    a gang, an Ascend job, a remote-capable notebook. Sizes from the openb share distribution."""
    pods: list[Request] = []
    shares = [10, 20, 25, 30, 50, 80]
    for i in range(count):
        kind = rng.choice(["infer", "small", "train1", "train-multi"], p=[0.45, 0.3, 0.17, 0.08])
        queue = {"xpupool.io/queue": "research" if i % 3 == 0 else "prod"}
        if kind == "infer":
            share = int(rng.choice(shares))
            pods.append(_pod(f"infer-{i}", {"xpupool.io/vxpu": "1", "xpupool.io/vxpu-core": str(share),
                                            "xpupool.io/vxpu-memory": str(int(rng.choice([4096, 8192, 16384])))},
                             {"xpupool.io/vendor": "nvidia"}, queue, cpu=2000, mem=8192))
        elif kind == "small":
            pods.append(_pod(f"small-{i}", {"xpupool.io/vxpu": "1", "xpupool.io/vxpu-core": "10",
                                            "xpupool.io/vxpu-memory": "2048"}, None, queue, cpu=1000, mem=4096))
        elif kind == "train1":
            pods.append(_pod(f"train-{i}", {"nvidia.com/gpu": "1"}, None, queue, cpu=8000, mem=65_536))
        else:
            pods.append(_pod(f"train-{i}", {"xpupool.io/vxpu": "4"}, {"xpupool.io/vendor": "nvidia"}, queue,
                             cpu=32_000, mem=131_072))
    pods += [_pod(f"gang-llm-{k}", {"xpupool.io/vxpu": "2"}, {"xpupool.io/vendor": "nvidia"},
                  {"xpupool.io/pod-group": "llm-finetune", "xpupool.io/queue": "research"}, cpu=16_000, mem=65_536)
             for k in range(4)]
    pods.append(_pod("ascend-pretrain", {"huawei.com/Ascend910B": "8"}, None, {"xpupool.io/queue": "prod"},
                     cpu=64_000, mem=262_144))
    pods.append(_pod("notebook-remote", {"xpupool.io/vxpu": "1", "xpupool.io/vxpu-core": "25",
                                         "xpupool.io/vxpu-memory": "10240"},
                     {"xpupool.io/remote": "required", "xpupool.io/vendor": "nvidia"}, {"xpupool.io/queue": "research"},
                     cpu=4000, mem=16_384))
    return pods


def run_demo(console: Console, *, pods: int = 60, seed: int = 7) -> dict[str, float]:
    """Run the demo; returns headline numbers (also used by the test)."""
    rng = np.random.default_rng(seed)
    nodes = emulated_pool()
    state = ClusterState(nodes)
    stream = pod_stream(pods, rng)
    target = TargetWorkload.from_requests(stream, state.models, weights="demand")
    scheduler = build_scheduler("xpupool", seed=seed, target=target)
    cap = Resources(int(state.cpu_capacity.sum()), int(state.memory_capacity.sum()),
                    int(state.card_exists.sum()) * 1000)
    book = QueueBook([QueueSpec("prod", quota=Resources(cap.cpu_milli // 2, cap.memory_mib // 2, cap.xpu_milli // 2),
                                weight=2.0, priority=1),
                      QueueSpec("research", quota=Resources(cap.cpu_milli // 3, cap.memory_mib // 3,
                                                            cap.xpu_milli // 3))], cap)
    console.rule("[bold]xpupool demo: emulated mixed pool")
    console.print(f"{len(nodes)} nodes: {sum(1 for n in nodes if n.devices)} GPU/NPU nodes "
                  f"({int(state.card_exists.sum())} cards: H100, A100, L4, Ascend 910B) and "
                  f"{sum(1 for n in nodes if not n.devices)} CPU-only nodes; {len(stream)} pods arriving")
    groups = {"llm-finetune": PodGroup("llm-finetune", 4)}
    running: dict[str, Running] = {}
    result = run_cycle(state, scheduler, book, stream, running=running, groups=groups)
    for allocation in result.placed:
        req = next(r for r in stream if r.name == allocation.pod)
        running[allocation.pod] = Running(req, allocation)
    # a latency-critical inference service arrives when the pool is busy: priority preemption
    urgent = _pod("urgent-serving", {"xpupool.io/vxpu": "4"},
                  {"xpupool.io/vendor": "nvidia", "xpupool.io/model": "H100"}, {"xpupool.io/queue": "prod"},
                  cpu=16_000, mem=65_536, priority=1000)
    second = run_cycle(state, scheduler, book, [urgent], running=running, groups=groups)
    for victim in second.preempted:
        running.pop(victim, None)
    for allocation in second.placed:
        running[allocation.pod] = Running(urgent, allocation)

    table = Table(title="Placements (gang, remote, preemptor and Ascend first; then the first 20 others)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("pod", "queue", "ask", "node", "cards", "note"):
        # names and card lists fold onto a second line rather than end in "…" on 80 columns
        table.add_column(col, overflow="fold", no_wrap=col in ("ask", "queue"))
    special = [n for n, run in running.items()
               if run.request.pod_group or run.allocation.is_remote or n == "urgent-serving" or n.startswith("ascend")]
    others = [n for n in running if n not in special][:20]
    for name in special + others:
        run = running[name]
        r, a = run.request, run.allocation
        ask = f"{r.count}×{r.share_milli / 10:g}%" if r.count else "cpu"
        note = "remote vXPU on " + a.device_node if a.is_remote else ("gang " + r.pod_group if r.pod_group else "")
        table.add_row(name, r.queue, ask, a.node, ",".join(map(str, a.cards)), note)
    console.print(table)

    # one column per card index: compute allocated on the first line, memory GiB / slices below
    widest = max((int(state.card_count[i]) for i, node in enumerate(state.nodes) if node.devices), default=0)
    slices = Table(title="Per-card slices (compute % · memory GiB/slices)", box=box.SIMPLE_HEAD, pad_edge=False)
    slices.add_column("node", no_wrap=True)
    for s in range(widest):
        slices.add_column(f"#{s}", justify="right", no_wrap=True)
    for i, node in enumerate(state.nodes):
        if not node.devices:
            continue
        cells = []
        for s in range(int(state.card_count[i])):
            used = 1000 - int(state.card_free_milli[i, s])
            mem = (int(state.card_memory_capacity[i, s]) - int(state.card_memory_free[i, s])) / 1024
            tenants = int(state.card_tenants[i, s])
            colour = "green" if used == 0 else "yellow" if used < 1000 else "red"
            cells.append(f"[{colour}]{used / 10:.0f}%[/]\n{mem:.0f}G/{tenants}")
        slices.add_row(node.name, *cells, *([""] * (widest - len(cells))), end_section=True)
    console.print(slices)

    usage = state.usage()
    placed_pods = [run.request for run in running.values()]
    whole_cards = sum(math.ceil(r.count * r.share_milli / 1000) if r.count else 0 for r in placed_pods)
    summary = {
        "pods": float(len(stream) + 1),
        "placed": float(len(running)),
        "pending": float(len(result.pending) + len(second.pending)),
        "preempted": float(len(second.preempted)),
        "cards_in_use": float(usage.cards_in_use),
        "whole_card_equivalent": float(whole_cards),
        "compute_allocated_pct": 100 * usage.compute_allocated_milli / max(usage.compute_capacity_milli, 1),
        "remote": float(sum(1 for run in running.values() if run.allocation.is_remote)),
    }
    console.print(
        f"[bold]{int(summary['placed'])}[/] pods running, {int(summary['pending'])} pending, "
        f"{int(summary['preempted'])} preempted for [bold]urgent-serving[/] "
        f"({', '.join(second.preempted) or 'none'}); {int(summary['remote'])} remote vXPU(s).")
    console.print(
        f"Cards in use: [bold]{usage.cards_in_use}[/] of {usage.cards}; whole-card scheduling would need "
        f"[bold]{whole_cards}[/] cards for the same pods "
        f"({whole_cards - usage.cards_in_use:+d} cards; compute allocated {summary['compute_allocated_pct']:.0f} %).")
    reasons = {**result.pending, **second.pending}
    for name, status in list(reasons.items())[:5]:
        console.print(Padding(Text.assemble(("pending ", ""), (name, "cyan"), f": {status.message()}"), (0, 0, 0, 2)))
    return summary
