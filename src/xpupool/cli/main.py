"""``xpupool`` CLI: demo, simulate, timeshare, check-request; live views status, pods, queues."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from xpupool.cli import live
from xpupool.cli.console import make_console
from xpupool.cli.timeshare import timeshare

app = typer.Typer(add_completion=False, no_args_is_help=False, help="xpupool: one pool of GPUs/NPUs for Kubernetes.")
console = make_console()
DEFAULT_POLICIES = "random,dotprod,gpuclustering,gpupacking,bestfit,fgd,xpupool"


def parse_seeds(text: str) -> list[int]:
    """``42-51`` or ``42,43,50`` -> list of ints."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise typer.BadParameter(f"seed range {part} is empty")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise typer.BadParameter(f"{part!r} is not a seed or a range like 42-51") from None
    if not seeds:
        raise typer.BadParameter("no seeds given")
    return seeds


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        from xpupool.demo import run_demo

        run_demo(console)


@app.command()
def demo(pods: Annotated[int, typer.Option(help="pods in the stream")] = 60,
         seed: Annotated[int, typer.Option()] = 7) -> None:
    """Emulated mixed pool (NVIDIA, Ascend, CPU-only nodes) and a stream of AI pods."""
    from xpupool.demo import run_demo

    run_demo(console, pods=pods, seed=seed)


@app.command()
def simulate(
    trace: Annotated[Path | None, typer.Option(help="openb pod list CSV")] = None,
    nodes: Annotated[Path | None, typer.Option(help="openb node list CSV")] = None,
    variant: Annotated[str, typer.Option(
        help="openb variant when --trace is not given (default is in the package; others are downloaded "
             "once into the cache)")] = "default",
    policy: Annotated[str, typer.Option(help="comma-separated policies")] = DEFAULT_POLICIES,
    seeds: Annotated[str, typer.Option(help="e.g. 42-51")] = "42-51",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the summary JSON here")] = None,
    placements: Annotated[Path | None, typer.Option(help="write every pod's outcome (CSV)")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of unallocated % vs arrival")] = None,
    jobs: Annotated[int, typer.Option(help="worker processes")] = max(1, min(2, os.cpu_count() or 1)),
    compare_published: Annotated[bool, typer.Option(help="compare with the FGD artifact's results")] = True,
) -> None:
    """Replay the Alibaba openb trace with the FGD protocol for several policies."""
    from xpupool.plugins.profiles import POLICIES
    from xpupool.sim.openb import TraceError, load_nodes, load_pods, trace_dir
    from xpupool.sim.openb_data import GPU_NODES, TraceUnavailable, locate, pods_name, variants
    from xpupool.sim.report import plot_curves, results_table
    from xpupool.sim.runner import published_unallocated, run_matrix, summarise, write_placements

    policies = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise typer.BadParameter(f"unknown policy {', '.join(unknown)}; known: {', '.join(POLICIES)}")
    seed_list = parse_seeds(seeds)
    if trace is None and variant not in variants():
        raise typer.BadParameter(f"unknown variant {variant!r}; known: {', '.join(variants())}")
    try:  # the workspace's copy, the wheel's, the cache's, or a verified download (sim/openb_data.py)
        trace_file = trace or locate(pods_name(variant))
        nodes_file = nodes or locate(GPU_NODES)
    except TraceUnavailable as err:
        console.print(f"[red]trace not available[/]: {err}", soft_wrap=True)
        raise typer.Exit(2) from None
    for path in (trace_file, nodes_file):
        if not path.is_file():
            console.print(f"[red]trace file not found: {path}[/]")
            raise typer.Exit(2)
    try:  # read both files once here, so a malformed trace is one clear line, not a worker traceback
        load_nodes(nodes_file)
        load_pods(trace_file)
    except TraceError as err:
        console.print(f"[red]bad trace file[/]: {err}")
        raise typer.Exit(2) from None
    trace_name = trace_file.name.removesuffix(".gz")
    total = len(policies) * len(seed_list)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(f"replaying {trace_name}", total=total)
        runs = run_matrix(nodes_file=nodes_file, trace_file=trace_file, policies=policies, seeds=seed_list,
                          jobs=jobs, record_placements=placements is not None,
                          on_done=lambda _r: progress.advance(task))
    summary = summarise(runs)
    summary["trace"] = trace_name
    summary["nodes"] = nodes_file.name.removesuffix(".gz")
    published = None
    variant_name = trace_name.removesuffix(".csv").replace("openb_pod_list_", "")
    expected = trace_dir() / "fgd_expected_results" / "analysis_allo_discrete.csv"
    if compare_published and expected.is_file():
        published = published_unallocated(expected, variant_name)
        summary["published_unallocated_pct_at_100"] = {
            k: {str(s): round(v, 4) for s, v in per.items()} for k, per in published.items()
        }
    console.print(results_table(summary, published, title=f"{trace_name}: unallocated GPU % at 100 % arrival"))
    if json_out:
        json_out.write_text(json.dumps(summary, indent=1))
        console.print(f"summary JSON: {json_out}")
    if placements:
        write_placements(runs, placements)
        console.print(f"placements CSV: {placements}")
    if plot:
        plot_curves(summary, plot, title=trace_name)
        console.print(f"plot: {plot}")


@app.command("check-request")
def check_request(
    resource: Annotated[list[str], typer.Option("--resource", "-r", help="NAME=VALUE, repeatable")],
    annotation: Annotated[list[str] | None, typer.Option("--annotation", "-a", help="NAME=VALUE")] = None,
) -> None:
    """Validate a vXPU request the way the admission webhook does."""
    from xpupool.core.request import parse_request

    def pairs(items: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in items:
            if "=" not in item:
                raise typer.BadParameter(f"{item!r}: expected NAME=VALUE")
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
        return out

    result = parse_request(name="cli", resources=pairs(resource), annotations=pairs(annotation or []))
    if not result.ok:
        for err in result.errors:
            console.print(f"[red]✗[/] {err}")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {result.request}")


app.command("timeshare", help="Exclusive cards vs shared vXPUs on the GenAI duty-cycle trace.")(timeshare)
live.register(app)

# remote vXPUs (owner: remote; the subcommands live in xpupool.remote.cli)
from xpupool.remote.cli import app as _remote_app  # noqa: E402

app.add_typer(_remote_app, name="remote")

if __name__ == "__main__":
    app()
