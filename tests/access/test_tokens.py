"""Access and refresh tokens: claims, every refusal, rotation, theft detection, logout."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from radvault.access.policy import scopes_for
from radvault.access.principal import Principal, Role
from radvault.access.tokens import TokenPair, TokenService
from radvault.errors import AuthenticationFailed, ConfigurationError

PASSWORD = "Vivid-Lantern-42!"
ISSUER = "https://radvault.test"
AUDIENCE = "radvault-api"


@pytest.fixture
def rad(accounts, audit):
    accounts.add_user("admin1", "rad", Role.RADIOLOGIST, site="north", password=PASSWORD)
    audit.events.clear()
    return "rad"


@pytest.fixture
def pair(tokens, rad) -> TokenPair:
    return tokens.login("rad", PASSWORD)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parts(token: str) -> tuple[dict, dict]:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def resign(token: str, key, algorithm="EdDSA", header=None, drop=(), **changes) -> str:
    """The same token with changed claims, properly signed with ``key``."""
    head, claims = parts(token)
    claims.update(changes)
    for name in drop:
        claims.pop(name)
    head.update(header or {})
    head.pop("alg")
    return jwt.encode(claims, key, algorithm=algorithm, headers=head)


def hand_made(header: dict, claims: dict, sign) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def refused(tokens: TokenService, token, reason: str) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        tokens.authenticate(token)
    assert str(info.value) == reason
    if isinstance(token, str) and len(token) > 20:
        assert token[-20:] not in str(info.value)


# -------------------------------------------------------------------- issuing


def test_login_gives_a_pair_whose_access_token_authenticates(tokens, pair, audit):
    principal = tokens.authenticate(pair.access_token)
    assert principal == Principal("rad", Role.RADIOLOGIST, "north", scopes_for(Role.RADIOLOGIST))
    assert pair.token_type == "Bearer"
    assert pair.expires_in == 600
    assert pair.refresh_expires_in == 8 * 3600
    assert audit.events[0][:3] == ("rad", "login", "ok")


def test_the_access_token_carries_the_standard_claims(tokens, pair, clock):
    header, claims = parts(pair.access_token)
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": tokens.key_id}
    now = int(clock.now.timestamp())
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE and claims["sub"] == "rad"
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (now, now, now + 600)
    assert claims["typ"] == "access"
    assert claims["roles"] == ["radiologist"] and claims["site"] == "north"
    assert set(claims["scope"].split()) == scopes_for(Role.RADIOLOGIST)
    assert len(claims["jti"]) >= 16 and len(claims["sid"]) == 32


def test_each_token_has_its_own_jti(tokens, rad):
    jtis = {parts(tokens.login("rad", PASSWORD).access_token)[1]["jti"] for _ in range(3)}
    assert len(jtis) == 3


def test_a_pair_never_shows_its_tokens(pair):
    assert pair.access_token not in repr(pair)
    assert pair.refresh_token not in repr(pair)


def test_a_wrong_password_gives_no_tokens(tokens, rad):
    with pytest.raises(AuthenticationFailed):
        tokens.login("rad", "Amber-River-Quiet-7")


def test_the_public_key_set_verifies_the_tokens(tokens, pair):
    jwk = jwt.PyJWKSet.from_dict(tokens.jwks())[tokens.key_id]
    claims = jwt.decode(pair.access_token, jwk, audience=AUDIENCE,
                        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
    assert claims["sub"] == "rad"
    assert "d" not in tokens.jwks()["keys"][0]  # no private part


def test_es256_keys_work_too(accounts, rad):
    service = TokenService(accounts, ec.generate_private_key(ec.SECP256R1()),
                           issuer=ISSUER, audience=AUDIENCE)
    pair = service.login("rad", PASSWORD)
    assert parts(pair.access_token)[0]["alg"] == "ES256"
    assert service.authenticate(pair.access_token).username == "rad"


def test_unsupported_keys_and_settings_are_refused(accounts):
    with pytest.raises(ConfigurationError, match="Ed25519 or EC P-256"):
        TokenService(accounts, rsa.generate_private_key(65537, 2048),
                     issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ConfigurationError, match="Ed25519 or EC P-256"):
        TokenService(accounts, ec.generate_private_key(ec.SECP384R1()),
                     issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ConfigurationError):
        TokenService(accounts, Ed25519PrivateKey.generate(), issuer="", audience=AUDIENCE)
    with pytest.raises(ConfigurationError):
        TokenService(accounts, Ed25519PrivateKey.generate(), issuer=ISSUER, audience=AUDIENCE,
                     access_ttl=timedelta(0))


# ------------------------------------------------------------ refused tokens


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_token_is_refused(tokens, token):
    refused(tokens, token, "missing token")


NOT_JSON = f"{b64(json.dumps({'alg': 'EdDSA'}).encode())}.{b64(b'not json')}.c2ln"


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", NOT_JSON, 42, "x" * 20000])
def test_a_malformed_token_is_refused(tokens, token):
    refused(tokens, token, "malformed token")


def test_alg_none_is_refused(tokens, pair):
    _, claims = parts(pair.access_token)
    token = hand_made({"alg": "none", "typ": "at+jwt"}, claims, lambda _: b"")
    refused(tokens, token, "algorithm not allowed")
    refused(tokens, token.rsplit(".", 1)[0] + ".", "algorithm not allowed")


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.Raw])
def test_an_hmac_token_keyed_with_the_public_key_is_refused(tokens, pair, signing_key, encoding):
    public_format = (serialization.PublicFormat.SubjectPublicKeyInfo
                     if encoding is serialization.Encoding.PEM else serialization.PublicFormat.Raw)
    secret = signing_key.public_key().public_bytes(encoding, public_format)
    _, claims = parts(pair.access_token)
    token = hand_made({"alg": "HS256", "typ": "at+jwt"}, claims,
                      lambda data: hmac.new(secret, data, hashlib.sha256).digest())
    refused(tokens, token, "algorithm not allowed")


def test_a_token_signed_with_another_key_is_refused(tokens, pair):
    refused(tokens, resign(pair.access_token, Ed25519PrivateKey.generate()), "bad signature")


def test_a_tampered_token_is_refused(tokens, pair):
    header, payload, signature = pair.access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["roles"] = ["admin"]
    refused(tokens, f"{header}.{b64(json.dumps(claims).encode())}.{signature}", "bad signature")


def test_a_token_of_another_algorithm_family_is_refused(accounts, tokens, rad):
    es256 = TokenService(accounts, ec.generate_private_key(ec.SECP256R1()),
                         issuer=ISSUER, audience=AUDIENCE)
    refused(tokens, es256.login("rad", PASSWORD).access_token, "algorithm not allowed")


def test_an_expired_token_is_refused(tokens, pair, clock):
    clock.advance(seconds=600 + 4)  # within the 5 s leeway
    assert tokens.authenticate(pair.access_token).username == "rad"
    clock.advance(seconds=2)
    refused(tokens, pair.access_token, "token expired")


def test_a_token_not_yet_valid_is_refused(tokens, pair, signing_key, clock):
    later = int(clock.now.timestamp()) + 3600
    refused(tokens, resign(pair.access_token, signing_key, nbf=later), "token not yet valid")
    refused(tokens, resign(pair.access_token, signing_key, iat=later), "token not yet valid")


def test_a_token_for_another_audience_is_refused(accounts, tokens, pair, signing_key):
    refused(tokens, resign(pair.access_token, signing_key, aud="other-api"), "wrong audience")
    other = TokenService(accounts, signing_key, issuer=ISSUER, audience="other-api")
    refused(other, pair.access_token, "wrong audience")


def test_a_token_from_another_issuer_is_refused(tokens, pair, signing_key):
    refused(tokens, resign(pair.access_token, signing_key, iss="https://evil.test"),
            "wrong issuer")


@pytest.mark.parametrize("claim", ["jti", "exp", "sub", "typ"])
def test_a_token_missing_a_required_claim_is_refused(tokens, pair, signing_key, claim):
    refused(tokens, resign(pair.access_token, signing_key, drop=[claim]), "missing claim")


def test_a_revoked_token_is_refused(tokens, pair):
    tokens.logout(pair.access_token)
    refused(tokens, pair.access_token, "token revoked")


def test_a_refresh_token_is_not_an_access_token(tokens, pair, signing_key):
    refused(tokens, pair.refresh_token, "malformed token")
    refused(tokens, resign(pair.access_token, signing_key, typ="refresh"), "not an access token")
    refused(tokens, resign(pair.access_token, signing_key, header={"typ": "JWT"}),
            "not an access token")


def test_a_token_of_a_removed_user_is_refused(tokens, pair, accounts):
    accounts.remove("admin1", "rad")
    refused(tokens, pair.access_token, "user not active")


def test_a_token_of_a_locked_user_is_refused(tokens, pair, accounts):
    accounts.lock("admin1", "rad")
    refused(tokens, pair.access_token, "user not active")
    accounts.unlock("admin1", "rad")
    assert tokens.authenticate(pair.access_token).username == "rad"


def test_password_guessing_does_not_end_a_users_session(tokens, pair, accounts):
    for _ in range(6):
        with pytest.raises(AuthenticationFailed):
            accounts.verify_credentials("rad", "Amber-River-Quiet-7")
    assert tokens.authenticate(pair.access_token).username == "rad"


def test_a_token_issued_before_a_role_change_is_refused(tokens, pair, accounts):
    accounts.set_role("admin1", "rad", Role.PHYSICIAN, site="north")
    refused(tokens, pair.access_token, "token out of date")


def test_a_token_cannot_widen_its_scopes(tokens, pair, signing_key):
    token = resign(pair.access_token, signing_key, scope="view_study manage_users read_audit")
    assert tokens.authenticate(token).scopes == frozenset({"view_study"})


# ------------------------------------------------------------------- refresh


def test_refresh_rotates_the_pair(tokens, pair, audit):
    new = tokens.refresh(pair.refresh_token)
    assert new.refresh_token != pair.refresh_token
    assert tokens.authenticate(new.access_token).username == "rad"
    assert parts(new.access_token)[1]["sid"] == parts(pair.access_token)[1]["sid"]
    sid = parts(pair.access_token)[1]["sid"]
    assert audit.of("token_refresh") == [("rad", "token_refresh", "ok", [], {"session": sid})]
    with pytest.raises(AuthenticationFailed, match="invalid refresh token"):
        tokens.refresh(pair.refresh_token)


def test_reusing_a_refresh_token_revokes_its_whole_family(tokens, pair, rad, audit):
    other_session = tokens.login("rad", PASSWORD)
    second = tokens.refresh(pair.refresh_token)
    with pytest.raises(AuthenticationFailed):
        tokens.refresh(pair.refresh_token)  # the thief (or the victim) replays the old one
    (event,) = audit.of("token_reuse")
    assert event[:3] == ("rad", "token_reuse", "refused")
    with pytest.raises(AuthenticationFailed):
        tokens.refresh(second.refresh_token)  # the family is gone
    assert tokens.refresh(other_session.refresh_token).access_token  # other logins survive


def test_an_expired_refresh_token_is_refused(tokens, pair, clock):
    clock.advance(hours=8, seconds=1)
    with pytest.raises(AuthenticationFailed, match="invalid refresh token"):
        tokens.refresh(pair.refresh_token)


def test_refreshing_cannot_outlive_the_session_maximum(accounts, signing_key, rad, clock):
    service = TokenService(accounts, signing_key, issuer=ISSUER, audience=AUDIENCE,
                           refresh_ttl=timedelta(hours=1), session_max_age=timedelta(hours=2))
    pair = service.login("rad", PASSWORD)
    clock.advance(minutes=50)
    pair = service.refresh(pair.refresh_token)
    assert pair.refresh_expires_in == 3600
    clock.advance(minutes=50)
    pair = service.refresh(pair.refresh_token)
    assert pair.refresh_expires_in == 20 * 60  # capped at two hours after login
    clock.advance(minutes=21)
    with pytest.raises(AuthenticationFailed):
        service.refresh(pair.refresh_token)


@pytest.mark.parametrize("change", ["lock", "remove", "set_password"])
def test_account_changes_revoke_refresh_tokens(tokens, pair, accounts, change):
    if change == "set_password":
        accounts.set_password("admin1", "rad", "Amber-River-Quiet-7")
    else:
        getattr(accounts, change)("admin1", "rad")
    with pytest.raises(AuthenticationFailed):
        tokens.refresh(pair.refresh_token)


@pytest.mark.parametrize("token", ["", "x" * 1000, "né", None, "unknown-token"])
def test_garbage_refresh_tokens_are_refused(tokens, token):
    with pytest.raises(AuthenticationFailed, match="invalid refresh token"):
        tokens.refresh(token)


# -------------------------------------------------------------------- logout


def test_logout_revokes_the_access_token_and_its_session(tokens, pair, audit):
    tokens.logout(pair.access_token)
    refused(tokens, pair.access_token, "token revoked")
    with pytest.raises(AuthenticationFailed):
        tokens.refresh(pair.refresh_token)
    assert audit.of("logout") == [("rad", "logout", "ok", [], {"sessions": 1})]


def test_logout_with_the_refresh_token_alone_ends_the_session(tokens, pair, audit):
    tokens.logout(refresh_token=pair.refresh_token)
    with pytest.raises(AuthenticationFailed):
        tokens.refresh(pair.refresh_token)
    tokens.logout(refresh_token=pair.refresh_token)  # twice is harmless
    # A stale token after logout is refused, but it is not taken for theft.
    assert audit.of("token_reuse") == []
    assert audit.of("token_refresh")[0][4]["reason"] == "revoked"


def test_logout_needs_a_valid_access_token(tokens, pair, signing_key):
    with pytest.raises(AuthenticationFailed):
        tokens.logout(resign(pair.access_token, Ed25519PrivateKey.generate()))
    assert tokens.authenticate(pair.access_token).username == "rad"


def test_expired_revocations_are_purged(tokens, pair, clock):
    tokens.logout(pair.access_token)
    assert tokens.purge_expired() == 0
    clock.advance(hours=9)
    assert tokens.purge_expired() == 2  # the denied jti and the revoked refresh token


def test_tokens_never_reach_the_audit_trail(tokens, pair, audit):
    new = tokens.refresh(pair.refresh_token)
    with pytest.raises(AuthenticationFailed):
        tokens.refresh(pair.refresh_token)
    tokens.logout(new.access_token, new.refresh_token)
    text = audit.text()
    for secret in (pair.access_token, pair.refresh_token, new.access_token, new.refresh_token):
        assert secret not in text
        assert secret.split(".")[-1] not in text
