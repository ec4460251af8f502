"""Pod admission webhook (HTTPS, aiohttp): validates and normalises vXPU requests.

Data flow::

    kube-apiserver --POST /mutate AdmissionReview(v1)--> admit_pod (pure) --> AdmissionReview
                                                         |  request syntax: kube.objects.pod_request
                                                         |  (-> core.request.parse_request)
                                                         |  pool check: core validate_against_pool
                                                         v  on a cached node list (PoolCache)

What :func:`admit_pod` does for a Pod CREATE that asks for vXPUs (``xpupool.io/vxpu*``, or a
vendor's whole-card resource when ``adopt_whole_card`` is on):

* refuses, with every problem in one message: a request the syntax rejects; vXPUs in an init
  container (several app containers may ask: each takes its own cards of the pod's allocation,
  in container order); a privileged container (it could bypass the in-container shim);
  ``spec.nodeName`` set (it would bypass the scheduler's device ledger); a ``schedulerName`` of
  another scheduler; and, with ``pool_check="deny"``, a request no node of the pool can ever hold
  (``pool_check="warn"``, the default, returns the same text as admission warnings instead, so
  scale-from-zero clusters are not blocked);
* refuses a pod whose ``xpupool.io/queue`` label names a queue its namespace may not use (or an
  inner or unknown queue), with the queues it may use in the message — the cluster owner decides
  through the ``XPUQueue`` objects (:func:`xpupool.core.queue_access.resolve_queue`, the same pure
  function the scheduler runs again for every pod, so a pod created while the webhook was down
  is not trusted either); the queues and namespaces come from a cache re-listed every 30 s
  (:class:`QueueCache`): until the first list the check is skipped with a warning;
* mutates with a JSONPatch: ``spec.schedulerName`` = ``xpupool``; label ``xpupool.io/managed``;
  label ``xpupool.io/queue`` = the namespace's default queue when the pod names none;
  annotation ``xpupool.io/request`` (the normalised request, versioned JSON); limits copied from
  requests for our resources where only requests were given; a whole-card resource
  (``nvidia.com/gpu: 2``) rewritten as ``xpupool.io/vxpu: 2`` plus the ``xpupool.io/exclusive``,
  ``vendor`` (and ``model``) annotations, so xpupool's device plugin, not the vendor's, wires the
  cards the scheduler chose; downward-API env
  ``XPUPOOL_POD_NAME/NAMESPACE/UID`` in the vXPU container (the shim reports with them).
  The patch is idempotent: a reinvoked webhook (``reinvocationPolicy: IfNeeded``) adds nothing twice.

Pods that ask for no vXPU, other kinds and other operations are allowed untouched. The webhook
has no side effects (``sideEffects: None``); on ``dryRun`` it answers the same but does not count
the decision in its statistics or log it as an admission.

TLS: :class:`CertKeeper` keeps the CA + serving certificate in a Secret (created on first start,
rotated by :func:`xpupool.kube.certs.ensure_bundle`), publishes the CA in the
MutatingWebhookConfiguration's ``caBundle`` (old and new CA together during a CA rotation) and
reloads the serving chain into the running server's ``SSLContext``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from xpupool.core.model import Node, Request
from xpupool.core.request import (
    ANN_EXCLUSIVE,
    ANN_MODEL,
    ANN_VENDOR,
    DOMAIN,
    LABEL_QUEUE,
    OUR_RESOURCES,
    RES_VXPU,
    WHOLE_CARD_RESOURCES,
    validate_against_pool,
)
from xpupool.kube import certs
from xpupool.kube.objects import SCHEDULER_NAME, node_model, pod_request
from xpupool.kube.queues import OPEN_CATALOGUE, XPUQUEUES, QueueCatalogue
from xpupool.kube.transport import NAMESPACES, NODES, ApiError, JsonDict, Resource, Transport
from xpupool.kube.webhook_metrics import LatencyHistogram, WebhookCollector, metrics_app

log = logging.getLogger(__name__)

ANN_REQUEST = f"{DOMAIN}/request"
LABEL_MANAGED = f"{DOMAIN}/managed"
REQUEST_SCHEMA_VERSION = 1
DEFAULT_SCHEDULER = "default-scheduler"
SECRETS = Resource("", "v1", "secrets", True, "Secret")
MUTATING_WEBHOOKS = Resource(
    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", False, "MutatingWebhookConfiguration"
)
POD_ENV = (
    ("XPUPOOL_POD_NAME", "metadata.name"),
    ("XPUPOOL_POD_NAMESPACE", "metadata.namespace"),
    ("XPUPOOL_POD_UID", "metadata.uid"),
)

PoolCheck = Literal["deny", "warn", "off"]


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    scheduler_name: str = SCHEDULER_NAME
    adopt_whole_card: bool = False
    pool_check: PoolCheck = "warn"
    excluded_namespaces: frozenset[str] = frozenset({"kube-system"})
    #: model nodes without an xpupool inventory from nvidia.com/gpu-style resources (the
    #: scheduler's --model-nodes-without-inventory; the pool check must see the same cards)
    guess_whole_cards: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """What the webhook answers: allowed or not, a message, warnings and JSONPatch operations."""

    allowed: bool
    message: str = ""
    patch: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    ours: bool = False  # the pod asked for vXPUs (mutated or refused)

    def response(self, uid: str) -> JsonDict:
        resp: JsonDict = {"uid": uid, "allowed": self.allowed}
        if not self.allowed:
            resp["status"] = {"code": 400, "reason": "BadRequest", "message": self.message}
        if self.patch:
            resp["patchType"] = "JSONPatch"
            resp["patch"] = base64.b64encode(json.dumps(list(self.patch)).encode()).decode()
        if self.warnings:
            resp["warnings"] = list(self.warnings)
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}


def _escape(key: str) -> str:
    """RFC 6901 JSON pointer escaping of one path segment."""
    return key.replace("~", "~0").replace("/", "~1")


def _card_resources(container: Mapping[str, Any], *, adopt_whole_card: bool) -> set[str]:
    res = container.get("resources") or {}
    names = set(res.get("limits") or {}) | set(res.get("requests") or {})
    ours = {n for n in names if n in OUR_RESOURCES or (n.startswith(f"{DOMAIN}/") and n not in WHOLE_CARD_RESOURCES)}
    if adopt_whole_card:
        ours |= {n for n in names if n in WHOLE_CARD_RESOURCES}
    else:
        ours |= {n for n in names if n in WHOLE_CARD_RESOURCES and n.startswith(f"{DOMAIN}/")}
    return ours


def normalized_request(request: Request) -> str:
    """The ``xpupool.io/request`` annotation value (schema version 1, compact, sorted keys)."""
    doc = {
        "v": REQUEST_SCHEMA_VERSION,
        "count": request.count,
        "shareMilli": request.share_milli,
        "deviceMemoryMiB": request.device_memory_mib,
        "deviceMemoryPercent": request.device_memory_pct,
        "vendor": request.vendor.value if request.vendor else None,
        "models": list(request.models),
        "exclusive": request.exclusive,
        "remote": request.remote.value,
        "remoteMbps": request.remote_mbps,
        "queue": request.queue,
        "podGroup": request.pod_group,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def admit_pod(
    review_request: Mapping[str, Any],
    *,
    settings: WebhookSettings,
    pool: Sequence[Node] | None,
    queues: QueueCatalogue | None = OPEN_CATALOGUE,
) -> Decision:
    """Decide on one AdmissionReview ``request`` (pure; see the module docstring).

    ``pool`` is the cached node list, ``None`` when not known yet (the pool check is skipped);
    ``queues`` the cached queue catalogue, ``None`` when not known yet (the queue check is
    skipped with a warning; the scheduler checks anyway).
    """
    kind = review_request.get("kind") or {}
    if kind.get("kind") != "Pod" or kind.get("group", "") != "" or review_request.get("operation") != "CREATE":
        return Decision(True)
    if review_request.get("subResource"):
        return Decision(True)
    namespace = str(review_request.get("namespace") or "")
    if namespace in settings.excluded_namespaces:
        return Decision(True)
    pod = review_request.get("object") or {}
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    containers = list(spec.get("containers") or [])
    wanting = [
        (i, c) for i, c in enumerate(containers) if _card_resources(c, adopt_whole_card=settings.adopt_whole_card)
    ]
    init_wanting = [
        c.get("name", "?")
        for c in spec.get("initContainers") or []
        if _card_resources(c, adopt_whole_card=settings.adopt_whole_card)
    ]
    if not wanting and not init_wanting:
        return Decision(True)

    pod_name = meta.get("name") or (meta.get("generateName", "") + "<generated>")
    problems: list[str] = []
    if init_wanting:
        problems.append(f"init containers cannot use vXPUs ({', '.join(init_wanting)}); request them in a container")
    privileged = [
        c.get("name", "?")
        for c in containers + list(spec.get("initContainers") or [])
        if (c.get("securityContext") or {}).get("privileged")
    ]
    if privileged:
        problems.append(
            f"privileged containers cannot share vXPUs (they could bypass the isolation shim): {', '.join(privileged)}"
        )
    if spec.get("nodeName"):
        problems.append(
            f"spec.nodeName is set ({spec['nodeName']}): vXPU pods must be placed by the "
            f"{settings.scheduler_name} scheduler; remove nodeName and use a nodeSelector"
        )
    scheduler = spec.get("schedulerName") or DEFAULT_SCHEDULER
    if scheduler not in (DEFAULT_SCHEDULER, settings.scheduler_name):
        problems.append(
            f"spec.schedulerName is {scheduler!r}; vXPU pods are scheduled by "
            f"{settings.scheduler_name!r} (leave schedulerName unset)"
        )
    parse_pod = {"metadata": {**meta, "namespace": namespace, "name": pod_name}, "spec": spec}
    parsed = pod_request(parse_pod)
    problems.extend(parsed.errors)
    warnings: list[str] = []
    request = parsed.request
    if request is not None and pool is not None and settings.pool_check != "off":
        impossible = validate_against_pool(request, pool)
        if settings.pool_check == "deny":
            problems.extend(impossible)
        else:
            warnings.extend(f"xpupool: {w} (the pod will stay Pending until such a node joins)" for w in impossible)
    queue_label: str | None = None
    if request is not None and queues is None:
        warnings.append("xpupool: the queue was not checked (queue list not loaded yet); the scheduler checks it")
    elif request is not None and queues is not None:
        choice = queues.resolve(namespace, meta.get("labels") or {})
        if choice.queue is None:
            problems.extend(f"queue: {reason}" for reason in choice.status.reasons)
        else:
            request = dataclasses.replace(request, queue=choice.queue)
            if choice.defaulted and queues.enforced:
                queue_label = choice.queue
    if problems or request is None:
        message = f"xpupool: pod {namespace}/{pod_name} cannot use vXPUs: " + "; ".join(problems)
        return Decision(False, message=message, ours=True)
    return Decision(
        True,
        patch=tuple(_patch(pod, wanting[0][0] if wanting else None, request, settings, queue_label)),
        warnings=tuple(warnings),
        ours=True,
    )


def _patch(
    pod: Mapping[str, Any], index: int | None, request: Request, settings: WebhookSettings, queue_label: str | None
) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    if spec.get("schedulerName") != settings.scheduler_name:
        op = "replace" if "schedulerName" in spec else "add"
        ops.append({"op": op, "path": "/spec/schedulerName", "value": settings.scheduler_name})
    container = (spec.get("containers") or [])[index] if index is not None else {}
    res = container.get("resources") or {}
    limits: dict[str, Any] = dict(res.get("limits") or {})
    requests: dict[str, Any] = dict(res.get("requests") or {})
    annotations = {ANN_REQUEST: normalized_request(request)}
    # Whole-card resources (adopt_whole_card) become xpupool.io/vxpu so that our device plugin, not
    # the vendor's, wires the cards the scheduler chose; exclusivity/vendor/model move to annotations.
    whole = sorted(k for k in set(limits) | set(requests) if k in WHOLE_CARD_RESOURCES)
    for key in whole:
        vendor, model = WHOLE_CARD_RESOURCES[key]
        annotations[ANN_EXCLUSIVE] = "true"
        annotations[ANN_VENDOR] = vendor.value
        if model:
            annotations[ANN_MODEL] = model
        for section in (limits, requests):
            if key in section:
                section[RES_VXPU] = section.pop(key)
    labels = {LABEL_MANAGED: "true", **({LABEL_QUEUE: queue_label} if queue_label else {})}
    for field_name, values in (("labels", labels), ("annotations", annotations)):
        current = meta.get(field_name)
        if current is None:
            ops.append({"op": "add", "path": f"/metadata/{field_name}", "value": values})
            continue
        for key, value in values.items():
            if current.get(key) != value:
                op = "replace" if key in current else "add"
                ops.append({"op": op, "path": f"/metadata/{field_name}/{_escape(key)}", "value": value})
    if index is None:
        return ops
    base = f"/spec/containers/{index}"
    for key, value in requests.items():
        if key in OUR_RESOURCES and key not in limits:
            limits[key] = value  # extended resources: limits are what counts; requests only is refused
    if limits != (res.get("limits") or {}) or requests != (res.get("requests") or {}):
        new_resources = {**res, "limits": limits}
        if requests:
            new_resources["requests"] = requests
        op = "replace" if "resources" in container else "add"
        ops.append({"op": op, "path": f"{base}/resources", "value": new_resources})
    env = container.get("env")
    present = {e.get("name") for e in env or []}
    wanted = [
        {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in POD_ENV if name not in present
    ]
    if wanted:
        if env is None:
            ops.append({"op": "add", "path": f"{base}/env", "value": wanted})
        else:
            ops.extend({"op": "add", "path": f"{base}/env/-", "value": e} for e in wanted)
    return ops


@dataclass
class WebhookStats:
    reviews: int = 0
    mutated: int = 0
    refused: int = 0
    dry_run: int = 0
    errors: int = 0


@dataclass
class WebhookState:
    settings: WebhookSettings = field(default_factory=WebhookSettings)
    pool: Callable[[], Sequence[Node] | None] = lambda: None
    queues: Callable[[], QueueCatalogue | None] = lambda: OPEN_CATALOGUE
    stats: WebhookStats = field(default_factory=WebhookStats)
    ready: Callable[[], bool] = lambda: True
    #: time to answer each review (exported by :mod:`xpupool.kube.webhook_metrics`)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


STATE_KEY: web.AppKey[WebhookState] = web.AppKey("xpupool_webhook_state", WebhookState)


async def _mutate(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    start = time.perf_counter()
    try:
        return await _answer(request, state)
    finally:
        state.latency.observe(time.perf_counter() - start)


async def _answer(request: web.Request, state: WebhookState) -> web.Response:
    try:
        review = await request.json()
        review_request = review["request"]
        uid = str(review_request["uid"])
    except (ValueError, KeyError, TypeError):
        state.stats.errors += 1
        return web.json_response({"message": "expected an admission.k8s.io/v1 AdmissionReview"}, status=400)
    decision = admit_pod(review_request, settings=state.settings, pool=state.pool(), queues=state.queues())
    if review_request.get("dryRun"):
        state.stats.dry_run += 1
    else:
        state.stats.reviews += 1
        if decision.ours and decision.allowed:
            state.stats.mutated += 1
        elif decision.ours:
            state.stats.refused += 1
            log.info("refused %s", decision.message)
    return web.json_response(decision.response(uid))


async def _healthz(request: web.Request) -> web.Response:
    ok = request.app[STATE_KEY].ready()
    return web.Response(status=200 if ok else 503, text="ok" if ok else "not ready")


def make_app(state: WebhookState) -> web.Application:
    """The webhook application: ``POST /mutate``, ``GET /healthz`` (liveness + readiness)."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[STATE_KEY] = state
    app.router.add_post("/mutate", _mutate)
    app.router.add_get("/healthz", _healthz)
    return app


