"""Our own asyncio informer: list, then watch from the list's resourceVersion, forever.

Data flow::

    list (paged) --> store (+ indexes) --> handlers(ADDED/MODIFIED/DELETED, old, new)
         ^                 ^
         |                 +-- watch events (RV advanced on every event, BOOKMARK included)
         +-- 410 Gone (HTTP or ERROR event): relist, diff against the store, synthesise events

Invariants:
  * ``resource_version`` is advanced *before* handlers run, so a crash-free resume never replays
    or skips an event;
  * after a relist the store equals the list: objects missing from it produce DELETED (deletes
    that happened during a watch gap are never lost), changed RVs produce MODIFIED;
  * handlers are synchronous, run in the event loop, must not block, and must not mutate the
    objects they receive (the store shares them);
  * :attr:`synced` is set once the first full list is in the store; consumers wait on it.

Disconnects and timeouts resume from the last RV after a jittered backoff; only 410 relists.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from xpupool.kube.metrics import METRICS
from xpupool.kube.transport import ApiError, JsonDict, Resource, Transport, TransportError

log = logging.getLogger(__name__)

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
Handler = Callable[[str, JsonDict | None, JsonDict | None], None]
IndexFunc = Callable[[JsonDict], Iterable[str]]


def object_key(obj: JsonDict) -> str:
    """``namespace/name`` for namespaced objects, ``name`` otherwise."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


class Informer:
    """Keeps an in-memory copy of one resource (optionally filtered by selectors) up to date.

    ``run()`` never returns unless cancelled. ``sleep`` is injected so tests can fast-forward.
    """

    def __init__(
        self,
        transport: Transport,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        watch_timeout_s: int = 300,
        backoff_s: tuple[float, float] = (0.2, 10.0),
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.transport = transport
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self._backoff = backoff_s
        self._sleep = sleep
        self._rng = rng or random.Random(0)
        self.store: dict[str, JsonDict] = {}
        #: Last resourceVersion seen (list or event). Exposed as a test seam: setting it to an
        #: old value before ``run()`` resumes forces the 410 path.
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.relists = 0
        self._handlers: list[Handler] = []
        self._index_funcs: dict[str, IndexFunc] = {}
        self._indexes: dict[str, dict[str, set[str]]] = {}

    # -- consumers -------------------------------------------------------------------------
    def add_handler(self, handler: Handler) -> None:
        """Register ``handler(type, old, new)``; called for every change after it is applied."""
        self._handlers.append(handler)

    def add_index(self, name: str, func: IndexFunc) -> None:
        """Maintain ``index(name, value)`` -> keys of objects for which ``func`` yields ``value``."""
        self._index_funcs[name] = func
        idx: dict[str, set[str]] = {}
        for key, obj in self.store.items():
            for value in func(obj):
                idx.setdefault(value, set()).add(key)
        self._indexes[name] = idx

    def index(self, name: str, value: str) -> list[JsonDict]:
        return [self.store[k] for k in self._indexes[name].get(value, ()) if k in self.store]

    @property
    def has_synced(self) -> bool:
        return self.synced.is_set()

    # -- store -----------------------------------------------------------------------------
    def _apply(self, etype: str, obj: JsonDict) -> None:
        key = object_key(obj)
        old = self.store.get(key)
        if etype == DELETED:
            if old is None:
                return
            del self.store[key]
            self._unindex(key, old)
            new: JsonDict | None = None
        else:
            if old is not None:
                self._unindex(key, old)
            self.store[key] = obj
            self._reindex(key, obj)
            new = obj
            etype = ADDED if old is None else MODIFIED
        METRICS.informer_events.labels(self.resource.plural, etype).inc()
        for handler in self._handlers:
            try:
                handler(etype, old, new)
            except Exception:  # a broken handler must not kill the informer
                log.exception("informer handler failed for %s %s", etype, key)

    def _reindex(self, key: str, obj: JsonDict) -> None:
        for name, func in self._index_funcs.items():
            idx = self._indexes[name]
            for value in func(obj):
                idx.setdefault(value, set()).add(key)

    def _unindex(self, key: str, obj: JsonDict) -> None:
        for name, func in self._index_funcs.items():
            idx = self._indexes[name]
            for value in func(obj):
                keys = idx.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del idx[value]

    # -- list / watch ----------------------------------------------------------------------
    async def _list_all(self) -> tuple[list[JsonDict], str]:
        items: list[JsonDict] = []
        token: str | None = None
        rv = ""
        while True:
            page = await self.transport.list(
                self.resource,
                namespace=self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
                limit=self.page_size,
                continue_token=token,
            )
            items.extend(page.items)
            rv = rv or page.resource_version  # the first page's RV is the snapshot's
            if not page.continue_token:
                return items, page.resource_version or rv
            token = page.continue_token

    async def relist(self) -> None:
        """Full list; replace the store, synthesising events for every difference."""
        items, rv = await self._list_all()
        self.relists += 1
        METRICS.informer_relists.labels(self.resource.plural).inc()
        fresh = {object_key(o): o for o in items}
        self.resource_version = rv
        for key, old in list(self.store.items()):
            if key not in fresh:
                self._apply(DELETED, old)
        for key, obj in fresh.items():
            known = self.store.get(key)
            known_rv = (known or {}).get("metadata", {}).get("resourceVersion")
            if known is None or known_rv != obj.get("metadata", {}).get("resourceVersion"):
                self._apply(ADDED if known is None else MODIFIED, obj)
        self.synced.set()

    async def run(self) -> None:
        """List (unless resuming from ``resource_version``), then watch; relist on 410 only."""
        failures = 0
        need_list = not self.resource_version
        while True:
            try:
                if need_list:
                    await self.relist()
                    need_list = False
                gone = await self._watch_once()
                failures = 0
                if gone:
                    need_list = True
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status == 410:
                    need_list = True
                    continue
                failures += 1
                log.warning("%s informer: %s", self.resource.plural, exc)
                await self._pause(failures)
            except (TransportError, ValueError) as exc:
                failures += 1
                log.warning("%s informer: %s", self.resource.plural, exc)
                await self._pause(failures)

    async def _pause(self, failures: int) -> None:
        low, high = self._backoff
        delay = min(high, low * 2 ** min(failures, 10))
        await self._sleep(delay * (0.5 + self._rng.random()))

    async def _watch_once(self) -> bool:
        """One watch connection; returns True when the RV expired (relist needed)."""
        async for event in self.transport.watch(
            self.resource,
            resource_version=self.resource_version,
            namespace=self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            timeout_s=self.watch_timeout_s,
        ):
            obj = event.object
            if event.type == "ERROR":
                code = obj.get("code")
                log.info("%s watch error event: %s", self.resource.plural, obj.get("message"))
                if code == 410:
                    return True
                raise ApiError(int(code or 500), str(obj.get("reason", "")), str(obj.get("message", "")), obj)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = str(rv)
            if event.type == "BOOKMARK":
                continue
            self._apply(event.type, obj)
        return False
