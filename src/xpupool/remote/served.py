"""The GPU node's side of remote vXPUs: grant slices to remote pods and issue their session tokens.

Nothing lists pods cluster-wide. A remote pod's node agent (on the CPU-only node the pod is bound
to) asks this node's agent for a token over HTTPS (``POST /remote/v1/token``), authenticated by its
service-account token for the audience :data:`REMOTE_AUDIENCE`. :meth:`RemoteServer.issue`:

1. asks the apiserver who the caller is (TokenReview): it must be the xpupool agent's service account,
   and its token bound to a pod on some node ``N`` (the ``node-name`` the apiserver puts in bound
   tokens);
2. reads the pod named in the request: it must be bound to ``N``, carry an ``xpupool.io/allocation``
   whose cards are on *this* node (remote), and not be terminating;
3. writes the slice's shim region with the agent's region writer (the same code and per-card ledger
   as local containers), grants the allocation to the local ``xpu-remoted`` (allocation id = pod UID,
   the card, the region) and mints a short-lived token for exactly that allocation, card and node.

So a node agent obtains tokens only for pods the scheduler bound to its own node with cards here; the
signing key never leaves this node; the only extra permission is ``tokenreviews create``.

:meth:`RemoteServer.reconcile` (every agent tick) re-reads each granted pod: a pod that is gone,
replaced (another UID), finished or terminating has its grant revoked (the daemon kills its
sessions: worker exit frees the GPU memory) and its region removed. Grants survive an agent restart:
they are read back from the daemon (``grants``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from xpupool.agent.allocation import PodSlice, parse_allocation
from xpupool.agent.discovery import DeviceInfo
from xpupool.agent.kubeapi import ApiError
from xpupool.agent.pairing import RegionWriter
from xpupool.core.status import Status
from xpupool.remote import tokens
from xpupool.remote.daemon import Control, StateFiles

log = logging.getLogger(__name__)

#: audience of the service-account tokens agents present to each other's token endpoints
REMOTE_AUDIENCE = "xpupool.io/remote"
#: node annotations a GPU node publishes for the agents of CPU-only nodes
ANN_REMOTE = "xpupool.io/remote"
ANN_REMOTE_CA = "xpupool.io/remote-ca"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
TOKEN_PATH = "/remote/v1/token"


class PodGetter(Protocol):
    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """The Pod as JSON; :class:`~xpupool.agent.kubeapi.ApiError` 404 when absent."""
        ...


class TokenReviewer(Protocol):
    async def review(self, token: str, *, audience: str) -> dict[str, Any]:
        """The ``status`` of a TokenReview of ``token`` for ``audience``."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated peer: its user name and the node its token is bound to (None if unbound)."""

    username: str
    node: str | None


def caller_of(review: Mapping[str, Any]) -> Caller | None:
    """The caller a TokenReview status names, or None when not authenticated."""
    if not review.get("authenticated"):
        return None
    user = review.get("user") or {}
    nodes = (user.get("extra") or {}).get(NODE_NAME_EXTRA) or []
    return Caller(str(user.get("username", "")), str(nodes[0]) if len(nodes) == 1 else None)


def _ended(pod: Mapping[str, Any]) -> bool:
    """Terminating or finished: no new token, and an existing grant is revoked."""
    meta = pod.get("metadata") or {}
    return bool(meta.get("deletionTimestamp")) or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    status: Status
    slice: PodSlice | None = None
    http: int = 200