class PoolCache:
    """The pool's nodes as core values, re-listed every ``interval_s`` (cached reads only on the
    admission path). ``nodes()`` is ``None`` until the first successful list."""

    def __init__(self, transport: Transport, *, interval_s: float = 30.0, guess_whole_cards: bool = False) -> None:
        self._transport = transport
        self._interval_s = interval_s
        self._guess = guess_whole_cards  # as the scheduler's --model-nodes-without-inventory
        self._nodes: list[Node] | None = None

    def nodes(self) -> list[Node] | None:
        return self._nodes

    async def refresh(self) -> None:
        items: list[JsonDict] = []
        token: str | None = None
        while True:
            page = await self._transport.list(NODES, limit=500, continue_token=token)
            items.extend(page.items)
            token = page.continue_token or None
            if token is None:
                break
        self._nodes = [node_model(n, guess_whole_cards=self._guess) for n in items]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # transport failure: keep the last list, retry next round
                log.warning("listing nodes for the pool check failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)


class QueueCache:
    """XPUQueues and namespaces, re-listed every ``interval_s`` into a :class:`QueueCatalogue`.

    ``catalogue()`` is ``None`` until the first successful list; when the XPUQueue CRD is not
    installed (404) it is the open catalogue (every label accepted). A failed list keeps the last
    catalogue (the scheduler re-checks every pod anyway)."""

    def __init__(self, transport: Transport, *, interval_s: float = 30.0) -> None:
        self._transport = transport
        self._interval_s = interval_s
        self._catalogue: QueueCatalogue | None = None

    def catalogue(self) -> QueueCatalogue | None:
        return self._catalogue

    async def _all(self, resource: Resource) -> list[JsonDict]:
        items: list[JsonDict] = []
        token: str | None = None
        while True:
            page = await self._transport.list(resource, limit=500, continue_token=token)
            items.extend(page.items)
            token = page.continue_token or None
            if token is None:
                return items

    async def refresh(self) -> None:
        try:
            queues = await self._all(XPUQUEUES)
        except ApiError as exc:
            if exc.status != 404:
                raise
            self._catalogue = OPEN_CATALOGUE
            return
        self._catalogue = QueueCatalogue.build(queues, await self._all(NAMESPACES))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # transport failure: keep the last catalogue, retry next round
                log.warning("listing queues for the queue check failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)


def _bundle_from_secret(secret: JsonDict | None) -> certs.CertBundle | None:
    data = (secret or {}).get("data") or {}
    try:
        return certs.CertBundle(*(base64.b64decode(data[k]) for k in ("ca.crt", "ca.key", "tls.crt", "tls.key")))
    except (KeyError, ValueError, TypeError):
        return None


class CertKeeper:
    """Keeps the webhook's certificates in a Secret, the CA in the webhook configuration's
    ``caBundle`` and the serving chain in :attr:`context`. Safe with several replicas: Secret
    writes are compare-and-swap (create, or replace with the read resourceVersion); a replica
    that loses the race adopts the winner's bundle."""

    def __init__(
        self,
        transport: Transport,
        *,
        namespace: str,
        secret_name: str,
        service: str,
        webhook_configuration: str,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        renew_before: dt.timedelta = certs.RENEW_BEFORE,
    ) -> None:
        self._t = transport
        self._ns = namespace
        self._secret = secret_name
        self._names = certs.service_dns_names(service, namespace)
        self._webhook_configuration = webhook_configuration
        self._now = now
        self._renew_before = renew_before
        self.context: certs.ReloadableServerContext | None = None
        self.bundle: certs.CertBundle | None = None
        self.last_action = ""

    async def _read(self) -> tuple[JsonDict | None, certs.CertBundle | None]:
        try:
            secret = await self._t.get(SECRETS, self._secret, namespace=self._ns)
        except ApiError as exc:
            if exc.status == 404:
                return None, None
            raise
        return secret, _bundle_from_secret(secret)

    async def sync(self) -> str:
        """One round: read, rotate if due, write (CAS), publish caBundle, reload. Returns the action."""
        for _ in range(3):
            secret, current = await self._read()
            result = certs.ensure_bundle(
                current, dns_names=self._names, now=self._now(), renew_before=self._renew_before
            )
            if result.action != "kept" or secret is None or current is None:
                data = {k: base64.b64encode(v).decode() for k, v in result.bundle.as_secret_data().items()}
                body: JsonDict = {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "Opaque",
                    "metadata": {
                        "name": self._secret,
                        "namespace": self._ns,
                        "labels": {"app.kubernetes.io/part-of": "xpupool"},
                    },
                    "data": data,
                }
                try:
                    if secret is None:
                        await self._t.create(SECRETS, body, namespace=self._ns)
                    else:
                        body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
                        await self._t.replace(SECRETS, self._secret, body, namespace=self._ns)
                except ApiError as exc:
                    if exc.status in (409, 422) or exc.reason in ("AlreadyExists", "Conflict"):
                        continue  # another replica wrote first: adopt its bundle on the next read
                    raise
                log.info("webhook certificates: %s (%s)", result.action, result.reason)
            old_ca = current.ca_cert_pem if current and current.ca_cert_pem != result.bundle.ca_cert_pem else b""
            await self._publish_ca(result.bundle.ca_cert_pem + old_ca)
            self._load(result.bundle)
            self.last_action = result.action
            return result.action
        raise RuntimeError("could not settle the webhook certificate Secret after 3 conflicts")

    async def _publish_ca(self, ca_bundle: bytes) -> None:
        config = await self._t.get(MUTATING_WEBHOOKS, self._webhook_configuration)
        encoded = base64.b64encode(ca_bundle).decode()
        ops = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": encoded}
            for i, hook in enumerate(config.get("webhooks") or [])
            if (hook.get("clientConfig") or {}).get("caBundle") != encoded
        ]
        if ops:
            await self._t.patch(MUTATING_WEBHOOKS, self._webhook_configuration, ops, patch_type="json")

    def _load(self, bundle: certs.CertBundle) -> None:
        if self.bundle == bundle and self.context is not None:
            return
        if self.context is None:
            self.context = certs.ReloadableServerContext(bundle.cert_pem, bundle.key_pem)
        else:
            self.context.load(bundle.cert_pem, bundle.key_pem)
        self.bundle = bundle

    async def run(self, stop: asyncio.Event, *, interval_s: float = 3600.0) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if stop.is_set():
                return
            try:
                await self.sync()
            except Exception as exc:  # transport failure: keep serving the current chain
                log.warning("certificate sync failed (retrying in %.0f s): %s", interval_s, exc)


async def serve(
    *,
    transport: Transport,
    settings: WebhookSettings,
    namespace: str,
    service: str,
    secret_name: str,
    webhook_configuration: str,
    port: int = 8443,
    host: str = "0.0.0.0",
    stop: asyncio.Event | None = None,
    state: WebhookState | None = None,
    metrics_port: int = 0,
) -> None:
    """Run the webhook until ``stop`` is set (default: until SIGTERM/SIGINT): certificates first
    (Secret + caBundle), then the pool cache, then HTTPS. Closes ``transport`` on the way out."""
    import signal

    try:
        keeper = CertKeeper(
            transport,
            namespace=namespace,
            secret_name=secret_name,
            service=service,
            webhook_configuration=webhook_configuration,
        )
        await keeper.sync()
        assert keeper.context is not None
        pool = PoolCache(transport, guess_whole_cards=settings.guess_whole_cards)
        queues = QueueCache(transport)
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        state = state or WebhookState()
        state.settings, state.pool, state.queues = settings, pool.nodes, queues.catalogue
        runner = web.AppRunner(make_app(state))
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=keeper.context.context).start()
        metrics_runner = None
        if metrics_port:  # plain HTTP, see xpupool.kube.webhook_metrics
            metrics_runner = web.AppRunner(metrics_app(WebhookCollector(state.stats, state.latency, pool.nodes)))
            await metrics_runner.setup()
            await web.TCPSite(metrics_runner, host, metrics_port).start()
        tasks = [asyncio.create_task(c.run(stop)) for c in (pool, queues, keeper)]
        try:
            await stop.wait()
        finally:
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()
            if metrics_runner is not None:
                await metrics_runner.cleanup()
    finally:
        await transport.close()


