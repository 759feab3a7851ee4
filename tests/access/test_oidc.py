"""OpenID Connect: tokens of a hospital's identity provider, checked with a local key set."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from radvault.access.oidc import OIDCSettings, OIDCVerifier
from radvault.access.policy import Action, Policy, Resource, scopes_for
from radvault.access.principal import Role
from radvault.access.tokens import TokenService
from radvault.errors import AuthenticationFailed, ConfigurationError

IDP = "https://sso.hospital.test/realms/radiology"
CLIENT = "radvault"
ISSUER = "https://radvault.test"
AUDIENCE = "radvault-api"


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks(rsa_key, ec_key) -> dict:
    """The provider's published key set, built here from freshly made keys."""
    rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    return {"keys": [{**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
                     {**ec_jwk, "kid": "ec-1", "alg": "ES256", "use": "sig"}]}


@pytest.fixture
def settings(jwks) -> OIDCSettings:
    return OIDCSettings(issuer=IDP, audience=CLIENT, jwks=jwks)


@pytest.fixture
def verifier(settings, clock) -> OIDCVerifier:
    return OIDCVerifier(settings, clock=clock)


@pytest.fixture
def idp(rsa_key, clock):
    """Make a token as the provider would, with any claim or header changed."""

    def make(key=rsa_key, kid="rsa-1", alg="RS256", headers=None, drop=(), **changes) -> str:
        now = int(clock.now.timestamp())
        claims = {"iss": IDP, "aud": CLIENT, "sub": "f3a9c2", "iat": now, "exp": now + 300,
                  "preferred_username": "dr.grey@hospital.test", "roles": ["radiologist"],
                  "site": "north", "jti": uuid.uuid4().hex}
        claims.update(changes)
        for name in drop:
            claims.pop(name)
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, **(headers or {})})

    return make


def refused(verifier, token, reason):
    with pytest.raises(AuthenticationFailed) as info:
        verifier.verify(token)
    assert str(info.value) == reason


def test_a_provider_token_gives_a_mapped_principal(verifier, idp):
    principal = verifier.verify(idp())
    assert principal.username == "dr.grey@hospital.test"
    assert (principal.role, principal.site) == (Role.RADIOLOGIST, "north")
    assert principal.scopes == scopes_for(Role.RADIOLOGIST)


def test_keys_are_chosen_by_kid(verifier, idp, ec_key):
    assert verifier.verify(idp(key=ec_key, kid="ec-1", alg="ES256")).role is Role.RADIOLOGIST


def test_groups_can_be_mapped_to_roles(jwks, clock, idp):
    settings = OIDCSettings(issuer=IDP, audience=CLIENT, jwks=jwks, role_claim="groups",
                            role_map={"rad-readers": "radiologist", "ward-doctors": "physician"})
    verifier = OIDCVerifier(settings, clock=clock)
    token = idp(groups=["staff", "ward-doctors"], drop=["roles"])
    assert verifier.verify(token).role is Role.PHYSICIAN
    refused(verifier, idp(groups=["staff"], drop=["roles"]), "no RadVault role")
    refused(verifier, idp(groups=["rad-readers", "ward-doctors"], drop=["roles"]),
            "ambiguous role")


def test_the_subject_stands_in_for_a_missing_username(verifier, idp):
    assert verifier.verify(idp(drop=["preferred_username"])).username == "f3a9c2"


def test_a_token_from_an_unknown_kid_is_refused(verifier, idp, rsa_key):
    refused(verifier, idp(kid="rotated-away"), "unknown signing key")
    refused(verifier, jwt.encode({"iss": IDP}, rsa_key, algorithm="RS256"), "unknown signing key")


def test_a_token_of_a_wrong_issuer_is_refused(verifier, idp):
    refused(verifier, idp(iss="https://sso.elsewhere.test"), "wrong issuer")


def test_a_token_for_another_client_is_refused(verifier, idp):
    refused(verifier, idp(aud="another-app"), "wrong audience")


def test_an_expired_provider_token_is_refused(verifier, idp, clock):
    token = idp()
    clock.advance(seconds=300 + 29)  # within the 30 s leeway
    assert verifier.verify(token).username
    clock.advance(seconds=2)
    refused(verifier, token, "token expired")


def test_a_provider_token_not_yet_valid_is_refused(verifier, idp, clock):
    refused(verifier, idp(nbf=int(clock.now.timestamp()) + 120), "token not yet valid")


def test_a_token_signed_by_an_impostor_key_is_refused(verifier, idp):
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(verifier, idp(key=impostor), "bad signature")


