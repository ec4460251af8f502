"""Human-facing output of a replay: rich table and a PNG of unallocated % vs arrived workload."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table


def results_table(summary: dict[str, Any], published: dict[str, dict[int, float]] | None = None,
                  title: str = "") -> Table:
    """One row per policy. Narrow headers and a caption that spells them out keep the table whole
    at 80 columns; the JSON summary (``--json``) has every figure in full."""
    table = Table(title=title or "Unallocated GPU % at 100 % arrived workload (mean ± sd over seeds)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("policy", no_wrap=True)
    table.add_column("unalloc %", justify="right", no_wrap=True)
    table.add_column("sd", justify="right", no_wrap=True)
    table.add_column("frag %", justify="right", no_wrap=True)
    table.add_column("frag/all %", justify="right", no_wrap=True)
    table.add_column("p99 ms", justify="right", no_wrap=True)
    caption = ("unalloc = unallocated GPU at 100 % arrival (mean over seeds, sd); frag = fragmentation rate; "
               "frag/all = fragmented GPU of all GPU; p99 = placement decision time")
    if published is not None:
        table.add_column("FGD pub.", justify="right", no_wrap=True)
        table.add_column("Δ", justify="right", no_wrap=True)
        caption += "; FGD pub. = the FGD artifact's published figure for the same seeds, Δ = ours − published"
    table.caption = caption
    for name, data in summary["policies"].items():
        u = data["unallocated_pct_at_100"]
        row = [
            name,
            f"{u['mean']:.2f}",
            f"{u['sd']:.2f}",
            f"{data['frag_rate_pct_at_100']['mean']:.1f}",
            f"{data['frag_amount_pct_at_100']['mean']:.2f}",
            f"{data['decision_ms']['p99']:.2f}",
        ]
        if published is not None:
            seeds = summary["seeds"]
            pub = [published.get(name, {}).get(s) for s in seeds]
            vals = [v for v in pub if v is not None]
            if vals:
                mean = sum(vals) / len(vals)
                row += [f"{mean:.2f}", f"{u['mean'] - mean:+.2f}"]
            else:
                row += ["–", "–"]
        table.add_row(*row)
    return table


def plot_curves(summary: dict[str, Any], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, data in summary["policies"].items():
        curve = data["curve"]
        xs = [x for x, m in zip(curve["x"], curve["median"], strict=True) if x >= 75 and not math.isnan(m)]
        med = [m for x, m in zip(curve["x"], curve["median"], strict=True) if x >= 75 and not math.isnan(m)]
        lo = [v for x, v in zip(curve["x"], curve["p25"], strict=True) if x >= 75 and not math.isnan(v)]
        hi = [v for x, v in zip(curve["x"], curve["p75"], strict=True) if x >= 75 and not math.isnan(v)]
        (line,) = ax.plot(xs, med, label=name, lw=2 if name == "xpupool" else 1.2)
        if len(lo) == len(xs) and len(hi) == len(xs):
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.axvline(100, color="grey", ls=":", lw=1)
    ax.set_xlabel("arrived workload (% of GPU capacity)")
    ax.set_ylabel("unallocated GPU (%)")
    ax.set_title(title or "Unallocated GPU vs arrived workload (median, 25–75 % band)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