def main() -> None:
    """Entry point (``python -m xpupool.kube.webhook``); configuration from ``XPUPOOL_WEBHOOK_*``."""
    from xpupool.kube.transport import AiohttpTransport, KubeConfig

    logging.basicConfig(
        level=os.environ.get("XPUPOOL_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    env = os.environ
    pool_check = env.get("XPUPOOL_WEBHOOK_POOL_CHECK", "warn")
    if pool_check not in ("deny", "warn", "off"):
        raise SystemExit(f"XPUPOOL_WEBHOOK_POOL_CHECK must be deny, warn or off, got {pool_check!r}")
    namespace = env.get("XPUPOOL_NAMESPACE", "xpupool-system")
    settings = WebhookSettings(
        scheduler_name=env.get("XPUPOOL_SCHEDULER_NAME", SCHEDULER_NAME),
        adopt_whole_card=env.get("XPUPOOL_WEBHOOK_ADOPT_WHOLE_CARD", "false").lower() == "true",
        guess_whole_cards=env.get("XPUPOOL_MODEL_NODES_WITHOUT_INVENTORY", "false").lower() == "true",
        pool_check=pool_check,  # type: ignore[arg-type]
        excluded_namespaces=frozenset(
            {"kube-system", namespace, *filter(None, env.get("XPUPOOL_WEBHOOK_EXCLUDED_NAMESPACES", "").split(","))}
        ),
    )
    asyncio.run(
        serve(
            transport=AiohttpTransport(KubeConfig.load()),
            settings=settings,
            namespace=namespace,
            service=env.get("XPUPOOL_WEBHOOK_SERVICE", "xpupool-webhook"),
            secret_name=env.get("XPUPOOL_WEBHOOK_SECRET", "xpupool-webhook-tls"),
            webhook_configuration=env.get("XPUPOOL_WEBHOOK_CONFIGURATION", "xpupool"),
            port=int(env.get("XPUPOOL_WEBHOOK_PORT", "8443")),
            metrics_port=int(env.get("XPUPOOL_WEBHOOK_METRICS_PORT", "0")),
        )
    )


if __name__ == "__main__":
    main()
