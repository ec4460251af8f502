"""Session tokens for remote vXPUs: short-lived, Ed25519-signed, one allocation each.

Wire form (verified in C by ``native/remote/src/server/token.c`` with OpenSSL)::

    xpr1.<base64url(claims)>.<base64url(Ed25519 signature over "xpr1.<base64url(claims)>")>

``claims`` are ``key=value`` lines: ``v=1``, ``sub`` (tenant), ``alloc`` (allocation id), ``card``
(card UUID), ``node`` (the daemon's node name: the token's audience), ``exp`` and ``nbf`` (Unix
seconds) and ``jti`` (random). A daemon refuses a token that is unsigned by one of its keys, expired,
not yet valid, for another node, or for a card it does not serve, before any driver call.

Contracts: :func:`mint` never reads the clock (``now_s`` is passed in); :func:`verify` mirrors the C
verifier for tests and tools and returns a :class:`Verdict` (a value, not an exception).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = "xpr1."
MAX_TOKEN_BYTES = 4096
CLOCK_SKEW_S = 30
_FIELD_MAX = {"sub": 127, "alloc": 127, "card": 95, "node": 127}


@dataclasses.dataclass(frozen=True, slots=True)
class Claims:
    """What one token allows: ``tenant`` may use allocation ``alloc`` on ``card`` of ``node``."""

    tenant: str
    alloc: str
    card: str
    node: str
    exp_s: int
    nbf_s: int
    jti: str

    def encode(self) -> bytes:
        for name, value in (("sub", self.tenant), ("alloc", self.alloc), ("card", self.card), ("node", self.node)):
            if not value and name != "sub":
                raise ValueError(f"token claim {name} is empty")
            if len(value) > _FIELD_MAX[name] or any(c in value for c in "\n\r\0") or not value.isprintable():
                raise ValueError(f"token claim {name}={value!r} is too long or not printable")
        lines = ["v=1", f"sub={self.tenant}", f"alloc={self.alloc}", f"card={self.card}", f"node={self.node}",
                 f"exp={self.exp_s}", f"nbf={self.nbf_s}", f"jti={self.jti}"]
        return ("\n".join(lines) + "\n").encode()


class Verdict(enum.StrEnum):
    OK = "ok"
    MALFORMED = "malformed token"
    BAD_SIGNATURE = "token signature not valid for this daemon"
    EXPIRED = "token expired"
    NOT_YET_VALID = "token not yet valid"
    WRONG_NODE = "token issued for another node"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def mint(key: Ed25519PrivateKey, *, tenant: str, alloc: str, card: str, node: str, now_s: int, ttl_s: int) -> str:
    """A token for one allocation, valid from ``now_s`` for ``ttl_s`` seconds."""
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    claims = Claims(tenant=tenant, alloc=alloc, card=card, node=node, exp_s=now_s + ttl_s, nbf_s=now_s,
                    jti=secrets.token_hex(8))
    signed = PREFIX + _b64(claims.encode())
    token = signed + "." + _b64(key.sign(signed.encode()))
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError("token too long")
    return token


def verify(token: str, keys: Sequence[Ed25519PublicKey], *, now_s: int, node: str) -> tuple[Verdict, Claims | None]:
    """The daemon's checks, in its order: form, signature, claims, time, audience."""
    if len(token) > MAX_TOKEN_BYTES or not token.startswith(PREFIX) or token.count(".") != 2:
        return Verdict.MALFORMED, None
    signed, _, sig_text = token.rpartition(".")
    try:
        sig = _unb64(sig_text)
        body = _unb64(signed[len(PREFIX):]).decode()
    except (ValueError, UnicodeDecodeError):
        return Verdict.MALFORMED, None
    if len(sig) != 64:
        return Verdict.MALFORMED, None
    for k in keys:
        try:
            k.verify(sig, signed.encode())
            break
        except InvalidSignature:
            continue
    else:
        return Verdict.BAD_SIGNATURE, None
    fields = dict(line.split("=", 1) for line in body.splitlines() if "=" in line)
    try:
        claims = Claims(tenant=fields.get("sub", ""), alloc=fields["alloc"], card=fields["card"], node=fields["node"],
                        exp_s=int(fields["exp"]), nbf_s=int(fields.get("nbf", "0")), jti=fields["jti"])
    except (KeyError, ValueError):
        return Verdict.MALFORMED, None
    if fields.get("v") != "1":
        return Verdict.MALFORMED, None
    if now_s >= claims.exp_s:
        return Verdict.EXPIRED, claims
    if claims.nbf_s > now_s + CLOCK_SKEW_S:
        return Verdict.NOT_YET_VALID, claims
    if claims.node != node:
        return Verdict.WRONG_NODE, claims
    return Verdict.OK, claims
