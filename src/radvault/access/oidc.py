"""Tokens from a hospital's OpenID Connect provider (single sign-on).

When configured, RadVault accepts bearer tokens signed by an external
provider: the signature is checked with the provider's published key set
(JWKS), the key is chosen by the token's ``kid`` and must be in the set, the
algorithm must be both in the allow-list and the key's own, and ``iss``,
``aud``, ``exp``, ``iat`` (and ``nbf`` when present) are checked. One claim
(``roles`` or ``groups``, say) is mapped to exactly one RadVault role, and
another names the user's site.

The key set comes from a dict, a JSON file, or an ``https://`` URL fetched
and cached by PyJWT's :class:`jwt.PyJWKClient`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt

from radvault.access._jwt import check_times, decode_verified, refuse, unverified_parts
from radvault.access.policy import scopes_for
from radvault.access.principal import Clock, Principal, Role, utcnow
from radvault.errors import ConfigurationError

__all__ = ["OIDCSettings", "OIDCVerifier"]

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def _default_role_map() -> dict[str, Role]:
    return {role.value: role for role in Role}


@dataclass(frozen=True)
class OIDCSettings:
    """How to trust an external OpenID Connect provider.

    Parameters
    ----------
    issuer : str
        The provider's ``iss`` exactly.
    audience : str
        The ``aud`` its tokens carry for RadVault (the client id).
    jwks : mapping, str or PathLike
        The key set: a JWKS dict, a path to a JWKS JSON file, or an
        ``https://`` URL.
    role_claim : str
        The claim holding roles or groups (a string or a list of strings).
    role_map : mapping of str to Role or str
        Claim value -> RadVault role; values not in the map are ignored.
        Default: the role names themselves.
    site_claim : str
        The claim naming the user's site.
    username_claim : str
        The claim used as the username (``preferred_username`` by default;
        ``sub`` when that claim is absent).
    algorithms : tuple of str
        Accepted signature algorithms (never ``none`` or HMAC).
    leeway : datetime.timedelta
        Clock skew tolerated.

    Raises
    ------
    ConfigurationError
        If a value is missing or unsafe (an ``http://`` key-set URL, an HMAC
        algorithm, an unknown role).
    """

    issuer: str
    audience: str
    jwks: Mapping[str, Any] | str | os.PathLike[str]
    role_claim: str = "roles"
    role_map: Mapping[str, Role | str] = field(default_factory=_default_role_map)
    site_claim: str = "site"
    username_claim: str = "preferred_username"
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
    leeway: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise ConfigurationError("OpenID Connect needs an issuer and an audience")
        bad = set(self.algorithms) - _SUPPORTED_ALGORITHMS
        if bad or not self.algorithms:
            raise ConfigurationError(
                f"OpenID Connect algorithms must be asymmetric ones among "
                f"{', '.join(sorted(_SUPPORTED_ALGORITHMS))}"
            )
        try:
            roles = {str(k): Role(v) for k, v in self.role_map.items()}
        except ValueError:
            raise ConfigurationError("OpenID Connect role_map names an unknown role") from None
        object.__setattr__(self, "role_map", roles)
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        if isinstance(self.jwks, str) and self.jwks.lower().startswith("http://"):
            raise ConfigurationError("the OpenID Connect key set URL must use https://")


class OIDCVerifier:
    """Verifies tokens of one OpenID Connect provider and maps them to principals.

    Parameters
    ----------
    settings : OIDCSettings
        The provider's issuer, audience, keys and claim mapping.
    clock : Clock, optional
        The current time (tests inject one).

    Raises
    ------
    ConfigurationError
        If the key set cannot be read or holds no usable key.
    """

    def __init__(self, settings: OIDCSettings, *, clock: Clock = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        source = settings.jwks
        if isinstance(source, str) and source.lower().startswith("https://"):
            self._client = jwt.PyJWKClient(source, cache_jwk_set=True, lifespan=300)
        else:
            if isinstance(source, Mapping):
                data: Any = dict(source)
            else:
                try:
                    data = json.loads(Path(source).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    raise ConfigurationError(
                        f"{source}: cannot read the OpenID Connect key set"
                    ) from None
            try:
                self._keys = jwt.PyJWKSet.from_dict(data)
            except (jwt.PyJWTError, AttributeError, TypeError):
                raise ConfigurationError("the OpenID Connect key set holds no usable key") from None

    def verify(self, token: str) -> Principal:
        """Verify a provider's token and return the principal it names.

        Parameters
        ----------
        token : str
            The bearer token.

        Returns
        -------
        Principal
            Username, the one mapped role, site, and the role's scopes.

        Raises
        ------
        AuthenticationFailed
            With a short reason: ``missing token``, ``malformed token``,
            ``algorithm not allowed``, ``unknown signing key``, ``bad
            signature``, ``wrong issuer``, ``wrong audience``, ``missing
            claim``, ``token expired``, ``token not yet valid``, ``no RadVault
            role``, ``ambiguous role``, ``no site``.
        """
        return self.verify_claims(token)[0]

    def verify_claims(self, token: str) -> tuple[Principal, dict[str, Any]]:
        """Like :meth:`verify`, also returning the verified claims.

        Parameters
        ----------
        token : str
            The bearer token.

        Returns
        -------
        tuple of (Principal, dict)
            The principal and the verified claims.

        Raises
        ------
        AuthenticationFailed
            As for :meth:`verify`.
        """
        s = self.settings
        header, _ = unverified_parts(token)
        if header.get("alg") not in s.algorithms:
            refuse("algorithm not allowed")
        key = self._key(header.get("kid"))
        # Only the key's own algorithm verifies (PyJWT also refuses a header
        # that names another), and the header's was checked against the list.
        claims = decode_verified(
            token, key, algorithms=[key.algorithm_name], issuer=s.issuer,
            audience=s.audience, require=["exp", "iat", "iss", "aud", "sub"],
        )
        check_times(claims, self.clock(), s.leeway)
        username = claims.get(s.username_claim, claims.get("sub"))
        if not isinstance(username, str) or not _USERNAME.fullmatch(username):
            refuse("unusable username")
        role = self._role(claims.get(s.role_claim))
        site = claims.get(s.site_claim)
        if site is not None and not isinstance(site, str):
            refuse("malformed token")
        if role.needs_site and not site:
            refuse("no site")
        return Principal(username, role, site or None, scopes_for(role)), claims

    def _key(self, kid: object) -> jwt.PyJWK:
        if kid is not None and not isinstance(kid, str):
            refuse("malformed token")
        if self._client is not None:
            if kid is None:
                refuse("unknown signing key")
            try:
                return self._client.get_signing_key(kid)
            except jwt.PyJWKClientError:
                refuse("unknown signing key")
        assert self._keys is not None
        if kid is None:
            if len(self._keys.keys) == 1:
                return self._keys.keys[0]
            refuse("unknown signing key")
        for key in self._keys.keys:
            if key.key_id == kid:
                return key
        refuse("unknown signing key")

    def _role(self, value: object) -> Role:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list):
            refuse("no RadVault role")
        roles = {self.settings.role_map[v] for v in values
                 if isinstance(v, str) and v in self.settings.role_map}
        if not roles:
            refuse("no RadVault role")
        if len(roles) > 1:
            refuse("ambiguous role")
        return Role(roles.pop())

    def __repr__(self) -> str:
        return f"OIDCVerifier(issuer={self.settings.issuer!r})"
