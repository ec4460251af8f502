"""Live figures from the node agents' ``/metrics``: per-card samples and per-slice shim usage.

The agent exports (see :mod:`xpupool.agent.metrics`) one series per card (``uuid`` label) and one
per slice and card (``namespace``, ``pod``, ``device`` labels). :func:`parse_agent_metrics` turns
one scrape into a :class:`NodeUsage`; nothing here talks to the network, so the parser is tested
on the agent's real exposition output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

MIB = float(1 << 20)


@dataclass(frozen=True, slots=True)
class CardUsage:
    utilization_pct: float | None = None
    memory_used_mib: float | None = None


@dataclass(frozen=True, slots=True)
class SliceUsage:
    memory_used_mib: float | None = None
    #: measured GPU-time share of the card, percent (the shim's EWMA)
    utilization_pct: float | None = None


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """One agent's answer: cards by UUID, slices by (namespace, pod, card UUID)."""

    cards: dict[str, CardUsage] = field(default_factory=dict)
    slices: dict[tuple[str, str, str], SliceUsage] = field(default_factory=dict)


def parse_agent_metrics(text: str) -> NodeUsage:
    """Parse one agent's exposition text. Series without the labels we join on are skipped."""
    card_util: dict[str, float] = {}
    card_mem: dict[str, float] = {}
    slice_mem: dict[tuple[str, str, str], float] = {}
    slice_util: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "xpupool_card_utilization_percent" and "uuid" in labels:
                card_util[labels["uuid"]] = float(sample.value)
            elif sample.name == "xpupool_card_memory_used_mib" and "uuid" in labels:
                card_mem[labels["uuid"]] = float(sample.value)
            elif sample.name in ("xpupool_vxpu_memory_used_bytes", "xpupool_vxpu_share_measured_ratio"):
                if not labels.get("pod") or "device" not in labels:
                    continue
                key = (labels.get("namespace", ""), labels["pod"], labels["device"])
                if sample.name == "xpupool_vxpu_memory_used_bytes":
                    slice_mem[key] = slice_mem.get(key, 0.0) + float(sample.value) / MIB
                else:
                    slice_util[key] = slice_util.get(key, 0.0) + float(sample.value) * 100.0
    cards = {
        uuid: CardUsage(card_util.get(uuid), card_mem.get(uuid)) for uuid in sorted(set(card_util) | set(card_mem))
    }
    slices = {key: SliceUsage(slice_mem.get(key), slice_util.get(key)) for key in set(slice_mem) | set(slice_util)}
    return NodeUsage(cards, slices)
