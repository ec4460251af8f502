"""The daemon's metrics on the node agent's ``/metrics``: on every scrape the agent asks ``xpu-remoted``
over its control socket (unix, local, answers in microseconds) and re-exports its families with a
``node`` label: sessions by state, connections by outcome, ``xpupool_remote_session_errors_total``
by reason, calls by API, and per-session calls, bytes, RTT histogram and GPU memory.

``xpupool_remote_daemon_up`` says whether the daemon answered; when it did not, its families are
absent from that scrape (never stale values).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from xpupool.remote.daemon import Control, RemoteError

log = logging.getLogger(__name__)


class DaemonMetricsCollector:
    """A ``prometheus_client`` collector (duck-typed) over one daemon's control socket."""

    def __init__(self, control: Control, *, node: str) -> None:
        self._control = control
        self._node = node

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("xpupool_remote_daemon_up", "1 when xpu-remoted answered this scrape",
                               labels=["node"])
        try:
            text = self._control.metrics()
        except (OSError, RemoteError) as exc:
            log.warning("xpu-remoted did not answer the metrics scrape: %s", exc)
            up.add_metric([self._node], 0)
            yield up
            return
        up.add_metric([self._node], 1)
        yield up
        for family in text_string_to_metric_families(text):
            family.samples = [s._replace(labels={**s.labels, "node": self._node}) for s in family.samples]
            yield family
