"""`radvault init --tls` makes the certificate `radvault serve` looks for by default."""

from pathlib import Path

import pytest
from cryptography import x509

from radvault.cli import main


def test_init_with_tls_writes_a_localhost_certificate_and_a_private_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "vault"
    monkeypatch.setenv("RADVAULT_HOME", str(home))
    monkeypatch.setenv("RADVAULT_PASSPHRASE", "a test passphrase of some length")
    assert main(["init", "--tls"]) == 0
    cert = x509.load_pem_x509_certificate((home / "tls" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert (home / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    assert main(["init"]) != 0  # a second vault in the same place is refused
