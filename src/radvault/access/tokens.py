"""Access and refresh tokens: issue, rotate, revoke, and authenticate.

A login gives a :class:`TokenPair`:

* an **access token**, a short-lived JWT signed with the service's own
  asymmetric key (EdDSA over Ed25519, or ES256), carrying ``iss``, ``aud``,
  ``sub``, ``iat``, ``nbf``, ``exp``, ``jti``, ``typ="access"``, ``roles``,
  ``site``, ``scope`` and ``sid`` (the login session), with header
  ``typ="at+jwt"`` (RFC 9068);
* a **refresh token**, 256 random bits, stored only as its SHA-256. Using it
  returns a new pair and revokes it; presenting a revoked one again means it
  was copied, so the whole family descended from that login is revoked.

:meth:`TokenService.authenticate` accepts only the one configured algorithm
(never the header's word), checks times against the injected clock, refuses
revoked ``jti``\\ s and the tokens of removed or admin-locked accounts, and
builds the :class:`~radvault.access.principal.Principal` from the *current*
account, refusing a token whose role or site is out of date. Tokens from an
external OpenID Connect provider are handed to an
:class:`~radvault.access.oidc.OIDCVerifier` when one is configured.

Tokens are never logged, audited or put in error messages.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError as SQLIntegrityError
from sqlalchemy.orm import Session

from radvault.access._jwt import check_times, decode_verified, refuse, unverified_parts
from radvault.access._models import RefreshTokenRow, RevokedTokenRow, UserRow
from radvault.access.oidc import OIDCVerifier
from radvault.access.policy import scopes_for
from radvault.access.principal import AuditSink, Clock, Principal, Role, emit_audit
from radvault.access.users import Accounts
from radvault.errors import ConfigurationError

__all__ = ["SigningKey", "TokenPair", "TokenService"]

logger = logging.getLogger(__name__)

SigningKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
"""The private keys a :class:`TokenService` can sign with."""

_ACCESS_HEADER_TYP = "at+jwt"
_REQUIRED = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "typ"]
_MAX_REFRESH_LENGTH = 256


@dataclass(frozen=True)
class TokenPair:
    """What a login or a refresh returns (the token values never appear in ``repr``)."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: int
    refresh_expires_in: int
    token_type: str = "Bearer"  # noqa: S105 - the OAuth2 scheme name, not a secret


