"""Terminal rendering of a :class:`~xpupool.view.model.PoolSnapshot` (``xpupool status|pods|queues``).

Every table fits an 80-column terminal without cutting a figure: numbers sit in narrow
right-aligned columns that never wrap, and the only free-text columns (pod names, reasons) fold
onto several lines instead of ending in an ellipsis. ``-o json`` prints the full snapshot.
"""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from xpupool.view.model import CardView, NodeView, PoolSnapshot, QueueView, SliceView


def gib(mib: float) -> str:
    return f"{mib / 1024:.1f}"


def opt(value: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def age(seconds: float) -> str:
    """``42s``, ``7m``, ``3h12m``, ``2d4h``."""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _table(title: str) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left", expand=False)


def _num(table: Table, header: str) -> None:
    table.add_column(header, justify="right", no_wrap=True)


def summary_line(snap: PoolSnapshot) -> Text:
    t = snap.totals
    return Text(
        f"{t.nodes} nodes · {t.cards} cards ({t.healthy_cards} healthy) · {t.allocated_cards:g} cards allocated "
        f"· {t.free_cards:g} free · {t.idle_cards} idle · {t.slices} slices · {t.pending} pending · "
        f"{t.remote} remote",
        style="bold",
    )


def _card_label(card: CardView) -> str:
    label = f"{card.index} {card.model}"
    return label if card.healthy else label + " (unhealthy)"


def _slice_row(s: SliceView) -> list[str]:
    name = s.key
    if s.remote_from:
        name += f" (from {s.remote_from})"
    return [name, f"{s.share_pct:g}", gib(s.memory_mib), opt(s.memory_used_mib, "{:.0f}"),
            opt(s.utilization_pct)]


def node_table(node: NodeView) -> Table:
    """One node: per card a summary row (allocated compute, card memory, the agent's live card
    sample, what is free), then a row per slice (its share, memory quota, live use)."""
    state = "" if node.schedulable else " [cordoned/not ready]"
    agent = {None: "", True: " · agent ok", False: " · agent unreachable"}[node.agent_reachable]
    table = _table(f"{node.name}{state} · {len(node.cards)} cards · free {node.free_pct / 100:g} cards{agent}")
    table.add_column("card", no_wrap=True)
    table.add_column("pod", overflow="fold", ratio=1)
    _num(table, "comp%")
    _num(table, "memGiB")
    _num(table, "usedMiB")
    _num(table, "util%")
    for card in node.cards:
        free = Text(f"free {card.free_pct:g}% {gib(card.free_memory_mib)}GiB",
                    style="green" if card.free_pct else "dim")
        table.add_row(_card_label(card), free, f"{card.allocated_pct:g}", gib(card.memory_mib),
                      opt(card.memory_used_mib), opt(card.utilization_pct), style="bold")
        for i, s in enumerate(card.slices):
            table.add_row("", *_slice_row(s), end_section=i == len(card.slices) - 1)
        if not card.slices:
            table.rows[-1].end_section = True
    for other in node.other_pods:
        table.add_row("?", f"{other.namespace}/{other.pod} ({other.cards} whole, not by xpupool)", "", "", "", "")
    return table


def remote_table(snap: PoolSnapshot) -> Table:
    table = _table("Remote vXPU sessions")
    table.add_column("pod", overflow="fold", ratio=1)
    table.add_column("runs on → cards on", overflow="fold", ratio=1)
    _num(table, "card#")
    _num(table, "comp%")
    _num(table, "memGiB")
    _num(table, "Mbit/s")
    for r in snap.remote:
        pod = f"{r.namespace}/{r.pod}" + (f" ! {r.problem}" if r.problem else "")
        table.add_row(pod, f"{r.client_node} → {r.device_node}", ",".join(map(str, r.cards)),
                      f"{r.share_pct:g}", gib(r.memory_mib), str(r.bandwidth_mbps))
    return table


def status_view(snap: PoolSnapshot, *, node: str | None = None) -> RenderableType:
    """``xpupool status``: summary, one table per node with cards, remote sessions, warnings."""
    parts: list[RenderableType] = [summary_line(snap)]
    nodes = [n for n in snap.nodes if node is None or n.name == node]
    if node is not None and not nodes:
        parts.append(Text(f"no node {node!r}", style="red"))
    parts.extend(node_table(n) for n in nodes if n.cards or n.other_pods)
    cpu_only = [n.name for n in nodes if not n.cards and not n.other_pods]
    if cpu_only:
        parts.append(Text(f"CPU-only nodes: {', '.join(cpu_only)}", style="dim"))
    if snap.remote:
        parts.append(remote_table(snap))
    parts.extend(Text(f"! {w}", style="yellow") for w in snap.warnings)
    return Group(*parts)


def pending_view(snap: PoolSnapshot) -> RenderableType:
    """``xpupool pods``: pending pods, the longest waiting first; under each, the scheduler's
    reason over the full width (a reason is a sentence: a narrow column would make it a tower)."""
    if not snap.pending:
        return Text("no pending pods", style="green")
    parts: list[RenderableType] = [Text(f"{len(snap.pending)} pending pods (longest waiting first)", style="bold")]
    for p in snap.pending:
        head = Text(p.key, style="cyan")
        head.append(f"  queue {p.queue} · asks {p.request} · waiting {age(p.waiting_s)}")
        if p.pod_group:
            head.append(f" · gang {p.pod_group}")
        parts.append(head)
        parts.append(Padding(Text(p.reason), (0, 0, 0, 3)))
    return Group(*parts)


def _cards(value: float | None) -> str:
    return "∞" if value is None else f"{value:g}"


def queue_bar(q: QueueView, width: int = 8) -> Text:
    """Used cards against the guarantee: ``#`` within the guarantee, ``+`` borrowed."""
    scale = max(q.used.cards, q.guarantee.cards, 1e-9)
    inside = round(width * min(q.used.cards, q.guarantee.cards) / scale)
    over = round(width * q.borrowed.cards / scale)
    bar = Text("#" * inside, style="green")
    bar.append("+" * over, style="yellow")
    bar.append("." * max(0, width - inside - over), style="dim")
    return bar


def queues_view(snap: PoolSnapshot) -> RenderableType:
    """``xpupool queues``: guarantee, limit, used, borrowed (cards), running and pending pods."""
    if not snap.queues:
        return Text("no queues", style="dim")
    table = _table("Queues (cards of compute; every resource: kubectl get xpuqueue -o yaml)")
    table.add_column("queue", overflow="fold", ratio=1)
    _num(table, "guar.")
    _num(table, "limit")
    _num(table, "used")
    _num(table, "borr.")
    table.add_column("vs guar.", no_wrap=True)
    _num(table, "run/pend")
    _num(table, "oldest")
    for q in snap.queues:
        name = q.name if q.declared else f"{q.name}*"
        if q.parent:
            name += f" ({q.parent})"
        if not q.reported:
            table.add_row(name, "?", "?", "?", "?", Text("no status yet", style="dim"), "?", "")
            continue
        table.add_row(name, _cards(q.guarantee.cards), _cards(q.limit.cards), f"{q.used.cards:g}",
                      f"{q.borrowed.cards:g}", queue_bar(q), f"{q.running}/{q.pending}",
                      age(q.oldest_pending_s) if q.pending else "")
    if any(not q.declared for q in snap.queues):
        table.caption = "* no XPUQueue object: no guarantee, no limit"
    return table
