"""Where a snapshot's inputs come from: the apiserver (one-shot lists) and the node agents' metrics.

Data flow::

    apiserver: list Nodes, Pods, XPUQueues ---------------------------+
    agent pods (label selector) -> AgentScraper.scrape -> NodeUsage --+--> build_snapshot -> PoolSnapshot

Two ways to reach an agent's ``/metrics`` (:class:`AgentScraper` implementations):

* :class:`DirectScraper` - ``http://<pod IP>:<metrics port>/metrics``; what the view service does
  in the cluster (no apiserver permission beyond reading pods);
* :class:`ApiserverProxyScraper` - through the apiserver's ``pods/proxy`` subresource; what the
  CLI does from a laptop (needs ``get pods/proxy``). The apiserver refuses to proxy to loopback
  and link-local pod IPs.

A scrape that fails is reported as ``None`` for that node (a warning in the snapshot, never a
crash and never a made-up figure). Every call has a timeout; scrapes run concurrently.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import aiohttp

from xpupool.kube.objects import SCHEDULER_NAME
from xpupool.kube.queues import XPUQUEUES
from xpupool.kube.transport import NODES, PODS, ApiError, JsonDict, KubeConfig, Resource, Transport
from xpupool.view.build import build_snapshot
from xpupool.view.model import PoolSnapshot
from xpupool.view.usage import NodeUsage, parse_agent_metrics

#: labels the Helm chart puts on the agent DaemonSet's pods
AGENT_SELECTOR = "app.kubernetes.io/part-of=xpupool,app.kubernetes.io/component=agent"
METRICS_PORT_NAME = "metrics"


@dataclass(frozen=True, slots=True)
class AgentEndpoint:
    node: str
    namespace: str
    pod: str
    ip: str
    port: int


def agent_endpoints(pods: Iterable[JsonDict], selector: str) -> list[AgentEndpoint]:
    """The metrics endpoints of the running pods matching ``selector`` (the agents), one per node
    (the newest pod wins)."""
    found: dict[str, tuple[str, AgentEndpoint]] = {}
    for pod in pods:
        if not matches_selector(pod, selector):
            continue
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        node = spec.get("nodeName")
        ip = status.get("podIP")
        if not node or not ip or status.get("phase") not in (None, "Running") or meta.get("deletionTimestamp"):
            continue
        port = None
        for container in spec.get("containers") or []:
            for p in container.get("ports") or []:
                if p.get("name") == METRICS_PORT_NAME:
                    port = int(p["containerPort"])
        if port is None:
            continue
        created = str(meta.get("creationTimestamp") or "")
        endpoint = AgentEndpoint(str(node), str(meta.get("namespace")), str(meta.get("name")), str(ip), port)
        if node not in found or created >= found[node][0]:
            found[node] = (created, endpoint)
    return [e for _, e in sorted(found.values(), key=lambda item: item[1].node)]


class AgentScraper(Protocol):
    #: node -> why its agent's last scrape failed (cleared when it answers again)
    errors: dict[str, str]

    async def scrape(self, endpoints: Sequence[AgentEndpoint]) -> dict[str, NodeUsage | None]:
        """Node name -> parsed metrics, ``None`` where the agent did not answer. Never raises for
        a broken agent; bounded by the implementation's timeout."""
        ...

    async def close(self) -> None: ...