def authorize(caller: Caller | None, pod: Mapping[str, Any] | None, *, node: str,
              agents: frozenset[str]) -> Decision:
    """May ``caller`` have a session token for ``pod``'s slice on ``node``? (pure)"""
    if caller is None:
        return Decision(Status.error("not authenticated (a service-account token for the remote audience)"), http=401)
    if caller.username not in agents:
        return Decision(Status.error(f"{caller.username} is not an xpupool node agent"), http=403)
    if not caller.node:
        return Decision(Status.error("the caller's token is not bound to a pod on a node"), http=403)
    if pod is None:
        return Decision(Status.error("no such pod"), http=404)
    meta = pod.get("metadata") or {}
    key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    bound = (pod.get("spec") or {}).get("nodeName")
    if bound != caller.node:
        return Decision(Status.error(f"{key} is bound to {bound!r}, not to the caller's node {caller.node}"), http=403)
    if _ended(pod):
        return Decision(Status.error(f"{key} is terminating or finished"), http=409)
    parsed = parse_allocation((meta.get("annotations") or {}).get("xpupool.io/allocation"), pod=key)
    if parsed.allocation is None:
        return Decision(Status.error(*parsed.errors), http=409)
    alloc = parsed.allocation
    if alloc.device_node != node or alloc.node == node:
        return Decision(Status.error(f"{key}: its cards are on {alloc.device_node}, a remote vXPU of this node "
                                     f"{node} it is not"), http=409)
    if alloc.node != bound:
        return Decision(Status.error(f"{key}: allocation runs the pod on {alloc.node}, it is bound to {bound}"),
                        http=409)
    if len(alloc.cards) != 1:
        return Decision(Status.error(f"{key}: a remote vXPU is one card (the allocation has {len(alloc.cards)})"),
                        http=409)
    part = PodSlice(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
                    uid=str(meta.get("uid", "")), allocation=alloc)
    return Decision(Status.success(), part)


@dataclasses.dataclass(frozen=True, slots=True)
class Granted:
    alloc: str  # pod UID
    namespace: str
    pod: str
    card: str
    region: Path | None


