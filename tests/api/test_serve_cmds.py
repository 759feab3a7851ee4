"""The command line of the service: `radvault serve`, its safety rules and its limits from
radvault.toml, `tls selfsigned`, and user, site and grant administration (audited)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from apikit import PASSPHRASE, PASSWORD

from radvault.cli import main
from radvault.cli._serve_cmds import plan_serve
from radvault.config import load_settings
from radvault.errors import ConfigurationError
from radvault.vault.keys import KdfParams
from radvault.vault.vault import Vault


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An initialised vault (fast KDF); the CLI gets its passphrase from the environment."""
    home = tmp_path / "home"
    Vault.init(load_settings(env={}, home=home), PASSPHRASE, kdf=KdfParams.fast()).close()
    for key in [k for k in os.environ if k.startswith("RADVAULT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RADVAULT_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("RADVAULT_USER_PASSWORD", PASSWORD)
    return home


def run(home: Path, *args: str) -> int:
    return main(["--home", str(home), *args])


def test_plain_http_only_on_loopback_and_only_when_asked(home, capsys):
    assert run(home, "serve", "--host", "0.0.0.0", "--insecure-http") == 2
    assert "loopback" in capsys.readouterr().err
    assert run(home, "serve") == 2  # no certificate, no --insecure-http: refused
    assert "radvault tls selfsigned" in capsys.readouterr().err
    assert run(home, "serve", "--tls-cert", str(home / "c.pem")) == 2
    settings = load_settings(env={}, home=home)
    plan = plan_serve(settings, "127.0.0.1", 8080, None, None, True)
    assert plan.url == "http://127.0.0.1:8080/api/v1" and plan.cert is None
    assert plan_serve(settings, "::1", 8080, None, None, True).url == "http://[::1]:8080/api/v1"
    with pytest.raises(ConfigurationError):
        plan_serve(settings, "10.1.2.3", 8080, None, None, True)


def test_tls_selfsigned_makes_the_certificate_serve_uses_by_default(home, capsys):
    assert run(home, "tls", "selfsigned") == 0
    cert, key = home / "tls" / "cert.pem", home / "tls" / "key.pem"
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert key.stat().st_mode & 0o777 == 0o600
    assert run(home, "tls", "selfsigned") == 2  # never overwritten silently
    plan = plan_serve(load_settings(env={}, home=home), "0.0.0.0", 8443, None, None, False)
    assert plan.cert == cert and plan.url.startswith("https://")


def test_users_sites_and_grants_are_administered_and_audited(home, capsys):
    assert run(home, "sites", "add", "north") == 0
    assert run(home, "users", "add", "alice", "--role", "radiologist", "--site", "north") == 0
    assert run(home, "grants", "add", "alice", "--site", "north") == 0
    assert run(home, "users", "lock", "alice") == 0
    assert run(home, "users", "unlock", "alice") == 0
    assert run(home, "grants", "remove", "alice", "--site", "north") == 0
    assert run(home, "users", "list") == 0
    assert "alice" in capsys.readouterr().out
    assert run(home, "users", "remove", "alice") == 0
    assert run(home, "users", "add", "bob", "--role", "surgeon", "--site", "north") == 2
    assert run(home, "grants", "add", "bob", "--study", "1", "--site", "north") == 2
    assert run(home, "users", "lock", "nobody") == 6
    with Vault.open(load_settings(env={}, home=home), PASSPHRASE) as vault:
        actions = [(e.action, e.actor) for e in reversed(vault.audit.query(limit=200))]
    changes = [a for a, actor in actions if actor.startswith("cli:")]
    assert changes == ["site.add", "user.add", "grant", "user.lock", "user.unlock",
                       "revoke", "user.remove"]
    assert PASSWORD not in repr(actions)


def test_a_study_the_catalog_lacks_is_not_granted_nor_audited(home, capsys):
    assert run(home, "sites", "add", "north") == 0
    assert run(home, "users", "add", "rad2", "--role", "radiologist", "--site", "north") == 0
    capsys.readouterr()
    assert run(home, "grants", "add", "rad2", "--study", "ACC77331") == 6  # as other not-founds
    err = capsys.readouterr().err
    assert "no such study" in err and "Traceback" not in err
    assert run(home, "grants", "list", "rad2") == 0
    assert capsys.readouterr().out.strip() == ""
    assert run(home, "grants", "remove", "rad2", "--study", "ACC77331") == 6  # no such grant
    with Vault.open(load_settings(env={}, home=home), PASSPHRASE) as vault:
        assert not vault.audit.query(action="grant")
    trail = (home / "audit.log").read_text(encoding="utf-8")
    assert "ACC77331" not in trail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(home: Path) -> Iterator[tuple[int, list[str]]]:
    """`radvault serve` (plain HTTP on loopback) in a child process; its output after."""
    port = free_port()
    env = {**os.environ, "RADVAULT_HOME": str(home)}
    command = [sys.executable, "-c", "from radvault.cli import app; app()", "serve",
               "--insecure-http", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.stdout.read().decode() if proc.stdout
                                         else "") from None
                time.sleep(0.2)
        yield port, output
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    output.append(out.decode())
    assert proc.returncode == 0, out.decode()


def test_radvault_serve_starts_the_api_with_the_limits_of_radvault_toml(home):
    assert run(home, "sites", "add", "north") == 0
    assert run(home, "users", "add", "tech", "--role", "technologist", "--site", "north") == 0
    (home / "radvault.toml").write_text("[http]\nmax_upload_bytes = 100_000\n")
    with serving(home) as (port, output):
        base = f"http://127.0.0.1:{port}/api/v1"
        with httpx.Client(base_url=base, timeout=30) as c:
            health = c.get("/health")
            login = c.post("/auth/token", data={"grant_type": "password", "username": "tech",
                                                "password": PASSWORD})
            assert login.status_code == 200, login.text
            auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
            # Under the default cap (256 MiB), over the configured one.
            upload = c.post("/uploads", headers=auth,
                            files={"file": ("big.png", b"\0" * 200_000)})
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.headers["x-content-type-options"] == "nosniff"
    assert upload.status_code == 413, upload.text
    assert "over the upload cap of 100000 bytes" in upload.json()["detail"]
    text = output[0]
    assert f"http://127.0.0.1:{port}/api/v1" in text and "auth/token" in text
    assert f"web page: http://127.0.0.1:{port}/web/login" in text


def test_radvault_serve_refuses_a_bad_http_limit_in_one_line(home, capsys):
    (home / "radvault.toml").write_text("[http]\nupload_min_bytes_per_s = -1\n")
    assert run(home, "serve", "--insecure-http") == 2
    err = capsys.readouterr().err
    assert "http.upload_min_bytes_per_s" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