class _HttpScraper:
    def __init__(self, *, timeout_s: float = 3.0, ssl: object = None, headers: dict[str, str] | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl = ssl
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None
        self.errors: dict[str, str] = {}

    def url(self, endpoint: AgentEndpoint) -> str:
        raise NotImplementedError

    async def _one(self, endpoint: AgentEndpoint) -> NodeUsage | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        try:
            kwargs = {} if self._ssl is None else {"ssl": self._ssl}
            async with self._session.get(self.url(endpoint), **kwargs) as resp:  # type: ignore[arg-type]
                text = await resp.text()
                if resp.status != 200:
                    self.errors[endpoint.node] = f"HTTP {resp.status}: {text[:200].strip()}"
                    return None
            usage = parse_agent_metrics(text)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            self.errors[endpoint.node] = f"{type(exc).__name__}: {exc}"
            return None
        self.errors.pop(endpoint.node, None)
        return usage

    async def scrape(self, endpoints: Sequence[AgentEndpoint]) -> dict[str, NodeUsage | None]:
        results = await asyncio.gather(*(self._one(e) for e in endpoints))
        return {e.node: r for e, r in zip(endpoints, results, strict=True)}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class DirectScraper(_HttpScraper):
    """``http://<pod IP>:<port>/metrics`` (in the cluster network)."""

    def url(self, endpoint: AgentEndpoint) -> str:
        host = f"[{endpoint.ip}]" if ":" in endpoint.ip else endpoint.ip
        return f"http://{host}:{endpoint.port}/metrics"


class ApiserverProxyScraper(_HttpScraper):
    """Through ``/api/v1/namespaces/<ns>/pods/<pod>:<port>/proxy/metrics`` with the kubeconfig's
    credentials (from outside the cluster)."""

    def __init__(self, config: KubeConfig, *, timeout_s: float = 5.0) -> None:
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        super().__init__(timeout_s=timeout_s, ssl=config.ssl_context(), headers=headers)
        self._server = config.server

    def url(self, endpoint: AgentEndpoint) -> str:
        pod = quote(f"{endpoint.pod}:{endpoint.port}", safe=":")
        return f"{self._server}/api/v1/namespaces/{quote(endpoint.namespace, safe='')}/pods/{pod}/proxy/metrics"


def make_scraper(mode: str, config: KubeConfig) -> AgentScraper | None:
    """The scraper for an ``--agents`` mode: ``direct``, ``proxy``, or None for ``off``."""
    if mode == "direct":
        return DirectScraper()
    if mode == "proxy":
        return ApiserverProxyScraper(config)
    return None


async def list_all(transport: Transport, resource: Resource, *, label_selector: str | None = None) -> list[JsonDict]:
    """Every object of ``resource`` (paged)."""
    items: list[JsonDict] = []
    token: str | None = None
    while True:
        page = await transport.list(resource, label_selector=label_selector, limit=500, continue_token=token)
        items.extend(page.items)
        token = page.continue_token or None
        if token is None:
            return items


async def list_queues(transport: Transport) -> tuple[list[JsonDict], list[str]]:
    """XPUQueues, or none with a note when the CRD is not installed or not readable."""
    try:
        return await list_all(transport, XPUQUEUES), []
    except ApiError as exc:
        if exc.status in (403, 404):
            return [], [f"XPUQueues not readable ({exc.status}): queues get default specs"]
        raise


async def read_pool(
    transport: Transport,
    *,
    scraper: AgentScraper | None = None,
    agent_selector: str = AGENT_SELECTOR,
    scheduler_name: str = SCHEDULER_NAME,
    now: dt.datetime | None = None,
) -> PoolSnapshot:
    """One snapshot from fresh lists (the CLI). ``scraper=None`` skips live agent figures."""
    nodes, pods, (queues, notes) = await asyncio.gather(
        list_all(transport, NODES), list_all(transport, PODS), list_queues(transport)
    )
    usage: dict[str, NodeUsage | None] = {}
    warnings = list(notes)
    if scraper is not None:
        usage = await scraper.scrape(agent_endpoints(pods, agent_selector))
        warnings.extend(agent_warnings(scraper, usage))
    return build_snapshot(
        nodes=nodes,
        pods=pods,
        queues=queues,
        usage=usage,
        now=now or dt.datetime.now(dt.UTC),
        scheduler_name=scheduler_name,
        warnings=warnings,
    )


def agent_warnings(scraper: AgentScraper | None, usage: Mapping[str, NodeUsage | None]) -> list[str]:
    """One warning per agent of ``usage`` whose last scrape failed, in node order."""
    if scraper is None:
        return []
    return [f"agent on {node}: {text}" for node, text in sorted(scraper.errors.items()) if node in usage]


def matches_selector(obj: JsonDict, selector: str) -> bool:
    """Equality-based label selector (``a=b,c=d``) against ``obj``'s labels."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True
