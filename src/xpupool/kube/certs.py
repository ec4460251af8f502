"""Webhook TLS: a private CA and a serving certificate, generated with ``cryptography``.

Contracts:

* :func:`new_bundle` makes a CA (self-signed, ``CA:true``, ``keyCertSign``) and a serving
  certificate signed by it with SANs :func:`service_dns_names` (``<svc>``, ``<svc>.<ns>``,
  ``<svc>.<ns>.svc``, ``<svc>.<ns>.svc.cluster.local``) plus any extra DNS names / IP addresses;
* :func:`ensure_bundle` is the rotation policy, a pure function of (bundle, names, now): it
  returns the bundle unchanged while both certificates are valid for more than ``renew_before``
  and the SANs match; re-issues only the serving certificate (same CA, so the ``caBundle`` in the
  webhook configurations stays valid) when it is close to expiry or its SANs changed; and makes a
  new CA + serving certificate when the CA itself is close to expiry or missing;
* :class:`ReloadableServerContext` owns one ``ssl.SSLContext``; :meth:`~ReloadableServerContext.load`
  loads a new chain into the *same* context, so new TLS handshakes use it while the server keeps
  running (existing connections keep their session).

Keys are ECDSA P-256 (small, fast handshakes; accepted by the apiserver's webhook client). Time is
always passed in (``now``), never read here, so rotation is tested without waiting.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
SERVING_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clock skew between nodes


@dataclass(frozen=True, slots=True)
class CertBundle:
    """PEM-encoded CA and serving certificate with their keys (what the webhook Secret stores)."""

    ca_cert_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def as_secret_data(self) -> dict[str, bytes]:
        """Keys of a ``kubernetes.io/tls`` Secret plus the CA (``ca.crt``, ``ca.key``)."""
        return {
            "tls.crt": self.cert_pem,
            "tls.key": self.key_pem,
            "ca.crt": self.ca_cert_pem,
            "ca.key": self.ca_key_pem,
        }


def service_dns_names(service: str, namespace: str) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_ca(*, common_name: str, now: dt.datetime, validity: dt.timedelta = CA_VALIDITY) -> tuple[bytes, bytes]:
    """A self-signed CA: (cert PEM, key PEM)."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def new_serving_cert(
    *,
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    now: dt.datetime,
    validity: dt.timedelta = SERVING_VALIDITY,
) -> tuple[bytes, bytes]:
    """A serving certificate signed by the CA: (cert PEM, key PEM). The first DNS name is the CN."""
    if not dns_names and not ip_addresses:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an ECDSA key")
    key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(dns_names) or list(ip_addresses))[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def new_bundle(
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    now: dt.datetime,
    ca_common_name: str = "xpupool-webhook-ca",
) -> CertBundle:
    ca_cert, ca_key = new_ca(common_name=ca_common_name, now=now)
    cert, key = new_serving_cert(
        ca_cert_pem=ca_cert, ca_key_pem=ca_key, dns_names=dns_names, ip_addresses=ip_addresses, now=now
    )
    return CertBundle(ca_cert, ca_key, cert, key)


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(ext.get_values_for_type(x509.DNSName)), {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}


@dataclass(frozen=True, slots=True)
class EnsureResult:
    bundle: CertBundle
    action: str  # "kept", "reissued-serving", "new-ca"
    reason: str = ""


def ensure_bundle(
    bundle: CertBundle | None,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    now: dt.datetime,
    renew_before: dt.timedelta = RENEW_BEFORE,
) -> EnsureResult:
    """The bundle to serve with now (rotation policy: see the module docstring)."""
    if bundle is None:
        return EnsureResult(new_bundle(dns_names=dns_names, ip_addresses=ip_addresses, now=now), "new-ca", "no bundle")
    try:
        ca = x509.load_pem_x509_certificate(bundle.ca_cert_pem)
        serving = x509.load_pem_x509_certificate(bundle.cert_pem)
    except ValueError as exc:
        return EnsureResult(
            new_bundle(dns_names=dns_names, ip_addresses=ip_addresses, now=now),
            "new-ca",
            f"unreadable certificate: {exc}",
        )
    if ca.not_valid_after_utc - now <= renew_before or ca.not_valid_before_utc > now:
        return EnsureResult(
            new_bundle(dns_names=dns_names, ip_addresses=ip_addresses, now=now),
            "new-ca",
            f"CA expires {ca.not_valid_after_utc.isoformat()}",
        )
    reason = ""
    if serving.not_valid_after_utc - now <= renew_before or serving.not_valid_before_utc > now:
        reason = f"serving certificate expires {serving.not_valid_after_utc.isoformat()}"
    elif _sans(serving) != (set(dns_names), set(ip_addresses)):
        reason = "serving certificate names changed"
    elif serving.issuer != ca.subject:
        reason = "serving certificate not issued by the CA"
    if not reason:
        return EnsureResult(bundle, "kept")
    cert, key = new_serving_cert(
        ca_cert_pem=bundle.ca_cert_pem,
        ca_key_pem=bundle.ca_key_pem,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        now=now,
    )
    return EnsureResult(CertBundle(bundle.ca_cert_pem, bundle.ca_key_pem, cert, key), "reissued-serving", reason)


def not_after(cert_pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


class ReloadableServerContext:
    """One server ``SSLContext`` (TLS 1.2+) whose certificate chain can be replaced in place."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.loads = 0
        self.load(cert_pem, key_pem)

    def load(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Load a new chain; raises ``ssl.SSLError`` (and keeps the old chain) if it is invalid."""
        # load_cert_chain reads files only; the key never leaves a private temporary directory.
        with tempfile.TemporaryDirectory(prefix="xpupool-tls-") as tmp:
            os.chmod(tmp, 0o700)
            cert_path, key_path = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
            with open(cert_path, "wb") as f:
                f.write(cert_pem)
            with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(key_pem)
            self.context.load_cert_chain(cert_path, key_path)
        self.loads += 1
