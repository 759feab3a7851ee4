"""DICOM TLS (PS3.15 Annex B): TLS contexts for the SCP and for RadVault as an SCU.

The server presents its certificate and, when a CA is configured, requires
every client to present one signed by that CA (mutual TLS); a client without
a valid certificate fails the handshake before any DICOM is exchanged. TLS 1.2
is the floor (the BCP 195 profile DICOM recommends). Certificates come from
configuration: the ``radvault dicom serve`` options or the environment
variables ``RADVAULT_DICOM_TLS_CERT``, ``RADVAULT_DICOM_TLS_KEY`` and
``RADVAULT_DICOM_TLS_CA``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from radvault.errors import ConfigurationError

__all__ = ["TlsConfig", "client_context", "server_context"]


def _readable(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"DICOM TLS {what} not found: {path}")
    return path


@dataclass(frozen=True)
class TlsConfig:
    """Where the certificates are, and whether clients must present one.

    Parameters
    ----------
    cert : Path
        PEM certificate chain of this side.
    key : Path
        PEM private key of ``cert``.
    ca : Path, optional
        PEM bundle of the CA(s) that sign peers' certificates. On the server,
        giving one turns on mutual TLS.
    require_client_cert : bool
        Server only: refuse clients without a certificate signed by ``ca``.
        Defaults to ``True`` when ``ca`` is given.

    Raises
    ------
    ConfigurationError
        When a file is missing, or client certificates are required without a CA.
    """

    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cert", _readable(self.cert, "certificate"))
        object.__setattr__(self, "key", _readable(self.key, "private key"))
        if self.ca is not None:
            object.__setattr__(self, "ca", _readable(self.ca, "CA bundle"))
        if self.require_client_cert is None:
            object.__setattr__(self, "require_client_cert", self.ca is not None)
        if self.require_client_cert and self.ca is None:
            raise ConfigurationError("requiring client certificates needs a CA bundle (--tls-ca)")


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def server_context(config: TlsConfig) -> ssl.SSLContext:
    """An SSL context for the SCP: our certificate, and the client CA when mutual.

    Raises
    ------
    ConfigurationError
        When the certificate, key or CA cannot be loaded.
    """
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    try:
        context.load_cert_chain(certfile=str(config.cert), keyfile=str(config.key))
        if config.ca is not None:
            context.load_verify_locations(cafile=str(config.ca))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"DICOM TLS: cannot load the certificates ({exc})") from None
    context.verify_mode = ssl.CERT_REQUIRED if config.require_client_cert else ssl.CERT_NONE
    return context


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None, *,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """An SSL context for RadVault as a client (``radvault pull`` over DICOM TLS).

    Parameters
    ----------
    ca : Path
        PEM bundle of the CA that signs the peer's certificate (always verified).
    cert, key : Path, optional
        Our own certificate and key, for peers that require mutual TLS.
    check_hostname : bool
        Check that the peer's certificate names the host we connect to.

    Raises
    ------
    ConfigurationError
        When a file is missing or cannot be loaded, or only one of cert/key is given.
    """
    if (cert is None) != (key is None):
        raise ConfigurationError("DICOM TLS: give both a client certificate and its key")
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=str(_readable(ca, "CA bundle")))
        if cert is not None and key is not None:
            context.load_cert_chain(certfile=str(_readable(cert, "certificate")),
                                    keyfile=str(_readable(key, "private key")))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"DICOM TLS: cannot load the certificates ({exc})") from None
    return context