def test_algorithm_tricks_are_refused(verifier, idp, rsa_key, jwks):
    token = idp()
    _, payload, _ = token.split(".")
    none = jwt.utils.base64url_encode(json.dumps({"alg": "none", "kid": "rsa-1"}).encode())
    refused(verifier, f"{none.decode()}.{payload}.", "algorithm not allowed")
    # PS256 is allowed, but not with a key published for RS256.
    refused(verifier, idp(alg="PS256"), "algorithm not allowed")
    hs = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
    refused(verifier, f"{hs.decode()}.{payload}.c2ln", "algorithm not allowed")


def test_clinical_roles_need_a_site(verifier, idp):
    refused(verifier, idp(drop=["site"]), "no site")
    admin = verifier.verify(idp(roles=["admin"], drop=["site"]))
    assert (admin.role, admin.site) == (Role.ADMIN, None)


def test_missing_claims_are_refused(verifier, idp):
    refused(verifier, idp(drop=["exp"]), "missing claim")


def test_the_key_set_can_come_from_a_file(tmp_path, jwks, clock, idp):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks), encoding="utf-8")
    verifier = OIDCVerifier(OIDCSettings(issuer=IDP, audience=CLIENT, jwks=path), clock=clock)
    assert verifier.verify(idp()).site == "north"


def test_unsafe_or_broken_settings_are_refused(tmp_path, jwks):
    with pytest.raises(ConfigurationError, match="https"):
        OIDCSettings(issuer=IDP, audience=CLIENT, jwks="http://sso.hospital.test/certs")
    with pytest.raises(ConfigurationError, match="asymmetric"):
        OIDCSettings(issuer=IDP, audience=CLIENT, jwks=jwks, algorithms=("HS256",))
    with pytest.raises(ConfigurationError, match="unknown role"):
        OIDCSettings(issuer=IDP, audience=CLIENT, jwks=jwks, role_map={"x": "surgeon"})
    with pytest.raises(ConfigurationError, match="cannot read"):
        OIDCVerifier(OIDCSettings(issuer=IDP, audience=CLIENT, jwks=tmp_path / "missing.json"))
    with pytest.raises(ConfigurationError, match="no usable key"):
        OIDCVerifier(OIDCSettings(issuer=IDP, audience=CLIENT, jwks={"keys": []}))


# --------------------------------------------------- through the token service


@pytest.fixture
def service(accounts, signing_key, verifier) -> TokenService:
    return TokenService(accounts, signing_key, issuer=ISSUER, audience=AUDIENCE, oidc=verifier)


def test_the_token_service_accepts_provider_tokens_next_to_its_own(service, accounts, idp):
    accounts.add_user("admin1", "tech", Role.TECHNOLOGIST, site="north",
                      password="Vivid-Lantern-42!")
    assert service.authenticate(idp()).username == "dr.grey@hospital.test"
    assert service.authenticate(service.login("tech", "Vivid-Lantern-42!").access_token).role \
        is Role.TECHNOLOGIST


def test_the_token_service_refuses_an_untrusted_issuer(service, idp):
    with pytest.raises(AuthenticationFailed, match="wrong issuer"):
        service.authenticate(idp(iss="https://sso.elsewhere.test"))


def test_a_provider_user_removed_or_locked_locally_is_refused(service, accounts, idp):
    accounts.add_user("admin1", "dr.grey@hospital.test", Role.RADIOLOGIST, site="north")
    accounts.lock("admin1", "dr.grey@hospital.test")
    with pytest.raises(AuthenticationFailed, match="user not active"):
        service.authenticate(idp())
    accounts.unlock("admin1", "dr.grey@hospital.test")
    accounts.remove("admin1", "dr.grey@hospital.test")
    with pytest.raises(AuthenticationFailed, match="user not active"):
        service.authenticate(idp())


def test_a_provider_token_can_be_logged_out(service, idp):
    token = idp()
    service.logout(token)
    with pytest.raises(AuthenticationFailed, match="token revoked"):
        service.authenticate(token)


def test_provider_users_get_their_grants_from_a_local_account(service, accounts, store, idp):
    accounts.add_user("admin1", "dr.grey@hospital.test", Role.RADIOLOGIST, site="north")
    accounts.grant("admin1", "dr.grey@hospital.test", study_id="1.2.3")
    principal = service.authenticate(idp())
    policy = Policy(store)
    policy.authorize(principal, Action.VIEW_IMAGE, Resource.study("1.2.3", "north"))
    assert not policy.allowed(principal, Action.VIEW_IMAGE, Resource.study("1.2.4", "north"))


def test_the_provider_must_not_share_radvaults_issuer(accounts, signing_key, jwks):
    verifier = OIDCVerifier(OIDCSettings(issuer=ISSUER, audience=CLIENT, jwks=jwks))
    with pytest.raises(ConfigurationError):
        TokenService(accounts, signing_key, issuer=ISSUER, audience=AUDIENCE, oidc=verifier,
                     leeway=timedelta(0))
