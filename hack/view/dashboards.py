"""Writes the chart's Grafana dashboards (deploy/helm/xpupool/dashboards/*.json).

    .venv/bin/python hack/view/dashboards.py          # regenerate
    .venv/bin/python hack/view/dashboards.py --check  # exit 1 when the committed files differ

The dashboards are data; this script is their one source, so the three stay consistent (same
datasource variable, units, panel grid). ``tests/view/test_dashboards.py`` checks that the
committed JSON is what this script writes and that every query names a metric the code exports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "xpupool" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
Panel = dict[str, Any]


class Grid:
    """Places panels left to right on a 24-column grid."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, panel: Panel, w: int, h: int) -> Panel:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        panel["id"] = self.next_id
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        return panel


def target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def panel(kind: str, title: str, targets: list[tuple[str, str]], *, unit: str = "short", description: str = "",
          max_value: float | None = None, stack: bool = False) -> Panel:
    defaults: dict[str, Any] = {"unit": unit}
    if max_value is not None:
        defaults["max"], defaults["min"] = max_value, 0
    if kind == "timeseries":
        defaults["custom"] = {"fillOpacity": 10 if not stack else 60, "lineWidth": 1,
                              "stacking": {"mode": "normal" if stack else "none"}}
    out: Panel = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {},
    }
    if kind == "bargauge":
        out["options"] = {"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True}
    if kind == "stat":
        out["options"] = {"colorMode": "value", "graphMode": "area", "reduceOptions": {"calcs": ["lastNotNull"]}}
    return out


def variable(name: str, query: str, label: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2, "sort": 1,
            "includeAll": False, "multi": False}


def dashboard(uid: str, title: str, description: str, panels: list[tuple[Panel, int, int]],
              variables: list[dict[str, Any]]) -> dict[str, Any]:
    grid = Grid()
    ds = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"}
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["xpupool"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [ds, *variables]},
        "links": [{"title": "xpupool", "type": "dashboards", "tags": ["xpupool"], "asDropdown": True}],
        "panels": [grid.place(p, w, h) for p, w, h in panels],
    }


def pool_overview() -> dict[str, Any]:
    stat = [("Cards", 'xpupool_pool_cards{state="total"}'),
            ("Allocated cards", 'xpupool_pool_cards{state="allocated"}'),
            ("Free cards", 'xpupool_pool_cards{state="free"}'), ("Idle cards", 'xpupool_pool_cards{state="idle"}'),
            ("Pending pods", "sum(xpupool_pool_pending_pods)"), ("Remote vXPUs", "sum(xpupool_pool_remote_sessions)")]
    panels: list[tuple[Panel, int, int]] = [(panel("stat", title, [(expr, "")]), 4, 4) for title, expr in stat]
    panels += [
        (panel("timeseries", "Allocated vs used compute (cards)", [
            ("sum(xpupool_pool_card_allocated_ratio)", "allocated"),
            ("sum(xpupool_card_utilization_percent) / 100", "busy (vendor sample)"),
            ("sum(xpupool_vxpu_share_measured_ratio)", "measured by the shims")],
            description="Allocation is what the scheduler granted; busy and measured are what runs."), 12, 8),
        (panel("bargauge", "Allocation per card", [
            ("xpupool_pool_card_allocated_ratio", "{{node}} #{{index}}")], unit="percentunit", max_value=1), 12, 8),
        (panel("timeseries", "Card utilization", [("xpupool_card_utilization_percent", "{{node}} #{{index}}")],
               unit="percent", max_value=100), 12, 8),
        (panel("timeseries", "Pending pods by queue", [("xpupool_pool_pending_pods", "{{queue}}")], stack=True), 12, 8),
        (panel("timeseries", "Scheduling cycle and bind latency (p99)", [
            ("histogram_quantile(0.99, sum by (le) (rate(xpupool_schedule_cycle_seconds_bucket[5m])))", "cycle"),
            ("histogram_quantile(0.99, sum by (le) (rate(xpupool_bind_latency_seconds_bucket[5m])))", "bind")],
            unit="s"), 12, 8),
        (panel("timeseries", "Placements and binds per second", [
            ("sum by (outcome) (rate(xpupool_placements_total[5m]))", "placement {{outcome}}"),
            ("sum by (outcome) (rate(xpupool_bind_total[5m]))", "bind {{outcome}}"),
            ("rate(xpupool_preemptions_total[5m])", "preemptions")], unit="ops"), 12, 8),
        (panel("timeseries", "Admission webhook reviews", [
            ("sum by (outcome) (rate(xpupool_webhook_reviews_total[5m]))", "{{outcome}}"),
            ("histogram_quantile(0.99, sum by (le) (rate(xpupool_webhook_review_seconds_bucket[5m])))", "p99 s")],
            unit="ops"), 12, 8),
        (panel("timeseries", "Limiter health", [
            ("sum(increase(xpupool_vxpu_accounting_errors_total[10m]))", "accounting errors / 10m"),
            ("sum(increase(xpupool_vxpu_oom_refusals_total[10m]))", "quota OOM refusals / 10m"),
            ("sum(xpupool_pool_remote_session_errors)", "broken remote sessions"),
            ("count(xpupool_pool_agent_reachable == 0)", "agents unreachable")]), 12, 8),
    ]
    return dashboard("xpupool-pool", "xpupool / Pool overview",
                     "The whole pool: cards allocated and used, pending pods, scheduler and webhook.", panels, [])


