"""Certificates from ``xpupool.kube.certs``: chain, SANs, constraints, and the rotation policy
driven by an injected time (no waiting)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from xpupool.kube import certs

from .conftest import NOW

NAMES = certs.service_dns_names("xpupool-webhook", "xpupool-system")


def verify(bundle: certs.CertBundle, name: str, at: dt.datetime) -> None:
    ca = x509.load_pem_x509_certificate(bundle.ca_cert_pem)
    leaf = x509.load_pem_x509_certificate(bundle.cert_pem)
    verifier = PolicyBuilder().store(Store([ca])).time(at).build_server_verifier(x509.DNSName(name))
    verifier.verify(leaf, [])


def test_bundle_chains_to_its_ca_for_every_service_name() -> None:
    bundle = certs.new_bundle(dns_names=NAMES, now=NOW)
    assert NAMES == [
        "xpupool-webhook",
        "xpupool-webhook.xpupool-system",
        "xpupool-webhook.xpupool-system.svc",
        "xpupool-webhook.xpupool-system.svc.cluster.local",
    ]
    for name in NAMES[2:]:
        verify(bundle, name, NOW)
    with pytest.raises(VerificationError):
        verify(bundle, "evil.example.com", NOW)
    ca = x509.load_pem_x509_certificate(bundle.ca_cert_pem)
    leaf = x509.load_pem_x509_certificate(bundle.cert_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.not_valid_after_utc - NOW == certs.SERVING_VALIDITY
    assert set(bundle.as_secret_data()) == {"tls.crt", "tls.key", "ca.crt", "ca.key"}


def test_rotation_policy_over_time() -> None:
    bundle = certs.new_bundle(dns_names=NAMES, now=NOW)
    kept = certs.ensure_bundle(bundle, dns_names=NAMES, now=NOW + dt.timedelta(days=300))
    assert kept.action == "kept" and kept.bundle is bundle

    due = certs.ensure_bundle(bundle, dns_names=NAMES, now=NOW + dt.timedelta(days=340))
    assert due.action == "reissued-serving" and "expires" in due.reason
    assert due.bundle.ca_cert_pem == bundle.ca_cert_pem  # caBundle in the webhook config stays valid
    verify(due.bundle, NAMES[2], NOW + dt.timedelta(days=340))

    renamed = certs.ensure_bundle(bundle, dns_names=[*NAMES, "extra.example"], now=NOW)
    assert renamed.action == "reissued-serving" and renamed.reason == "serving certificate names changed"

    old_ca = certs.ensure_bundle(bundle, dns_names=NAMES, now=NOW + certs.CA_VALIDITY - dt.timedelta(days=10))
    assert old_ca.action == "new-ca" and old_ca.bundle.ca_cert_pem != bundle.ca_cert_pem

    assert certs.ensure_bundle(None, dns_names=NAMES, now=NOW).action == "new-ca"
    broken = certs.CertBundle(b"junk", b"junk", b"junk", b"junk")
    assert certs.ensure_bundle(broken, dns_names=NAMES, now=NOW).reason.startswith("unreadable certificate")


def test_serving_certificate_never_outlives_its_ca() -> None:
    ca_cert, ca_key = certs.new_ca(common_name="short", now=NOW, validity=dt.timedelta(days=10))
    cert, _ = certs.new_serving_cert(ca_cert_pem=ca_cert, ca_key_pem=ca_key, dns_names=["a"], now=NOW)
    assert certs.not_after(cert) == certs.not_after(ca_cert)
    with pytest.raises(ValueError, match="at least one DNS name"):
        certs.new_serving_cert(ca_cert_pem=ca_cert, ca_key_pem=ca_key, dns_names=[], now=NOW)
