"""``xpupool timeshare``: exclusive cards vs shared vXPUs on the Alibaba GenAI serving trace.

Registered in :mod:`xpupool.cli.main` with ``app.command("timeshare")(timeshare)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from xpupool.cli.console import make_console
from xpupool.sim.genai import (
    DEFAULT_CARD_GIB,
    DUTY_FILE,
    FILLS,
    GENAI_TRACE,
    MEMORY_FILE,
    SCENARIOS,
    ReplayResult,
    evaluate,
    genai_trace_dir,
    load_trace,
    trace_summary,
)

console = make_console()

RULES = {
    "exclusive": "1 card per pod for the whole trace",
    "exclusive-reuse": "1 pod per card at a time; cards reused after a pod ends",
    "shared": "vXPU = peak memory + p{p:g} duty (1 % steps, cap 100 %); best-fit-decreasing on memory, core Scheduler",
    "shared-timeaware": "series packing: memory fits at every sample, card > 100 % duty ≤ {q:g} % of its busy time",
}


#: (row label, value of one result) in the order the table shows them
ROWS: tuple[tuple[str, Callable[[ReplayResult], str]], ...] = (
    ("cards", lambda r: str(r.cards)),
    ("pods per card", lambda r: f"{r.pods_per_card:.2f}"),
    ("util %", lambda r: f"{r.utilization_pct:.1f}"),
    ("util busy %", lambda r: f"{r.utilization_busy_pct:.1f}"),
    ("overload %", lambda r: f"{r.overload_pct:.2f}"),
    ("overload card-min", lambda r: f"{r.overload_card_minutes:.0f}"),
    ("cards > 100 %", lambda r: str(r.cards_ever_overloaded)),
    ("worst card %", lambda r: f"{r.worst_card_overload_pct:.1f}"),
    ("peak mem %", lambda r: f"{r.peak_memory_pct:.1f}"),
    ("gain", lambda r: f"{r.gain:.2f}x"),
)


def results_tables(results: list[ReplayResult], *, title: str) -> list[Table]:
    """One table per card size, transposed (figures as rows, placements as columns) so it stays
    whole at 80 columns; ``--json`` has every figure."""
    tables = []
    for card_gib in dict.fromkeys(r.card_gib for r in results):
        rows = [r for r in results if r.card_gib == card_gib]
        table = Table(title=f"{title}, {card_gib:g} GiB cards", box=box.SIMPLE_HEAD, pad_edge=False,
                      title_justify="left")
        table.add_column("", no_wrap=True)
        for r in rows:
            table.add_column(r.scenario.replace("-", "-\n"), justify="right", no_wrap=True)
        for label, value in ROWS:
            table.add_row(label, *(value(r) for r in rows))
        tables.append(table)
    return tables


def timeshare(
    card_gib: Annotated[list[float] | None, typer.Option(
        "--card-gib", help="usable card memory in GiB; repeat for several sizes (default 80, 96, 141)")] = None,
    percentile: Annotated[float, typer.Option(
        help="duty-cycle percentile used as the compute share (and the overload budget 100-p % of time-aware "
             "packing)", min=1.0, max=100.0)] = 95.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results JSON here")] = None,
    trace_dir: Annotated[Path | None, typer.Option(
        "--trace-dir", help=f"folder with {DUTY_FILE} and {MEMORY_FILE} "
                            f"(default: $XPUPOOL_TRACES/{GENAI_TRACE} or shared/traces/{GENAI_TRACE})")] = None,
    fill: Annotated[str, typer.Option(help=f"missing-sample fill: {', '.join(FILLS)}")] = "max",
    max_gap: Annotated[int, typer.Option(
        help="gaps longer than this many samples (both metrics missing) count as the pod not running",
        min=0)] = 20,
) -> None:
    """Replay the GenAI serving pods' duty cycle and memory: cards needed and utilisation, exclusive vs shared."""
    if fill not in FILLS:
        raise typer.BadParameter(f"unknown fill {fill!r}; known: {', '.join(FILLS)}")
    directory = trace_dir or genai_trace_dir()
    if directory is None or not (directory / DUTY_FILE).is_file() or not (directory / MEMORY_FILE).is_file():
        console.print(f"[red]GenAI trace not found[/] ({directory or GENAI_TRACE}): pass --trace-dir or set "
                      "XPUPOOL_TRACES")
        raise typer.Exit(2)
    cards = tuple(card_gib) if card_gib else DEFAULT_CARD_GIB
    trace = load_trace(directory, max_gap=max_gap, fill=fill)
    try:
        results = evaluate(trace, cards, percentile, SCENARIOS)
    except ValueError as err:
        console.print(f"[red]{err}[/]")
        raise typer.Exit(2) from None
    summary = trace_summary(trace)
    quality = trace.quality
    console.print(
        f"{trace.num_pods} pods ({len(quality.dropped_pods)} dropped: no duty or no memory series), "
        f"{trace.num_samples} samples of {trace.step_s:g} s ({trace.hours:.1f} h), "
        f"{summary['alive_pods_mean']} pods alive on average (max {summary['alive_pods_max']}), "
        f"mean duty {summary['duty_mean_pct']} %, peak memory median {summary['peak_memory_gib_median']} GiB "
        f"(max {summary['peak_memory_gib_max']} GiB)")
    console.print(
        f"filled samples ({fill} of neighbours): duty {quality.filled['duty']}, memory {quality.filled['memory']}; "
        f"{quality.long_gaps} gap(s) > {max_gap} samples = pod not running ({quality.absent_samples} samples)")
    for table in results_tables(results, title=f"GenAI serving pods, p{percentile:g} duty"):
        console.print(table)
    for name in SCENARIOS:
        console.print(f"  [bold]{name}[/]: {RULES[name].format(p=percentile, q=100 - percentile)}")
    console.print("  util = mean over time of Σ_card min(100, Σ duty) / (100 · cards); util busy = over cards with a "
                  "live pod; overload % = busy card-samples with Σ duty > 100 %; gain = baseline cards / cards "
                  "(shared vs exclusive, shared-timeaware vs exclusive-reuse). Memory never exceeded a card "
                  "(checked at every sample).")
    if json_out is not None:
        payload = {
            "trace": str(directory),
            "percentile": percentile,
            "card_gib": list(cards),
            "rules": {k: v.format(p=percentile, q=100 - percentile) for k, v in RULES.items()},
            "summary": summary,
            "results": [asdict(r) for r in results],
        }
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"results JSON: {json_out}")