class RemoteServer:
    """See the module docstring. ``cards`` returns this node's cards by index."""

    def __init__(self, *, node: str, control: Control, state: StateFiles, pods: PodGetter, reviewer: TokenReviewer,
                 cards: Callable[[], Mapping[int, DeviceInfo]], region_root: Path, region_file: str = "region",
                 region_writer: RegionWriter | None = None, agents: frozenset[str], endpoint: str,
                 ttl_s: int = 3600, wall_clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.control = control
        self.state = state
        self._pods = pods
        self._reviewer = reviewer
        self._cards = cards
        self._region_root = region_root
        self._region_file = region_file
        self._writer = region_writer
        self._agents = agents
        self.endpoint = endpoint
        self._ttl_s = ttl_s
        self._now = wall_clock
        self._key = tokens.load_signing_key(state.signing_key)
        self.granted: dict[str, Granted] = {}
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ issuing
    async def issue(self, bearer: str, namespace: str, name: str) -> tuple[Decision, dict[str, Any]]:
        try:
            caller = caller_of(await self._reviewer.review(bearer, audience=REMOTE_AUDIENCE))
        except (ApiError, OSError, TimeoutError) as exc:
            return Decision(Status.error(f"cannot review the caller's token: {exc}"), http=503), {}
        pod: dict[str, Any] | None = None
        if caller is not None and caller.username in self._agents:
            try:
                pod = await self._pods.get_pod(namespace, name)
            except ApiError as exc:
                if exc.status != 404:
                    return Decision(Status.error(f"cannot read pod {namespace}/{name}: {exc}"), http=503), {}
            except (OSError, TimeoutError) as exc:
                return Decision(Status.error(f"cannot read pod {namespace}/{name}: {exc}"), http=503), {}
        decision = authorize(caller, pod, node=self.node, agents=self._agents)
        if not decision.status.ok or decision.slice is None:
            return decision, {}
        part = decision.slice
        card = self._cards().get(part.allocation.cards[0])
        if card is None or not card.healthy:
            return Decision(Status.error(f"{part.key}: card {part.allocation.cards[0]} is not healthy on {self.node}"),
                            http=409), {}
        async with self._lock:
            status = await asyncio.to_thread(self._grant, part, card)
        if not status.ok:
            return Decision(status, http=500), {}
        token = tokens.mint(self._key, tenant=part.key, alloc=part.uid, card=card.uuid, node=self.node,
                            now_s=int(self._now()), ttl_s=self._ttl_s)
        log.info("remote vXPU token for %s (card %s, session ttl %d s)", part.key, card.uuid, self._ttl_s)
        return decision, {"token": token, "ca": self.state.ca_cert.read_text(), "endpoint": self.endpoint,
                          "serverName": self.node, "expiresInSeconds": self._ttl_s}

    def _region_path(self, uid: str) -> Path:
        return self._region_root / f"{uid}-remote" / self._region_file

    def _grant(self, part: PodSlice, card: DeviceInfo) -> Status:
        region: Path | None = None
        if self._writer is not None:
            region = self._region_path(part.uid)
            region.parent.mkdir(parents=True, exist_ok=True)
            written = self._writer.write(path=region, pod=part, cards=[card])
            if not written.ok:
                return written
        self.control.grant(alloc=part.uid, card=card.uuid, region=region, tenant=part.key)
        self.granted[part.uid] = Granted(part.uid, part.namespace, part.name, card.uuid, region)
        return Status.success()

    # ------------------------------------------------------------------ revoking
    async def reconcile(self) -> list[str]:
        """Revoke grants of pods that are gone, replaced, finished or terminating; returns their keys."""
        if not self.granted:
            await asyncio.to_thread(self._recover)
        revoked: list[str] = []
        for g in list(self.granted.values()):
            try:
                pod: dict[str, Any] | None = await self._pods.get_pod(g.namespace, g.pod)
            except ApiError as exc:
                if exc.status != 404:
                    continue  # transport: next tick
                pod = None
            if pod is not None and (pod.get("metadata") or {}).get("uid") == g.alloc and not _ended(pod):
                continue
            async with self._lock:
                ended = await asyncio.to_thread(self._revoke, g)
            revoked.append(f"{g.namespace}/{g.pod}")
            log.info("remote vXPU of %s/%s revoked (%d sessions ended)", g.namespace, g.pod, ended)
        return revoked

    def _revoke(self, g: Granted) -> int:
        ended = self.control.revoke(g.alloc)
        if g.region is not None:
            shutil.rmtree(g.region.parent, ignore_errors=True)
        self.granted.pop(g.alloc, None)
        return ended

    def _recover(self) -> None:
        """After an agent restart: the daemon still holds the grants this agent made."""
        for row in self.control.grants():
            namespace, _, name = row.tenant.partition("/")
            if name:
                region = Path(row.region) if row.region != "-" else None
                self.granted[row.alloc] = Granted(row.alloc, namespace, name, row.card, region)

    def live_uids(self) -> set[str]:
        """Pod UIDs whose regions live on this node although the pods run elsewhere (region GC)."""
        return set(self.granted)

    # ------------------------------------------------------------------ publishing and serving
    def annotations(self, issuer_url: str) -> dict[str, str]:
        """What CPU-only nodes' agents need to reach this node: endpoints and the CA (public)."""
        return {ANN_REMOTE: json.dumps({"endpoint": self.endpoint, "issuer": issuer_url, "serverName": self.node},
                                       sort_keys=True),
                ANN_REMOTE_CA: self.state.ca_cert.read_text()}

    def app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            auth = request.headers.get("Authorization", "")
            bearer = auth[7:] if auth.startswith("Bearer ") else ""
            try:
                body = await request.json()
                namespace, name = str(body["namespace"]), str(body["pod"])
            except (ValueError, KeyError, TypeError):
                return web.json_response({"error": "body must be {\"namespace\": ..., \"pod\": ...}"}, status=400)
            decision, answer = await self.issue(bearer, namespace, name)
            if not decision.status.ok:
                return web.json_response({"error": decision.status.message()}, status=decision.http)
            return web.json_response(answer)

        app = web.Application(client_max_size=16 * 1024)
        app.router.add_post(TOKEN_PATH, token)
        return app
