"""Is holding back a share pod (the openb 0.81-card pods) worth it? Measured in two protocols.

    .venv/bin/python bench/sim/holdback.py --workloads default,mg40 --seeds 42-43 \
        --hold '{"whole_free_pct": 10}' --hold '{"theta_pct": 85}' [--protocol fgd,pending] \
        [--config '{}'] [--json out/holdback.json]

The rule is the ``xpupool-holdback`` filter (``src/xpupool/plugins/holdback.py``) on top of the
xpupool profile (``--config``: the score plugin's arguments, as in screen.py); each ``--hold`` is
the filter's arguments. A pod is *held* when the profile with the filter refuses it but the same
profile without the filter would place it.

Protocols (the headline metric is the same in both: unallocated GPU % at 100 % arrival, FGD's
binning; a pod that is not placed counts as unallocated):

* ``fgd`` (standard, FGD's): no retries. A held pod is refused for good, exactly like a pod that
  does not fit. Every figure in docs/simulation.md uses this protocol.
* ``pending`` (variant): a held pod waits in a FIFO queue, as a pending pod would in Kubernetes,
  and is retried after every later arrival with the filter on (so it is placed as soon as a card it
  fills without a dead remnant appears, or once the trigger no longer holds). Pods that do not fit
  at all still fail at once: nothing departs in this protocol, room only shrinks, a retry could not
  help them.

The unchanged policy (no filter) runs in the same invocation as the reference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from screen import STOP_AFTER_PCT, parse_seeds, scheduler_for  # bench/sim/screen.py (same directory)

from xpupool.core.cluster import ClusterState
from xpupool.core.frag import TargetWorkload
from xpupool.core.model import Node, Request
from xpupool.plugins.holdback import HoldBackFilter
from xpupool.sim.mixes import load_workload
from xpupool.sim.openb import default_nodes_file, load_nodes
from xpupool.sim.replay import tune_workload, unallocated_at


def useful_card(state: ClusterState, pod: Request, rule: HoldBackFilter | None) -> bool:
    """Some card takes ``pod`` without a dead remnant (only then can a retry succeed: the trigger never
    switches off in this protocol, as allocation only grows)."""
    assert rule is not None
    left = state.card_free_milli - pod.share_milli
    return bool(((left >= 0) & state.card_exists & ~rule.dead(left)).any())


def run(nodes: list[Node], pods: list[Request], *, config: dict[str, Any], hold: dict[str, Any] | None,
        seed: int, protocol: str, target: TargetWorkload) -> dict[str, Any]:
    state = ClusterState(nodes)
    cap = int(state.card_exists.sum()) * 1000
    plain = scheduler_for(json.dumps(config), seed=seed, target=target)
    held_by = scheduler_for(json.dumps({**config, "_hold": hold}), seed=seed, target=target) if hold else plain
    assert plain is not None and held_by is not None
    rule = held_by.profile.filters[0] if hold else None
    assert rule is None or isinstance(rule, HoldBackFilter)
    stream = tune_workload(pods, cap, seed)
    arrived_milli = allocated_milli = 0
    arrived, allocated = np.zeros(len(stream)), np.zeros(len(stream))
    pending: list[Request] = []
    held_by_100 = placed_late = 0
    for i, pod in enumerate(stream):
        arrived_milli += pod.gpu_milli_total
        result = held_by.schedule(state, pod)
        if result.status.ok:
            allocated_milli += pod.gpu_milli_total
        elif hold and plain.place(state, pod).status.ok:  # fits: the filter held it
            held_by_100 += arrived_milli <= cap
            if protocol == "pending":
                pending.append(pod)
        if pending:
            still: list[Request] = []
            no_room: set[int] = set()  # share sizes with no card they fill without a dead remnant
            for waiting in pending:
                if waiting.share_milli in no_room or not useful_card(state, waiting, rule):
                    no_room.add(waiting.share_milli)
                    still.append(waiting)
                elif held_by.schedule(state, waiting).status.ok:
                    allocated_milli += waiting.gpu_milli_total
                    placed_late += 1
                else:
                    still.append(waiting)
            pending = still
        arrived[i] = 100 * arrived_milli / cap
        allocated[i] = 100 * allocated_milli / cap
        if arrived[i] > STOP_AFTER_PCT:
            arrived, allocated = arrived[: i + 1], allocated[: i + 1]
            break
    return {"unallocated_pct": round(unallocated_at(arrived, allocated, 100), 4),
            "held_by_100pct": held_by_100, "placed_after_wait": placed_late}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="default")
    ap.add_argument("--seeds", default="42-43")
    ap.add_argument("--config", default="{}", help="xpupool-host arguments (screen.py syntax)")
    ap.add_argument("--hold", action="append", default=[], help="xpupool-holdback arguments (JSON)")
    ap.add_argument("--protocol", default="fgd,pending")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    seeds = parse_seeds(a.seeds)
    nodes = load_nodes(default_nodes_file())
    models = sorted({d.model for n in nodes for d in n.devices})
    config = json.loads(a.config)
    rows: list[dict[str, Any]] = []
    for workload in a.workloads.split(","):
        pods = load_workload(workload)
        target = TargetWorkload.from_requests(pods, models)
        cases: list[tuple[str, dict[str, Any] | None]] = [("fgd", None)]
        cases += [(p, json.loads(h)) for h in a.hold for p in a.protocol.split(",")]
        for protocol, hold in cases:
            t0 = time.perf_counter()
            res = [run(nodes, pods, config=config, hold=hold, seed=s, protocol=protocol, target=target) for s in seeds]
            vals = [r["unallocated_pct"] for r in res]
            row = {"workload": workload, "protocol": protocol, "hold": hold, "config": config, "seeds": seeds,
                   "unallocated_pct": vals, "mean": round(float(np.mean(vals)), 4),
                   "sd": round(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, 4),
                   "held_by_100pct": [r["held_by_100pct"] for r in res],
                   "placed_after_wait": [r["placed_after_wait"] for r in res]}
            rows.append(row)
            print(f"{workload:12s} {protocol:8s} {json.dumps(hold):34s} {row['mean']:.3f} ± {row['sd']:.2f} "
                  f"[{' '.join(f'{v:.2f}' for v in vals)}] held<=100% {row['held_by_100pct']} "
                  f"late {row['placed_after_wait']} ({time.perf_counter() - t0:.0f}s)", flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
