"""DICOM TLS: the contexts themselves, and the SCP under mutual TLS as DCMTK sees it."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from dicomkit import Pki, dcmtk, write_series

from conftest import NORTH
from radvault.dicom.scp import ASSOCIATION_ACTION, TLS_REFUSED_ACTION, DicomServer
from radvault.dicom.tls import TlsConfig, client_context, server_context
from radvault.errors import ConfigurationError
from radvault.vault.vault import Vault

# --------------------------------------------------------------------------- contexts


def test_a_ca_turns_on_mutual_tls(pki: Pki) -> None:
    mutual = server_context(TlsConfig(pki.server_cert, pki.server_key, pki.ca))
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert mutual.minimum_version >= ssl.TLSVersion.TLSv1_2
    plain = server_context(TlsConfig(pki.server_cert, pki.server_key))
    assert plain.verify_mode == ssl.CERT_NONE


def test_tls_config_checks_its_files(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="certificate not found"):
        TlsConfig(tmp_path / "missing.pem", pki.server_key)
    with pytest.raises(ConfigurationError, match="needs a CA"):
        TlsConfig(pki.server_cert, pki.server_key, require_client_cert=True)
    with pytest.raises(ConfigurationError, match="cannot load"):
        server_context(TlsConfig(pki.server_cert, pki.client_key))  # key of another cert
    with pytest.raises(ConfigurationError, match="both"):
        client_context(pki.ca, cert=pki.client_cert)


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str | None:
    """Run one handshake over a socket pair; return the server's error name, if any."""
    a, b = socket.socketpair()
    error: list[str] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            error.append(type(exc).__name__)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname="localhost") as tls:
            tls.sendall(b"x")
            tls.recv(1)
    except (ssl.SSLError, OSError):
        pass
    thread.join(timeout=10)
    return error[0] if error else None


def test_the_server_accepts_only_clients_signed_by_its_ca(pki: Pki) -> None:
    server = server_context(TlsConfig(pki.server_cert, pki.server_key, pki.ca))
    assert _handshake(server, client_context(pki.ca, pki.client_cert, pki.client_key)) is None
    assert _handshake(server, client_context(pki.ca)) is not None  # no certificate
    assert _handshake(server, client_context(pki.ca, pki.rogue_cert, pki.rogue_key)) is not None


# --------------------------------------------------------------------------- the SCP with DCMTK


@pytest.fixture
def tls_server(start_server: Callable[..., DicomServer], pki: Pki) -> DicomServer:
    return start_server(tls=TlsConfig(pki.server_cert, pki.server_key, pki.ca))


def _tls_args(server: DicomServer, key: Path, cert: Path, ca: Path) -> list[str]:
    host, port = server.address
    return ["+tls", str(key), str(cert), "-pw", "+cf", str(ca),
            "-aet", NORTH.ae_title, "-aec", server.ae_title, host, str(port)]


def test_echo_store_and_find_over_mutual_tls(tls_server: DicomServer, vault: Vault, pki: Pki,
                                            tmp_path: Path) -> None:
    args = _tls_args(tls_server, pki.client_key, pki.client_cert, pki.ca)
    result = dcmtk("echoscu", *args)
    assert result.returncode == 0, result.stderr

    files = write_series(tmp_path / "ct", "CT", 3)
    result = dcmtk("storescu", *args, *files)
    assert result.returncode == 0, result.stderr
    (study,) = vault.catalog.list_studies(site="north")
    assert study.n_instances == 3

    out = tmp_path / "find"
    out.mkdir()
    result = dcmtk("findscu", "-S", "-X", "-od", out, "-k", "QueryRetrieveLevel=STUDY",
                   "-k", "StudyInstanceUID", *args)
    assert result.returncode == 0, result.stderr
    (answer,) = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    assert answer.StudyInstanceUID == study.study_id
    assert tls_server.wait_idle()
    accepted = [e for e in vault.audit.tail(1000) if str(e.action) == ASSOCIATION_ACTION]
    assert all(e.details["tls"] is True for e in accepted) and len(accepted) == 3


@pytest.mark.parametrize("client", ["no certificate", "rogue certificate", "no TLS"])
def test_clients_without_a_valid_certificate_are_refused_and_audited(
        tls_server: DicomServer, vault: Vault, pki: Pki, tmp_path: Path, client: str) -> None:
    host, port = tls_server.address
    peer = ["-aet", NORTH.ae_title, "-aec", tls_server.ae_title, host, str(port)]
    files = write_series(tmp_path / "ct", "CT", 1)
    if client == "no certificate":
        args = ["+tla", "+cf", str(pki.ca), *peer]
    elif client == "rogue certificate":
        args = _tls_args(tls_server, pki.rogue_key, pki.rogue_cert, pki.ca)
    else:
        args = ["-to", "5", "-ta", "5", *peer]
    assert dcmtk("echoscu", *args, timeout=30).returncode != 0
    assert dcmtk("storescu", *args, *files, timeout=30).returncode != 0
    assert vault.catalog.list_studies() == []
    # the failed handshake is audited by the server's own thread: give it a moment
    deadline = time.monotonic() + 10
    while True:
        entries = vault.audit.tail(1000)
        refused = [e for e in entries if str(e.action) == TLS_REFUSED_ACTION]
        if len(refused) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(refused) == 2 and refused[0].details["host"] == "127.0.0.1"
    assert not [e for e in entries if str(e.action) == ASSOCIATION_ACTION]

