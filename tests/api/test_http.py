"""The HTTP face itself: security headers, TLS, error documents without PHI or stack
traces, body limits, health, metrics and the published OpenAPI."""

from __future__ import annotations

import logging
import ssl

import httpx
import pytest
from apikit import ServerThread

from radvault.api import ApiSettings, create_app, make_self_signed
from radvault.errors import IntegrityError


def test_every_answer_carries_the_security_headers(world, north_study):
    for user, path in ((None, "/api/v1/health"), ("rad-n", "/api/v1/studies"),
                       ("rad-s", f"/api/v1/studies/{north_study['study_id']}")):
        r = world.get(user, path)
        h = r.headers
        assert h["content-security-policy"].startswith("default-src 'none'")
        assert h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"] == "no-referrer"
        assert h["x-frame-options"] == "DENY"
        assert h["cache-control"] == "no-store"
        assert "strict-transport-security" not in h  # plain HTTP on loopback: no HSTS


def test_reports_are_attachments_that_cannot_run_scripts(world, analysed, north_study):
    r = world.get("phys-n", f"/api/v1/studies/{north_study['study_id']}/report")
    assert r.status_code == 200
    assert r.headers["content-disposition"].startswith("attachment;")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp


def test_an_unexpected_error_is_a_bare_500_without_phi_or_trace(world, monkeypatch, caplog):
    def boom(*_args, **_kwargs):
        raise RuntimeError("Jane Doe, MRN 12345, at /srv/secret/file.dcm")

    monkeypatch.setattr(world.service, "list_studies", boom)
    with caplog.at_level(logging.DEBUG):
        r = world.get("rad-n", "/api/v1/studies")
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json() == {"type": "urn:radvault:error:internal_error", "title":
                        "Internal Server Error", "status": 500,
                        "detail": "internal server error", "code": "internal_error"}
    assert "Jane" not in caplog.text and "Traceback" not in caplog.text
    assert "RuntimeError" in caplog.text


def test_a_server_side_radvault_error_has_a_fixed_message(world, monkeypatch):
    def tampered(*_args, **_kwargs):
        raise IntegrityError("object o1: sealed blob does not match its catalog digest")

    monkeypatch.setattr(world.service, "list_studies", tampered)
    r = world.get("rad-n", "/api/v1/studies")
    assert r.status_code == 500 and r.json()["code"] == "integrity_failure"
    assert "o1" not in r.text


def test_validation_errors_do_not_echo_what_was_sent(world, north_study):
    r = world.get("rad-n", "/api/v1/studies", params={"modality": "Jane Doe <script>"})
    assert r.status_code == 422
    assert "Jane" not in r.text and r.json()["errors"][0]["loc"] == ["query", "modality"]
    r = world.post("phys-n", f"/api/v1/studies/{north_study['study_id']}/reidentify",
                   json={"reason": "x" * 1001})
    assert r.status_code == 422 and "xxxx" not in r.text


def test_oversized_json_bodies_are_refused_and_audited(world, north_study):
    mark = world.mark()
    r = world.post("phys-n", f"/api/v1/studies/{north_study['study_id']}/reidentify",
                   content=b'{"reason": "' + b"a" * 100_000 + b'"}',
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert world.audit_since(mark, "request_refused")[0].details["reason"] == "body too large"


def test_health_metrics_and_openapi_are_published(world, north_study):
    r = world.get(None, "/api/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    world.get("rad-n", f"/api/v1/studies/{north_study['study_id']}")
    r = world.get(None, "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'route="/api/v1/studies/{study_id}"' in r.text
    assert north_study["study_id"] not in r.text  # labels are templates, never ids
    assert "radvault_http_request_duration_seconds_bucket" in r.text
    spec = world.get(None, "/api/v1/openapi.json").json()
    assert spec["info"]["title"] == "RadVault API"
    assert {"/api/v1/uploads", "/api/v1/auth/token", "/api/v1/jobs/{job_id}"} <= set(
        spec["paths"])
    upload = spec["paths"]["/api/v1/uploads"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    assert spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]["type"] == "oauth2"


@pytest.fixture(scope="module")
def tls_server(world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = make_self_signed(folder / "cert.pem", folder / "key.pem")
    assert key.stat().st_mode & 0o777 == 0o600
    app = create_app(world.settings, service=world.service,
                     api=ApiSettings(manage_service=False))
    server = ServerThread(app, ssl_certfile=str(cert), ssl_keyfile=str(key)).start()
    yield server, cert
    server.stop()


def test_tls_with_a_self_signed_certificate_and_hsts(world, tls_server):
    server, cert = tls_server
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(base_url=f"https://localhost:{server.port}", verify=context) as c:
        r = c.get("/api/v1/health")
        assert r.status_code == 200
        assert r.headers["strict-transport-security"].startswith("max-age=")
        token = c.post("/api/v1/auth/token", data={"grant_type": "password", "username":
                                                    "rad-n", "password": "Vivid-Lantern-42!"})
        assert token.status_code == 200
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=True) as c:
        c.get(f"https://localhost:{server.port}/api/v1/health")  # untrusted without the cert
