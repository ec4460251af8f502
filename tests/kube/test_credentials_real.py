"""Credentials through the official ``kubernetes`` config loader, against the real apiserver: an
exec credential plugin (as EKS, GKE and AKS use) whose token the apiserver accepts and that is
re-run when its credential expires; the in-cluster service-account token re-read when the file
rotates (the next request carries the new one); a 401 reloads and retries once; a broken plugin
is a clear error. Who the apiserver thinks we are comes from a SelfSubjectReview."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from xpupool.kube import credentials
from xpupool.kube.credentials import CredentialError
from xpupool.kube.testing import ControlPlane
from xpupool.kube.transport import AiohttpTransport, ApiError, JsonDict, KubeConfig, Resource

pytestmark = pytest.mark.e2e_apiserver

REVIEWS = Resource("authentication.k8s.io", "v1", "selfsubjectreviews", False, "SelfSubjectReview")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", True, "ServiceAccount")

PLUGIN = '''
import datetime, json, os, sys
with open(os.environ["PLUGIN_RUNS"], "a") as f:
    f.write("run\\n")
info = json.loads(os.environ.get("KUBERNETES_EXEC_INFO", "{}"))
assert info.get("apiVersion") == "client.authentication.k8s.io/v1", info
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=float(sys.argv[2]))
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": sys.argv[1], "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
'''


async def whoami(transport: AiohttpTransport) -> str:
    review = await transport.create(REVIEWS, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return str(review["status"]["userInfo"]["username"])


def exec_kubeconfig(cp: ControlPlane, tmp_path: Path, *, token: str, lifetime_s: float, command: str = "") -> Path:
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    user: JsonDict = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": command or sys.executable,
                               "args": [str(script), token, str(lifetime_s)], "interactiveMode": "Never",
                               "provideClusterInfo": True,
                               "env": [{"name": "PLUGIN_RUNS", "value": str(tmp_path / "runs")}]}}
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "c", "cluster": {"server": cp.server, "certificate-authority": str(cp.ca_file)}}],
           "users": [{"name": "u", "user": user}],
           "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


async def test_exec_plugin_token_is_accepted_and_renewed_when_it_expires(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    path = exec_kubeconfig(control_plane, tmp_path, token=control_plane.token, lifetime_s=0)
    transport = AiohttpTransport(KubeConfig.from_file(path))
    try:
        assert await whoami(transport) == "xpupool-admin"
        runs_before = len((tmp_path / "runs").read_text().splitlines())
        creds = KubeConfig.from_file(path).credentials
        assert creds is not None
        creds.refresh()  # an expired credential (lifetime 0 s): the loader runs the plugin again
        assert len((tmp_path / "runs").read_text().splitlines()) > runs_before
    finally:
        await transport.close()
    (tmp_path / "x").mkdir()
    long_lived = exec_kubeconfig(control_plane, tmp_path / "x", token=control_plane.token, lifetime_s=3600)
    creds = KubeConfig.from_file(long_lived).credentials
    assert creds is not None
    runs = len((tmp_path / "x" / "runs").read_text().splitlines())
    creds.refresh()
    assert len((tmp_path / "x" / "runs").read_text().splitlines()) == runs  # still valid: not re-run


async def test_a_broken_exec_plugin_is_a_clear_error(control_plane: ControlPlane, tmp_path: Path) -> None:
    path = exec_kubeconfig(control_plane, tmp_path, token="t", lifetime_s=60, command=str(tmp_path / "missing-plugin"))
    with pytest.raises(CredentialError, match="missing-plugin"):
        KubeConfig.from_file(path)


async def test_in_cluster_token_rotation_is_used_by_the_next_request(
    control_plane: ControlPlane, transport: AiohttpTransport, namespace: str, tmp_path: Path
) -> None:
    await transport.create(SERVICE_ACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                              "metadata": {"name": "rotated"}}, namespace=namespace)
    grant = await _token_request(transport, namespace, "rotated")
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "ca.crt").write_bytes(Path(control_plane.ca_file).read_bytes())
    token = sa_dir / "token"
    token.write_text(control_plane.token)
    host, port = control_plane.server.removeprefix("https://").rsplit(":", 1)
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    creds = credentials.in_cluster(sa_dir, environ=env, refresh_every_s=0)
    pod_transport = AiohttpTransport(KubeConfig.from_credentials(creds))
    try:
        assert await whoami(pod_transport) == "xpupool-admin"
        # The kubelet rotates the projected token by swapping the file: the next request uses it.
        staged = sa_dir / "token.new"
        staged.write_text(grant)
        os.replace(staged, token)
        assert await whoami(pod_transport) == f"system:serviceaccount:{namespace}:rotated"
    finally:
        await pod_transport.close()


async def test_a_401_reloads_the_credential_and_retries_once(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    sa_dir = tmp_path / "sa"
    sa_dir.mkdir()
    (sa_dir / "ca.crt").write_bytes(Path(control_plane.ca_file).read_bytes())
    (sa_dir / "token").write_text("not-a-valid-token")
    host, port = control_plane.server.removeprefix("https://").rsplit(":", 1)
    creds = credentials.in_cluster(sa_dir, environ={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
                                   refresh_every_s=3600)  # no periodic check: only the 401 makes it reload
    pod_transport = AiohttpTransport(KubeConfig.from_credentials(creds))
    try:
        with pytest.raises(ApiError) as refused:
            await whoami(pod_transport)
        assert refused.value.status == 401
        (sa_dir / "token").write_text(control_plane.token)
        loads = creds.loads
        assert await whoami(pod_transport) == "xpupool-admin"  # 401 -> reload -> retry succeeds
        assert creds.loads == loads + 1
    finally:
        await pod_transport.close()


async def _token_request(transport: AiohttpTransport, namespace: str, account: str) -> str:
    token_request = Resource("", "v1", f"serviceaccounts/{account}/token", True, "TokenRequest")
    answer = await transport.create(
        token_request,
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
        namespace=namespace,
    )
    return str(answer["status"]["token"])