def per_node() -> dict[str, Any]:
    sel = 'node="$node"'
    panels: list[tuple[Panel, int, int]] = [
        (panel("bargauge", "Allocated per card", [(f"xpupool_pool_card_allocated_ratio{{{sel}}}", "#{{index}}")],
               unit="percentunit", max_value=1), 8, 7),
        (panel("bargauge", "Card utilization", [(f"xpupool_card_utilization_percent{{{sel}}}", "#{{index}}")],
               unit="percent", max_value=100), 8, 7),
        (panel("bargauge", "Card memory in use", [
            (f"xpupool_card_memory_used_mib{{{sel}}} / xpupool_card_memory_total_mib{{{sel}}}", "#{{index}}")],
            unit="percentunit", max_value=1), 8, 7),
        (panel("timeseries", "Measured compute share per slice", [
            (f"xpupool_vxpu_share_measured_ratio{{{sel}}}", "{{namespace}}/{{pod}} {{device}}")],
            unit="percentunit", stack=True), 12, 8),
        (panel("timeseries", "Granted vs effective share per slice", [
            (f"xpupool_vxpu_share_granted_ratio{{{sel}}}", "granted {{namespace}}/{{pod}}"),
            (f"xpupool_vxpu_share_effective_ratio{{{sel}}}", "effective {{namespace}}/{{pod}}")],
            unit="percentunit"), 12, 8),
        (panel("timeseries", "Device memory per slice (used of quota)", [
            (f"xpupool_vxpu_memory_used_bytes{{{sel}}}", "used {{namespace}}/{{pod}}"),
            (f"xpupool_vxpu_memory_granted_bytes{{{sel}}}", "quota {{namespace}}/{{pod}}")], unit="bytes"), 12, 8),
        (panel("timeseries", "Throttled time per slice", [
            (f"rate(xpupool_vxpu_throttle_seconds_total{{{sel}}}[5m])", "{{namespace}}/{{pod}}")],
            unit="percentunit", description="Fraction of wall time launches waited for the limiter."), 12, 8),
        (panel("timeseries", "Temperature and power", [
            (f"xpupool_card_temperature_celsius{{{sel}}}", "°C #{{index}}"),
            (f"xpupool_card_power_watts{{{sel}}}", "W #{{index}}")]), 12, 8),
        (panel("timeseries", "Quota refusals and accounting errors", [
            (f"increase(xpupool_vxpu_oom_refusals_total{{{sel}}}[10m])", "OOM {{namespace}}/{{pod}}"),
            (f"increase(xpupool_vxpu_accounting_errors_total{{{sel}}}[10m])", "errors {{namespace}}/{{pod}}")]),
         12, 8),
    ]
    return dashboard("xpupool-node", "xpupool / Node", "One node's cards and the slices on them (agent metrics).",
                     panels, [variable("node", "label_values(xpupool_card_memory_total_mib, node)", "node")])


def per_queue() -> dict[str, Any]:
    sel = 'queue="$queue"'
    panels: list[tuple[Panel, int, int]] = [
        (panel("stat", "Used cards", [(f"xpupool_queue_used_cards{{{sel}}}", "")]), 6, 4),
        (panel("stat", "Guaranteed cards", [(f"xpupool_queue_guaranteed_cards{{{sel}}}", "")]), 6, 4),
        (panel("stat", "Borrowed cards", [(f"xpupool_queue_borrowed_cards{{{sel}}}", "")]), 6, 4),
        (panel("stat", "Pending pods", [(f"xpupool_pool_pending_pods{{{sel}}}", "")]), 6, 4),
        (panel("timeseries", "Cards: used, guarantee, limit", [
            (f"xpupool_queue_used_cards{{{sel}}}", "used"),
            (f"xpupool_queue_guaranteed_cards{{{sel}}}", "guaranteed"),
            (f"xpupool_queue_limit_cards{{{sel}}}", "limit"),
            (f"xpupool_queue_borrowed_cards{{{sel}}}", "borrowed")]), 12, 8),
        (panel("timeseries", "Pods: running, pending, longest wait", [
            (f"xpupool_queue_running_pods{{{sel}}}", "running"),
            (f"xpupool_pool_pending_pods{{{sel}}}", "pending"),
            (f"xpupool_pool_pending_oldest_seconds{{{sel}}} / 60", "longest wait (min)")]), 12, 8),
        (panel("timeseries", "Measured compute of the queue's slices by node", [
            (f"sum by (node) (xpupool_vxpu_share_measured_ratio{{{sel}}})", "{{node}}")],
            unit="percentunit", stack=True), 12, 8),
        (panel("timeseries", "Device memory of the queue's slices", [
            (f"sum(xpupool_vxpu_memory_used_bytes{{{sel}}})", "used"),
            (f"sum(xpupool_vxpu_memory_granted_bytes{{{sel}}})", "quota")], unit="bytes"), 12, 8),
    ]
    return dashboard("xpupool-queue", "xpupool / Queue", "One queue: its guarantee and use, and its pods.",
                     panels, [variable("queue", "label_values(xpupool_queue_used_cards, queue)", "queue")])


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{name}.json": json.dumps(build(), indent=1, ensure_ascii=False) + "\n"
            for name, build in (("pool", pool_overview), ("node", per_node), ("queue", per_queue))}


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--check", action="store_true")
    check = args.parse_args(argv).check
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        path = OUT / name
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale dashboards: {', '.join(stale)} (run hack/view/dashboards.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
