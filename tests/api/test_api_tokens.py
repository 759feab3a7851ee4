"""Authentication over HTTP: every token that must be refused is answered 401 and audited."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from apikit import AUDIENCE, IDP, IDP_CLIENT, IDP_KEY, ISSUER, PASSWORD
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from radvault.access.policy import scopes_for
from radvault.pipeline.clinical import token_signing_key

ME = "/api/v1/auth/me"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims_for(username: str = "rad-n", role: str = "radiologist", site: str | None = "north",
               **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": username, "iat": now, "nbf": now,
        "exp": now + 300, "jti": uuid.uuid4().hex, "typ": "access", "roles": [role],
        "site": site, "scope": " ".join(sorted(scopes_for(role))), "sid": uuid.uuid4().hex}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None or k == "site"}


def forge(world, claims: dict[str, Any], key: Any = None, *, typ: str = "at+jwt") -> str:
    """A token signed with the service's own key (or ``key``)."""
    key = key if key is not None else token_signing_key(world.vault)
    return jwt.encode(claims, key, algorithm="EdDSA",
                      headers={"kid": world.service.tokens.key_id, "typ": typ})


def public_pem(world) -> bytes:
    return token_signing_key(world.vault).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def unsigned(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    if secret is None:
        return head + "."
    return head + "." + _b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


def call_me(world, token: str | None):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    with world.client() as c:
        return c.get(ME, headers=headers)


def assert_refused(world, token: str | None, reason: str) -> None:
    mark = world.mark()
    r = call_me(world, token)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    body = r.json()
    assert body["code"] == "authentication_failed" and body["detail"] == reason
    refused = world.audit_since(mark, "token_refused")
    assert [e.details["reason"] for e in refused] == [reason]
    assert refused[0].outcome == "refused"


def test_a_forged_token_with_nothing_wrong_is_accepted(world):
    # The control: the forger below is right, so each refusal is due to its one change.
    r = call_me(world, forge(world, claims_for()))
    assert r.status_code == 200 and r.json()["username"] == "rad-n"


CASES = {
    "missing": (lambda w: None, "missing token"),
    "malformed": (lambda w: "not-a-jwt", "malformed token"),
    "alg none": (lambda w: unsigned({"alg": "none", "typ": "at+jwt"}, claims_for(), None),
                 "algorithm not allowed"),
    "HS256 keyed with the public key": (
        lambda w: unsigned({"alg": "HS256", "typ": "at+jwt"}, claims_for(), public_pem(w)),
        "algorithm not allowed"),
    "bad signature": (lambda w: forge(w, claims_for(), Ed25519PrivateKey.generate()),
                      "bad signature"),
    "expired": (lambda w: forge(w, claims_for(exp=int(time.time()) - 120)), "token expired"),
    "not yet valid": (lambda w: forge(w, claims_for(nbf=int(time.time()) + 600)),
                      "token not yet valid"),
    "wrong audience": (lambda w: forge(w, claims_for(aud="another-api")), "wrong audience"),
    "wrong issuer": (lambda w: forge(w, claims_for(iss="https://evil.test")), "wrong issuer"),
    "refresh-typed JWT": (lambda w: forge(w, claims_for(typ="refresh")), "not an access token"),
    "out-of-date role": (lambda w: forge(w, claims_for(role="admin", site=None)),
                         "token out of date"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_tokens_get_401_and_are_audited(world, case):
    make, reason = CASES[case]
    assert_refused(world, make(world), reason)


def test_a_refresh_token_is_not_an_access_token(world):
    pair = world.login("rad-s")
    assert_refused(world, pair["refresh_token"], "malformed token")


def test_a_token_is_refused_after_logout(world):
    pair = world.login("rad-s")
    assert call_me(world, pair["access_token"]).status_code == 200
    with world.client() as c:
        r = c.post("/api/v1/auth/logout", json={"refresh_token": pair["refresh_token"]},
                   headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert r.status_code == 204
    assert_refused(world, pair["access_token"], "token revoked")
    with world.client() as c:
        r = c.post("/api/v1/auth/token", data={"grant_type": "refresh_token",
                                               "refresh_token": pair["refresh_token"]})
    assert r.status_code == 401


def test_tokens_of_locked_and_removed_users_are_refused(world):
    from radvault.pipeline.clinical import operator_principal

    operator = operator_principal("cli:tests")
    for name, change in (("locked-rad", world.service.lock_user),
                         ("removed-rad", world.service.remove_user)):
        world.add_user(name, "radiologist", "north", grant_site="north")
        token = world.login(name)["access_token"]
        assert call_me(world, token).status_code == 200
        change(operator, name)
        assert_refused(world, token, "user not active")


def test_refresh_rotates_and_a_replayed_refresh_token_revokes_the_family(world):
    first = world.login("rad-s")
    with world.client() as c:
        r = c.post("/api/v1/auth/token", data={"grant_type": "refresh_token",
                                               "refresh_token": first["refresh_token"]})
        assert r.status_code == 200, r.text
        second = r.json()
        assert second["refresh_token"] != first["refresh_token"]
        mark = world.mark()
        replay = c.post("/api/v1/auth/token", data={"grant_type": "refresh_token",
                                                    "refresh_token": first["refresh_token"]})
        assert replay.status_code == 401
        assert world.audit_since(mark, "token_reuse")
        after = c.post("/api/v1/auth/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": second["refresh_token"]})
        assert after.status_code == 401  # the whole family went with the replay


def test_login_failures_lock_the_account_and_are_audited(world):
    world.add_user("unlucky-rad", "radiologist", "north")
    mark = world.mark()
    with world.client() as c:
        for _ in range(3):
            r = c.post("/api/v1/auth/token", data={"grant_type": "password",
                                                   "username": "unlucky-rad",
                                                   "password": "wrong-Password-1"})
            assert r.status_code == 401
            assert r.json()["detail"] == "invalid username or password"
        r = c.post("/api/v1/auth/token", data={"grant_type": "password",
                                               "username": "unlucky-rad", "password": PASSWORD})
        assert r.status_code == 401  # locked out: the right password no longer helps
        unknown = c.post("/api/v1/auth/token", data={"grant_type": "password",
                                                     "username": "nobody", "password": "x" * 12})
        assert unknown.json() == r.json()  # no account enumeration
    assert len(world.audit_since(mark, "login_failed")) == 5
    assert world.audit_since(mark, "user.lockout")


def test_a_hospital_sso_token_is_accepted_and_a_forged_one_refused(world):
    world.add_user("sso-rad", "radiologist", "north", grant_site="north", password=None)
    now = int(time.time())
    claims = {"iss": IDP, "aud": IDP_CLIENT, "sub": "f3a9", "preferred_username": "sso-rad",
              "roles": ["radiologist"], "site": "north", "iat": now, "nbf": now,
              "exp": now + 300, "jti": uuid.uuid4().hex}
    good = jwt.encode(claims, IDP_KEY, algorithm="ES256", headers={"kid": "idp-1"})
    r = call_me(world, good)
    assert r.status_code == 200, r.text
    assert r.json()["username"] == "sso-rad" and r.json()["role"] == "radiologist"
    assert world.get(None, "/api/v1/studies",
                     headers={"Authorization": f"Bearer {good}"}).status_code == 200
    forged = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                        headers={"kid": "idp-1"})
    assert_refused(world, forged, "bad signature")
