"""``xpupool status|pods|queues``: the live pool from the apiserver and the node agents.

Each command reads a fresh :class:`~xpupool.view.model.PoolSnapshot` (:func:`xpupool.view.source.read_pool`)
and renders it with :mod:`xpupool.view.tables`; ``-o json`` prints the snapshot's JSON (the same
document the web page's ``/api/snapshot`` serves); ``--watch`` redraws every ``--interval`` seconds
(with ``-o json``: one JSON document per line).

Registered in :mod:`xpupool.cli.main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.live import Live

from xpupool.cli.console import make_console

if TYPE_CHECKING:  # imported when a command runs: other commands start without aiohttp
    from xpupool.kube.transport import KubeConfig
    from xpupool.view.model import PoolSnapshot
    from xpupool.view.source import AgentScraper

#: ``xpupool.kube.objects.SCHEDULER_NAME`` (tests/view/test_build.py checks they agree)
SCHEDULER_NAME = "xpupool"


class Output(enum.StrEnum):
    TABLE = "table"
    JSON = "json"


class Agents(enum.StrEnum):
    AUTO = "auto"
    DIRECT = "direct"
    PROXY = "proxy"
    OFF = "off"


KubeconfigOpt = Annotated[str | None, typer.Option(help="kubeconfig file (default: $KUBECONFIG, in-cluster, "
                                                        "~/.kube/config)")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table, or json for the full data")]
WatchOpt = Annotated[bool, typer.Option("--watch", "-w", help="redraw every --interval seconds")]
IntervalOpt = Annotated[float, typer.Option(help="seconds between redraws with --watch", min=0.5)]
AgentsOpt = Annotated[Agents, typer.Option(
    help="live figures from the node agents: direct (pod IPs, in the cluster), proxy (through the "
         "apiserver, needs get pods/proxy), auto (direct in a pod, else proxy) or off")]
SchedulerOpt = Annotated[str, typer.Option(help="the scheduler name xpupool's pods carry")]


def _scraper(mode: Agents, config: KubeConfig) -> AgentScraper | None:
    from xpupool.view.source import make_scraper

    if mode is Agents.AUTO:
        mode = Agents.DIRECT if os.environ.get("KUBERNETES_SERVICE_HOST") else Agents.PROXY
    return make_scraper(mode.value, config)


def _load_config(kubeconfig: str | None, console: Console) -> KubeConfig:
    from xpupool.kube.credentials import CredentialError
    from xpupool.kube.transport import KubeConfig

    try:
        return KubeConfig.load(kubeconfig)
    except (CredentialError, OSError, KeyError, ValueError, TypeError) as exc:
        console.print(f"[red]cannot read the kubeconfig[/]: {exc}")
        raise typer.Exit(2) from None


JsonPart = Callable[["PoolSnapshot"], dict[str, Any]]


def whole(snap: PoolSnapshot) -> dict[str, Any]:
    return snap.to_json()


def part(key: str) -> JsonPart:
    """Only ``key`` of the snapshot's JSON (plus its time and warnings)."""

    def select(snap: PoolSnapshot) -> dict[str, Any]:
        data = snap.to_json()
        return {"taken_at": data["taken_at"], key: data[key], "warnings": data["warnings"]}

    return select


def run_view(
    render: Callable[[PoolSnapshot], RenderableType],
    *,
    as_json: JsonPart = whole,
    kubeconfig: str | None,
    output: Output,
    watch: bool,
    interval: float,
    agents: Agents,
    scheduler_name: str,
    agent_selector: str | None = None,
) -> None:
    """Read the pool once (or every ``interval`` with ``watch``) and print it."""
    console = make_console()
    try:
        from xpupool.kube.transport import AiohttpTransport, ApiError, TransportError
        from xpupool.view.source import AGENT_SELECTOR, read_pool
    except ModuleNotFoundError as exc:  # a plain install: the cluster clients are the kube extra
        if (exc.name or "").startswith("xpupool"):
            raise
        console.print(f"the live views need the kube extra (pip install 'xpupool[kube]'): {exc}", markup=False)
        raise typer.Exit(2) from None
    config = _load_config(kubeconfig, console)

    async def main() -> None:
        transport = AiohttpTransport(config, request_timeout_s=15.0)
        scraper = _scraper(agents, config)
        live: Live | None = None
        try:
            while True:
                try:
                    snap = await read_pool(transport, scraper=scraper, agent_selector=agent_selector or AGENT_SELECTOR,
                                           scheduler_name=scheduler_name)
                except (ApiError, TransportError) as exc:
                    console.print(f"[red]cannot read the pool from {config.server}[/]: {exc}")
                    raise typer.Exit(1) from None
                if output is Output.JSON:
                    text = json.dumps(as_json(snap), indent=None if watch else 1)
                    console.print(text, soft_wrap=True, markup=False, highlight=False, emoji=False)
                elif not watch:
                    console.print(render(snap))
                elif live is None:
                    live = Live(render(snap), console=console, auto_refresh=False, screen=False)
                    live.start(refresh=True)
                else:
                    live.update(render(snap), refresh=True)
                if not watch:
                    return
                await asyncio.sleep(interval)
        finally:
            if live is not None:
                live.stop()
            if scraper is not None:
                await scraper.close()
            await transport.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def status(
    node: Annotated[str | None, typer.Argument(help="only this node")] = None,
    kubeconfig: KubeconfigOpt = None,
    output: OutputOpt = Output.TABLE,
    watch: WatchOpt = False,
    interval: IntervalOpt = 2.0,
    agents: AgentsOpt = Agents.AUTO,
    scheduler_name: SchedulerOpt = SCHEDULER_NAME,
) -> None:
    """Nodes × cards: each slice with its pod, compute %, memory and live use; free capacity; remote sessions."""
    from xpupool.view import tables

    run_view(lambda snap: tables.status_view(snap, node=node), kubeconfig=kubeconfig, output=output, watch=watch,
             interval=interval, agents=agents, scheduler_name=scheduler_name)


def pods(
    kubeconfig: KubeconfigOpt = None,
    output: OutputOpt = Output.TABLE,
    watch: WatchOpt = False,
    interval: IntervalOpt = 2.0,
    scheduler_name: SchedulerOpt = SCHEDULER_NAME,
) -> None:
    """Pending pods with the scheduler's reasons, the longest waiting first."""
    from xpupool.view import tables

    run_view(tables.pending_view, as_json=part("pending"), kubeconfig=kubeconfig, output=output, watch=watch,
             interval=interval, agents=Agents.OFF, scheduler_name=scheduler_name)


def queues(
    kubeconfig: KubeconfigOpt = None,
    output: OutputOpt = Output.TABLE,
    watch: WatchOpt = False,
    interval: IntervalOpt = 2.0,
    scheduler_name: SchedulerOpt = SCHEDULER_NAME,
) -> None:
    """Queues: guarantee, limit, used, borrowed, running and pending pods."""
    from xpupool.view import tables

    run_view(tables.queues_view, as_json=part("queues"), kubeconfig=kubeconfig, output=output, watch=watch,
             interval=interval, agents=Agents.OFF, scheduler_name=scheduler_name)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("pods")(pods)
    app.command("queues")(queues)