def _hash_refresh(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class TokenService:
    """Issues, rotates, revokes and verifies tokens.

    Parameters
    ----------
    accounts : Accounts
        Checks passwords and tells whether an account is still active; its
        store, audit sink and clock are shared unless given here.
    signing_key : Ed25519PrivateKey or EllipticCurvePrivateKey
        The service's private key: Ed25519 (EdDSA) or P-256 (ES256).
    issuer : str
        ``iss`` of the tokens (the service's URL).
    audience : str
        ``aud`` of the tokens (the API's identifier).
    access_ttl : datetime.timedelta
        Lifetime of an access token (default 10 minutes).
    refresh_ttl : datetime.timedelta
        Lifetime of a refresh token; each rotation starts a new one (default 8 hours).
    session_max_age : datetime.timedelta
        Longest a login can be kept alive by refreshing (default 24 hours).
    leeway : datetime.timedelta
        Clock skew tolerated when checking times (default 10 seconds).
    oidc : OIDCVerifier, optional
        Accepts tokens of an external OpenID Connect provider.
    audit : AuditSink, optional
        Defaults to the accounts' sink.
    clock : Clock, optional
        Defaults to the accounts' clock.

    Raises
    ------
    ConfigurationError
        If the key type is unsupported or a duration is not positive.
    """

    def __init__(
        self,
        accounts: Accounts,
        signing_key: SigningKey,
        *,
        issuer: str,
        audience: str,
        access_ttl: timedelta = timedelta(minutes=10),
        refresh_ttl: timedelta = timedelta(hours=8),
        session_max_age: timedelta = timedelta(hours=24),
        leeway: timedelta = timedelta(seconds=10),
        oidc: OIDCVerifier | None = None,
        audit: AuditSink | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(signing_key, Ed25519PrivateKey):
            self.algorithm = "EdDSA"
            jwk_type: Any = jwt.algorithms.OKPAlgorithm
        elif isinstance(signing_key, ec.EllipticCurvePrivateKey) and isinstance(
            signing_key.curve, ec.SECP256R1
        ):
            self.algorithm = "ES256"
            jwk_type = jwt.algorithms.ECAlgorithm
        else:
            raise ConfigurationError("the token signing key must be Ed25519 or EC P-256")
        if min(access_ttl, refresh_ttl, session_max_age) <= timedelta(0) or leeway < timedelta(0):
            raise ConfigurationError("token lifetimes must be positive and leeway not negative")
        if not issuer or not audience:
            raise ConfigurationError("tokens need an issuer and an audience")
        if oidc is not None and oidc.settings.issuer == issuer:
            raise ConfigurationError("the OpenID Connect issuer must differ from RadVault's own")
        self.accounts = accounts
        self.store = accounts.store
        self.issuer = issuer
        self.audience = audience
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.session_max_age = session_max_age
        self.leeway = leeway
        self.oidc = oidc
        self.audit = audit if audit is not None else accounts.audit
        self.clock = clock if clock is not None else accounts.clock
        self._signing_key = signing_key
        self._public_key = signing_key.public_key()
        der = self._public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = hashlib.sha256(der).hexdigest()[:16]
        self._jwk = {
            **jwk_type.to_jwk(self._public_key, as_dict=True),
            "kid": self.key_id,
            "alg": self.algorithm,
            "use": "sig",
        }

    # ----------------------------------------------------------------- issue

    def login(self, username: str, password: str) -> TokenPair:
        """Check a password and start a session (the OAuth2 password flow).

        Parameters
        ----------
        username : str
            The account name.
        password : str
            The password.

        Returns
        -------
        TokenPair
            A fresh access token and the first refresh token of a new family.

        Raises
        ------
        AuthenticationFailed
            If the credentials are refused (see :meth:`Accounts.verify_credentials`).
        """
        user = self.accounts.verify_credentials(username, password)
        now = self.clock()
        with self.store.session() as session:
            row = session.scalar(select(UserRow).where(UserRow.username == user.username,
                                                       UserRow.deleted_at.is_(None)))
            if row is None:  # removed in the instant since the password check
                refuse("user not active")
            pair = self._issue(session, row, secrets.token_hex(16), now, now)
        return pair

    def refresh(self, refresh_token: str) -> TokenPair:
        """Trade a refresh token for a new pair; the old one is revoked.

        Presenting a refresh token that was already used or revoked revokes
        its whole family: one of the two holders is a thief.

        Parameters
        ----------
        refresh_token : str
            The refresh token from the last pair.

        Returns
        -------
        TokenPair
            A new access token and a new refresh token of the same family.

        Raises
        ------
        AuthenticationFailed
            If the token is unknown, expired, revoked (re-use), or its account
            is removed or locked by an admin.
        """
        if (not isinstance(refresh_token, str) or not refresh_token
                or len(refresh_token) > _MAX_REFRESH_LENGTH or not refresh_token.isascii()):
            refuse("invalid refresh token")
        now = self.clock()
        token_hash = _hash_refresh(refresh_token)
        outcome, pair, username, family = "unknown", None, None, None
        with self.store.session() as session:
            row = session.get(RefreshTokenRow, token_hash)
            if row is not None:
                family = row.family_id
                user = session.get(UserRow, row.user_id)
                username = user.username if user is not None else None
                if row.revoked_at is not None:
                    # Rotated away means someone kept a copy; revoked by logout
                    # or an admin is merely stale.
                    outcome = "reuse" if row.revoked_reason == "rotated" else "revoked"
                elif row.expires_at <= now:
                    outcome = "expired"
                elif user is None or user.deleted_at is not None or user.locked_by_admin:
                    outcome = "inactive"
                elif not self._claim(session, token_hash, now):
                    outcome = "reuse"  # a concurrent request used it first
                else:
                    outcome = "ok"
                    pair = self._issue(session, user, row.family_id, row.family_started_at, now)
                if outcome in {"reuse", "inactive"}:
                    self._revoke_family(session, row.family_id, now, outcome)
        actor = username or "anonymous"
        details = {"session": family} if family else {}
        if pair is not None:
            emit_audit(self.audit, actor, "token_refresh", "ok", [], details)
            return pair
        if outcome == "reuse":
            logger.warning("a revoked refresh token was presented again; its family is revoked")
            emit_audit(self.audit, actor, "token_reuse", "refused", [], details)
        else:
            emit_audit(self.audit, actor, "token_refresh", "refused", [],
                       {**details, "reason": outcome})
        refuse("invalid refresh token")

    # ------------------------------------------------------------ revocation

    def logout(self, access_token: str | None = None, refresh_token: str | None = None) -> None:
        """End a session: deny the access token until it expires, revoke its refresh family.

        Parameters
        ----------
        access_token : str, optional
            A currently valid access token; its ``jti`` is denied and its
            session (``sid``) revoked.
        refresh_token : str, optional
            A refresh token whose family is revoked (unknown ones are ignored,
            so logging out twice is harmless).

        Raises
        ------
        AuthenticationFailed
            If the access token given is not currently valid.
        """
        now = self.clock()
        principal: Principal | None = None
        claims: dict[str, Any] = {}
        if access_token is not None:
            principal, claims = self._authenticate(access_token)
        families: set[str] = set()
        user_name = principal.username if principal is not None else None
        with self.store.session() as session:
            if claims.get("jti"):
                self._deny_jti(session, str(claims["jti"]), claims.get("exp"), now)
            if isinstance(claims.get("sid"), str) and claims.get("iss") == self.issuer:
                families.add(claims["sid"])
            if isinstance(refresh_token, str) and 0 < len(refresh_token) <= _MAX_REFRESH_LENGTH \
                    and refresh_token.isascii():
                row = session.get(RefreshTokenRow, _hash_refresh(refresh_token))
                if row is not None:
                    families.add(row.family_id)
                    if user_name is None:
                        user = session.get(UserRow, row.user_id)
                        user_name = user.username if user is not None else None
            for family in families:
                self._revoke_family(session, family, now, "logout")
        emit_audit(self.audit, user_name or "anonymous", "logout", "ok", [],
                   {"sessions": len(families)})

    def purge_expired(self) -> int:
        """Delete denied ``jti``\\ s and refresh tokens that have expired anyway.

        Returns
        -------
        int
            Rows deleted.
        """
        cutoff = self.clock() - self.leeway
        with self.store.session() as session:
            a = session.execute(delete(RevokedTokenRow).where(RevokedTokenRow.expires_at < cutoff))
            b = session.execute(delete(RefreshTokenRow).where(RefreshTokenRow.expires_at < cutoff))
            return int(a.rowcount or 0) + int(b.rowcount or 0)  # type: ignore[attr-defined]

    # --------------------------------------------------------- authenticate

    def authenticate(self, token: str | None) -> Principal:
        """Verify a bearer token and return who presented it.

        Parameters
        ----------
        token : str or None
            The bearer token (a RadVault access token, or an OpenID Connect
            provider's token when one is configured).

        Returns
        -------
        Principal
            The caller, with the current role and site of their account.

        Raises
        ------
        AuthenticationFailed
            With a short reason: ``missing token``, ``malformed token``,
            ``algorithm not allowed``, ``bad signature``, ``token expired``,
            ``token not yet valid``, ``wrong audience``, ``wrong issuer``,
            ``missing claim``, ``token revoked``, ``not an access token``,
            ``user not active``, ``token out of date``, ``unknown signing key``.
        """
        return self._authenticate(token)[0]

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public key set, for ``/.well-known/jwks.json``.

        Returns
        -------
        dict
            ``{"keys": [<the signing key's public JWK>]}``.
        """
        return {"keys": [dict(self._jwk)]}

    # ------------------------------------------------------------- internals

    def _authenticate(self, token: str | None) -> tuple[Principal, dict[str, Any]]:
        header, unverified = unverified_parts(token)
        assert isinstance(token, str)
        issuer = unverified.get("iss")
        if self.oidc is not None and issuer == self.oidc.settings.issuer:
            principal, claims = self.oidc.verify_claims(token)
            user = self.accounts.find_user(principal.username, include_deleted=True)
            if user is not None and (user.deleted or user.locked_by_admin):
                refuse("user not active")
        elif issuer is not None and issuer != self.issuer:
            refuse("wrong issuer")  # neither ours nor a trusted provider's: no key to try
        else:
            claims = decode_verified(
                token, self._public_key, algorithms=[self.algorithm],
                issuer=self.issuer, audience=self.audience, require=_REQUIRED,
            )
            check_times(claims, self.clock(), self.leeway)
            if claims.get("typ") != "access" or header.get("typ") != _ACCESS_HEADER_TYP:
                refuse("not an access token")
            principal = self._local_principal(claims)
        jti = claims.get("jti")
        if jti is not None:
            with self.store.session() as session:
                if session.get(RevokedTokenRow, str(jti)[:128]) is not None:
                    refuse("token revoked")
        return principal, claims

    def _local_principal(self, claims: dict[str, Any]) -> Principal:
        sub = claims.get("sub")
        user = self.accounts.find_user(sub) if isinstance(sub, str) else None
        if user is None or user.locked_by_admin:
            refuse("user not active")
        if claims.get("roles") != [user.role.value] or claims.get("site") != user.site:
            refuse("token out of date")
        scope = claims.get("scope")
        if not isinstance(scope, str):
            refuse("malformed token")
        return Principal(user.username, user.role, user.site,
                         frozenset(scope.split()) & scopes_for(user.role))

    def _issue(self, session: Session, user: UserRow, family: str,
               family_started_at: datetime, now: datetime) -> TokenPair:
        role = Role(user.role)
        access = jwt.encode(
            {
                "iss": self.issuer,
                "aud": self.audience,
                "sub": user.username,
                "iat": int(now.timestamp()),
                "nbf": int(now.timestamp()),
                "exp": int((now + self.access_ttl).timestamp()),
                "jti": secrets.token_urlsafe(16),
                "typ": "access",
                "roles": [role.value],
                "site": user.site,
                "scope": " ".join(sorted(scopes_for(role))),
                "sid": family,
            },
            self._signing_key,
            algorithm=self.algorithm,
            headers={"kid": self.key_id, "typ": _ACCESS_HEADER_TYP},
        )
        refresh = secrets.token_urlsafe(32)
        expires = min(now + self.refresh_ttl, family_started_at + self.session_max_age)
        session.add(
            RefreshTokenRow(
                token_hash=_hash_refresh(refresh),
                family_id=family,
                user_id=user.id,
                issued_at=now,
                family_started_at=family_started_at,
                expires_at=expires,
            )
        )
        return TokenPair(
            access_token=access,
            refresh_token=refresh,
            expires_in=int(self.access_ttl.total_seconds()),
            refresh_expires_in=max(0, int((expires - now).total_seconds())),
        )

    @staticmethod
    def _claim(session: Session, token_hash: str, now: datetime) -> bool:
        """Revoke one refresh token if nobody did yet; True when this call did it."""
        result = session.execute(
            update(RefreshTokenRow)
            .where(RefreshTokenRow.token_hash == token_hash, RefreshTokenRow.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason="rotated")
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    @staticmethod
    def _revoke_family(session: Session, family: str, now: datetime, reason: str) -> None:
        session.execute(
            update(RefreshTokenRow)
            .where(RefreshTokenRow.family_id == family, RefreshTokenRow.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
            .execution_options(synchronize_session=False)
        )

    def _deny_jti(self, session: Session, jti: str, exp: object, now: datetime) -> None:
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            expires = datetime.fromtimestamp(float(exp), UTC)
        else:
            expires = now + self.access_ttl
        jti = jti[:128]
        if session.get(RevokedTokenRow, jti) is None:
            try:
                with session.begin_nested():
                    session.add(RevokedTokenRow(jti=jti, expires_at=expires + self.leeway))
            except SQLIntegrityError:
                pass  # denied concurrently: the outcome is the same

    def __repr__(self) -> str:
        return f"TokenService(issuer={self.issuer!r}, algorithm={self.algorithm!r})"

