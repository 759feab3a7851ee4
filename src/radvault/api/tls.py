"""A self-signed TLS certificate for a local RadVault (``radvault tls selfsigned``)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from radvault.errors import ConfigurationError

__all__ = ["make_self_signed"]


def make_self_signed(cert_path: Path, key_path: Path, *,
                     hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
                     days: int = 365, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a self-signed certificate and its private key (P-256, PEM).

    The key file is created with mode 0600 and never overwritten unless asked.
    Browsers will warn: a self-signed certificate proves nothing about who
    serves it, only that the traffic is encrypted. For anything beyond one
    machine use a certificate from the hospital's CA.

    Parameters
    ----------
    cert_path, key_path : Path
        Where to write the certificate and the key.
    hosts : sequence of str
        DNS names and IP addresses the certificate is valid for.
    days : int
        Validity, 1..825 days.
    overwrite : bool
        Replace existing files.

    Returns
    -------
    tuple of (Path, Path)
        The certificate and key paths.

    Raises
    ------
    ConfigurationError
        If a file exists (without ``overwrite``), ``hosts`` is empty or
        ``days`` is out of range.
    """
    if not hosts:
        raise ConfigurationError("a certificate needs at least one host name or address")
    if not 1 <= days <= 825:
        raise ConfigurationError("certificate validity must be within 1..825 days")
    for path in (cert_path, key_path):
        if path.exists() and not overwrite:
            raise ConfigurationError(f"{path} exists (use --overwrite to replace it)")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "RadVault (self-signed)")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_bytes = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    if overwrite:
        key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
