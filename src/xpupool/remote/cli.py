"""``xpupool remote``: try remote vXPUs without Kubernetes.

On the GPU machine::

    xpupool remote daemon --card GPU-<uuid> --listen 0.0.0.0:7070       # keys and TLS made once
    xpupool remote token --card GPU-<uuid> --mem-mib 8192 --share 50    # grant a slice, print a token

On the CPU-only machine (copy the CA file ``ca.pem`` from the daemon's state directory)::

    xpupool remote run --endpoint gpu-host:7070 --token <token> --ca ca.pem -- python app.py

``--test-double`` runs the daemon on the fake libcuda test double (no GPU: a CPU-only try-out of
the wire, not of CUDA).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

# the daemon, token and TLS modules (cryptography) load inside the commands: `xpupool` starts fast
app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Remote vXPUs: run CUDA programs on a GPU elsewhere (daemon, token, run).")


def _default_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "xpupool" / "remote"


StateDir = Annotated[Path, typer.Option(help="daemon state: keys, TLS files, sockets, regions")]
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_ttl(text: str) -> int:
    unit = text[-1:] if text[-1:] in _TTL_UNITS else "s"
    number = text[:-1] if text[-1:] in _TTL_UNITS else text
    try:
        value = int(number) * _TTL_UNITS[unit]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 30m, 12h") from None
    if value <= 0:
        raise typer.BadParameter("the token lifetime must be positive")
    return value


@app.command()
def daemon(
    card: Annotated[list[str], typer.Option(help="card UUID[=CUDA_VISIBLE_DEVICES value] this daemon serves")] = [],  # noqa: B006
    listen: Annotated[str, typer.Option(help="TCP address (TLS)")] = "0.0.0.0:7070",
    host: Annotated[list[str], typer.Option(help="names/IPs clients use (server certificate)")] = [],  # noqa: B006
    node: Annotated[str, typer.Option(help="node name (token audience)")] = "",
    state_dir: StateDir = _default_state(),  # noqa: B008
    shim: Annotated[Path | None, typer.Option(help="libxpushim.so loaded in every worker")] = None,
    insecure_plaintext: Annotated[bool, typer.Option(help="no TLS (isolated networks only)")] = False,
    test_double: Annotated[bool, typer.Option(help="serve the fake libcuda test double (no GPU)")] = False,
    idle_timeout_s: Annotated[int, typer.Option(help="end a silent client's session after this")] = 10,
    all_cards: Annotated[bool, typer.Option(help="serve every NVIDIA card NVML lists")] = False,
) -> None:
    """Run xpu-remoted in the foreground (Ctrl-C stops it and ends every session)."""
    from xpupool.remote import daemon as d
    from xpupool.remote.testing import FAKE_CARD_UUID

    node = node or socket.gethostname()
    hosts = host or [socket.gethostname(), "localhost", "127.0.0.1"]
    cards = [d.Card(*c.split("=", 1)) if "=" in c else d.Card(c) for c in card]
    if all_cards:
        cards += _nvml_cards()
    if test_double:
        cards = cards or [d.Card(FAKE_CARD_UUID, "0")]
    if not cards:
        raise typer.BadParameter("give at least one --card UUID (nvidia-smi -L lists them), or --test-double")
    state = d.prepare_state(state_dir, hosts=hosts, now=dt.datetime.now(dt.UTC))
    cfg = d.DaemonConfig(state=state, node=node, cards=tuple(cards), listen=listen, tls=not insecure_plaintext,
                         shim=shim or d.shim_library(), idle_timeout_ms=idle_timeout_s * 1000)
    env = dict(os.environ)
    if test_double:
        env["LD_LIBRARY_PATH"] = str(d.native_dir() / "testdoubles")
    argv = cfg.argv(d.daemon_binary())
    typer.echo(f"state: {state.root}  (CA for clients: {state.ca_cert})", err=True)
    typer.echo(f"mint a token: xpupool remote token --state-dir {state.root} --node {node} --card {cards[0].uuid}",
               err=True)
    os.execve(argv[0], argv, env)


def _nvml_cards() -> list[Any]:
    """Every card NVML lists, selected in workers by UUID (CUDA_VISIBLE_DEVICES accepts UUIDs)."""
    import pynvml

    from xpupool.remote import daemon as d

    pynvml.nvmlInit()
    try:
        uuids = [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                 for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()
    return [d.Card(str(u), str(u)) for u in uuids]


@app.command()
def token(
    card: Annotated[str, typer.Option(help="card UUID the session may use (default: the test double's)")] = "",
    alloc: Annotated[str, typer.Option(help="allocation id (default: random)")] = "",
    tenant: Annotated[str, typer.Option(help="tenant name recorded in metrics")] = "cli",
    ttl: Annotated[str, typer.Option(help="token lifetime (90s, 30m, 12h)")] = "12h",
    mem_mib: Annotated[int, typer.Option(help="memory quota of the slice (0: no quota)")] = 0,
    share: Annotated[int, typer.Option(help="compute share of the slice in percent (0: no limit)")] = 0,
    node: Annotated[str, typer.Option(help="the daemon's node name")] = "",
    state_dir: StateDir = _default_state(),  # noqa: B008
    env: Annotated[bool, typer.Option(help="print shell export lines instead of the token")] = False,
) -> None:
    """Grant a slice on the local daemon and print a session token for it."""
    from xpupool.agent import shim_region as sr
    from xpupool.remote import daemon as d
    from xpupool.remote import tokens
    from xpupool.remote.testing import FAKE_CARD_UUID

    card = card or FAKE_CARD_UUID
    state = d.StateFiles(state_dir)
    if not state.signing_key.exists():
        raise typer.BadParameter(f"no daemon state in {state_dir}: start `xpupool remote daemon` first")
    if not 0 <= share <= 100 or mem_mib < 0:
        raise typer.BadParameter("--share is 0..100 and --mem-mib is not negative")
    alloc = alloc or f"cli-{secrets.token_hex(4)}"
    region: Path | None = None
    if mem_mib or share:
        region = state.regions / alloc
        sr.ShimRegion.create(region, [sr.DeviceConfig(uuid=card, mem_limit_bytes=mem_mib * 1024 * 1024,
                                                      share_request_bp=share * 100, share_limit_bp=share * 100)],
                             container_key=int.from_bytes(secrets.token_bytes(6), "big") or 1).close()
    try:
        d.Control(state.control).grant(alloc=alloc, card=card, region=region, tenant=tenant)
    except OSError as e:
        raise typer.BadParameter(f"the daemon's control socket {state.control} does not answer: {e}") from None
    tok = tokens.mint(tokens.load_signing_key(state.signing_key), tenant=tenant, alloc=alloc, card=card,
                      node=node or socket.gethostname(), now_s=int(time.time()), ttl_s=_parse_ttl(ttl))
    if env:
        typer.echo(f"export XPUPOOL_REMOTE_TOKEN={tok}\nexport XPUPOOL_REMOTE_CA={state.ca_cert}")
    else:
        typer.echo(tok)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    endpoint: Annotated[str, typer.Option(help="daemon HOST:PORT, or unix:/path")],
    token: Annotated[str, typer.Option(help="session token (or --token-file)")] = "",
    token_file: Annotated[Path | None, typer.Option(help="file holding the session token")] = None,
    ca: Annotated[Path | None, typer.Option(help="CA bundle that signed the daemon's certificate")] = None,
    server_name: Annotated[str, typer.Option(help="name in the daemon's certificate (default: HOST)")] = "",
    insecure_plaintext: Annotated[bool, typer.Option(help="no TLS (isolated networks only)")] = False,
) -> None:
    """Run a program (after --) with its CUDA calls going to the remote vXPU."""
    from xpupool.remote import daemon as d
    argv = list(ctx.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise typer.BadParameter("give the program to run after --")
    if not token and not token_file:
        raise typer.BadParameter("give --token or --token-file")
    if not endpoint.startswith("unix:") and not ca and not insecure_plaintext:
        raise typer.BadParameter("TCP needs --ca (the daemon's ca.pem), or --insecure-plaintext on an isolated network")
    env = dict(os.environ)
    lib = str(d.client_lib_dir())
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env["XPUPOOL_REMOTE_ENDPOINT"] = endpoint
    if token:
        env["XPUPOOL_REMOTE_TOKEN"] = token
    if token_file:
        env["XPUPOOL_REMOTE_TOKEN_FILE"] = str(token_file)
    if ca:
        env["XPUPOOL_REMOTE_CA"] = str(ca)
    if server_name:
        env["XPUPOOL_REMOTE_SERVER_NAME"] = server_name
    if insecure_plaintext:
        env["XPUPOOL_REMOTE_INSECURE"] = "1"
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        typer.echo(f"cannot run {argv[0]}: {e}", err=True)
        sys.exit(127)


@app.command()
def sessions(state_dir: StateDir = _default_state()) -> None:  # noqa: B008
    """Live sessions of the local daemon."""
    from xpupool.remote import daemon as d
    rows = d.Control(d.StateFiles(state_dir).control).sessions()
    typer.echo(f"{'SESSION':>10} {'PID':>7} {'STATE':9} {'ALLOC':20} {'TENANT':16} {'CALLS':>9} {'GPU MiB':>8}")
    for r in rows:
        typer.echo(f"{r.session:>10} {r.pid:>7} {r.state:9} {r.alloc[:20]:20} {r.tenant[:16]:16} {r.calls:>9} "
                   f"{r.gpu_mem_bytes >> 20:>8}")


@app.command()
def metrics(state_dir: StateDir = _default_state()) -> None:  # noqa: B008
    """The local daemon's Prometheus metrics."""
    from xpupool.remote import daemon as d
    typer.echo(d.Control(d.StateFiles(state_dir).control).metrics(), nl=False)
