"""Where the apiserver is and how to prove who we are: the official ``kubernetes`` config loader.

Why that library: the kubeconfig is a credential format with many forms, and clusters in the
wild use all of them — exec credential plugins (EKS ``aws eks get-token``, GKE
``gke-gcloud-auth-plugin``, AKS ``kubelogin``; ``client.authentication.k8s.io`` v1beta1 and v1,
tokens *or* client certificates, ``expirationTimestamp``, ``KUBERNETES_EXEC_INFO``), OIDC
``auth-provider`` with refresh tokens, token files, client certificates (files or ``-data``),
basic auth. The official ``kubernetes`` package's loader (``kubernetes.config``) implements all
of these and is maintained with Kubernetes itself; lightkube 1.0's loader refuses exec
``apiVersion: client.authentication.k8s.io/v1`` and every ``auth-provider`` (OIDC), ignores an
exec credential's expiry (it re-runs the plugin only after a 401) and ships its auth as
``httpx.Auth`` objects our aiohttp transport cannot use. So: the official loader for
*credentials*, our aiohttp transport for *requests* (see :mod:`xpupool.kube.transport`).

How the transport uses a :class:`Credentials`:

* :meth:`Credentials.header` is the ``Authorization`` value to send (``None``: client
  certificates or no auth); cheap, never blocks.
* :meth:`Credentials.due` says a refresh is due (at most every ``refresh_every_s``, default 1 s);
  the transport then runs :meth:`Credentials.refresh` in a worker thread (an exec plugin is a
  subprocess and must not stall the event loop). A refresh asks the loader (it re-runs an exec
  plugin or refreshes OIDC when the credential expired) and, for a token file (the in-cluster
  service-account token that the kubelet rotates, or a kubeconfig ``tokenFile``), re-reads the
  file when it changed (inode, size or mtime) — so the request after a rotation carries the new
  token.
* After a 401 the transport calls :meth:`Credentials.invalidate` (reload everything: re-run
  the plugin, re-read the file) and retries the request once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class CredentialError(Exception):
    """The kubeconfig or the in-cluster files do not give a usable endpoint or credential."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the apiserver is and how to verify it (from the loader)."""

    server: str
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    verify: bool = True
    tls_server_name: str | None = None


def _file_id(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Credentials:
    """A credential source backed by one ``kubernetes.client.Configuration`` (thread-safe).

    ``load`` fills a fresh ``Configuration`` (it is one of the official loader's entry points);
    ``token_file`` is the file the credential comes from, if any (watched for rotation).
    """

    def __init__(
        self,
        load: Callable[[Any], None],
        *,
        token_file: Path | None = None,
        refresh_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._token_file = token_file
        self._refresh_every_s = refresh_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._config: Any = None
        self._header: str | None = None
        self._file_id: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self.loads = 0
        self.invalidate()

    # ------------------------------------------------------------------ what the transport reads
    @property
    def endpoint(self) -> Endpoint:
        cfg = self._config
        return Endpoint(
            server=str(cfg.host).rstrip("/"),
            ca_file=cfg.ssl_ca_cert or None,
            client_cert_file=cfg.cert_file or None,
            client_key_file=cfg.key_file or None,
            verify=bool(cfg.verify_ssl),
            tls_server_name=getattr(cfg, "tls_server_name", None) or None,
        )

    def header(self) -> str | None:
        return self._header

    def due(self) -> bool:
        return self._clock() - self._checked_at >= self._refresh_every_s

    # ------------------------------------------------------------------ blocking: run in a thread
    def refresh(self) -> None:
        """Let the loader renew an expired credential; reload when the token file changed."""
        with self._lock:
            self._checked_at = self._clock()
            if self._token_file is not None and _file_id(self._token_file) != self._file_id:
                self._reload()
                return
            hook = getattr(self._config, "refresh_api_key_hook", None)
            if hook is not None:
                hook(self._config)
            self._header = self._read_header()

    def invalidate(self) -> None:
        """Reload from scratch (after a 401, or at start)."""
        with self._lock:
            self._checked_at = self._clock()
            self._reload()

    def _reload(self) -> None:
        from kubernetes.client import Configuration

        config = Configuration()
        self._file_id = _file_id(self._token_file)
        try:
            self._load(config)
        except Exception as exc:  # the loader raises ConfigException, OSError, KeyError...
            raise CredentialError(str(exc)) from exc
        self._config = config
        self._header = self._read_header()
        self.loads += 1

    def _read_header(self) -> str | None:
        value = (self._config.api_key or {}).get("BearerToken")
        return str(value) if value else None


def from_kubeconfig(path: str | os.PathLike[str], *, context: str | None = None,
                    refresh_every_s: float = 1.0) -> Credentials:
    """Credentials of ``context`` (default: current) of the kubeconfig at ``path``."""
    import yaml
    from kubernetes.config import kube_config

    source = Path(path)
    try:
        doc = yaml.safe_load(source.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CredentialError(f"kubeconfig {source}: {exc}") from exc
    token_file = _token_file_of(doc, context, source.parent)

    def load(config: Any) -> None:
        kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(source), context=context, client_configuration=config, persist_config=False
        )

    creds = Credentials(load, token_file=token_file, refresh_every_s=refresh_every_s)
    user = _user_of(doc, context)
    if creds.header() is None and not creds.endpoint.client_cert_file and user.get("exec"):
        command = user["exec"].get("command", "?")
        raise CredentialError(f"the exec credential plugin {command!r} gave no token or certificate "
                              "(its error is in the log above)")
    return creds


def _user_of(doc: dict[str, Any], context: str | None) -> dict[str, Any]:
    name = context or doc.get("current-context")
    contexts = {c.get("name"): c.get("context") or {} for c in doc.get("contexts") or []}
    user_name = contexts.get(name, {}).get("user")
    users = {u.get("name"): u.get("user") or {} for u in doc.get("users") or []}
    return dict(users.get(user_name, {}))


def _token_file_of(doc: dict[str, Any], context: str | None, base: Path) -> Path | None:
    token_file = _user_of(doc, context).get("tokenFile")
    if not token_file:
        return None
    path = Path(str(token_file))
    return path if path.is_absolute() else base / path


def in_cluster(directory: Path = SERVICE_ACCOUNT_DIR, *, environ: dict[str, str] | None = None,
               refresh_every_s: float = 1.0) -> Credentials:
    """The pod's service account: ``KUBERNETES_SERVICE_HOST/PORT``, ``token`` and ``ca.crt`` in
    ``directory``; the token is re-read when the kubelet rotates it."""
    from kubernetes.config import incluster_config

    env = dict(os.environ if environ is None else environ)

    def load(config: Any) -> None:
        loader = incluster_config.InClusterConfigLoader(  # type: ignore[no-untyped-call]
            token_filename=str(directory / "token"), cert_filename=str(directory / "ca.crt"), environ=env
        )
        loader.load_and_set(config)  # type: ignore[no-untyped-call]

    return Credentials(load, token_file=directory / "token", refresh_every_s=refresh_every_s)
